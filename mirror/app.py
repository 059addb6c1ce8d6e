"""The mirror's HTTP service: `create_app(config)` and `serve(config)`.

Handlers are short: parse the request, call one lookup on the catalog's thread, render. Errors
become HF-style answers in one middleware (`X-Error-Code`, `X-Error-Message`, JSON body; a
traceback only ever goes to the log, with the request id).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import dataclasses
import gc
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiohttp import web
from multidict import MultiDict
from prometheus_client import CollectorRegistry, Counter, Gauge

from peer import hubs
from peer import pages as page_kit
from peer.answers import KeptAnswers
from peer.errors import (
    BadRequest,
    BlobMissing,
    EntryNotFound,
    GatedNeedsToken,
    GatedRepo,
    Hidden,
    NotFound,
    RepoNotFound,
    RequestTimeout,
    RevisionNotFound,
    WeightswarmError,
)
from peer.hfformat import REPO_TYPES, sibling_json
from peer.http import answer_errors, header_safe
from peer.keys import load_or_create, public_key_text
from peer.listing import next_link, parse_list_query
from peer.metrics import Children, metrics_response
from peer.pages import wants_html
from peer.paths import ascii_digits, check_repo_id, check_revision, is_commit, is_sha256
from peer.service import LIMITS, LISTENER, LOOPS, Service, background, listening
from peer.service import serve as serve_services
from peer.service import start as start_service
from peer.settings import MIRROR_FINGERPRINT
from peer.store import BlobStore
from peer.torrent import tracker_http

from . import feed, msapi, pages, routes
from .access import (
    MIRROR_SEEDER,
    AccessFile,
    Rules,
    Token,
    bearer,
    decide,
    private_announce,
    tracker_key,
    tracker_key_hashes,
    tracker_secret,
)
from .aliases import redirected as aliases_redirect
from .catalog import Catalog
from .config import Config
from .distribution import Distribution, Torrent, magnet, peer_address, torrent_file
from .egress import Egress
from .flights import FlightResponse
from .hfapi import (
    TREE_PAGE,
    HubService,
    Located,
    StoredBlob,
    paths_info_json,
    resolve_headers,
    tree_json,
)
from .pullthrough import PullThrough, listed_entry
from .scan import Quarantined
from .serving import blob_answer, blob_response

log = logging.getLogger(__name__)
access_log = logging.getLogger("mirror.access")
#: one line per access refused, per read of gated content, per quarantined file an admin took
audit_log = logging.getLogger("mirror.audit")

CONFIG = web.AppKey("config", Config)
SERVICE = web.AppKey("service", HubService)
CATALOG_THREAD = web.AppKey("catalog_thread", ThreadPoolExecutor)
PUBLIC_KEY = web.AppKey("public_key", str)
METRICS = web.AppKey("metrics", "Metrics")
ROUTE = web.RequestKey("route", str)
ANSWERS = web.AppKey("answers", KeptAnswers)
#: rendered pages, kept apart: larger than the API's answers, and a crawler's every distinct
#: query must not push those out (PAGES_KEPT of them at most)
PAGES = web.AppKey("pages", KeptAnswers)
#: the client the egress sampler and the operator's page ask the tracker with
CARRIED_HTTP = web.AppKey("carried_http", object)
#: (hub, type, repo id) → whole-file downloads not yet written to the catalog
DOWNLOADS = web.AppKey("downloads", dict)
#: seconds between writes of the download counts (each write makes every kept answer stale)
DOWNLOADS_EVERY = 60.0
PAGES_KEPT = 256
DISTRIBUTION = web.AppKey("distribution", Distribution)
EGRESS = web.AppKey("egress", Egress)
SESSION = web.AppKey("session", object)
SEEDER = web.AppKey("seeder", object)
PULL_THROUGH = web.AppKey("pull_through", PullThrough)
ACCESS = web.AppKey("access", AccessFile)
#: what the private-swarm keys are derived from (mirror/access.py `tracker_secret`)
TRACKER_SECRET = web.AppKey("tracker_secret", bytes)


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
        self._egress = Children(self.egress_bytes)
        for via in ("bittorrent", "webseed", "resolve"):
            self._egress(via)  # each series shows from the start, at 0
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
        self.pull_through = Counter(
            "weightswarm_mirror_pull_through",
            "Pull-through: revisions answered from what was looked up (hit) or looked up "
            "(miss), waits for bytes, upstream errors; bytes fetched",
            ["event"], registry=self.registry)
        self._pull_through = Children(self.pull_through)
        for event in ("hit", "miss", "wait", "upstream_error", "bytes"):
            self._pull_through(event)
        self.pull_through_flights = Gauge("weightswarm_mirror_pull_through_in_flight",
                                          "Files being fetched by pull-through",
                                          registry=self.registry)
        self.scanned = Gauge("weightswarm_mirror_scanned_blobs",
                             "Blobs of pickle-based formats by the scanner's verdict",
                             ["verdict"], registry=self.registry)
        self.audit = Counter(
            "weightswarm_mirror_audit_events",
            "Access refused (by what was wrong: no token, a token without the right), gated "
            "content read with a token, quarantined files an admin took",
            ["event"], registry=self.registry)
        self._audit = Children(self.audit)
        for event in ("refused_anonymous", "refused_token", "gated_read", "quarantine_read"):
            self._audit(event)
        self._requests = Children(self.requests)
        self._bytes_served = Children(self.bytes_served)
        #: blob bytes sent by way since start (the operator's page charts them)
        self.egress_totals = dict.fromkeys(pages.EGRESS_WAYS, 0)
        #: (time, totals) every EGRESS_SAMPLE seconds, the last EGRESS_HOURS hours
        self.egress_history: collections.deque = collections.deque(
            maxlen=int(pages.EGRESS_HOURS * 3600 / pages.EGRESS_SAMPLE))

    def audited(self, event: str) -> None:
        self._audit(event).inc()

    def pulled(self, event: str, n: int) -> None:
        if n > 0:
            self._pull_through(event).inc(n)

    def egress(self, sent: int, via: str) -> None:
        if sent > 0:
            self._egress(via).inc(sent)
            self.egress_totals[via] += sent

    def egress_counter(self, via: str) -> Callable[[int], None]:
        """For responses that count blob bytes as they hand them to the kernel."""
        child, totals = self._egress(via), self.egress_totals

        def count(n: int) -> None:
            child.inc(n)
            totals[via] += n
        return count

    def count(self, route: str, status: int, sent: int) -> None:
        self._requests(route, str(status)).inc()
        if sent:
            self._bytes_served(route).inc(sent)


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


async def _answer(request: web.Request, key, fn: Callable[..., Any], *args,
                  _kept: web.AppKey | None = None, **kwargs) -> Any:
    """`fn(*args, **kwargs)` on the catalog's thread, or its answer from when the catalog was
    last as it is now (peer/answers.py; `_kept`: another such store, as PAGES)."""
    answers = request.app[_kept or ANSWERS]
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


# -- access (mirror/access.py decides; here each path asks it) -------------------------------


def _reader(request: web.Request) -> tuple[Rules, Token | None]:
    """The access file's rules as they are now, and the request's live token (None: none).
    Worked out again at each ask (a microsecond): keeping it on the request costs more, as
    `request.get` of a missing key raises inside."""
    rules = request.app[ACCESS].rules()
    presented = bearer(request.headers.get("Authorization"))
    return rules, rules.token(presented, time.time()) if presented else None


def _who(request: web.Request, token: Token | None) -> str:
    return f"{request.remote} {token.user}/{token.sha256[:8]}" if token else \
        f"{request.remote} anonymous"


def _permit(request: web.Request, access: str, repo_id: str,
            repo_type: str = "model") -> Token | None:
    """Let a request read a repo of this access, or raise the HF answer that refuses it
    (GatedRepo 401/403, RepoNotFound as for a missing repo); one audit line either way for
    what is not public."""
    if access == "public":
        return None
    rules, token = _reader(request)
    decision = decide(access, repo_id, token, rules)
    if not decision.allowed:
        request.app[METRICS].audited("refused_token" if token else "refused_anonymous")
        audit_log.info("refused %s %s %s: %s (%s)", _who(request, token), request.method,
                       header_safe(request.raw_path[:300]), decision.reason, decision.status)
        if decision.error_code == "GatedRepo":
            raise (GatedRepo if token else GatedNeedsToken)(repo_id, message=decision.reason)
        raise _hidden(request, Hidden(repo_id, repo_type))
    if access == "gated":
        request.app[METRICS].audited("gated_read")
        audit_log.info("gated read %s %s %s", _who(request, token), request.method,
                       header_safe(request.raw_path[:300]))
    return token


async def _guard(request: web.Request, call: routes.HubCall, *, download: bool) -> None:
    """Refuse a HF API call on a repo this request may not read (RepoNotFound when the
    catalog has no such repo: pull-through and aliases may still answer). A gated repo's
    metadata is anyone's, as on the Hub; its files need the right."""
    try:
        access = await _answer(request, ("access", call.hub, call.repo_type, call.repo_id),
                               request.app[SERVICE].access, call)
    except RepoNotFound:
        # Not here (yet): what `mirror access` set for its name still holds, before
        # pull-through may fetch it.
        access = await _answer(request, ("ruled", call.repo_id),
                               request.app[SERVICE].catalog.ruled_access, call.repo_id)
        if access in ("private", "gated") and (access == "private" or download):
            _permit(request, access, call.repo_id, call.repo_type)
        raise
    if access == "private" or (access == "gated" and download):
        _permit(request, access, call.repo_id, call.repo_type)


