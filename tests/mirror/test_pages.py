"""The mirror's pages over HTTP (issue 21), without a browser: only a request that names
text/html gets one, every other client gets what it got before; hostile paths and queries get
400 and 404 pages, never a traceback; a model card is cleaned of every script; search, filters
and pages of results work. (tests/e2e/test_pages_browser.py drives them in Chromium.)"""

from __future__ import annotations

import logging

import httpx2 as httpx
import pytest

from helpers import import_repo, make_config, make_tiny_model, start_mirror
from peer.pages import render_card, size, wants_html

HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
PAGE_PATHS = ["/", "/models", "/datasets", "/models?search=tiny", "/org/tiny-0",
              "/org/tiny-0/tree/main", "/org/tiny-0/tree/main/sub", "/datasets/org/data",
              "/hubs/modelscope/models", "/hubs/modelscope/org/tiny-0"]


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    root = tmp_path_factory.mktemp("pages")
    home = root / "home"
    for n in range(33):
        folder = make_tiny_model(root / f"m{n}", seed=n, big_size=4096)
        if n == 0:
            (folder / "README.md").write_text(HOSTILE_CARD)
        import_repo(home, folder, f"org/tiny-{n}")
    import_repo(home, make_tiny_model(root / "big", seed=99, big_size=5 << 20), "lab/big")
    running = start_mirror(make_config(home))
    yield running
    running.stop()


HOSTILE_CARD = """---
license: mit
tags: [tiny]
---
# The tiny model

<script>window.__pwned = 1; alert(1)</script>
<img src=x onerror="window.__pwned = 2">
<a href="javascript:window.__pwned = 3">a javascript: link</a>
<svg><script>window.__pwned = 4</script></svg>
<!-- <script>window.__pwned = 5</script> -->
<p onclick="window.__pwned = 6" style="color: red">styled</p>
[a markdown link](javascript:alert(7)) and [another](&#106;avascript:alert(8))
![remote](https://example.com/track.png)
<iframe src="https://example.com"></iframe>
<form action="https://example.com"><input type="text" name="q"></form>
"""


def test_wants_html_only_when_text_html_is_named():
    assert wants_html(HTML["Accept"])
    assert wants_html("text/html")
    for accept in (None, "", "*/*", "application/json", "text/html;q=0", "text/plain"):
        assert not wants_html(accept), accept
    assert size(1_400_000_000) == "1.4 GB" and size(999) == "999 B"


def test_a_card_is_cleaned_of_every_script_and_remote_load():
    html = render_card(HOSTILE_CARD.split("---", 2)[2])
    lowered = html.lower().replace(" ", "")
    for bad in ("<script", "onerror=", "onclick=", 'href="javascript', "href='javascript",
                "<svg", "<!--", "<iframe", "style=", 'src="https://example.com', "<form",
                "__pwned=5"):
        assert bad not in lowered, (bad, html)
    assert "<h1>The tiny model</h1>" in html
    assert 'src="https://example.com' in render_card(
        "![remote](https://example.com/a.png)", remote_images=True), "if the operator allows"


def test_clients_that_do_not_ask_for_html_get_what_they_got_before(mirror):
    for path in PAGE_PATHS:
        for headers in ({}, {"Accept": "*/*"}, {"Accept": "application/json"}):
            answer = httpx.get(mirror.url + path, headers=headers)
            assert answer.headers["Content-Type"].startswith("application/json"), path
            if path == "/":
                assert answer.json()["service"] == "weightswarm mirror"
            else:
                assert answer.status_code == 404, (path, answer.status_code)
    info = httpx.get(f"{mirror.url}/api/models/org/tiny-0", headers=HTML)
    assert info.headers["Content-Type"].startswith("application/json"), "the API stays the API"


def test_a_browser_gets_the_pages(mirror):
    for path in PAGE_PATHS[:8]:
        answer = httpx.get(mirror.url + path, headers=HTML)
        if path == "/datasets/org/data":
            assert answer.status_code == 404
        else:
            assert answer.status_code == 200, (path, answer.text[:300])
        assert answer.headers["Content-Type"] == "text/html; charset=utf-8"
        assert "script-src" not in answer.headers["Content-Security-Policy"]
        assert "default-src 'none'" in answer.headers["Content-Security-Policy"]
        assert answer.headers["Vary"] == "Accept"
    page = httpx.get(f"{mirror.url}/org/tiny-0", headers=HTML).text
    assert "HF_ENDPOINT=" + mirror.url + " hf download org/tiny-0" in page
    assert "<h1>The tiny model</h1>" in page and "<script" not in page.lower()
    css = httpx.get(f"{mirror.url}/static/weightswarm.css")
    assert css.status_code == 200 and css.headers["Content-Type"].startswith("text/css")


