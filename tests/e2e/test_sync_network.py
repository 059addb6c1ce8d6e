"""Sync from the network before the upstream (issue 18, item 6): a mirror whose index locates
the upstream's commit on another mirror takes the bytes from it, checks each file against the
upstream's hashes, and asks the upstream only for the listing; a tampered copy is refused and
fetched from the upstream; without an index that answers, the sync is what it always was.

One test runs through the real index (`tracker.app`, A registered and polled); the others use
a stand-in that signs its answers with `peer.locate.sign_located` as the index does, so that a
test can say exactly which mirrors locate names (a dead one, this mirror itself, another
commit) without registering them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fakehub import FakeHub, tiny_repo_files
from fakeserver import LoopServers

from helpers import BT_TEST_SETTINGS, DroppingProxy, start_service, wait_for
from mirror.catalog import Catalog
from mirror.config import load_config
from mirror.sync import parse_spec
from mirror.syncjobs import run_specs
from peer.keys import load_or_create, public_key_text
from peer.locate import Located, LocatedMirror, sign_located
from peer.store import BlobStore
from tracker import app as tracker_app

MiB = 1024 * 1024
REPO = "org/model"
SHARD = "model-00001-of-00002.safetensors"


class StandInIndex(LoopServers):
    """`/api/weightswarm/key` and `/api/weightswarm/locate/...`, signed; `holders` says which
    mirrors hold which commit of which repo, in the order locate lists them."""

    thread_name = "stand-in-index"

    def __init__(self):
        self.key = Ed25519PrivateKey.generate()
        self.holders: dict[tuple[str, str, str], list[LocatedMirror]] = {}
        self.url = ""

    async def _start_servers(self) -> None:
        app = web.Application()
        app.router.add_get("/api/weightswarm/key", self._key)
        app.router.add_get("/api/weightswarm/locate/{hub}/{type}/{repo:.+}", self._locate)
        self.url = f"http://127.0.0.1:{(await self._listen(app))[1]}"

    async def _key(self, request: web.Request) -> web.Response:
        return web.json_response({"key": public_key_text(self.key)})

    async def _locate(self, request: web.Request) -> web.Response:
        hub, type_, repo = (request.match_info[k] for k in ("hub", "type", "repo"))
        revision = request.query["revision"]
        mirrors = tuple(m for m in self.holders.get((hub, type_, repo), [])
                        if m.commit == revision)
        located = Located(public_key_text(self.key), hub, type_, repo, revision,
                          revision if mirrors else None, request.remote, time.time(), mirrors)
        return web.Response(body=sign_located(located, self.key),
                            content_type="application/msgpack")


def holder(key: str, base_url: str, commit: str, **marks) -> LocatedMirror:
    return LocatedMirror(key=key, name=None, base_url=base_url, bittorrent=None, site=None,
                         region=None, commit=commit, manifest_sha256="0" * 64, behind=False,
                         near=marks.pop("near", "other"), demoted=marks.pop("demoted", False),
                         stale=False, last_verified=None)


def dead_url() -> str:
    """A loopback URL nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def mirror_env(hub: FakeHub, index: str | None) -> dict[str, str]:
    env = {"WEIGHTSWARM_MIRROR_UPSTREAMS_HUGGINGFACE_ENDPOINT": hub.url}
    if index:
        env["WEIGHTSWARM_MIRROR_INDEX"] = index
    return env


def mirror_config(home: Path, hub: FakeHub, index: str | None = None, **settings):
    overrides = {("mirror", "port"): 0, ("mirror", "host"): "127.0.0.1",
                 ("mirror", "seed"): False, **{("mirror", k): v for k, v in settings.items()}}
    overrides.update({("mirror", k): v for k, v in BT_TEST_SETTINGS.items()})
    return load_config(home=home, env=mirror_env(hub, index), overrides=overrides)


def sync(config, spec: str = f"hf:{REPO}"):
    outcome = asyncio.run(run_specs(config, [parse_spec(spec)], parallel=1))
    assert not outcome.failures, outcome.failures
    [result] = outcome.results
    return result


def polled(index: str) -> bool:
    with urllib.request.urlopen(f"{index}/api/weightswarm/mirrors", timeout=10) as answer:
        mirrors = json.loads(answer.read())["mirrors"]
    return bool(mirrors) and all(m["last_verified"] for m in mirrors)


