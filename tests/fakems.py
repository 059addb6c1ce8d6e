"""A fake ModelScope hub for tests: the upstream our mirror syncs from, and the ground truth the
stock `modelscope` client is checked against (tests/msclient.py).

It speaks the legacy `/api/v1` API as PROTOCOLS.md section 2 describes it: every answer in the
envelope (`Code`, `Data`, `Message`, `RequestId`, `Success`), file lists with a `Sha256` for
every file and the silent truncation at 3000 entries (walked with `Root=`), revisions as a
`RevisionMap` whose `CreatedAt` decides which tag an unpinned client picks, and downloads that
302 LFS files to a second server, the object store, with a signed URL. The `/openapi/v1` search
and repo info of the new SDK are there too. Both servers are real aiohttp servers on
127.0.0.1:0, served from one event loop in a daemon thread. Knobs make it misbehave the ways a
real upstream does: 429s, cut connections, corrupt bytes, lying sizes, hostile listings,
redirects to other schemes.

Where the real hub is known to surprise (measured by third parties, see the comments), the fake
does the same: an unknown revision lists as `Files: null` with HTTP 200, while a download at it
is a 404.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import posixpath
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import parse_qs, quote_plus

from aiohttp import web
from fakehub import _flip_middle_byte, byte_range
from fakeserver import LoopServers

from peer.hfformat import is_lfs_by_rule
from peer.paths import check_repo_id

#: modelscope_hub's REPO_FILES_TRUNCATION_LIMIT: `repo/files` answers at most this many entries
TRUNCATION = 3000
#: `repo/tree` (datasets) without a PageSize
DEFAULT_PAGE_SIZE = 100
#: what the client's `page_number * page_size <= 3000` check mirrors
SEARCH_WINDOW = 3000
STREAM_CHUNK = 256 * 1024
PLURAL = {"model": "models", "dataset": "datasets"}
SINGULAR = {v: k for k, v in PLURAL.items()}
#: the string codes of the `/openapi/v1` error envelope (modelscope_hub errors._OPENAPI_CODE_MAP)
OPENAPI_CODES = {400: "InputParameterError", 401: "InvalidAuthentication",
                 403: "OperationNotAllowed", 404: "ResourceNotFound", 429: "RateLimitExceed"}
_SIGNING_KEY = b"fakems-oss-key"


class MsError(Exception):
    """An error answer: its HTTP status and the envelope's `Message`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class _File:
    path: str
    size: int
    sha256: str
    lfs: bool
    #: the commit that last touched the file, its date (unix s) and message
    revision: str
    date: int
    message: str


@dataclass
class _Commit:
    sha: str
    date: int
    files: dict[str, _File]


@dataclass
class _Ref:
    commit: str
    created_at: int


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    created: int
    number: int
    commits: dict[str, _Commit] = field(default_factory=dict)
    branches: dict[str, _Ref] = field(default_factory=dict)
    tags: dict[str, _Ref] = field(default_factory=dict)
    raw_files: list[dict] | None = None
    lies: dict[str, int] = field(default_factory=dict)

    @property
    def owner(self) -> str:
        return self.repo_id.split("/")[0]

    @property
    def name(self) -> str:
        return self.repo_id.split("/")[1]

    def head(self) -> _Commit:
        ref = self.branches.get("master") or next(iter(self.branches.values()))
        return self.commits[ref.commit]

    def resolve(self, revision: str | None) -> _Commit | None:
        """A branch, a tag or a full commit id; no revision is the default branch; None when
        it names nothing."""
        if not revision:
            return self.head()
        ref = self.branches.get(revision) or self.tags.get(revision)
        sha = ref.commit if ref else revision
        return self.commits.get(sha)


# -- the functional core: envelopes, listings, revisions, repo info ---------------------------


def envelope(data) -> dict:
    return {"Code": 200, "Data": data, "Message": "success", "RequestId": str(uuid.uuid4()),
            "Success": True}


