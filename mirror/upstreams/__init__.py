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
    """One file of an upstream commit, as the upstream describes it, with the hashes it
    publishes: HF gives `sha256` for LFS files (`lfs.oid`) and `git_sha1` for the rest (the
    tree `oid`; for an LFS file that of its pointer text), ModelScope a `sha256` for every
    file, Kaggle nothing in its listing (an MD5 comes with the bytes: `Download.md5`)."""

    path: str
    size: int
    git_sha1: str | None
    sha256: str | None
    lfs: bool

    @property
    def verified_by(self) -> str:
        """What the bytes will be checked against (catalog.VERIFIED_BY), before any MD5."""
        if self.sha256 and (self.lfs or not self.git_sha1):
            return "sha256"
        return "git-sha1" if self.git_sha1 and not self.lfs else "none"


class UpstreamError(Unavailable):
    """The upstream failed (unreachable, 5xx, timeouts after retries, a cut transfer, an
    answer that makes no sense): try again later. What an upstream refuses comes as the
    error it names (peer/http.py): RepoNotFound, RevisionNotFound, GatedRepo..."""


@dataclass
class Answered:
    """What a download's answer said about the whole file beside its bytes: Kaggle's storage
    sends its MD5 (`x-goog-hash`), the only hash Kaggle publishes. Hex, or None."""

    md5: str | None = None


class Upstream(Protocol):
    name: str
    #: its listing carries a hash of every file (HF, ModelScope, folders); Kaggle's does not
    hashed: bool
    #: it has no commits: `resolve` names a version, whose commit is derived from its files
    derives_commit: bool
    #: its download answers carry an MD5 of the file (`Answered`), to be computed and checked
    md5_in_answers: bool

    async def resolve(self, repo_type: str, repo_id: str, revision: str) -> str: ...

    async def list_files(self, repo_type: str, repo_id: str, commit: str) -> list[RemoteFile]: ...

    async def list_author(self, repo_type: str, author: str) -> list[str]: ...

    async def ref_kind(self, repo_type: str, repo_id: str, revision: str) -> str: ...

    def access(self, repo_type: str, repo_id: str) -> str | None: ...

    async def refs_for(self, repo_type: str, repo_id: str, revision: str,
                       key: str) -> list[tuple[str, str]]: ...

    def created_at(self, repo_type: str, repo_id: str, key: str) -> float | None: ...

    def open(self, repo_type: str, repo_id: str, commit: str, path: str, offset: int, *,
             expect: RemoteFile | None = None,
             answered: Answered | None = None) -> AsyncIterator[bytes]: ...

    async def close(self) -> None: ...


class UpstreamBase:
    """The defaults of `Upstream`: a hub with commits and a hash for every listed file."""

    hashed = True
    derives_commit = False
    md5_in_answers = False

    async def list_author(self, repo_type: str, author: str) -> list[str]:
        return []

    async def ref_kind(self, repo_type: str, repo_id: str, revision: str) -> str:
        return "branch"

    async def refs_for(self, repo_type: str, repo_id: str, revision: str,
                       key: str) -> list[tuple[str, str]]:
        raise NotImplementedError("only upstreams that derive commits name their refs")

    def created_at(self, repo_type: str, repo_id: str, key: str) -> float | None:
        """When the upstream made this revision (the snapshot's date), if it says."""
        return None

    def access(self, repo_type: str, repo_id: str) -> str | None:
        """"gated" when the upstream said the repo is (it was read with our token: the
        organisation's accepted licence), so that the mirror keeps it gated; None: as the
        mirror holds it."""
        return None

    async def close(self) -> None:
        return None
