"""`weightswarm mirror import-bundle`: a bundle's snapshots into this mirror, every byte and
signature checked before anything is visible.

In order: the index's signature against the trusted keys (`[mirror] bundle_keys`, `--trust`)
and every field of it; then, snapshot by snapshot, its manifest (the file's sha256 as the index
gives it, the signature against the trusted keys, the repo and commit as the index names them),
each blob it needs that this mirror lacks streamed from its volume files through the store's
writer (one read computing sha256, blake3, the git sha1 or the torrent's piece hashes; the
sha256 must be the blob's name, the size the index's, nothing is kept otherwise), and then the
snapshot published in one catalog transaction with the refs that move forward.

A blob the mirror holds already is not read at all: its catalog record (sha256, size, blake3)
must agree with the index, and the store verified its bytes when it took them. So a run that
was killed goes on where it stopped: blobs already in are skipped, snapshots already published
are published again as the no-op they are.

A corrupt, truncated or missing file fails the snapshots that need it, with a report naming
the file, the volume and the repo; the others import. A snapshot whose blobs are in volumes not
given waits for them (importing volume 2 alone publishes what volume 2 completes). A blob the
bundle does not carry and the mirror lacks (an incremental bundle whose base was never
imported here) fails its snapshot with the list of exactly those blobs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from peer.errors import BadRequest, InsufficientSpace, IntegrityError, NotFound
from peer.hashing import Digests, blake3_file, hash_file, read_chunks, wants_pieces
from peer.hfformat import FileEntry
from peer.manifest import Manifest, ManifestError, RefStatement, read_manifest, read_ref
from peer.store import BlobStore, Expected

from ..catalog import Catalog, ref_of
from ..snapshots import publish
from .index import Blob, SnapshotEntry
from .reading import Bundle, Problem, check_part, open_bundles, volume_label
from .repair import Repairs
from .staging import SnapshotFailed, Staging

log = logging.getLogger(__name__)

#: parents followed to find whether a ref's commit descends from another
MAX_ANCESTRY = 10_000


@dataclass
class Failure:
    snapshot: str
    reason: str
    #: blobs neither this mirror nor the bundle has (an absent base)
    missing: list[str] = field(default_factory=list)


@dataclass
class ImportReport:
    published: list[str] = field(default_factory=list)
    #: snapshots the mirror held already (their refs may still have moved)
    present: list[str] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    #: snapshot → the volumes it waits for
    waiting: dict[str, list[int]] = field(default_factory=dict)
    #: refs not moved because the bundle's are older
    kept: list[str] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)
    unusable: list[str] = field(default_factory=list)
    #: files rebuilt from a volume's recovery data, `vol-NNN/path`
    repaired: list[str] = field(default_factory=list)
    bytes: int = 0
    blobs: int = 0
    skipped: int = 0

    def summary(self) -> str:
        waiting = f", {len(self.waiting)} waiting for other volumes" if self.waiting else ""
        return (f"{len(self.published)} snapshots published ({len(self.present)} already "
                f"here), {self.bytes} bytes in {self.blobs} blobs, {self.skipped} blobs skipped "
                f"as already present, {len(self.repaired)} files repaired, {len(self.failed)} "
                f"failed{waiting}")


@dataclass
class _Ready:
    """A snapshot whose manifest is believed, and the blobs it needs from the bundle."""

    entry: SnapshotEntry
    manifest: Manifest
    signed: bytes
    signer: str
    needs: list[Blob]


class BundleImporter:
    def __init__(self, catalog: Catalog, store: BlobStore, trusted: frozenset[str], *,
                 allow_rollback: bool = False, progress: bool = False, min_free: int = 0,
                 scan_policy: str = "flag"):
        if not trusted:
            raise BadRequest("no key to check bundles against: set mirror.bundle_keys or "
                             "give --trust ed25519:<hex>")
        self.catalog = catalog
        self.store = store
        self.trusted = trusted
        self.allow_rollback = allow_rollback
        self.progress = progress
        self.min_free = min_free
        self.scan_policy = scan_policy
        self.staging = Staging(store.partial_dir / "bundle-parts")
        self.repairs = Repairs()

    def import_bundles(self, paths: list[Path]) -> ImportReport:
        bundles, unusable = open_bundles(paths, self.trusted)
        report = ImportReport(unusable=unusable)
        for bundle in bundles:
            self._import(bundle, report)
        return report

    # -- one bundle ---------------------------------------------------------------------------

    def _import(self, bundle: Bundle, report: ImportReport) -> None:
        failed: dict[str, SnapshotFailed] = {}
        believed: list[_Ready] = []
        present: set[str] = set()
        for entry in bundle.index.snapshots:
            try:
                manifest, signed, signer = self._manifest(bundle, entry)
                believed.append(_Ready(entry, manifest, signed, signer,
                                       self._needs(bundle, manifest, present)))
            except SnapshotFailed as e:
                report.failed.append(Failure(entry.name, e.reason, e.missing))
        report.skipped += len(present)
        needed = {b.sha256: b for r in believed for b in r.needs}
        self._check_space(needed.values())
        total = sum(p.size for b in needed.values() for p in b.parts
                    if p.volume in bundle.volumes)
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="import",
                  disable=not self.progress, leave=False) as bar:
            for one in believed:
                try:
                    waits = self._take_all(bundle, one, failed, report, bar.update)
                    if waits:
                        report.waiting[one.entry.name] = waits
                        # What it took in stays until its last volume comes (`mirror gc`).
                        self.catalog.hold(_pending_key(one.entry), [b.sha256 for b in one.needs])
                    else:
                        self._publish(one, report)
                        self.catalog.release(_pending_key(one.entry))
                except SnapshotFailed as e:
                    report.failed.append(Failure(one.entry.name, e.reason, e.missing))
                    self.catalog.release(_pending_key(one.entry))

    def _take_all(self, bundle: Bundle, one: _Ready, failed: dict[str, SnapshotFailed],
                  report: ImportReport, progress: Callable[[int], None]) -> list[int]:
        """Every blob of the snapshot that the volumes given complete, into the store; the
        parts of the others kept aside for the volumes still to come. The volumes it waits
        for (none: it can be published)."""
        waits: set[int] = set()
        for blob in one.needs:
            if blob.sha256 in failed:
                raise failed[blob.sha256]
            try:
                waits |= self._take_or_keep(bundle, one.manifest, blob, report, progress)
            except SnapshotFailed as e:
                failed[blob.sha256] = e
                raise
        return sorted(waits)

    def _take_or_keep(self, bundle: Bundle, manifest: Manifest, blob: Blob,
                      report: ImportReport, progress: Callable[[int], None]) -> set[int]:
        """The blob into the store, or its parts given kept aside; the volumes it still
        needs. A wrong file of a volume with recovery data: the volume repaired (once), and
        the blob read again."""
        try:
            absent = self.staging.absent(bundle, blob)
            if absent:
                self.staging.keep(bundle, blob, progress)
            else:
                self._take(bundle, manifest, blob, report, progress)
            return absent
        except SnapshotFailed as e:
            if e.volume is None:
                raise
            if not self.repairs.attempt(bundle, e.volume):
                raise SnapshotFailed(e.reason + self.repairs.why(e.volume), e.missing,
                                     e.volume) from None
            report.repaired = list(self.repairs.repaired)
            return self._take_or_keep(bundle, manifest, blob, report, progress)

    def _manifest(self, bundle: Bundle, entry: SnapshotEntry) -> tuple[Manifest, bytes, str]:
        """The snapshot's manifest from the first volume whose copy is intact, believed; with
        its signed bytes and its signer."""
        data = None
        for number in sorted(bundle.volumes):
            try:
                candidate = bundle.file(number, entry.manifest_path).read_bytes()
            except (FileNotFoundError, BadRequest):
                continue
            if hashlib.sha256(candidate).hexdigest() == entry.manifest_sha256:
                data = candidate
                break
        if data is None:
            raise SnapshotFailed(f"its manifest {entry.manifest_path} is missing or damaged in "
                                 f"every volume given")
        manifest, key = self._believe(read_manifest, data, entry, "its manifest")
        if {f.sha256 for f in manifest.files} != set(entry.blob_hashes()):
            raise SnapshotFailed("the index and the manifest disagree on its files")
        return manifest, data, key

    def _needs(self, bundle: Bundle, manifest: Manifest, present: set[str]) -> list[Blob]:
        """The blobs to take from the bundle (those the mirror holds go into `present`); a
        blob neither here nor in it fails the snapshot."""
        needs, missing = [], []
        for sha256, size in {f.sha256: f.size for f in manifest.files}.items():
            blob = bundle.index.by_sha256.get(sha256)
            if blob is not None and blob.size != size:
                raise SnapshotFailed(f"blob {sha256}: the index says {blob.size} bytes, the "
                                     f"manifest {size}")
            if self._present(sha256, size, blob):
                present.add(sha256)
                continue
            if blob is None:
                missing.append(sha256)
            else:
                needs.append(blob)
        if missing:
            base = bundle.index.base
            whence = (f"the bundle's base ({base.kind} {base.sha256[:16]}, signed by "
                      f"{base.key[:24]}...) was never imported here" if base else
                      "the bundle does not carry them")
            paths = {f.sha256: f.path for f in manifest.files}
            listed = ", ".join(f"{paths[h]} ({h})" for h in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise SnapshotFailed(f"{len(missing)} blob(s) missing, in neither this mirror nor "
                                 f"the bundle: {listed}{more}; {whence}", missing)
        return needs

    def _present(self, sha256: str, size: int, blob: Blob | None) -> bool:
        """The store holds these bytes, and the catalog their hashes (found again from the
        stored bytes when a killed import took the blob but not its record)."""
        if not self.store.has(sha256):
            return False
        record = self.catalog.blob(sha256)
        lfs = bool(blob and blob.lfs)
        seedable = not wants_pieces(size, lfs) or bool(record and record.piece_length)
        if record is not None and record.size == size and seedable:
            return blob is None or record.blake3 == blob.blake3
        # No record (a killed import took the blob, not its record), or one without the piece
        # hashes its torrent needs (the bytes came as a small git file before): hashed again.
        digests = hash_file(self.store.path_for(sha256), lfs=lfs)
        if digests.sha256 != sha256 or digests.size != size:
            return False
        self.catalog.put_blob(digests)
        return True

    def _check_space(self, blobs) -> None:
        needed = sum({b.sha256: b.size for b in blobs}.values())
        free = shutil.disk_usage(self.store.root).free - self.min_free
        if needed > free:
            raise InsufficientSpace(needed, max(free, 0), str(self.store.root),
                                    reserve="mirror.min_free")

    # -- a blob -------------------------------------------------------------------------------

    def _take(self, bundle: Bundle, manifest: Manifest, blob: Blob, report: ImportReport,
              progress: Callable[[int], None]) -> None:
        if self._present(blob.sha256, blob.size, blob):
            return  # another snapshot of this bundle brought it
        git_sha1 = None if blob.lfs else next(
            (f.git_sha1 for f in manifest.files if f.sha256 == blob.sha256), None)
        try:
            digests = self._ingest(bundle, blob, git_sha1, progress)
        except (IntegrityError, OSError, BadRequest) as e:
            paths = sorted(f.path for f in manifest.files if f.sha256 == blob.sha256)
            problem = self._culprit(bundle, blob) or Problem(
                blob.parts[0].volume, blob.parts[0].path, str(e), blob.sha256)
            raise SnapshotFailed(f"{', '.join(paths)}: {volume_label(problem.volume)}/"
                                 f"{problem.path}: {problem.what}; nothing of it was kept",
                                 volume=problem.volume) from None
        if digests.blake3 != blob.blake3:
            log.warning("blob %s: the index's blake3 differs from its bytes' (sha256 matches)",
                        blob.sha256)
        self.catalog.put_blob(digests)
        self.staging.drop(blob)
        report.blobs += 1
        report.bytes += blob.size

    def _ingest(self, bundle: Bundle, blob: Blob, git_sha1: str | None,
                progress: Callable[[int], None]) -> Digests:
        """The blob's files, in order, through one store writer: published only if they hash
        to its name."""
        expected = Expected(size=blob.size, sha256=blob.sha256, git_sha1=git_sha1)
        with self.store.writer(blob.size, lfs=blob.lfs, expected=expected) as writer:
            for k, part in enumerate(blob.parts):
                given = part.volume in bundle.volumes
                path = bundle.file(part.volume, part.path) if given else self.staging.path(blob, k)
                with open(path, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    if size != part.size:
                        raise IntegrityError("size", str(part.size), f"{size} (truncated?)")
                    for chunk in read_chunks(f, part.size):
                        writer.write(chunk)
                        if given:
                            progress(len(chunk))
            return writer.commit()

    def _culprit(self, bundle: Bundle, blob: Blob) -> Problem | None:
        """Which of a blob's files is wrong: read again against their blake3 (a part kept
        aside from an earlier import that turns out wrong is dropped)."""
        for k, part in enumerate(blob.parts):
            if part.volume in bundle.volumes:
                problem = check_part(bundle, blob.sha256, part, part.volume, lambda n: None)
                if problem is not None:
                    return problem
            elif blake3_file(self.staging.path(blob, k)) != part.blake3:
                self.staging.path(blob, k).unlink(missing_ok=True)
                return Problem(part.volume, part.path, "damaged since it was kept aside from "
                               "an earlier import: import that volume again", blob.sha256)
        return None

    # -- publishing ---------------------------------------------------------------------------

    def _publish(self, one: _Ready, report: ImportReport) -> None:
        entry = one.entry
        statements = self._statements(entry)
        refs, kept = self._forward(entry, statements)
        report.kept += kept
        was_here = self._has(entry)
        self.catalog.put_signed_manifest(entry.hub, entry.type, entry.repo, entry.commit,
                                         one.signed, one.signer)
        files = [FileEntry(f.path, f.size, f.sha256, f.git_sha1, f.lfs)
                 for f in one.manifest.files]
        publish(self.catalog, self.store, hub=entry.hub, repo_type=entry.type,
                repo_id=entry.repo, commit=entry.commit, files=files,
                refs=[ref_of(s.ref) for s, _ in refs], access=entry.access,
                title=entry.title or "Imported from a bundle", parent=entry.parent,
                scan_policy=self.scan_policy)
        for s, key in refs:
            self.catalog.note_bundle_ref(key, s.hub, s.type, s.repo, s.ref, s.seq, s.commit)
            report.moved.append(f"{entry.repo}@{s.ref} -> {s.commit[:12]}")
        (report.present if was_here else report.published).append(entry.name)

    def _statements(self, entry: SnapshotEntry) -> list[tuple[RefStatement, str]]:
        """The snapshot's ref statements, believed, with their signers."""
        out = []
        for data in entry.refs:
            out.append(self._believe(read_ref, data, entry, "a ref statement"))
        return out

    def _believe(self, read, data: bytes, entry: SnapshotEntry, what: str):
        """A signed document about the snapshot (manifest or ref statement), believed: signed
        by a trusted key, and about exactly the repo and commit the index names."""
        try:
            document, key = read(data, self.trusted)
        except ManifestError as e:
            raise SnapshotFailed(f"{what} is refused: {e}") from None
        if (document.hub, document.type, document.repo, document.commit) != \
                (entry.hub, entry.type, entry.repo, entry.commit):
            raise SnapshotFailed(f"{what} is about another repo or commit than the index says")
        return document, key

    def _forward(self, entry: SnapshotEntry, statements: list[tuple[RefStatement, str]]
                 ) -> tuple[list[tuple[RefStatement, str]], list[str]]:
        """The statements whose refs move; the others are kept where they are, with a line
        each: an older bundle never rolls a ref back (unless allowed)."""
        move, kept = [], []
        for s, key in statements:
            why = None if self.allow_rollback else self._older(s, key)
            if why is None:
                move.append((s, key))
            else:
                kept.append(f"{entry.repo}@{s.ref} kept: {why}")
                log.warning("%s@%s kept: %s (--allow-rollback moves it)", entry.repo, s.ref, why)
        return move, kept

    def _older(self, s: RefStatement, key: str) -> str | None:
        """Why moving the ref to `s.commit` would roll it back, or None. Sequence numbers
        are compared only with those of the same signer: each mirror counts its own."""
        before = self.catalog.bundle_ref(key, s.hub, s.type, s.repo, s.ref)
        if before is not None and (before[0] > s.seq or
                                   (before[0] == s.seq and before[1] != s.commit)):
            return (f"a bundle imported before says {before[1][:12]} at sequence "
                    f"{before[0]}; this one's {s.commit[:12]} is older ({s.seq})")
        try:
            repo = self.catalog.repo(s.hub, s.type, s.repo)
            current = self.catalog.resolve(repo, s.ref)
        except NotFound:
            return None
        if current != s.commit and self._descends(repo, current, s.commit):
            return f"it is at {current[:12]}, which descends from {s.commit[:12]}"
        return None

    def _descends(self, repo, commit: str, ancestor: str) -> bool:
        for _ in range(MAX_ANCESTRY):
            try:
                parent = self.catalog.snapshot(repo, commit).parent
            except NotFound:
                return False
            if parent is None:
                return False
            if parent == ancestor:
                return True
            commit = parent
        return False

    def _has(self, entry: SnapshotEntry) -> bool:
        try:
            self.catalog.snapshot(self.catalog.repo(entry.hub, entry.type, entry.repo),
                                  entry.commit)
            return True
        except NotFound:
            return False


def _pending_key(entry: SnapshotEntry) -> str:
    return f"{entry.hub}/{entry.type}/{entry.repo}@{entry.commit}"
