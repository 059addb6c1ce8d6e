"""`weightswarm mirror export`: chosen snapshots into a bundle folder of volumes.

The plan is pure and deterministic (index.lay_out): the same catalog and base give the same
files at the same places. Every file is written to a temp name, fsynced and renamed
(peer/atomic.py), so a file at its final name is whole; each blob is read from the store once,
its blake3 checked on the way (a blob that rotted in the store is caught before the disk leaves
the building), the parts of a split blob hashed as they are written. The index goes into each
volume last: until then the folder is a cut-off export, and running the command again keeps
every file already written and writes the rest.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import mmap
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import blake3
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tqdm import tqdm

from peer import atomic
from peer.errors import InsufficientSpace
from peer.hashing import hash_threads
from peer.manifest import RefStatement, sign_ref
from peer.store import direct_aligned, open_direct, pwrite_all

from ..catalog import Catalog
from ..distribution import Distribution
from .index import (
    INDEX,
    VOLUME_FILE,
    VOLUME_PREFIX,
    Blob,
    BundleError,
    Index,
    Part,
    Placed,
    SnapshotEntry,
    Volume,
    lay_out,
    manifest_path,
    sign_index,
    volume_count,
    volume_name,
)
from .select import Chosen, full_ref
from .state import NOTHING, Holdings

log = logging.getLogger(__name__)

CHUNK = 8 * 1024 * 1024
#: room kept in each volume for what is not blobs, beyond the index and the manifests
SLACK = 64 * 1024

#: parity's hook (mirror/parity.py): protect(volume folder, its files) → recovery files written
Protect = Callable[[Path, list[str]], list[str]]


class ExportCutOff(BundleError):
    """The export stopped before its end (a full disk): the folder is not a bundle yet."""


@dataclass
class ExportResult:
    to: Path
    volumes: int
    snapshots: int
    blobs: int
    bytes: int
    #: blobs left out because the far side holds them
    held: int
    #: blob files found already written by an earlier, cut-off run
    resumed: int = 0
    index_bytes: int = 0
    base: str | None = None
    volume_sizes: list[int] = field(default_factory=list)


@dataclass
class _Plan:
    entries: list[SnapshotEntry]
    manifests: dict[str, bytes]
    blobs: list[tuple[str, int, str, bool]]  # sha256, size, blake3, lfs
    held: int


class Exporter:
    def __init__(self, catalog: Catalog, store, key: Ed25519PrivateKey, *,
                 progress: bool = False, protect: Protect | None = None,
                 parity_scheme: str | None = None, parity_share: float = 0.0):
        """`protect`, `parity_scheme`, `parity_share`: parity's hook (mirror/parity.py), the
        function that writes a volume's recovery files, the code's name for the index, and
        the recovery bytes per data byte it writes (0.05 for 5%), kept free in every volume."""
        self.catalog = catalog
        self.store = store
        self.key = key
        self.progress = progress
        self.protect = protect
        self.parity_scheme = parity_scheme
        self.parity_share = parity_share if protect is not None else 0.0
        self.distribution = Distribution(catalog, key)
        self.copier = _Copier()

    def export(self, chosen: list[Chosen], to: Path, *, volume_size: int,
               holdings: Holdings = NOTHING) -> ExportResult:
        to = Path(to)
        self._prepare(to)
        plan = self._plan(chosen, holdings)
        placed = self._lay_out(plan, volume_size, holdings)
        log.info("exporting %d snapshots, %d blobs into %d volumes of at most %d bytes",
                 len(plan.entries), len(placed), volume_count(placed), volume_size)
        count = volume_count(placed)
        try:
            parts, resumed = self._write_blobs(to, placed, {b[0]: b[2] for b in plan.blobs})
            self._write_meta(to, count, plan.manifests)
            volumes = self._volumes(to, placed, count, sorted(plan.manifests))
            data = sign_index(self._index(plan, parts, volumes, volume_size, holdings), self.key)
            self._sweep(to, count, placed)
            for number in range(1, count + 1):  # last: the mark of a finished volume
                atomic.write_file(to / volume_name(number) / INDEX, data)
        except InsufficientSpace as e:
            raise ExportCutOff(f"{e}. The bundle in {to} is not finished: make room and run "
                               f"the same export again to continue") from e
        return ExportResult(to, count, len(plan.entries), len(placed),
                            sum(b[1] for b in plan.blobs), plan.held, resumed, len(data),
                            holdings.base.sha256 if holdings.base else None,
                            [v.size for v in volumes])

    # -- the plan -----------------------------------------------------------------------------

    @staticmethod
    def _prepare(to: Path) -> None:
        """A folder that holds a finished bundle is not written over; a cut-off one loses the
        indexes a run that stopped while writing them left, so nothing reads it as finished."""
        volumes = sorted(p for p in to.glob(VOLUME_PREFIX + "*") if p.is_dir())
        if volumes and all((v / INDEX).is_file() for v in volumes):
            raise BundleError(f"{to} holds a finished bundle ({len(volumes)} volumes): export "
                              f"into an empty folder")
        for v in volumes:
            (v / INDEX).unlink(missing_ok=True)
        to.mkdir(parents=True, exist_ok=True)

    def _plan(self, chosen: list[Chosen], holdings: Holdings) -> _Plan:
        entries, manifests, order = [], {}, {}
        for c in chosen:
            snapshot = self.catalog.snapshot(c.repo, c.commit)
            files = self.catalog.files(snapshot)
            signed = self.distribution.signed_manifest(c.repo, snapshot)
            path = manifest_path(signed)
            manifests[path] = signed
            refs = tuple(sign_ref(RefStatement(c.repo.hub, c.repo.type, c.repo.repo_id,
                                               full_ref(r), c.commit, r.seq), self.key)
                         for r in c.refs)
            hashes = list(dict.fromkeys(f.sha256 for f in files))
            entries.append(SnapshotEntry(
                c.repo.hub, c.repo.type, c.repo.repo_id, c.commit, path,
                hashlib.sha256(signed).hexdigest(), refs, c.repo.access, snapshot.title, snapshot.parent,
                b"".join(bytes.fromhex(h) for h in hashes)))
            for f in files:
                if f.sha256 not in holdings.blobs:
                    order[f.sha256] = order.get(f.sha256, False) or f.lfs
        return _Plan(entries, manifests, [self._record(h, lfs) for h, lfs in order.items()],
                     held=len({h for e in entries for h in e.blob_hashes()} & holdings.blobs))

    def _record(self, sha256: str, lfs: bool) -> tuple[str, int, str, bool]:
        record = self.catalog.blob(sha256)
        if record is None or not self.store.has(sha256):
            holders = ", ".join(f"{r[2]}@{r[3][:12]} {r[4]}" for r in self.catalog.holders(sha256))
            raise BundleError(f"blob {sha256} ({holders}) is not in this mirror's store")
        return sha256, record.size, record.blake3, lfs

    def _lay_out(self, plan: _Plan, volume_size: int,
                 holdings: Holdings) -> list[Placed]:
        """The layout, with room in every volume for the index and the manifests: the index
        lists the layout, so its size is found by laying out, measuring and trying again."""
        meta = sum(len(m) for m in plan.manifests.values()) + SLACK
        reserve = meta + 256 * (len(plan.blobs) + len(plan.entries))
        for _ in range(8):
            room = int((volume_size - reserve) / (1 + self.parity_share))
            placed = lay_out([(b[0], b[1]) for b in plan.blobs], room)
            dummy = self._index(plan, {}, [Volume(n, 0) for n in range(
                1, volume_count(placed) + 1)], volume_size, holdings, placed=placed)
            need = meta + len(sign_index(dummy, self.key))
            if need <= reserve:
                return placed
            reserve = need + need // 8
        raise BundleError(f"a volume of {volume_size} bytes has no room for the bundle's index "
                          f"({reserve} bytes): choose a larger --volume-size")

    # -- writing ------------------------------------------------------------------------------

    def _write_blobs(self, to: Path, placed: list[Placed],
                     blake3s: dict[str, str]) -> tuple[dict, int]:
        """Every blob's files; the part blake3s by sha256, and how many files were there."""
        parts: dict[str, tuple[Part, ...]] = {}
        resumed = 0
        total = sum(b.size for b in placed)
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="export",
                  disable=not self.progress, leave=False) as bar:
            for blob in placed:
                got, found = self._write_blob(to, blob, blake3s[blob.sha256], bar.update)
                parts[blob.sha256] = got
                resumed += found
        return parts, resumed

    def _write_blob(self, to: Path, blob: Placed, expected_blake3: str,
                    progress: Callable[[int], None]) -> tuple[tuple[Part, ...], int]:
        """One blob's file (or parts), its blake3 checked on the way; a file already at its
        name is whole (atomic writes): a whole blob is kept unread, a part read for its hash."""
        if len(blob.pieces) == 1:
            volume, _, size, path = blob.pieces[0]
            if _written(to / volume_name(volume) / path, size):
                progress(size)
                return (Part(volume, path, size, expected_blake3),), 1
        whole = blake3.blake3()
        parts, found = [], 0
        with self.store.open(blob.sha256) as source:
            for volume, offset, size, path in blob.pieces:
                dest = to / volume_name(volume) / path
                # A whole blob's one file: its hash is the blob's, computed once.
                hasher = whole if len(blob.pieces) == 1 else blake3.blake3()
                hashers = (whole,) if hasher is whole else (hasher, whole)
                if _written(dest, size):
                    found += 1
                    with open(dest, "rb") as f:
                        self.copier.copy(f, 0, size, hashers, progress)
                else:
                    self.copier.copy(source, offset, size, hashers, progress, dest)
                parts.append(Part(volume, path, size, hasher.hexdigest()))
        if whole.hexdigest() != expected_blake3:
            for p in parts:
                (to / volume_name(p.volume) / p.path).unlink(missing_ok=True)
            raise BundleError(f"blob {blob.sha256} is corrupt in this mirror's store (blake3 "
                              f"{whole.hexdigest()}, recorded {expected_blake3}): run "
                              f"`weightswarm mirror scrub`, then export again")
        return tuple(parts), found

    def _write_meta(self, to: Path, count: int, manifests: dict[str, bytes]) -> None:
        """Every volume carries every manifest, and its own number."""
        for number in range(1, count + 1):
            folder = to / volume_name(number)
            for path, data in manifests.items():
                dest = folder / path
                if not (dest.is_file() and dest.read_bytes() == data):
                    atomic.write_file(dest, data)
            atomic.write_file(folder / VOLUME_FILE, f"{number}\n".encode())

    def _volumes(self, to: Path, placed: list[Placed], count: int,
                 manifests: list[str]) -> list[Volume]:
        """Each volume's record for the index, its recovery files written (parity protects
        its blobs, parts and manifests: every volume carries every manifest)."""
        sizes = dict.fromkeys(range(1, count + 1), 0)
        files: dict[int, list[str]] = {n: list(manifests) for n in sizes}
        for blob in placed:
            for volume, _, size, path in blob.pieces:
                sizes[volume] += size
                files[volume].append(path)
        volumes = []
        for n in sizes:
            parity = ()
            if self.protect is not None:
                from .reading import parity_files

                parity = parity_files(to / volume_name(n),
                                      self.protect(to / volume_name(n), files[n]))
            volumes.append(Volume(n, sizes[n], parity))
        return volumes

    def _index(self, plan: _Plan, parts: dict, volumes: list[Volume], volume_size: int,
               holdings: Holdings, *, placed: list[Placed] | None = None) -> Index:
        if placed is not None:  # measuring: the part hashes are not known yet
            parts = {b.sha256: tuple(Part(v, p, s, "0" * 64) for v, _, s, p in b.pieces)
                     for b in placed}
        blobs = tuple(Blob(sha256, size, b3, lfs, parts[sha256])
                      for sha256, size, b3, lfs in plan.blobs)
        return Index(secrets.token_hex(16), time.time(), volume_size, tuple(volumes), blobs,
                     tuple(plan.entries), holdings.base,
                     self.parity_scheme if self.protect else None)

    @staticmethod
    def _sweep(to: Path, count: int, placed: list[Placed]) -> None:
        """Remove what an earlier run of another plan left in our volumes."""
        keep = {(v, p) for b in placed for v, _, _, p in b.pieces}
        for folder in to.glob(VOLUME_PREFIX + "*"):
            digits = folder.name[len(VOLUME_PREFIX):]
            number = int(digits) if digits.isascii() and digits.isdigit() else 0
            for sub in ("blobs", "parts"):
                for path in (folder / sub).rglob("*"):
                    rel = path.relative_to(folder).as_posix()
                    if path.is_file() and (number, rel) not in keep:
                        path.unlink()
            if number > count:
                shutil.rmtree(folder, ignore_errors=True)


