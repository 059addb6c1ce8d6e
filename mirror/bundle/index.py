"""A bundle's index: its layout over volumes, its encoding, and the checks of one read from
outside. Pure: no file is opened here.

Everything an index says is refused whole if any of it is malformed or hostile (a path with
`..`, absolute or with a NUL, a part that does not add up, a volume that does not exist): an
index that lies about one file is not trusted for the others, even when a trusted key signed
it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from peer.errors import BadRequest, WeightswarmError
from peer.keys import public_key_text
from peer.manifest import ManifestError, check_snapshot_id, open_envelope, sign
from peer.paths import check_repo_path, is_commit

from ..catalog import ACCESS_LEVELS

FORMAT = 1
INDEX = "index.msgpack"
#: a file naming its volume's number in each volume (the folder may be renamed on its medium)
VOLUME_FILE = "VOLUME"
VOLUME_PREFIX = "vol-"
#: FAT32 holds no file of 4 GiB or more: a larger blob is split into parts
MAX_FILE = 4 * 1024**3 - 1
#: volumes a bundle may have (vol-001 ... vol-9999)
MAX_VOLUMES = 9999


class BundleError(WeightswarmError):
    """A bundle that must not be believed, or cannot be used as it is."""

    status = 422


class HostileIndex(BundleError):
    """An index whose content no honest exporter writes."""


@dataclass(frozen=True)
class Part:
    """Bytes of a blob in one volume: all of it, or one part of a split blob."""

    volume: int
    path: str
    size: int
    blake3: str


@dataclass(frozen=True)
class Blob:
    sha256: str
    size: int
    blake3: str
    #: hashed as LFS at ingest (piece hashes for its torrent) or not (its git sha1)
    lfs: bool
    parts: tuple[Part, ...]

    @property
    def volumes(self) -> set[int]:
        return {p.volume for p in self.parts}


@dataclass(frozen=True)
class SnapshotEntry:
    hub: str
    type: str
    repo: str
    commit: str
    #: where its signed manifest is, in every volume, and the sha256 of that file
    manifest_path: str
    manifest_sha256: str
    #: signed ref statements (peer/manifest.py), refs written in full (refs/heads/main)
    refs: tuple[bytes, ...]
    access: str
    title: str
    parent: str | None
    #: every blob its files need (carried here or not), 32 bytes each: what a far side holds
    #: once it imported the snapshot, so a later `--since` bundle can skip them
    blobs: bytes = b""

    @property
    def name(self) -> str:
        return f"{self.repo}@{self.commit[:12]}"

    def blob_hashes(self) -> list[str]:
        return [self.blobs[i:i + 32].hex() for i in range(0, len(self.blobs), 32)]


@dataclass(frozen=True)
class ParityFile:
    path: str
    size: int
    blake3: str


@dataclass(frozen=True)
class Volume:
    number: int
    #: bytes of its blob files
    size: int
    #: recovery files protecting this volume's other files (mirror/parity.py), if any
    parity: tuple[ParityFile, ...] = ()


@dataclass(frozen=True)
class Base:
    """What the far side was known to hold when the bundle was made."""

    kind: str  # "state" (an export-state file) or "bundle" (an earlier bundle's index)
    sha256: str  # of that file
    key: str  # who signed it
    created: float


@dataclass(frozen=True)
class Index:
    id: str
    created: float
    volume_size: int
    volumes: tuple[Volume, ...]
    blobs: tuple[Blob, ...]
    snapshots: tuple[SnapshotEntry, ...]
    base: Base | None = None
    #: the erasure code of the parity files, e.g. "par2" (None: no parity)
    parity: str | None = None
    by_sha256: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.by_sha256.update({b.sha256: b for b in self.blobs})


# -- layout (pure) -------------------------------------------------------------------------------


def volume_name(number: int) -> str:
    return f"{VOLUME_PREFIX}{number:03d}"


def blob_path(sha256: str) -> str:
    return f"blobs/{sha256[:2]}/{sha256}"


def part_path(sha256: str, k: int) -> str:
    return f"parts/{sha256}.{k:03d}"


def manifest_path(signed: bytes) -> str:
    """Named by its own sha256, not by the repo: FAT32 folds case, and `Org/M` and `org/m`
    are two repos."""
    sha256 = hashlib.sha256(signed).hexdigest()
    return f"snapshots/{sha256[:2]}/{sha256}.msgpack"


@dataclass(frozen=True)
class Placed:
    """Where a blob's bytes go: (volume, offset in the blob, size, path) per file."""

    sha256: str
    size: int
    pieces: tuple[tuple[int, int, int, str], ...]


