"""The ModelScope API the stock `modelscope` client speaks (PROTOCOLS.md section 2), served for
the mirror's ModelScope repos (hub `modelscope`) under `/hubs/modelscope/api/v1/...` and
`/hubs/modelscope/openapi/v1/...`, so that `MODELSCOPE_ENDPOINT=<mirror>/hubs/modelscope`
points the client here unchanged. The same repos stay reachable through the HF API at
`/hubs/modelscope` (mirror/routes.py).

Everything here is pure except the `*_data`, `files_entries` and `locate` lookups, which run on
the catalog's thread (they take the mirror's `HubService`). The aiohttp handlers are a small
section of mirror/app.py: parse the path and the query here, look up, wrap the answer in its
envelope.

Where this departs from modelscope.cn, on purpose:

- Listings are never cut. The hub silently stops at 3000 entries, and the client takes a
  listing of 3000 or more as cut and walks it again folder by folder with `Root=` (modelscope_hub
  `_legacy_api.py:_walk_repo_files`; our own upstream client walks on exactly 3000). A whole
  listing survives that walk: the client keeps every entry it was given and the per-folder
  answers only repeat them. Cutting would lose, for good, what a folder of more than 3000 direct
  entries holds below the cut.
- A revision that names nothing is a 404 (`NotExistError`), where modelscope.cn lists
  `Files: null` with a 200 (which the client takes as an empty repo).
- A repo whose default branch is called `main` (a folder imported with the HF name) shows it as
  `master`, ModelScope's name, which the catalog resolves to the same commit.
"""

from __future__ import annotations

import functools
import json
import mimetypes
import posixpath
import re
import uuid
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote

from peer import hubs
from peer.errors import (
    BadRequest,
    EntryNotFound,
    NotFound,
    RangeNotSatisfiable,
    RevisionNotFound,
    UnsafePath,
    WeightswarmError,
)
from peer.hfformat import FileEntry, directory_oids, iso_z
from peer.paths import ascii_digits, check_repo_id, check_repo_path, check_revision

from .catalog import Ref, Repo, Snapshot
from .hfapi import HubService, Located
from .routes import MAX_RAW_PATH, HubCall

PREFIX = hubs.prefix(hubs.MODELSCOPE)
LEGACY = f"{PREFIX}/api/v1/"
OPENAPI = f"{PREFIX}/openapi/v1/"
#: ModelScope's default branch (the client's `revision=None` everywhere but in
#: `model_file_download`, which picks a tag by `CreatedAt`)
DEFAULT_REVISION = "master"
#: the client refuses `page_number * page_size` above this (`_openapi.py:list_models`)
SEARCH_WINDOW = 3000
#: `repo/tree` with a `PageNumber` and no `PageSize` (the client always sends 200)
TREE_PAGE = 100
#: the largest page served; a larger one is refused, never shortened (a client stops paging at
#: the first short page, so a page shortened would silently end its listing)
MAX_PAGE_SIZE = 10_000
MAX_QUERY = 8192
MAX_SEARCH = 256
MAX_LEGACY_BODY = 64 * 1024
#: the most repos a search counts for `total_count` (the client can page through 3000)
MAX_COUNTED = 100_000
TYPES = {"models": "model", "datasets": "dataset"}
#: `sort` of `/openapi/v1/models` → the catalog's (mirror/catalog.py SORTS); None: by id
SORTS = {"default": None, "downloads": "downloads", "likes": "likes",
         "last_modified": "lastModified", "gmt_modified": "lastModified",
         "created_at": "createdAt", "gmt_created": "createdAt"}
