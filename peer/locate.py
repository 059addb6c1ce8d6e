"""What the index signs for the peers and mirrors that ask it (issue 18, items 4 and 5):
a `locate` answer (which mirrors hold a revision, nearest first) and the list of mirror keys
it accepts. Both are envelopes of peer/manifest.py under their own domains ("locate",
"keys"), signed by the index's key; the index (tracker/index.py) builds them with the
`*_payload` functions here, and a reader checks them with `read_*`.

A reader believes a locate answer only for where to ask: the mirrors' manifests are still
checked against keys the reader trusts. The key list is what delegates trust: a reader that
trusts the index's key believes manifests signed by the keys the list names (never a key that
only an unsigned answer, or a locate answer, named).
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from urllib.parse import urlsplit

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .errors import BadRequest
from .hfformat import REPO_TYPES
from .hubs import HUBS
from .keys import parse_public_key, public_key_text
from .manifest import FORMAT, ManifestError, open_envelope, sign
from .paths import check_repo_id, check_revision, is_commit, is_sha256

#: where a mirror stands for the asking address, nearest first
NEARNESS = ("netblock", "site", "region", "other")
MAX_LOCATED = 1000
MAX_KEYS = 100_000
#: an answer older than this is not believed (a replayed locate or key list)
MAX_AGE = 3600.0
CLOCK_SKEW = 60.0

_LOCATE_FIELDS = frozenset({"format", "kind", "key", "hub", "type", "repo", "revision",
                            "commit", "address", "timestamp", "mirrors"})
_MIRROR_FIELDS = frozenset({"key", "name", "base_url", "bittorrent", "site", "region",
                            "commit", "manifest_sha256", "behind", "near", "demoted", "stale",
                            "last_verified"})
_KEYS_FIELDS = frozenset({"format", "kind", "key", "timestamp", "mirrors"})


@dataclass(frozen=True)
class LocatedMirror:
    key: str
    name: str | None
    base_url: str
    bittorrent: str | None
    site: str | None
    region: str | None
    #: the commit this mirror holds for the revision asked
    commit: str
    manifest_sha256: str
    #: holds an older commit for the ref than the newest any mirror holds
    behind: bool
    #: one of NEARNESS
    near: str
    #: failed its last spot-check, or not polled for a while: ordered last
    demoted: bool
    stale: bool
    last_verified: float | None


@dataclass(frozen=True)
class Located:
    key: str
    hub: str
    type: str
    repo: str
    revision: str
    #: the newest commit any accepted mirror holds for the revision (None: nobody holds it)
    commit: str | None
    address: str | None
    timestamp: float
    mirrors: tuple[LocatedMirror, ...]


@dataclass(frozen=True)
class AcceptedKey:
    key: str
    name: str | None
    base_url: str | None


# -- building (the index) -----------------------------------------------------------------------


def mirror_entry(m: LocatedMirror) -> dict:
    return {"key": m.key, "name": m.name, "base_url": m.base_url, "bittorrent": m.bittorrent,
            "site": m.site, "region": m.region, "commit": m.commit,
            "manifest_sha256": m.manifest_sha256, "behind": m.behind, "near": m.near,
            "demoted": m.demoted, "stale": m.stale, "last_verified": m.last_verified}


def sign_located(located: Located, key: Ed25519PrivateKey) -> bytes:
    payload = {"format": FORMAT, "kind": "locate", "key": public_key_text(key),
               "hub": located.hub, "type": located.type, "repo": located.repo,
               "revision": located.revision, "commit": located.commit,
               "address": located.address, "timestamp": located.timestamp,
               "mirrors": [mirror_entry(m) for m in located.mirrors]}
    return sign("locate", msgpack.packb(payload, use_bin_type=True), key)


def sign_key_list(keys: list[AcceptedKey], key: Ed25519PrivateKey, now: float) -> bytes:
    payload = {"format": FORMAT, "kind": "keys", "key": public_key_text(key), "timestamp": now,
               "mirrors": [{"key": k.key, "name": k.name, "base_url": k.base_url} for k in keys]}
    return sign("keys", msgpack.packb(payload, use_bin_type=True), key)


# -- reading (peers, mirrors) -----------------------------------------------------------------


def read_located(data: bytes, index_key: str, *, now: float, hub: str, type: str, repo: str,
                 revision: str) -> Located:
    """A locate answer checked whole: signed by `index_key`, fresh, for exactly the repo and
    revision asked, every field well-formed (`ManifestError` says what is not)."""
    body, key = open_envelope("locate", data, {index_key})
    _fields(body, _LOCATE_FIELDS, "a locate answer")
    if body["key"] != key:
        raise ManifestError("the locate answer names another key than the one that signed it")
    asked = (hub, type, repo, revision)
    if (body["hub"], body["type"], body["repo"], body["revision"]) != asked:
        raise ManifestError(f"the locate answer is for {body['hub']}/{body['type']}/"
                            f"{body['repo']}@{body['revision']}, not the revision asked")
    stamp = _fresh(body["timestamp"], now)
    commit = body["commit"]
    if commit is not None and not is_commit(commit):
        raise ManifestError("commit must be 40 hex or null")
    address = body["address"]
    if address is not None:
        _address(address)
    mirrors = body["mirrors"]
    if not isinstance(mirrors, list) or len(mirrors) > MAX_LOCATED:
        raise ManifestError(f"mirrors must be a list of at most {MAX_LOCATED}")
    found = tuple(_located_mirror(m) for m in mirrors)
    _consistent(revision, commit, found)
    return Located(key, hub, type, repo, revision, commit, address, stamp, found)


def _consistent(revision: str, commit: str | None, mirrors: tuple[LocatedMirror, ...]) -> None:
    """What an answer says of the commit agrees with itself: mirrors only beside a newest
    commit, and an answer for a commit only of mirrors holding that very commit."""
    if commit is None and mirrors:
        raise ManifestError("the locate answer lists mirrors yet says nobody holds the revision")
    if is_commit(revision) and (commit not in (None, revision)
                                or any(m.commit != revision for m in mirrors)):
        raise ManifestError(f"asked for commit {revision}, the answer names another commit")


def read_key_list(data: bytes, index_key: str, *, now: float,
                  max_age: float | None = MAX_AGE) -> list[AcceptedKey]:
    """The index's signed list of the mirror keys it accepts, checked whole. `max_age` None:
    however old (a list kept on disk, read again only to name the keys of what this machine
    already verified and holds)."""
    body, key = open_envelope("keys", data, {index_key})
    _fields(body, _KEYS_FIELDS, "a key list")
    if body["key"] != key:
        raise ManifestError("the key list names another key than the one that signed it")
    _fresh(body["timestamp"], now, max_age)
    entries = body["mirrors"]
    if not isinstance(entries, list) or len(entries) > MAX_KEYS:
        raise ManifestError(f"mirrors must be a list of at most {MAX_KEYS}")
    out = []
    for entry in entries:
        if not isinstance(entry, dict) or set(entry) != {"key", "name", "base_url"}:
            raise ManifestError("each accepted key is {key, name, base_url}")
        base_url = entry["base_url"]
        out.append(AcceptedKey(_key(entry["key"]), _optional_text(entry["name"], "name"),
                               None if base_url is None else _base_url(base_url)))
    return out


def _located_mirror(entry) -> LocatedMirror:
    if not isinstance(entry, dict):
        raise ManifestError("each located mirror is a map")
    _fields(entry, _MIRROR_FIELDS, "a located mirror")
    base_url = _base_url(entry["base_url"])
    if not is_commit(entry["commit"]) or not is_sha256(entry["manifest_sha256"]):
        raise ManifestError("a located mirror's commit is 40 hex, its manifest_sha256 64 hex")
    if entry["near"] not in NEARNESS:
        raise ManifestError(f"near must be one of {', '.join(NEARNESS)}")
    behind, demoted, stale = (entry[n] for n in ("behind", "demoted", "stale"))
    if not all(isinstance(f, bool) for f in (behind, demoted, stale)):
        raise ManifestError("behind, demoted and stale are true or false")
    verified = entry["last_verified"]
    if verified is not None and not _seconds(verified):
        raise ManifestError("last_verified is seconds or null")
    return LocatedMirror(
        _key(entry["key"]), _optional_text(entry["name"], "name"), base_url,
        _optional_text(entry["bittorrent"], "bittorrent"),
        _optional_text(entry["site"], "site"), _optional_text(entry["region"], "region"),
        entry["commit"], entry["manifest_sha256"], behind, entry["near"], demoted, stale,
        None if verified is None else float(verified))


def check_locate_target(hub: str, type_: str, repo: str, revision: str) -> None:
    """What a locate asks for, from outside: `BadRequest` if it is not a repo and revision."""
    if hub not in HUBS:
        raise BadRequest(f"unknown hub {hub[:40]!r}: one of {', '.join(HUBS)}")
    if type_ not in REPO_TYPES:
        raise BadRequest(f"unknown repo type {type_[:40]!r}: one of {', '.join(REPO_TYPES)}")
    check_repo_id(repo)
    check_revision(revision)


def _fields(body: dict, expected: frozenset[str], what: str) -> None:
    if set(body) != expected:
        raise ManifestError(f"{what} holds exactly {', '.join(sorted(expected))}")


def _seconds(value) -> bool:
    """A finite number (NaN compares false with everything: it would pass any bound)."""
    return not isinstance(value, bool) and isinstance(value, int | float) \
        and math.isfinite(value)


def _fresh(stamp, now: float, max_age: float | None = MAX_AGE) -> float:
    if not _seconds(stamp):
        raise ManifestError("timestamp must be seconds since the epoch")
    if max_age is not None and stamp < now - max_age:
        raise ManifestError(f"a stale answer: made {now - stamp:.0f} s ago (at most "
                            f"{max_age:.0f} s)")
    if stamp > now + CLOCK_SKEW:
        raise ManifestError(f"an answer from the future: {stamp - now:.0f} s ahead")
    return float(stamp)


def _key(value) -> str:
    try:
        parse_public_key(value)
    except (ValueError, TypeError):
        raise ManifestError(f"{str(value)[:80]!r} is not an ed25519 key") from None
    return value


def _optional_text(value, what: str) -> str | None:
    if value is not None and (not isinstance(value, str) or len(value) > 512):
        raise ManifestError(f"{what} must be text of at most 512 characters, or null")
    return value


def _address(value) -> None:
    try:
        if not isinstance(value, str):  # ipaddress takes ints and packed bytes too
            raise TypeError(type(value).__name__)
        ipaddress.ip_address(value)
    except (ValueError, TypeError):
        raise ManifestError(f"address {str(value)[:64]!r} is not an IP address") from None


def _base_url(value) -> str:
    """An http(s) base URL a reader may put paths after: a host, no query, no fragment, no
    space or control character; without its trailing slash."""
    bad = ManifestError(f"base_url {str(value)[:80]!r} is not an http(s) base URL")
    if not isinstance(value, str) or len(value) > 512 \
            or any(c <= " " or c == "\x7f" or c == "\\" for c in value):
        raise bad
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises ValueError for a port out of range)
    except ValueError:
        raise bad from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query \
            or parts.fragment or "?" in value or "#" in value:
        raise bad
    return value.rstrip("/")