def lay_out(blobs: Iterable[tuple[str, int]], capacity: int,
            max_file: int = MAX_FILE) -> list[Placed]:
    """Blobs into volumes of `capacity` bytes, in order, each volume filled before the next
    (so a snapshot's blobs stay together and a volume completes whole snapshots): a blob that
    does not fit what is left goes to the next volume whole when it fits an empty one, and is
    split across volumes (and into files of at most `max_file` bytes) only when it does not."""
    if capacity <= 0:
        raise BundleError("the volume size leaves no room for blobs after the index")
    placed: list[Placed] = []
    volume, free = 1, capacity
    for sha256, size in blobs:
        if size <= min(capacity, max_file):
            if size > free:
                volume, free = volume + 1, capacity
            placed.append(Placed(sha256, size, ((volume, 0, size, blob_path(sha256)),)))
            free -= size
            continue
        pieces, offset = [], 0
        while offset < size:
            if free == 0:
                volume, free = volume + 1, capacity
            take = min(size - offset, free, max_file)
            pieces.append((volume, offset, take, part_path(sha256, len(pieces) + 1)))
            offset += take
            free -= take
        placed.append(Placed(sha256, size, tuple(pieces)))
    return placed


def volume_count(placed: list[Placed]) -> int:
    return max((p[0] for b in placed for p in b.pieces), default=1)


# -- encoding ------------------------------------------------------------------------------------


def payload(index: Index) -> bytes:
    base = index.base
    return msgpack.packb({
        "format": FORMAT, "kind": "bundle", "id": index.id, "created": index.created,
        "volume_size": index.volume_size, "parity": index.parity,
        "volumes": [[v.number, v.size, [[p.path, p.size, _bin(p.blake3)] for p in v.parity]]
                    for v in index.volumes],
        "blobs": [[_bin(b.sha256), b.size, _bin(b.blake3), b.lfs,
                   [[p.volume, p.path, p.size, _bin(p.blake3)] for p in b.parts]]
                  for b in index.blobs],
        "snapshots": [[s.hub, s.type, s.repo, s.commit, s.manifest_path, _bin(s.manifest_sha256),
                       list(s.refs), s.access, s.title, s.parent, s.blobs]
                      for s in index.snapshots],
        "base": [base.kind, _bin(base.sha256), base.key, base.created] if base else None,
    }, use_bin_type=True)


def _bin(hex64: str) -> bytes:
    """Hashes travel as their 32 bytes: the index of a large bundle is half the size."""
    return bytes.fromhex(hex64)


def sign_index(index: Index, key: Ed25519PrivateKey) -> bytes:
    data = sign("bundle", payload(index), key)
    read_index(data, {public_key_text(key)})  # what we write, we could read back
    return data


# -- reading (everything checked) ----------------------------------------------------------------


def digest(data: bytes) -> str:
    """A bundle's identity: the sha256 of its signed index."""
    return hashlib.sha256(data).hexdigest()


def read_index(data: bytes, trusted: set[str] | frozenset[str]) -> tuple[Index, str]:
    """The index in `data`, its signature checked against `trusted` and every field checked;
    and the key that signed it. `ManifestError` (unknown key, bad signature) or `HostileIndex`."""
    body, key = open_envelope("bundle", data, trusted)
    try:
        return _parse(body), key
    except (TypeError, ValueError, KeyError, IndexError) as e:
        if isinstance(e, BadRequest):
            raise HostileIndex(f"the index is refused: {e}") from None
        raise HostileIndex(f"the index is malformed: {e!r}") from None


