"""The index's pages (issue 21, item 2): its search page finds the repos of three real mirrors
it polled, with how many mirrors hold each and links to them; a page per mirror; any client
that does not ask for HTML gets the 404 these paths gave before."""

from __future__ import annotations

import httpx2 as httpx
import pytest

from helpers import (
    import_repo,
    index_mirrors,
    make_config,
    make_tiny_model,
    start_mirror,
    start_service,
    wait_for,
)
from mirror.config import load_config
from peer.keys import load_or_create, public_key_text
from tracker import app as tracker_app

HTML = {"Accept": "text/html,*/*;q=0.8"}


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    root = tmp_path_factory.mktemp("index-pages")
    tiny = make_tiny_model(root / "tiny", big_size=4096)
    homes = {name: root / name for name in ("alpha", "beta", "gamma")}
    for name, home in homes.items():
        import_repo(home, tiny, f"lab/{name}-model")
        import_repo(home, tiny, "lab/shared")
    key_file = root / "mirror_keys"
    key_file.write_text("".join(
        f"{public_key_text(load_or_create(make_config(h).key_path))} {n}\n"
        for n, h in homes.items()))
    tracker = start_service(tracker_app.start, load_config(home=root / "index", env={}, overrides={
        ("tracker", "host"): "127.0.0.1", ("tracker", "port"): 0,
        ("tracker", "mirror_keys"): str(key_file), ("tracker", "poll_interval"): 0.2}).tracker)
    mirrors = {n: start_mirror(make_config(h, index=tracker.url, seed=False))
               for n, h in homes.items()}
    wait_for(lambda: len(v := index_mirrors(tracker.url)) == 3
             and all(m["last_verified"] for m in v.values()), 30, "three mirrors polled")
    yield tracker, mirrors
    for m in mirrors.values():
        m.stop()
    tracker.stop()


def test_the_search_page_finds_the_repos_of_three_mirrors(network):
    tracker, mirrors = network
    page = httpx.get(f"{tracker.url}/models?search=lab", headers=HTML)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    for name, mirror in mirrors.items():
        assert f"lab/{name}-model" in page.text, name
        assert f'href="{mirror.url}/lab/shared"' in page.text, "a link to each holder"
    row = page.text[page.text.index("lab/shared"):]
    assert '<td class="num">3</td>' in row[:600], "held by three mirrors"
    assert "across 3 mirrors" in page.text


def test_a_page_per_mirror_and_the_api_clients_unchanged(network):
    tracker, mirrors = network
    listed = httpx.get(f"{tracker.url}/mirrors", headers=HTML).text
    for name in mirrors:
        assert f'href="/mirrors/{name}"' in listed
    one = httpx.get(f"{tracker.url}/mirrors/beta", headers=HTML)
    assert one.status_code == 200 and "lab/beta-model" in one.text
    assert "lab/alpha-model" not in one.text
    assert httpx.get(f"{tracker.url}/mirrors/nobody", headers=HTML).status_code == 404
    assert httpx.get(f"{tracker.url}/models?p=-3", headers=HTML).status_code == 400
    for path in ("/", "/models", "/mirrors", "/mirrors/beta"):
        assert httpx.get(tracker.url + path).status_code == 404, path
    assert httpx.get(f"{tracker.url}/api/models?search=lab").json(), "the API as it was"
