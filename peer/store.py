"""The blob store: each blob's bytes once, named by their sha256.

Layout under the root: `blobs/sha256/ab/cd/<hex>` for published blobs, `tmp/` for writes in
progress. A blob becomes visible only by `os.replace` of a temp file that was written, fsynced
and verified: a reader never sees half a blob, and a process killed mid-write leaves only a temp
file, which the next store that opens removes once its writer is dead.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import mmap
import os
import re
import secrets
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .atomic import pid_alive, place
from .errors import BlobMissing, Busy, IntegrityError, out_of_space
from .hashing import CHUNK, Digests, Hasher, blake3_file, read_chunks, sha256_file
from .paths import ascii_digits, is_sha256

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Expected:
    """What the source promised: checked before a blob is published."""

    size: int | None = None
    sha256: str | None = None
    git_sha1: str | None = None
    #: hex; the writer computes MD5 only when made with `md5=True`
    md5: str | None = None


class _Writeback:
    """Start writing a blob's pages to disk while it is still being copied, and keep the dirty
    pages bounded: otherwise the final fsync flushes the whole file at once, and a 1 GiB import
    spends most of its time there (measured: 480 MB/s with it vs 900 MB/s without, see the
    README's import row). Linux `sync_file_range`; elsewhere a no-op, the fsync does it all."""

    START_EVERY = 8 * 1024 * 1024
    WINDOW = 64 * 1024 * 1024
    _call = None

    def __init__(self, fd: int):
        self.fd = fd
        self.started = 0  # writeback requested for [0, started)
        self.settled = 0  # on disk for [0, settled)

    @classmethod
    def _sync_file_range(cls):
        if cls._call is None:
            cls._call = False
            if sys.platform.startswith("linux"):
                try:
                    libc = ctypes.CDLL(None, use_errno=True)
                    fn = libc.sync_file_range
                    fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong,
                                   ctypes.c_uint]
                    fn.restype = ctypes.c_int
                    cls._call = fn
                except (OSError, AttributeError):
                    pass
        return cls._call

    def advance(self, written: int) -> None:
        fn = self._sync_file_range()
        if not fn or written - self.started < self.START_EVERY:
            return
        fn(self.fd, self.started, written - self.started, 2)  # SYNC_FILE_RANGE_WRITE
        self.started = written
        if self.started - self.settled > self.WINDOW:
            target = self.started - self.WINDOW
            # WAIT_BEFORE | WRITE | WAIT_AFTER: the range behind the window is on disk.
            fn(self.fd, self.settled, target - self.settled, 1 | 2 | 4)
            self.settled = target


#: the memory page, and O_DIRECT's unit of offset, length and address
PAGE = 4096


def open_direct(path: str | os.PathLike, flags: int = os.O_WRONLY) -> int | None:
    """A second descriptor on `path` that writes (or, `flags` O_RDONLY, reads) around the
    page cache, where supported."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return None
    try:
        return os.open(path, flags | flag)
    except OSError:
        return None  # tmpfs and some others refuse O_DIRECT


def pwrite_all(fd: int, data, offset: int) -> None:
    """Write all of `data` at `offset`. A write may take fewer bytes than it was given (Linux
    does, when the disk fills up mid-buffer): the rest is written again, so that a short write
    shows as the error of the next, never as bytes silently missing from a blob whose hash
    was taken from the stream."""
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        if done == 0:
            raise OSError(errno.ENOSPC, "nothing written")
        view, offset = view[done:], offset + done


def direct_aligned(data, offset: int) -> bool:
    """O_DIRECT wants the file offset, the length and the memory address page-aligned."""
    if offset % PAGE or len(data) % PAGE or not len(data):
        return False
    try:
        address = ctypes.addressof(ctypes.c_char.from_buffer(data))
    except TypeError:  # read-only memory (bytes): address not to be had, write it buffered
        return False
    return address % PAGE == 0


def read_around_cache(path: str | os.PathLike, size: int) -> Iterator[memoryview]:
    """`read_chunks` of the file at `path`, read around the page cache (O_DIRECT) where the
    file system allows. For a file its clients streamed as it arrived, whose pages they let
    go behind them (mirror/flights.py `passed`): read through the cache, each page read back
    is a page of memory taken fresh and copied into, which on this machine's VM cost more CPU
    than the hashing's own share; read around it, the disk writes into our buffers."""
    fd = open_direct(path, os.O_RDONLY) if size >= CHUNK else None
    if fd is None:
        with open(path, "rb") as f:
            yield from read_chunks(f, size)
        return
    try:
        offset = yield from _read_direct(fd, size)
    finally:
        os.close(fd)
    if offset < size:  # the file system took O_DIRECT's open but not its reads
        with open(path, "rb") as f:
            f.seek(offset)
            yield from read_chunks(f, size - offset)


