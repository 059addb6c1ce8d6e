"""Every hash a blob needs, from one streaming pass over its bytes, in bounded memory.

One read computes what DESIGN.md section 2 lists: sha256 (the blob's name), blake3 (fast
re-verification), the git blob sha1 of non-LFS files (their ETag), and for LFS blobs of at least
4 MiB the SHA-1 of every torrent piece (so the blob's torrent never needs a second read).

hashlib and blake3 release the GIL on large buffers, so for big inputs the three streams run in
parallel threads, each fed the same immutable chunk, in order: the next chunk is handed over
only once every stream has finished the previous one. That bounds memory to one chunk in flight
plus the one the caller is reading.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import mmap
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

import blake3

from .errors import IntegrityError

MiB = 1024 * 1024
GiB = 1024 * MiB

#: LFS blobs at least this large get a torrent, hence piece hashes.
TORRENT_MIN_SIZE = 4 * MiB
#: Read size for files; a divisor of every piece length, so chunks never straddle a piece.
CHUNK = 4 * MiB
#: Below this, thread hand-offs cost more than they save.
PARALLEL_MIN_SIZE = 16 * MiB
#: Small writes are gathered to this size before being handed to the hashing threads.
_BATCH = 1 * MiB

_pool: ThreadPoolExecutor | None = None


def hash_threads() -> ThreadPoolExecutor:
    """The threads that hashing streams run on (hashlib and blake3 release the GIL)."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="hash")
    return _pool


def piece_length_for(size: int) -> int:
    """DESIGN.md section 3: 4 MiB pieces up to 20 GiB, 16 MiB above."""
    return 4 * MiB if size <= 20 * GiB else 16 * MiB


def wants_pieces(size: int, lfs: bool) -> bool:
    return lfs and size >= TORRENT_MIN_SIZE


def git_blob_header(size: int) -> bytes:
    return b"blob %d\0" % size


@dataclasses.dataclass(frozen=True)
class Digests:
    size: int
    sha256: str
    blake3: str
    #: git blob sha1 of the content; None for LFS blobs (their ETag is the sha256).
    git_sha1: str | None
    #: 0 when the blob has no torrent.
    piece_length: int
    #: the SHA-1 of each piece, concatenated (20 bytes each).
    pieces: bytes
    #: MD5 of the content (hex), when asked for: the only hash Kaggle's storage publishes
    md5: str | None = None


