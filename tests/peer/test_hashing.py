"""peer.hashing: every digest a blob needs, from one pass, in either threading mode."""

from __future__ import annotations

import hashlib
import io
import random
import shutil
import subprocess

import blake3
import pytest

from peer.errors import IntegrityError
from peer.hashing import (
    CHUNK,
    PARALLEL_MIN_SIZE,
    GiB,
    Hasher,
    MiB,
    hash_file,
    piece_length_for,
    read_chunks,
)
from peer.store import read_around_cache

HELLO_GIT_SHA1 = "ce013625030ba8dba906f756967f9e9ca394464a"
EMPTY_GIT_SHA1 = "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
PIECE = 4 * MiB


@pytest.fixture(scope="module")
def blob() -> bytes:
    """Two full 4 MiB pieces and a partial third one."""
    return random.Random(1234).randbytes(9 * MiB + 12345)


def _hash(data: bytes, *, lfs: bool, parallel: bool | None = None, chunks=None):
    h = Hasher(len(data), lfs=lfs, parallel=parallel)
    for chunk in chunks if chunks is not None else [data]:
        h.update(chunk)
    return h.finish()


def _split(data: bytes, sizes: list[int]) -> list[bytes]:
    """Cut `data` into chunks whose sizes cycle through `sizes`."""
    out, i, k = [], 0, 0
    while i < len(data):
        n = sizes[k % len(sizes)]
        out.append(data[i : i + n])
        i += n
        k += 1
    return out


def _reference_pieces(data: bytes) -> bytes:
    return b"".join(hashlib.sha1(data[i : i + PIECE]).digest() for i in range(0, len(data), PIECE))


def test_small_non_lfs_file_gets_sha256_blake3_and_git_blob_sha1():
    d = _hash(b"hello\n", lfs=False)
    assert d.size == 6
    assert d.sha256 == hashlib.sha256(b"hello\n").hexdigest(), "sha256 should be hashlib's"
    assert d.blake3 == blake3.blake3(b"hello\n").hexdigest(), "blake3 should be the blake3 module's"
    assert d.git_sha1 == HELLO_GIT_SHA1, "git blob sha1 of b'hello\\n' is the PROTOCOLS.md vector"
    assert (d.piece_length, d.pieces) == (0, b""), "a non-LFS file has no torrent pieces"


def test_empty_file_has_git_empty_blob_sha1():
    d = _hash(b"", lfs=False)
    assert d.git_sha1 == EMPTY_GIT_SHA1, "the empty blob should hash to git's well-known e69de29..."
    assert d.sha256 == hashlib.sha256(b"").hexdigest()


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
@pytest.mark.parametrize("data", [b"hello\n", b"", b"\x00\xff" * 5000, bytes(range(256)) * 300])
def test_git_blob_sha1_agrees_with_git_hash_object(data, tmp_path):
    out = subprocess.run(
        ["git", "hash-object", "--stdin"], input=data, capture_output=True, check=True, cwd=tmp_path
    ).stdout.decode().strip()
    assert _hash(data, lfs=False).git_sha1 == out, "git_sha1 should equal `git hash-object`"


def test_lfs_file_has_no_git_sha1():
    assert _hash(b"hello\n", lfs=True).git_sha1 is None, "an LFS blob's ETag is its sha256, not a git sha1"


def test_lfs_blob_gets_one_sha1_per_4mib_piece_including_the_last_partial_one(blob):
    d = _hash(blob, lfs=True)
    assert d.piece_length == PIECE, "blobs up to 20 GiB use 4 MiB pieces"
    assert len(d.pieces) == 20 * 3, "9 MiB + 12345 bytes make two full pieces and one partial"
    for n in range(3):
        expected = hashlib.sha1(blob[n * PIECE : (n + 1) * PIECE]).digest()
        assert d.pieces[20 * n : 20 * (n + 1)] == expected, f"piece {n} should be sha1 of its slice"


def test_lfs_blob_of_exactly_4mib_has_one_piece():
    data = random.Random(7).randbytes(PIECE)
    d = _hash(data, lfs=True)
    assert d.pieces == hashlib.sha1(data).digest(), "exactly 4 MiB is one whole piece"


def test_lfs_blob_under_4mib_has_no_pieces():
    d = _hash(random.Random(8).randbytes(PIECE - 1), lfs=True)
    assert (d.piece_length, d.pieces) == (0, b""), "LFS blobs under 4 MiB travel over HTTP, no torrent"


def test_non_lfs_blob_over_4mib_has_no_pieces(blob):
    d = _hash(blob, lfs=False)
    assert (d.piece_length, d.pieces) == (0, b""), "only LFS blobs get torrent pieces"
    assert d.git_sha1 == hashlib.sha1(b"blob %d\0" % len(blob) + blob).hexdigest()


@pytest.mark.parametrize(
    "size, expected",
    [
        (0, 4 * MiB),
        (4 * MiB, 4 * MiB),
        (20 * GiB - 1, 4 * MiB),
        (20 * GiB, 4 * MiB),
        (20 * GiB + 1, 16 * MiB),
        (100 * GiB, 16 * MiB),
    ],
)
def test_piece_length_is_4mib_up_to_20gib_inclusive_and_16mib_above(size, expected):
    assert piece_length_for(size) == expected, f"piece length for {size} bytes should be {expected}"


