"""Syncing from a Hugging Face hub (the fake of tests/fakehub.py, faithful to PROTOCOLS.md):
verified, atomic, resumable, polite; then the stock client pulls from the mirror."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakehub import TOKEN, FakeHub, tiny_repo_files
from huggingface_hub import HfApi, snapshot_download

from helpers import run_sync
from mirror.catalog import Catalog
from mirror.sync import HostileListing, Syncer, SyncFailed, parse_spec
from mirror.upstreams.huggingface import HuggingFace
from peer.errors import GatedRepo, RepoNotFound
from peer.store import BlobStore

MiB = 1024 * 1024


def sync(config, hub: FakeHub, spec: str, *, token: str | None = None, **kwargs):
    return run_sync(config, HuggingFace(hub.url, token=token), spec, **kwargs)


@pytest.fixture
def hub():
    with FakeHub(page_size=3, rate_limit_every=4, retry_after=0, cut_large_files=True,
                 large_file=1 * MiB, xet=True) as running:
        yield running


def test_a_synced_repo_is_pulled_byte_identical_by_the_stock_client(hub, config, serve,
                                                                     tmp_path):
    files = tiny_repo_files(seed=1, shards=3, shard_size=2 * MiB,
                            extra={"sub/dir/notes.txt": b"notes\n"})
    commit = hub.add_repo("org/model", files, tags=("v1",))
    [result] = sync(config, hub, "hf:org/model", token=TOKEN)
    assert result.commit == commit and result.fetched == len(files)
    assert any(method == "GET" and "/api/" in path for method, path in hub.requests)
    assert hub.cdn_requests, "LFS files came through the redirect to the CDN"
    assert all(a is None for a in hub.cdn_auth_headers), "the token never leaves the hub's host"
    assert any(r[2] for r in hub.cdn_requests), "a cut file was resumed with Range"

    mirror = serve(config)
    local = Path(snapshot_download("org/model", endpoint=mirror.url, cache_dir=tmp_path / "c"))
    for path, data in files.items():
        assert (local / path).read_bytes() == data, path
    info = HfApi(endpoint=mirror.url).model_info("org/model")
    assert info.sha == commit and info.safetensors is not None


def test_resyncing_an_unchanged_repo_costs_one_metadata_request(hub, config):
    hub.add_repo("org/model", tiny_repo_files(seed=2))
    sync(config, hub, "hf:org/model")
    hub.reset_counts()
    [again] = sync(config, hub, "hf:org/model")
    assert again.unchanged
    assert len(hub.requests) == 1 and "/revision/main" in hub.requests[0][1], hub.requests
    assert hub.cdn_requests == []


def test_a_new_commit_fetches_only_the_changed_files(hub, config):
    files = tiny_repo_files(seed=3)
    hub.add_repo("org/model", files)
    sync(config, hub, "hf:org/model")
    changed = dict(files, **{"config.json": b'{"changed": true}'})
    commit = hub.add_repo("org/model", changed)
    hub.reset_counts()
    [result] = sync(config, hub, "hf:org/model")
    assert result.commit == commit and result.fetched == 1
    assert hub.cdn_requests == [], "no LFS file was fetched again"


def test_a_flipped_byte_upstream_is_refused_and_nothing_published(hub, config):
    files = tiny_repo_files(seed=4)
    hub.add_repo("org/model", files)
    shard = next(p for p in files if p.endswith(".safetensors"))
    hub.corrupt("org/model", shard)
    with pytest.raises(SyncFailed) as failed:
        sync(config, hub, "hf:org/model")
    message = str(failed.value)
    true_sha = hashlib.sha256(files[shard]).hexdigest()
    assert shard in message and true_sha in message, message
    assert "nothing published" in message
    catalog = Catalog(config.catalog_path)
    with pytest.raises(RepoNotFound):
        catalog.repo("huggingface", "model", "org/model")
    catalog.close()
    hub.repair("org/model", shard)
    [result] = sync(config, hub, "hf:org/model")
    assert not result.unchanged


def test_a_corrupted_small_file_is_caught_by_its_git_sha1(hub, config):
    files = tiny_repo_files(seed=5)
    hub.add_repo("org/model", files)
    hub.corrupt("org/model", "config.json")
    with pytest.raises(SyncFailed, match="config.json.*git sha1"):
        sync(config, hub, "hf:org/model")


@pytest.mark.parametrize("entry", [
    {"type": "file", "path": "../x", "size": 1, "oid": "a" * 40},
    {"type": "file", "path": "/etc/x", "size": 1, "oid": "a" * 40},
    {"type": "file", "path": "a/../../x", "size": 1, "oid": "a" * 40},
    {"type": "file", "path": "a\x00b", "size": 1, "oid": "a" * 40},
    {"type": "file", "path": "x" * 10_000, "size": 1, "oid": "a" * 40},
    {"type": "file", "path": "config.json", "size": 1, "oid": "a" * 40},  # a duplicate
])
def test_a_hostile_file_list_is_refused_and_nothing_written(hub, config, entry):
    files = tiny_repo_files(seed=6)
    hub.add_repo("org/model", files)
    good = {"type": "file", "path": "config.json", "size": len(files["config.json"]),
            "oid": "b" * 40}
    hub.set_raw_tree("org/model", [good, entry])
    with pytest.raises(HostileListing):
        sync(config, hub, "hf:org/model")
    assert not list(Path(config.store_dir, "blobs").rglob("*.*"))
    assert hub.cdn_requests == []


def test_a_size_that_lies_fails_the_file(hub, config):
    files = tiny_repo_files(seed=7)
    hub.add_repo("org/model", files)
    from peer.hfformat import git_blob_sha1

    data = files["config.json"]
    for size in (len(data) - 3, len(data) + 3):
        hub.set_raw_tree("org/model", [{"type": "file", "path": "config.json", "size": size,
                                        "oid": git_blob_sha1(data)}])
        with pytest.raises(SyncFailed, match="config.json"):
            sync(config, hub, "hf:org/model")


def test_a_gated_repo_is_reported_and_an_author_sync_skips_it(hub, config):
    hub.add_repo("org/open", tiny_repo_files(seed=8))
    hub.add_repo("org/gated", tiny_repo_files(seed=9), gated=True)
    with pytest.raises(GatedRepo, match="GatedRepo"):
        sync(config, hub, "hf:org/gated")
    results = sync(config, hub, "hf:org/*")
    assert [r.repo_id for r in results] == ["org/open"]


def test_include_and_exclude_select_files(hub, config):
    files = tiny_repo_files(seed=10)
    hub.add_repo("org/model", files)
    spec = "hf:org/model"

    async def run():
        upstream = HuggingFace(hub.url)
        catalog = Catalog(config.catalog_path)
        try:
            return await Syncer(catalog, BlobStore(config.store_dir), upstream).sync(
                parse_spec(spec, include=["*.json"], exclude=["tokenizer*"]))
        finally:
            catalog.close()
            await upstream.close()

    [result] = asyncio.run(run())
    catalog = Catalog(config.catalog_path)
    repo = catalog.repo("huggingface", "model", "org/model")
    paths = {f.path for f in catalog.files(catalog.snapshot(repo, result.commit))}
    catalog.close()
    assert paths == {p for p in files if p.endswith(".json") and not p.startswith("tokenizer")}


def test_kill_9_mid_sync_resumes_without_refetching_and_never_shows_a_partial(tmp_path):
    size = 64 * MiB
    with FakeHub(page_size=50, send_rate=24 * MiB) as hub:
        big = os.urandom(size)
        hub.add_repo("org/big", {"model.safetensors": b"", "weights.bin": big,
                                 "config.json": b"{}"}, lfs={"weights.bin"})
        home = tmp_path / "home"
        env = dict(os.environ, WEIGHTSWARM_MIRROR_UPSTREAMS_HUGGINGFACE_ENDPOINT=hub.url)
        command = [sys.executable, "-m", "mirror.cli", "--home", str(home), "mirror", "sync",
                   "hf:org/big", "--no-progress"]
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
        partial = home / "store" / "partial"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            parts = list(partial.glob("*.part")) if partial.exists() else []
            if any(p.stat().st_size >= 16 * MiB for p in parts if p.exists()):
                break
            time.sleep(0.01)
        assert process.poll() is None, "the sync ended before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)

        catalog = Catalog(home / "catalog.sqlite")
        with pytest.raises(RepoNotFound):
            catalog.repo("huggingface", "model", "org/big")
        sha = hashlib.sha256(big).hexdigest()
        assert not BlobStore(home / "store").has(sha), "no partial blob is ever visible"

        hub.send_rate = None
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert hub.bytes_served <= size + 8 * MiB + 1024, (
            f"served {hub.bytes_served} bytes for a {size}-byte file: it started over")
        repo = catalog.repo("huggingface", "model", "org/big")
        assert catalog.resolve(repo, "main")
        assert BlobStore(home / "store").verify(sha)
        catalog.close()


def test_a_redirect_whose_linked_etag_contradicts_the_listing_is_refused_before_fetching(hub,
                                                                                      config):
    files = tiny_repo_files(seed=11)
    hub.add_repo("org/model", files)
    shard = next(p for p in files if p.endswith(".safetensors"))
    true_sha = hashlib.sha256(files[shard]).hexdigest()
    raw = [{"type": "file", "path": shard, "size": len(files[shard]), "oid": "c" * 40,
            "lfs": {"oid": "d" * 64, "size": len(files[shard]), "pointerSize": 134}}]
    hub.set_raw_tree("org/model", raw)
    with pytest.raises(SyncFailed, match="X-Linked-Etag") as failed:
        sync(config, hub, "hf:org/model")
    assert true_sha in str(failed.value) and "d" * 64 in str(failed.value)
    assert hub.cdn_requests == [], "refused on the redirect, before the CDN was asked"


def test_a_tag_upstream_lands_as_a_tag_and_a_pinned_commit_as_a_snapshot(hub, config, serve):
    files = tiny_repo_files(seed=12)
    first = hub.add_repo("org/model", files, tags=("v1.0",))
    second = hub.add_repo("org/model", dict(files, **{"config.json": b"{}"}))
    sync(config, hub, "hf:org/model@v1.0")
    sync(config, hub, "hf:org/model")
    sync(config, hub, f"hf:org/model@{first}")
    api = HfApi(endpoint=serve(config).url)
    refs = api.list_repo_refs("org/model")
    assert {(r.name, r.target_commit) for r in refs.tags} == {("v1.0", first)}
    assert {(r.name, r.target_commit) for r in refs.branches} == {("main", second)}
    assert api.model_info("org/model", revision=first).sha == first
