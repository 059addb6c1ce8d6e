"""Finding silent corruption: re-hash stored blobs with blake3 (several times faster than
sha256) against what the store recorded at ingest, and take a bad one out of service.

A blob found bad is moved out of the store's published tree into `store/repair/`, where
nothing serves it, and marked in the catalog. The running mirror (mirror/seeding.py) then mends
it piece by piece from the swarm: libtorrent checks the file it finds there, keeps the pieces
that are right and fetches the rest, and the blob returns to the store only once its sha256 and
blake3 match again. `weightswarm mirror scrub` does the finding from the command line; the
server notices the mark.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from peer.atomic import place
from peer.store import BlobStore

from .catalog import BlobRecord, Catalog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finding:
    sha256: str
    problem: str


def scrub(store: BlobStore, records: Iterable[BlobRecord],
          progress: Callable[[int], None] | None = None) -> list[Finding]:
    """Every record whose bytes on disk disagree with its recorded blake3 (or are missing)."""
    found = []
    for record in records:
        for sha256, problem in store.scrub([(record.sha256, record.blake3)]):
            found.append(Finding(sha256, problem))
        if progress:
            progress(record.size)
    return found


def repair_path(repair_dir: Path, sha256: str) -> Path:
    return repair_dir / sha256


def take_out(store: BlobStore, repair_dir: Path, sha256: str) -> Path:
    """Move a blob from the published tree to where libtorrent mends it; returns that path.
    Nothing to move (moved already, or missing altogether: the repair fetches all of it) is
    fine."""
    repair_dir.mkdir(parents=True, exist_ok=True)
    dest = repair_path(repair_dir, sha256)
    try:
        # libtorrent writes the pieces it fetches back
        place(store.path_for(sha256), dest, mode=0o644)
    except FileNotFoundError:
        pass
    return dest


def quarantine(store: BlobStore, catalog: Catalog, repair_dir: Path, finding: Finding) -> None:
    """Take a bad blob out of service: mark it (so it is neither seeded nor served) and move
    its file where libtorrent can mend it."""
    catalog.mark_corrupt(finding.sha256, finding.problem)
    take_out(store, repair_dir, finding.sha256)
    log.warning("blob %s is corrupt (%s): no longer seeded or served, queued for repair",
                finding.sha256, finding.problem)