def _unquarantined(request: web.Request, quarantined: bool, repo_id: str, what: str) -> None:
    """A quarantined file is served to the admins of its repo only."""
    if not quarantined:
        return
    rules, token = _reader(request)
    if not rules.is_admin(token, repo_id):
        raise Quarantined(what)
    request.app[METRICS].audited("quarantine_read")
    audit_log.info("quarantined file read by admin %s: %s %s", _who(request, token),
                   repo_id, what)


def _hidden(request: web.Request, error: NotFound) -> NotFound:
    """A repo or blob missing, or one this request may not know of, answered alike: on a
    mirror with accounts 401 without a live token and 404 with one (as the Hub answers); 404
    on one without."""
    error = copy.copy(error)  # a cached answer's error is every reader's: never changed
    if request.app[ACCESS].path is None:
        error.status = 404
    else:
        error.status = 404 if _reader(request)[1] else 401
    return error


def _not_found(request: web.Request, call: routes.HubCall, error: RepoNotFound) -> Exception:
    if isinstance(error, Hidden):
        return error
    return _hidden(request, Hidden(call.repo_id, call.repo_type, message=str(error)))


async def whoami(request: web.Request) -> web.Response:
    """`/api/whoami-v2` (`HfApi.whoami`, `hf auth login`): the token's user; 401 without a
    live one."""
    request[ROUTE] = "whoami"
    rules, token = _reader(request)
    if token is None:
        return web.json_response(
            {"error": "Invalid credentials in Authorization header"}, status=401,
            headers={"X-Error-Message": "Invalid credentials in Authorization header"})
    role = "admin" if token.admin else "read"
    return web.json_response({
        "type": "user", "id": token.user, "name": token.user, "fullname": token.user,
        "email": None, "emailVerified": False, "isPro": False, "orgs": [],
        "auth": {"type": "access_token", "accessToken": {
            "displayName": token.name or f"{token.user}-{token.sha256[:8]}", "role": role}},
        "weightswarm": {"read": sorted({*token.read, *token.admin,
                                        *rules.users.get(token.user, ())}),
                        "admin": list(token.admin), "expires": token.expires},
    })


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
    """Every HF API path: parsed (routes.py), then answered by the call's own handler; an
    old name (`[mirror] aliases`) that the catalog lacks, redirected to its new one. A
    browser asking for a page path gets the page (mirror/pages.py)."""
    if request.method in _READ and wants_html(request.headers.get("Accept")):
        found = _page_of(request)
        if found is not None:
            return await _page(request, found)
    aliases = request.app[CONFIG].mirror.aliases
    try:
        call = routes.parse(request.raw_path)
    except NotFound:
        moved = aliases.for_url(request.raw_path.split("?", 1)[0].lstrip("/")) \
            if aliases else None
        if moved is None:
            raise
        request[ROUTE] = "alias"
        raise web.HTTPFound(moved) from None
    request[ROUTE] = call.kind
    methods, answer = _HUB_CALLS[call.kind]
    if request.method not in methods:
        raise web.HTTPMethodNotAllowed(request.method, list(methods))
    try:
        if call.repo_id:
            await _guard(request, call, download=call.kind == "resolve")
        return await answer(request, call)
    except Hidden:
        raise  # refused: neither an alias nor the upstream may answer for it
    except (RepoNotFound, RevisionNotFound) as e:
        target = aliases.for_repo(call) if aliases and call.repo_id and \
            isinstance(e, RepoNotFound) else None
        moved = aliases_redirect(call, request.raw_path, target) if target else None
        if moved is None:
            pull_through = request.app[PULL_THROUGH]
            if call.kind in _PULLED and pull_through is not None and pull_through.covers(call):
                request[ROUTE] = f"pull_through_{call.kind}"
                return await _pull_through_answer(request, call, pull_through)
            if isinstance(e, RepoNotFound):
                raise _not_found(request, call, e) from None
            raise
        request[ROUTE] = "alias"
        query = request.rel_url.raw_query_string
        # 307: the same method again at the new name, as the Hub answers for a renamed repo
        raise web.HTTPTemporaryRedirect(moved + (f"?{query}" if query else "")) from None


async def alias(request: web.Request) -> web.Response:
    """`/api/weightswarm/aliases?url=<a retired URL>`: a redirect to where it lives now;
    without `url`, the table of aliases."""
    request[ROUTE] = "alias"
    aliases = request.app[CONFIG].mirror.aliases
    url = request.query.get("url")
    if url is None:
        return web.json_response({
            "repos": {f"{hub}:{repo_type}:{repo_id}": target.repo_info_path()
                      for (hub, repo_type, repo_id), target in aliases.repos.items()},
            "urls": {key: target.repo_info_path() for key, target in aliases.urls}})
    moved = aliases.for_url(url)
    if moved is None:
        raise NotFound(f"no alias covers {url[:200]!r}")
    raise web.HTTPFound(moved)


def _query(request: web.Request) -> MultiDict[str]:
    # Most requests carry no query: skip parsing one (request.query builds a MultiDict).
    return request.query if request.query_string else _NO_QUERY


