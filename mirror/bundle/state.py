"""What the far side holds, for an incremental bundle: an export-state file it wrote and
someone carried out (`weightswarm mirror export-state`), or an earlier bundle's index (where
nothing can be carried back out).

Either is signed, and the export checks the signature against the key inside it: what it may
believe from them is only what to leave out. A forged or stale one makes a bundle that lacks
blobs, and importing that bundle names every blob it lacks; it can never make an import believe
anything a trusted key did not sign.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from peer import atomic
from peer.manifest import ManifestError, check_snapshot_id, open_envelope, sign
from peer.paths import is_sha256
from peer.store import BlobStore

from ..catalog import Catalog
from .index import FORMAT, INDEX, Base, BundleError, digest, read_index

MAX_STATE = 256 * 1024 * 1024


@dataclass(frozen=True)
class Holdings:
    """Snapshots (hub, type, repo, commit) and blobs (sha256) the far side holds."""

    snapshots: frozenset[tuple[str, str, str, str]]
    blobs: frozenset[str]
    base: Base | None


NOTHING = Holdings(frozenset(), frozenset(), None)


def write_state(catalog: Catalog, store: BlobStore, key: Ed25519PrivateKey,
                dest: Path) -> tuple[int, int]:
    """Write what this mirror holds, signed, to `dest`; (snapshots, blobs) counted."""
    snapshots = []
    for repo in catalog.repos():
        snapshots += [[repo.hub, repo.type, repo.repo_id, c] for c in catalog.snapshots(repo)]
    blobs = sorted(r.sha256 for r in catalog.blobs() if store.has(r.sha256))
    body = msgpack.packb({"format": FORMAT, "kind": "bundle-state", "created": time.time(),
                          "snapshots": snapshots,
                          "blobs": b"".join(bytes.fromhex(h) for h in blobs)},
                         use_bin_type=True)
    atomic.write_file(Path(dest), sign("bundle-state", body, key))
    return len(snapshots), len(blobs)


def _signer(data: bytes) -> str:
    """The key an envelope says signed it (checked by `open_envelope` next)."""
    try:
        envelope = msgpack.unpackb(data, raw=False, max_bin_len=MAX_STATE, max_str_len=1024,
                                   max_array_len=16, max_map_len=16)
        return envelope["key"]
    except (ValueError, TypeError, KeyError, msgpack.exceptions.ExtraData,
            msgpack.exceptions.FormatError, msgpack.exceptions.StackError):
        raise BundleError("not a signed weightswarm file") from None


def _read(path: Path) -> bytes:
    try:
        if path.stat().st_size > MAX_STATE:
            raise BundleError(f"{path}: larger than {MAX_STATE} bytes")
        return path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{path} does not exist") from None


def read_state(path: Path) -> Holdings:
    """An export-state file, its signature checked."""
    data = _read(path)
    key = _signer(data)
    try:
        body, key = open_envelope("bundle-state", data, {key})
        snapshots = frozenset(_snapshot_ids(body["snapshots"]))
        packed = body["blobs"]
        created = float(body["created"])
    except (ManifestError, KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{path} is not a usable export-state file: {e}") from None
    if not isinstance(packed, bytes) or len(packed) % 32:
        raise BundleError(f"{path}: its blob list is not 32-byte hashes")
    blobs = frozenset(packed[i:i + 32].hex() for i in range(0, len(packed), 32))
    return Holdings(snapshots, blobs, Base("state", digest(data), key, created))


def _snapshot_ids(rows) -> list[tuple[str, str, str, str]]:
    out = []
    for row in rows:
        hub, type_, repo, commit = row
        check_snapshot_id(hub, type_, repo, commit)
        out.append((hub, type_, repo, commit))
    return out


def index_file(path: Path) -> Path:
    """The index of an earlier bundle: the file itself, a volume's, or a bundle's first."""
    path = Path(path)
    if path.is_file():
        return path
    if (path / INDEX).is_file():
        return path / INDEX
    for volume in sorted(path.glob("vol-*")):
        if (volume / INDEX).is_file():
            return volume / INDEX
    raise BundleError(f"{path}: no bundle index there (a volume's {INDEX}, or a bundle folder)")


def read_since(path: Path) -> Holdings:
    """An earlier bundle's index: the far side holds every blob of every snapshot in it."""
    where = index_file(path)
    data = _read(where)
    try:
        index, key = read_index(data, {_signer(data)})
    except ManifestError as e:
        raise BundleError(f"{where}: {e}") from None
    blobs = {h for s in index.snapshots for h in s.blob_hashes()}
    snapshots = {(s.hub, s.type, s.repo, s.commit) for s in index.snapshots}
    if not all(is_sha256(h) for h in blobs):
        raise BundleError(f"{where}: a snapshot's blob list is malformed")
    return Holdings(frozenset(snapshots), frozenset(blobs),
                    Base("bundle", digest(data), key, index.created))