class _PieceHasher:
    def __init__(self, piece_length: int):
        self.piece_length = piece_length
        self.current = hashlib.sha1()
        self.filled = 0
        self.digests: list[bytes] = []

    def update(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            take = min(len(view), self.piece_length - self.filled)
            self.current.update(view[:take])
            self.filled += take
            view = view[take:]
            if self.filled == self.piece_length:
                self.digests.append(self.current.digest())
                self.current = hashlib.sha1()
                self.filled = 0

    def finish(self) -> bytes:
        if self.filled:
            self.digests.append(self.current.digest())
            self.filled = 0
        return b"".join(self.digests)


class Hasher:
    """Feed bytes in order with `update`, then `finish` for the `Digests`.

    `size` is the number of bytes promised (the git blob header needs it up front); `finish`
    raises `IntegrityError` when a different number arrived. A chunk handed to `update` must
    not change until the `update` after next has returned (when the threads are done with it);
    `read_chunks` keeps to that.
    """

    def __init__(self, size: int, *, lfs: bool, parallel: bool | None = None,
                 md5: bool = False, late: bool = False):
        self.size = size
        self.lfs = lfs
        #: only the digests that check the bytes (sha256, git sha1, md5) as they come; blake3
        #: and the pieces later, from the file (`catch_up`): a pull-through's clients wait
        #: for the check only, and the rest cost as much again (1.5 of 2.5 CPU seconds a GiB)
        self.late = late
        self.received = 0
        self._sha256 = hashlib.sha256()
        self._blake3 = blake3.blake3()
        self._git = None if lfs else hashlib.sha1(git_blob_header(size))
        self._pieces = _PieceHasher(piece_length_for(size)) if wants_pieces(size, lfs) else None
        self._pending: list[Future] = []
        self._batch: list[bytes] = []
        self._batched = 0
        self._streams: list[Callable[[bytes], None]] = [self._sha256.update]
        if self._git is not None:
            self._streams.append(self._git.update)
        if not late:
            self._streams += self._late_streams()
        self._md5 = hashlib.md5(usedforsecurity=False) if md5 else None
        if self._md5 is not None:
            self._streams.append(self._md5.update)
        #: the streams on threads of their own, side by side: worth it for more than one (a
        #: single one would only pay the batches' copy and the hand-offs: a late hasher's
        #: sha256, a pull-through's, hashes in its writer's thread)
        self._parallel = len(self._streams) > 1 and (
            size >= PARALLEL_MIN_SIZE if parallel is None else parallel)

    @property
    def md5(self) -> bool:
        return self._md5 is not None

    def _late_streams(self) -> list[Callable[[bytes], None]]:
        return [self._blake3.update] + ([self._pieces.update] if self._pieces else [])

    def catch_up(self, digests: Digests, chunks: Iterable[memoryview]) -> Digests:
        """`digests` (this hasher's `finish`) with what a `late` one left out, from `chunks`
        of the file that holds the same bytes (peer/store.py `read_around_cache`). In a
        thread of its own at the lowest CPU priority: the clients that have the bytes by now
        are still writing them, on the same cores."""
        if not self.late:
            return digests
        self._streams, self.late, self.received = self._late_streams(), False, 0
        self._parallel = False

        def work() -> Digests:
            with contextlib.suppress(OSError, AttributeError):  # Linux: a thread's own nice
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
            for chunk in chunks:
                self.update(chunk)
            return self.finish()

        with ThreadPoolExecutor(1, thread_name_prefix="digests catching up") as worker:
            done = worker.submit(work).result()
        return dataclasses.replace(digests, blake3=done.blake3, piece_length=done.piece_length,
                                   pieces=done.pieces)

    def update(self, data: bytes) -> None:
        if not data:
            return
        self.received += len(data)
        if not self._parallel:
            for stream in self._streams:
                stream(data)
            return
        if len(data) < _BATCH or self._batch:
            self._batch.append(bytes(data))
            self._batched += len(data)
            if self._batched < _BATCH:
                return
            data = b"".join(self._batch)
            self._batch.clear()
            self._batched = 0
        self._dispatch(data)

    def _dispatch(self, data: bytes) -> None:
        self._wait()
        pool = hash_threads()
        self._pending = [pool.submit(stream, data) for stream in self._streams]

    def _wait(self) -> None:
        for future in self._pending:
            future.result()
        self._pending = []

    def finish(self) -> Digests:
        if self._batch:
            self._dispatch(b"".join(self._batch))
            self._batch.clear()
        self._wait()
        if self.received != self.size:
            raise IntegrityError("size", str(self.size), str(self.received))
        pieces = self._pieces.finish() if self._pieces and not self.late else b""
        return Digests(
            size=self.size,
            sha256=self._sha256.hexdigest(),
            blake3="" if self.late else self._blake3.hexdigest(),
            git_sha1=self._git.hexdigest() if self._git else None,
            piece_length=self._pieces.piece_length if self._pieces else 0,
            pieces=pieces,
            md5=self._md5.hexdigest() if self._md5 else None,
        )


def read_chunks(src: BinaryIO, size: int) -> Iterator[memoryview]:
    """Read `size` bytes from `src` in CHUNK-sized pieces; a source that turns out longer than
    promised is refused (one that is shorter shows as a size mismatch in `Hasher.finish`).

    The pieces are views into a ring of three reused buffers: a fresh 4 MiB `bytes` per read
    costs a page fault per 4 KiB and halved the import's speed. A view stays valid until two
    more have been yielded, which is as long as a `Hasher` holds one (it hands a chunk to its
    threads only after they finished the one before)."""
    # Anonymous maps are page-aligned, so a blob writer can send them with O_DIRECT.
    ring = [mmap.mmap(-1, max(min(CHUNK, size), 1)) for _ in range(3)]
    remaining = size
    turn = 0
    while remaining > 0:
        view = memoryview(ring[turn % 3])[: min(CHUNK, remaining)]
        got = src.readinto(view)
        if not got:
            return
        remaining -= got
        turn += 1
        yield view[:got]
    if src.read(1):
        raise IntegrityError("size", str(size), f"more than {size}")


def hash_file(path: str | os.PathLike, *, lfs: bool) -> Digests:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        hasher = Hasher(size, lfs=lfs)
        for chunk in read_chunks(f, size):
            hasher.update(chunk)
        return hasher.finish()


def blake3_file(path: str | os.PathLike) -> str:
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
