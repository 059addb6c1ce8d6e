"""The whole pull, step by step (the steps are the package's modules; see its docstring)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from ..errors import BadRequest, WeightswarmError
from ..hfcache import RepoCache
from ..manifest import ManifestFile
from ..patterns import select
from ..settings import PeerConfig
from ..trust import Trust
from .believe import Believed, believe
from .http import MirrorClient, fetch_small, nearest_first
from .index import consult
from .place import check_space, missing, publish, repo_cache
from .spec import PullResult, PullSpec
from .swarm import BitTorrent

#: no limit on a whole download (a model may take hours), but on each connect and each read
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)


class Pull:
    def __init__(self, config: PeerConfig, home: Path, spec: PullSpec, *,
                 mirrors: tuple[str, ...] = (), progress: bool = False,
                 echo: Callable[[str], None] = print):
        self.config = config
        self.home = home
        self.spec = spec
        self.mirrors = [m.rstrip("/") for m in (mirrors or config.mirrors)]
        if not self.mirrors and not config.index:
            raise BadRequest("no mirror to ask: set [peer] mirrors or [peer] index, or pass "
                             "--mirror URL")
        self.trust = Trust(home, config.trusted_keys)
        self.progress = progress
        self.echo = echo

    async def run(self) -> PullResult:
        started = time.monotonic()
        async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
            # The token goes to the mirrors named only (config, --mirror), never to the index
            # or to a mirror it locates.
            client = MirrorClient(http, token=self.config.token, trusted=tuple(self.mirrors))
            # 1 and 2: what the revision is, believed; what of it is asked for.
            believed = await self._believe(client)
            files = select(believed.manifest.files, self.spec.include, self.spec.exclude)
            result = PullResult.of(self.spec.repo_id, believed.commit, believed.mirror, files)
            if self.spec.dry_run:
                self._list(files, believed.commit)
                return result
            # What the cache lacks, if it fits.
            cache = repo_cache(self.spec, self.config)
            cache.blobs.mkdir(parents=True, exist_ok=True)
            wanted = missing(cache, files)
            result.present_bytes = result.total_bytes - sum(f.size for f in wanted)
            check_space(cache.blobs, wanted)
            # 3: small files over HTTP, large ones over BitTorrent, at once.
            await self._fetch(client, cache, wanted, result)
            # 4: the snapshot, in the cache or the folder.
            result.path = publish(cache, self.spec, files, believed.commit)
        result.seconds = time.monotonic() - started
        return result

    async def _believe(self, client: MirrorClient) -> Believed:
        """Steps 1 and 2, after the index (if there is one) has said whom it vouches for and,
        with no mirror given, which mirrors hold the revision (those are not pinned)."""
        given = bool(self.mirrors)
        if self.config.index:
            self.mirrors = await consult(client, self.config.index, self.trust, self.spec,
                                         self.mirrors)
        return await believe(client, self.spec, self.mirrors, self.trust, self.home, pin=given,
                             keep=not self.config.token)

    def _list(self, files: list[ManifestFile], commit: str) -> None:
        for f in files:
            self.echo(f"{f.size:>14}  {'bt  ' if f.info_hash else 'http'}  {f.path}")
        self.echo(f"{len(files)} files, {sum(f.size for f in files)} bytes at {commit}")

    async def _fetch(self, client: MirrorClient, cache: RepoCache, wanted: list[ManifestFile],
                     result: PullResult) -> None:
        small = [f for f in wanted if f.info_hash is None]
        large = [f for f in wanted if f.info_hash is not None]
        bar = _bar(result.total_bytes - result.present_bytes, self.progress, self.spec.repo_id)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(fetch_small(client, nearest_first(result.mirror, self.mirrors),
                                              cache, small, result, bar))
                if large:
                    swarm = BitTorrent(self.config, self.home, self.mirrors,
                                       relay=not self.config.token)
                    group.create_task(swarm.fetch(client, cache, large, result, bar))
        except* WeightswarmError as group_error:
            # The first error, out of however many task groups deep it was raised.
            first = group_error
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None
        finally:
            bar.close()


def _bar(total: int, show: bool, name: str):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                disable=not show)
