"""Removing repos and collecting blobs nothing references any more (`mirror rm`, `mirror gc`).

Archive mode refuses both: an archive never deletes. `gc` leaves alone every blob an import
touched within the grace period, because an import records and stores its blobs before it
publishes the snapshot that references them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from peer.errors import Refused
from peer.store import BlobStore

from .catalog import Catalog
from .config import Config

log = logging.getLogger(__name__)

DEFAULT_GRACE = 6 * 3600


def refuse_in_archive_mode(config: Config, what: str) -> None:
    if config.mirror.archive:
        raise Refused(f"{what} refused: this mirror is an archive (mirror.archive = true)")


@dataclass
class Collected:
    blobs: list[str]
    bytes: int


def collect_garbage(catalog: Catalog, store: BlobStore, *, grace: float = DEFAULT_GRACE,
                    now: float | None = None, dry_run: bool = False) -> Collected:
    """Remove blobs that no snapshot references: catalogued ones, and files in the store that
    the catalog has no record of (left by a process killed between the two), both only when
    older than `grace` seconds."""
    cutoff = (time.time() if now is None else now) - grace
    collected = Collected([], 0)
    for sha256 in catalog.unreferenced_blobs(cutoff):
        size = store.size_of(sha256) if store.has(sha256) else 0
        if dry_run or catalog.forget_blob(sha256, cutoff):
            if not dry_run:
                store.remove(sha256)
            collected.blobs.append(sha256)
            collected.bytes += size
    for sha256 in list(store.iter_blobs()):
        if catalog.blob(sha256) is None and not catalog.referenced(sha256):
            path = store.path_for(sha256)
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if stat.st_mtime < cutoff:
                if not dry_run:
                    store.remove(sha256)
                collected.blobs.append(sha256)
                collected.bytes += stat.st_size
    if collected.blobs and not dry_run:
        log.info("gc removed %d blobs, %d bytes", len(collected.blobs), collected.bytes)
    return collected