def error_body(status: int, message: str, *, openapi: bool) -> dict:
    """The error envelope of the legacy API (`Code` is the HTTP status) or of `/openapi/v1`
    (a string `code`, which the client prefers over the status)."""
    request_id = str(uuid.uuid4())
    if openapi:
        code = OPENAPI_CODES.get(status, "InternalServerError")
        return {"success": False, "code": code, "message": message, "request_id": request_id}
    return {"Code": status, "Message": message, "RequestId": request_id, "Success": False}


def _entry(path: str, kind: str, size: int, sha256: str, lfs: bool, last: _File) -> dict:
    return {"Name": posixpath.basename(path), "Path": path, "Type": kind, "Size": size,
            "Sha256": sha256, "IsLFS": lfs, "Revision": last.revision,
            "CommittedDate": last.date, "CommitMessage": last.message,
            "CommitterName": "fakems", "Mode": "100644" if kind == "blob" else "040000",
            "InCheck": False}


def _folders(files: dict[str, _File]) -> dict[str, _File]:
    """Every folder ('' the root) and the newest file inside it (its Revision and date)."""
    folders: dict[str, _File] = {}
    for f in files.values():
        folder = posixpath.dirname(f.path)
        while True:
            if folder not in folders or f.date > folders[folder].date:
                folders[folder] = f
            if not folder:
                break
            folder = posixpath.dirname(folder)
    return folders


def list_entries(files: dict[str, _File], root: str, *, recursive: bool,
                 lies: dict[str, int] | None = None) -> list[dict]:
    """`Files[]` under `root` ('' is the root), folders (`tree`) included, by path; LookupError
    when `root` names no folder. `lies` replaces the listed Size of some paths."""
    root = root.strip("/")
    folders = _folders(files)
    if root and root not in folders:
        raise LookupError(root)
    prefix = f"{root}/" if root else ""

    def listed(path: str) -> bool:
        return path.startswith(prefix) and (recursive or "/" not in path[len(prefix):])

    lies = lies or {}
    entries = [_entry(d, "tree", 0, "", False, last) for d, last in folders.items()
               if d and listed(d)]
    entries += [_entry(f.path, "blob", lies.get(f.path, f.size), f.sha256, f.lfs, f)
                for f in files.values() if listed(f.path)]
    return sorted(entries, key=lambda e: e["Path"])


def revision_map(repo: _Repo, end_time: int | None) -> dict:
    """`Data` of `/revisions`: branches and tags, each with `CreatedAt` in seconds and the
    `CommitId`; `EndTime` leaves out the tags created after it (old SDKs pass their release
    date there)."""
    def item(name: str, ref: _Ref) -> dict:
        return {"Revision": name, "CreatedAt": ref.created_at, "CommitId": ref.commit,
                "CreatedBy": repo.owner, "Description": ""}

    tags = [item(n, r) for n, r in repo.tags.items()
            if end_time is None or r.created_at <= end_time]
    return {"RevisionMap": {"Branches": [item(n, r) for n, r in repo.branches.items()],
                            "Tags": sorted(tags, key=lambda t: -t["CreatedAt"])}}


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def openapi_repo_json(repo: _Repo) -> dict:
    """A model or dataset as `/openapi/v1` answers it: the snake_case fields modelscope_hub's
    RepoInfo reads, `id` being "owner/name"."""
    head = repo.head()
    return {"id": repo.repo_id, "display_name": repo.name, "description": "",
            "downloads": 0, "likes": 0, "created_at": _iso(repo.created),
            "last_modified": _iso(head.date), "license": "Apache License 2.0", "tags": [],
            "tasks": [], "private": False, "gated": False, "login_required": False,
            "file_size": sum(f.size for f in head.files.values())}


def legacy_repo_json(repo: _Repo, commit: _Commit) -> dict:
    """`Data` of `GET /api/v1/models/{owner}/{name}`: the PascalCase fields the client aliases
    (Id, Path = owner, Name, Visibility 5 = public, CreatedAt, LastModified, ...) and the
    older names of the dates (CreatedTime, LastUpdatedTime)."""
    return {"Id": repo.number, "Name": repo.name, "Path": repo.owner, "ChineseName": "",
            "Description": "", "Visibility": 5, "License": "Apache License 2.0",
            "Downloads": 0, "Stars": 0, "Likes": 0, "Tags": [], "Tasks": [],
            "CreatedAt": repo.created, "LastModified": commit.date,
            "CreatedTime": repo.created, "LastUpdatedTime": commit.date,
            "Revision": commit.sha}


