"""The mirror's HTTP service: `create_app(config)` and `serve(config)`.

Handlers are short: parse the request, call one lookup on the catalog's thread, render. Errors
become HF-style answers in one middleware (`X-Error-Code`, `X-Error-Message`, JSON body; a
traceback only ever goes to the log, with the request id).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web
from multidict import MultiDict
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

from peer import hubs
from peer.errors import BadRequest, NotFound, WeightswarmError
from peer.hfformat import REPO_TYPES
from peer.http import answer_errors, header_safe
from peer.keys import load_or_create, public_key_text
from peer.paths import check_repo_id, check_revision, is_commit, is_sha256
from peer.service import until_stopped
from peer.settings import MIRROR_FINGERPRINT
from peer.store import BlobStore

from . import routes
from .answers import CatalogAnswers
from .catalog import Catalog
from .config import Config
from .distribution import Distribution, magnet, torrent_file
from .egress import Egress
from .hfapi import TREE_PAGE, HubService, Located, parse_list_query, resolve_headers
from .serving import blob_response

log = logging.getLogger(__name__)
access_log = logging.getLogger("mirror.access")

CONFIG = web.AppKey("config", Config)
SERVICE = web.AppKey("service", HubService)
CATALOG_THREAD = web.AppKey("catalog_thread", ThreadPoolExecutor)
PUBLIC_KEY = web.AppKey("public_key", str)
METRICS = web.AppKey("metrics", "Metrics")
ROUTE = web.RequestKey("route", str)
ANSWERS = web.AppKey("answers", CatalogAnswers)
DISTRIBUTION = web.AppKey("distribution", Distribution)
#: tracker announce URLs our torrents carry: [mirror] trackers, else the embedded tracker
TRACKERS = web.AppKey("trackers", list)
EGRESS = web.AppKey("egress", Egress)
SEEDER = web.AppKey("seeder", object)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("weightswarm_mirror_requests", "HTTP requests answered",
                                ["route", "status"], registry=self.registry)
        self.bytes_served = Counter("weightswarm_mirror_bytes_served",
                                    "Body bytes sent, by route", ["route"], registry=self.registry)
        self.store_blobs = Gauge("weightswarm_mirror_store_blobs", "Blobs in the store",
                                 registry=self.registry)
        self.store_bytes = Gauge("weightswarm_mirror_store_bytes", "Bytes of blobs in the store",
                                 registry=self.registry)
        self.egress_bytes = Counter(
            "weightswarm_mirror_egress_bytes",
            "Blob bytes sent: over BitTorrent, the web-seed route /blobs, and resolve",
            ["via"], registry=self.registry)
        self._egress = {via: self.egress_bytes.labels(via)
                        for via in ("bittorrent", "webseed", "resolve")}
        self.bt_torrents = Gauge("weightswarm_mirror_torrents_seeded", "Blobs seeded",
                                 registry=self.registry)
        self.bt_peers = Gauge("weightswarm_mirror_bittorrent_peers", "BitTorrent peers connected",
                              registry=self.registry)
        self.corrupt_blobs = Gauge("weightswarm_mirror_corrupt_blobs",
                                   "Blobs a scrub found corrupt, not yet repaired",
                                   registry=self.registry)
        self.scrubbed = Counter("weightswarm_mirror_scrubbed_blobs", "Blobs re-hashed by scrubs",
                                registry=self.registry)
        self.corrupt_found = Counter("weightswarm_mirror_corrupt_found",
                                     "Blobs scrubs found corrupt", registry=self.registry)
        self.repaired = Counter("weightswarm_mirror_repaired_blobs",
                                "Corrupt blobs mended from the swarm", registry=self.registry)
        self._children: dict[tuple[str, str], tuple] = {}

    def egress(self, sent: int, via: str) -> None:
        if sent > 0:
            self._egress[via].inc(sent)

    def egress_counter(self, via: str) -> Callable[[int], None]:
        """For responses that count blob bytes as they hand them to the kernel."""
        return self._egress[via].inc

    def count(self, route: str, status: int, sent: int) -> None:
        # labels() costs a lock and a dict lookup in prometheus_client: keep the children.
        key = (route, str(status))
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.requests.labels(*key),
                                              self.bytes_served.labels(route))
        children[0].inc()
        if sent:
            children[1].inc(sent)


_NO_QUERY: MultiDict[str] = MultiDict()


def _true(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


async def _on_catalog(request: web.Request, fn: Callable[..., Any], *args, **kwargs) -> Any:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(request.app[CATALOG_THREAD], lambda: fn(*args, **kwargs))


class _Failed:
    """A cached refusal (a missing file that transformers probes again and again, say)."""

    __slots__ = ("error",)

    def __init__(self, error: WeightswarmError):
        self.error = error


async def _answer(request: web.Request, key, fn: Callable[..., Any], *args, **kwargs) -> Any:
    """`fn(*args, **kwargs)` on the catalog's thread, or its answer from when the catalog was
    last as it is now (mirror/answers.py)."""
    answers = request.app[ANSWERS]
    value = answers.get(key)
    if value is None:
        version = answers.version()
        try:
            value = await _on_catalog(request, fn, *args, **kwargs)
        except WeightswarmError as e:
            value = _Failed(e)
        answers.put(key, value, version)
    if isinstance(value, _Failed):
        raise value.error.with_traceback(None)
    return value


def _json(body: bytes, headers: dict | None = None) -> web.Response:
    return web.Response(body=body, content_type="application/json", headers=headers)


def _dumps(value) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _base_url(request: web.Request) -> str:
    return request.app[CONFIG].mirror.public_url or f"{request.scheme}://{request.host}"


@web.middleware
async def observe(request: web.Request, handler):
    """Errors to HF-style answers (peer/http.py); one access-log line and metrics per
    request."""
    started = time.perf_counter()
    request[ROUTE] = "other"
    try:
        response = await answer_errors(request, handler)
    except (asyncio.CancelledError, ConnectionResetError):
        access_log.info("%s %s %s aborted", request.remote, request.method,
                        header_safe(request.raw_path))
        raise
    if request.method == "HEAD":
        sent = 0
    else:
        sent = response.body_length if response.prepared else (response.content_length or 0)
    request.app[METRICS].count(request[ROUTE], response.status, sent)
    access_log.info(
        '%s "%s %s" %d %d %.1fms', request.remote, request.method,
        header_safe(request.raw_path), response.status, sent,
        (time.perf_counter() - started) * 1000,
    )
    return response


# -- handlers ----------------------------------------------------------------------------------


async def hub_api(request: web.Request) -> web.StreamResponse:
    call = routes.parse(request.raw_path)
    request[ROUTE] = call.kind
    service = request.app[SERVICE]
    # Most requests carry no query: skip parsing one (request.query builds a MultiDict).
    q = request.query if request.query_string else _NO_QUERY
    method = request.method
    if call.kind == "resolve":
        if method not in ("GET", "HEAD"):
            raise web.HTTPMethodNotAllowed(method, ["GET", "HEAD"])
        located: Located = await _answer(request, call, service.locate, call)
        base = _base_url(request)
        headers = located.headers.get(base)
        if headers is None:
            headers = located.headers[base] = resolve_headers(call, located, base)
        if not located.pinned:
            return web.Response(status=307, headers=headers)
        return blob_response(request, located.blob, located.entry.size, located.entry.etag,
                             headers, request.app[EGRESS],
                             request.app[METRICS].egress_counter("resolve"))
    if call.kind == "paths_info":
        if method != "POST":
            raise web.HTTPMethodNotAllowed(method, ["POST"])
        form = await request.post()
        paths = [str(p) for p in form.getall("paths", [])]
        body = await _on_catalog(request, service.paths_info, call, paths,
                                 expand=_true(str(form.get("expand", ""))))
        return web.json_response(body)
    if method not in ("GET", "HEAD"):
        raise web.HTTPMethodNotAllowed(method, ["GET", "HEAD"])
    if call.kind == "repo_info":
        blobs = _true(q.get("blobs"))

        def render() -> bytes:
            return _dumps(service.repo_info(call, blobs=blobs))

        return _json(await _answer(request, (call, blobs), render))
    if call.kind == "tree":
        recursive, expand = _true(q.get("recursive")), _true(q.get("expand"))
        entries = await _answer(request, (call, recursive, expand), service.tree, call,
                                recursive=recursive, expand=expand)
        return _paginated(request, entries, TREE_PAGE)
    if call.kind == "refs":
        include_prs = _true(q.get("include_prs"))

        def render_refs() -> bytes:
            return _dumps(service.refs(call, include_prs=include_prs))

        return _json(await _answer(request, (call, include_prs), render_refs))
    if call.kind == "commits":
        return _paginated(request, await _on_catalog(request, service.commits, call), 50)
    query = parse_list_query(q)
    items = await _on_catalog(request, service.listing, call, query)
    headers = {}
    if len(items) > query.limit:
        items = items[: query.limit]
        headers["Link"] = _next_link(request, query.offset + query.limit)
    return web.json_response(items, headers=headers)


def _next_link(request: web.Request, cursor: int) -> str:
    """An absolute `Link: rel="next"` (httpx does not resolve relative ones), keeping every
    query parameter, built from `public_url` or the request's own origin."""
    query = [(k, v) for k, v in request.query.items() if k != "cursor"]
    query.append(("cursor", str(cursor)))
    url = request.url.with_query(query)
    return f'<{_base_url(request)}{url.raw_path_qs}>; rel="next"'


