"""A local folder as an upstream: the importer's source behind the sync interface, so that a
folder (a share where a team drops checkpoints, say) can be kept synced on a schedule.

The folder has no commits: `resolve` hashes every file and derives the commit from them
(DESIGN.md section 2), exactly as `mirror import` does, so both give the same commit for the
same files. Files the store already holds are not read again by the sync; a file that changes
between the listing and its copy fails its hash check and the sync publishes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from peer.errors import BadRequest, RepoNotFound, RevisionNotFound
from peer.gitattributes import LfsRules
from peer.hashing import hash_file
from peer.hfformat import FileEntry, derived_commit, is_lfs_by_rule, lfs_pointer_sha1
from peer.paths import resolve_inside

from ..importer import walk_folder  # the importer's rules for what a folder holds
from . import Answered, RemoteFile, UpstreamBase

CHUNK = 4 * 1024 * 1024


class LocalFolder(UpstreamBase):
    def __init__(self, root: Path):
        self.root = Path(root)
        self.name = f"local:{self.root}"
        self._listing: tuple[str, list[RemoteFile]] | None = None

    def _scan(self, repo_id: str) -> tuple[str, list[RemoteFile]]:
        if not self.root.is_dir():
            raise RepoNotFound(repo_id, message=f"{self.name}: not a folder (any more)")
        attributes = self.root / ".gitattributes"
        rules = LfsRules(attributes.read_text("utf-8", "replace")) if attributes.is_file() \
            else LfsRules()
        files, entries = [], []
        for rel, local in walk_folder(self.root):
            size = local.stat().st_size
            lfs = rules.is_lfs(rel)
            if lfs is None:
                lfs = is_lfs_by_rule(rel, size)
            d = hash_file(local, lfs=lfs)
            git_sha1 = lfs_pointer_sha1(d.sha256, d.size) if lfs else d.git_sha1
            files.append(RemoteFile(rel, d.size, git_sha1, d.sha256 if lfs else None, lfs))
            entries.append(FileEntry(rel, d.size, d.sha256, git_sha1, lfs))
        if not files:
            raise BadRequest(f"{self.name} holds no files")
        return derived_commit(entries), files

    async def resolve(self, repo_type: str, repo_id: str, revision: str) -> str:
        self._listing = await asyncio.to_thread(self._scan, repo_id)
        return self._listing[0]

    async def list_files(self, repo_type: str, repo_id: str, commit: str) -> list[RemoteFile]:
        if self._listing is None or self._listing[0] != commit:
            self._listing = await asyncio.to_thread(self._scan, repo_id)
        if self._listing[0] != commit:
            raise RevisionNotFound(repo_id, commit,
                                   message=f"{self.name}: changed while being synced")
        return self._listing[1]

    async def open(self, repo_type: str, repo_id: str, commit: str, path: str,
                   offset: int = 0, *, expect: RemoteFile | None = None,
                   answered: Answered | None = None) -> AsyncIterator[bytes]:
        target = resolve_inside(self.root, path)
        f = await asyncio.to_thread(open, target, "rb")
        try:
            await asyncio.to_thread(f.seek, offset)
            while chunk := await asyncio.to_thread(f.read, CHUNK):
                yield chunk
        finally:
            f.close()