def _written(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except FileNotFoundError:
        return False


class _Copier:
    """Ranges of a file read once, through blake3 hashers (in a thread) while they are written
    (in this one) to a new file around the page cache, as the store writes blobs
    (peer/store.py): 1.2-1.8 s a GiB here, where buffered writes and a final fsync took 3.7."""

    def __init__(self) -> None:
        self.ring = [mmap.mmap(-1, CHUNK) for _ in range(2)]  # page-aligned, for O_DIRECT
        self.turn = 0

    def copy(self, source, offset: int, size: int, hashers, progress, dest: Path | None = None):
        """`size` bytes of `source` from `offset` through `hashers`, and into `dest` if given."""
        if dest is None:
            self._run(source, offset, size, hashers, progress, None)
            return
        with atomic.replacing_path(dest) as (tmp, out):
            direct = open_direct(tmp)
            try:
                self._run(source, offset, size, hashers, progress, [out.fileno(), direct])
            finally:
                if direct is not None:
                    os.close(direct)

    def _run(self, source, offset: int, size: int, hashers, progress, fds) -> None:
        source.seek(offset)
        written = 0
        while written < size:
            view = memoryview(self.ring[self.turn % 2])[:min(CHUNK, size - written)]
            self.turn += 1
            got = source.readinto(view)
            if not got:
                raise BundleError(f"{getattr(source, 'name', 'a blob')} ended "
                                  f"{size - written} bytes early")
            view = view[:got]
            hashing = hash_threads().submit(_update, hashers, view)
            if fds is not None:
                _write(fds, view, written)
            hashing.result()
            written += got
            progress(got)


def _update(hashers, view) -> None:
    for h in hashers:
        h.update(view)


def _write(fds: list, view, offset: int) -> None:
    """Around the page cache where the buffer and offset allow, else through it."""
    if fds[1] is not None and direct_aligned(view, offset):
        try:
            if os.pwrite(fds[1], view, offset) == len(view):
                return
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            os.close(fds[1])  # this file system refuses O_DIRECT after all
            fds[1] = None
    pwrite_all(fds[0], view, offset)