def search(repos: list[_Repo], *, owner: str | None, text: str | None, page_number: int,
           page_size: int) -> dict:
    """`data` of `/openapi/v1/models` (or datasets): a page of the repos matching `owner`
    exactly and `text` as a case-insensitive substring of the id."""
    if page_number < 1 or page_size < 1 or page_number * page_size > SEARCH_WINDOW:
        raise MsError(400, f"page_number * page_size must be <= {SEARCH_WINDOW}")
    found = [r for r in repos if (not owner or r.owner == owner)
             and (not text or text.lower() in r.repo_id.lower())]
    start = (page_number - 1) * page_size
    key = PLURAL[repos[0].repo_type] if repos else "models"
    return {key: [openapi_repo_json(r) for r in found[start:start + page_size]],
            "total_count": len(found), "page_number": page_number, "page_size": page_size}


def _query(request: web.Request) -> dict[str, str]:
    """The query with parse_qs semantics (`+` is a space), first value of each name."""
    raw = request.raw_path.partition("?")[2]
    return {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}


def _int(query: dict[str, str], name: str, default: int) -> int:
    try:
        return int(query.get(name) or default)
    except ValueError:
        raise MsError(400, f"{name} must be an integer") from None


def _signature(sha256: str, expires: str) -> str:
    return hashlib.sha256(_SIGNING_KEY + f"{sha256}\n{expires}".encode()).hexdigest()[:32]


def _oss_error(status: int, code: str) -> web.Response:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<RequestId>{uuid.uuid4().hex.upper()}</RequestId></Error>")
    return web.Response(status=status, text=body, content_type="application/xml")


# -- the shell -------------------------------------------------------------------------------


