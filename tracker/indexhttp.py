"""The index's HTTP face on the tracker's port (issue 18; DESIGN.md section 8): registration,
the mirrors' view, the index's key and its signed list of accepted mirror keys, search with the
HF listing contract (`/api/models`, `/api/datasets`, and under `/hubs/<hub>/`), and `locate`.

The store (tracker/index.py) is written on one thread; searches and locates read on another,
through a read-only connection of their own, so a long feed being applied never holds them up
(sqlite's WAL lets readers go on beside the writer).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import random
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram

from peer import hubs
from peer.answers import KeptAnswers
from peer.errors import NotFound
from peer.http import answer_errors
from peer.keys import load_or_create, public_key_text
from peer.listing import ListQuery, next_link, parse_list_query
from peer.locate import (
    MAX_LOCATED,
    AcceptedKey,
    Located,
    check_locate_target,
    sign_key_list,
    sign_located,
)
from peer.manifest import ManifestError
from peer.service import LOOPS

from . import search
from .config import TrackerConfig
from .index import (
    MAX_TRACKER_KEYS,
    IndexRefused,
    IndexStore,
    Poller,
    UnknownMirror,
    mirrors_view,
    read_mirror_keys,
    read_registration,
    read_tracker_keys,
)

log = logging.getLogger(__name__)

INDEX = web.AppKey("index", "Index")
#: a mirror not polled successfully for this many poll intervals is stale: ordered last
STALE_ROUNDS = 3
MSGPACK = "application/msgpack"
#: threads answering searches and locates, each with its own connection (sqlite runs a query
#: without the GIL, so two use both cores of a small machine)
READERS = 2
#: searches and locates answered from what the index held, kept until it changes (peer/answers.py);
#: a listing's body only up to KEPT_BODY bytes (a page of 20 is a few kB): at most 128 MiB
KEPT_ANSWERS = 4096
KEPT_BODY = 32 * 1024
#: a kept listing's seeders (the tracker's swarm table, which changes without the index) are at
#: most this old (seconds); announces come every few minutes
SEEDERS_AGE = 10.0


class Index:
    """The index's store on a thread of its own, readers on others, its key, its metrics and
    its poller. `tracker` is the tracker it runs beside: its swarm table gives the seeders, its
    sites map and trusted proxies place the asking address."""

    def __init__(self, config: TrackerConfig, tracker: Any):
        self.config, self.tracker = config, tracker
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="index")
        self.reads = ThreadPoolExecutor(max_workers=READERS, thread_name_prefix="index-read")
        self.store: IndexStore | None = None
        self.kept: KeptAnswers | None = None
        #: each reading thread's own read-only connection, opened on its first read
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self.key = load_or_create(config.home / "index.key")
        self.public_key = public_key_text(self.key)
        self.rng = random.Random()
        #: set by a new mirror's registration: the next poll round starts at once
        self.wake = asyncio.Event()
        registry = tracker.registry
        self.registered = Gauge("weightswarm_index_mirrors", "Mirrors registered and accepted",
                                registry=registry)
        self.demoted = Gauge("weightswarm_index_mirrors_demoted",
                             "Mirrors demoted by a failed spot-check", registry=registry)
        self.entries = Gauge("weightswarm_index_repos", "Repos the index lists, across mirrors",
                             registry=registry)
        self.feed_results = Counter("weightswarm_index_feeds", "Catalog feeds polled, by result",
                                    ["result"], registry=registry)
        self.registrations = Counter("weightswarm_index_registrations",
                                     "Registrations, by result", ["result"], registry=registry)
        self.answers = Histogram("weightswarm_index_answer_seconds",
                                 "Time to answer a search or a locate", ["kind"],
                                 buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5),
                                 registry=registry)
        kept_answers = Counter("weightswarm_index_kept_answers",
                               "Searches and locates, by whether a kept answer served",
                               ["kind", "result"], registry=registry)
        #: the labelled children, looked up once (a lookup is a few percent of a locate)
        self.kept_answers = {(kind, result): kept_answers.labels(kind, result)
                             for kind in ("search", "locate") for result in ("hit", "miss")}
        self.answer_seconds = {kind: self.answers.labels(kind) for kind in ("search", "locate")}

    def feeds(self, result: str) -> None:
        self.feed_results.labels(result).inc()

    async def run(self, fn: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(self.thread, fn, *args)

    async def read(self, fn: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(self.reads, self._read, fn,
                                                                *args)

    def _read(self, fn: Callable, *args):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = sqlite3.connect(
                f"file:{self.config.home / 'index.sqlite'}?mode=ro", uri=True,
                check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 5000")
            self._readers.append(conn)
        return fn(conn, *args)

    async def open(self) -> None:
        self.store = await self.run(IndexStore, self.config.home / "index.sqlite")
        self.kept = KeptAnswers(self.config.home / "index.sqlite", max_entries=KEPT_ANSWERS)

    async def close(self) -> None:
        if self.kept is not None:
            self.kept.close()
        self.reads.shutdown(wait=True)
        for conn in self._readers:
            conn.close()
        if self.store is not None:
            await self.run(self.store.close)
        self.thread.shutdown(wait=True)

    async def register(self, data: bytes, now: float) -> dict:
        accepted = read_mirror_keys(self.config.mirror_keys, self.config.own_keys)
        try:
            reg = read_registration(data, frozenset(accepted), now)
        except ManifestError as e:
            raise UnknownMirror(str(e)) from None
        await self.run(self.store.keep_only, accepted)
        new = await self.run(self.store.register, reg, accepted[reg.key], now)
        if new:
            log.info("index: mirror %s (%s) registered", reg.base_url, accepted[reg.key] or reg.key)
            self.wake.set()
        return {"registered": reg.base_url, "key": reg.key, "index_key": self.public_key}

    async def tracker_keys(self, data: bytes, now: float) -> dict:
        """A mirror's private-swarm keys: the tracker beside takes them (tracker/app.py)."""
        accepted = read_mirror_keys(self.config.mirror_keys, self.config.own_keys)
        try:
            key, hashes, seeders, stamp = read_tracker_keys(data, frozenset(accepted), now)
        except ManifestError as e:
            raise UnknownMirror(str(e)) from None
        if self.tracker.feed_keys(key, hashes, stamp, accepted=frozenset(accepted),
                                  seeders=seeders):
            log.info("index: mirror %s fed %d private-swarm keys", accepted[key] or key,
                     len(hashes))
        return {"keys": len(hashes)}

    async def view(self) -> list[dict]:
        rows = await self.run(self.store.mirrors)
        counts = await self.run(self.store.repo_counts)
        self.registered.set(len(rows))
        self.demoted.set(sum(m.demoted for m in rows))
        self.entries.set(await self.read(_count_entries))
        return mirrors_view(rows, counts)

    def seeders(self, torrents: tuple[str, ...]) -> int:
        """Whole copies in the tracker's own swarms: the fewest seeders of any of the revision's
        torrents (0 with none: a repo of small files only has no swarm)."""
        if not torrents:
            return 0
        return min(self.tracker.table.scrape(bytes.fromhex(t))[0] for t in torrents)

    async def key_list(self, now: float) -> bytes:
        accepted = read_mirror_keys(self.config.mirror_keys, self.config.own_keys)
        urls = {m.key: m.base_url for m in await self.run(self.store.mirrors)}
        keys = [AcceptedKey(k, name, urls.get(k)) for k, name in sorted(accepted.items())]
        return sign_key_list(keys, self.key, now)

    async def listing(self, hub: str, type_: str, query: ListQuery) -> tuple[bytes, bool]:
        """A listing's JSON, and whether more follow; kept until the index changes, with its
        seeders at most SEEDERS_AGE old."""
        key = ("search", hub, type_, query)
        kept = self.kept.get(key)
        if kept is not None and time.monotonic() - kept[2] < SEEDERS_AGE:
            self.kept_answers["search", "hit"].inc()
            return kept[0], kept[1]
        self.kept_answers["search", "miss"].inc()
        version = self.kept.version()
        rows = await self.read(search.search, hub, type_, query)
        body = json.dumps([search.entry_json(r, seeders=self.seeders(r.torrents),
                                             full=query.full, card=query.card)
                           for r in rows[:query.limit]]).encode()
        more = len(rows) > query.limit
        if len(body) <= KEPT_BODY:
            self.kept.put(key, (body, more, time.monotonic()), version)
        return body, more

    async def locate(self, hub: str, type_: str, repo_id: str, revision: str,
                     address: str | None, now: float) -> bytes:
        """Signed for this asker and this moment; who holds it is kept until the index
        changes (whether each is stale is decided now)."""
        key = ("locate", hub, type_, repo_id, revision)
        rows = self.kept.get(key)
        self.kept_answers["locate", "miss" if rows is None else "hit"].inc()
        if rows is None:
            version = self.kept.version()
            rows = await self.read(search.holder_rows, hub, type_, repo_id, revision)
            self.kept.put(key, rows, version)
        found = search.holders_at(rows, now - STALE_ROUNDS * self.config.poll_interval)
        where = self.tracker.locality.where(address) if address else (None, None)
        mirrors = search.order(found, address, where, self.rng)
        newest = next((m.commit for m in mirrors if not m.behind), None)
        mirrors = mirrors[:MAX_LOCATED]
        located = Located(self.public_key, hub, type_, repo_id, revision, newest, address, now,
                          tuple(mirrors))
        return sign_located(located, self.key)


