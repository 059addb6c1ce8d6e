"""Serving a blob's bytes: conditional requests, ranges, and a response that sends the file
with `sendfile`.

aiohttp's `FileResponse` replaces any ETag with `mtime-size` and evaluates `If-None-Match`
and `If-Range` against that, but our ETag is the content hash (the HF client names its cached
blob after it), so we decide the status and headers here, as pure functions, and
`BlobResponse` only moves the bytes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from peer.errors import BlobMissing, RangeNotSatisfiable

from .egress import Egress

_SENDFILE_CHUNK = 1 << 20


def _ignore(n: int) -> None:
    pass


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """One `bytes=a-b`, `bytes=a-` or `bytes=-n` range, clamped to the size; None means the
    whole file (no header, another unit, or several ranges, which we may answer whole)."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    if not dash or (first and not first.isdigit()) or (last and not last.isdigit()):
        raise RangeNotSatisfiable(header, size)
    if not first:
        if not last or int(last) == 0:
            raise RangeNotSatisfiable(header, size)
        start = max(0, size - int(last))
        end = size - 1
    else:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
        if last and int(last) < start:
            raise RangeNotSatisfiable(header, size)
    if start >= size:
        raise RangeNotSatisfiable(header, size)
    return ByteRange(start, end)


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """`If-None-Match` against our strong content-hash ETag (weak comparison, RFC 9110)."""
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*":
            return True
        if candidate.startswith("W/"):
            candidate = candidate[2:]
        if candidate.strip('"') == etag:
            return True
    return False


def quoted(etag: str) -> str:
    return f'"{etag}"'


class BlobResponse(web.StreamResponse):
    """`count` bytes of `path` from `offset`, sent with sendfile when the transport allows."""

    def __init__(self, path: Path, offset: int, count: int, *, status: int, headers: dict,
                 egress: Egress | None = None, on_sent: Callable[[int], None] | None = None):
        super().__init__(status=status, headers=headers)
        self._on_sent = on_sent or _ignore
        self._path = path
        self._offset = offset
        self._count = count
        self._egress = egress if egress is not None and egress.limited else None
        self.content_length = count

    async def prepare(self, request: web.BaseRequest):
        if request.method == "HEAD" or self._count == 0:
            return await super().prepare(request)
        loop = asyncio.get_running_loop()
        try:
            fobj = await loop.run_in_executor(None, open, self._path, "rb")
        except FileNotFoundError:
            raise BlobMissing(self._path.name) from None
        try:
            writer = await super().prepare(request)
            transport = request.transport
            if transport is None:
                raise ConnectionResetError("client went away")
            try:
                if self._egress is None:
                    await loop.sendfile(transport, fobj, self._offset, self._count)
                    self._on_sent(self._count)
                else:
                    await self._metered(loop, transport, fobj)
            except NotImplementedError:
                await self._copy(loop, fobj)
            await super().write_eof()
            return writer
        finally:
            await loop.run_in_executor(None, fobj.close)

    async def _metered(self, loop: asyncio.AbstractEventLoop, transport, fobj) -> None:
        """sendfile in chunks, each sent once the mirror's egress budget grants it."""
        egress = self._egress
        offset, end = self._offset, self._offset + self._count
        while offset < end:
            n = min(egress.chunk, end - offset)
            await egress.take(n)
            if transport.is_closing():
                raise ConnectionResetError("client went away")
            await loop.sendfile(transport, fobj, offset, n)
            self._on_sent(n)
            offset += n

    async def _copy(self, loop: asyncio.AbstractEventLoop, fobj) -> None:
        remaining = self._count
        await loop.run_in_executor(None, fobj.seek, self._offset)
        while remaining > 0:
            chunk = await loop.run_in_executor(None, fobj.read, min(_SENDFILE_CHUNK, remaining))
            if self._egress is not None:
                await self._egress.take(len(chunk))
            if not chunk:
                raise ConnectionResetError("blob shrank while being sent")
            await self.write(chunk)
            self._on_sent(len(chunk))
            remaining -= len(chunk)


def blob_response(
    request: web.BaseRequest, path: Path, size: int, etag: str, extra_headers: dict,
    egress: Egress | None = None, on_sent: Callable[[int], None] | None = None,
) -> web.StreamResponse:
    """The whole answer for a blob of `size` bytes (as the catalog recorded it: the store
    verified them): 304, 206, 416 (raised) or 200, with our ETag."""
    headers = {"ETag": quoted(etag), "Accept-Ranges": "bytes", **extra_headers}
    if etag_matches(request.headers.get("If-None-Match"), etag):
        return web.Response(status=304, headers=headers)
    byte_range = parse_range(request.headers.get("Range"), size)
    if_range = request.headers.get("If-Range")
    if if_range is not None and not etag_matches(if_range, etag):
        byte_range = None  # the client's copy is another version: send the whole file
    if byte_range is None:
        return BlobResponse(path, 0, size, status=200, headers=headers, egress=egress,
                            on_sent=on_sent)
    headers["Content-Range"] = f"bytes {byte_range.start}-{byte_range.end}/{size}"
    return BlobResponse(path, byte_range.start, byte_range.length, status=206, headers=headers,
                        egress=egress, on_sent=on_sent)