#: the string codes of the `/openapi/v1` error envelope (modelscope_hub errors._OPENAPI_CODE_MAP)
OPENAPI_CODES = {400: "InputParameterError", 401: "InvalidAuthentication",
                 403: "OperationNotAllowed", 404: "ResourceNotFound", 429: "RateLimitExceed"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: the legacy API's calls on a repo, by what follows `{type}s/{owner}/{name}`
_LEGACY_CALLS = {(): "info", ("revisions",): "revisions", ("repo",): "download",
                 ("repo", "files"): "files", ("repo", "tree"): "tree"}
#: what each call accepts
METHODS = {"info": ("GET", "HEAD"), "revisions": ("GET",), "download": ("GET", "HEAD"),
           "files": ("GET",), "tree": ("GET",), "legacy_search": ("PUT",),
           "openapi_info": ("GET",), "search": ("GET",)}


class MethodNotAllowed(WeightswarmError):
    status = 405

    def __init__(self, method: str, allowed: tuple[str, ...]):
        super().__init__(f"{method} is not allowed here; use {', '.join(allowed)}")
        self.allowed = allowed


class Refusal(WeightswarmError):
    """aiohttp's own refusal (a body too large, say), to be answered in the envelope."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


# -- the request: path and query -------------------------------------------------------------


@dataclass(frozen=True)
class MsCall:
    """A ModelScope API call: `kind` (a key of METHODS), on a repo or on a repo type."""

    kind: str
    repo_type: str
    repo_id: str = ""


def _decode(segment: str) -> str:
    try:
        return unquote(segment, errors="strict")
    except UnicodeDecodeError:
        raise UnsafePath(segment, "not valid UTF-8 after percent-decoding") from None


def parse(raw_path: str) -> MsCall:
    """The call a raw request path names; NotFound for none, BadRequest for hostile ones. The
    path is split on the raw string and each segment decoded afterwards, as routes.py does."""
    if len(raw_path) > MAX_RAW_PATH:
        raise BadRequest(f"request path longer than {MAX_RAW_PATH} bytes")
    return _parse(raw_path.split("?", 1)[0])


@functools.lru_cache(maxsize=4096)
def _parse(path: str) -> MsCall:
    openapi = path.startswith(OPENAPI)
    if not openapi and not path.startswith(LEGACY):
        raise NotFound("no such ModelScope API route")
    segments = path[len(OPENAPI if openapi else LEGACY):].split("/")
    repo_type = TYPES.get(segments[0])
    if repo_type is None:
        raise NotFound("no such ModelScope API route")
    tail = segments[1:]
    if tail in ([], [""]):
        return MsCall("search" if openapi else "legacy_search", repo_type)
    kind = "openapi_info" if openapi and len(tail) == 2 else None
    if not openapi:
        kind = _LEGACY_CALLS.get(tuple(tail[2:])) if len(tail) >= 2 else None
    if kind is None:
        raise NotFound("no such ModelScope API route")
    return MsCall(kind, repo_type, check_repo_id("/".join(_decode(s) for s in tail[:2])))


def query_params(raw_query: str) -> dict[str, str]:
    """The query as the client sends it (`quote_plus`: `+` is a space), each name in any case,
    its first value kept."""
    if len(raw_query) > MAX_QUERY:
        raise BadRequest(f"query string longer than {MAX_QUERY} bytes")
    try:
        pairs = parse_qsl(raw_query, keep_blank_values=True, errors="strict", max_num_fields=64)
    except UnicodeDecodeError:
        raise BadRequest("the query is not valid UTF-8 after percent-decoding") from None
    except ValueError:
        raise BadRequest("too many query parameters") from None
    params: dict[str, str] = {}
    for name, value in pairs:
        params.setdefault(name.lower(), value)
    return params


def parse_revision(params: dict[str, str], default: str | None = DEFAULT_REVISION) -> str | None:
    """`Revision`: a branch, a tag or a commit id; `default` when absent or empty."""
    revision = params.get("revision")
    return check_revision(revision) if revision else default


def parse_file_path(params: dict[str, str]) -> str:
    path = params.get("filepath")
    if not path:
        raise BadRequest("FilePath is required")
    return check_repo_path(path)


def _root(params: dict[str, str]) -> str:
    """`Root`: '' or '/' is the repo's root (old clients send '/'), else a folder's path."""
    root = params.get("root", "")
    if root in ("", "/"):
        return ""
    return check_repo_path(root[:-1] if root.endswith("/") else root)


def _flag(params: dict[str, str], name: str, default: bool) -> bool:
    """A boolean in any case (`True`, `true`, `1`)."""
    text = params.get(name, "")
    if not text:
        return default
    if text.lower() in ("true", "1"):
        return True
    if text.lower() in ("false", "0"):
        return False
    raise BadRequest(f"{name} must be true or false")


def _number(params: dict[str, str], name: str, default: int, high: int) -> int:
    text = params.get(name, "")
    if not text:
        return default
    value = ascii_digits(text)
    if value is None or not 1 <= value <= high:
        raise BadRequest(f"{name} must be an integer from 1 to {high}")
    return value


@dataclass(frozen=True)
class Listing:
    """`repo/files` or `repo/tree`: which revision, under which folder, how deep."""

    revision: str
    root: str
    recursive: bool


def parse_listing(params: dict[str, str]) -> Listing:
    return Listing(parse_revision(params), _root(params), _flag(params, "recursive", False))


@dataclass(frozen=True)
class Page:
    number: int
    size: int

    @property
    def start(self) -> int:
        return (self.number - 1) * self.size


def parse_tree_page(params: dict[str, str]) -> Page | None:
    """`PageNumber` (from 1) and `PageSize` of `repo/tree`; None when the query names neither:
    the whole listing (the client pages with both, and takes an unpaged answer as all there
    is)."""
    if not params.get("pagenumber") and not params.get("pagesize"):
        return None
    return Page(_number(params, "pagenumber", 1, 10**9),
                _number(params, "pagesize", TREE_PAGE, MAX_PAGE_SIZE))


def parse_end_time(params: dict[str, str]) -> int | None:
    """`EndTime` of `/revisions` (unix seconds): only the tags created by then are listed."""
    text = params.get("endtime", "")
    if not text:
        return None
    value = ascii_digits(text)
    if value is None:
        raise BadRequest("EndTime must be unix seconds")
    return value // 1000 if value > 99_999_999_999 else value


@dataclass(frozen=True)
class Search:
    text: str | None
    owner: str | None
    sort: str | None
    page: Page


def _term(value, name: str, limit: int) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > limit or _CONTROL.search(value):
        raise BadRequest(f"{name} is text of at most {limit} characters, no control characters")
    return value


def parse_search(params: dict[str, str]) -> Search:
    """`GET /openapi/v1/models?search=&owner=&sort=&page_number=&page_size=`."""
    sort = params.get("sort") or "default"
    if sort not in SORTS:
        raise BadRequest(f"sort must be one of {', '.join(SORTS)}")
    page = Page(_number(params, "page_number", 1, SEARCH_WINDOW),
                _number(params, "page_size", 10, SEARCH_WINDOW))
    if page.number * page.size > SEARCH_WINDOW:
        raise BadRequest(f"page_number * page_size must be <= {SEARCH_WINDOW}")
    return Search(_term(params.get("search"), "search", MAX_SEARCH),
                  _term(params.get("owner"), "owner", 96), SORTS[sort], page)


def parse_legacy_search(body: bytes) -> Search:
    """`PUT /api/v1/models/` with `{"Path": owner, "PageNumber": n, "PageSize": m}`."""
    try:
        data = json.loads(body) if body.strip() else {}
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body is not JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("the body is a JSON object")
    numbers = {k: data.get(k, 1 if k == "PageNumber" else 10) for k in ("PageNumber", "PageSize")}
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in numbers.values()):
        raise BadRequest("PageNumber and PageSize are integers of at least 1")
    if numbers["PageSize"] > MAX_PAGE_SIZE or numbers["PageNumber"] > 10**9:
        raise BadRequest(f"PageSize is at most {MAX_PAGE_SIZE}")
    return Search(None, _term(data.get("Path"), "Path", 96), None,
                  Page(numbers["PageNumber"], numbers["PageSize"]))


def request_id(header: str | None) -> str:
    """The client's own `X-Request-ID` when it is a plain token, else a new one."""
    if header and _REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


# -- the answer: JSON ------------------------------------------------------------------------


def dumps(value) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def envelope(data: bytes, request_id: str) -> bytes:
    """The legacy API's success envelope around `Data` already rendered (so a cached answer is
    wrapped afresh, with each request's id)."""
    return b'{"Code":200,"Data":%s,"Message":"success","RequestId":%s,"Success":true}' % (
        data, dumps(request_id))


def openapi_envelope(data: bytes, request_id: str) -> bytes:
    return b'{"success":true,"data":%s,"request_id":%s}' % (data, dumps(request_id))


def error_answer(error: WeightswarmError, request_id: str, *,
                 openapi: bool) -> tuple[int, dict, dict[str, str]]:
    """(status, body, headers) of an error: the legacy envelope (`Code` is the status) or the
    open API's (a string `code`, which the client reads before the status for a 4xx)."""
    status, message = error.status, str(error)
    headers = {"X-Request-ID": request_id}
    if isinstance(error, MethodNotAllowed):
        headers["Allow"] = ", ".join(error.allowed)
    if isinstance(error, RangeNotSatisfiable):
        headers["Content-Range"] = f"bytes */{error.size}"  # the client restarts from 0
    if openapi:
        body = {"success": False, "code": OPENAPI_CODES.get(status, "InternalServerError"),
                "message": message, "request_id": request_id}
    else:
        body = {"Code": status, "Data": None, "Message": message, "RequestId": request_id,
                "Success": False}
    return status, body, headers


def _file_json(f: FileEntry, snapshot: Snapshot) -> dict:
    # `Revision` is the commit that last touched the file upstream; the catalog keeps only
    # snapshots, so it names the snapshot's commit.
    return {"Name": posixpath.basename(f.path), "Path": f.path, "Type": "blob", "Size": f.size,
            "Sha256": f.sha256, "IsLFS": f.lfs, "Id": f.git_sha1, "Revision": snapshot.commit,
            "CommittedDate": int(snapshot.created_at), "CommitMessage": snapshot.title,
            "CommitterName": "", "Mode": "100644", "InCheck": False}


def _folder_json(path: str, oid: str, snapshot: Snapshot) -> dict:
    return {"Name": posixpath.basename(path), "Path": path, "Type": "tree", "Size": 0,
            "Sha256": "", "IsLFS": False, "Id": oid, "Revision": snapshot.commit,
            "CommittedDate": int(snapshot.created_at), "CommitMessage": snapshot.title,
            "CommitterName": "", "Mode": "040000", "InCheck": False}


def listing_json(files: list[FileEntry], snapshot: Snapshot, listing: Listing) -> list[dict]:
    """`Files[]` under `listing.root`, folders (`tree`) included, by path, never cut (see the
    module docstring); LookupError when the root names no folder."""
    oids = directory_oids(files)
    root = listing.root
    if root and root not in oids:
        raise LookupError(root)
    prefix = f"{root}/" if root else ""
    entries: dict[str, dict] = {}
    for f in files:
        if not f.path.startswith(prefix):
            continue
        parts = f.path[len(prefix):].split("/")
        deepest = len(parts) if listing.recursive else min(len(parts), 2)
        for i in range(1, deepest):
            folder = prefix + "/".join(parts[:i])
            if folder not in entries:
                entries[folder] = _folder_json(folder, oids[folder], snapshot)
        if listing.recursive or len(parts) == 1:
            entries[f.path] = _file_json(f, snapshot)
    return [entries[k] for k in sorted(entries)]


def revision_map_json(dated: list[tuple[Ref, float]], end_time: int | None) -> dict:
    """`Data` of `/revisions`: branches (master first) and tags (newest first: old clients take
    the first), each with `CreatedAt` (the snapshot's date: a sync takes the upstream's) and
    `CommitId`. `EndTime` leaves out tags created after it."""
    branch_names = {ref.name for ref, _ in dated if ref.kind == "branch"}

    def item(ref: Ref, created: float) -> dict:
        name = ref.name
        if ref.kind == "branch" and name == "main" and DEFAULT_REVISION not in branch_names:
            name = DEFAULT_REVISION
        return {"Revision": name, "CreatedAt": int(created), "CommitId": ref.commit,
                "CreatedBy": "", "Description": ""}

    branches = [item(r, c) for r, c in dated if r.kind == "branch"]
    tags = [item(r, c) for r, c in dated
            if r.kind == "tag" and (end_time is None or int(c) <= end_time)]
    branches.sort(key=lambda b: (b["Revision"] != DEFAULT_REVISION, b["Revision"]))
    tags.sort(key=lambda t: (-t["CreatedAt"], t["Revision"]))
    return {"RevisionMap": {"Branches": branches, "Tags": tags}}


def _card(repo: Repo) -> tuple[str, list, list]:
    """(license, tags, tasks) of a repo, from its card."""
    tasks = [repo.card["pipeline_tag"]] if repo.card.get("pipeline_tag") else []
    return repo.card.get("license") or "", list(repo.card.get("tags") or []), tasks


def legacy_repo_json(repo: Repo, snapshot: Snapshot | None) -> dict:
    """`Data` of `GET /api/v1/models/{owner}/{name}`: the PascalCase fields the client aliases
    (`Path` is the owner, `Visibility` 5 public) and the older names of the dates."""
    owner, name = repo.author or "", repo.repo_id.rsplit("/", 1)[-1]
    modified = int(snapshot.created_at if snapshot else repo.updated_at)
    license_, tags, tasks = _card(repo)
    data = {"Id": repo.id, "Name": name, "Path": owner, "ChineseName": "", "Description": "",
            "Visibility": 5, "License": license_, "Downloads": repo.downloads,
            "Stars": repo.likes, "Likes": repo.likes, "Tags": tags, "Tasks": tasks,
            "CreatedAt": int(repo.created_at), "LastModified": modified,
            "CreatedTime": int(repo.created_at), "LastUpdatedTime": modified}
    if snapshot is not None:
        data["Revision"] = snapshot.commit
    return data


def openapi_repo_json(repo: Repo, snapshot: Snapshot | None,
                      files: list[FileEntry] | None = None) -> dict:
    """A model or dataset as `/openapi/v1` gives it: snake_case, `id` being "owner/name"."""
    license_, tags, tasks = _card(repo)
    gated = repo.access == "gated"
    data = {"id": repo.repo_id, "display_name": repo.repo_id.rsplit("/", 1)[-1],
            "description": "", "downloads": repo.downloads, "likes": repo.likes,
            "created_at": iso_z(repo.created_at),
            "last_modified": iso_z(snapshot.created_at if snapshot else repo.updated_at),
            "license": license_, "tags": tags, "tasks": tasks, "private": False,
            "gated": gated, "login_required": gated}
    if files is not None:
        data["file_size"] = sum(f.size for f in files)
    return data


def download_headers(located: Located) -> dict[str, str]:
    """What a download carries besides the bytes: `X-Linked-ETag` (sha256, 64 hex) is what
    `model_file_download` checks the bytes against, since it lists nothing (PROTOCOLS.md
    section 2.4); the size, which it checks too."""
    entry = located.entry
    name = posixpath.basename(entry.path)
    return {
        "Content-Type": mimetypes.guess_type(name)[0] or "application/octet-stream",
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(name)}",
        "X-Linked-ETag": entry.sha256,
        "X-Linked-Size": str(entry.size),
        "Cache-Control": "public, max-age=31536000, immutable" if located.pinned else "no-cache",
    }


