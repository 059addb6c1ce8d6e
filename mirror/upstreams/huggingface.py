"""Any Hugging Face-compatible endpoint as an upstream: huggingface.co, hf-mirror, olah, or
another weightswarm mirror (whose base URL may carry a /hubs/<hub> prefix).

We are the client here (PROTOCOLS.md section 1): repo info for the commit, the recursive tree
with cursor pagination, and `resolve` for the bytes, following redirects to other hosts
without our token. Xet is never used: its headers and `xetHash` fields are ignored, and
`resolve` still serves every file over plain HTTP.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from urllib.parse import quote, urljoin

from peer.errors import GatedRepo, IntegrityError
from peer.hfformat import TYPE_PLURAL, TYPE_URL_PREFIX
from peer.paths import ascii_digits, is_commit

from . import Answered, RemoteFile, UpstreamError
from .client import HttpUpstream

log = logging.getLogger(__name__)

MAX_PAGES = 100_000


class HuggingFace(HttpUpstream):
    token_setting = "mirror.upstreams.huggingface.token (or HF_TOKEN)"

    def __init__(self, endpoint: str, *, name: str = "huggingface",
                 setting: str = "mirror.upstreams.huggingface.endpoint", **manners):
        super().__init__(endpoint, name=name, setting=setting, **manners)
        #: (type, id) of the repos whose info said they are gated
        self._gated: set[tuple[str, str]] = set()
        #: (type, id) of the repos whose info said they are private
        self._private: set[tuple[str, str]] = set()

    async def _json(self, url: str):
        body, headers = await self.json("GET", url)  # a renamed repo answers with a redirect
        return body, headers.get("Link")

    def _api(self, repo_type: str, repo_id: str) -> str:
        return f"{self.endpoint}/api/{TYPE_PLURAL[repo_type]}/{repo_id}"

    async def resolve(self, repo_type: str, repo_id: str, revision: str) -> str:
        return (await self.info(repo_type, repo_id, revision))["sha"]

    async def info(self, repo_type: str, repo_id: str, revision: str) -> dict:
        """The repo's info at `revision`, whose `sha` is a commit; a gated repo without our
        token is `GatedRepo`."""
        url = f"{self._api(repo_type, repo_id)}/revision/{quote(revision, safe='')}"
        info, _ = await self._json(url)
        if isinstance(info, dict) and info.get("gated"):
            if not self.token:
                raise GatedRepo(repo_id, message=f"{self.name}: {repo_id} is gated "
                                f"(GatedRepo): mirroring it needs a token whose user "
                                f"accepted its terms")
            self._gated.add((repo_type, repo_id))
        if isinstance(info, dict) and info.get("private"):
            # Our token may read an organisation's private repo: private here too.
            self._private.add((repo_type, repo_id))
        sha = info.get("sha") if isinstance(info, dict) else None
        if not isinstance(sha, str) or not is_commit(sha):
            raise UpstreamError(f"{self.name}: {repo_id}@{revision}: no commit sha in repo info")
        return info

    def access(self, repo_type: str, repo_id: str) -> str | None:
        if (repo_type, repo_id) in self._private:
            return "private"
        return "gated" if (repo_type, repo_id) in self._gated else None

    async def refs(self, repo_type: str, repo_id: str) -> dict:
        """The repo's refs answer (`branches`, `tags`, ...), as the upstream gives it."""
        refs, _ = await self._json(f"{self._api(repo_type, repo_id)}/refs")
        if not isinstance(refs, dict):
            raise UpstreamError(f"{self.name}: {repo_id}: the refs answer is not an object")
        return refs

    async def ref_kind(self, repo_type: str, repo_id: str, revision: str) -> str:
        """'tag' when the upstream's refs list `revision` among its tags, else 'branch'."""
        tags = (await self.refs(repo_type, repo_id)).get("tags")
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
                   offset: int = 0, *, expect: RemoteFile | None = None,
                   answered: Answered | None = None) -> AsyncIterator[bytes]:
        """The file's bytes from `offset`, following redirects (to a CDN: without our token).

        A redirect's `X-Linked-Size` and `X-Linked-Etag` say what the hub will send: when they
        contradict the listing (`expect`), the file is refused before a byte is fetched."""
        url = (f"{self.endpoint}/{TYPE_URL_PREFIX[repo_type]}{repo_id}/resolve/{commit}/"
               f"{quote(path)}")
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"

        def check(redirect) -> None:
            if expect is not None:
                _check_linked(path, expect, redirect.headers.get("X-Linked-Size"),
                              redirect.headers.get("X-Linked-Etag"))

        response = await self.follow("GET", url, headers, on_redirect=check)
        async for chunk in self.stream(response, offset, path):
            yield chunk


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
