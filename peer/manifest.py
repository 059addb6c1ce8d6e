"""Signed manifests and ref statements (DESIGN.md section 2; issue 6, item 2).

A manifest is an immutable snapshot: hub, type, repo, commit and every file's path, size,
sha256, git sha1, LFS flag and, for large blobs, the torrent's info-hash. A ref statement says
which commit a ref names, with the mirror's sequence number, so a reader can refuse a replayed
or older one. Both travel as a msgpack envelope {payload, key, sig}: the payload's bytes are
signed with the mirror's ed25519 key under a domain tag, so a signature over one kind of
document can never pass for another.

Everything a reader takes from an envelope is checked before use: the signature against keys
it trusts, then every field (hostile or repeated paths, malformed sizes and hashes).
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .errors import BadRequest, WeightswarmError
from .hfformat import REPO_TYPES
from .hubs import HUBS
from .keys import parse_public_key, public_key_text
from .paths import check_repo_id, check_repo_path, check_revision, is_commit, is_sha256

FORMAT = 1
MAX_ENVELOPE = 64 * 1024 * 1024
MAX_FILES = 1_000_000
_DOMAIN = {"manifest": b"weightswarm manifest v1\0", "ref": b"weightswarm ref statement v1\0",
           # a bundle's index and the state an air-gapped mirror carries back (mirror/bundle/)
           "bundle": b"weightswarm bundle index v1\0",
           "bundle-state": b"weightswarm bundle state v1\0",
           # a mirror's catalog feed for the index (mirror/feed.py)
           "catalog": b"weightswarm catalog feed v1\0",
           # a mirror's registration with the index (tracker/index.py)
           "register": b"weightswarm mirror registration v1\0",
           # the index's answers: where a revision is, and the mirror keys it accepts
           # (peer/locate.py)
           "locate": b"weightswarm locate answer v1\0",
           "keys": b"weightswarm accepted keys v1\0",
           # the private-swarm keys a mirror issued with its tokens, for its tracker
           "tracker-keys": b"weightswarm tracker keys v1\0"}


class ManifestError(WeightswarmError):
    """A manifest or ref statement that must not be believed."""

    status = 422


class BadSignature(ManifestError):
    pass


class UnknownKey(ManifestError):
    pass


class StaleRef(ManifestError):
    pass


@dataclass(frozen=True)
class ManifestFile:
    path: str
    size: int
    sha256: str
    git_sha1: str
    lfs: bool
    info_hash: str | None = None


@dataclass(frozen=True)
class Manifest:
    hub: str
    type: str
    repo: str
    commit: str
    files: tuple[ManifestFile, ...]


@dataclass(frozen=True)
class RefStatement:
    hub: str
    type: str
    repo: str
    ref: str
    commit: str
    seq: int


# -- writing --------------------------------------------------------------------------------------


def _pack(value) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def manifest_payload(m: Manifest) -> bytes:
    """Canonical bytes: files sorted by the UTF-8 bytes of their path, fixed field order."""
    files = sorted(m.files, key=lambda f: f.path.encode("utf-8"))
    return _pack({
        "format": FORMAT, "kind": "manifest", "hub": m.hub, "type": m.type, "repo": m.repo,
        "commit": m.commit,
        "files": [[f.path, f.size, f.sha256, f.git_sha1, f.lfs, f.info_hash] for f in files],
    })


def ref_payload(r: RefStatement) -> bytes:
    return _pack({"format": FORMAT, "kind": "ref", "hub": r.hub, "type": r.type, "repo": r.repo,
                  "ref": r.ref, "commit": r.commit, "seq": r.seq})


def sign(kind: str, payload: bytes, key: Ed25519PrivateKey) -> bytes:
    return _pack({"payload": payload, "key": public_key_text(key),
                  "sig": key.sign(_DOMAIN[kind] + payload)})


def sign_manifest(m: Manifest, key: Ed25519PrivateKey) -> bytes:
    validate_manifest(m)
    return sign("manifest", manifest_payload(m), key)


def sign_ref(r: RefStatement, key: Ed25519PrivateKey) -> bytes:
    validate_ref(r)
    return sign("ref", ref_payload(r), key)


# -- reading --------------------------------------------------------------------------------------


def _unpack(data: bytes):
    if len(data) > MAX_ENVELOPE:
        raise ManifestError(f"larger than {MAX_ENVELOPE} bytes")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=MAX_ENVELOPE,
                               max_str_len=1 << 20, max_array_len=MAX_FILES,
                               max_map_len=64)
    except (ValueError, msgpack.exceptions.ExtraData, msgpack.exceptions.FormatError,
            msgpack.exceptions.StackError, TypeError) as e:
        raise ManifestError(f"not a well-formed envelope: {e}") from None


def open_envelope(kind: str, data: bytes, trusted: set[str] | frozenset[str]) -> tuple[dict, str]:
    """The verified payload (a dict) and the key that signed it."""
    envelope = _unpack(data)
    if not isinstance(envelope, dict) or set(envelope) != {"payload", "key", "sig"}:
        raise ManifestError("an envelope holds exactly payload, key and sig")
    payload, key_text, sig = envelope["payload"], envelope["key"], envelope["sig"]
    if not isinstance(payload, bytes) or not isinstance(sig, bytes) or not isinstance(key_text, str):
        raise ManifestError("payload and sig are bytes, key is text")
    if key_text not in trusted:
        raise UnknownKey(f"signed by {key_text[:80]}, a key this reader does not trust")
    try:
        parse_public_key(key_text).verify(sig, _DOMAIN[kind] + payload)
    except (InvalidSignature, ValueError):
        raise BadSignature(f"the {kind}'s signature does not verify with {key_text}") from None
    body = _unpack(payload)
    if not isinstance(body, dict) or body.get("kind") != kind or body.get("format") != FORMAT:
        raise ManifestError(f"not a format-{FORMAT} {kind}")
    return body, key_text


def _text(body: dict, name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise ManifestError(f"{name} must be text")
    return value


def _int(value, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 60:
        raise ManifestError(f"{what} must be a non-negative integer, got {str(value)[:40]}")
    return value


def _head(body: dict) -> tuple[str, str, str, str]:
    hub, type_, repo, commit = (_text(body, n) for n in ("hub", "type", "repo", "commit"))
    return hub, type_, repo, commit


def _check_head(hub: str, type_: str, repo: str, commit: str) -> None:
    if hub not in HUBS:
        raise ManifestError(f"unknown hub {hub!r}")
    if type_ not in REPO_TYPES:
        raise ManifestError(f"unknown repo type {type_!r}")
    try:
        check_repo_id(repo)
    except BadRequest as e:
        raise ManifestError(str(e)) from None
    if not is_commit(commit):
        raise ManifestError(f"commit {commit[:64]!r} is not 40 hex")


def check_snapshot_id(hub: str, type_: str, repo: str, commit: str) -> None:
    """A snapshot's (hub, type, repo, commit) from outside, checked: `ManifestError` if not."""
    _check_head(hub, type_, repo, commit)