def _parse(body: dict) -> Index:
    volumes = tuple(_volume(v) for v in body["volumes"])
    if not 1 <= len(volumes) <= MAX_VOLUMES or [v.number for v in volumes] != \
            list(range(1, len(volumes) + 1)):
        raise HostileIndex("the index's volumes are not numbered 1 to N")
    blobs = tuple(_blob(b, len(volumes)) for b in body["blobs"])
    snapshots = tuple(_snapshot(s) for s in body["snapshots"])
    _unique([b.sha256 for b in blobs], "blob")
    _unique([(p.volume, p.path) for b in blobs for p in b.parts]
            + [(v.number, p.path) for v in volumes for p in v.parity]
            + [(0, s.manifest_path) for s in snapshots], "file")
    _unique([(s.hub, s.type, s.repo, s.commit) for s in snapshots], "snapshot")
    base = body["base"]
    return Index(
        id=_str(body["id"], "id"), created=_number(body["created"]),
        volume_size=_count(body["volume_size"]), volumes=volumes, blobs=blobs,
        snapshots=snapshots, base=_base(base) if base is not None else None,
        parity=None if body["parity"] is None else _str(body["parity"], "parity"),
    )


def _unique(items: list, what: str) -> None:
    if len(set(items)) != len(items):
        raise HostileIndex(f"the index names a {what} twice")


def _str(value, what: str) -> str:
    if not isinstance(value, str):
        raise HostileIndex(f"{what} must be text")
    return value


def _count(value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 60:
        raise HostileIndex(f"{value!r} is not a byte count")
    return value


def _number(value) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise HostileIndex(f"{value!r} is not a number")
    return float(value)


def _hex64(value, what: str) -> str:
    """A 32-byte hash of the index, as the 64 lower-case hex used everywhere else."""
    if not isinstance(value, bytes) or len(value) != 32:
        raise HostileIndex(f"{what} is not a 32-byte hash")
    return value.hex()


def _path(value) -> str:
    return check_repo_path(_str(value, "a path"))


def _volume(v) -> Volume:
    number, size, parity = v
    return Volume(_count(number), _count(size),
                  tuple(ParityFile(_path(p), _count(s), _hex64(h, "a parity file's blake3"))
                        for p, s, h in parity))


def _blob(b, volumes: int) -> Blob:
    sha256, size, blake3, lfs, parts = b
    if not isinstance(lfs, bool):
        raise HostileIndex(f"blob {sha256!r}: lfs must be true or false")
    blob = Blob(_hex64(sha256, "a blob's sha256"), _count(size), _hex64(blake3, "blake3"),
                lfs, tuple(_part(p, volumes) for p in parts))
    if not blob.parts or sum(p.size for p in blob.parts) != blob.size:
        raise HostileIndex(f"blob {sha256}: its parts do not add up to its {size} bytes")
    return blob


def _part(p, volumes: int) -> Part:
    volume, path, size, blake3 = p
    if not isinstance(volume, int) or not 1 <= volume <= volumes:
        raise HostileIndex(f"a part in volume {volume!r}, of {volumes}")
    return Part(volume, _path(path), _count(size), _hex64(blake3, "a part's blake3"))


def _snapshot(s) -> SnapshotEntry:
    hub, type_, repo, commit, path, sha256, refs, access, title, parent, blobs = s
    try:
        check_snapshot_id(hub, type_, repo, commit)
    except ManifestError as e:
        raise HostileIndex(f"a snapshot of the index: {e}") from None
    if access not in ACCESS_LEVELS:
        raise HostileIndex(f"{repo}: access {access!r}")
    if not isinstance(refs, list) or not all(isinstance(r, bytes) for r in refs):
        raise HostileIndex(f"{repo}: ref statements must be signed envelopes")
    if parent is not None and not is_commit(parent):
        raise HostileIndex(f"{repo}: parent {parent!r} is not a commit")
    if not isinstance(blobs, bytes) or len(blobs) % 32:
        raise HostileIndex(f"{repo}: its blob list is not 32-byte hashes")
    return SnapshotEntry(hub, type_, repo, commit, _path(path), _hex64(sha256, "a manifest's sha256"),
                         tuple(refs), access, _str(title, "title"), parent, blobs)


def _base(b) -> Base:
    kind, sha256, key, created = b
    if kind not in ("state", "bundle"):
        raise HostileIndex(f"a base of kind {kind!r}")
    return Base(kind, _hex64(sha256, "the base's sha256"), _str(key, "the base's key"),
                _number(created))
