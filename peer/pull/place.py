"""Step 4 of a pull, and what it needs decided first: where the bytes go.

Into the Hugging Face cache, by default: blobs under their ETag in the repo's `blobs/` (where
a peer daemon later seeds them from, no copy), then the snapshot's links and the ref. Or, with
`--local-dir`, into a plain folder: the blobs gather in a hidden cache inside it
(`.cache/weightswarm`) and are moved to their paths at the end, the hidden cache removed.

Every blob lands by rename once verified (peer/atomic.py); a blob BitTorrent is still writing
has a fixed name beside its final one (`RepoCache.staging`), on purpose: a pull cut off finds
its pieces there the next time, and the space check counts them as held.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .. import atomic
from ..errors import InsufficientSpace
from ..hfcache import STAGING_SUFFIX, RepoCache, etag_of, hub_cache
from ..manifest import ManifestFile
from ..settings import PeerConfig
from .spec import PullSpec

#: inside `--local-dir`, where the blobs gather before they are moved to their paths
HIDDEN_CACHE = Path(".cache", "weightswarm")


def etag(f: ManifestFile) -> str:
    """The name of the file's blob in the cache: its sha256 if LFS, else its git sha1."""
    return etag_of(f.sha256, f.git_sha1, f.lfs)


def repo_cache(spec: PullSpec, config: PeerConfig) -> RepoCache:
    """The cache the blobs go into: the Hugging Face cache's folder of the repo, or the hidden
    one inside `--local-dir`."""
    if spec.local_dir is not None:
        return RepoCache(spec.local_dir / HIDDEN_CACHE, spec.repo_type, spec.repo_id)
    root = Path(config.cache) if config.cache else hub_cache()
    return RepoCache(root, spec.repo_type, spec.repo_id)


def missing(cache: RepoCache, files: list[ManifestFile]) -> list[ManifestFile]:
    """The files whose blob the cache does not hold whole."""
    return [f for f in files if not cache.has_blob(etag(f), f.size)]


def check_space(folder: Path, wanted: list[ManifestFile]) -> None:
    """Refuse up front a pull that would not fit; what an interrupted pull already wrote
    counts as held."""
    need = sum(f.size for f in wanted)
    partial = sum(_size_of(folder / f"{etag(f)}{STAGING_SUFFIX}") for f in wanted)
    free = shutil.disk_usage(folder).free
    if need - partial > free:
        raise InsufficientSpace(need - partial, free, str(folder))


def publish(cache: RepoCache, spec: PullSpec, files: list[ManifestFile], commit: str) -> str:
    """Make the pulled revision visible; returns where it is."""
    if spec.local_dir is not None:
        return _place_in_folder(cache, spec.local_dir, files)
    cache.link_snapshot(commit, [(f.path, etag(f)) for f in files])
    cache.set_ref(spec.revision, commit)
    return str(cache.root / "snapshots" / commit)


def _place_in_folder(cache: RepoCache, root: Path, files: list[ManifestFile]) -> str:
    placed: dict[str, Path] = {}
    for f in files:
        tag = etag(f)
        dest = root / f.path  # the manifest's paths are checked (manifest.py)
        if tag in placed:  # the same bytes at two paths: the second is a copy
            atomic.copy_file(placed[tag], dest)
        else:
            atomic.place(cache.blob(tag), dest)
            placed[tag] = dest
    shutil.rmtree(root / HIDDEN_CACHE, ignore_errors=True)
    return str(root)


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
