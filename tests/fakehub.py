"""A fake Hugging Face Hub for tests: the upstream our mirror syncs from.

It speaks the HF HTTP API as PROTOCOLS.md section 1 describes it (repo info, paginated tree and
model listings with absolute `Link` URLs, refs, resolve with HF's error codes) and offloads LFS
bytes to a second server, the "CDN", through an absolute cross-origin 302, as huggingface.co
does. Both are real aiohttp servers on 127.0.0.1:0, served from one event loop in a daemon
thread. Knobs make it misbehave the ways a real upstream does: 429s, cut connections, corrupt
bytes, hostile tree listings.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

from aiohttp import web
from fakeserver import LoopServers

from mirror.routes import HubCall, parse
from peer.errors import WeightswarmError
from peer.hfformat import (
    TYPE_PLURAL,
    TYPE_URL_PREFIX,
    FileEntry,
    card_data,
    derive_tags,
    directory_oids,
    file_json,
    git_blob_sha1,
    iso_z,
    lfs_pointer_sha1,
    sibling_json,
)
from peer.paths import check_repo_id

TOKEN = "secret-token"
LFS_RULE_SIZE = 10 * 1024 * 1024
STREAM_CHUNK = 256 * 1024
LFS_RULE_SUFFIXES = (".safetensors", ".bin", ".gguf")


class HubError(Exception):
    """An HF error answer: status, `X-Error-Code` (if any), message, and the commit it was
    looked up at (sent as `X-Repo-Commit`, which makes the client cache a file's absence)."""

    def __init__(self, status: int, code: str | None, message: str, commit: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.commit = status, code, message, commit


@dataclass
class _Commit:
    sha: str
    date: float
    files: dict[str, FileEntry]
    card: dict


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    created: float
    private: bool = False
    gated: bool = False
    commits: dict[str, _Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    raw_tree: list[dict] | None = None

    @property
    def author(self) -> str | None:
        return self.repo_id.split("/")[0] if "/" in self.repo_id else None

    def resolve(self, revision: str | None) -> _Commit:
        """A branch, a tag (bare or as refs/heads/..., refs/tags/...) or a full commit sha."""
        rev = revision or ("main" if "main" in self.branches else next(iter(self.branches)))
        for prefix in ("refs/heads/", "refs/tags/"):
            rev = rev.removeprefix(prefix)
        sha = self.branches.get(rev) or self.tags.get(rev) or rev
        if sha not in self.commits:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return self.commits[sha]


# -- the functional core: JSON shapes, ranges, pages -----------------------------------------


def _is_lfs(path: str, size: int, lfs: set[str] | None) -> bool:
    if lfs is not None:
        return path in lfs
    return size > 0 and (path.endswith(LFS_RULE_SUFFIXES) or size >= LFS_RULE_SIZE)


def _xet_hash(sha256: str) -> str:
    return hashlib.sha256(b"xet:" + sha256.encode()).hexdigest()


def tree_entries(files: dict[str, FileEntry], path: str, *, recursive: bool,
                 xet: bool) -> list[dict]:
    """The tree listing under `path` ('' is the root); LookupError if it names no folder."""
    oids = directory_oids(files.values())
    if path not in oids:
        raise LookupError(path)
    prefix = f"{path}/" if path else ""

    def listed(p: str) -> bool:
        return p.startswith(prefix) and (recursive or "/" not in p[len(prefix):])

    entries = [{"type": "directory", "path": d, "oid": oid, "size": 0}
               for d, oid in oids.items() if d and listed(d)]
    for f in files.values():
        if listed(f.path):
            entry = file_json(f)
            if xet and f.lfs:
                entry["xetHash"] = _xet_hash(f.sha256)
            entries.append(entry)
    return sorted(entries, key=lambda e: e["path"])


def repo_json(repo: _Repo, commit: _Commit, *, siblings: bool, blobs: bool) -> dict:
    """Repo info (PROTOCOLS.md 1.4); list items are the same without siblings."""
    has_safetensors = any(p.endswith(".safetensors") for p in commit.files)
    info: dict = {
        "id": repo.repo_id, "sha": commit.sha,
        "lastModified": iso_z(commit.date), "createdAt": iso_z(repo.created),
        "private": repo.private, "gated": "manual" if repo.gated else False, "disabled": False,
        "downloads": 0, "likes": 0, "tags": derive_tags(commit.card, has_safetensors),
    }
    if repo.author:
        info["author"] = repo.author
    for key in ("library_name", "pipeline_tag"):
        if isinstance(commit.card.get(key), str):
            info[key] = commit.card[key]
    if commit.card:
        info["cardData"] = commit.card
    if siblings:
        info["siblings"] = [sibling_json(f, blobs=blobs) for f in commit.files.values()]
    return info


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """`bytes=a-b`, `bytes=a-` or `bytes=-n` as [start, end); None = the whole file. Raises
    ValueError when unsatisfiable (answered 416)."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[len("bytes="):].strip().partition("-")
    if not first:
        start, end = max(0, size - int(last)), size
    else:
        start, end = int(first), min(int(last) + 1, size) if last else size
    if start >= end:
        raise ValueError(header)
    return start, end


def _cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


def _offset(cursor: str | None) -> int:
    if cursor is None:
        return 0
    try:
        return int(json.loads(base64.urlsafe_b64decode(cursor))["offset"])
    except (ValueError, KeyError, TypeError):
        raise HubError(400, None, f"invalid cursor {cursor!r}") from None


def _flip_middle_byte(data: bytes) -> bytes:
    if not data:
        return data
    out = bytearray(data)
    out[len(out) // 2] ^= 0xFF
    return bytes(out)


def _header_text(text: str) -> str:
    return text.encode("ascii", "backslashreplace").decode()[:500]


def _error_response(e: HubError) -> web.Response:
    headers = {"X-Error-Message": _header_text(e.message)}
    if e.code:
        headers["X-Error-Code"] = e.code
    if e.commit:
        headers["X-Repo-Commit"] = e.commit
    return web.json_response({"error": e.message}, status=e.status, headers=headers)


# -- the shell -------------------------------------------------------------------------------


class FakeHub(LoopServers):
    thread_name = "fakehub"

    """An upstream hub on 127.0.0.1 (see the module docstring); `start()` before use."""

    def __init__(self, *, page_size: int = 3, rate_limit_every: int = 0, retry_after: float = 0,
                 cut_large_files: bool = False, large_file: int = 8 * 1024 * 1024,
                 xet: bool = True, send_rate: float | None = None, redirect_lfs: bool = True,
                 redirect_to: str | None = None):
        self.page_size = max(1, page_size)
        self.rate_limit_every = rate_limit_every
        self.retry_after = retry_after
        self.cut_large_files = cut_large_files
        self.large_file = large_file
        self.xet = xet
        #: bytes/s at which large bodies leave (None: as fast as the socket takes them): a slow
        #: upstream, whose client has little in flight when it is killed
        self.send_rate = send_rate
        #: False: LFS files are served by the hub itself, no 302 to the CDN (for benchmarks)
        self.redirect_lfs = redirect_lfs
        #: a hostile hub: every LFS redirect goes here instead of the CDN (`file:///etc/passwd`)
        self.redirect_to = redirect_to
        self.url = ""
        self.cdn_url = ""
        self.requests: list[tuple[str, str]] = []
        self.auth_headers: list[str | None] = []
        self.cdn_requests: list[tuple[str, str, str | None]] = []
        self.cdn_auth_headers: list[str | None] = []
        self.bytes_served = 0
        self._api_calls = 0
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
        hub.router.add_route("*", "/{tail:.*}", self._hub_handler)
        cdn = web.Application(middlewares=[self._cdn_middleware])
        cdn.router.add_get("/blobs/{sha256}", self._cdn_handler)
        ports = [(await self._listen(app))[1] for app in (hub, cdn)]
        self.url, self.cdn_url = (f"http://127.0.0.1:{p}" for p in ports)

    # -- content

    def add_repo(self, repo_id: str, files: dict[str, bytes], *, repo_type: str = "model",
                 lfs: set[str] | None = None, branch: str = "main", tags: tuple[str, ...] = (),
                 private: bool = False, gated: bool = False) -> str:
        """Commit `files` (the whole snapshot, not a delta) on `branch`, creating the repo if
        needed; returns the commit id. Older commits stay resolvable by sha; `private` and
        `gated` are set anew by every call. `lfs=None` applies the usual rule."""
        check_repo_id(repo_id)
        assert repo_type in TYPE_PLURAL, repo_type
        entries: dict[str, FileEntry] = {}
        h = hashlib.sha1()
        with self._lock:
            self._commits_made += 1
            h.update(b"commit %d\n" % self._commits_made)
            for path in sorted(files):
                data = files[path]
                sha256 = hashlib.sha256(data).hexdigest()
                is_lfs = _is_lfs(path, len(data), lfs)
                oid = lfs_pointer_sha1(sha256, len(data)) if is_lfs else git_blob_sha1(data)
                entries[path] = FileEntry(path, len(data), sha256, oid, is_lfs)
                self._content[sha256] = data
                h.update(b"%s\0%d\0%s\n" % (path.encode(), len(data), sha256.encode()))
            now = time.time()
            card = card_data(files["README.md"]) if "README.md" in files else {}
            commit = _Commit(h.hexdigest(), now, entries, card)
            repo = self._repos.setdefault((repo_type, repo_id), _Repo(repo_type, repo_id, now))
            repo.private, repo.gated = private, gated
            repo.commits[commit.sha] = commit
            repo.branches[branch] = commit.sha
            repo.tags.update(dict.fromkeys(tags, commit.sha))
        return commit.sha

    def _file(self, repo_id: str, path: str, repo_type: str) -> FileEntry:
        """`path` in the newest commit of the repo that holds it."""
        for commit in reversed(self._repos[(repo_type, repo_id)].commits.values()):
            if path in commit.files:
                return commit.files[path]
        raise KeyError(path)

    def corrupt(self, repo_id: str, path: str, *, repo_type: str = "model") -> None:
        """Serve that file's bytes with one byte flipped, from the hub and the CDN, while every
        published hash stays the true one. It follows the content: another file with the very
        same bytes is served corrupt too."""
        self._corrupt.add(self._file(repo_id, path, repo_type).sha256)

    def repair(self, repo_id: str, path: str, *, repo_type: str = "model") -> None:
        self._corrupt.discard(self._file(repo_id, path, repo_type).sha256)

    def set_raw_tree(self, repo_id: str, entries: list[dict], *, repo_type: str = "model") -> None:
        """Every tree listing of the repo (any valid revision, any path, recursive or not) now
        returns exactly `entries`, paginated as usual; resolve still serves the real files."""
        self._repos[(repo_type, repo_id)].raw_tree = [dict(e) for e in entries]

    def reset_counts(self) -> None:
        """Forget recorded requests and bytes; the rate limiter's count starts over too."""
        self.requests.clear()
        self.auth_headers.clear()
        self.cdn_requests.clear()
        self.cdn_auth_headers.clear()
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
        if request.path.startswith("/api/") and self.rate_limit_every:
            self._api_calls += 1
            if self._api_calls % self.rate_limit_every == 0:
                wait = math.ceil(self.retry_after)
                return web.json_response(
                    {"error": "rate limited"}, status=429,
                    headers={"Retry-After": str(wait), "RateLimit": f'"api";r=0;t={wait}',
                             "X-Error-Message": "You have been rate-limited."})
        try:
            return await handler(request)
        except WeightswarmError as e:  # mirror.routes.parse refusing the path
            return _error_response(HubError(e.status, e.error_code, str(e)))
        except HubError as e:
            return _error_response(e)

    async def _hub_handler(self, request: web.Request) -> web.StreamResponse:
        call = parse(request.raw_path)
        if call.hub != "huggingface" or call.kind in ("paths_info", "commits"):
            raise HubError(404, None, f"{call.kind} is not served by this fake")
        if request.method not in (("GET", "HEAD") if call.kind == "resolve" else ("GET",)):
            raise HubError(405, None, f"{request.method} is not allowed here")
        if call.kind == "resolve":
            return await self._resolve(request, call)
        if call.kind == "list":
            return self._list(request, call)
        repo = self._repo(request, call)
        if call.kind == "repo_info":
            blobs = request.query.get("blobs") == "true"
            commit = repo.resolve(call.revision)
            return web.json_response(repo_json(repo, commit, siblings=True, blobs=blobs))
        if call.kind == "tree":
            return self._tree(request, call, repo)
        assert call.kind == "refs", call.kind
        return web.json_response(self._refs(repo, request.query.get("include_prs") == "1"))

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {TOKEN}"

    def _repo(self, request: web.Request, call: HubCall) -> _Repo:
        repo = self._repos.get((call.repo_type, call.repo_id))
        if repo is None:
            raise HubError(404, "RepoNotFound", f"Repository Not Found: {call.repo_id}")
        if repo.private and not self._authorized(request):
            # HF answers a private repo exactly as a missing one, only with 401.
            raise HubError(401, "RepoNotFound", f"Repository Not Found: {call.repo_id}")
        return repo

    def _tree(self, request: web.Request, call: HubCall, repo: _Repo) -> web.Response:
        commit = repo.resolve(call.revision)
        if repo.raw_tree is not None:
            return self._paged(request, repo.raw_tree)
        recursive = request.query.get("recursive", "false").lower() in ("true", "1")
        try:
            entries = tree_entries(commit.files, call.path, recursive=recursive, xet=self.xet)
        except LookupError:
            raise HubError(404, "EntryNotFound", f"{call.path} does not exist on "
                           f"{call.revision}", commit.sha) from None
        return self._paged(request, entries)

    @staticmethod
    def _refs(repo: _Repo, include_prs: bool) -> dict:
        def ref(name: str, full: str, sha: str) -> dict:
            return {"name": name, "ref": full, "targetCommit": sha}

        prs = {n: s for n, s in repo.branches.items() if n.startswith("refs/pr/")}
        refs: dict = {
            "branches": [ref(n, f"refs/heads/{n}", s) for n, s in repo.branches.items()
                         if n not in prs],
            "tags": [ref(n, f"refs/tags/{n}", s) for n, s in repo.tags.items()],
            "converts": [],
        }
        if include_prs:
            refs["pullRequests"] = [ref(n, n, s) for n, s in prs.items()]
        return refs

    def _list(self, request: web.Request, call: HubCall) -> web.Response:
        author = request.query.get("author")
        searches = [s.lower() for s in request.query.getall("search", [])]
        full = request.query.get("full") == "true"
        with self._lock:  # add_repo may run in the test's thread meanwhile
            repos = sorted(self._repos.items())
        items = []
        for (repo_type, repo_id), repo in repos:
            if (repo_type != call.repo_type or (author and repo.author != author)
                    or not all(s in repo_id.lower() for s in searches)
                    or (repo.private and not self._authorized(request))):
                continue
            items.append(repo_json(repo, repo.resolve(None), siblings=full, blobs=False))
        return self._paged(request, items)

    def _paged(self, request: web.Request, items: list[dict]) -> web.Response:
        """One page of `items`; the next page's URL is absolute and keeps every query parameter
        (httpx2 does not resolve a relative `Link`, PROTOCOLS.md 1.5)."""
        start = _offset(request.query.get("cursor"))
        end = start + self.page_size
        headers = {}
        if end < len(items):
            query = [(k, v) for k, v in request.query.items() if k != "cursor"]
            query.append(("cursor", _cursor(end)))
            path = request.raw_path.split("?", 1)[0]
            headers["Link"] = f'<{self.url}{path}?{urlencode(query)}>; rel="next"'
        return web.json_response(items[start:end], headers=headers)

    async def _resolve(self, request: web.Request, call: HubCall) -> web.StreamResponse:
        repo = self._repo(request, call)
        if repo.gated and not self._authorized(request):
            raise HubError(403, "GatedRepo", f"Access to {call.repo_id} is restricted. "
                           "You must have access to it and be authenticated to access it.")
        commit = repo.resolve(call.revision)
        entry = commit.files.get(call.path)
        if entry is None:
            raise HubError(404, "EntryNotFound", "Entry not found", commit.sha)
        headers = {"X-Repo-Commit": commit.sha}
        if not entry.lfs:
            headers["ETag"] = f'"{entry.git_sha1}"'
            return await self._send(request, self._bytes(entry.sha256), headers, cut=False)
        if not self.redirect_lfs:
            headers.update({"ETag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
            return await self._send(request, self._bytes(entry.sha256), headers, cut=False)
        sig = hashlib.sha256(b"cdn-key:" + entry.sha256.encode()).hexdigest()[:32]
        headers.update({
            "Location": self.redirect_to or f"{self.cdn_url}/blobs/{entry.sha256}?sig={sig}",
            "X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size),
            "ETag": f'"{entry.git_sha1}"',  # the pointer's oid: a client must prefer X-Linked-Etag
        })
        if self.xet:
            route = (f"/api/{TYPE_PLURAL[repo.repo_type]}/{repo.repo_id}/xet-read-token/"
                     f"{commit.sha}")
            headers.update({"X-Xet-Hash": _xet_hash(entry.sha256), "X-Xet-Refresh-Route": route,
                            "Link": f'<{self.url}{route}>; rel="xet-auth"'})
        return web.Response(status=302, headers=headers)

    def resolve_url(self, repo_id: str, revision: str, path: str, *,
                    repo_type: str = "model") -> str:
        """The resolve URL the stock client would request."""
        return (f"{self.url}/{TYPE_URL_PREFIX[repo_type]}{repo_id}/resolve/"
                f"{quote(revision, safe='')}/{quote(path)}")

    # -- the CDN

    @web.middleware
    async def _cdn_middleware(self, request: web.Request, handler) -> web.StreamResponse:
        self.cdn_requests.append((request.method, request.path, request.headers.get("Range")))
        self.cdn_auth_headers.append(request.headers.get("Authorization"))
        return await handler(request)

    async def _cdn_handler(self, request: web.Request) -> web.StreamResponse:
        sha256 = request.match_info["sha256"]
        if sha256 not in self._content:
            return web.Response(status=404, text="NoSuchKey")
        data = self._bytes(sha256)
        cut = (request.method == "GET" and self.cut_large_files
               and len(data) >= self.large_file and sha256 not in self._cut_done)
        if cut:
            self._cut_done.add(sha256)
        return await self._send(request, data, {"ETag": f'"{sha256}"'}, cut=cut)

    # -- bytes

    async def _send(self, request: web.Request, data: bytes, headers: dict[str, str], *,
                    cut: bool) -> web.StreamResponse:
        """The bytes, or the requested range of them with 206; with `cut`, the connection is
        closed after half of them, as a dropped upstream connection looks to a client."""
        headers = {**headers, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
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
        if not cut and len(body) <= STREAM_CHUNK:
            self.bytes_served += len(body)
            return web.Response(status=status, body=body, headers=headers)
        response = web.StreamResponse(status=status, headers=headers)
        if not cut:
            # Large bodies go out a chunk at a time, each write waiting for the socket to drain,
            # so bytes_served counts what left, not what a killed client never read.
            response.content_length = len(body)
            await response.prepare(request)
            view = memoryview(body)
            for start in range(0, len(body), STREAM_CHUNK):
                chunk = view[start : start + STREAM_CHUNK]
                await response.write(chunk)
                self.bytes_served += len(chunk)
                if self.send_rate:
                    await asyncio.sleep(len(chunk) / self.send_rate)
            await response.write_eof()
            return response
        response.content_length = len(body)
        await response.prepare(request)
        half = body[: len(body) // 2]
        await response.write(half)
        self.bytes_served += len(half)
        assert request.transport is not None
        request.transport.close()
        return response


# -- generated content -----------------------------------------------------------------------


def tiny_repo_files(seed: int = 0, *, shards: int = 2, shard_size: int = 1024 * 1024,
                    extra: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """A small model repo: a card with front matter, config and tokenizer files, and `shards`
    valid safetensors shards of about `shard_size` bytes each (seeded random float32) with
    their index. The same seed gives the same bytes."""
    import numpy as np
    from safetensors.numpy import save

    rng = np.random.default_rng(seed)
    readme = (f"---\nlicense: apache-2.0\nlibrary_name: transformers\ntags:\n- tiny\n"
              f"- seed-{seed}\n---\n# Tiny model {seed}\n\nGenerated for tests.\n")
    files = {
        "README.md": readme.encode(),
        "config.json": json.dumps({"model_type": "llama", "hidden_size": 8, "seed": seed,
                                   "architectures": ["LlamaForCausalLM"]}).encode(),
        "tokenizer.json": json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {
            "<unk>": 0, "hello": 1, "world": 2}, "merges": []}}).encode(),
        "tokenizer_config.json": json.dumps(
            {"model_max_length": 64, "tokenizer_class": "PreTrainedTokenizerFast"}).encode(),
    }
    weight_map: dict[str, str] = {}
    total = 0
    for i in range(1, shards + 1):
        name = f"model-{i:05d}-of-{shards:05d}.safetensors"
        tensor = rng.standard_normal(max(1, (shard_size - 128) // 4), dtype=np.float32)
        files[name] = save({f"layers.{i - 1}.weight": tensor}, metadata={"format": "pt"})
        weight_map[f"layers.{i - 1}.weight"] = name
        total += tensor.nbytes
    files["model.safetensors.index.json"] = json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2).encode()
    files.update(extra or {})
    return files
