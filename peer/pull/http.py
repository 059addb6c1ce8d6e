"""A pull's HTTP: the few calls it makes to mirrors (or to peer daemons relaying them), and
step 3a, the small files.

Every error is the contract's (peer/http.py): an answer's by its code and status, and no answer
at all as `Unavailable`. A file is written in place only whole and verified (peer/atomic.py: a
unique temporary, fsynced, renamed); bytes that fail are counted back off the progress bar, and
the next mirror is asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp

from .. import atomic
from ..errors import IntegrityError, WeightswarmError
from ..hfcache import RepoCache
from ..http import raise_for_status, unreachable
from ..manifest import ManifestFile
from .place import etag
from .spec import PullError, PullResult

#: small files fetched at once
HTTP_PARALLEL = 8
#: what an unreachable server's error names as the setting to check
MIRRORS_SETTING = "peer.mirrors or --mirror"


class MirrorClient:
    """The calls of a pull; `setting` is what an unreachable server's error tells to check
    (the mirrors' settings, or peer.index for the index)."""

    def __init__(self, session: aiohttp.ClientSession, *, token: str | None = None,
                 trusted: tuple[str, ...] = ()):
        self.http = session
        #: the mirror token, sent only to `trusted` (the mirrors the user named)
        self.token = token
        self.trusted = tuple(f"{m.rstrip('/')}/" for m in trusted)

    def auth(self, url: str) -> dict[str, str]:
        """The Authorization header for `url`, if it is one of the mirrors the token is for."""
        if self.token and url.startswith(self.trusted):
            return {"Authorization": f"Bearer {self.token}"}
        return {}

    @contextlib.asynccontextmanager
    async def _get(self, url: str, setting: str = MIRRORS_SETTING
                   ) -> AsyncIterator[aiohttp.ClientResponse]:
        try:
            async with self.http.get(url, headers=self.auth(url)) as r:
                await raise_for_status(r)
                yield r
        except (TimeoutError, aiohttp.ClientError) as e:
            raise unreachable(url, e, setting=setting) from e

    async def json(self, url: str, *, setting: str = MIRRORS_SETTING):
        async with self._get(url, setting) as r:
            try:
                return await r.json(content_type=None)
            except ValueError:
                raise PullError(f"{url}: the answer is not JSON") from None

    async def bytes(self, url: str, limit: int = 64 << 20, *,
                    setting: str = MIRRORS_SETTING) -> bytes:
        async with self._get(url, setting) as r:
            data = await r.content.read(limit + 1)
            if len(data) > limit:
                raise PullError(f"{url}: larger than {limit} bytes")
            return data

    async def download(self, url: str, dest: Path, size: int, sha256: str,
                       progress: Callable[[int], None]) -> None:
        """Stream `url` into place at `dest`, only if it is `size` bytes hashing to `sha256`."""
        digest = hashlib.sha256()
        got = 0
        async with self._get(url) as r:
            with atomic.replacing(dest) as out:
                async for chunk in r.content.iter_chunked(1 << 20):
                    got += len(chunk)
                    if got > size:
                        raise IntegrityError("size", str(size), f"more than {size} bytes")
                    digest.update(chunk)
                    out.write(chunk)
                    progress(len(chunk))
                if got != size:
                    raise IntegrityError("size", str(size), str(got))
                if digest.hexdigest() != sha256:
                    raise IntegrityError("sha256", sha256, digest.hexdigest())


def nearest_first(first: str, mirrors: list[str]) -> list[str]:
    """The mirrors to ask, the one that answered the revision first, then those after it, and
    last those before it: they gave no answer (a nearest mirror stopped), so they are asked
    again only when every other has failed."""
    if first not in mirrors:
        return [first, *mirrors]
    at = mirrors.index(first)
    return mirrors[at:] + mirrors[:at]


async def fetch_small(client: MirrorClient, mirrors: list[str], cache: RepoCache,
                      files: list[ManifestFile], result: PullResult, bar) -> None:
    """Each file from the first of `mirrors` that gives the right bytes, into the cache's
    blobs; `result.http_bytes` counts what was kept."""
    gate = asyncio.Semaphore(HTTP_PARALLEL)

    async def one(f: ManifestFile) -> None:
        async with gate:
            got = await _fetch_one(client, mirrors, cache.blob(etag(f)), f, bar)
        # Not `+= await ...`: that reads the total before the await, losing what others add.
        result.http_bytes += got

    async with asyncio.TaskGroup() as group:
        for f in files:
            group.create_task(one(f))


async def _fetch_one(client: MirrorClient, mirrors: list[str], dest: Path, f: ManifestFile,
                     bar) -> int:
    errors = []
    for mirror in mirrors:
        got = 0

        def count(n: int) -> None:
            nonlocal got
            got += n
            bar.update(n)

        try:
            await client.download(f"{mirror}/blobs/sha256/{f.sha256}", dest, f.size, f.sha256,
                                  count)
            return got
        except (WeightswarmError, OSError) as e:
            bar.update(-got)
            errors.append(f"{mirror}: {e or type(e).__name__}")
    raise PullError(f"{f.path}: no mirror gave the right bytes: " + "; ".join(errors))
