"""ModelScope (modelscope.cn, or anything that speaks its API) as an upstream.

We are the client here (PROTOCOLS.md section 2): the legacy `/api/v1` API the `modelscope`
package itself uses, every answer in its envelope (`Code`, `Data`, `Message`, `RequestId`).
A revision (branch, tag or commit) is resolved through `RevisionMap`; its commit is the
upstream's `CommitId` where that is 40 hex, else the content commit of DESIGN.md section 2
(ModelScope lists a `Sha256` for every file, so it is known before a byte is fetched). The file
list is recursive; a listing of exactly 3000 entries is the hub's silent truncation, and the
tree is then walked a folder at a time with `Root=`. Downloads follow the 302 to object
storage (without our token) and resume with `Range`. Which files count as LFS follows DESIGN.md
section 2 (size or weight extension), as for every hub without git attributes of its own.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote, urlencode

import aiohttp

from peer.errors import (
    RateLimited,
    RemoteBadRequest,
    RemoteEntryNotFound,
    RemoteError,
    RemoteRefused,
    RemoteRepoNotFound,
    RemoteRevisionNotFound,
)
from peer.hfformat import FileEntry, derived_commit, is_lfs_by_rule
from peer.http import MAX_ERROR_BODY
from peer.paths import is_commit

from . import Answered, RemoteFile, UpstreamError
from .client import HttpUpstream

log = logging.getLogger(__name__)

#: the hub answers at most this many entries and says nothing (modelscope's
#: REPO_FILES_TRUNCATION_LIMIT): a listing of exactly this many is walked by folder
TRUNCATION = 3000
#: the most folders one walk visits, and entries it gathers, before it gives up
MAX_FOLDERS = 100_000
DATASET_PAGE = 200
#: the client's own cap on a search page (its list_models), so likely the server's
SEARCH_PAGE = 50
PLURAL = {"model": "models", "dataset": "datasets"}


@dataclass(frozen=True)
class _Revision:
    name: str
    kind: str  # branch or tag
    commit: str | None
    created_at: float | None


def _seconds(value) -> float | None:
    """`CreatedAt` in seconds; milliseconds are tolerated (PROTOCOLS.md section 2.3)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return None
    return value / 1000.0 if value > 1e11 else float(value)


def revisions(data) -> list[_Revision]:
    """The branches and tags of a `RevisionMap` (pure)."""
    found = []
    revision_map = data.get("RevisionMap") if isinstance(data, dict) else None
    if not isinstance(revision_map, dict):
        raise UpstreamError("modelscope: a revisions answer without RevisionMap")
    for kind, key in (("branch", "Branches"), ("tag", "Tags")):
        for entry in revision_map.get(key) or []:
            if not isinstance(entry, dict) or not isinstance(entry.get("Revision"), str):
                continue
            commit = entry.get("CommitId")
            found.append(_Revision(entry["Revision"], kind,
                                   commit if isinstance(commit, str) and is_commit(commit)
                                   else None, _seconds(entry.get("CreatedAt"))))
    return found


def remote_files(entries) -> list[RemoteFile]:
    """The files (`Type` blob) of a `Files` listing, as the sync engine takes them (pure).
    Malformed values pass through as they are: `sync.validate` refuses them by name."""
    files = []
    for e in entries:
        if not isinstance(e, dict) or e.get("Type") == "tree":
            continue
        path, size, sha256 = e.get("Path"), e.get("Size"), e.get("Sha256")
        sha256 = sha256.lower() if isinstance(sha256, str) and sha256 else None
        lfs = is_lfs_by_rule(path, size) if isinstance(path, str) and isinstance(size, int) \
            else False
        files.append(RemoteFile(path=path, size=size, git_sha1=None, sha256=sha256, lfs=lfs))
    return files


def content_commit(files: list[RemoteFile]) -> str:
    return derived_commit(FileEntry(f.path, f.size, f.sha256 or "", "", f.lfs) for f in files)