# -- the lookups, on the catalog's thread ----------------------------------------------------


def hub_call(call: MsCall, revision: str | None, path: str = "") -> HubCall:
    return HubCall(hubs.MODELSCOPE, PREFIX, "resolve" if path else "tree", call.repo_type,
                   call.repo_id, revision or DEFAULT_REVISION, path)


def _default_snapshot(service: HubService, repo: Repo) -> Snapshot | None:
    """The snapshot of the default branch, if the repo has one (it may hold only tags)."""
    try:
        return service.catalog.snapshot(repo, service.catalog.resolve(repo, DEFAULT_REVISION))
    except RevisionNotFound:
        return None


def files_entries(service: HubService, call: MsCall, listing: Listing) -> list[dict]:
    _, snapshot = service.snapshot(hub_call(call, listing.revision))
    try:
        return listing_json(service.catalog.files(snapshot), snapshot, listing)
    except LookupError:
        raise EntryNotFound(call.repo_id, snapshot.commit, listing.root) from None


def files_data(service: HubService, call: MsCall, listing: Listing) -> bytes:
    return dumps({"Files": files_entries(service, call, listing)})


def revisions_data(service: HubService, call: MsCall, end_time: int | None) -> bytes:
    repo = service.repo(hub_call(call, None))
    created: dict[str, float] = {}
    dated = []
    for ref in service.catalog.refs(repo):
        if ref.kind not in ("branch", "tag"):
            continue
        if ref.created_at is not None:  # the upstream's own date for this ref
            dated.append((ref, ref.created_at))
            continue
        if ref.commit not in created:
            created[ref.commit] = service.catalog.snapshot(repo, ref.commit).created_at
        dated.append((ref, created[ref.commit]))
    return dumps(revision_map_json(dated, end_time))


