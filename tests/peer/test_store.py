"""peer.store.BlobStore: content-addressed, atomic, verified writes."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import secrets
import stat
import subprocess

import pytest

from peer.errors import BlobMissing, IntegrityError
from peer.hashing import CHUNK, Hasher
from peer.store import BlobStore, Expected, read_around_cache


@pytest.fixture
def store(tmp_path) -> BlobStore:
    return BlobStore(tmp_path / "store")


def _source(tmp_path, data: bytes, name: str = "src.bin"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _temps(store: BlobStore) -> list[str]:
    return sorted(p.name for p in store.tmp_dir.iterdir())


def _blob_files(store: BlobStore) -> list[str]:
    return sorted(str(p.relative_to(store.blob_dir)) for p in store.blob_dir.rglob("*") if p.is_file())


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_ingest_file_lands_at_sharded_sha256_path_read_only_with_no_temp_left(store, tmp_path):
    data = random.Random(1).randbytes(100_000)
    sha = hashlib.sha256(data).hexdigest()
    digests, created = store.ingest_file(_source(tmp_path, data), lfs=False)
    expected_path = store.root / "blobs" / "sha256" / sha[:2] / sha[2:4] / sha
    assert digests.sha256 == sha
    assert created is True, "new bytes should be reported as created"
    assert expected_path.is_file(), f"blob should be at {expected_path}"
    assert expected_path.read_bytes() == data
    assert stat.S_IMODE(expected_path.stat().st_mode) == 0o444, "a published blob should be read-only"
    assert _temps(store) == [], "tmp/ should be empty after a successful ingest"
    assert store.has(sha) and store.size_of(sha) == len(data)


def test_ingest_of_the_same_bytes_twice_is_deduplicated(store, tmp_path):
    data = b"same bytes" * 1000
    first, created1 = store.ingest_file(_source(tmp_path, data, "one"), lfs=False)
    second, created2 = store.ingest_file(_source(tmp_path, data, "two"), lfs=False)
    assert (created1, created2) == (True, False), "second ingest of identical bytes is not new"
    assert first == second, "both ingests should report the same digests"
    assert list(store.iter_blobs()) == [first.sha256], "the store should hold exactly one copy"
    assert len(_blob_files(store)) == 1
    assert _temps(store) == [], "the duplicate's temp file should be removed"


def test_wrong_expected_sha256_raises_and_leaves_no_blob_and_no_temp(store, tmp_path):
    data = b"payload" * 100
    wrong = "0" * 64
    with pytest.raises(IntegrityError) as e:
        store.ingest_file(_source(tmp_path, data), lfs=True, expected=Expected(sha256=wrong))
    assert e.value.what == "sha256"
    assert _blob_files(store) == [], "nothing should be published on a sha256 mismatch"
    assert _temps(store) == [], "the temp file should be removed on a sha256 mismatch"
    assert not store.has(hashlib.sha256(data).hexdigest())


def test_wrong_expected_size_raises_and_leaves_no_blob_and_no_temp(store, tmp_path):
    data = b"payload" * 100
    with pytest.raises(IntegrityError) as e:
        store.ingest_file(_source(tmp_path, data), lfs=False, expected=Expected(size=len(data) + 1))
    assert (e.value.what, e.value.expected, e.value.actual) == ("size", str(len(data) + 1), str(len(data)))
    assert _blob_files(store) == [], "nothing should be published on a size mismatch"
    assert _temps(store) == [], "the temp file should be removed on a size mismatch"


def test_wrong_expected_git_sha1_raises_for_a_non_lfs_file(store, tmp_path):
    with pytest.raises(IntegrityError) as e:
        store.ingest_file(_source(tmp_path, b"hello\n"), lfs=False, expected=Expected(git_sha1="1" * 40))
    assert e.value.what == "git sha1"
    assert _blob_files(store) == [] and _temps(store) == []


def test_right_expectations_are_accepted(store, tmp_path):
    data = b"hello\n"
    exp = Expected(
        size=6,
        sha256=hashlib.sha256(data).hexdigest(),
        git_sha1="ce013625030ba8dba906f756967f9e9ca394464a",
    )
    digests, created = store.ingest_file(_source(tmp_path, data), lfs=False, expected=exp)
    assert created and digests.sha256 == exp.sha256


def test_verify_is_true_for_a_good_blob_and_false_after_corruption(store, tmp_path):
    data = random.Random(2).randbytes(50_000)
    digests, _ = store.ingest_file(_source(tmp_path, data), lfs=False)
    assert store.verify(digests.sha256) is True, "an intact blob should verify"
    path = store.path_for(digests.sha256)
    path.chmod(0o644)
    with open(path, "r+b") as f:
        f.seek(1234)
        f.write(bytes([data[1234] ^ 0xFF]))
    assert store.verify(digests.sha256) is False, "a blob with a flipped byte should not verify"


def test_verify_of_a_missing_blob_raises_blob_missing(store):
    with pytest.raises(BlobMissing):
        store.verify("a" * 64)


def test_scrub_reports_the_corrupted_blob_and_a_missing_one_but_not_the_good_one(store, tmp_path):
    good, _ = store.ingest_file(_source(tmp_path, b"good" * 1000, "g"), lfs=False)
    bad, _ = store.ingest_file(_source(tmp_path, b"bad" * 1000, "b"), lfs=False)
    gone, _ = store.ingest_file(_source(tmp_path, b"gone" * 1000, "x"), lfs=False)
    path = store.path_for(bad.sha256)
    path.chmod(0o644)
    path.write_bytes(b"BAD" * 1000)
    assert store.remove(gone.sha256) is True
    problems = dict(store.scrub([(d.sha256, d.blake3) for d in (good, bad, gone)]))
    assert set(problems) == {bad.sha256, gone.sha256}, "scrub should flag exactly the bad and missing blobs"
    assert problems[gone.sha256] == "missing"
    assert problems[bad.sha256].startswith("blake3 "), f"unexpected problem text {problems[bad.sha256]!r}"
    assert bad.blake3 in problems[bad.sha256], "the problem should name the recorded blake3"


def test_remove_stale_temps_removes_a_dead_writers_file_and_keeps_a_live_ones(store):
    pid = _dead_pid()
    with pytest.raises(ProcessLookupError):  # precondition: that pid is really gone
        os.kill(pid, 0)
    stale = store.tmp_dir / f"{pid}.{secrets.token_hex(8)}.part"
    mine = store.tmp_dir / f"{os.getpid()}.{secrets.token_hex(8)}.part"
    stale.write_bytes(b"half a blob")
    mine.write_bytes(b"being written")
    assert store.remove_stale_temps() == 1, "exactly the dead writer's temp file should go"
    assert not stale.exists(), "a temp file of a dead pid should be removed"
    assert mine.exists(), "a temp file of a live pid (ours) should be kept"


def test_opening_a_store_removes_stale_temps(tmp_path):
    root = tmp_path / "store"
    BlobStore(root)
    stale = root / "tmp" / f"{_dead_pid()}.{secrets.token_hex(8)}.part"
    stale.write_bytes(b"x")
    BlobStore(root)
    assert not stale.exists(), "a new BlobStore on the same root should clean up dead writers' temps"


def test_blob_writer_that_raises_midway_leaves_nothing_behind(store):
    with pytest.raises(RuntimeError, match="boom"):
        with store.writer(1000, lfs=False) as w:
            w.write(b"x" * 500)
            assert _temps(store) != [], "precondition: the writer has a temp file while writing"
            raise RuntimeError("boom")
    assert _temps(store) == [], "an aborted writer should remove its temp file"
    assert _blob_files(store) == [], "an aborted writer should publish nothing"


def test_blob_writer_commit_with_fewer_bytes_than_promised_leaves_nothing_behind(store):
    with store.writer(1000, lfs=False) as w:
        w.write(b"x" * 999)
        with pytest.raises(IntegrityError):
            w.commit()
    assert _temps(store) == [] and _blob_files(store) == []


def test_blob_writer_commit_publishes(store):
    data = b"streamed" * 300
    with store.writer(len(data), lfs=True) as w:
        w.write(data[:100])
        w.write(data[100:])
        digests = w.commit()
    assert w.created is True
    with store.open(digests.sha256) as f:
        assert f.read() == data


@pytest.mark.parametrize("lfs", [True, False])
def test_a_streamed_writer_checks_on_the_way_and_takes_the_other_digests_at_commit(
        store, tmp_path, lfs):
    """A pull-through's writer takes only the checking digests as bytes come (its clients wait
    for those), blake3 and the pieces from the file at commit: the same digests in the end."""
    from peer.hashing import hash_file

    data = random.Random(7).randbytes(9 * 1024 * 1024 + 17)  # pieces, and a short last one
    (tmp_path / "src").write_bytes(data)
    whole = hash_file(tmp_path / "src", lfs=lfs)
    expected = Expected(size=len(data), sha256=whole.sha256, git_sha1=whole.git_sha1)
    w = store.resumable_writer(whole.sha256, len(data), lfs=lfs, expected=expected,
                               streamed=True)
    for at in range(0, len(data), 1 << 20):
        w.write(data[at:at + (1 << 20)])
    checked = w.verify()
    assert checked.sha256 == whole.sha256 and checked.blake3 == "" and checked.pieces == b""
    assert w.commit() == whole and w.verify() == whole
    with store.open(whole.sha256) as f:
        assert f.read() == data
    bad = store.resumable_writer(whole.sha256, len(data), lfs=lfs, expected=expected,
                                 streamed=True)
    bad.write(data[:-1] + b"!")
    with pytest.raises(IntegrityError):
        bad.verify()


def test_open_of_a_missing_blob_raises_blob_missing(store):
    with pytest.raises(BlobMissing):
        store.open("b" * 64)


@pytest.mark.parametrize("bad", ["", "abc", "A" * 64, "g" * 64, "../" + "a" * 61])
def test_path_for_refuses_what_is_not_a_sha256(store, bad):
    with pytest.raises(ValueError):
        store.path_for(bad)


def test_path_for_refuses_a_sha256_with_a_trailing_newline(store):
    with pytest.raises(ValueError):
        store.path_for("a" * 64 + "\n")


# read_around_cache: a late hasher's second pass reads the file with O_DIRECT where it can


@pytest.mark.parametrize("size", [0, 1, 4095, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 12345])
def test_read_around_cache_yields_the_file_for_any_size_including_an_unaligned_tail(
        tmp_path, size):
    data = random.Random(size).randbytes(size)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert b"".join(bytes(c) for c in read_around_cache(path, size)) == data


def test_read_around_cache_refuses_a_file_longer_than_promised(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"x" * (CHUNK + 1))
    with pytest.raises(IntegrityError, match=f"more than {CHUNK}"):
        list(read_around_cache(path, CHUNK))


def test_read_around_cache_yields_a_short_file_and_the_hasher_catches_it(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"y" * (CHUNK + 7))
    h = Hasher(2 * CHUNK, lfs=True)
    for chunk in read_around_cache(path, 2 * CHUNK):
        h.update(chunk)
    assert h.received == CHUNK + 7
    with pytest.raises(IntegrityError):
        h.finish()


def test_read_around_cache_reads_the_rest_through_the_cache_when_direct_reads_are_refused(
        tmp_path, monkeypatch):
    """Some file systems take O_DIRECT's open and refuse its reads (EINVAL): from where they
    were refused, the file is read the ordinary way."""
    data = random.Random(7).randbytes(3 * CHUNK + 99)
    path = tmp_path / "blob"
    path.write_bytes(data)
    calls = []
    real = os.preadv

    def preadv(fd, buffers, offset):
        calls.append(offset)
        if len(calls) > 1:
            raise OSError(errno.EINVAL, "refused")
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", preadv)
    assert b"".join(bytes(c) for c in read_around_cache(path, len(data))) == data