class FakeModelScope(LoopServers):
    thread_name = "fakems"

    """An upstream ModelScope on 127.0.0.1 (see the module docstring); `start()` before use.

    Knobs (plain attributes, settable while it runs): `token` (when set, every API request
    without `Authorization: Bearer <token>` or the cookie `m_session_id=<token>` gets 401),
    `truncate_at`, `redirect` (LFS files 302 to the object store, the others always come
    from the hub, as on modelscope.cn; False: the hub serves LFS files too),
    `redirect_scheme` (a scheme for the 302's Location, or a whole URL when it has "://"),
    `rate_limit_every` and `retry_after`, `cut_large_files` and `large_file`, `send_rate`
    (bytes/s). Methods: `corrupt`/`repair`, `lie_size`, `set_raw_files`, `fail`."""

    def __init__(self, *, token: str | None = None, truncate_at: int = TRUNCATION,
                 redirect: bool = True, redirect_scheme: str | None = None,
                 rate_limit_every: int = 0, retry_after: float = 0,
                 cut_large_files: bool = False, large_file: int = 8 * 1024 * 1024,
                 send_rate: float | None = None):
        self.token = token
        self.truncate_at = truncate_at
        self.redirect = redirect
        self.redirect_scheme = redirect_scheme
        self.rate_limit_every = rate_limit_every
        self.retry_after = retry_after
        self.cut_large_files = cut_large_files
        self.large_file = large_file
        self.send_rate = send_rate
        #: False: RevisionMap entries carry no CommitId (third-party code reads it; the
        #: legacy API does not promise it)
        self.commit_ids = True
        self.url = ""
        self.oss_url = ""
        #: (method, path with query) of every request to the hub, in order
        self.requests: list[tuple[str, str]] = []
        self.auth_headers: list[str | None] = []
        #: (method, path with query, Range) of every request to the object store
        self.oss_requests: list[tuple[str, str, str | None]] = []
        #: the Authorization header and m_session_id cookie each object-store request carried
        self.oss_credentials: list[tuple[str | None, str | None]] = []
        #: every Range header a file request carried, on either server
        self.ranges: list[str] = []
        self.bytes_served = 0
        self._api_calls = 0
        self._failures: list[list] = []  # [status, times left, substring of the path]
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._content: dict[str, bytes] = {}  # by sha256
        self._corrupt: set[str] = set()  # sha256 of content served with a flipped byte
        self._cut_done: set[str] = set()
        self._commits_made = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runners: list[web.AppRunner] = []

    # -- lifecycle

    async def _start_servers(self) -> None:
        hub = web.Application(middlewares=[self._hub_middleware])
        self._add_hub_routes(hub.router)
        oss = web.Application()
        oss.router.add_get("/lfs/{sha256}", self._oss_handler)
        oss.router.add_route("*", "/{tail:.*}", self._oss_not_found)
        ports = [(await self._listen(app))[1] for app in (hub, oss)]
        self.url, self.oss_url = (f"http://127.0.0.1:{p}" for p in ports)

    def _add_hub_routes(self, router: web.UrlDispatcher) -> None:
        repo = "/{plural:models|datasets}/{owner}/{name}"
        router.add_get(f"/api/v1{repo}", self._legacy_info)
        router.add_get(f"/api/v1{repo}/revisions", self._revisions)
        router.add_get(f"/api/v1{repo}/repo", self._download)
        router.add_get(f"/api/v1{repo}/repo/files", self._files)
        router.add_get("/api/v1/{plural:datasets}/{owner}/{name}/repo/tree", self._tree)
        router.add_get(f"/openapi/v1{repo}", self._openapi_info)
        router.add_get("/openapi/v1/{plural:models|datasets}", self._search)
        # the region probe (`/api/v1/repos/internalAccelerationInfo`) and anything else
        router.add_route("*", "/{tail:.*}", self._not_found)

    # -- content

    def add_repo(self, repo_id: str, files: dict[str, bytes], *, repo_type: str = "model",
                 branch: str = "master", tags: tuple[str, ...] = (),
                 created_at: float | None = None, lfs: set[str] | None = None,
                 message: str = "upload files") -> str:
        """Commit `files` (the whole snapshot, not a delta) on `branch`, creating the repo if
        needed, and point `tags` at it; returns the 40-hex commit id. `created_at` (unix s,
        default now) dates the commit, a new branch and the tags. A file keeps the Revision of
        the commit that last changed it. `lfs=None` applies DESIGN.md's size/extension rule."""
        check_repo_id(repo_id)
        assert "/" in repo_id and repo_type in PLURAL, (repo_id, repo_type)
        when = int(time.time() if created_at is None else created_at)
        with self._lock:
            self._commits_made += 1
            repo = self._repos.setdefault((repo_type, repo_id), _Repo(
                repo_type, repo_id, when, 1000 + len(self._repos)))
            parent = repo.commits[repo.branches[branch].commit] if branch in repo.branches \
                else None
            sha = self._commit_id(parent, files)
            entries = {}
            for path in sorted(files):
                data = files[path]
                digest = hashlib.sha256(data).hexdigest()
                self._content[digest] = data
                old = parent.files.get(path) if parent else None
                is_lfs = path in lfs if lfs is not None else is_lfs_by_rule(path, len(data))
                entries[path] = old if old and old.sha256 == digest and old.lfs == is_lfs \
                    else _File(path, len(data), digest, is_lfs, sha, when, message)
            repo.commits[sha] = _Commit(sha, when, entries)
            created = repo.branches[branch].created_at if branch in repo.branches else when
            repo.branches[branch] = _Ref(sha, created)
            repo.tags.update({t: _Ref(sha, when) for t in tags})
        return sha

    def _commit_id(self, parent: _Commit | None, files: dict[str, bytes]) -> str:
        h = hashlib.sha1(b"commit %d\n%s\n" % (self._commits_made,
                                               (parent.sha if parent else "").encode()))
        for path in sorted(files):
            h.update(b"%s\0%s\n" % (path.encode(), hashlib.sha256(files[path]).digest()))
        return h.hexdigest()

    def add_tag(self, repo_id: str, tag: str, *, revision: str = "master",
                created_at: float | None = None, repo_type: str = "model") -> str:
        """Point `tag` at what `revision` resolves to, created at `created_at` (default now)."""
        with self._lock:
            commit = self._repos[(repo_type, repo_id)].resolve(revision)
            assert commit is not None, revision
            when = int(time.time() if created_at is None else created_at)
            self._repos[(repo_type, repo_id)].tags[tag] = _Ref(commit.sha, when)
        return commit.sha

    def _file(self, repo_id: str, path: str, repo_type: str) -> _File:
        """`path` in the newest commit of the repo that holds it."""
        for commit in reversed(self._repos[(repo_type, repo_id)].commits.values()):
            if path in commit.files:
                return commit.files[path]
        raise KeyError(path)

    def corrupt(self, repo_id: str, path: str, *, repo_type: str = "model") -> None:
        """Serve that file's bytes with one byte flipped, from the hub and the object store,
        while its listed Sha256 and X-Linked-ETag stay the true ones. It follows the content:
        another file with the very same bytes is served corrupt too."""
        self._corrupt.add(self._file(repo_id, path, repo_type).sha256)

    def repair(self, repo_id: str, path: str, *, repo_type: str = "model") -> None:
        self._corrupt.discard(self._file(repo_id, path, repo_type).sha256)

    def lie_size(self, repo_id: str, path: str, size: int, *, repo_type: str = "model") -> None:
        """Listings now say `size` for `path`; the bytes served stay the real ones."""
        self._repos[(repo_type, repo_id)].lies[path] = size

    def set_raw_files(self, repo_id: str, entries: list[dict], *,
                      repo_type: str = "model") -> None:
        """Every listing of the repo (any valid revision, any Root, recursive or not, never
        truncated) now returns exactly `entries`; downloads still serve the real files."""
        self._repos[(repo_type, repo_id)].raw_files = [dict(e) for e in entries]

    def file_url(self, repo_id: str, path: str, revision: str = "master", *,
                 repo_type: str = "model") -> str:
        """The download URL the stock client requests (quote_plus, as its get_download_url)."""
        return (f"{self.url}/api/v1/{PLURAL[repo_type]}/{repo_id}/repo?"
                f"Revision={quote_plus(revision)}&FilePath={quote_plus(path)}")

    def fail(self, status: int, *, times: int = 1, match: str = "") -> None:
        """The next `times` hub requests whose path (with query) contains `match` are answered
        `status` (403, 500, 503, ...) with the error envelope."""
        self._failures.append([status, times, match])

    def reset_counts(self) -> None:
        """Forget recorded requests, ranges and bytes; the rate limiter's count starts over."""
        self.requests.clear()
        self.auth_headers.clear()
        self.oss_requests.clear()
        self.oss_credentials.clear()
        self.ranges.clear()
        self.bytes_served = 0
        self._api_calls = 0

    def _bytes(self, sha256: str) -> bytes:
        data = self._content[sha256]
        return _flip_middle_byte(data) if sha256 in self._corrupt else data

    # -- the hub

    @web.middleware
    async def _hub_middleware(self, request: web.Request, handler) -> web.StreamResponse:
        self.requests.append((request.method, request.raw_path))
        self.auth_headers.append(request.headers.get("Authorization"))
        openapi = request.path.startswith("/openapi/")
        try:
            self._gate(request)
            return await handler(request)
        except MsError as e:
            headers = {}
            if e.status == 429:
                headers["Retry-After"] = str(math.ceil(self.retry_after))
            return web.json_response(error_body(e.status, e.message, openapi=openapi),
                                     status=e.status, headers=headers)

    def _gate(self, request: web.Request) -> None:
        """Failures asked for by `fail`, the rate limiter (every Nth API request), the token."""
        for failure in self._failures:
            status, left, match = failure
            if left > 0 and match in request.raw_path:
                failure[1] -= 1
                raise MsError(status, f"injected failure {status}")
        if self.rate_limit_every and request.path.startswith(("/api/", "/openapi/")):
            self._api_calls += 1
            if self._api_calls % self.rate_limit_every == 0:
                raise MsError(429, "Too many requests, please try again later.")
        if self.token is None:
            return
        if (request.headers.get("Authorization") != f"Bearer {self.token}"
                and request.cookies.get("m_session_id") != self.token):
            raise MsError(401, "user not logged in, please login first")

    async def _not_found(self, request: web.Request) -> web.Response:
        raise MsError(404, f"{request.method} {request.path} is not served here")

    def _repo(self, request: web.Request) -> _Repo:
        info = request.match_info
        repo_type, repo_id = SINGULAR[info["plural"]], f"{info['owner']}/{info['name']}"
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise MsError(404, f"{repo_type} {repo_id} does not exist")
        return repo

    async def _legacy_info(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        revision = _query(request).get("Revision")
        commit = repo.resolve(revision)
        if commit is None:
            raise MsError(404, f"{repo.repo_id} has no revision {revision}")
        return web.json_response(envelope(legacy_repo_json(repo, commit)))

    async def _openapi_info(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        return web.json_response({"success": True, "data": openapi_repo_json(repo),
                                  "request_id": str(uuid.uuid4())})

    async def _revisions(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        query = _query(request)
        end_time = _int(query, "EndTime", 0) if query.get("EndTime") else None
        data = revision_map(repo, end_time)
        if not self.commit_ids:
            for entries in data["RevisionMap"].values():
                for entry in entries:
                    del entry["CommitId"]
        return web.json_response(envelope(data))

    def _listing(self, repo: _Repo, query: dict[str, str]) -> list[dict] | None:
        """The entries a listing answers; None for a revision that names nothing."""
        commit = repo.resolve(query.get("Revision"))
        if commit is None:
            return None
        if repo.raw_files is not None:
            return [dict(e) for e in repo.raw_files]
        recursive = query.get("Recursive", "False").lower() in ("true", "1")
        try:
            return list_entries(commit.files, query.get("Root", ""), recursive=recursive,
                                lies=repo.lies)
        except LookupError:
            raise MsError(404, f"{query.get('Root')} does not exist in {repo.repo_id}") from None

    async def _files(self, request: web.Request) -> web.Response:
        """`repo/files`: never paginated, silently cut at `truncate_at` entries. An unknown
        revision answers 200 and `Files: null`, as modelscope.cn does (measured on
        Qwen/Qwen2.5-0.5B-Instruct by neutree-ai/neutree, model_scope.go)."""
        repo = self._repo(request)
        entries = self._listing(repo, _query(request))
        if entries is not None and repo.raw_files is None:
            entries = entries[:self.truncate_at]
        return web.json_response(envelope({"Files": entries}))

    async def _tree(self, request: web.Request) -> web.Response:
        """`repo/tree` of a dataset: pages of `PageSize` (1-based `PageNumber`)."""
        repo = self._repo(request)
        query = _query(request)
        number = _int(query, "PageNumber", 1)
        size = _int(query, "PageSize", DEFAULT_PAGE_SIZE)
        if number < 1 or size < 1:
            raise MsError(400, "PageNumber and PageSize must be positive")
        entries = self._listing(repo, query)
        page = None if entries is None else entries[(number - 1) * size:number * size]
        return web.json_response(envelope({"Files": page}))

    async def _search(self, request: web.Request) -> web.Response:
        query = _query(request)
        repo_type = SINGULAR[request.match_info["plural"]]
        with self._lock:
            repos = [r for (t, _), r in sorted(self._repos.items()) if t == repo_type]
        data = search(repos, owner=query.get("owner"), text=query.get("search"),
                      page_number=_int(query, "page_number", 1),
                      page_size=_int(query, "page_size", 10))
        return web.json_response({"success": True, "data": data,
                                  "request_id": str(uuid.uuid4())})

    async def _download(self, request: web.Request) -> web.StreamResponse:
        """A file at a revision: LFS files 302 to the object store (with `redirect`), the rest
        are served by the hub. An unknown revision is a 404 here (unlike the listing)."""
        repo = self._repo(request)
        query = _query(request)
        path, revision = query.get("FilePath", ""), query.get("Revision")
        commit = repo.resolve(revision)
        entry = commit.files.get(path) if commit else None
        if entry is None:
            raise MsError(404, f"file {path} does not exist at {revision or 'master'}")
        if self.redirect and entry.lfs:
            return web.Response(status=302, headers={"Location": self._signed_url(entry)})
        headers = {"X-Linked-ETag": entry.sha256, "X-Linked-Size": str(entry.size),
                   "ETag": f'"{entry.sha256}"'}
        return await self._send(request, entry.sha256, headers)

    def _signed_url(self, entry: _File) -> str:
        expires = str(int(time.time()) + 3600)
        url = (f"{self.oss_url}/lfs/{entry.sha256}?Expires={expires}&OSSAccessKeyId=fakems"
               f"&Signature={_signature(entry.sha256, expires)}")
        if not self.redirect_scheme:
            return url
        if "://" in self.redirect_scheme:
            return self.redirect_scheme
        return f"{self.redirect_scheme}://{url.split('://', 1)[1]}"

    # -- the object store

    async def _oss_not_found(self, request: web.Request) -> web.Response:
        return _oss_error(404, "NoSuchKey")

    async def _oss_handler(self, request: web.Request) -> web.StreamResponse:
        self.oss_requests.append((request.method, request.raw_path, request.headers.get("Range")))
        self.oss_credentials.append((request.headers.get("Authorization"),
                                     request.cookies.get("m_session_id")))
        sha256 = request.match_info["sha256"]
        expires = request.query.get("Expires", "")
        if request.query.get("Signature") != _signature(sha256, expires):
            return _oss_error(403, "SignatureDoesNotMatch")
        if not expires.isdigit() or int(expires) < time.time():
            return _oss_error(403, "AccessDenied")
        if sha256 not in self._content:
            return _oss_error(404, "NoSuchKey")
        md5 = hashlib.md5(self._content[sha256]).hexdigest().upper()
        headers = {"ETag": f'"{md5}"', "X-Linked-ETag": sha256,
                   "x-oss-request-id": uuid.uuid4().hex[:24].upper()}
        return await self._send(request, sha256, headers)

    # -- bytes

    async def _send(self, request: web.Request, sha256: str,
                    headers: dict[str, str]) -> web.StreamResponse:
        """The bytes, or the requested range of them with 206. With `cut_large_files`, the
        first GET of a large file is closed after half of its body, as a dropped connection
        looks to a client."""
        data = self._bytes(sha256)
        headers = {**headers, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if request.headers.get("Range"):
            self.ranges.append(request.headers["Range"])
        try:
            span = byte_range(request.headers.get("Range"), len(data))
        except ValueError:
            return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
        status, body = 200, data
        if span is not None:
            status, body = 206, data[span[0]:span[1]]
            headers["Content-Range"] = f"bytes {span[0]}-{span[1] - 1}/{len(data)}"
        if request.method == "HEAD":
            return web.Response(status=status, body=body, headers=headers)
        cut = self.cut_large_files and len(data) >= self.large_file and sha256 not in \
            self._cut_done
        if cut:
            self._cut_done.add(sha256)
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = len(body)
        await response.prepare(request)
        await self._stream(response, body[:len(body) // 2] if cut else body)
        if cut:
            assert request.transport is not None
            request.transport.close()
            return response
        await response.write_eof()
        return response

    async def _stream(self, response: web.StreamResponse, body: bytes) -> None:
        """A chunk at a time, each write waiting for the socket to drain, so bytes_served counts
        what left, not what a killed client never read."""
        view = memoryview(body)
        for start in range(0, len(body), STREAM_CHUNK):
            chunk = view[start:start + STREAM_CHUNK]
            await response.write(chunk)
            self.bytes_served += len(chunk)
            if self.send_rate:
                await asyncio.sleep(len(chunk) / self.send_rate)
