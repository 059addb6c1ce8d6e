"""Finding a bundle's volumes and checking them: what `verify-bundle` does, and what an import
does first.

Each volume stands alone: it carries the signed index, which is checked against the trusted
keys before anything else is read, and every file it names is looked for inside that volume
only (peer/paths.py `resolve_inside`). Volumes of one bundle carry the same index, byte for
byte; volumes of several bundles given together are told apart by it.

Parity (mirror/parity.py, written beside this) protects a volume as a folder of files: the
index lists each volume's recovery files (`Volume.parity`, checked here like the others), and
`verify` hands back the problems of each volume by file, what a repair works from.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from peer.errors import BadRequest
from peer.hashing import blake3_file
from peer.manifest import ManifestError
from peer.paths import ascii_digits, resolve_inside

from .index import (
    INDEX,
    VOLUME_FILE,
    VOLUME_PREFIX,
    Blob,
    BundleError,
    Index,
    ParityFile,
    Part,
    digest,
    read_index,
)

log = logging.getLogger(__name__)

#: the largest index read (a million blobs fit)
MAX_INDEX = 64 * 1024 * 1024


@dataclass
class Bundle:
    index: Index
    key: str
    digest: str
    #: the volumes given, by number
    volumes: dict[int, Path] = field(default_factory=dict)

    @property
    def missing_volumes(self) -> list[int]:
        return [v.number for v in self.index.volumes if v.number not in self.volumes]

    def file(self, volume: int, path: str) -> Path:
        """A file of the index inside its volume (never outside it)."""
        return resolve_inside(self.volumes[volume], path)

    def has(self, blob: Blob) -> bool:
        return blob.volumes <= set(self.volumes)

    def snapshots_of(self, sha256: str) -> list[str]:
        return [s.name for s in self.index.snapshots if bytes.fromhex(sha256) in
                {s.blobs[i:i + 32] for i in range(0, len(s.blobs), 32)}]


@dataclass(frozen=True)
class Problem:
    """A file of a volume that is not as the index says."""

    volume: int
    path: str
    what: str
    sha256: str | None = None

    def describe(self, bundle: Bundle) -> str:
        where = f"{volume_label(self.volume)}/{self.path}"
        repos = ", ".join(bundle.snapshots_of(self.sha256)) if self.sha256 else ""
        return f"{where}: {self.what}" + (f" (needed by {repos})" if repos else "")


def volume_label(number: int) -> str:
    return f"{VOLUME_PREFIX}{number:03d}"


def volume_folders(paths: list[Path]) -> list[Path]:
    """The volume folders named: each path is a volume (it has an index, or a vol-* name) or a
    bundle folder holding vol-* volumes."""
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise BundleError(f"{path} is not a folder")
        if (path / INDEX).exists() or (path / VOLUME_FILE).exists() or \
                path.name.startswith(VOLUME_PREFIX):
            found.append(path)
            continue
        inside = sorted(p for p in path.glob(VOLUME_PREFIX + "*") if p.is_dir())
        if not inside:
            raise BundleError(f"{path}: neither a bundle (vol-* folders) nor a volume")
        found += inside
    return found


def _number(folder: Path) -> int | None:
    try:
        number = ascii_digits((folder / VOLUME_FILE).read_text().strip())
    except (FileNotFoundError, UnicodeDecodeError):
        number = None
    if number is None and folder.name.startswith(VOLUME_PREFIX):
        number = ascii_digits(folder.name[len(VOLUME_PREFIX):])
    return number


def open_bundles(paths: list[Path], trusted: frozenset[str]) -> tuple[list[Bundle], list[str]]:
    """The bundles the folders hold, their indexes believed; and one line for each volume
    that cannot be used (a cut-off export: no index yet)."""
    bundles: dict[str, Bundle] = {}
    unusable = []
    for folder in volume_folders(paths):
        index_path = folder / INDEX
        if not index_path.is_file():
            unusable.append(f"{folder}: no {INDEX}: an export that was cut off (run it again "
                            f"to finish the bundle)")
            continue
        if index_path.stat().st_size > MAX_INDEX:
            raise BundleError(f"{index_path}: larger than {MAX_INDEX} bytes")
        data = index_path.read_bytes()
        key = digest(data)
        if key not in bundles:
            try:
                index, signer = read_index(data, trusted)
            except ManifestError as e:
                raise BundleError(f"{index_path}: {e}") from None
            bundles[key] = Bundle(index, signer, key)
        bundle = bundles[key]
        number = _number(folder)
        if number is None or not 1 <= number <= len(bundle.index.volumes):
            raise BundleError(f"{folder}: not a volume of its index ({len(bundle.index.volumes)} "
                              f"volumes)")
        bundle.volumes.setdefault(number, folder)
    return list(bundles.values()), unusable


# -- checking files ------------------------------------------------------------------------------


def check_part(bundle: Bundle, blob_sha256: str | None, part: Part | ParityFile, volume: int,
               progress: Callable[[int], None]) -> Problem | None:
    """None when the file is there with the size and blake3 the index gives."""
    try:
        path = bundle.file(volume, part.path)
        size = path.stat().st_size
    except FileNotFoundError:
        return Problem(volume, part.path, "missing", blob_sha256)
    except BadRequest as e:
        return Problem(volume, part.path, str(e), blob_sha256)
    if size != part.size:
        return Problem(volume, part.path, f"{size} bytes, the index says {part.size} (truncated?)",
                       blob_sha256)
    actual = blake3_file(path)
    progress(size)
    if actual != part.blake3:
        return Problem(volume, part.path, f"blake3 {actual[:16]}..., the index says "
                       f"{part.blake3[:16]}... (damaged)", blob_sha256)
    return None


def parity_files(folder: Path, names: list[str]) -> tuple[ParityFile, ...]:
    """The index's record of recovery files a parity tool wrote into a volume."""
    out = []
    for name in names:
        path = resolve_inside(folder, name)
        out.append(ParityFile(name, path.stat().st_size, blake3_file(path)))
    return tuple(out)