def validate_manifest(m: Manifest) -> Manifest:
    _check_head(m.hub, m.type, m.repo, m.commit)
    seen: set[str] = set()
    for f in m.files:
        try:
            check_repo_path(f.path)
        except BadRequest as e:
            raise ManifestError(f"hostile path: {e}") from None
        if f.path in seen:
            raise ManifestError(f"{f.path!r} is listed twice")
        seen.add(f.path)
        _int(f.size, f"{f.path}: size")
        if not is_sha256(f.sha256):
            raise ManifestError(f"{f.path}: sha256 is not 64 hex")
        if not is_commit(f.git_sha1):
            raise ManifestError(f"{f.path}: git sha1 is not 40 hex")
        if not isinstance(f.lfs, bool):
            raise ManifestError(f"{f.path}: lfs must be true or false")
        if f.info_hash is not None and not is_commit(f.info_hash):
            raise ManifestError(f"{f.path}: info-hash is not 40 hex")
    return m


def read_manifest(data: bytes, trusted: set[str] | frozenset[str]) -> tuple[Manifest, str]:
    body, key = open_envelope("manifest", data, trusted)
    files = body.get("files")
    if not isinstance(files, list):
        raise ManifestError("files must be a list")
    parsed = []
    for entry in files:
        if not isinstance(entry, list) or len(entry) != 6:
            raise ManifestError("each file is [path, size, sha256, git sha1, lfs, info-hash]")
        path, size, sha256, git_sha1, lfs, info_hash = entry
        if not all(isinstance(v, str) for v in (path, sha256, git_sha1)):
            raise ManifestError("path and hashes must be text")
        parsed.append(ManifestFile(path, size, sha256, git_sha1, lfs, info_hash))
    return validate_manifest(Manifest(*_head(body), files=tuple(parsed))), key


def validate_ref(r: RefStatement) -> RefStatement:
    _check_head(r.hub, r.type, r.repo, r.commit)
    try:
        check_revision(r.ref)
    except BadRequest as e:
        raise ManifestError(str(e)) from None
    _int(r.seq, "sequence number")
    return r


def read_ref(data: bytes, trusted: set[str] | frozenset[str]) -> tuple[RefStatement, str]:
    body, key = open_envelope("ref", data, trusted)
    hub, type_, repo, commit = _head(body)
    statement = RefStatement(hub, type_, repo, _text(body, "ref"), commit, body.get("seq"))
    return validate_ref(statement), key


class RefLedger:
    """What a reader has believed so far: the newest sequence number per mirror key and ref.
    An older statement is refused (a replay, or a mirror rolled back); the same one again is
    fine; the same number naming another commit is refused (a mirror that lies)."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str, str, str, str], tuple[int, str]] = {}

    def accept(self, statement: RefStatement, key: str) -> RefStatement:
        slot = (key, statement.hub, statement.type, statement.repo, statement.ref)
        before = self.seen.get(slot)
        if before is not None:
            seq, commit = before
            if statement.seq < seq:
                raise StaleRef(f"{statement.repo}@{statement.ref}: sequence {statement.seq} is "
                               f"older than {seq}, already seen")
            if statement.seq == seq and statement.commit != commit:
                raise StaleRef(f"{statement.repo}@{statement.ref}: sequence {seq} names two "
                               f"commits")
        self.seen[slot] = (statement.seq, statement.commit)
        return statement