async def _resolve(request: web.Request, call: routes.HubCall) -> web.StreamResponse:
    located: Located = await _answer(request, call, request.app[SERVICE].locate, call)
    _unquarantined(request, located.quarantined, call.repo_id, call.path)
    base = _base_url(request)
    headers = located.headers.get(base)
    if headers is None:
        headers = located.headers[base] = resolve_headers(call, located, base)
    if not located.pinned:
        return web.Response(status=307, headers=headers)
    if request.method == "GET" and request.headers.get("Range", "bytes=0-").replace(
            " ", "") == "bytes=0-":
        # A download on this mirror (the search page sorts by them): a whole file's GET,
        # counted in memory and written every DOWNLOADS_EVERY seconds.
        key = (call.hub, call.repo_type, call.repo_id)
        counts = request.app[DOWNLOADS]
        counts[key] = counts.get(key, 0) + 1
    return blob_response(request, located.blob, located.entry.size, located.entry.etag,
                         headers, request.app[EGRESS],
                         request.app[METRICS].egress_counter("resolve"))


async def _paths_form(request: web.Request) -> tuple[list[str], bool]:
    try:
        async with asyncio.timeout(request.app[LIMITS].body_timeout):
            form = await request.post()
    except TimeoutError:
        raise RequestTimeout("the request's body did not arrive in time") from None
    return [str(p) for p in form.getall("paths", [])], _true(str(form.get("expand", "")))


async def _paths_info(request: web.Request, call: routes.HubCall) -> web.Response:
    paths, expand = await _paths_form(request)
    body = await _on_catalog(request, request.app[SERVICE].paths_info, call, paths,
                             expand=expand)
    return web.json_response(body)


async def _rendered(request: web.Request, call: routes.HubCall, flag: str,
                    lookup: Callable[[routes.HubCall, bool], Any]) -> web.Response:
    """`lookup(call, flag)` as JSON bytes, rendered once while the catalog stays as it is."""
    value = _true(_query(request).get(flag))

    def render() -> bytes:
        return _dumps(lookup(call, value))

    return _json(await _answer(request, (call, flag, value), render))


async def _repo_info(request: web.Request, call: routes.HubCall) -> web.Response:
    service = request.app[SERVICE]
    if _true(_query(request).get("securityStatus")):
        blobs = _true(_query(request).get("blobs"))
        return _json(await _answer(request, (call, "security", blobs), lambda: _dumps(
            service.repo_info(call, blobs=blobs, security=True))))
    return await _rendered(request, call, "blobs", lambda c, v: service.repo_info(c, blobs=v))


async def _tree(request: web.Request, call: routes.HubCall) -> web.Response:
    q = _query(request)
    recursive, expand = _true(q.get("recursive")), _true(q.get("expand"))
    entries = await _answer(request, (call, recursive, expand), request.app[SERVICE].tree, call,
                            recursive=recursive, expand=expand)
    return _paginated(request, entries, TREE_PAGE)


async def _refs(request: web.Request, call: routes.HubCall) -> web.Response:
    service = request.app[SERVICE]
    return await _rendered(request, call, "include_prs",
                           lambda c, v: service.refs(c, include_prs=v))


async def _commits(request: web.Request, call: routes.HubCall) -> web.Response:
    return _paginated(request, await _on_catalog(request, request.app[SERVICE].commits, call), 50)


async def _listing(request: web.Request, call: routes.HubCall) -> web.Response:
    query = parse_list_query(_query(request))
    rules, token = _reader(request)
    readable = (lambda repo_id: rules.may_read(token, repo_id)) if token else None
    items = await _on_catalog(request, request.app[SERVICE].listing, call, query, readable)
    headers = {}
    if len(items) > query.limit:
        items = items[: query.limit]
        headers["Link"] = _next_link(request, query.offset + query.limit)
    return web.json_response(items, headers=headers)


_READ = ("GET", "HEAD")
#: each HF API call (routes.HubCall.kind): the methods it takes, and its handler
_HUB_CALLS = {
    "resolve": (_READ, _resolve),
    "paths_info": (("POST",), _paths_info),
    "repo_info": (_READ, _repo_info),
    "tree": (_READ, _tree),
    "refs": (_READ, _refs),
    "commits": (_READ, _commits),
    "list": (_READ, _listing),
}


# -- pull-through: the same calls, for what the catalog lacks (mirror/pullthrough.py) ---------


async def _pull_through_answer(request: web.Request, call: routes.HubCall,
                               pull_through: PullThrough) -> web.StreamResponse:
    try:
        return await _PULLED[call.kind](request, call, pull_through)
    except RepoNotFound as missing:  # answered as a private repo is
        raise _not_found(request, call, missing) from None


async def _pulled(request: web.Request, call: routes.HubCall, pull_through: PullThrough):
    """The revision pull-through looked up, if this request may know of it: an upstream repo
    that is private (our upstream token may read it) is private here too."""
    revision = await pull_through.revision(call)
    if revision.info.get("private"):
        _permit(request, "private", call.repo_id, call.repo_type)
    return revision


async def _pulled_resolve(request: web.Request, call: routes.HubCall,
                          pull_through: PullThrough) -> web.StreamResponse:
    revision = await _pulled(request, call, pull_through)
    f = revision.by_path.get(call.path)
    if f is None:
        raise EntryNotFound(call.repo_id, revision.commit, call.path)
    if revision.gated:
        _permit(request, "gated", call.repo_id, call.repo_type)
    entry = listed_entry(f)
    pinned = call.revision == revision.commit
    headers = resolve_headers(call, Located(revision.commit, entry, Path(), pinned),
                              _base_url(request))
    if not pinned:
        return web.Response(status=307, headers=headers)
    egress, sent = request.app[EGRESS], request.app[METRICS].egress_counter("resolve")
    kept = await pull_through.kept_back(f)
    if kept is not None:
        if pull_through.scan_policy != "quarantine":
            raise kept
        _unquarantined(request, True, call.repo_id, call.path)
    if f.lfs and f.sha256 and pull_through.store.has(f.sha256):
        return blob_response(request, pull_through.store.path_for(f.sha256), f.size,
                             entry.etag, headers, egress, sent)
    if request.method == "HEAD":
        answer = blob_answer(request, f.size, entry.etag, headers)
        return web.Response(status=answer.status, headers={
            **answer.headers, "Content-Length": str(answer.count)})
    flight = pull_through.flight(revision, f)
    pull_through.complete(revision)
    # A client resuming after bytes that failed verification may hold wrong ones: it gets
    # the whole file (the HF client starts over on a 200).
    answer = blob_answer(request, f.size, entry.etag, headers,
                         ranges=not pull_through.tainted(flight))
    if answer.status == 304:
        return web.Response(status=304, headers=answer.headers)
    return FlightResponse(flight, answer.offset, answer.count, status=answer.status,
                          headers=answer.headers, egress=egress, on_sent=sent)


async def _pulled_info(request: web.Request, call: routes.HubCall,
                       pull_through: PullThrough) -> web.Response:
    revision = await _pulled(request, call, pull_through)
    blobs = _true(_query(request).get("blobs"))
    info = {**revision.info, "sha": revision.commit,
            "siblings": [sibling_json(e, blobs=blobs) for e in revision.entries]}
    return _json(_dumps(info))


def _last_commit(revision) -> dict:
    return {"id": revision.commit, "title": "", "date": revision.info.get("lastModified")}


async def _pulled_tree(request: web.Request, call: routes.HubCall,
                       pull_through: PullThrough) -> web.Response:
    revision = await _pulled(request, call, pull_through)
    q = _query(request)
    try:
        entries = tree_json(revision.entries, call.path, recursive=_true(q.get("recursive")),
                            last_commit=_last_commit(revision) if _true(q.get("expand"))
                            else None)
    except LookupError:
        raise EntryNotFound(call.repo_id, revision.commit, call.path) from None
    return _paginated(request, entries, TREE_PAGE)