@dataclass
class Verified:
    bundle: Bundle
    problems: list[Problem]
    #: snapshots whose every carried blob is in the volumes given and intact
    complete: list[str]
    #: snapshots that wait for volumes not given
    waiting: list[str]
    bytes: int


def verify(bundle: Bundle, *, progress: bool = False) -> Verified:
    """Every file of the volumes given, against the index (blake3: the fast hash the index
    signs for this); and which snapshots those volumes complete."""
    blobs = [b for b in bundle.index.blobs if b.volumes & set(bundle.volumes)]
    total = sum(p.size for b in blobs for p in b.parts if p.volume in bundle.volumes)
    problems: list[Problem] = []
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="verify",
              disable=not progress, leave=False) as bar:
        for blob in blobs:
            for part in blob.parts:
                if part.volume in bundle.volumes:
                    problem = check_part(bundle, blob.sha256, part, part.volume, bar.update)
                    problems += [problem] if problem else []
        for number in bundle.volumes:  # recovery files, once parity writes them
            for recovery in bundle.index.volumes[number - 1].parity:
                problem = check_part(bundle, None, recovery, number, bar.update)
                problems += [problem] if problem else []
        problems += _check_manifests(bundle)
    bad = {p.sha256 for p in problems if p.sha256}
    bad_manifests = {p.path for p in problems if p.sha256 is None}
    complete, waiting = [], []
    for s in bundle.index.snapshots:
        carried = [bundle.index.by_sha256[h] for h in s.blob_hashes() if h in bundle.index.by_sha256]
        if s.manifest_path in bad_manifests or any(b.sha256 in bad for b in carried):
            continue
        (complete if all(bundle.has(b) for b in carried) else waiting).append(s.name)
    return Verified(bundle, problems, complete, waiting, total)


def _check_manifests(bundle: Bundle) -> list[Problem]:
    """Every volume's copy of every manifest: there, and with the sha256 the index gives."""
    problems = []
    for number in bundle.volumes:
        for s in bundle.index.snapshots:
            try:
                data = bundle.file(number, s.manifest_path).read_bytes()
            except (FileNotFoundError, BadRequest):
                problems.append(Problem(number, s.manifest_path, f"manifest of {s.name} missing"))
                continue
            if hashlib.sha256(data).hexdigest() != s.manifest_sha256:
                problems.append(Problem(number, s.manifest_path, f"manifest of {s.name} damaged"))
    return problems
