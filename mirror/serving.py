"""Serving a blob's bytes: conditional requests, ranges, and a response that sends the file
with `sendfile`.

aiohttp's `FileResponse` replaces any ETag with `mtime-size` and evaluates `If-None-Match`
and `If-Range` against that, but our ETag is the content hash (the HF client names its cached
blob after it), so we decide the status and headers here, as pure functions, and
`BlobResponse` only moves the bytes.
"""

from __future__ import annotations

import asyncio
import re
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


#: RFC 9110 section 14.1.1, for the one unit we serve: `bytes=first-[last]` or `bytes=-suffix`,
#: digits ASCII only (`str.isdigit` takes "¹", which `int` refuses), the unit any case
_BYTE_RANGE = re.compile(r"(?i:bytes)=(?:([0-9]{1,19})-([0-9]{0,19})|-([0-9]{1,19}))",
                         re.ASCII)
#: an entity tag, RFC 9110 section 8.8.3: optional W/, then an opaque string of etagc
_ENTITY_TAG = re.compile(r'(?:W/)?"([\x21\x23-\x7e\x80-\xff]*)"')
#: optional white space, RFC 9110 section 5.6.3
_OWS = " \t"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """One `bytes=a-b`, `bytes=a-` or `bytes=-n` range, clamped to the size; None means the
    whole file (no header, another unit, or several ranges, which we may answer whole). A
    bytes range outside the grammar, or past the end, is not satisfiable."""
    if not header:
        return None
    unit, equals, spec = header.partition("=")
    if not equals or unit.lower() != "bytes" or "," in spec:
        return None
    match = _BYTE_RANGE.fullmatch(header)
    if match is None:
        raise RangeNotSatisfiable(header, size)
    first, last, suffix = match.groups()
    if suffix is not None:
        if int(suffix) == 0:
            raise RangeNotSatisfiable(header, size)
        start, end = max(0, size - int(suffix)), size - 1
    else:
        start = int(first)
        if last and int(last) < start:
            raise RangeNotSatisfiable(header, size)
        end = min(int(last), size - 1) if last else size - 1
    if start >= size:
        raise RangeNotSatisfiable(header, size)
    return ByteRange(start, end)


def entity_tags(header: str) -> list[str] | None:
    """The opaque tags of an `If-None-Match` or `If-Range` list (RFC 9110 sections 8.8.3 and
    13.1.2, weak ones included), "*" as itself; None when the header is not in the grammar."""
    tags = []
    for item in header.split(","):
        item = item.strip(_OWS)
        if not item:
            continue  # the list grammar allows empty elements
        if item == "*":
            tags.append("*")
            continue
        match = _ENTITY_TAG.fullmatch(item)
        if match is None:
            return None
        tags.append(match.group(1))
    return tags


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """`If-None-Match` (or `If-Range`) against our strong content-hash ETag, by the weak
    comparison of RFC 9110; a header outside the grammar matches nothing."""
    if not if_none_match:
        return False
    tags = entity_tags(if_none_match)
    return bool(tags) and ("*" in tags or etag in tags)


def if_range_holds(header: str, etag: str) -> bool:
    """`If-Range` (RFC 9110 section 13.1.5): the range is sent only if the client's validator
    is our entity tag by the strong comparison: not a weak tag, not a date (ours are never
    dates, so a date means another version)."""
    return header.strip(_OWS) == quoted(etag)


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


@dataclass(frozen=True)
class BlobAnswer:
    """What a GET or HEAD of a blob is answered with: the status, the headers, and the bytes
    (`count` from `offset`; none for a 304)."""

    status: int
    headers: dict
    offset: int
    count: int


def blob_answer(request: web.BaseRequest, size: int, etag: str, extra_headers: dict, *,
                ranges: bool = True) -> BlobAnswer:
    """304, 206, 416 (raised) or 200 for a blob of `size` bytes with our ETag; `ranges` False
    answers a Range with the whole file."""
    headers = {"ETag": quoted(etag), "Accept-Ranges": "bytes", **extra_headers}
    if etag_matches(request.headers.get("If-None-Match"), etag):
        return BlobAnswer(304, headers, 0, 0)
    byte_range = parse_range(request.headers.get("Range"), size) if ranges else None
    if_range = request.headers.get("If-Range")
    if if_range is not None and not if_range_holds(if_range, etag):
        byte_range = None  # the client's copy is another version: send the whole file
    if byte_range is None:
        return BlobAnswer(200, headers, 0, size)
    headers["Content-Range"] = f"bytes {byte_range.start}-{byte_range.end}/{size}"
    return BlobAnswer(206, headers, byte_range.start, byte_range.length)


def blob_response(
    request: web.BaseRequest, path: Path, size: int, etag: str, extra_headers: dict,
    egress: Egress | None = None, on_sent: Callable[[int], None] | None = None,
) -> web.StreamResponse:
    """The whole answer for a blob of `size` bytes (as the catalog recorded it: the store
    verified them): 304, 206, 416 (raised) or 200, with our ETag."""
    answer = blob_answer(request, size, etag, extra_headers)
    if answer.status == 304:
        return web.Response(status=304, headers=answer.headers)
    return BlobResponse(path, answer.offset, answer.count, status=answer.status,
                        headers=answer.headers, egress=egress, on_sent=on_sent)