def assert_holds(config, files: dict[str, bytes], commit: str) -> None:
    """The mirror published `commit` with exactly these bytes."""
    catalog = Catalog(config.catalog_path)
    try:
        repo = catalog.repo("huggingface", "model", REPO)
        assert catalog.resolve(repo, "main") == commit
        listed = {e.path: e for e in catalog.files(catalog.snapshot(repo, commit))}
    finally:
        catalog.close()
    store = BlobStore(config.store_dir)
    assert set(listed) == set(files)
    for path, data in files.items():
        assert listed[path].sha256 == hashlib.sha256(data).hexdigest(), path
        assert store.path_for(listed[path].sha256).read_bytes() == data, path


def tamper(config, data: bytes) -> None:
    """Flip the middle byte of the blob of `data` in a mirror's store, size unchanged."""
    path = BlobStore(config.store_dir).path_for(hashlib.sha256(data).hexdigest())
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(len(data) // 2)
        byte = f.read(1)
        f.seek(len(data) // 2)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.fixture
def hub():
    with FakeHub(page_size=3) as running:
        yield running


@pytest.fixture
def index():
    with StandInIndex() as running:
        yield running


@pytest.fixture
def files():
    return tiny_repo_files(seed=18, shards=2, shard_size=2 * MiB,
                           extra={"big.bin": os.urandom(5 * MiB)})


@pytest.fixture
def first(tmp_path, hub, files, serve):
    """Mirror A: synced the repo from the upstream, serving; (its config, Running, commit)."""
    commit = hub.add_repo(REPO, files)
    config = mirror_config(tmp_path / "a", hub)
    result = sync(config)
    assert result.from_upstream == sum(map(len, files.values())) and not result.from_mirrors
    return config, serve(config), commit


def test_a_second_mirror_takes_the_bytes_from_the_first_and_only_the_listing_upstream(
        tmp_path, hub, index, files, first):
    config_a, a, commit = first
    home_b = tmp_path / "b"
    b_key = public_key_text(load_or_create(home_b / "mirror.key"))
    index.holders[("huggingface", "model", REPO)] = [
        holder(b_key, dead_url(), commit),  # itself: skipped
        holder(public_key_text(Ed25519PrivateKey.generate()), dead_url(), "1" * 40),  # another
        holder(a.service.key, a.url, commit),
    ]
    hub.reset_counts()
    env = dict(os.environ, **mirror_env(hub, index.url))
    done = subprocess.run([sys.executable, "-m", "mirror.cli", "--home", str(home_b), "mirror",
                           "sync", f"hf:{REPO}", "--no-progress"], env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]

    total = sum(map(len, files.values()))
    assert hub.bytes_served == 0, f"the upstream sent {hub.bytes_served} bytes of files"
    assert hub.cdn_requests == [], "no file came from the upstream's CDN"
    assert all(path.startswith("/api/") for _, path in hub.requests), hub.requests
    assert f"0 bytes from the upstream; {total} bytes from {a.url}" in done.stdout, done.stdout
    assert "dropped" not in done.stdout, "neither itself nor a mirror of another commit was tried"
    assert_holds(mirror_config(home_b, hub), files, commit)
    assert (home_b / "known_indexes").read_text() == f"{index.url} {public_key_text(index.key)}\n"

    status = subprocess.run([sys.executable, "-m", "mirror.cli", "--home", str(home_b), "mirror",
                             "status", "--json"], env=env, capture_output=True, text=True,
                            timeout=60)
    [run] = json.loads(status.stdout)
    assert run["sources"] == {"upstream": 0, "mirrors": {a.url: total}, "dropped": {}}, run


def test_through_the_real_index_a_second_mirror_takes_the_bytes_from_the_first(
        tmp_path, hub, files, serve):
    commit = hub.add_repo(REPO, files)
    home_a = tmp_path / "a"
    a_key = public_key_text(load_or_create(home_a / "mirror.key"))
    (tmp_path / "mirror_keys").write_text(f"{a_key} a\n")
    tracker = start_service(tracker_app.start, load_config(
        home=tmp_path / "index", env={}, overrides={
            ("tracker", "host"): "127.0.0.1", ("tracker", "port"): 0,
            ("tracker", "mirror_keys"): str(tmp_path / "mirror_keys"),
            ("tracker", "poll_interval"): 0.2}).tracker)
    try:
        config_a = mirror_config(home_a, hub)
        sync(config_a)
        a = serve(mirror_config(home_a, hub, tracker.url))
        wait_for(lambda: polled(tracker.url), 30, "mirror A registered and polled")
        hub.reset_counts()
        config_b = mirror_config(tmp_path / "b", hub, tracker.url)
        result = sync(config_b)
    finally:
        tracker.stop()
    assert hub.bytes_served == 0, f"the upstream sent {hub.bytes_served} bytes of files"
    assert result.from_mirrors == {a.url: sum(map(len, files.values()))}, result
    assert_holds(config_b, files, commit)


@pytest.mark.parametrize("tampered", [SHARD, "config.json"],
                         ids=["lfs-blob-by-sha256", "small-file-by-git-sha1"])
def test_a_tampered_copy_is_refused_and_that_file_comes_from_the_upstream(
        tmp_path, hub, index, files, first, tampered):
    config_a, a, commit = first
    tamper(config_a, files[tampered])
    index.holders[("huggingface", "model", REPO)] = [holder(a.service.key, a.url, commit)]
    hub.reset_counts()
    config_b = mirror_config(tmp_path / "b", hub, index.url)
    result = sync(config_b)

    assert_holds(config_b, files, commit)  # only the upstream's bytes, never the tampered ones
    [(dropped, reason)] = result.dropped_mirrors.items()
    assert dropped == a.url and f"its {tampered} did not verify" in reason, reason
    fetched = [p for _, p in hub.requests] + [p for _, p, _ in hub.cdn_requests]
    sha256 = hashlib.sha256(files[tampered]).hexdigest()
    assert any(p.endswith(f"/{tampered}") or sha256 in p for p in fetched), \
        "the refused file was fetched from the upstream"
    # What each sent is counted, the refused copy too.
    total = sum(map(len, files.values()))
    assert result.from_upstream == hub.bytes_served >= len(files[tampered])
    taken = sum(result.from_mirrors.values())
    assert taken + result.from_upstream == total + len(files[tampered]), \
        (result.from_mirrors, result.from_upstream)


def test_a_cut_transfer_from_a_mirror_resumes_there_with_range(tmp_path, hub, index, files,
                                                              first):
    _, a, commit = first
    proxy = DroppingProxy(a.port, cuts=[3 * MiB])
    try:
        index.holders[("huggingface", "model", REPO)] = [holder(a.service.key, proxy.url, commit)]
        hub.reset_counts()
        config = mirror_config(tmp_path / "b", hub, index.url)
        result = sync(config)
    finally:
        proxy.close()
    assert proxy.dropped == 1, "the mirror's answer was cut once"
    assert result.dropped_mirrors == {} and hub.bytes_served == 0
    assert result.from_mirrors == {proxy.url: sum(map(len, files.values()))}
    assert_holds(config, files, commit)


def test_an_index_that_is_down_leaves_the_sync_to_the_upstream_with_one_log_line(
        tmp_path, hub, files, caplog):
    commit = hub.add_repo(REPO, files)
    config = mirror_config(tmp_path / "b", hub, dead_url())
    with caplog.at_level(logging.INFO, logger="mirror.network"):
        result = sync(config)
    assert result.from_upstream == sum(map(len, files.values())) and result.from_mirrors == {}
    lines = [r.getMessage() for r in caplog.records if r.name == "mirror.network"]
    assert len(lines) == 1 and "could not be reached" in lines[0], lines
    assert_holds(config, files, commit)


def test_a_located_mirror_that_is_gone_is_dropped_and_the_upstream_serves(
        tmp_path, hub, index, files):
    commit = hub.add_repo(REPO, files)
    gone = dead_url()
    index.holders[("huggingface", "model", REPO)] = [
        holder(public_key_text(Ed25519PrivateKey.generate()), gone, commit)]
    config = mirror_config(tmp_path / "b", hub, index.url)
    result = sync(config)
    assert list(result.dropped_mirrors) == [gone]
    assert result.from_upstream == sum(map(len, files.values())) and result.from_mirrors == {}
    assert_holds(config, files, commit)


def test_an_index_showing_another_key_than_the_pinned_one_is_not_believed(
        tmp_path, hub, index, files, first, caplog):
    _, a, commit = first
    index.holders[("huggingface", "model", REPO)] = [holder(a.service.key, a.url, commit)]
    home = tmp_path / "b"
    home.mkdir()
    other = public_key_text(Ed25519PrivateKey.generate())
    (home / "known_indexes").write_text(f"{index.url} {other}\n")
    with caplog.at_level(logging.WARNING, logger="mirror.network"):
        result = sync(mirror_config(home, hub, index.url))
    assert result.from_mirrors == {} and result.from_upstream == sum(map(len, files.values()))
    [line] = [r.getMessage() for r in caplog.records if r.name == "mirror.network"]
    assert "no usable answer" in line and f"{other} pinned in" in line, line