def _count_entries(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM entries").fetchone()[0]


def _index_of(request: web.Request) -> Index:
    index = request.app.get(INDEX)
    if index is None:
        raise web.HTTPNotFound(text=json.dumps({"error": "this tracker runs no index"}),
                               content_type="application/json")
    return index


async def tracker_keys(request: web.Request) -> web.Response:
    """`POST /api/weightswarm/tracker-keys`: a mirror's signed private-swarm keys."""
    index = _index_of(request)
    limit = 64 * MAX_TRACKER_KEYS + 4096
    if (request.content_length or 0) > limit:
        return web.json_response({"error": f"at most {MAX_TRACKER_KEYS} keys"}, status=413)
    try:
        body = await index.tracker_keys(await request.content.read(limit + 1), time.time())
    except IndexRefused as e:
        log.info("index: tracker keys from %s refused: %s", request.remote, e)
        return web.json_response({"error": str(e)}, status=e.status)
    return web.json_response(body)


async def register(request: web.Request) -> web.Response:
    index = _index_of(request)
    if (request.content_length or 0) > 65536:
        return web.json_response({"error": "a registration is at most 65536 bytes"}, status=413)
    try:
        body = await index.register(await request.content.read(65537), time.time())
    except IndexRefused as e:
        index.registrations.labels("refused").inc()
        log.info("index: registration from %s refused: %s", request.remote, e)
        return web.json_response({"error": str(e)}, status=e.status)
    index.registrations.labels("ok").inc()
    return web.json_response(body)


async def index_key(request: web.Request) -> web.Response:
    return web.json_response({"key": _index_of(request).public_key})


async def key_list(request: web.Request) -> web.Response:
    """The mirror keys the index accepts, signed: what a peer trusting the index believes."""
    body = await _index_of(request).key_list(time.time())
    return web.Response(body=body, content_type=MSGPACK)


async def mirrors(request: web.Request) -> web.Response:
    return web.json_response({"mirrors": await _index_of(request).view()})


def _hub_of(request: web.Request) -> str:
    hub = request.match_info.get("hub", hubs.DEFAULT)
    if hub not in hubs.HUBS:
        raise NotFound(f"no hub {hub[:40]!r}: one of {', '.join(hubs.HUBS)}")
    return hub


async def listing(request: web.Request) -> web.Response:
    """`/api/models`, `/api/datasets` (and under `/hubs/<hub>/`) across every mirror: the
    mirror's listing contract, each item with `weightswarm.mirrors`, `.behind`, `.seeders`."""
    index = _index_of(request)
    started = time.perf_counter()
    hub = _hub_of(request)
    type_ = "model" if request.path.endswith("/models") else "dataset"
    query = parse_list_query(request.query)
    body, more = await index.listing(hub, type_, query)
    headers = {}
    if more:
        headers["Link"] = next_link(f"{request.scheme}://{request.host}", request.url,
                                    query.offset + query.limit)
    index.answer_seconds["search"].observe(time.perf_counter() - started)
    return web.Response(body=body, headers=headers, content_type="application/json")


async def locate(request: web.Request) -> web.Response:
    """`/api/weightswarm/locate/<hub>/<type>/<repo>?revision=R`: the mirrors holding it,
    nearest first for the asking address (`ip=` believed from a trusted proxy), signed."""
    index = _index_of(request)
    started = time.perf_counter()
    hub, type_ = request.match_info["hub"], request.match_info["type"]
    repo_id = request.match_info["repo"]
    revision = request.query.get("revision", "main")
    check_locate_target(hub, type_, repo_id, revision)
    remote = request.remote or ""
    asked = request.query.get("ip", "") if index.tracker.ip_trusted(remote) else ""
    body = await index.locate(hub, type_, repo_id, revision, _ip_or_none(asked or remote),
                              time.time())
    index.answer_seconds["locate"].observe(time.perf_counter() - started)
    return web.Response(body=body, content_type=MSGPACK)


def _ip_or_none(text: str | None) -> str | None:
    try:
        return str(ipaddress.ip_address(text)) if text else None
    except ValueError:
        return None


async def index_context(app: web.Application, config: TrackerConfig, tracker: Any
                        ) -> AsyncIterator[None]:
    """The index, when `[tracker] index` is on and the tracker has a home folder."""
    if not config.index or config.home is None:
        yield
        return
    config.home.mkdir(parents=True, exist_ok=True)
    index = Index(config, tracker)
    try:
        await index.open()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60, connect=10)) \
                as http:
            app[INDEX] = index
            poller = Poller(index.run, index.store, config.mirror_keys, http, index,
                            own_keys=config.own_keys)
            task = app[LOOPS].spawn(_poll(poller, config.poll_interval, index.wake),
                                    "index polls")
            log.info("index: key %s, mirrors accepted from %s, polled every %gs",
                     index.public_key, config.mirror_keys or "(no mirror_keys file)",
                     config.poll_interval)
            try:
                yield
            finally:
                await app[LOOPS].stop([task])
    finally:
        await index.close()


async def _poll(poller: Poller, interval: float, wake: asyncio.Event) -> None:
    """A round every `interval` seconds, or at once when a new mirror registers."""
    while True:
        wake.clear()
        try:
            await poller.round()
        except (sqlite3.Error, OSError) as e:  # the next round tries again
            log.warning("index: a poll round failed: %s", e)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), interval)


def _answered(handler: Callable) -> Callable:
    """Errors as the mirror answers them (JSON, `X-Error-Message`), never a traceback."""
    async def answered(request: web.Request) -> web.StreamResponse:
        return await answer_errors(request, handler)
    return answered


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/weightswarm/register", register)
    app.router.add_post("/api/weightswarm/tracker-keys", tracker_keys)
    app.router.add_get("/api/weightswarm/key", index_key)
    app.router.add_get("/api/weightswarm/keys", _answered(key_list))
    app.router.add_get("/api/weightswarm/mirrors", mirrors)
    app.router.add_get("/api/weightswarm/locate/{hub}/{type}/{repo:.+}", _answered(locate))
    for prefix in ("", "/hubs/{hub}"):
        app.router.add_get(f"{prefix}/api/models", _answered(listing))
        app.router.add_get(f"{prefix}/api/datasets", _answered(listing))
