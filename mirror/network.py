"""Sync from the network before the upstream (issue 18, item 6): when the index's `locate`
says that accepted mirrors already hold the commit the upstream lists, a sync takes the files'
bytes from them, nearest first, and asks the upstream only for the listing.

No trust in those mirrors is needed: every file still goes through the sync's own
verify-then-publish (mirror/sync.py), against the hashes the *upstream* listed. A mirror whose
bytes fail that check, or that fails to send them, is dropped for the rest of the sync and the
file comes from the upstream; nothing it sent is published unless it hashed right.

The index's key is trusted on first use and pinned in `$WEIGHTSWARM_HOME/known_indexes` (one
line: index URL, key), as a peer pins a mirror's key (peer/trust.py); an index that later shows
another key, or signs with another, is not believed (the sync goes to the upstream, with one
warning). A sync run from the CLI needs no running mirror to learn it.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import quote

import aiohttp

from peer import atomic, hubs
from peer.errors import WeightswarmError
from peer.keys import load_or_create, parse_public_key, public_key_text
from peer.locate import Located, LocatedMirror, read_located
from peer.manifest import ManifestError

from .upstreams import Answered, RemoteFile
from .upstreams.huggingface import HuggingFace

log = logging.getLogger(__name__)

#: seconds for the index to answer a key or locate request
INDEX_TIMEOUT = 10.0
#: bytes of a locate answer at most (1000 mirrors of a few hundred bytes each, signed)
MAX_LOCATE_BODY = 4 * 1024 * 1024
#: transfer attempts without progress before a mirror is given up on (the upstream has more)
MIRROR_STALLS = 2


# -- the choice (pure) --------------------------------------------------------------------------


def choose(located: Located, commit: str, *, own_key: str | None = None,
           own_url: str | None = None) -> list[LocatedMirror]:
    """The mirrors to take `commit`'s bytes from, in the order to try them: those holding
    exactly that commit (not merely the same ref), never this mirror itself, nearest first as
    the index ordered them, demoted or stale ones after the rest (their bytes are checked like
    any other's, so they are still worth a try before the upstream)."""
    own = own_url.rstrip("/") if own_url else None
    holding = [m for m in located.mirrors
               if m.commit == commit and m.key != own_key and m.base_url != own]
    return sorted(holding, key=lambda m: m.demoted or m.stale)  # stable: keeps nearness


def sources_text(from_upstream: int, from_mirrors: dict[str, int],
                 dropped: dict[str, str]) -> str:
    """Where a sync's bytes came from, in one line for `mirror sync` and `mirror status`."""
    parts = [f"{from_upstream} bytes from the upstream"]
    parts += [f"{n} bytes from {url}" for url, n in from_mirrors.items()]
    parts += [f"{url} dropped ({reason})" for url, reason in dropped.items()]
    return "; ".join(parts)


def sources_record(results: Iterable) -> str:
    """What a sync run records of its results' sources (catalog `sync_runs.sources`): JSON of
    {"upstream": bytes, "mirrors": {base URL: bytes}, "dropped": {base URL: reason}}."""
    upstream, mirrors, dropped = 0, Counter(), {}
    for r in results:
        upstream += r.from_upstream
        mirrors.update(r.from_mirrors)
        dropped.update(r.dropped_mirrors)
    return json.dumps({"upstream": upstream, "mirrors": dict(mirrors), "dropped": dropped})


def read_sources(text: str | None) -> str | None:
    """`sources_text` of a recorded run (None: recorded before sources were)."""
    try:
        body = json.loads(text) if text else None
        return sources_text(body["upstream"], body["mirrors"], body["dropped"])
    except (ValueError, TypeError, KeyError):
        return None


# -- the index's key, pinned on first use ---------------------------------------------------


class IndexKeys:
    """`known_indexes` in the mirror's home: one line per index, `URL KEY`."""

    def __init__(self, home: Path):
        self.path = home / "known_indexes"
        self.lock_path = home / ".known_indexes.lock"

    def pinned(self, index: str) -> str | None:
        return self._read().get(index.rstrip("/"))

    def pin(self, index: str, key: str) -> str:
        """Trust `index`'s key on first use; afterwards only the key pinned for it."""
        index = index.rstrip("/")
        parse_public_key(key)  # ValueError says what is wrong
        with atomic.locked(self.lock_path):
            known = self._read()
            if index in known:
                if known[index] != key:
                    raise ValueError(f"{index} now shows key {key}, but {self.path} pins "
                                     f"{known[index]}; remove its line if you trust the change")
                return key
            lines = [f"{url} {k}\n" for url, k in {**known, index: key}.items()]
            atomic.write_file(self.path, "".join(lines).encode())
        log.info("trusting the index %s's key %s on first use (pinned in %s)", index, key,
                 self.path)
        return key

    def _read(self) -> dict[str, str]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        return dict(line.split()[:2] for line in text.splitlines()
                    if len(line.split()) == 2 and not line.startswith("#"))


# -- a mirror's bytes -------------------------------------------------------------------------


class MirrorSource(HuggingFace):
    """Another weightswarm mirror, for one sync's file bytes: a blob by its sha256 from
    `/blobs/sha256/<hex>` (its web seed) when the upstream listed one, else the file at the
    commit through the HF API's resolve. Impatient (one retry, no request budget): the
    upstream is the fallback, not the end of the sync."""

    def __init__(self, base_url: str, hub: str):
        prefix = "" if hub == hubs.DEFAULT else f"/hubs/{hub}"
        super().__init__(base_url + prefix, name=base_url, setting="the index's locate answer",
                         requests_per_5min=0, retries=1, timeout=30.0)
        self.base_url = base_url

    async def open(self, repo_type: str, repo_id: str, commit: str, path: str,
                   offset: int = 0, *, expect: RemoteFile | None = None,
                   answered: Answered | None = None):
        if expect is None or expect.sha256 is None:
            async for chunk in super().open(repo_type, repo_id, commit, path, offset,
                                            expect=expect, answered=answered):
                yield chunk
            return
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        response = await self.follow("GET", f"{self.base_url}/blobs/sha256/{expect.sha256}",
                                     headers)
        async for chunk in self.stream(response, offset, path):
            yield chunk


class Sources:
    """Where one sync's bytes come from: the mirrors holding its commit, in order, then the
    upstream; and how many bytes each sent. A dropped mirror is not asked again in this sync."""

    def __init__(self, upstream: str, mirrors: Iterable[MirrorSource] = ()):
        self.upstream = upstream
        self.mirrors = list(mirrors)
        self.dropped: dict[str, str] = {}
        self.received: Counter[str] = Counter()

    def pick(self) -> MirrorSource | None:
        return next((m for m in self.mirrors if m.name not in self.dropped), None)

    def drop(self, mirror: MirrorSource, reason: str) -> None:
        if mirror.name not in self.dropped:
            self.dropped[mirror.name] = reason
            log.warning("not taking bytes from %s for the rest of this sync: %s", mirror.name,
                        reason)

    def counting(self, name: str, progress: Callable[[int], None]) -> Callable[[int], None]:
        """`progress`, also counting the bytes as received from `name`."""
        def counted(n: int) -> None:
            self.received[name] += n
            progress(n)
        return counted

    @property
    def from_upstream(self) -> int:
        return self.received[self.upstream]

    @property
    def from_mirrors(self) -> dict[str, int]:
        return {m.name: self.received[m.name] for m in self.mirrors if self.received[m.name]}

    async def close(self) -> None:
        for mirror in self.mirrors:
            await mirror.close()


# -- asking the index ---------------------------------------------------------------------------


class Network:
    """The index a mirror asks where a commit already is (`[mirror] index`, None: none)."""

    def __init__(self, index: str | None, home: Path, *, own_key: str | None = None,
                 own_url: str | None = None):
        self.index = index.rstrip("/") if index else None
        self.keys = IndexKeys(home)
        self.own_key = own_key
        self.own_url = own_url

    async def sources(self, hub: str, repo_type: str, repo_id: str, commit: str,
                      upstream: str) -> Sources:
        """The sources of a sync of `commit`: the mirrors the index locates holding it, or
        the upstream alone (with one log line saying why) when there is no index, it cannot
        be reached or believed, or nobody holds the commit."""
        what = f"{repo_id}@{commit[:12]}"
        if self.index is None:
            log.info("%s: bytes from %s (no [mirror] index to ask)", what, upstream)
            return Sources(upstream)
        try:
            located = await self.locate(hub, repo_type, repo_id, commit)
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            log.warning("%s: bytes from %s: the index %s could not be reached (%s)", what,
                        upstream, self.index, str(e) or type(e).__name__)
            return Sources(upstream)
        except (WeightswarmError, ValueError) as e:
            log.warning("%s: bytes from %s: no usable answer from the index %s: %s", what,
                        upstream, self.index, e)
            return Sources(upstream)
        chosen = choose(located, commit, own_key=self.own_key,
                        own_url=self.own_url) if located else []
        if not chosen:
            log.info("%s: bytes from %s: no mirror the index %s knows holds it", what,
                     upstream, self.index)
            return Sources(upstream)
        log.info("%s: %d mirror(s) hold it, bytes from %s first (checked against %s's hashes)",
                 what, len(chosen), chosen[0].base_url, upstream)
        return Sources(upstream, [MirrorSource(m.base_url, hub) for m in chosen])

    async def locate(self, hub: str, repo_type: str, repo_id: str,
                     commit: str) -> Located | None:
        """The index's signed answer for `commit` (None: it knows no such repo)."""
        timeout = aiohttp.ClientTimeout(total=INDEX_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            key = self.keys.pinned(self.index) or await self._first_key(http)
            url = (f"{self.index}/api/weightswarm/locate/{hub}/{repo_type}/"
                   f"{quote(repo_id, safe='/')}?revision={commit}")
            async with http.get(url) as answer:
                if answer.status == 404:
                    return None
                if answer.status != 200:
                    raise ValueError(f"locate answered HTTP {answer.status}")
                data = await _bounded(answer, MAX_LOCATE_BODY)
        try:
            return read_located(data, key, now=time.time(), hub=hub, type=repo_type,
                                repo=repo_id, revision=commit)
        except ManifestError as e:
            raise ManifestError(f"{e} (believed: the key {key} pinned in {self.keys.path})") \
                from e

    async def _first_key(self, http: aiohttp.ClientSession) -> str:
        async with http.get(f"{self.index}/api/weightswarm/key") as answer:
            if answer.status != 200:
                raise ValueError(f"its key answered HTTP {answer.status}")
            body = await answer.json(content_type=None)
        key = body.get("key") if isinstance(body, dict) else None
        if not isinstance(key, str):
            raise ValueError("its key answer names no key")
        return self.keys.pin(self.index, key)


async def _bounded(answer: aiohttp.ClientResponse, limit: int) -> bytes:
    data = bytearray()
    async for chunk in answer.content.iter_chunked(64 * 1024):
        data += chunk
        if len(data) > limit:
            raise ValueError(f"a locate answer over {limit} bytes")
    return bytes(data)


def network_for(config) -> Network | None:
    """The network a mirror's syncs ask first (None: `[mirror] sync_from_network` is off)."""
    mirror = config.mirror
    if not mirror.sync_from_network:
        return None
    own_key = (public_key_text(load_or_create(config.key_path))
               if config.key_path.exists() else None)
    return Network(mirror.index, config.home, own_key=own_key, own_url=mirror.public_url)
