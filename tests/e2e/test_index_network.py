"""Three real mirrors, one real index: search through the stock `HfApi`, across every mirror,
with mirror counts and seeders; paging by `Link`; `locate` nearest first for addresses in 127.x
(netblock, then site, then region, then the rest), signed, the mirror behind on a ref marked;
a revoked key and a private repo nowhere (issue 18, items 3, 4 and 7)."""

from __future__ import annotations

import dataclasses
import http.client
import json
import re
import time
import urllib.parse
import urllib.request

import pytest
from huggingface_hub import HfApi

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
from peer.locate import read_located
from tracker import app as tracker_app
from tracker.config import parse_sites

WAIT = 30
HF = "huggingface"


def _get(url: str, source: str | None = None) -> tuple[int, dict, bytes]:
    """GET from a chosen loopback source address (the index sees the asker as it is)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10,
                                      source_address=(source, 0) if source else None)
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
        answer = conn.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("index-search")
    tiny = make_tiny_model(tmp / "tiny", big_size=4096)
    other = make_tiny_model(tmp / "other", seed=3, big_size=4096)
    seeded = make_tiny_model(tmp / "seeded", seed=5)  # a 5 MiB blob: it has a torrent
    homes = {name: tmp / name for name in ("alpha", "beta", "gamma")}
    keys = {n: public_key_text(load_or_create(make_config(h).key_path)) for n, h in homes.items()}
    import_repo(homes["alpha"], tiny, "org/shared")  # alpha first: its commit is the older one
    time.sleep(0.05)
    import_repo(homes["beta"], other, "org/shared")
    for home in homes.values():
        import_repo(home, tiny, "org/common")
    import_repo(homes["alpha"], tiny, "alpha-org/solo")
    import_repo(homes["alpha"], tiny, "org/secret", access="private")
    import_repo(homes["beta"], seeded, "org/seeded")
    import_repo(homes["gamma"], tiny, "gamma-org/solo")
    key_file = tmp / "mirror_keys"
    key_file.write_text("".join(f"{keys[n]} {n}\n" for n in homes))
    config = load_config(home=tmp / "index", env={}, overrides={
        ("tracker", "host"): "127.0.0.1", ("tracker", "port"): 0,
        ("tracker", "mirror_keys"): str(key_file), ("tracker", "poll_interval"): 0.2}).tracker
    config = dataclasses.replace(config, sites=parse_sites([
        {"cidr": "127.10.0.0/16", "site": "berlin", "region": "eu"},
        {"cidr": "127.30.0.0/16", "site": "rome", "region": "eu"}]))
    tracker = start_service(tracker_app.start, config)
    places = {"alpha": {"netblocks": ["127.10.5.0/24"]},
              "beta": {"site": "berlin", "region": "eu"},
              "gamma": {"site": "paris", "region": "eu"}}
    mirrors = {n: start_mirror(make_config(homes[n], index=tracker.url, seed=False, **places[n]))
               for n in homes}
    wait_for(lambda: len(index_mirrors(tracker.url)) == 3 and all(
        m["last_verified"] and m["upto"] for m in index_mirrors(tracker.url).values()),
        WAIT, "three mirrors registered, polled and verified")
    yield tracker, mirrors, keys, key_file
    for m in mirrors.values():
        m.stop()
    tracker.stop()


def _index_key(tracker) -> str:
    return json.loads(urllib.request.urlopen(f"{tracker.url}/api/weightswarm/key",
                                             timeout=10).read())["key"]


def _locate(tracker, repo: str, revision: str = "main", source: str | None = None):
    status, _, body = _get(f"{tracker.url}/api/weightswarm/locate/{HF}/model/{repo}"
                           f"?revision={revision}", source)
    assert status == 200, body
    return read_located(body, _index_key(tracker), now=time.time(), hub=HF, type="model",
                        repo=repo, revision=revision)


def test_the_stock_client_searches_every_mirror_with_mirror_counts(network):
    tracker, mirrors, keys, _ = network
    api = HfApi(endpoint=tracker.url)
    found = {m.id: m for m in api.list_models(search="org/")}
    assert set(found) == {"org/shared", "org/common", "alpha-org/solo", "org/seeded",
                          "gamma-org/solo"}, "every mirror's public repos, private ones not"
    counts = {i: (m.weightswarm["mirrors"], m.weightswarm["behind"]) for i, m in found.items()}
    assert counts["org/common"] == (3, 0)
    assert counts["org/shared"] == (1, 1), "beta holds the newer commit; alpha is behind"
    assert counts["gamma-org/solo"] == (1, 0)
    assert [m.id for m in api.list_models(author="alpha-org")] == ["alpha-org/solo"]
    assert {m.id for m in api.list_models(search="solo")} == {"alpha-org/solo",
                                                              "gamma-org/solo"}
    assert {m.id for m in api.list_models(filter="tiny", search="common")} == {"org/common"}
    full = next(iter(api.list_models(search="org/common", full=True)))
    assert full.sha and full.weightswarm["size"] > 0


def test_the_listing_pages_by_link(network):
    tracker = network[0]
    url, seen = f"{tracker.url}/api/models?search=org&limit=2", []
    for _ in range(10):
        status, headers, body = _get(url)
        assert status == 200
        seen += [item["id"] for item in json.loads(body)]
        link = headers.get("Link")
        if not link:
            break
        url = re.fullmatch(r'<([^>]+)>; rel="next"', link).group(1)
    assert len(seen) == 5 and len(set(seen)) == 5
    status, _, body = _get(f"{tracker.url}/api/models?sort=nonsense")
    assert status == 400 and b"sort must be one of" in body
    assert _get(f"{tracker.url}/hubs/nohub/api/models")[0] == 404
    assert json.loads(_get(f"{tracker.url}/hubs/modelscope/api/models")[2]) == []


def test_seeders_come_from_the_trackers_own_swarms(network):
    tracker, mirrors, _, _ = network
    manifest = urllib.request.urlopen(
        f"{mirrors['beta'].url}/api/weightswarm/snapshots/{HF}/model/org/seeded",
        timeout=10).read()
    commit = json.loads(manifest)["commit"]
    from peer.manifest import read_manifest
    signed = urllib.request.urlopen(f"{mirrors['beta'].url}/api/weightswarm/manifests/{HF}/model/"
                                    f"org/seeded/{commit}", timeout=10).read()
    [info_hash] = [f.info_hash for f in read_manifest(signed, {network[2]["beta"]})[0].files
                   if f.info_hash]
    query = urllib.parse.urlencode({"info_hash": bytes.fromhex(info_hash), "peer_id": b"-TS0001-" + b"x" * 12,
                                    "port": 6881, "uploaded": 0, "downloaded": 0, "left": 0,
                                    "event": "started", "compact": 1})
    assert _get(f"{tracker.url}/announce?{query}")[0] == 200
    [item] = HfApi(endpoint=tracker.url).list_models(search="org/seeded")
    assert item.weightswarm["seeders"] == 1


def test_locate_ranks_netblock_then_site_then_region_then_the_rest(network):
    tracker, mirrors, _, _ = network
    urls = {n: m.url for n, m in mirrors.items()}
    by_url = {u: n for n, u in urls.items()}

    def order(source):
        located = _locate(tracker, "org/common", source=source)
        return [(by_url[m.base_url], m.near) for m in located.mirrors]

    assert order("127.10.5.7") == [("alpha", "netblock"), ("beta", "site"), ("gamma", "region")]
    assert order("127.10.9.9") == [("beta", "site"), ("gamma", "region"), ("alpha", "other")]
    assert order("127.30.0.1")[-1] == ("alpha", "other")  # rome: eu, no mirror at the site
    assert {n for n, near in order("127.99.0.1")} == {"alpha", "beta", "gamma"}
    assert {near for _, near in order("127.99.0.1")} == {"other"}


def test_locate_marks_the_mirror_behind_and_takes_commits(network):
    tracker, mirrors, _, _ = network
    located = _locate(tracker, "org/shared")
    by_url = {m.base_url: m for m in located.mirrors}
    alpha, beta = by_url[mirrors["alpha"].url], by_url[mirrors["beta"].url]
    assert located.commit == beta.commit != alpha.commit
    assert alpha.behind and not beta.behind
    pinned = _locate(tracker, "org/shared", revision=alpha.commit)
    assert [m.base_url for m in pinned.mirrors] == [mirrors["alpha"].url]
    assert _locate(tracker, "org/secret").mirrors == (), "a private repo is never located"
    assert _locate(tracker, "org/nothing").mirrors == ()
    status, _, body = _get(f"{tracker.url}/api/weightswarm/locate/{HF}/model/..%2Fetc?revision=main")
    assert status in (400, 404) and b"Traceback" not in body


def test_a_revoked_key_leaves_search_and_locate_within_a_poll(network):
    tracker, mirrors, keys, key_file = network
    text = key_file.read_text()
    key_file.write_text("".join(line + "\n" for line in text.splitlines()
                                if not line.endswith(" gamma")))
    try:
        wait_for(lambda: "gamma" not in index_mirrors(tracker.url), WAIT, "gamma revoked")
        assert "gamma-org/solo" not in {m.id for m in HfApi(endpoint=tracker.url)
                                        .list_models(search="solo")}
        assert mirrors["gamma"].url not in {m.base_url for m in
                                           _locate(tracker, "org/common").mirrors}
        common = next(iter(HfApi(endpoint=tracker.url).list_models(search="org/common")))
        assert common.weightswarm["mirrors"] == 2
    finally:
        key_file.write_text(text)
