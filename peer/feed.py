"""The catalog feed's reader (DESIGN.md sections 4 and 8; issue 18): what a mirror's
`/api/weightswarm/catalog?since=SEQ` answer is, and how whoever reads it (the index, in
tracker/) checks and folds it. The mirror builds feeds in mirror/feed.py.

A feed is a signed envelope (peer/manifest.py, domain "catalog") of every public or gated
repo changed after `since`, each whole (its refs with their sequence numbers, its snapshots
with the sha256 of their signed manifests), and a tombstone for each repo removed or made
private since; `since` 0 is a full feed, which replaces everything. `read_feed` checks the
signature against the one key the reader trusts for this mirror, every field, and the
sequence: a feed must start where the reader is (an older start is a replay or a rollback,
a later one a gap). `apply` folds a checked feed into what a reader holds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import BadRequest
from .hfformat import REF_KINDS, REPO_TYPES
from .hubs import HUBS
from .manifest import ManifestError, StaleRef, _int, open_envelope
from .paths import check_repo_id, check_revision, is_commit, is_sha256

#: entries (repos and tombstones) a feed carries unless asked for fewer, and at most
FEED_LIMIT = 1000
MAX_ENTRIES = 10_000
#: per repo
MAX_REFS = 20_000
MAX_SNAPSHOTS = 20_000
MAX_TAGS = 1000
#: info-hashes per snapshot: the builder sends the first ones (by path) beyond this
MAX_TORRENTS = 1000
MAX_TEXT = 1024
#: the largest feed a reader takes; a builder stops adding entries past a third of it
MAX_FEED_BYTES = 48 * 1024 * 1024
_BUDGET = MAX_FEED_BYTES // 3
#: dates are seconds since the epoch: anything past the year 5000 is not one
_MAX_TIME = 1e11

_FEED_FIELDS = frozenset({"format", "kind", "key", "since", "upto", "full", "more", "repos",
                          "removed"})
_REPO_FIELDS = frozenset({"hub", "type", "id", "seq", "gated", "updated_at", "tags", "license",
                          "pipeline_tag", "library_name", "refs", "snapshots"})
_CARD_TEXT = ("license", "pipeline_tag", "library_name")

RepoKey = tuple[str, str, str]


@dataclass(frozen=True)
class FeedRef:
    kind: str
    name: str
    commit: str
    seq: int


@dataclass(frozen=True)
class FeedSnapshot:
    commit: str
    #: sha256 of the signed manifest's bytes, as /api/weightswarm/manifests/... serves them
    manifest_sha256: str
    size: int
    files: int
    created_at: float
    #: the info-hashes (40 hex, v1) of its large files' torrents, at most MAX_TORRENTS: the
    #: index counts their seeders in its own swarm table
    torrents: tuple[str, ...] = ()


@dataclass(frozen=True)
class FeedRepo:
    hub: str
    type: str
    repo_id: str
    #: the sequence number of the repo's last change
    seq: int
    gated: bool
    updated_at: float
    tags: tuple[str, ...]
    license: str | None
    pipeline_tag: str | None
    library_name: str | None
    refs: tuple[FeedRef, ...]
    snapshots: tuple[FeedSnapshot, ...]

    @property
    def key(self) -> RepoKey:
        return (self.hub, self.type, self.repo_id)


@dataclass(frozen=True)
class Tombstone:
    """A repo a reader must forget: removed, or made private."""

    hub: str
    type: str
    repo_id: str
    seq: int

    @property
    def key(self) -> RepoKey:
        return (self.hub, self.type, self.repo_id)


@dataclass(frozen=True)
class Feed:
    key: str
    since: int
    upto: int
    full: bool
    more: bool
    repos: tuple[FeedRepo, ...]
    removed: tuple[Tombstone, ...]


# -- the reader's side ----------------------------------------------------------------------------


def read_feed(data: bytes, trusted_key: str, *, after: int) -> Feed:
    """A feed checked whole, for a reader that holds this mirror's catalog up to sequence
    `after` (0: nothing yet) and trusts `trusted_key` for it. Raises `UnknownKey` (another
    key), `BadSignature`, `StaleRef` (a replay, a rollback or a gap) or `ManifestError`."""
    if len(data) > MAX_FEED_BYTES:
        raise ManifestError(f"a catalog feed of {len(data)} bytes is larger than "
                            f"{MAX_FEED_BYTES}")
    body, key = open_envelope("catalog", data, {trusted_key})
    _fields(body, _FEED_FIELDS, "a catalog feed")
    if body["key"] != key:
        raise ManifestError(f"the feed names the key {str(body['key'])[:80]!r}, "
                            f"but {key} signed it")
    since, upto, full, more = _window(body, after)
    repos = tuple(_check_repo(entry) for entry in _list(body["repos"], MAX_ENTRIES, "repos"))
    removed = tuple(_tombstone(entry) for entry in _list(body["removed"], MAX_ENTRIES,
                                                           "removed"))
    _check_sequence(repos, removed, since, upto)
    if full and removed:
        raise ManifestError("a full feed carries no tombstones")
    return Feed(key, since, upto, full, more, repos, removed)


def _window(body: dict, after: int) -> tuple[int, int, bool, bool]:
    since, upto = _int(body["since"], "since"), _int(body["upto"], "upto")
    full, more = body["full"], body["more"]
    if since < after:
        raise StaleRef(f"a replayed or rolled-back feed: it starts at sequence {since}, "
                       f"this reader holds up to {after}")
    if since > after:
        raise StaleRef(f"a gap: the feed starts at sequence {since}, this reader holds up to "
                       f"{after} (changes {after + 1} to {since} would be missed)")
    if upto < since:
        raise StaleRef(f"the feed goes back: upto {upto} is before since {since}")
    if not isinstance(full, bool) or not isinstance(more, bool):
        raise ManifestError("full and more must be true or false")
    if full != (since == 0):
        raise ManifestError(f"full is {full} for a feed since {since} (full means since 0)")
    if more and upto == since:
        raise ManifestError("more is set but the feed brings the reader no further")
    return since, upto, full, more


def _check_sequence(repos: tuple[FeedRepo, ...], removed: tuple[Tombstone, ...], since: int,
                    upto: int) -> None:
    """Every change within (since, upto], each repo named once."""
    seen: set[RepoKey] = set()
    for item in (*repos, *removed):
        if not since < item.seq <= upto:
            raise StaleRef(f"{item.repo_id}: sequence {item.seq} is outside this feed's "
                           f"({since}, {upto}]")
        if item.key in seen:
            raise ManifestError(f"{item.repo_id} is named twice in one feed")
        seen.add(item.key)


def _check_repo(entry) -> FeedRepo:
    """A repo entry, every field checked (its sequence window aside: `_check_sequence`)."""
    if not isinstance(entry, dict):
        raise ManifestError("each repo is a map")
    _fields(entry, _REPO_FIELDS, "a repo")
    hub, type_, repo_id = _repo_key(entry["hub"], entry["type"], entry["id"])
    seq = _int(entry["seq"], f"{repo_id}: seq")
    if not isinstance(entry["gated"], bool):
        raise ManifestError(f"{repo_id}: gated must be true or false")
    tags = _list(entry["tags"], MAX_TAGS, f"{repo_id}: tags")
    for field in (*tags, *(entry[name] for name in _CARD_TEXT if entry[name] is not None)):
        if not isinstance(field, str) or len(field) > MAX_TEXT:
            raise ManifestError(f"{repo_id}: tags and card fields are text of at most "
                                f"{MAX_TEXT} characters")
    snapshots = _snapshots(entry["snapshots"], repo_id)
    refs = _refs(entry["refs"], repo_id, seq, {s.commit for s in snapshots})
    return FeedRepo(hub, type_, repo_id, seq, entry["gated"],
                    _time(entry["updated_at"], f"{repo_id}: updated_at"), tuple(tags),
                    entry["license"], entry["pipeline_tag"], entry["library_name"], refs,
                    snapshots)


def _refs(value, repo_id: str, repo_seq: int, commits: set[str]) -> tuple[FeedRef, ...]:
    refs, seen = [], set()
    for ref in _list(value, MAX_REFS, f"{repo_id}: refs"):
        if not isinstance(ref, list) or len(ref) != 4:
            raise ManifestError(f"{repo_id}: each ref is [kind, name, commit, seq]")
        kind, name, commit, seq = ref
        if kind not in REF_KINDS:
            raise ManifestError(f"{repo_id}: ref kind {str(kind)[:40]!r} is not one of "
                                f"{', '.join(REF_KINDS)}")
        _revision(name, repo_id)
        if not is_commit(commit):
            raise ManifestError(f"{repo_id}@{name}: commit {str(commit)[:64]!r} is not 40 hex")
        if commit not in commits:
            raise ManifestError(f"{repo_id}@{name} names {commit}, a snapshot the feed lacks")
        if not 1 <= _int(seq, f"{repo_id}@{name}: seq") <= repo_seq:
            raise StaleRef(f"{repo_id}@{name}: sequence {seq} is not within the repo's "
                           f"1 to {repo_seq}")
        if (kind, name) in seen:
            raise ManifestError(f"{repo_id}: ref {kind} {name} is listed twice")
        seen.add((kind, name))
        refs.append(FeedRef(kind, name, commit, seq))
    return tuple(refs)


def _snapshots(value, repo_id: str) -> tuple[FeedSnapshot, ...]:
    snapshots, seen = [], set()
    for snap in _list(value, MAX_SNAPSHOTS, f"{repo_id}: snapshots"):
        if not isinstance(snap, list) or len(snap) not in (5, 6):
            raise ManifestError(f"{repo_id}: each snapshot is [commit, manifest sha256, size, "
                                "files, created at, info-hashes]")
        commit, digest, size, files, created = snap[:5]
        if not is_commit(commit):
            raise ManifestError(f"{repo_id}: commit {str(commit)[:64]!r} is not 40 hex")
        if not is_sha256(digest):
            raise ManifestError(f"{repo_id}@{commit}: manifest sha256 is not 64 hex")
        if commit in seen:
            raise ManifestError(f"{repo_id}: snapshot {commit} is listed twice")
        seen.add(commit)
        torrents = _list(snap[5], MAX_TORRENTS, f"{repo_id}@{commit}: info-hashes") \
            if len(snap) == 6 else []
        if not all(is_commit(t) for t in torrents):
            raise ManifestError(f"{repo_id}@{commit}: an info-hash is not 40 hex")
        snapshots.append(FeedSnapshot(commit, digest, _int(size, f"{repo_id}@{commit}: size"),
                                      _int(files, f"{repo_id}@{commit}: files"),
                                      _time(created, f"{repo_id}@{commit}: created at"),
                                      tuple(torrents)))
    return tuple(snapshots)


def _tombstone(entry) -> Tombstone:
    if not isinstance(entry, list) or len(entry) != 4:
        raise ManifestError("each tombstone is [hub, type, repo id, seq]")
    hub, type_, repo_id = _repo_key(*entry[:3])
    return Tombstone(hub, type_, repo_id, _int(entry[3], f"{repo_id}: tombstone seq"))


def _repo_key(hub, type_, repo_id) -> RepoKey:
    if hub not in HUBS:
        raise ManifestError(f"unknown hub {str(hub)[:40]!r}")
    if type_ not in REPO_TYPES:
        raise ManifestError(f"unknown repo type {str(type_)[:40]!r}")
    try:
        check_repo_id(repo_id)
    except BadRequest as e:
        raise ManifestError(f"hostile repo id: {e}") from None
    return hub, type_, repo_id


def _revision(name, repo_id: str) -> None:
    if not isinstance(name, str):
        raise ManifestError(f"{repo_id}: a ref name is text")
    try:
        check_revision(name)
    except BadRequest as e:
        raise ManifestError(f"{repo_id}: hostile ref name: {e}") from None


def _fields(body: dict, expected: frozenset[str], what: str) -> None:
    if set(body) != expected:
        extra, missing = set(body) - expected, expected - set(body)
        raise ManifestError(f"{what} holds exactly {', '.join(sorted(expected))}"
                            f" (extra: {sorted(map(str, extra))[:5]}, missing: "
                            f"{sorted(missing)})")


def _list(value, most: int, what: str) -> list:
    if not isinstance(value, list):
        raise ManifestError(f"{what} must be a list")
    if len(value) > most:
        raise ManifestError(f"{what}: {len(value)} entries, more than {most}")
    return value


def _time(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or \
            not math.isfinite(value) or not 0 <= value < _MAX_TIME:
        raise ManifestError(f"{what} must be seconds since the epoch, got {str(value)[:40]}")
    return float(value)


# -- what a reader holds --------------------------------------------------------------------------


def apply(state: Mapping[RepoKey, FeedRepo], feed: Feed) -> dict[RepoKey, FeedRepo]:
    """What a reader holds after `feed` (checked by `read_feed`), as a new mapping: `state`
    is left as it was, so a refused feed loses nothing. A full feed replaces everything; an
    incremental one drops its tombstones' repos and replaces its repos whole. A repo or ref
    whose sequence went back (a mirror rolled back, or lying) is refused: `StaleRef`."""
    held = {} if feed.full else dict(state)
    for tombstone in feed.removed:
        held.pop(tombstone.key, None)
    for repo in feed.repos:
        before = held.get(repo.key)
        if before is not None:
            _forward(before, repo)
        held[repo.key] = repo
    return held


def _forward(before: FeedRepo, after: FeedRepo) -> None:
    if after.seq <= before.seq:
        raise StaleRef(f"{after.repo_id}: sequence {after.seq} is not after {before.seq}, "
                       "already held")
    held = {(r.kind, r.name): r for r in before.refs}
    for ref in after.refs:
        old = held.get((ref.kind, ref.name))
        if old is None:
            continue
        if ref.seq < old.seq:
            raise StaleRef(f"{after.repo_id}@{ref.name}: sequence {ref.seq} is older than "
                           f"{old.seq}, already held")
        if ref.seq == old.seq and ref.commit != old.commit:
            raise StaleRef(f"{after.repo_id}@{ref.name}: sequence {ref.seq} names two commits")