def _read_direct(fd: int, size: int) -> Iterator[memoryview]:
    """Chunks of `fd` (opened O_DIRECT) from its start, in whole pages (a short read at the
    end of the file); returns where it stopped: before `size` when a read is refused (EINVAL:
    the caller reads the rest through the cache), else `size` (a file that ended early shows
    as a size mismatch in `Hasher.finish`)."""
    if os.fstat(fd).st_size > size:
        raise IntegrityError("size", str(size), f"more than {size}")
    ring = [mmap.mmap(-1, CHUNK) for _ in range(3)]  # page-aligned, as O_DIRECT wants
    offset = turn = 0
    while offset < size:
        want = min(CHUNK, size - offset)
        view = memoryview(ring[turn % 3])
        try:
            got = os.preadv(fd, [view[: -(-want // PAGE) * PAGE]], offset)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            return offset
        if got <= 0:
            return size
        got = min(got, want)
        offset += got
        turn += 1
        yield view[:got]
    return offset



class BlobWriter:
    """A blob being written: bytes go to a unique temp file and through the hasher; `commit`
    checks them against what was expected and renames them into place."""

    def __init__(self, store: BlobStore, size: int, *, lfs: bool, expected: Expected | None,
                 md5: bool = False, streamed: bool = False):
        self.store = store
        self.size = size
        self.expected = expected or Expected()
        #: read by clients as it arrives (a pull-through's): written through the page cache,
        #: which they read from, and only the checking digests taken on the way (`verify`),
        #: the rest once they have it all (`commit`)
        self.streamed = streamed
        self.hasher = Hasher(size, lfs=lfs, md5=md5, late=streamed)
        self.done = False
        #: after commit: True when these bytes were new to the store, False when deduplicated.
        self.created = False
        self.written = 0
        with self._space():
            self.tmp_path, fd = self._open()
        self.file = os.fdopen(fd, "r+b" if self.written else "wb", buffering=0)
        self._writeback = _Writeback(fd)
        # Around the page cache, unless clients read the bytes from this file as they arrive:
        # written around it, each byte they read was a read from the disk again.
        self._direct = None if streamed else open_direct(self.tmp_path)
        self._verified: Digests | None = None

    def _open(self) -> tuple[Path, int]:
        path = self.store.tmp_dir / f"{os.getpid()}.{secrets.token_hex(8)}.part"
        return path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)

    @contextlib.contextmanager
    def _space(self) -> Iterator[None]:
        """A disk that fills up meanwhile is `InsufficientSpace`, said in one line."""
        try:
            yield
        except OSError as e:
            full = out_of_space(e, self.store.root, writing=f"a blob of {self.size} bytes",
                                needed=self.size - self.written)
            if full is None:
                raise
            raise full from e

    def write(self, data: bytes | memoryview) -> None:
        """Append `data`. Page-aligned buffers (`read_chunks` gives them) bypass the page cache
        with O_DIRECT: no copy into the cache and no dirty pages for the final fsync to flush,
        which doubled import throughput (README, import row). Anything else is written
        through the cache, with writeback started as it goes."""
        self.hasher.update(data)
        with self._space():
            if self._direct is not None and direct_aligned(data, self.written):
                try:
                    if os.pwrite(self._direct, data, self.written) == len(data):
                        self.written += len(data)
                        return
                    # A short write (the disk filling up): the whole buffer again, through
                    # the page cache, where the error shows.
                except OSError as e:
                    if e.errno != errno.EINVAL:
                        raise
                    self._close_direct()  # this file system refuses O_DIRECT after all
            pwrite_all(self.file.fileno(), data, self.written)
        self.written += len(data)
        self._writeback.advance(self.written)

    @property
    def settled(self) -> int:
        """Bytes from the start that are on disk, their pages clean (a reader may drop them
        from the page cache)."""
        return self.written if self.done else self._writeback.settled

    def _close_direct(self) -> None:
        if self._direct is not None:
            os.close(self._direct)
            self._direct = None

    def verify(self) -> Digests:
        """The bytes' digests, checked against what was expected (IntegrityError, and the
        bytes discarded, if they differ); `commit` then makes them durable and places them."""
        if self._verified is None:
            try:
                digests = self.hasher.finish()
                self._check(digests)
            except BaseException:
                self.abort()
                raise
            self._verified = digests
        return self._verified

    def commit(self) -> Digests:
        try:
            digests = self._verified = self.hasher.catch_up(
                self.verify(), read_around_cache(self.tmp_path, self.size))
            self._close_direct()
            with self._space():
                os.fsync(self.file.fileno())
                self.file.close()
                self.created = self.store._publish(self.tmp_path, digests.sha256)
            self.done = True
            return digests
        finally:
            if not self.done:
                self.abort()

    def _check(self, d: Digests) -> None:
        e = self.expected
        if e.size is not None and d.size != e.size:
            raise IntegrityError("size", str(e.size), str(d.size))
        if e.sha256 is not None and d.sha256 != e.sha256:
            raise IntegrityError("sha256", e.sha256, d.sha256)
        if e.git_sha1 is not None and d.git_sha1 is not None and d.git_sha1 != e.git_sha1:
            raise IntegrityError("git sha1", e.git_sha1, d.git_sha1)
        if e.md5 is not None and d.md5 != e.md5:
            raise IntegrityError("md5", e.md5, d.md5 or "nothing (not computed)")

    def abort(self) -> None:
        self._close_direct()
        if not self.file.closed:
            self.file.close()
        self.tmp_path.unlink(missing_ok=True)
        self.done = True

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc) -> None:
        if not self.done:
            self.abort()


class ResumableWriter(BlobWriter):
    """A blob fetched from the network, written to a temp file named after what it must hash
    to (`partial/<key>.part`), so that a process killed mid-download leaves bytes the next
    one continues from: they are re-read through the hasher (local reads are cheap, the
    network is not) and the download resumes at their end. A lock on the file keeps two
    fetches of one blob apart; `pause` keeps the bytes for later, `abort` discards them."""

    def __init__(self, store: BlobStore, key: str, size: int, *, lfs: bool, expected: Expected,
                 md5: bool = False, streamed: bool = False):
        if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", key):
            raise ValueError(f"a partial blob is named by its expected hash, not {key!r}")
        self._key = key
        super().__init__(store, size, lfs=lfs, expected=expected, md5=md5, streamed=streamed)

    def _open(self) -> tuple[Path, int]:
        path = self.store.partial_dir / f"{self._key}.part"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Busy(f"blob {self._key} is being fetched by another process") from None
        have = os.fstat(fd).st_size
        if have > self.size:
            os.ftruncate(fd, 0)
            have = 0
        # Re-hash what an earlier, interrupted fetch left; its bytes are checked with the rest.
        with open(path, "rb") as f:
            for chunk in read_chunks(f, have):
                self.hasher.update(chunk)
        self.written = have
        return path, fd

    def pause(self) -> None:
        """Stop, keeping the bytes written so far for the next attempt."""
        self._close_direct()
        if not self.file.closed:
            self.file.close()
        self.done = True

    def restart(self) -> None:
        """Drop what was written and start from zero (after a hash mismatch, say)."""
        os.ftruncate(self.file.fileno(), 0)
        self.written = 0
        self.hasher = Hasher(self.size, lfs=self.hasher.lfs, md5=self.hasher.md5,
                             late=self.streamed)



class BlobStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.blob_dir = self.root / "blobs" / "sha256"
        self.tmp_dir = self.root / "tmp"
        self.partial_dir = self.root / "partial"
        try:
            for folder in (self.blob_dir, self.tmp_dir, self.partial_dir):
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            full = out_of_space(e, self.root, writing="the store's folders")
            if full is None:
                raise
            raise full from e
        self.remove_stale_temps()

    def path_for(self, sha256: str) -> Path:
        if not is_sha256(sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        return self.blob_dir / sha256[:2] / sha256[2:4] / sha256

    def has(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def open(self, sha256: str) -> BinaryIO:
        try:
            return open(self.path_for(sha256), "rb")
        except FileNotFoundError:
            raise BlobMissing(sha256) from None

    def size_of(self, sha256: str) -> int:
        try:
            return self.path_for(sha256).stat().st_size
        except FileNotFoundError:
            raise BlobMissing(sha256) from None

    def writer(self, size: int, *, lfs: bool, expected: Expected | None = None) -> BlobWriter:
        return BlobWriter(self, size, lfs=lfs, expected=expected)

    def resumable_writer(self, key: str, size: int, *, lfs: bool, expected: Expected,
                         md5: bool = False, streamed: bool = False) -> ResumableWriter:
        return ResumableWriter(self, key, size, lfs=lfs, expected=expected, md5=md5,
                               streamed=streamed)

    def ingest_file(
        self,
        src: str | os.PathLike,
        *,
        lfs: bool,
        expected: Expected | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> tuple[Digests, bool]:
        """Copy a local file into the store in one read pass that also hashes it.

        Returns the digests and whether the bytes were new to the store."""
        with open(src, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            with self.writer(size, lfs=lfs, expected=expected) as w:
                for chunk in read_chunks(f, size):
                    w.write(chunk)
                    if progress:
                        progress(len(chunk))
                return w.commit(), w.created

    def _publish(self, tmp_path: Path, sha256: str) -> bool:
        dest = self.path_for(sha256)
        if dest.exists():
            # Deduplicated: the same bytes are already there.
            tmp_path.unlink(missing_ok=True)
            return False
        place(tmp_path, dest, mode=0o444)
        return True

    def remove(self, sha256: str) -> bool:
        try:
            self.path_for(sha256).unlink()
            return True
        except FileNotFoundError:
            return False

    def verify(self, sha256: str) -> bool:
        """Re-read one blob and check that its bytes still hash to its name."""
        try:
            return sha256_file(self.path_for(sha256)) == sha256
        except FileNotFoundError:
            raise BlobMissing(sha256) from None

    def scrub(self, records: Iterable[tuple[str, str]]) -> Iterator[tuple[str, str]]:
        """For each (sha256, blake3) record, yield (sha256, problem) where the bytes disagree.

        blake3 runs several times faster than sha256, so a periodic scrub of a large store is
        cheap; `verify` is the slower, authoritative check."""
        for sha256, expected_blake3 in records:
            try:
                actual = blake3_file(self.path_for(sha256))
            except FileNotFoundError:
                yield sha256, "missing"
                continue
            if actual != expected_blake3:
                yield sha256, f"blake3 {actual} != recorded {expected_blake3}"

    def iter_blobs(self) -> Iterator[str]:
        for path in self.blob_dir.glob("??/??/*"):
            if is_sha256(path.name):
                yield path.name

    def remove_stale_temps(self) -> int:
        """Remove temp files whose writing process is gone (killed mid-write)."""
        removed = 0
        for path in self.tmp_dir.glob("*.part"):
            pid_text = path.name.split(".", 1)[0]
            pid = ascii_digits(pid_text)
            if pid is not None and pid_alive(pid):
                continue
            try:
                path.unlink()
                removed += 1
                log.info("removed stale temp file %s", path.name)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise
        return removed