async def _pulled_paths_info(request: web.Request, call: routes.HubCall,
                             pull_through: PullThrough) -> web.Response:
    revision = await _pulled(request, call, pull_through)
    paths, expand = await _paths_form(request)
    return web.json_response(paths_info_json(revision.entries, paths,
                                             _last_commit(revision) if expand else None))


async def _pulled_refs(request: web.Request, call: routes.HubCall,
                       pull_through: PullThrough) -> web.Response:
    return _json(_dumps(await pull_through.refs(call)))


async def _pulled_commits(request: web.Request, call: routes.HubCall,
                          pull_through: PullThrough) -> web.Response:
    revision = await _pulled(request, call, pull_through)
    return _paginated(request, [{"id": revision.commit, "authors": [], "title": "",
                                 "message": "", "date": revision.info.get("lastModified")}], 50)


#: the calls pull-through answers for a repo or revision the catalog lacks
_PULLED = {
    "resolve": _pulled_resolve,
    "repo_info": _pulled_info,
    "tree": _pulled_tree,
    "paths_info": _pulled_paths_info,
    "refs": _pulled_refs,
    "commits": _pulled_commits,
}


def _next_link(request: web.Request, cursor: int) -> str:
    """An absolute `Link: rel="next"` (httpx does not resolve relative ones), keeping every
    query parameter, built from `public_url` or the request's own origin."""
    return next_link(_base_url(request), request.url, cursor)


def _paginated(request: web.Request, items: list, page_size: int) -> web.Response:
    cursor = request.query.get("cursor", "0")
    start = ascii_digits(cursor)
    if start is None or start > len(items):
        raise BadRequest(f"bad cursor {cursor!r}")
    page = items[start : start + page_size]
    headers = {}
    if start + page_size < len(items):
        headers["Link"] = _next_link(request, start + page_size)
    return web.json_response(page, headers=headers)


# -- the ModelScope API (PROTOCOLS.md section 2; the pure parts in mirror/msapi.py) ----------


async def ms_api(request: web.Request) -> web.StreamResponse:
    """Every `/hubs/modelscope/api/v1/...` and `/openapi/v1/...` path: parsed, answered by its
    call's handler, every error in the ModelScope envelope (never HF's, never a traceback)."""
    rid = msapi.request_id(request.headers.get("X-Request-ID"))
    request[ROUTE] = "ms_other"
    try:
        call = msapi.parse(request.raw_path)
        request[ROUTE] = f"ms_{call.kind}"
        methods = msapi.METHODS[call.kind]
        if request.method not in methods:
            raise msapi.MethodNotAllowed(request.method, methods)
        if call.repo_id:
            await _ms_guard(request, call)
        return await _MS_CALLS[call.kind](request, call, rid)
    except WeightswarmError as e:
        return _ms_error(request, e, rid)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _ms_error(request, msapi.Refusal(e.status, e.reason), rid)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("request %s failed: %s %s", rid, request.method,
                      header_safe(request.raw_path))
        return _ms_error(request, WeightswarmError(f"internal error (request {rid})"), rid)


async def _ms_guard(request: web.Request, call: msapi.MsCall) -> None:
    """The HF API's access decision, in ModelScope's statuses: a repo refused is 404 (as a
    missing one), gated 403."""
    try:
        await _guard(request, msapi.hub_call(call, None), download=call.kind == "download")
    except (Hidden, GatedRepo) as e:
        answer = copy.copy(e)
        answer.status = 403 if isinstance(e, GatedRepo) else 404
        raise answer from None


def _ms_error(request: web.Request, error: WeightswarmError, rid: str) -> web.Response:
    openapi = request.raw_path.startswith(msapi.OPENAPI)
    status, body, headers = msapi.error_answer(error, rid, openapi=openapi)
    return web.json_response(body, status=status, headers=headers)


def _ms_params(request: web.Request) -> dict[str, str]:
    return msapi.query_params(request.rel_url.raw_query_string)


def _ms_json(body: bytes, rid: str) -> web.Response:
    return _json(body, {"X-Request-ID": rid})


async def _ms_download(request: web.Request, call: msapi.MsCall, rid: str) -> web.StreamResponse:
    params = _ms_params(request)
    revision, path = msapi.parse_revision(params), msapi.parse_file_path(params)
    located: Located = await _answer(request, ("ms-file", call, revision, path), msapi.locate,
                                     request.app[SERVICE], call, revision, path)
    _unquarantined(request, located.quarantined, call.repo_id, path)
    headers = {**msapi.download_headers(located), "X-Request-ID": rid}
    return blob_response(request, located.blob, located.entry.size, located.entry.sha256,
                         headers, request.app[EGRESS],
                         request.app[METRICS].egress_counter("resolve"))


async def _ms_files(request: web.Request, call: msapi.MsCall, rid: str) -> web.Response:
    listing = msapi.parse_listing(_ms_params(request))
    data = await _answer(request, ("ms-files", call, listing), msapi.files_data,
                         request.app[SERVICE], call, listing)
    return _ms_json(msapi.envelope(data, rid), rid)


async def _ms_tree(request: web.Request, call: msapi.MsCall, rid: str) -> web.Response:
    """`repo/tree` (datasets): the whole listing kept once, served a page at a time (or
    whole, asked for no page)."""
    params = _ms_params(request)
    listing, page = msapi.parse_listing(params), msapi.parse_tree_page(params)
    entries = await _answer(request, ("ms-tree", call, listing), msapi.files_entries,
                            request.app[SERVICE], call, listing)
    if page is not None:
        entries = entries[page.start:page.start + page.size]
    data = msapi.dumps({"Files": entries})
    return _ms_json(msapi.envelope(data, rid), rid)


async def _ms_revisions(request: web.Request, call: msapi.MsCall, rid: str) -> web.Response:
    end_time = msapi.parse_end_time(_ms_params(request))
    data = await _answer(request, ("ms-revisions", call, end_time), msapi.revisions_data,
                         request.app[SERVICE], call, end_time)
    return _ms_json(msapi.envelope(data, rid), rid)


async def _ms_info(request: web.Request, call: msapi.MsCall, rid: str) -> web.Response:
    revision = msapi.parse_revision(_ms_params(request), default=None)
    data = await _answer(request, ("ms-info", call, revision), msapi.legacy_info_data,
                         request.app[SERVICE], call, revision)
    return _ms_json(msapi.envelope(data, rid), rid)


async def _ms_openapi_info(request: web.Request, call: msapi.MsCall, rid: str) -> web.Response:
    data = await _answer(request, ("ms-openapi", call), msapi.openapi_info_data,
                         request.app[SERVICE], call)
    return _ms_json(msapi.openapi_envelope(data, rid), rid)


async def _ms_search(request: web.Request, call: msapi.MsCall, rid: str) -> web.Response:
    search = msapi.parse_search(_ms_params(request))
    data = await _answer(request, ("ms-search", call, search), msapi.search_data,
                         request.app[SERVICE], call.repo_type, search)
    return _ms_json(msapi.openapi_envelope(data, rid), rid)


