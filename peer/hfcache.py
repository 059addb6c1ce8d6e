"""The Hugging Face cache layout (PROTOCOLS.md section 1.8), written the way `huggingface_hub`
writes it, so that `HF_HUB_OFFLINE=1` and `transformers` load what we pulled:

    models--{org}--{name}/blobs/{etag}                 etag: sha256 (LFS) or git sha1
    models--{org}--{name}/snapshots/{commit}/{path}    relative symlink to ../../blobs/{etag}
    models--{org}--{name}/refs/{revision}              the commit

Everything lands by rename (peer/atomic.py): a blob is complete and verified before it has its
final name, and a snapshot link or ref is replaced whole.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from . import atomic
from .paths import check_repo_id, check_repo_path, check_revision, is_commit

_PREFIX = {"model": "models", "dataset": "datasets", "space": "spaces"}
#: what a blob BitTorrent is still writing is called after its ETag (`RepoCache.staging`)
STAGING_SUFFIX = ".wspart"


def hub_cache(env: Mapping[str, str] | None = None) -> Path:
    """Where huggingface_hub keeps its cache: HF_HUB_CACHE, else HF_HOME/hub, else
    XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub."""
    env = os.environ if env is None else env
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    base = env.get("XDG_CACHE_HOME") or os.path.join(env.get("HOME", "~"), ".cache")
    return Path(base).expanduser() / "huggingface" / "hub"


def repo_folder(cache: Path, repo_type: str, repo_id: str) -> Path:
    check_repo_id(repo_id)
    return cache / "--".join([_PREFIX[repo_type], *repo_id.split("/")])


def etag_of(sha256: str, git_sha1: str, lfs: bool) -> str:
    return sha256 if lfs else git_sha1


class RepoCache:
    """One repo's folder in the cache."""

    def __init__(self, cache: Path, repo_type: str, repo_id: str):
        self.root = repo_folder(cache, repo_type, repo_id)
        self.blobs = self.root / "blobs"

    def blob(self, etag: str) -> Path:
        return self.blobs / etag

    def has_blob(self, etag: str, size: int) -> bool:
        try:
            return self.blob(etag).stat().st_size == size
        except FileNotFoundError:
            return False

    def staging(self, etag: str) -> Path:
        """Where BitTorrent writes a blob before it is verified: named by what it must hash
        to, so that a pull cut off continues from its pieces (libtorrent renames it into
        place once it is checked)."""
        return self.blobs / f"{etag}{STAGING_SUFFIX}"

    def link(self, commit: str, path: str, etag: str) -> Path:
        """snapshots/{commit}/{path} → ../../blobs/{etag}, relative like the stock client's;
        returns the link's folder (not yet fsynced: see `link_snapshot`)."""
        if not is_commit(commit):
            raise ValueError(f"not a commit: {commit!r}")
        check_repo_path(path)
        link = self.root / "snapshots" / commit / path
        atomic.link(os.path.relpath(self.blob(etag), link.parent), link)
        return link.parent

    def link_snapshot(self, commit: str, files: Iterable[tuple[str, str]]) -> None:
        """`link` each (path, etag), then make the folders durable, each once."""
        atomic.sync_dirs([self.link(commit, path, etag) for path, etag in files])

    def set_ref(self, revision: str, commit: str) -> None:
        check_revision(revision)
        if is_commit(revision):
            return  # a commit is its own name: no ref
        atomic.write_file(self.root / "refs" / revision, commit.encode())
