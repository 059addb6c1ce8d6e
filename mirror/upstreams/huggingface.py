"""Any Hugging Face-compatible endpoint as an upstream: huggingface.co, hf-mirror, olah, or
another weightswarm mirror (whose base URL may carry a /hubs/<hub> prefix).

We are the client here (PROTOCOLS.md section 1): repo info for the commit, the recursive tree
with cursor pagination, and `resolve` for the bytes, following redirects to other hosts
without our token. Xet is never used: its headers and `xetHash` fields are ignored, and
`resolve` still serves every file over plain HTTP.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from urllib.parse import quote, urljoin, urlsplit

import aiohttp

from peer.errors import GatedRepo, IntegrityError
from peer.hfformat import TYPE_PLURAL, TYPE_URL_PREFIX
from peer.http import plain_cause, raise_for_status, unreachable
from peer.paths import ascii_digits, is_commit

from . import RemoteFile, UpstreamError
from .polite import Bandwidth, RequestBudget, backoff, retry_after

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
MAX_REDIRECTS = 10
MAX_PAGES = 100_000


class HuggingFace:
    def __init__(self, endpoint: str, *, token: str | None = None, name: str = "huggingface",
                 setting: str = "mirror.upstreams.huggingface.endpoint",
                 requests_per_5min: int = 500, bandwidth: float | None = None,
                 connections_per_host: int = 8, timeout: float = 60.0, retries: int = 5):
        self.endpoint = endpoint.rstrip("/")
        self.name = name
        #: what a user changes to point the mirror elsewhere, named when it cannot be reached
        self.setting = setting
        self.token = token
        self.budget = RequestBudget(requests_per_5min)
        self.bandwidth = Bandwidth(bandwidth)
        self.retries = retries
        self._connections = connections_per_host
        self._timeout = aiohttp.ClientTimeout(total=None, connect=timeout, sock_read=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._host = urlsplit(self.endpoint).netloc
        #: requests sent, for tests and logs
        self.requests = 0

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, auto_decompress=False,
                connector=aiohttp.TCPConnector(limit_per_host=self._connections),
                headers={"User-Agent": "weightswarm/0.1"},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _headers(self, url: str, extra: dict | None = None) -> dict:
        headers = dict(extra or {})
        # The token goes to the hub's own host only, never to a CDN a redirect names.
        if self.token and urlsplit(url).netloc == self._host:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    async def _send(self, method: str, url: str, headers: dict | None = None
                    ) -> aiohttp.ClientResponse:
        """One request with the upstream's manners: the budget first, then 429s waited out as
        asked, 5xx and network failures retried with backoff; a refusal raised as the error
        its `X-Error-Code` and status name (peer/http.py: HF answers 401 with `RepoNotFound`
        for a private repo and for a missing one alike)."""
        attempt = 0
        while True:
            await self.budget.acquire()
            self.requests += 1
            try:
                response = await self._client().request(
                    method, url, headers=self._headers(url, headers), allow_redirects=False)
            except (TimeoutError, aiohttp.ClientError) as e:
                if attempt >= self.retries:
                    raise unreachable(url, e, self.name, self.setting) from e
                await asyncio.sleep(backoff(attempt))
                attempt += 1
                continue
            if response.status < 400:
                return response
            if response.status == 416:
                response.release()
                # Asked from an offset at or past the end: the file is shorter than listed.
                raise UpstreamError(f"{self.name}: {url}: HTTP 416, the file ends before "
                                    f"{(headers or {}).get('Range', 'the range asked')}")
            if (response.status in (429, 503) or response.status >= 500) \
                    and attempt < self.retries:
                response.release()
                wait = retry_after(response.headers)
                if wait is None:
                    wait = backoff(attempt)
                log.info("%s answered %d; waiting %.1fs", self.name, response.status, wait)
                await asyncio.sleep(wait)
                attempt += 1
                continue
            await raise_for_status(response, source=self.name)

    async def _json(self, url: str):
        for _ in range(MAX_REDIRECTS):  # a renamed repo answers with a redirect
            response = await self._send("GET", url)
            if response.status not in (301, 302, 303, 307, 308):
                break
            location = response.headers.get("Location")
            response.release()
            if not location:
                raise UpstreamError(f"{self.name}: a redirect without Location at {url}")
            url = urljoin(url, location)
        else:
            raise UpstreamError(f"{self.name}: more than {MAX_REDIRECTS} redirects at {url}")
        try:
            return await response.json(content_type=None), response.headers.get("Link")
        except ValueError as e:
            raise UpstreamError(f"{self.name}: {url} answered something that is not JSON") from e
        finally:
            response.release()

    def _api(self, repo_type: str, repo_id: str) -> str:
        return f"{self.endpoint}/api/{TYPE_PLURAL[repo_type]}/{repo_id}"

    async def resolve(self, repo_type: str, repo_id: str, revision: str) -> str:
        url = f"{self._api(repo_type, repo_id)}/revision/{quote(revision, safe='')}"
        info, _ = await self._json(url)
        if isinstance(info, dict) and info.get("gated") and not self.token:
            raise GatedRepo(repo_id, message=f"{self.name}: {repo_id} is gated (GatedRepo): "
                            f"mirroring it needs a token whose user accepted its terms")
        sha = info.get("sha") if isinstance(info, dict) else None
        if not isinstance(sha, str) or not is_commit(sha):
            raise UpstreamError(f"{self.name}: {repo_id}@{revision}: no commit sha in repo info")
        return sha

    async def ref_kind(self, repo_type: str, repo_id: str, revision: str) -> str:
        """'tag' when the upstream's refs list `revision` among its tags, else 'branch'."""
        refs, _ = await self._json(f"{self._api(repo_type, repo_id)}/refs")
        tags = refs.get("tags") if isinstance(refs, dict) else None
        if isinstance(tags, list) and any(isinstance(t, dict) and t.get("name") == revision
                                          for t in tags):
            return "tag"
        return "branch"

    async def _pages(self, url: str) -> AsyncIterator[list]:
        for _ in range(MAX_PAGES):
            page, link = await self._json(url)
            if not isinstance(page, list):
                raise UpstreamError(f"{self.name}: {url} answered no list")
            yield page
            next_url = _next_link(link)
            if not next_url:
                return
            url = urljoin(url, next_url)
        raise UpstreamError(f"{self.name}: more than {MAX_PAGES} pages at {url}")

    async def list_files(self, repo_type: str, repo_id: str, commit: str) -> list[RemoteFile]:
        url = f"{self._api(repo_type, repo_id)}/tree/{commit}?recursive=true&expand=false"
        files = []
        async for page in self._pages(url):
            for entry in page:
                if not isinstance(entry, dict) or entry.get("type") != "file":
                    continue
                lfs = entry.get("lfs")
                files.append(RemoteFile(
                    path=entry.get("path"), size=entry.get("size"), git_sha1=entry.get("oid"),
                    sha256=lfs.get("oid") if isinstance(lfs, dict) else None,
                    lfs=isinstance(lfs, dict),
                ))
        return files

    async def list_author(self, repo_type: str, author: str) -> list[str]:
        url = f"{self.endpoint}/api/{TYPE_PLURAL[repo_type]}?author={quote(author, safe='')}"
        ids = []
        async for page in self._pages(url):
            ids.extend(item["id"] for item in page if isinstance(item, dict) and "id" in item)
        return ids

    async def open(self, repo_type: str, repo_id: str, commit: str, path: str,
                   offset: int = 0, *, expect: RemoteFile | None = None) -> AsyncIterator[bytes]:
        """The file's bytes from `offset`, following redirects (to a CDN: without our token).

        A redirect's `X-Linked-Size` and `X-Linked-Etag` say what the hub will send: when they
        contradict the listing (`expect`), the file is refused before a byte is fetched."""
        url = (f"{self.endpoint}/{TYPE_URL_PREFIX[repo_type]}{repo_id}/resolve/{commit}/"
               f"{quote(path)}")
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        for _ in range(MAX_REDIRECTS):
            response = await self._send("GET", url, headers)
            if response.status in (301, 302, 303, 307, 308):
                location = response.headers.get("Location")
                linked = (response.headers.get("X-Linked-Size"),
                          response.headers.get("X-Linked-Etag"))
                response.release()
                if expect is not None:
                    _check_linked(path, expect, *linked)
                if not location:
                    raise UpstreamError(f"{self.name}: a redirect without Location at {url}")
                url = urljoin(url, location)
                continue
            break
        else:
            raise UpstreamError(f"{self.name}: more than {MAX_REDIRECTS} redirects for {path}")
        try:
            skip = offset if (offset and response.status == 200) else 0  # Range ignored
            async for chunk in response.content.iter_chunked(CHUNK):
                if skip:
                    dropped = min(skip, len(chunk))
                    chunk, skip = chunk[dropped:], skip - dropped
                    if not chunk:
                        continue
                await self.bandwidth.consume(len(chunk))
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as e:
            raise UpstreamError(f"{self.name}: {path}: the transfer broke off: "
                                f"{plain_cause(e)}") from e
        finally:
            response.release()


def _check_linked(path: str, expect: RemoteFile, size: str | None, etag: str | None) -> None:
    linked = ascii_digits(size.strip()) if size is not None else None
    if linked is not None and linked != expect.size:
        raise IntegrityError(f"{path}: X-Linked-Size", str(expect.size), str(linked))
    if etag:
        value = etag.strip().removeprefix("W/").strip('"')
        wanted = expect.sha256 if expect.lfs else expect.git_sha1
        if len(value) in (40, 64) and value != wanted:
            raise IntegrityError(f"{path}: X-Linked-Etag", str(wanted), value)


def _next_link(header: str | None) -> str | None:
    if not header:
        return None
    for part in header.split(","):
        if 'rel="next"' in part or "rel=next" in part:
            start, end = part.find("<"), part.find(">")
            if 0 <= start < end:
                return part[start + 1 : end]
    return None
