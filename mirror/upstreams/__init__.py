"""Upstreams: where a mirror's repos come from, behind one small interface.

An upstream resolves a revision to a commit, lists a commit's files with their sizes and
published hashes, lists an author's repos, and opens a file's bytes from an offset. The sync
engine (mirror/sync.py) needs nothing else, so a Hugging Face endpoint, another weightswarm
mirror (the same API, possibly under /hubs/<hub>), and later ModelScope and Kaggle all fit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from peer.errors import Unavailable


@dataclass(frozen=True)
class RemoteFile:
    """One file of an upstream commit, as the upstream describes it. `sha256` is published for
    LFS files (HF's `lfs.oid`), `git_sha1` for the rest (the tree `oid`); for an LFS file the
    `git_sha1` is that of its pointer text."""

    path: str
    size: int
    git_sha1: str
    sha256: str | None
    lfs: bool


class UpstreamError(Unavailable):
    """The upstream failed (unreachable, 5xx, timeouts after retries, a cut transfer, an
    answer that makes no sense): try again later. What an upstream refuses comes as the
    error it names (peer/http.py): RepoNotFound, RevisionNotFound, GatedRepo..."""


class Upstream(Protocol):
    name: str

    async def resolve(self, repo_type: str, repo_id: str, revision: str) -> str: ...

    async def list_files(self, repo_type: str, repo_id: str, commit: str) -> list[RemoteFile]: ...

    async def list_author(self, repo_type: str, author: str) -> list[str]: ...

    async def ref_kind(self, repo_type: str, repo_id: str, revision: str) -> str: ...

    def open(self, repo_type: str, repo_id: str, commit: str, path: str, offset: int, *,
             expect: RemoteFile | None = None) -> AsyncIterator[bytes]: ...

    async def close(self) -> None: ...