CHUNKINGS = {
    "whole": None,
    "1000-byte": [1000],
    "3MiB+7": [3 * MiB + 7],
    "mixed": [1000, 3 * MiB + 7, 1, 2 * MiB, 999_999],
}


@pytest.mark.parametrize("lfs", [True, False], ids=["lfs", "git"])
@pytest.mark.parametrize("chunking", CHUNKINGS, ids=list(CHUNKINGS))
@pytest.mark.parametrize("parallel", [True, False], ids=["parallel", "sequential"])
def test_parallel_and_sequential_modes_give_the_reference_digests_for_any_chunking(
    blob, lfs, chunking, parallel
):
    sizes = CHUNKINGS[chunking]
    chunks = None if sizes is None else _split(blob, sizes)
    d = _hash(blob, lfs=lfs, parallel=parallel, chunks=chunks)
    assert d.sha256 == hashlib.sha256(blob).hexdigest(), "sha256 must not depend on chunking or threads"
    assert d.blake3 == blake3.blake3(blob).hexdigest(), "blake3 must not depend on chunking or threads"
    if lfs:
        assert d.git_sha1 is None
        assert d.pieces == _reference_pieces(blob), "piece hashes must not depend on chunk boundaries"
    else:
        assert d.git_sha1 == hashlib.sha1(b"blob %d\0" % len(blob) + blob).hexdigest()
        assert d.pieces == b""


def test_parallel_and_sequential_digests_are_identical(blob):
    chunks = _split(blob, [1000, 3 * MiB + 7])
    par = _hash(blob, lfs=True, parallel=True, chunks=chunks)
    seq = _hash(blob, lfs=True, parallel=False, chunks=chunks)
    assert par == seq, "both threading modes should produce the very same Digests"


@pytest.mark.parametrize("parallel", [True, False], ids=["parallel", "sequential"])
def test_fewer_bytes_than_promised_raise_integrity_error(parallel):
    h = Hasher(100, lfs=False, parallel=parallel)
    h.update(b"x" * 99)
    with pytest.raises(IntegrityError) as e:
        h.finish()
    assert (e.value.what, e.value.expected, e.value.actual) == ("size", "100", "99")


@pytest.mark.parametrize("parallel", [True, False], ids=["parallel", "sequential"])
def test_more_bytes_than_promised_raise_integrity_error(parallel):
    h = Hasher(100, lfs=True, parallel=parallel)
    h.update(b"x" * 60)
    h.update(b"x" * 41)
    with pytest.raises(IntegrityError) as e:
        h.finish()
    assert (e.value.what, e.value.expected, e.value.actual) == ("size", "100", "101")


def test_read_chunks_refuses_a_source_longer_than_promised():
    with pytest.raises(IntegrityError, match="more than 10"):
        list(read_chunks(io.BytesIO(b"x" * 11), 10))


def test_read_chunks_yields_a_short_source_without_error_and_the_hasher_catches_it():
    chunks = list(read_chunks(io.BytesIO(b"x" * 5), 10))
    assert b"".join(chunks) == b"x" * 5, "a short source yields what it has"
    h = Hasher(10, lfs=False)
    for c in chunks:
        h.update(c)
    with pytest.raises(IntegrityError):
        h.finish()


def test_read_chunks_reads_in_chunk_sized_pieces(blob):
    chunks = list(read_chunks(io.BytesIO(blob), len(blob)))
    assert [len(c) for c in chunks] == [CHUNK, CHUNK, len(blob) - 2 * CHUNK]
    assert b"".join(chunks) == blob


def test_hash_file_matches_in_memory_hashing(blob, tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(blob)
    assert hash_file(path, lfs=True) == _hash(blob, lfs=True, parallel=False)
    assert hash_file(path, lfs=False) == _hash(blob, lfs=False, parallel=False)


def test_hash_file_above_the_parallel_threshold_matches_hashlib(tmp_path):
    data = random.Random(99).randbytes(PARALLEL_MIN_SIZE + 3)
    path = tmp_path / "big"
    path.write_bytes(data)
    d = hash_file(path, lfs=True)
    assert d.sha256 == hashlib.sha256(data).hexdigest()
    assert d.blake3 == blake3.blake3(data).hexdigest()
    assert d.pieces == _reference_pieces(data), "5 pieces, the last one 3 bytes long"
    assert len(d.pieces) == 20 * 5


def test_a_late_hasher_caught_up_from_the_file_has_every_digest(blob, tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(blob)
    h = Hasher(len(blob), lfs=True, late=True)
    for chunk in _split(blob, [CHUNK]):
        h.update(chunk)
    first = h.finish()
    assert first.blake3 == "" and first.pieces == b"", "a late hasher leaves these for later"
    assert h.catch_up(first, read_around_cache(path, len(blob))) == hash_file(path, lfs=True)