def test_search_filters_sorts_and_pages(mirror):
    first = httpx.get(f"{mirror.url}/models?sort=id", headers=HTML).text
    assert first.count('href="/lab/big"') == 1 and first.count('href="/org/tiny-') == 29
    assert 'rel="next"' in first
    second = httpx.get(f"{mirror.url}/models?sort=id&p=1", headers=HTML).text
    assert second.count('href="/org/tiny-') == 4 and 'rel="prev"' in second
    found = httpx.get(f"{mirror.url}/models?search=tiny-32", headers=HTML).text
    assert 'href="/org/tiny-32"' in found and 'href="/org/tiny-31"' not in found
    licensed = httpx.get(f"{mirror.url}/models?license=mit&sort=id", headers=HTML).text
    assert 'href="/org/tiny-0"' in licensed
    none = httpx.get(f"{mirror.url}/models?license=gpl-3.0", headers=HTML).text
    assert "No repository matches." in none
    largest = httpx.get(f"{mirror.url}/models?sort=size", headers=HTML).text
    assert largest.index('href="/lab/big"') < largest.index('href="/org/tiny-'), "5 MB first"


@pytest.mark.parametrize("path", [
    "/%2e%2e/%2e%2e/etc/passwd", "/org/tiny-0/tree/..%2f..%2fetc", "/%ff%fe", "/org/%00",
    "/org/tiny-0/tree/main/..%2f..%2f..%2fetc%2fpasswd", "/models?sort=../../x",
    "/models?p=-1", "/models?p=99999999999", "/models?search=%00", "/org/tiny-0/tree/nope",
    "/org/tiny-0/tree/main/no/such/folder", "/a/b/c/d/e", "/" + "a" * 5000,
    "/hubs/nowhere/models", "/models?search=" + "x" * 10_000,
])
def test_hostile_paths_and_queries_get_an_error_page_never_a_traceback(mirror, path, caplog):
    with caplog.at_level(logging.ERROR):
        answer = httpx.get(mirror.url + path, headers=HTML)
    assert answer.status_code in (400, 404, 414), (path, answer.status_code)
    assert "Traceback" not in answer.text and "internal error" not in answer.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and
                r.name.startswith(("mirror", "peer", "aiohttp"))], path


def test_the_operators_page_shows_the_store_syncs_and_egress_chart(mirror):
    from huggingface_hub import hf_hub_download

    hf_hub_download("org/tiny-1", "big.bin", endpoint=mirror.url,
                    cache_dir=mirror.config.home.parent / "op-cache")
    page = httpx.get(f"{mirror.url}/-/status", headers=HTML)
    assert page.status_code == 200
    assert "<td>34</td>" in page.text and mirror.service.key in page.text
    assert '<polyline class="resolve"' in page.text and "<svg" in page.text
    assert "resolve: 4.1 kB since start" in page.text, "the download, by its way"
    assert httpx.get(f"{mirror.url}/-/status").status_code == 404, "a page, for browsers only"


def test_the_share_peers_carried_is_theirs_of_the_swarms_bytes_in_the_charted_hours():
    from mirror.pages import egress_chart

    def at(minute, bt, webseed, peers=None, resolve=0):
        totals = {"bittorrent": bt, "webseed": webseed, "resolve": resolve}
        return (minute * 60.0, totals if peers is None else {**totals, "peers": peers})

    now = 24 * 60
    history = [at(now - 400, 0, 0, 0), at(now - 380, 500, 0, 9000),  # ended before the hours
               at(now - 30, 1000, 0, 10_000),  # this interval ends inside them: +1000, +500
               at(now - 20, 2000, 1000, 16_000),  # +6000, +2000
               at(now - 10, 2000, 1000, 2000),  # the tracker restarted: nothing
               at(now - 5, 2000, 1500)]  # the tracker did not answer: nor the intervals by it
    chart = egress_chart(history, now * 60.0, at(now, 2000, 2000, 5000)[1])
    assert chart["peers_share"] == 7000 / (7000 + 2500)
    assert [line["way"] for line in chart["lines"]][-1] == "peers"
    unknown = egress_chart([at(now - 1, 5, 0)], now * 60.0, at(now, 9, 0)[1])
    assert unknown["peers_share"] is None and not unknown["peers_known"]
    assert [line["way"] for line in unknown["lines"]][-1] == "resolve", "no peers' line"
    quiet = egress_chart([at(now - 1, 0, 0, 7)], now * 60.0, at(now, 0, 0, 7)[1])
    assert quiet["peers_share"] is None and quiet["peers_known"]


