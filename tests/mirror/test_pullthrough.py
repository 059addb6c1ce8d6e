"""Pull-through (issue 19): an empty mirror with `pull_through = true` answers the stock
client for any public repo of its upstream (the fake hub, with its habits on), every byte
verified before the client can keep it, and the repo is then an ordinary mirrored snapshot."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)

from mirror.catalog import Catalog
from mirror.config import load_config
from peer.feed import read_feed
from peer.store import BlobStore, Expected
from tests.fakehub import FakeHub, tiny_repo_files
from tests.helpers import (
    BT_TEST_SETTINGS,
    SAMPLE_REPO,
    hf_env,
    import_repo,
    make_tiny_model,
    run_py,
    sample_model_dir,
)
from tests.mirror.test_transformers import LOAD

MiB = 1024 * 1024
SHARD = "model-00001-of-00002.safetensors"
XET_HEADERS = ("x-xet-hash", "x-xet-refresh-route", "x-xet-cas-url", "x-xet-access-token")


@pytest.fixture
def hub():
    with FakeHub(page_size=3, rate_limit_every=5, retry_after=0, cut_large_files=True,
                 large_file=1 * MiB, xet=True) as running:
        yield running


def pull_config(home: Path, hub: FakeHub, **settings):
    overrides = {("mirror", "port"): 0, ("mirror", "host"): "127.0.0.1",
                 ("mirror", "pull_through"): True, ("mirror", "pull_through_failure_ttl"): "1s",
                 **{("mirror", k): v for k, v in BT_TEST_SETTINGS.items()},
                 **{("mirror", k): v for k, v in settings.items()}}
    env = {"WEIGHTSWARM_MIRROR_UPSTREAMS_HUGGINGFACE_ENDPOINT": hub.url}
    return load_config(home=home, env=env, overrides=overrides)


def published(config, repo_id: str) -> list[str]:
    catalog = Catalog(config.catalog_path)
    try:
        repo = catalog.repo("huggingface", "model", repo_id)
        return [r.commit for r in catalog.refs(repo) if r.name == "main"]
    except LookupError:
        return []
    finally:
        catalog.close()


def cached_files(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if p.is_file() and "snapshots" in p.parts]


def test_an_empty_mirror_answers_the_stock_client_first_try(hub, home, serve, tmp_path):
    files = tiny_repo_files(seed=19, shards=2, shard_size=2 * MiB)
    commit = hub.add_repo("org/model", files)
    config = pull_config(home, hub)
    mirror = serve(config)

    one = hf_hub_download("org/model", "config.json", endpoint=mirror.url,
                          cache_dir=tmp_path / "one")
    assert Path(one).read_bytes() == files["config.json"]
    local = Path(snapshot_download("org/model", endpoint=mirror.url, cache_dir=tmp_path / "c"))
    for path, data in files.items():
        assert (local / path).read_bytes() == data, path
    assert hub.cdn_requests, "the LFS files came through the upstream's CDN redirect"

    deadline = time.monotonic() + 10
    while published(config, "org/model") != [commit] and time.monotonic() < deadline:
        time.sleep(0.05)  # the publication follows the last file's verification
    assert published(config, "org/model") == [commit], "every file here: published"

    hub.stop()  # from now on the catalog answers alone
    again = Path(snapshot_download("org/model", endpoint=mirror.url, cache_dir=tmp_path / "d"))
    for path, data in files.items():
        assert (again / path).read_bytes() == data, path
    assert HfApi(endpoint=mirror.url).model_info("org/model").sha == commit


def test_no_xet_signal_reaches_the_client(hub, home, serve):
    hub.add_repo("org/model", tiny_repo_files(seed=20))
    mirror = serve(pull_config(home, hub))
    with httpx.Client(base_url=mirror.url, timeout=30) as http:
        head = http.head(f"/org/model/resolve/main/{SHARD}")
        assert head.status_code == 307 and head.headers["x-linked-size"]
        pinned = http.head(head.headers["location"])
        assert pinned.status_code == 200, pinned.headers
        assert pinned.headers["content-length"] == head.headers["x-linked-size"]
        assert pinned.headers["etag"] == head.headers["x-linked-etag"]
        tree = http.get("/api/models/org/model/tree/main", params={"recursive": "true"})
        info = http.get("/api/models/org/model", params={"blobs": "true"})
    for answer in (head, pinned, tree, info):
        assert not any(h in answer.headers for h in XET_HEADERS), answer.headers
        assert "xet" not in answer.headers.get("link", "").lower()
        assert "xet" not in answer.text.lower()
    assert {e["path"] for e in tree.json()} >= {SHARD, "config.json"}
    assert len(info.json()["siblings"]) == len(tree.json())


def test_a_missing_file_is_the_upstreams_own_404(hub, home, serve, tmp_path):
    hub.add_repo("org/model", tiny_repo_files(seed=21))
    mirror = serve(pull_config(home, hub))
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("org/model", "nope.json", endpoint=mirror.url, cache_dir=tmp_path)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/absent", "config.json", endpoint=mirror.url, cache_dir=tmp_path)


def test_an_unreachable_upstream_is_504_and_the_client_caches_no_absence(hub, home, serve,
                                                                         tmp_path):
    hub.add_repo("org/model", tiny_repo_files(seed=22))
    mirror = serve(pull_config(home, hub))
    hub.stop()
    with httpx.Client(base_url=mirror.url, timeout=30) as http:
        answer = http.get("/api/models/org/model")
        assert answer.status_code == 504, answer.text
        assert "X-Error-Code" not in answer.headers
        assert http.head("/org/model/resolve/main/config.json").status_code == 504
    cache = tmp_path / "cache"
    # "could not reach it, and nothing cached": the client's word for an upstream down
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download("org/model", "config.json", endpoint=mirror.url, cache_dir=cache)
    assert not [p for p in cache.rglob("*") if ".no_exist" in p.parts], "no cached absence"


def test_a_gated_repo_is_gated_and_the_lists_are_kept(hub, home, serve, tmp_path):
    hub.add_repo("org/gated", tiny_repo_files(seed=23), gated=True)
    hub.add_repo("org/open", tiny_repo_files(seed=24))
    hub.add_repo("secret/model", tiny_repo_files(seed=25))
    mirror = serve(pull_config(home, hub, pull_through_deny=["secret/*"]))
    with pytest.raises(GatedRepoError):
        hf_hub_download("org/gated", "config.json", endpoint=mirror.url, cache_dir=tmp_path)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("secret/model", "config.json", endpoint=mirror.url, cache_dir=tmp_path)
    assert not any("secret" in path for _, path in hub.requests), "a denied repo is not asked"
    hf_hub_download("org/open", "config.json", endpoint=mirror.url, cache_dir=tmp_path)


def test_a_flipped_byte_upstream_never_reaches_a_clients_cache(hub, home, serve, tmp_path):
    files = tiny_repo_files(seed=26, shards=2, shard_size=2 * MiB)
    hub.add_repo("org/model", files)
    hub.corrupt("org/model", SHARD)
    # the refusal after two failed fetches outlasts the client's own retries (a second apart)
    config = pull_config(home, hub, pull_through_failure_ttl="2s")
    mirror = serve(config)
    cache = tmp_path / "cache"
    hub.reset_counts()
    with pytest.raises(Exception):  # noqa: B017 - the cut shows as the client's own error
        hf_hub_download("org/model", SHARD, endpoint=mirror.url, cache_dir=cache)
    assert not cached_files(cache), "nothing of it in the client's cache"
    size = len(files[SHARD])
    assert hub.bytes_served <= 2 * size * 1.05, "fetched once more from zero, then refused"
    assert published(config, "org/model") == []

    hub.repair("org/model", SHARD)
    time.sleep(2.1)  # pull_through_failure_ttl: the refusal lasts that long, then it is asked
    path = hf_hub_download("org/model", SHARD, endpoint=mirror.url, cache_dir=cache)
    assert Path(path).read_bytes() == files[SHARD]


def test_a_hostile_listing_is_refused_and_nothing_is_published(hub, home, serve):
    hub.add_repo("org/model", tiny_repo_files(seed=27))
    hub.set_raw_tree("org/model", [{"type": "file", "path": "../escape", "size": 3,
                                    "oid": "a" * 40}])
    config = pull_config(home, hub)
    mirror = serve(config)
    with httpx.Client(base_url=mirror.url, timeout=30) as http:
        answer = http.head("/org/model/resolve/main/config.json")
        assert answer.status_code == 502, answer.headers
        assert http.get("/org/model/resolve/main/../escape").status_code in (400, 404)
    assert published(config, "org/model") == []


def test_a_pulled_snapshot_is_seeded(hub, home, serve, tmp_path):
    files = tiny_repo_files(seed=28, shards=1, shard_size=5 * MiB)
    hub.add_repo("org/model", files)
    config = pull_config(home, hub, pull_through_complete="snapshot")
    mirror = serve(config)
    # one file asked for; "snapshot" fetches the rest, and the whole is published and seeded
    hf_hub_download("org/model", "config.json", endpoint=mirror.url, cache_dir=tmp_path)
    shard = hashlib.sha256(files["model-00001-of-00001.safetensors"]).hexdigest()
    deadline = time.monotonic() + 20
    seeded = []
    while not seeded and time.monotonic() < deadline:
        torrents = httpx.get(f"{mirror.url}/api/weightswarm/torrents").json()["torrents"]
        seeded = [t for t in torrents if t["sha256"] == shard]
        time.sleep(0.1)
    assert seeded, "the shard nobody asked for was fetched, published and seeded"
    key = httpx.get(f"{mirror.url}/api/weightswarm/key").json()["key"]
    feed = read_feed(httpx.get(f"{mirror.url}/api/weightswarm/catalog").content, key, after=0)
    assert [r.repo_id for r in feed.repos] == ["org/model"], "and in the feed for the index"
    metrics = httpx.get(f"{mirror.url}/metrics").text
    assert 'weightswarm_mirror_pull_through_total{event="bytes"}' in metrics


def test_transformers_loads_a_model_the_mirror_lacks(home, serve, tmp_path):
    files = {p.name: p.read_bytes() for p in sample_model_dir().iterdir() if p.is_file()}
    with FakeHub(page_size=3, rate_limit_every=7, xet=True) as hub:
        hub.add_repo(SAMPLE_REPO, files)
        mirror = serve(pull_config(home, hub))
        # the client's default timeouts (PROTOCOLS.md section 1.1), not the tests' shorter ones
        env = hf_env(mirror.url, tmp_path / "hub", HF_HUB_ETAG_TIMEOUT="10",
                     HF_HUB_DOWNLOAD_TIMEOUT="10")
        run = run_py(LOAD, env)
    assert run.returncode == 0, run.stderr[-3000:]
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    assert loaded["model_type"] == "bert" and loaded["ids"] == [101, 7592, 2088, 102]
    assert Path(loaded["weights"]).read_bytes() == files["model.safetensors"]


def test_sizes_that_lie_and_a_redirect_to_a_file_are_refused(home, serve, tmp_path):
    files = tiny_repo_files(seed=29, shards=1, shard_size=2 * MiB)
    with FakeHub(page_size=3, redirect_to="file:///etc/passwd") as hub:
        hub.add_repo("org/model", files)
        hub.add_repo("org/liar", files)
        tree = httpx.get(f"{hub.url}/api/models/org/liar/tree/main",
                         params={"recursive": "true"}).json()
        hub.set_raw_tree("org/liar", [dict(e, size=e["size"] + 7) if e["path"] == "config.json"
                                      else e for e in tree])
        config = pull_config(home, hub)
        mirror = serve(config)
        with pytest.raises(Exception):  # noqa: B017 - a 502, as the client words it
            hf_hub_download("org/model", "model-00001-of-00001.safetensors",
                            endpoint=mirror.url, cache_dir=tmp_path / "a")
        with pytest.raises(Exception):  # noqa: B017 - the upstream ends short of its size
            hf_hub_download("org/liar", "config.json", endpoint=mirror.url,
                            cache_dir=tmp_path / "a")
    assert not cached_files(tmp_path / "a")
    assert published(config, "org/model") == [] and published(config, "org/liar") == []


@pytest.mark.slow
def test_ten_clients_share_one_upstream_fetch_and_see_bytes_before_it_ends(home, serve,
                                                                          tmp_path):
    size = 200 * MiB
    data = os.urandom(size)
    with FakeHub(page_size=3, send_rate=100 * MiB) as hub:
        hub.add_repo("org/big", {"weights.bin": data, "config.json": b"{}"})
        mirror = serve(pull_config(home, hub))
        hub.reset_counts()
        caches = [tmp_path / f"c{k}" for k in range(10)]
        first_byte: dict[int, float] = {}
        upstream_done: list[float] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                for k, cache in enumerate(caches):
                    if k not in first_byte and any(
                            p.stat().st_size for p in cache.rglob("*.incomplete")):
                        first_byte[k] = time.monotonic()
                if not upstream_done and hub.bytes_served >= size:
                    upstream_done.append(time.monotonic())
                time.sleep(0.01)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        with ThreadPoolExecutor(10) as pool:
            paths = list(pool.map(lambda c: hf_hub_download(
                "org/big", "weights.bin", endpoint=mirror.url, cache_dir=c), caches))
        stop.set()
        watcher.join()
        served = hub.bytes_served
    for path in paths:
        assert Path(path).read_bytes() == data
    assert served <= 1.05 * size, f"one upstream fetch: {served} bytes for a {size}-byte file"
    assert upstream_done and len(first_byte) == 10
    assert max(first_byte.values()) < upstream_done[0], "every client had bytes before the end"


def status(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mirror.cli", "--home", str(home), "mirror",
                           "status", *args], capture_output=True, text=True, timeout=60)


def test_mirror_status_lists_pull_throughs_in_flight_then_done(home, serve, tmp_path):
    data = os.urandom(12 * MiB)
    with FakeHub(page_size=3, send_rate=4 * MiB) as hub:  # three seconds of upstream
        commit = hub.add_repo("org/slow", {"weights.bin": data, "config.json": b"{}"})
        config = pull_config(home, hub)
        mirror = serve(config)
        with ThreadPoolExecutor(1) as pool:
            download = pool.submit(hf_hub_download, "org/slow", "weights.bin",
                                   endpoint=mirror.url, cache_dir=tmp_path)
            deadline = time.monotonic() + 10
            while "running" not in (text := status(home).stdout) and \
                    time.monotonic() < deadline:
                time.sleep(0.1)
            assert f"running     hf:org/slow@{commit} (pull-through)" in text, text
            assert Path(download.result(timeout=60)).read_bytes() == data
    deadline = time.monotonic() + 10
    while (runs := json.loads(status(home, "--json").stdout))[0]["status"] == "running" and \
            time.monotonic() < deadline:
        time.sleep(0.1)
    assert runs[0]["status"] == "partial" and runs[0]["fetched"] == 1, runs
    assert runs[0]["bytes"] >= len(data)


def test_a_blob_another_process_fetches_is_followed_not_fetched_again(home, serve, tmp_path):
    """A sync in another process holds the blob's partial file (its lock): the pull-through
    streams that file as it grows and ends when the verified blob lands in the store."""
    data = os.urandom(24 * MiB)  # the client writes 10 MiB at a time: it shows some early
    sha256 = hashlib.sha256(data).hexdigest()
    with FakeHub(page_size=3) as hub:
        hub.add_repo("org/shared", {"weights.bin": data, "config.json": b"{}"})
        config = pull_config(home, hub)
        mirror = serve(config)
        other = BlobStore(config.store_dir).resumable_writer(
            sha256, len(data), lfs=True, expected=Expected(len(data), sha256))
        other.write(data[: 12 * MiB])
        with ThreadPoolExecutor(1) as pool:
            download = pool.submit(hf_hub_download, "org/shared", "weights.bin",
                                   endpoint=mirror.url, cache_dir=tmp_path)
            deadline = time.monotonic() + 10
            while not any(p.stat().st_size for p in tmp_path.rglob("*.incomplete")) and \
                    time.monotonic() < deadline:
                time.sleep(0.02)
            assert not download.done(), "the client waits for the rest"
            other.write(data[12 * MiB:])
            other.commit()
            assert Path(download.result(timeout=30)).read_bytes() == data
        assert hub.cdn_requests == [], "the bytes came from the other fetch alone"


def test_a_revision_over_the_size_cap_is_refused_in_words(hub, home, serve, tmp_path):
    hub.add_repo("org/huge", tiny_repo_files(seed=30, shards=1, shard_size=2 * MiB))
    mirror = serve(pull_config(home, hub, pull_through_max_repo_size=MiB))
    answer = httpx.get(f"{mirror.url}/api/models/org/huge", timeout=30)
    assert answer.status_code == 403, answer.text
    assert "pull_through_max_repo_size" in answer.headers["X-Error-Message"]


def test_a_private_repo_of_ours_is_never_pulled_over(hub, home, serve, tmp_path):
    hub.add_repo("org/ours", tiny_repo_files(seed=31))
    import_repo(home, make_tiny_model(tmp_path / "ours"), "org/ours", access="private")
    mirror = serve(pull_config(home, hub))
    hub.reset_counts()
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/ours", "config.json", endpoint=mirror.url, cache_dir=tmp_path)
    assert not any("org/ours" in path for _, path in hub.requests), hub.requests