async def _ms_legacy_search(request: web.Request, call: msapi.MsCall, rid: str) -> web.Response:
    if (request.content_length or 0) > msapi.MAX_LEGACY_BODY:
        raise BadRequest(f"the body is larger than {msapi.MAX_LEGACY_BODY} bytes")
    try:
        async with asyncio.timeout(request.app[LIMITS].body_timeout):
            body = await request.content.read(msapi.MAX_LEGACY_BODY + 1)
    except TimeoutError:
        raise RequestTimeout("the request's body did not arrive in time") from None
    if len(body) > msapi.MAX_LEGACY_BODY:
        raise BadRequest(f"the body is larger than {msapi.MAX_LEGACY_BODY} bytes")
    search = msapi.parse_legacy_search(body)
    data = await _answer(request, ("ms-legacy-search", call, search), msapi.legacy_search_data,
                         request.app[SERVICE], call.repo_type, search)
    return _ms_json(msapi.envelope(data, rid), rid)


#: each ModelScope API call (msapi.MsCall.kind, its methods in msapi.METHODS): its handler
_MS_CALLS = {
    "download": _ms_download,
    "files": _ms_files,
    "tree": _ms_tree,
    "revisions": _ms_revisions,
    "info": _ms_info,
    "openapi_info": _ms_openapi_info,
    "search": _ms_search,
    "legacy_search": _ms_legacy_search,
}


async def blob(request: web.Request) -> web.StreamResponse:
    request[ROUTE] = "blob"
    sha256 = request.match_info["sha256"]
    if not is_sha256(sha256):
        raise BadRequest("a blob is named by 64 lower-case hex characters")
    try:
        stored: StoredBlob = await _answer(request, ("blob", sha256),
                                           request.app[SERVICE].blob, sha256)
    except NotFound as e:
        raise _hidden(request, e) from None  # as one this request may not know of
    if not stored.public:
        _permit_blob(request, stored.holders, sha256)
    _unquarantined(request, stored.quarantined, _blob_repo(stored.holders), f"blob {sha256}")
    path, size = stored.path, stored.size
    if not path.is_file():
        # The lookup is a cached answer; a web seed's or the index's HEAD must not hear 200
        # for a blob gone from the store since (a stat is cheap).
        raise BlobMissing(sha256)
    return blob_response(request, path, size, sha256, {"Content-Type": "application/octet-stream"},
                         request.app[EGRESS], request.app[METRICS].egress_counter("webseed"))


def _permit_blob(request: web.Request, holders: tuple, sha256: str) -> Token:
    """A blob no public repo holds goes to a reader of one of the repos that hold it (`holders`:
    hub, type, id, access); to anyone else it does not exist (gated or private alike: its hash
    names no repo). The reader's token."""
    rules, token = _reader(request)
    for _hub, repo_type, repo_id, access in holders:
        if token is not None and decide(access, repo_id, token, rules).allowed:
            _permit(request, access, repo_id, repo_type)  # the audit line for gated content
            return token
    request.app[METRICS].audited("refused_token" if token else "refused_anonymous")
    audit_log.info("refused %s %s %s: blob %s is held by no repo it may read",
                   _who(request, token), request.method, header_safe(request.raw_path[:300]),
                   sha256)
    raise _hidden(request, NotFound(f"no blob {sha256}"))


def _blob_repo(holders: tuple) -> str:
    """The repo whose admins may take a quarantined blob: any that holds it (`*` for one a
    public repo holds: an admin of every repo)."""
    return holders[0][2] if holders else "*"


# -- pages (mirror/pages.py renders; peer/pages holds the templates and the sanitiser) ------


def _page_of(request: web.Request) -> pages.Page | Exception | None:
    """The page a browser asks for; an error to show as a page (a hostile path, or one that
    names nothing); None for an API path, answered as the API answers it."""
    try:
        found = pages.parse_page(request.raw_path)
    except (BadRequest, UnicodeDecodeError) as e:
        return e if isinstance(e, BadRequest) else BadRequest("the path is not valid UTF-8")
    if found is None and not _api_path(request.raw_path):
        return NotFound("no such page")  # a browser's 404 is a page too
    return found


def _api_path(raw_path: str) -> bool:
    """A path the API answers (a resolve download, say): a browser gets what the API gives."""
    try:
        routes.parse(raw_path)
    except NotFound:
        return False
    except BadRequest:
        return True  # the API's own answer says what is wrong
    return True


async def _page(request: web.Request, found) -> web.Response:
    """A page, or an HTML page saying what is wrong (never a traceback)."""
    request[ROUTE] = f"page_{getattr(found, 'kind', 'error')}"
    base = _base_url(request)
    prefix = getattr(getattr(found, "call", None), "prefix", "")
    try:
        if isinstance(found, Exception):
            raise found
        if found.kind == "operator" and not _operator(request):
            # It names every sync, private repos' too: on a mirror with accounts, for the
            # admins of every repo. A browser asks for HTTP Basic (the token as password).
            answer = page_kit.html_response(await _on_catalog(
                request, pages.error_page, prefix, 401, "Sign in",
                "The operator's page needs a token with admin on every repo (admin '*'): "
                "give it as the password.", base), 401)
            answer.headers["WWW-Authenticate"] = 'Basic realm="weightswarm mirror"'
            return answer
        return page_kit.html_response(await _page_body(request, found, base),
                                      remote_images=request.app[CONFIG].mirror.remote_images)
    except WeightswarmError as e:
        if isinstance(e, Hidden | RepoNotFound):
            e = _hidden(request, e)
        title = {400: "Bad request", 401: "Not found", 403: "Forbidden",
                 404: "Not found"}.get(e.status, "Unavailable")
        status = 404 if e.status == 401 else e.status  # a page has no login to offer
        body = await _on_catalog(request, pages.error_page, prefix, status, title,
                                 str(e)[:300], base)
        return page_kit.html_response(body, status)


#: seconds a repo page's swarm column may be behind
SWARM_EVERY = 10


async def _page_body(request: web.Request, found: pages.Page, base: str) -> bytes:
    service, call = request.app[SERVICE], found.call
    if found.kind == "operator":
        return await _operator_page(request, base)
    if found.kind == "repo":
        await _guard(request, call, download=False)
        seeder = request.app[SEEDER]
        # The swarms change all the time: a page is rendered again at most every SWARM_EVERY
        # seconds for them (and whenever the catalog changes).
        when = int(time.monotonic() / SWARM_EVERY) if seeder is not None else 0
        return await _answer(request, ("page", call, base, when), pages.repo_page,
                             service, call, base, request.app[CONFIG].mirror.remote_images,
                             seeder.swarm if seeder is not None else None, _kept=PAGES)
    params = pages.search_params(_query(request))
    rules, token = _reader(request)
    if token is not None:  # what a reader sees is theirs: not kept for others
        return await _on_catalog(request, pages.search_page, service, call, params, base,
                                 lambda repo_id: rules.may_read(token, repo_id))
    return await _answer(request, ("page", call.hub, call.repo_type, tuple(params.items()),
                                   base), pages.search_page, service, call, params, base,
                         _kept=PAGES)


def _operator(request: web.Request) -> bool:
    """Whether this request may see the operator's page: anyone on a mirror without accounts,
    else an admin of every repo."""
    if request.app[ACCESS].path is None:
        return True
    rules, token = _reader(request)
    return rules.is_admin(token)


