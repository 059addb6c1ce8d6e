"""One upstream fetch of a file, shared by every client that asks for it while it arrives
(issue 19; DESIGN.md section 4.2).

A `Flight` fills the store's partial file for the blob (`partial/<hash>.part`, the same one a
sync writes, so a sync and a pull-through never fetch a blob twice) and tells its readers how
far the bytes have come. A `FlightResponse` streams a byte range of it to one client as the
bytes arrive, and holds the last `HOLD` bytes back until the whole file verified against the
upstream's hash: a client cannot complete a file whose bytes failed. When an attempt fails
verification its readers' connections are cut (they had bytes that may be wrong) and the
upstream is asked once more from zero.

Another process fetching the same blob (a `mirror sync`, a second server) holds the partial
file's lock: the flight then follows its file as it grows, and its end is the blob appearing
in the store (only verified bytes are ever renamed there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from peer.errors import Busy, IntegrityError, WeightswarmError
from peer.store import PAGE, BlobStore, Digests

from .egress import Egress
from .upstreams import Answered, RemoteFile

log = logging.getLogger(__name__)

#: bytes of a file held back until it verified (at least one, so no client completes it)
HOLD = 64 * 1024
#: bytes a response reads from the file at a time
READ = 1 << 20
#: seconds between looks at a file another process is fetching
FOLLOW_EVERY = 0.2
#: bytes every reader has passed that are dropped from the page cache at a time
DROP_EVERY = 16 << 20


class Cut(WeightswarmError):
    """The bytes a reader was sent belong to an attempt that failed: its connection is cut."""

    status = 502


class Flight:
    """One file's bytes on their way into the store, and how far they have come."""

    def __init__(self, f: RemoteFile, key: str):
        self.file = f
        self.key = key  # what its partial file is named by: the hash it must match
        self.size = f.size
        #: bytes of the current attempt in the partial file, readable at `path`
        self.written = 0
        self.path: Path | None = None
        #: bumped at each attempt: a reader of an earlier one is cut
        self.attempt = 0
        #: any attempt failed verification: its readers may hold wrong bytes
        self.failed_once = False
        #: the whole file hashed to what it must (before it is fsynced and placed)
        self.checked = False
        #: why its tail is kept from every reader though it verified (the scan policy)
        self.refusal: BaseException | None = None
        self.waits = 0
        #: bytes received, over every attempt
        self.fetched = 0
        #: each reader's position in the current attempt's file, and how far from its start
        #: that file is on disk (its pages clean): what every reader passed is dropped from
        #: the page cache (`passed`)
        self.readers: dict[object, int] = {}
        self.settled: Callable[[], int] = lambda: 0
        self.dropped = 0
        self.result: asyncio.Future[Digests | None] = \
            asyncio.get_running_loop().create_future()
        self._changed = asyncio.Event()

    @property
    def done(self) -> bool:
        return self.result.done()

    @property
    def verified(self) -> bool:
        return self.checked or (self.result.done() and self.result.exception() is None)

    @property
    def stored(self) -> bool:
        """Verified and placed in the store."""
        return self.result.done() and self.result.exception() is None

    def release(self) -> None:
        """Its bytes hashed to what they must: every reader may have the tail."""
        self.checked = True
        self._wake()

    def begin(self, path: Path | None, written: int,
              settled: Callable[[], int] = lambda: 0) -> None:
        """A new attempt (its file at `path`; None: none yet): readers of the last are cut.
        `settled()`: how far from its start the file is on disk."""
        self.attempt += 1
        self.path, self.written = path, written
        self.settled, self.dropped, self.readers = settled, 0, {}
        self._wake()

    def passed(self, reader: object, position: int, fd: int) -> None:
        """`reader` has sent the file up to `position` (read through `fd`). The bytes every
        reader has passed leave the page cache, once they are on disk: each client reads a
        streamed file once, as it arrives, and a GiB kept cached is a GiB of memory taken
        fresh, which costs more than the copy into it (1.7 CPU s a GiB written on this
        machine's VM, against 0.4 s when the pages are the ones just let go; README). A later
        reader reads them from the disk."""
        self.readers[reader] = position
        edge = min(min(self.readers.values()), self.settled())
        if edge < self.size:
            edge = edge // PAGE * PAGE
        if edge - self.dropped >= DROP_EVERY or edge == self.size > self.dropped:
            with contextlib.suppress(OSError, AttributeError):  # posix_fadvise: not on macOS
                os.posix_fadvise(fd, self.dropped, edge - self.dropped,
                                 os.POSIX_FADV_DONTNEED)
            self.dropped = edge

    def left(self, reader: object) -> None:
        self.readers.pop(reader, None)

    def advance(self, n: int) -> None:
        self.written += n
        self.fetched += n
        self._wake()

    def grown(self, written: int) -> None:
        """Another process's fetch of it has come this far."""
        self.written = written
        self._wake()

    def finish(self, digests: Digests | None = None, error: BaseException | None = None, *,
               path: Path | None = None) -> None:
        """Verified (the blob now at `path`), or failed for good."""
        if path is not None:
            self.path, self.written = path, self.size
        if not self.result.done():
            if error is None:
                self.result.set_result(digests)
            else:
                self.result.set_exception(error)
                self.result.exception()  # retrieved: a flight nobody awaited is not an error
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self) -> None:
        await self._changed.wait()


