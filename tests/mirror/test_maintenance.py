"""`mirror rm`, `mirror gc`, archive mode, the free-space check and the store metrics."""

from __future__ import annotations

import shutil
import urllib.request

import pytest

from helpers import make_config, make_tiny_model
from mirror.catalog import Catalog
from mirror.importer import Importer
from mirror.maintenance import collect_garbage, refuse_in_archive_mode
from peer.errors import InsufficientSpace, Refused, RepoNotFound, RevisionNotFound
from peer.store import BlobStore

REPO = "tests/kept"


@pytest.fixture
def two_commits(catalog, store, tmp_path):
    tiny = make_tiny_model(tmp_path / "tiny")
    importer = Importer(catalog, store)
    [first] = importer.import_path(tiny, repo_id=REPO, tags=["v1"])
    (tiny / "big.bin").write_bytes(b"replaced" * 1000)
    [second] = importer.import_path(tiny, repo_id=REPO)
    return first.commit, second.commit


def test_rm_of_a_tag_removes_its_snapshot_and_gc_frees_only_its_own_blobs(catalog, store,
                                                                          two_commits):
    first, second = two_commits
    repo = catalog.repo("huggingface", "model", REPO)
    old_files = {f.sha256 for f in catalog.files(catalog.snapshot(repo, first))}
    new_files = {f.sha256 for f in catalog.files(catalog.snapshot(repo, second))}
    only_old = old_files - new_files
    assert len(only_old) == 1, "only big.bin changed"

    assert catalog.remove(repo, "v1") == [first]
    with pytest.raises(RevisionNotFound):
        catalog.resolve(repo, first)
    assert catalog.resolve(repo, "main") == second
    assert catalog.snapshot(repo, second).parent is None, "no parent left dangling"
    collected = collect_garbage(catalog, store, grace=0)
    assert set(collected.blobs) == only_old
    assert not store.has(only_old.pop())
    for sha256 in new_files:
        assert store.has(sha256), "blobs of the remaining snapshot stay"
    assert collect_garbage(catalog, store, grace=0).blobs == []


def test_rm_of_a_whole_repo_then_gc_empties_the_store(catalog, store, two_commits):
    repo = catalog.repo("huggingface", "model", REPO)
    assert len(catalog.remove(repo)) == 2
    with pytest.raises(RepoNotFound):
        catalog.repo("huggingface", "model", REPO)
    assert collect_garbage(catalog, store, grace=3600).blobs == [], "within the grace period"
    collect_garbage(catalog, store, grace=0)
    assert list(store.iter_blobs()) == []
    assert catalog.blob_count() == 0


def test_gc_removes_a_stored_blob_the_catalog_never_recorded(catalog, store, tmp_path):
    (tmp_path / "orphan").write_bytes(b"left by a killed import")
    digests, _ = store.ingest_file(tmp_path / "orphan", lfs=False)
    assert collect_garbage(catalog, store, grace=0).blobs == [digests.sha256]
    assert not store.has(digests.sha256)


def test_archive_mode_refuses_rm_and_gc(tmp_path):
    config = make_config(tmp_path / "home", archive=True)
    for what in ("rm", "gc"):
        with pytest.raises(Refused, match="archive"):
            refuse_in_archive_mode(config, what)


def test_an_import_that_would_not_fit_is_refused_before_copying(tmp_path):
    home = tmp_path / "home"
    config = make_config(home)
    catalog, store = Catalog(config.catalog_path), BlobStore(config.store_dir)
    free = shutil.disk_usage(store.root).free
    # Leave only 1 MiB usable: the 5 MiB model cannot fit.
    importer = Importer(catalog, store, min_free=free - 1024 * 1024)
    with pytest.raises(InsufficientSpace, match="needed"):
        importer.import_path(make_tiny_model(tmp_path / "tiny"), repo_id=REPO)
    assert list(store.iter_blobs()) == [] and list(store.tmp_dir.iterdir()) == []
    with pytest.raises(RepoNotFound):
        catalog.repo("huggingface", "model", REPO)
    catalog.close()


def test_metrics_report_store_size(catalog, store, tmp_path, config, serve):
    Importer(catalog, store).import_path(make_tiny_model(tmp_path / "tiny"), repo_id=REPO)
    running = serve(config)
    with urllib.request.urlopen(f"{running.url}/metrics") as r:
        text = r.read().decode()
    total = catalog.store_bytes()
    assert total > 5 * 1024 * 1024
    line = next(x for x in text.splitlines() if x.startswith("weightswarm_mirror_store_bytes "))
    assert float(line.split()[1]) == total


def test_cli_rm_gc_and_archive(tmp_path):
    import subprocess
    import sys

    home = tmp_path / "home"
    tiny = make_tiny_model(tmp_path / "tiny")

    def ws(*args):
        return subprocess.run([sys.executable, "-m", "mirror.cli", "--home", str(home), *args],
                              capture_output=True, text=True, timeout=120)

    assert ws("mirror", "import", str(tiny), "--repo", REPO, "--no-progress").returncode == 0
    (home / "weightswarm.toml").write_text("[mirror]\narchive = true\n")
    refused = ws("mirror", "rm", REPO)
    assert refused.returncode == 1 and "archive" in refused.stderr
    assert ws("mirror", "gc").returncode == 1
    (home / "weightswarm.toml").write_text("[mirror]\narchive = false\n")
    done = ws("mirror", "rm", f"{REPO}@main")
    assert done.returncode == 0, done.stderr
    gc = ws("mirror", "gc", "--grace", "0")
    assert gc.returncode == 0 and "removed 7 blobs" in gc.stdout, gc.stdout
    assert ws("mirror", "ls", "--json").stdout.strip() == "[]"