class ModelScope(HttpUpstream):
    token_setting = "mirror.upstreams.modelscope.token (or MODELSCOPE_API_TOKEN)"

    def __init__(self, endpoint: str, *, name: str = "modelscope",
                 setting: str = "mirror.upstreams.modelscope.endpoint", **manners):
        super().__init__(endpoint, name=name, setting=setting, **manners)
        #: commit → (the revision name to list it by, its files), from `resolve`
        self._listed: dict[str, tuple[str, list[RemoteFile]]] = {}
        self._revisions: dict[tuple[str, str], list[_Revision]] = {}
        self._created: dict[str, float] = {}

    def credentials(self) -> dict[str, str]:
        if not self.token:
            return {}
        # as the modelscope client sends it: a bearer token and the session cookie
        return {"Authorization": f"Bearer {self.token}", "Cookie": f"m_session_id={self.token}"}

    async def refusal(self, response: aiohttp.ClientResponse) -> RemoteError:
        try:
            body = await response.content.read(MAX_ERROR_BODY)
        except (aiohttp.ClientError, TimeoutError):
            body = b""
        finally:
            response.release()
        return envelope_error(response.status, body, str(response.url), self.name)

    def _api(self, repo_type: str, repo_id: str) -> str:
        return f"{self.endpoint}/api/v1/{PLURAL[repo_type]}/{repo_id}"

    async def _data(self, url: str):
        """`Data` of an envelope; an envelope whose `Code` is not 200 is its error."""
        body, _ = await self.json("GET", url)
        if not isinstance(body, dict):
            raise UpstreamError(f"{self.name}: {url} answered no envelope")
        code = body.get("Code", 200)
        if code not in (200, "200") or body.get("Success") is False:
            raise envelope_error(code if isinstance(code, int) else 502, body, url, self.name)
        return body.get("Data")

    async def _revision_map(self, repo_type: str, repo_id: str) -> list[_Revision]:
        key = (repo_type, repo_id)
        if key not in self._revisions:
            data = await self._data(f"{self._api(repo_type, repo_id)}/revisions")
            self._revisions[key] = revisions(data)
        return self._revisions[key]

    async def resolve(self, repo_type: str, repo_id: str, revision: str) -> str:
        if is_commit(revision):
            return revision
        found = None
        if repo_type == "model":
            found = next((r for r in await self._revision_map(repo_type, repo_id)
                          if r.name == revision), None)
            if found is None:
                raise RemoteRevisionNotFound(
                    repo_id, revision, message=f"{self.name}: {repo_id} has no branch or tag "
                    f"{revision!r}")
        files = None if found and found.commit else await self._list(repo_type, repo_id,
                                                                     revision)
        commit = found.commit if found and found.commit else content_commit(files)
        if files is not None:
            self._listed[commit] = (revision, files)
        if found and found.created_at:
            self._created[commit] = found.created_at
        return commit

    async def ref_kind(self, repo_type: str, repo_id: str, revision: str) -> str:
        if repo_type != "model":
            return "branch"
        return next((r.kind for r in await self._revision_map(repo_type, repo_id)
                     if r.name == revision), "branch")

    def created_at(self, repo_type: str, repo_id: str, key: str) -> float | None:
        return self._created.get(key)

    async def list_files(self, repo_type: str, repo_id: str, commit: str) -> list[RemoteFile]:
        if commit in self._listed:
            return self._listed[commit][1]
        return await self._list(repo_type, repo_id, commit)

    async def _list(self, repo_type: str, repo_id: str, revision: str) -> list[RemoteFile]:
        if repo_type == "dataset":
            return remote_files(await self._dataset_tree(repo_id, revision))
        entries = await self._files(repo_id, revision, recursive=True)
        if len(entries) == TRUNCATION:
            log.info("%s: %s@%s listed exactly %d entries: walking it folder by folder",
                     self.name, repo_id, revision, TRUNCATION)
            entries = await self._walk(repo_id, revision)
        return remote_files(entries)

    async def _files(self, repo_id: str, revision: str, *, recursive: bool,
                     root: str | None = None) -> list:
        query = {"Revision": revision, "Recursive": "True" if recursive else "False"}
        if root:
            query["Root"] = root
        data = await self._data(f"{self._api('model', repo_id)}/repo/files?{urlencode(query)}")
        files = data.get("Files") if isinstance(data, dict) else None
        if isinstance(data, dict) and "Files" in data and files is None:
            # how modelscope.cn answers a revision it does not have: 200, `Files: null`
            raise RemoteRevisionNotFound(repo_id, revision, message=f"{self.name}: {repo_id} "
                                         f"has no revision {revision!r} (Files: null)")
        if not isinstance(files, list):
            raise UpstreamError(f"{self.name}: {repo_id}@{revision}: a file list without Files")
        return files

    async def _walk(self, repo_id: str, revision: str) -> list:
        """Every entry, one folder at a time (each non-recursive listing is short)."""
        entries, folders, seen = [], [""], set()
        while folders:
            if len(seen) >= MAX_FOLDERS:
                raise UpstreamError(f"{self.name}: {repo_id}: more than {MAX_FOLDERS} folders")
            folder = folders.pop()
            seen.add(folder)
            for e in await self._files(repo_id, revision, recursive=False, root=folder or None):
                if isinstance(e, dict) and e.get("Type") == "tree":
                    path = e.get("Path")
                    if isinstance(path, str) and path not in seen and path != folder:
                        folders.append(path)
                else:
                    entries.append(e)
        return entries

    async def _dataset_tree(self, repo_id: str, revision: str) -> list:
        """A dataset's files: pages of `PageSize`, until a short page (as the client does)."""
        entries = []
        for page in range(1, MAX_FOLDERS):
            query = {"Revision": revision, "Recursive": "True", "PageNumber": page,
                     "PageSize": DATASET_PAGE}
            data = await self._data(f"{self._api('dataset', repo_id)}/repo/tree?"
                                    f"{urlencode(query)}")
            files = data.get("Files") if isinstance(data, dict) else None
            if not isinstance(files, list):
                raise UpstreamError(f"{self.name}: {repo_id}@{revision}: no Files in the tree")
            entries.extend(files)
            if len(files) < DATASET_PAGE:
                return entries
        raise UpstreamError(f"{self.name}: {repo_id}: too many pages of files")

    async def list_author(self, repo_type: str, author: str) -> list[str]:
        ids: list[str] = []
        for page in range(1, TRUNCATION):
            query = urlencode({"owner": author, "page_number": page, "page_size": SEARCH_PAGE})
            body, _ = await self.json("GET", f"{self.endpoint}/openapi/v1/{PLURAL[repo_type]}?"
                                      f"{query}")
            data = body.get("data") if isinstance(body, dict) else None
            items = data.get(PLURAL[repo_type]) if isinstance(data, dict) else None
            if not isinstance(items, list):
                raise UpstreamError(f"{self.name}: a search answer without data.models")
            ids.extend(i["id"] for i in items if isinstance(i, dict)
                       and isinstance(i.get("id"), str) and i["id"].startswith(f"{author}/"))
            if len(items) < SEARCH_PAGE or page * SEARCH_PAGE >= TRUNCATION:
                return ids
        return ids

    async def open(self, repo_type: str, repo_id: str, commit: str, path: str,
                   offset: int = 0, *, expect: RemoteFile | None = None,
                   answered: Answered | None = None) -> AsyncIterator[bytes]:
        """The file's bytes from `offset`; the 302 to object storage is followed without our
        token. Listed by a branch name (no CommitId upstream), a file is fetched by it too."""
        revision = self._listed.get(commit, (commit, None))[0]
        query = urlencode({"Revision": revision, "FilePath": path}, quote_via=quote)
        url = f"{self._api(repo_type, repo_id)}/repo?{query}"
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        response = await self.follow("GET", url, headers)
        async for chunk in self.stream(response, offset, path):
            yield chunk