def legacy_info_data(service: HubService, call: MsCall, revision: str | None) -> bytes:
    if revision is None:
        repo = service.repo(hub_call(call, None))
        snapshot = _default_snapshot(service, repo)
    else:
        repo, snapshot = service.snapshot(hub_call(call, revision))
    return dumps(legacy_repo_json(repo, snapshot))


def openapi_info_data(service: HubService, call: MsCall) -> bytes:
    repo = service.repo(hub_call(call, None))
    snapshot = _default_snapshot(service, repo)
    files = service.catalog.files(snapshot) if snapshot else []
    return dumps(openapi_repo_json(repo, snapshot, files))


def _found(service: HubService, repo_type: str, search: Search) -> tuple[list[Repo], int]:
    """The page of repos a search asks for, and how many match in all. Repos of one-segment
    ids (a folder imported so) are left out: the client names every repo `owner/name`."""
    found = [r for r in service.catalog.search(
        hubs.MODELSCOPE, repo_type, search=[search.text] if search.text else [],
        author=search.owner, sort=search.sort, limit=MAX_COUNTED) if "/" in r.repo_id]
    return found[search.page.start:search.page.start + search.page.size], len(found)


def search_data(service: HubService, repo_type: str, search: Search) -> bytes:
    repos, total = _found(service, repo_type, search)
    items = [openapi_repo_json(r, None) for r in repos]
    return dumps({f"{repo_type}s": items, "total_count": total,
                  "page_number": search.page.number, "page_size": search.page.size})


def legacy_search_data(service: HubService, repo_type: str, search: Search) -> bytes:
    repos, total = _found(service, repo_type, search)
    key = "Models" if repo_type == "model" else "Datasets"
    return dumps({key: [legacy_repo_json(r, None) for r in repos], "TotalCount": total})


def locate(service: HubService, call: MsCall, revision: str, path: str) -> Located:
    """The file a download names (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo,
    BlobMissing otherwise), as the HF resolve finds it."""
    return service.locate(hub_call(call, revision, path))