def test_a_large_files_swarm_and_torrent_links_on_its_repo_page(mirror):
    page = httpx.get(f"{mirror.url}/lab/big", headers=HTML).text
    row = page[page.index(">big.bin<"):]
    row = row[:row.index("</tr>")]
    assert "/api/weightswarm/torrents/" in row and "format=magnet" in row
    assert "peers here" in row, "the seeder's view of its swarm"


def test_downloads_on_this_mirror_are_counted_and_sorted_by(home, serve, tmp_path, monkeypatch):
    from huggingface_hub import hf_hub_download

    from helpers import wait_for
    from mirror import app as mirror_app

    monkeypatch.setattr(mirror_app, "DOWNLOADS_EVERY", 0.2)
    for n in range(3):
        import_repo(home, make_tiny_model(tmp_path / f"m{n}", seed=n, big_size=4096),
                    f"org/m{n}")
    mirror = serve(make_config(home))
    for n in range(3):  # org/m1 twice, org/m2 once
        hf_hub_download("org/m1", "config.json", endpoint=mirror.url,
                        cache_dir=tmp_path / f"c{n}")
    hf_hub_download("org/m2", "config.json", endpoint=mirror.url, cache_dir=tmp_path / "d")
    listed = wait_for(lambda: (items := httpx.get(
        f"{mirror.url}/api/models?sort=downloads").json()) and items[0]["downloads"] and items,
        10, "the counts written")
    assert [(m["id"], m["downloads"]) for m in listed] == [
        ("org/m1", 3), ("org/m2", 1), ("org/m0", 0)]
    page = httpx.get(f"{mirror.url}/models?sort=downloads", headers=HTML).text
    assert page.index('href="/org/m1"') < page.index('href="/org/m2"') < \
        page.index('href="/org/m0"')


def test_a_card_is_rendered_when_published_and_kept_and_still_cleaned_when_shown(
        home, serve, tmp_path):
    """Markdown is most of a first view's time, so publishing renders the card and the catalog
    keeps it (by the README's blob); a page shows the kept render, cleaned as any card. One
    published before cards were kept (or by an older renderer) is rendered on its first view."""
    import hashlib

    from mirror.catalog import Catalog
    from peer.pages import RENDERER

    for n, name in enumerate(("kept", "older")):
        folder = make_tiny_model(tmp_path / name, seed=n, big_size=4096)
        (folder / "README.md").write_text(f"---\nlicense: mit\n---\n# The {name} card\n")
        import_repo(home, folder, f"org/{name}")
    shas = {name: hashlib.sha256(f"---\nlicense: mit\n---\n# The {name} card\n".encode())
            .hexdigest() for name in ("kept", "older")}
    catalog = Catalog(make_config(home).catalog_path)
    try:
        assert "<h1>The kept card</h1>" in catalog.card(shas["kept"], RENDERER)
        # What the page shows is the kept render (this one made up), and it is cleaned.
        catalog.put_card(shas["kept"], RENDERER, "<h2>from the catalog</h2><script>x()</script>")
        catalog.put_card(shas["older"], RENDERER - 1, "<h2>an older renderer's</h2>")
        mirror = serve(make_config(home))
        kept = httpx.get(f"{mirror.url}/org/kept", headers=HTML).text
        assert "<h2>from the catalog</h2>" in kept and "x()" not in kept
        assert "<td>mit</td>" in kept.replace(" ", ""), "the front matter, as published"
        older = httpx.get(f"{mirror.url}/org/older", headers=HTML).text
        assert "<h1>The older card</h1>" in older and "older renderer" not in older
        assert "<h1>The older card</h1>" in catalog.card(shas["older"], RENDERER), "kept now"
    finally:
        catalog.close()