_BY_STATUS: dict[int, type[RemoteError]] = {
    400: RemoteBadRequest, 401: RemoteRefused, 403: RemoteRefused, 404: RemoteRepoNotFound,
    429: RateLimited,
}


def envelope_error(status: int, body, url: str, source: str) -> RemoteError:
    """The error a ModelScope answer stands for (PROTOCOLS.md section 2.3: 400 invalid
    parameter, 401 authentication, 403 permission, 404 not found, 429 rate limit, 5xx server),
    with the envelope's `Message` and `RequestId` (what their support asks for)."""
    envelope = body
    if isinstance(body, (bytes, str)):
        try:
            envelope = json.loads(body or b"{}")
        except ValueError:
            envelope = {}
    envelope = envelope if isinstance(envelope, dict) else {}
    message = " ".join(str(envelope.get("Message") or f"HTTP {status}").split())[:300]
    request = envelope.get("RequestId")
    text = f"{source}: {message} (HTTP {status}{f', RequestId {request}' if request else ''})"
    cls = _BY_STATUS.get(status, RemoteBadRequest if 400 <= status < 500 else UpstreamError)
    if status == 404 and "FilePath=" in url:
        cls = RemoteEntryNotFound
    error = cls(message=text) if cls is not UpstreamError else UpstreamError(text)
    error.url, error.http_status = url, status
    return error