async def _operator_page(request: web.Request, base: str) -> bytes:
    """The operator's page: what the mirror holds, its syncs, its egress by way."""
    metrics, seeder = request.app[METRICS], request.app[SEEDER]
    # a tracker that does not answer delays no page by more than a second
    totals = await _egress_now(request.app, request.app[CARRIED_HTTP], patience=1)
    chart = pages.egress_chart(list(metrics.egress_history), time.time(), totals)
    return await _on_catalog(request, lambda: pages.operator_page(
        request.app[SERVICE], base, key=request.app[PUBLIC_KEY], chart=chart,
        seeding=len(seeder.seeding) if seeder else 0))


async def stylesheet(request: web.Request) -> web.Response:
    request[ROUTE] = "static"
    return page_kit.stylesheet_response()


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
    counts = await _on_catalog(request, catalog.scan_counts)
    for verdict in ("safe", "suspicious", "unscanned"):
        m.scanned.labels(verdict).set(counts.get(verdict, 0))
    pull_through = request.app[PULL_THROUGH]
    m.pull_through_flights.set(len(pull_through.in_flight) if pull_through else 0)
    return metrics_response(m.registry)


async def index(request: web.Request) -> web.Response:
    request[ROUTE] = "index"
    if wants_html(request.headers.get("Accept")):
        return await _page(request, pages.Page("home", routes.HubCall(
            hubs.DEFAULT, "", "page", "model")))
    session = request.app[SESSION]
    return web.json_response(headers={"Vary": "Accept"}, data={
        "service": "weightswarm mirror",
        "key": request.app[PUBLIC_KEY],
        "hf_endpoint": _base_url(request),
        "bittorrent_port": session.port if session is not None else None,
    })


# -- the application: each resource in its own cleanup_ctx entry (peer/service.py) ----------


async def _catalog(app: web.Application) -> AsyncIterator[None]:
    """The catalog on a thread of its own, the store, and the lookups over them."""
    config = app[CONFIG]
    loop = asyncio.get_running_loop()
    async with contextlib.AsyncExitStack() as opened:
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="catalog")
        opened.callback(thread.shutdown, wait=True)
        catalog = await loop.run_in_executor(thread, Catalog, config.catalog_path)
        opened.push_async_callback(loop.run_in_executor, thread, catalog.close)
        answers = KeptAnswers(config.catalog_path)
        opened.callback(answers.close)
        app[PAGES] = KeptAnswers(config.catalog_path, max_entries=PAGES_KEPT)
        opened.callback(app[PAGES].close)
        app[CATALOG_THREAD] = thread
        app[SERVICE] = HubService(catalog, BlobStore(config.store_dir),
                                  config.mirror.scan_policy)
        app[ANSWERS] = answers
        yield


async def _access(app: web.Application) -> AsyncIterator[None]:
    """`[mirror] access_file`, read now (a flaw is logged; public repos are served anyway)
    and again whenever it changes."""
    app[ACCESS] = AccessFile(app[CONFIG].access_path)
    app[ACCESS].rules()
    yield


async def _pull_through(app: web.Application) -> AsyncIterator[None]:
    """Fetch on demand (`[mirror] pull_through`): its upstream, flights and lookups."""
    config = app[CONFIG]
    app[PULL_THROUGH] = None
    if not config.mirror.pull_through.enabled:
        yield
        return
    service, loop = app[SERVICE], asyncio.get_running_loop()

    def on_catalog(fn, *args):
        return loop.run_in_executor(app[CATALOG_THREAD], lambda: fn(*args))

    pull_through = PullThrough(config, service.store, on_catalog, service.catalog,
                               app[LOOPS].spawn, app[METRICS].pulled)
    app[PULL_THROUGH] = pull_through
    log.info("pull-through on: %s, allow %s, deny %s, complete %s",
             pull_through.upstream.endpoint, ", ".join(config.mirror.pull_through.allow),
             ", ".join(config.mirror.pull_through.deny) or "none",
             config.mirror.pull_through.complete)
    try:
        yield
    finally:
        await pull_through.close()


async def _identity(app: web.Application) -> AsyncIterator[None]:
    """The mirror's key, and what it signs with it: manifests and ref statements."""
    config = app[CONFIG]
    key = load_or_create(config.key_path)
    app[PUBLIC_KEY] = public_key_text(key)
    app[TRACKER_SECRET] = tracker_secret(key.private_bytes_raw())
    app[DISTRIBUTION] = Distribution(app[SERVICE].catalog, key, config.mirror.scan_policy)
    log.info("mirror home %s, key %s", config.home, app[PUBLIC_KEY])
    yield


async def _egress(app: web.Application) -> AsyncIterator[None]:
    app[EGRESS] = Egress(app[CONFIG].mirror.egress_limit)
    yield


async def _session(app: web.Application) -> AsyncIterator[None]:
    """The process's libtorrent session, when the mirror seeds."""
    settings = app[CONFIG].mirror.bittorrent
    app[SESSION] = None
    if settings is None:
        yield
        return
    from peer.session import Session

    session = Session(settings, role="mirror", fingerprint=MIRROR_FINGERPRINT)
    session.start()
    app[SESSION] = session
    try:
        yield
    finally:
        session.close()


async def _seeder(app: web.Application) -> AsyncIterator[None]:
    """Seeding every large public blob, under the egress budget; scrub and repair."""
    app[SEEDER] = None
    if app[SESSION] is None:
        yield
        return
    from .seeding import Seeder
    from .syncjobs import refetch_blob

    config = app[CONFIG]
    loop = asyncio.get_running_loop()
    catalog = app[SERVICE].catalog

    def on_catalog(fn, *args):
        return loop.run_in_executor(app[CATALOG_THREAD], lambda: fn(*args))

    seeder = Seeder(
        session=app[SESSION], store=app[SERVICE].store, repair_dir=config.repair_dir,
        egress=app[EGRESS], trackers=list(config.mirror.trackers), on_catalog=on_catalog,
        catalog=catalog, catalog_version=app[ANSWERS].version, loops=app[LOOPS],
        scrub_interval=config.mirror.scrub_interval, metrics=app[METRICS],
        refetch=lambda sha256: refetch_blob(config, sha256),
        quarantine=config.mirror.scan_policy == "quarantine",
        private_trackers=_private_trackers(app))
    await seeder.start()
    app[SEEDER] = seeder
    try:
        yield
    finally:
        await seeder.close()


def _private_trackers(app: web.Application) -> list[str] | None:
    """The trackers this mirror announces its private swarms to, with its own key; None
    without `[mirror] index` (nothing feeds the tracker that key: the swarms are not seeded,
    and their blobs go over HTTP only, with a token)."""
    config = app[CONFIG]
    if not config.mirror.index:
        return None
    key = tracker_key(app[TRACKER_SECRET], MIRROR_SEEDER)
    return [t for t in (private_announce(t, key) for t in config.mirror.trackers) if t]


async def _scheduler(app: web.Application) -> AsyncIterator[None]:
    """The `[[mirror.sync]]` jobs, each run at start and then every interval."""
    config = app[CONFIG]
    if not config.mirror.syncs:
        yield
        return
    from .sync import parse_spec
    from .syncjobs import Scheduler, SyncJob

    jobs = [SyncJob(parse_spec(j.spec, j.include, j.exclude), j.interval)
            for j in config.mirror.syncs]
    log.info("scheduled syncs: %s", ", ".join(f"{j.spec} every {j.interval:.0f}s" for j in jobs))
    task = app[LOOPS].spawn(Scheduler(config, jobs).run(), "sync scheduler")
    try:
        yield
    finally:
        await app[LOOPS].stop([task])


