"""Publishing a snapshot whose blobs are all in the store: what imports and syncs share.

The card's front matter and the safetensors headers are read from the stored (verified) blobs,
then the snapshot, its files and its refs become visible in one catalog transaction.
"""

from __future__ import annotations

import logging

from peer.errors import InvalidSafetensors
from peer.hfformat import FileEntry, read_card
from peer.store import BlobStore
from peer.weights import parameter_counts, read_header, summarise

from .catalog import Catalog, NewSnapshot, Snapshot

log = logging.getLogger(__name__)


def describe(store: BlobStore, repo_id: str, files: list[FileEntry]) -> tuple[dict, dict | None, dict]:
    """(card data, safetensors summary, invalid safetensors by path) of a snapshot's files."""
    card: dict = {}
    counts = []
    invalid = {}
    for f in files:
        if f.path == "README.md":
            with store.open(f.sha256) as fh:
                card, problem = read_card(fh.read(1 << 20))
            if problem:
                log.warning("%s: README.md: %s; kept with empty metadata", repo_id, problem)
        if f.path.endswith(".safetensors"):
            # A file whose header does not validate is still the upstream's file: it is
            # served as it is, flagged, and left out of the parameter counts.
            try:
                with store.open(f.sha256) as fh:
                    counts.append(parameter_counts(read_header(fh, f.size, f.path)))
            except InvalidSafetensors as e:
                log.warning("%s: %s", repo_id, e)
                invalid[f.path] = e.reason
    return card, summarise(counts), invalid


def publish(catalog: Catalog, store: BlobStore, *, hub: str, repo_type: str, repo_id: str,
            commit: str, files: list[FileEntry], refs: list[tuple[str, str]], access: str,
            title: str, parent: str | None = None, created_at: float | None = None,
            verified_by: dict | None = None, ref_times: dict | None = None) -> Snapshot:
    card, safetensors, invalid = describe(store, repo_id, files)
    snapshot = catalog.publish(
        NewSnapshot(
            hub=hub, type=repo_type, repo_id=repo_id, commit=commit, files=files, refs=refs,
            title=title, parent=parent if parent != commit else None, card_data=card,
            safetensors=safetensors, invalid_safetensors=invalid, access=access,
            created_at=created_at, verified_by=verified_by or {}, ref_times=ref_times or {},
        )
    )
    log.info("published %s %s@%s (%d files), refs %s", hub, repo_id, commit[:12], len(files),
             ", ".join(f"{k}:{n}" for k, n in refs) or "none")
    return snapshot
