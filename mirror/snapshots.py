"""Publishing a snapshot whose blobs are all in the store: what imports and syncs share.

The card's front matter and the safetensors headers are read from the stored (verified) blobs,
then the snapshot, its files and its refs become visible in one catalog transaction.
"""

from __future__ import annotations

import logging

from peer import pages
from peer.errors import InvalidSafetensors
from peer.hfformat import FileEntry, read_card
from peer.store import BlobStore
from peer.weights import parameter_counts, read_header, summarise

from .catalog import Catalog, NewSnapshot, Snapshot
from .scan import SAFE, SCANNER, SUSPICIOUS, ScanRefused, Verdict, needs_scan, scan

log = logging.getLogger(__name__)


def describe(store: BlobStore, repo_id: str,
             files: list[FileEntry]) -> tuple[dict, dict | None, dict, tuple | None]:
    """(card data, safetensors summary, invalid safetensors by path, the card rendered as
    NewSnapshot.card_html has it) of a snapshot's files."""
    card: dict = {}
    counts = []
    invalid = {}
    rendered = None
    for f in files:
        if f.path == "README.md":
            with store.open(f.sha256) as fh:
                text = fh.read(1 << 20)
            card, problem = read_card(text)
            if problem:
                log.warning("%s: README.md: %s; kept with empty metadata", repo_id, problem)
            rendered = (f.sha256, pages.RENDERER, pages.readme_markdown(text))
        if f.path.endswith(".safetensors"):
            # A file whose header does not validate is still the upstream's file: it is
            # served as it is, flagged, and left out of the parameter counts.
            try:
                with store.open(f.sha256) as fh:
                    counts.append(parameter_counts(read_header(fh, f.size, f.path)))
            except InvalidSafetensors as e:
                log.warning("%s: %s", repo_id, e)
                invalid[f.path] = e.reason
    return card, summarise(counts), invalid, rendered


def scan_files(catalog: Catalog, store: BlobStore, repo_id: str,
               files: list[FileEntry]) -> dict[str, Verdict]:
    """Every file of a pickle-based format scanned (mirror/scan.py), unless this scanner has
    a verdict on its blob already; path → verdict. A verdict that is not `safe` is logged."""
    verdicts = {}
    for f in files:
        if not needs_scan(f.path):
            continue
        verdict = catalog.scan_of(f.sha256)
        if verdict is None or verdict.scanner != SCANNER:
            verdict = scan(store.path_for(f.sha256), f.path)
            catalog.put_scan(f.sha256, verdict)
            if verdict.status != SAFE:
                log.warning("scan: %s %s: %s%s", repo_id, f.path, verdict.status,
                            f" ({', '.join(verdict.found)})" if verdict.found
                            else f" ({verdict.reason})")
        verdicts[f.path] = verdict
    return verdicts


def publish(catalog: Catalog, store: BlobStore, *, hub: str, repo_type: str, repo_id: str,
            commit: str, files: list[FileEntry], refs: list[tuple[str, str]], access: str | None,
            title: str, parent: str | None = None, created_at: float | None = None,
            verified_by: dict | None = None, ref_times: dict | None = None,
            scan_policy: str = "flag") -> Snapshot:
    """Scan, describe, and make the snapshot visible. `scan_policy = "refuse"`: a suspicious
    file is ScanRefused, and nothing is published."""
    verdicts = scan_files(catalog, store, repo_id, files)
    flagged = {p: v for p, v in verdicts.items() if v.status == SUSPICIOUS}
    if flagged and scan_policy == "refuse":
        raise ScanRefused(repo_id, commit, flagged)
    card, safetensors, invalid, card_html = describe(store, repo_id, files)
    snapshot = catalog.publish(
        NewSnapshot(
            hub=hub, type=repo_type, repo_id=repo_id, commit=commit, files=files, refs=refs,
            title=title, parent=parent if parent != commit else None, card_data=card,
            safetensors=safetensors, invalid_safetensors=invalid, access=access,
            card_html=card_html,
            created_at=created_at, verified_by=verified_by or {}, ref_times=ref_times or {},
        )
    )
    log.info("published %s %s@%s (%d files), refs %s", hub, repo_id, commit[:12], len(files),
             ", ".join(f"{k}:{n}" for k, n in refs) or "none")
    return snapshot
