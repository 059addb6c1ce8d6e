"""The mirror's signed catalog feed for the index (DESIGN.md sections 4 and 8; issue 18):
`GET /api/weightswarm/catalog?since=SEQ` answers what changed in the catalog after `since`.
What a feed holds, its bounds, and its reader (`read_feed`, `apply`) are in peer/feed.py; this
builds one from the catalog. A private repo is never named, not even by a tombstone unless it
was public once. A feed is bounded (`limit` entries, a byte budget): `more` says there is more,
and `upto` is then the number of the last change it carries, from which the reader asks again.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from peer.errors import BadRequest
from peer.feed import _BUDGET, FEED_LIMIT, MAX_ENTRIES, MAX_TORRENTS, _check_repo
from peer.keys import public_key_text
from peer.manifest import FORMAT, ManifestError, sign
from peer.paths import ascii_digits

from .catalog import Catalog, Repo
from .distribution import Distribution

log = logging.getLogger(__name__)


# -- the mirror's side ----------------------------------------------------------------------------


def parse_query(query: Mapping[str, str]) -> tuple[int, int]:
    """(since, limit) of a feed request; `BadRequest` unless both are plain numbers in range."""
    since_text, limit_text = query.get("since", "0"), query.get("limit")
    since = ascii_digits(since_text)
    if since is None:
        raise BadRequest(f"since must be a non-negative integer, got {since_text[:40]!r}")
    limit = FEED_LIMIT if limit_text is None else ascii_digits(limit_text)
    if limit is None or not 1 <= limit <= MAX_ENTRIES:
        raise BadRequest(f"limit must be an integer from 1 to {MAX_ENTRIES}, "
                         f"got {str(limit_text)[:40]!r}")
    return since, limit


def build_feed(catalog: Catalog, key: Ed25519PrivateKey, since: int, *,
               limit: int = FEED_LIMIT) -> bytes:
    """The signed feed of what changed after `since` (on the catalog's thread)."""
    if not 1 <= limit <= MAX_ENTRIES:
        raise BadRequest(f"limit must be from 1 to {MAX_ENTRIES}")
    distribution = Distribution(catalog, key)
    with catalog.reading():
        current = catalog.sequence()
        if since > current:
            raise BadRequest(f"since {since} is ahead of this mirror's sequence {current}")
        changes = _changes(catalog, since, limit)
        repos, removed, upto, more = _collect(catalog, distribution, changes, limit, current)
    payload = {"format": FORMAT, "kind": "catalog", "key": public_key_text(key),
               "since": since, "upto": upto, "full": since == 0, "more": more,
               "repos": repos, "removed": removed}
    return sign("catalog", msgpack.packb(payload, use_bin_type=True), key)


def _changes(catalog: Catalog, since: int, limit: int) -> list[tuple[int, Repo | tuple]]:
    """The first `limit` + 1 changes after `since`, repos and tombstones, oldest first. A full
    feed carries no tombstones: it replaces whatever its reader held."""
    changes: list[tuple[int, Repo | tuple]] = list(catalog.feed_repos(since, limit + 1))
    if since > 0:
        changes += [(row[0], row[1:]) for row in catalog.feed_tombstones(since, limit + 1)]
    changes.sort(key=lambda change: change[0])
    return changes[:limit + 1]


def _collect(catalog: Catalog, distribution: Distribution, changes: list, limit: int,
             current: int) -> tuple[list, list, int, bool]:
    """(repo entries, tombstones, upto, more) for the changes that fit in one feed."""
    repos: list[dict] = []
    removed: list[list] = []
    used = 0
    for n, (seq, change) in enumerate(changes):
        if n == limit or used > _BUDGET:
            return repos, removed, changes[n - 1][0], True
        if not isinstance(change, Repo):
            removed.append([*change, seq])
            continue
        entry = _repo_entry(catalog, distribution, seq, change)
        try:
            _check_repo(entry)
        except ManifestError as e:
            # A feed its readers refuse would hold every later change back: leave this repo out.
            log.warning("catalog feed: %s/%s %s left out: %s", change.hub, change.type,
                        change.repo_id, e)
            continue
        used += len(msgpack.packb(entry, use_bin_type=True))
        repos.append(entry)
    return repos, removed, current, False


def _torrents(manifest: bytes) -> list[str]:
    """The info-hashes a signed manifest names (the first MAX_TORRENTS by path): our own bytes,
    so read without checking the signature again."""
    files = msgpack.unpackb(msgpack.unpackb(manifest)["payload"])["files"]
    return [f[5] for f in files if f[5]][:MAX_TORRENTS]


def _repo_entry(catalog: Catalog, distribution: Distribution, seq: int, repo: Repo) -> dict:
    refs = [[r.kind, r.name, r.commit, r.seq] for r in catalog.refs(repo)]
    snapshots = []
    for commit, created, files, size in catalog.snapshot_sizes(repo):
        # A snapshot a bundle brought is served (and so digested) as its signer signed it.
        manifest = distribution.manifest(repo.hub, repo.type, repo.repo_id, commit)
        snapshots.append([commit, hashlib.sha256(manifest).hexdigest(), size, files, created,
                          _torrents(manifest)])
    card = repo.card
    return {"hub": repo.hub, "type": repo.type, "id": repo.repo_id, "seq": seq,
            "gated": repo.access == "gated", "updated_at": repo.updated_at,
            "tags": list(card["tags"]), "license": card["license"],
            "pipeline_tag": card["pipeline_tag"], "library_name": card["library_name"],
            "refs": refs, "snapshots": snapshots}