def _paginated(request: web.Request, items: list, page_size: int) -> web.Response:
    cursor = request.query.get("cursor", "0")
    if not cursor.isdigit() or int(cursor) > len(items):
        raise BadRequest(f"bad cursor {cursor!r}")
    start = int(cursor)
    page = items[start : start + page_size]
    headers = {}
    if start + page_size < len(items):
        headers["Link"] = _next_link(request, start + page_size)
    return web.json_response(page, headers=headers)


async def blob(request: web.Request) -> web.StreamResponse:
    request[ROUTE] = "blob"
    sha256 = request.match_info["sha256"]
    if not is_sha256(sha256):
        raise BadRequest("a blob is named by 64 lower-case hex characters")
    path, size = await _answer(request, ("blob", sha256), request.app[SERVICE].public_blob, sha256)
    return blob_response(request, path, size, sha256, {"Content-Type": "application/octet-stream"},
                         request.app[EGRESS], request.app[METRICS].egress_counter("webseed"))


async def public_key(request: web.Request) -> web.Response:
    request[ROUTE] = "key"
    return web.json_response({"key": request.app[PUBLIC_KEY]})


async def metrics(request: web.Request) -> web.Response:
    request[ROUTE] = "metrics"
    m = request.app[METRICS]
    catalog = request.app[SERVICE].catalog
    m.store_blobs.set(await _on_catalog(request, catalog.blob_count))
    m.store_bytes.set(await _on_catalog(request, catalog.store_bytes))
    m.corrupt_blobs.set(len(await _on_catalog(request, catalog.corrupt_blobs)))
    return web.Response(body=generate_latest(m.registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


async def index(request: web.Request) -> web.Response:
    request[ROUTE] = "index"
    seeder = request.app[SEEDER]
    return web.json_response({
        "service": "weightswarm mirror",
        "key": request.app[PUBLIC_KEY],
        "hf_endpoint": _base_url(request),
        "bittorrent_port": seeder.session.port if seeder is not None else None,
    })


# -- the application -----------------------------------------------------------------------------


async def _resources(app: web.Application):
    config = app[CONFIG]
    loop = asyncio.get_running_loop()
    thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="catalog")
    catalog = await loop.run_in_executor(thread, Catalog, config.catalog_path)
    store = BlobStore(config.store_dir)
    key = load_or_create(config.key_path)
    app[CATALOG_THREAD] = thread
    app[SERVICE] = HubService(catalog, store)
    app[ANSWERS] = CatalogAnswers(config.catalog_path)
    app[PUBLIC_KEY] = public_key_text(key)
    app[DISTRIBUTION] = Distribution(catalog, key)
    log.info("mirror home %s, key %s", config.home, app[PUBLIC_KEY])
    app[EGRESS] = Egress(config.mirror.egress_limit)
    app[SEEDER] = None
    if config.mirror.bittorrent is not None:
        app[SEEDER] = await _start_seeder(app, catalog, store)
    tasks = [asyncio.create_task(_flush_access_log())]
    if config.mirror.syncs:
        tasks.append(asyncio.create_task(_scheduler(config).run()))
    yield
    if app[SEEDER] is not None:
        await app[SEEDER].close()
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    _flush_handlers(access_log)
    app[ANSWERS].close()
    await loop.run_in_executor(thread, catalog.close)
    thread.shutdown(wait=True)


async def _start_seeder(app: web.Application, catalog: Catalog, store: BlobStore):
    from peer.session import Session

    from .seeding import Seeder
    from .syncjobs import refetch_blob

    config = app[CONFIG]
    loop = asyncio.get_running_loop()

    def on_catalog(fn, *args):
        return loop.run_in_executor(app[CATALOG_THREAD], lambda: fn(*args))

    seeder = Seeder(
        session=Session(config.mirror.bittorrent, role="mirror", fingerprint=MIRROR_FINGERPRINT), store=store, repair_dir=config.repair_dir,
        egress=app[EGRESS], trackers=app[TRACKERS], on_catalog=on_catalog, catalog=catalog,
        catalog_version=app[ANSWERS].version, scrub_interval=config.mirror.scrub_interval,
        metrics=app[METRICS], refetch=lambda sha256: refetch_blob(config, sha256))
    await seeder.start()
    return seeder


def _scheduler(config: Config):
    from .sync import parse_spec
    from .syncjobs import Scheduler, SyncJob

    jobs = [SyncJob(parse_spec(j["spec"], j["include"], j["exclude"]), j["interval"])
            for j in config.mirror.syncs]
    log.info("scheduled syncs: %s", ", ".join(f"{j.spec} every {j.interval:.0f}s" for j in jobs))
    return Scheduler(config, jobs)


def _flush_handlers(logger: logging.Logger) -> None:
    for handler in logger.handlers:
        handler.flush()


async def _flush_access_log() -> None:
    """The CLI batches access-log lines (mirror/cli.py): they reach the log within a second."""
    while True:
        await asyncio.sleep(1)
        _flush_handlers(access_log)


async def snapshot_info(request: web.Request) -> web.Response:
    request[ROUTE] = "snapshot"
    hub, repo_type, repo_id = _distribution_repo(request)
    revision = request.query.get("revision", "main")
    check_revision(revision)
    body = await _answer(request, ("snapshot", hub, repo_type, repo_id, revision),
                         request.app[DISTRIBUTION].snapshot, hub, repo_type, repo_id, revision)
    return web.json_response(body)


async def manifest(request: web.Request) -> web.Response:
    request[ROUTE] = "manifest"
    hub, repo_type, repo_id = _distribution_repo(request)
    commit = request.match_info["commit"]
    if not is_commit(commit):
        raise BadRequest("a manifest is named by its 40-hex commit")
    body = await _answer(request, ("manifest", hub, repo_type, repo_id, commit),
                         request.app[DISTRIBUTION].manifest, hub, repo_type, repo_id, commit)
    return web.Response(body=body, content_type="application/x-msgpack",
                        headers={"Cache-Control": "public, max-age=31536000, immutable"})


async def torrent(request: web.Request) -> web.Response:
    request[ROUTE] = "torrent"
    sha256 = request.match_info["sha256"]
    if not is_sha256(sha256):
        raise BadRequest("a torrent is named by its blob's 64 lower-case hex sha256")
    info, _ = await _answer(request, ("torrent", sha256), request.app[DISTRIBUTION].torrent,
                            sha256)
    trackers = request.app[TRACKERS]
    web_seed = f"{_base_url(request)}/blobs/sha256/{sha256}"
    if request.query.get("format") == "magnet":
        return web.json_response({"magnet": magnet(info, trackers, web_seed)})
    return web.Response(body=torrent_file(info, trackers, web_seed),
                        content_type="application/x-bittorrent")


async def torrents(request: web.Request) -> web.Response:
    """What this mirror seeds (and mends), live from its session."""
    request[ROUTE] = "torrents"
    seeder = request.app[SEEDER]
    return web.json_response({
        "seeding": seeder is not None,
        "port": seeder.session.port if seeder else None,
        "egress_limit": request.app[EGRESS].rate,
        "torrents": seeder.torrents() if seeder else [],
    })


def _distribution_repo(request: web.Request) -> tuple[str, str, str]:
    hub, repo_type, repo_id = (request.match_info[k] for k in ("hub", "type", "repo"))
    if hub not in hubs.HUBS or repo_type not in REPO_TYPES:
        raise NotFound("no such hub or repo type")
    return hub, repo_type, check_repo_id(repo_id)


def create_app(config: Config, trackers: list[str] | None = None) -> web.Application:
    app = web.Application(middlewares=[observe])
    app[CONFIG] = config
    app[TRACKERS] = list(config.mirror.trackers or trackers or [])
    app[METRICS] = Metrics()
    app.cleanup_ctx.append(_resources)
    app.router.add_get("/", index)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/weightswarm/key", public_key)
    app.router.add_get("/api/weightswarm/snapshots/{hub}/{type}/{repo:.+}", snapshot_info)
    app.router.add_get("/api/weightswarm/manifests/{hub}/{type}/{repo:.+}/{commit}", manifest)
    app.router.add_get("/api/weightswarm/torrents", torrents)
    app.router.add_get("/api/weightswarm/torrents/{sha256}.torrent", torrent)
    app.router.add_get("/blobs/sha256/{sha256}", blob)
    app.router.add_route("*", "/{tail:.*}", hub_api)
    return app


async def start(config: Config, trackers: list[str] | None = None
                ) -> tuple[web.AppRunner, int]:
    """Start serving; returns the runner and the port obtained (port 0 picks a free one)."""
    runner = web.AppRunner(create_app(config, trackers), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.mirror.host, config.mirror.port)
    await site.start()
    port = runner.addresses[0][1]
    log.info("mirror listening on http://%s:%d (HF_ENDPOINT=http://%s:%d)",
             config.mirror.host, port, config.mirror.host, port)
    return runner, port


async def serve(config: Config, *, with_tracker: bool = False) -> None:
    """Serve until SIGINT or SIGTERM, then close connections and the catalog cleanly. The
    all-in-one node runs the tracker in the same process and loop."""
    tracker = None
    embedded = []
    if with_tracker:
        from tracker import app as tracker_app

        tracker = await tracker_app.start(config.tracker)
        embedded = [f"http://{config.tracker.host}:{tracker[2]}/announce"]
    runner, _ = await start(config, embedded)
    # Everything alive now lives as long as the server: keep it out of the collector's scans,
    # and collect the young generation less often; full collections otherwise show as the
    # tail of request latency.
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)
    try:
        await until_stopped()
        log.info("mirror stopping")
    finally:
        if tracker is not None:
            tracker_runner, udp, _ = tracker
            udp.close()
            await tracker_runner.cleanup()
        await runner.cleanup()