async def _templates(app: web.Application) -> AsyncIterator[None]:
    """The pages' templates compiled off the loop as the mirror starts: not by a first page."""
    compiled = asyncio.get_running_loop().run_in_executor(None, page_kit.compile_templates)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            await compiled


async def _downloads(app: web.Application) -> AsyncIterator[None]:
    """Downloads counted per repo, written to the catalog every DOWNLOADS_EVERY seconds and
    at the end."""
    app[DOWNLOADS] = {}
    catalog = app[SERVICE].catalog

    async def write() -> None:
        held = app[DOWNLOADS]
        counts = dict(held)  # on the loop's thread, as the handlers count: nothing lost
        held.clear()
        if counts:
            await asyncio.get_running_loop().run_in_executor(
                app[CATALOG_THREAD], catalog.add_downloads, counts)

    async def every() -> None:
        while True:
            await asyncio.sleep(DOWNLOADS_EVERY)
            try:
                await write()
            except Exception:
                log.exception("writing the download counts failed; tried again later")

    task = app[LOOPS].spawn(every(), "download counts")
    try:
        yield
    finally:
        await app[LOOPS].stop([task])
        with contextlib.suppress(Exception):
            await write()


async def _egress_history(app: web.Application) -> AsyncIterator[None]:
    """A sample of the egress totals every EGRESS_SAMPLE seconds, for the operator's page,
    with what the peers of this mirror's swarms carried by its tracker's count."""
    import aiohttp

    metrics = app[METRICS]

    async def sample(http) -> None:
        while True:
            metrics.egress_history.append((time.time(), await _egress_now(app, http)))
            await asyncio.sleep(pages.EGRESS_SAMPLE)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        app[CARRIED_HTTP] = http
        task = app[LOOPS].spawn(sample(http), "egress history")
        try:
            yield
        finally:
            await app[LOOPS].stop([task])


async def _egress_now(app: web.Application, http, patience: float | None = None) -> dict:
    """The egress totals by way, and `peers`: what the tracker says the other peers of this
    mirror's swarms carried, if it answers (within `patience` seconds)."""
    totals = dict(app[METRICS].egress_totals)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(patience):
            carried = await _peers_carried(app, http)
            if carried is not None:
                totals["peers"] = carried
    return totals


async def _peers_carried(app: web.Application, http) -> int | None:
    """The bytes the other peers of this mirror's swarms say they sent, since the tracker
    started (tracker/carried.py), from the first tracker that answers; None if none does."""
    import aiohttp

    session = app[SESSION]
    if session is None:
        return None
    for announce in app[CONFIG].mirror.trackers:
        base = tracker_http(announce)
        if base is None:
            continue
        try:
            async with http.get(f"{base}/api/weightswarm/carried",
                                params={"port": str(session.port)}) as answer:
                if answer.status == 200:
                    return int((await answer.json())["peers_sent"])
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError, KeyError,
                TypeError) as e:
            log.debug("what the peers carried, from %s: %s", base, e)
    return None


async def _access_log(app: web.Application) -> AsyncIterator[None]:
    """The CLI batches access-log lines (mirror/cli.py): they reach the log within a second."""

    async def flush_every_second() -> None:
        while True:
            await asyncio.sleep(1)
            _flush_handlers(access_log)

    task = app[LOOPS].spawn(flush_every_second(), "access log")
    try:
        yield
    finally:
        await app[LOOPS].stop([task])
        _flush_handlers(access_log)


#: seconds between a mirror's registrations with its index (well inside the index's 10 minutes)
REGISTER_EVERY = 240.0


async def _registration(app: web.Application) -> AsyncIterator[None]:
    """With `[mirror] index`: register at start and every REGISTER_EVERY seconds. A failure is
    one log line and is tried again next time; it never stops the mirror."""
    config = app[CONFIG]
    if not config.mirror.index:
        yield
        return
    task = app[LOOPS].spawn(_register_every(app, config.mirror.index), "index registration")
    try:
        yield
    finally:
        await app[LOOPS].stop([task])


async def _register_every(app: web.Application, index: str) -> None:
    import aiohttp

    from tracker.index import build_registration

    config, session = app[CONFIG], app[SESSION]
    mirror = config.mirror
    host, port = app[LISTENER].getsockname()[:2]
    netloc = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(host, host)
    base = config.mirror.public_url or f"http://{netloc}:{port}"
    bittorrent = f"{netloc}:{session.port}" if session is not None else None
    key = load_or_create(config.key_path)
    timeout = aiohttp.ClientTimeout(total=30, connect=10)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        while True:
            body = build_registration(key, base, bittorrent=bittorrent, site=mirror.site,
                                      region=mirror.region, netblocks=mirror.netblocks,
                                      weight=mirror.weight, now=time.time())
            try:
                async with http.post(f"{index}/api/weightswarm/register", data=body) as answer:
                    if answer.status != 200:
                        log.warning("registering with the index %s: HTTP %d %s", index,
                                    answer.status, (await answer.text())[:300])
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                log.warning("registering with the index %s failed (tried again in %.0fs): %s",
                            index, REGISTER_EVERY, e)
            await asyncio.sleep(REGISTER_EVERY)


#: seconds between looks at the access file for a change of the private-swarm keys
KEYS_CHECK_EVERY = 1.0
#: seconds between feeds of unchanged keys (a tracker restarted learns them within this)
KEYS_RESEND = 30.0


async def _tracker_keys(app: web.Application) -> AsyncIterator[None]:
    """With `[mirror] index` (the tracker's base URL): feed it this mirror's private-swarm
    keys, whenever they change (a token added or revoked: within a second) and every
    REGISTER_EVERY seconds. A failure is a log line and is tried again."""
    config = app[CONFIG]
    if not config.mirror.index:
        yield
        return
    import aiohttp

    feeder = _KeyFeeder(app, config.mirror.index)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        # Once before the seeder starts, so that its first private announces are let in.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await feeder.feed(http)
        task = app[LOOPS].spawn(feeder.run(http), "tracker keys")
        try:
            yield
        finally:
            await app[LOOPS].stop([task])


class _KeyFeeder:
    def __init__(self, app: web.Application, index: str):
        self.app, self.index = app, index
        self.key = load_or_create(app[CONFIG].key_path)
        self.sent: list[str] | None = None
        self.sent_at, self.failing = 0.0, False

    async def run(self, http) -> None:
        while True:
            await asyncio.sleep(KEYS_CHECK_EVERY)
            await self.feed(http)

    async def feed(self, http) -> None:
        import aiohttp

        from tracker.index import build_tracker_keys

        now = time.time()
        hashes = tracker_key_hashes(self.app[ACCESS].rules(), self.app[TRACKER_SECRET], now)
        # Again every KEYS_RESEND seconds even unchanged: a tracker that restarted knows none
        if hashes == self.sent and now - self.sent_at < KEYS_RESEND:
            return
        own = hashlib.sha256(tracker_key(self.app[TRACKER_SECRET], MIRROR_SEEDER).encode())
        body = build_tracker_keys(self.key, hashes, now=now, seeders=[own.hexdigest()])
        try:
            async with http.post(f"{self.index}/api/weightswarm/tracker-keys",
                                 data=body) as answer:
                problem = "" if answer.status == 200 else \
                    f"HTTP {answer.status} {(await answer.text())[:300]}"
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            problem = str(e) or type(e).__name__
        if not problem:
            if hashes != self.sent or self.failing:
                log.info("fed %d private-swarm keys to %s", len(hashes), self.index)
            self.sent, self.sent_at, self.failing = hashes, now, False
        elif not self.failing:  # one line per outage, tried again every second
            self.failing = True
            log.warning("feeding private-swarm keys to %s failed (tried again each second): "
                        "%s", self.index, problem)