async def fly(flight: Flight, store: BlobStore, repo_id: str, writer_for: Callable,
              transfer: Callable, vet: Callable | None = None) -> Digests | None:
    """Fill `flight` from the upstream and verify it: two attempts, the second from zero
    after a mismatch. `writer_for()` opens the blob's resumable writer (mirror/sync.py's),
    `transfer(writer, progress, answered)` fills it, resuming after cuts. None: another
    process fetched it (`follow`). `vet(writer)`, once the bytes verified: an error that keeps
    the tail from every reader (the scanner's policy), or None; the blob is stored either way
    and the error is then the flight's."""
    f = flight.file
    for attempt in range(2):
        try:
            writer = await asyncio.to_thread(writer_for)
        except Busy:
            await follow(flight, store)
            return None
        flight.begin(writer.tmp_path, writer.written, lambda w=writer: w.settled)
        try:
            await transfer(writer, flight.advance, Answered())
            await asyncio.to_thread(writer.verify)
            refusal = await vet(writer) if vet is not None else None
            if refusal is None:
                flight.release()  # the tail goes out now; the fsync and rename need not wait
            digests = await asyncio.to_thread(writer.commit)
            flight.refusal = refusal
            flight.finish(digests, path=store.path_for(digests.sha256), error=refusal)
            return digests
        except IntegrityError as e:
            if not writer.done:
                writer.abort()
            flight.failed_once = True
            flight.begin(None, 0)  # its readers are cut now, not at the retry
            if attempt == 1:
                raise
            log.warning("pull-through: %s %s: %s; fetching it again from the start", repo_id,
                        f.path, e)
        except BaseException:
            if not writer.done:
                writer.pause()  # cancelled, cut for good: keep the bytes for the next try
            raise
    raise AssertionError("unreachable")


async def follow(flight: Flight, store: BlobStore) -> None:
    """Another process fetches this blob: follow its partial file until the verified blob is
    in the store (an LFS file, named by its sha256), or it gives up (Busy no more: raises
    Busy for the caller to try again)."""
    partial = store.partial_dir / f"{flight.key}.part"
    sha256 = flight.file.sha256 if flight.file.lfs else None
    flight.begin(partial, 0)
    while True:
        if sha256 is not None and store.has(sha256):
            flight.finish(None, path=store.path_for(sha256))
            return
        try:
            size = partial.stat().st_size
        except FileNotFoundError:
            size = -1
        if sha256 is None or size < flight.written:
            # a plain file (no sha256 to find it by) or a restarted fetch: wait it out
            raise Busy(f"{flight.file.path} is being fetched by another process")
        if size > flight.written:
            flight.grown(size)
        await asyncio.sleep(FOLLOW_EVERY)


class FlightResponse(web.StreamResponse):
    """`count` bytes of a flight's file from `offset`, sent as they arrive; the last HOLD
    bytes of the file only once it verified. A failed attempt cuts the connection."""

    def __init__(self, flight: Flight, offset: int, count: int, *, status: int, headers: dict,
                 egress: Egress | None = None, on_sent: Callable[[int], None] | None = None):
        super().__init__(status=status, headers=headers)
        self._flight = flight
        self._offset = offset
        self._count = count
        self._egress = egress if egress is not None and egress.limited else None
        self._on_sent = on_sent or (lambda n: None)
        self._sendfile = True
        self.content_length = count

    async def prepare(self, request: web.BaseRequest):
        writer = await super().prepare(request)
        if request.method == "HEAD" or self._count == 0:
            return writer
        if request.transport is None:
            raise ConnectionResetError("client went away")
        try:
            await self._send(request.transport)
        except Cut:
            transport = request.transport
            if transport is not None:
                transport.abort()  # an incomplete body: the client keeps nothing of it
            raise ConnectionResetError("the file failed verification; connection cut") from None
        await super().write_eof()
        return writer

    async def _send(self, transport) -> None:
        flight, position, end = self._flight, self._offset, self._offset + self._count
        attempt, fobj = None, None
        try:
            while position < end:
                if flight.done and not flight.verified:
                    raise Cut()
                if attempt is not None and flight.attempt != attempt and not flight.verified:
                    raise Cut()  # what it sent came from an attempt that failed
                if fobj is None:
                    if flight.path is None:
                        await flight.changed()
                        continue
                    try:
                        attempt, fobj = flight.attempt, open(flight.path, "rb")  # noqa: SIM115
                    except FileNotFoundError:  # renamed into the store just now
                        await flight.changed()
                        continue
                ready = flight.size if flight.verified else \
                    min(flight.written, flight.size - HOLD)
                if position >= ready:
                    flight.waits += 1
                    await flight.changed()
                    continue
                n = min(READ, ready - position, end - position)
                if self._egress is not None:
                    await self._egress.take(n)
                await self._put(transport, fobj, position, n)
                self._on_sent(n)
                position += n
                flight.passed(self, position, fobj.fileno())
        finally:
            flight.left(self)
            if fobj is not None:
                fobj.close()

    async def _put(self, transport, fobj, position: int, n: int) -> None:
        """`n` bytes of the file from `position` to the client: sendfile where the transport
        takes it (no copy through Python), else read and written."""
        loop = asyncio.get_running_loop()
        if self._sendfile:
            if transport.is_closing():
                raise ConnectionResetError("client went away")
            try:
                await loop.sendfile(transport, fobj, position, n, fallback=False)
                return
            except (NotImplementedError, RuntimeError):
                self._sendfile = False  # TLS or a loop without it; and not mixed from here
                if position != self._offset:
                    raise
        chunk = await asyncio.to_thread(os.pread, fobj.fileno(), n, position)
        if len(chunk) != n:
            raise Cut()  # the file is shorter than its bytes said: never send less
        await self.write(chunk)
