"""`weightswarm mirror import`: folders, Hugging Face caches, re-imports, and refusals."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from huggingface_hub import snapshot_download

from helpers import SAMPLE_REPO, make_config, make_tiny_model, sample_model_dir
from mirror.catalog import Catalog
from mirror.importer import Importer
from peer.errors import IntegrityError, RepoNotFound, UnsafePath
from peer.hfformat import FileEntry, derived_commit, lfs_pointer_sha1
from peer.store import BlobStore

REPO = "tests/imported"


@pytest.fixture
def importer(catalog, store):
    return Importer(catalog, store)


def _snapshot(catalog, repo_id=REPO, revision="main"):
    repo = catalog.repo("huggingface", "model", repo_id)
    return catalog.snapshot(repo, catalog.resolve(repo, revision))


def test_folder_import_derives_the_commit_from_its_files(importer, catalog, tmp_path):
    tiny = make_tiny_model(tmp_path / "tiny")
    [result] = importer.import_path(tiny, repo_id=REPO)
    snapshot = _snapshot(catalog)
    files = catalog.files(snapshot)
    assert result.commit == snapshot.commit == derived_commit(files)
    by_path = {f.path: f for f in files}
    weights = by_path["model.safetensors"]
    assert weights.lfs and weights.git_sha1 == lfs_pointer_sha1(weights.sha256, weights.size)
    assert not by_path["config.json"].lfs, "small non-weight files are plain git blobs"
    assert by_path["big.bin"].lfs
    assert snapshot.card_data["license"] == "mit"
    assert snapshot.safetensors == {"parameters": {"F16": 8, "F32": 128, "I64": 4}, "total": 140}
    record = catalog.blob(by_path["big.bin"].sha256)
    assert record.piece_length == 4 * 1024 * 1024 and len(record.pieces) == 2 * 20, (
        "big.bin (5 MiB) has two 4 MiB pieces, hashed at ingest"
    )


def test_reimporting_an_unchanged_folder_copies_nothing(importer, tmp_path):
    tiny = make_tiny_model(tmp_path / "tiny")
    [first] = importer.import_path(tiny, repo_id=REPO)
    [again] = importer.import_path(tiny, repo_id=REPO)
    assert again.commit == first.commit
    assert again.new_blobs == 0 and again.bytes_copied == 0


def test_reimporting_a_changed_folder_makes_a_new_commit_and_copies_only_new_blobs(
    importer, catalog, store, tmp_path
):
    tiny = make_tiny_model(tmp_path / "tiny")
    [first] = importer.import_path(tiny, repo_id=REPO, tags=["v1"])
    (tiny / "README.md").write_text("---\nlicense: apache-2.0\n---\nchanged\n")
    blobs_before = set(store.iter_blobs())
    [second] = importer.import_path(tiny, repo_id=REPO)
    assert second.commit != first.commit
    assert second.new_blobs == 1, "only the edited README is new"
    assert set(store.iter_blobs()) - blobs_before == {
        hashlib.sha256(b"---\nlicense: apache-2.0\n---\nchanged\n").hexdigest()
    }
    repo = catalog.repo("huggingface", "model", REPO)
    refs = {(r.kind, r.name): r for r in catalog.refs(repo)}
    assert refs[("branch", "main")].commit == second.commit, "main moved to the new commit"
    assert refs[("tag", "v1")].commit == first.commit, "the tag stays where it was"
    assert refs[("branch", "main")].seq > refs[("tag", "v1")].seq
    assert _snapshot(catalog).parent == first.commit
    assert _snapshot(catalog).card_data["license"] == "apache-2.0"


def test_symlink_pointing_outside_the_folder_is_refused_and_nothing_published(
    importer, catalog, tmp_path
):
    tiny = make_tiny_model(tmp_path / "tiny")
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the mirror")
    os.symlink(secret, tiny / "leak.txt")
    with pytest.raises(UnsafePath, match="outside"):
        importer.import_path(tiny, repo_id=REPO)
    with pytest.raises(RepoNotFound):
        catalog.repo("huggingface", "model", REPO)


def test_symlink_inside_the_folder_is_imported_as_its_target(importer, catalog, tmp_path):
    tiny = make_tiny_model(tmp_path / "tiny")
    os.symlink("config.json", tiny / "alias.json")
    importer.import_path(tiny, repo_id=REPO)
    files = {f.path: f for f in catalog.files(_snapshot(catalog))}
    assert files["alias.json"].sha256 == files["config.json"].sha256


def test_hostile_repo_ids_and_revisions_are_refused(importer, tmp_path):
    tiny = make_tiny_model(tmp_path / "tiny")
    for bad in ("../x", "a/b/c", "a--b", "/abs", "x\x00y", "a" * 200):
        with pytest.raises(ValueError):
            importer.import_path(tiny, repo_id=bad)
    for bad in ("../main", "a..b/../c", "x\x00"):
        with pytest.raises(ValueError):
            importer.import_path(tiny, repo_id=REPO, revision=bad)


def _hf_cache_from_a_mirror(tmp_path, serve):
    """A real Hugging Face cache, written by the stock client from a mirror."""
    source_home = tmp_path / "source"
    config = make_config(source_home)
    catalog = Catalog(config.catalog_path)
    Importer(catalog, BlobStore(config.store_dir)).import_path(
        make_tiny_model(tmp_path / "tiny"), repo_id=REPO, tags=["v1.0"])
    repo = catalog.repo("huggingface", "model", REPO)
    commit = catalog.resolve(repo, "main")
    catalog.close()
    running = serve(config)
    cache = tmp_path / "hf-cache"
    snapshot_download(REPO, endpoint=running.url, cache_dir=cache)
    snapshot_download(REPO, revision="v1.0", endpoint=running.url, cache_dir=cache)
    return cache / "models--tests--imported", commit


def test_hf_cache_import_keeps_commit_ids_and_refs(catalog, store, tmp_path, serve):
    cache_repo, commit = _hf_cache_from_a_mirror(tmp_path, serve)
    results = Importer(catalog, store).import_path(cache_repo, repo_id=None)
    assert [r.commit for r in results] == [commit]
    repo = catalog.repo("huggingface", "model", REPO)
    refs = {(r.kind, r.name): r.commit for r in catalog.refs(repo)}
    assert refs == {("branch", "main"): commit, ("branch", "v1.0"): commit}, (
        "the cache records refs without saying which are tags: imported as branches"
    )
    files = {f.path for f in catalog.files(catalog.snapshot(repo, commit))}
    assert {"big.bin", "sub/deeper/data.json", "model.safetensors"} <= files


def test_hf_cache_import_refuses_a_corrupted_blob(catalog, store, tmp_path, serve):
    cache_repo, _ = _hf_cache_from_a_mirror(tmp_path, serve)
    blob = next(p for p in (cache_repo / "blobs").iterdir() if len(p.name) == 64)
    data = bytearray(blob.read_bytes())
    data[0] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        Importer(catalog, store).import_path(cache_repo, repo_id=None)
    with pytest.raises(RepoNotFound):
        catalog.repo("huggingface", "model", REPO)
    assert list(store.tmp_dir.iterdir()) == [], "no temp file left behind"


def test_hf_cache_import_skips_an_incomplete_snapshot(catalog, store, tmp_path, serve):
    cache_repo, commit = _hf_cache_from_a_mirror(tmp_path, serve)
    (cache_repo / "snapshots" / commit / "vocab.txt").unlink()
    with pytest.raises(ValueError, match="no complete snapshot"):
        Importer(catalog, store).import_path(cache_repo, repo_id=None)


def test_kill_9_mid_import_publishes_nothing_and_the_next_import_completes(tmp_path):
    folder = tmp_path / "big-model"
    shutil.copytree(sample_model_dir(), folder)
    with open(folder / "huge.bin", "wb") as f:
        f.truncate(512 * 1024 * 1024)  # sparse: cheap to make, real bytes to copy and hash
    home = tmp_path / "home"
    command = [sys.executable, "-m", "mirror.cli", "--home", str(home), "mirror", "import",
               str(folder), "--repo", SAMPLE_REPO, "--no-progress"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tmp_dir = home / "store" / "tmp"
    deadline = time.monotonic() + 60
    # Wait until the huge file is being written (its temp file past 64 MiB), then kill -9.
    while time.monotonic() < deadline and process.poll() is None:
        parts = list(tmp_dir.glob("*.part")) if tmp_dir.exists() else []
        if any(p.stat().st_size > 64 * 1024 * 1024 for p in parts if p.exists()):
            break
        time.sleep(0.005)
    assert process.poll() is None, "the import finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)

    catalog = Catalog(home / "catalog.sqlite")
    # Look at the store as the killed process left it, before a new store cleans it up.
    blobs = list((home / "store" / "blobs").rglob("*"))
    for path in (p for p in blobs if p.is_file()):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name, (
            f"{path.name}: a visible blob must be complete and verified"
        )
    huge_sha = hashlib.sha256(b"\0" * (512 * 1024 * 1024)).hexdigest()
    assert huge_sha not in {p.name for p in blobs}
    with pytest.raises(RepoNotFound):
        catalog.repo("huggingface", "model", SAMPLE_REPO)
    assert list(tmp_dir.glob("*.part")), "the killed writer's temp file is still there"

    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    repo = catalog.repo("huggingface", "model", SAMPLE_REPO)
    files = {f.path: f for f in catalog.files(catalog.snapshot(repo, catalog.resolve(repo, "main")))}
    assert files["huge.bin"].sha256 == huge_sha
    assert list(tmp_dir.glob("*.part")) == [], "the stale temp file was cleaned up"
    store = BlobStore(home / "store")
    assert store.verify(huge_sha)
    catalog.close()


def test_derived_commit_pins_the_design_vector():
    files = [
        FileEntry("b.txt", 3, hashlib.sha256(b"abc").hexdigest(), "", False),
        FileEntry("a/x.bin", 0, hashlib.sha256(b"").hexdigest(), "", True),
    ]
    lines = b"".join(
        b"%s\0%d\0%s\n" % (f.path.encode(), f.size, f.sha256.encode())
        for f in sorted(files, key=lambda f: f.path.encode())
    )
    assert derived_commit(files) == hashlib.sha1(lines).hexdigest()