def _flush_handlers(logger: logging.Logger) -> None:
    for handler in logger.handlers:
        handler.flush()


async def _distribution_guard(request: web.Request, hub: str, repo_type: str,
                              repo_id: str) -> None:
    """A gated or private repo's manifests and ref statements go to its readers only: a
    manifest names the private swarms' info-hashes, and a peer that knows one may ask a seed
    for its pieces (BitTorrent checks no token). A private or missing repo is answered
    alike."""
    call = routes.HubCall(hub, hubs.prefix(hub), "repo_info", repo_type, repo_id)
    try:
        await _guard(request, call, download=True)
    except RepoNotFound as e:
        raise _not_found(request, call, e) from None


async def snapshot_info(request: web.Request) -> web.Response:
    request[ROUTE] = "snapshot"
    hub, repo_type, repo_id = _distribution_repo(request)
    await _distribution_guard(request, hub, repo_type, repo_id)
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
    await _distribution_guard(request, hub, repo_type, repo_id)
    body = await _answer(request, ("manifest", hub, repo_type, repo_id, commit),
                         request.app[DISTRIBUTION].manifest, hub, repo_type, repo_id, commit)
    return web.Response(body=body, content_type="application/x-msgpack",
                        headers={"Cache-Control": "public, max-age=31536000, immutable"})


async def torrent(request: web.Request) -> web.Response:
    request[ROUTE] = "torrent"
    sha256 = request.match_info["sha256"]
    if not is_sha256(sha256):
        raise BadRequest("a torrent is named by its blob's 64 lower-case hex sha256")
    try:
        found: Torrent = await _answer(request, ("torrent", sha256),
                                       request.app[DISTRIBUTION].torrent, sha256)
    except NotFound as e:
        raise _hidden(request, e) from None
    info, trackers = found.info, list(request.app[CONFIG].mirror.trackers)
    if not found.public:
        # Announced with the reader's own key only: the tracker knows it from this mirror.
        token = _permit_blob(request, found.holders, sha256)
        key = tracker_key(request.app[TRACKER_SECRET], token.sha256)
        trackers = [t for t in (private_announce(t, key) for t in trackers) if t]
    _unquarantined(request, found.quarantined, _blob_repo(found.holders), f"blob {sha256}")
    base = _base_url(request)
    web_seed = f"{base}/blobs/sha256/{sha256}"
    if request.query.get("format") == "magnet":
        if not found.public:
            raise BadRequest("a private torrent goes as a .torrent file, not a magnet (a "
                             "magnet's metadata comes from peers, by DHT)")
        session = request.app[SESSION]
        # This mirror as a peer too: a magnet has no metadata to show a tracker how much is
        # left, and a client that takes `x.pe` needs no tracker's answer to start.
        peers = [peer_address(base, session.port)] if session is not None else []
        return web.json_response({"magnet": magnet(info, trackers, web_seed, peers)})
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


async def catalog_feed(request: web.Request) -> web.Response:
    """`/api/weightswarm/catalog?since=SEQ[&limit=N]`: the signed feed of what changed after
    `since`, for the index (mirror/feed.py); the same poll is answered from memory until the
    catalog changes."""
    request[ROUTE] = "catalog"
    since, limit = feed.parse_query(_query(request))
    distribution = request.app[DISTRIBUTION]
    body = await _answer(request, ("catalog", since, limit), feed.build_feed,
                         distribution.catalog, distribution.key, since, limit=limit)
    return web.Response(body=body, content_type="application/msgpack")


def _distribution_repo(request: web.Request) -> tuple[str, str, str]:
    hub, repo_type, repo_id = (request.match_info[k] for k in ("hub", "type", "repo"))
    if hub not in hubs.HUBS or repo_type not in REPO_TYPES:
        raise NotFound("no such hub or repo type")
    return hub, repo_type, check_repo_id(repo_id)


def create_app(config: Config) -> web.Application:
    app = web.Application(middlewares=[observe])
    app[CONFIG] = config
    app[LIMITS] = config.mirror.http
    app[METRICS] = Metrics()
    app.cleanup_ctx.extend([
        listening(config.mirror.host, config.mirror.port), background("mirror"), _catalog,
        _access, _downloads, _pull_through, _identity, _tracker_keys, _egress, _session, _seeder,
        _scheduler, _access_log, _registration, _egress_history, _templates,
    ])
    app.router.add_get("/", index)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/weightswarm/key", public_key)
    app.router.add_get("/api/whoami-v2", whoami)
    app.router.add_get("/static/weightswarm.css", stylesheet)
    app.router.add_get("/api/weightswarm/snapshots/{hub}/{type}/{repo:.+}", snapshot_info)
    app.router.add_get("/api/weightswarm/manifests/{hub}/{type}/{repo:.+}/{commit}", manifest)
    app.router.add_get("/api/weightswarm/torrents", torrents)
    app.router.add_get("/api/weightswarm/catalog", catalog_feed)
    app.router.add_get("/api/weightswarm/torrents/{sha256}.torrent", torrent)
    app.router.add_get("/blobs/sha256/{sha256}", blob)
    app.router.add_get("/api/weightswarm/aliases", alias)
    # The ModelScope API before the catch-all, which is the HF API (`/hubs/modelscope/api/
    # models/...` included).
    app.router.add_route("*", f"{msapi.LEGACY}{{tail:.*}}", ms_api)
    app.router.add_route("*", f"{msapi.OPENAPI}{{tail:.*}}", ms_api)
    app.router.add_route("*", "/{tail:.*}", hub_api)
    return app


async def start(config: Config) -> Service:
    """Open the mirror's resources and start serving (port 0 picks a free one)."""
    app = create_app(config)
    service = await start_service(app, "mirror")
    session = app[SESSION]
    service = dataclasses.replace(service, key=app[PUBLIC_KEY],
                                  bittorrent_port=session.port if session else None)
    log.info("mirror listening on %s (HF_ENDPOINT=%s)", service.url, service.url)
    return service


async def serve(config: Config, *, with_tracker: bool = False) -> None:
    """Serve until SIGINT or SIGTERM, then close connections and every resource cleanly. The
    all-in-one node runs the tracker in the same process and loop, and announces to it unless
    `[mirror] trackers` names others."""
    started: list[Service] = []
    try:
        if with_tracker:
            from tracker import app as tracker_app

            # The node's own mirror is in its own index unless another index is named.
            own = frozenset({public_key_text(load_or_create(config.key_path))})
            tracker = await tracker_app.start(dataclasses.replace(config.tracker, own_keys=own))
            started.append(tracker)
            mirror = config.mirror
            if not mirror.trackers:
                mirror = dataclasses.replace(mirror, trackers=(f"{tracker.url}/announce",))
            if not mirror.index and config.tracker.index:
                mirror = dataclasses.replace(mirror, index=tracker.url)
            config = dataclasses.replace(config, mirror=mirror)
        started.append(await start(config))
    except BaseException:
        for service in reversed(started):
            await service.stop()
        raise
    # Everything alive now lives as long as the server: keep it out of the collector's scans,
    # and collect the young generation less often; full collections otherwise show as the
    # tail of request latency.
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)
    await serve_services(*started)
