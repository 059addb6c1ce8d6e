"""The federated index's registry and store (issue 18, items 1, 2 and 7; DESIGN.md flow 6).

Mirrors whose keys the operator lists in `[tracker] mirror_keys` register with a signed
envelope (domain "register", peer/manifest.py); the index then polls each one's signed catalog
feed and keeps what the feeds say, per mirror, in sqlite at `<home>/index.sqlite`. The index
believes nothing a mirror says of itself alone: each feed is checked whole before it is applied
(in one transaction, so a refused feed loses nothing), and every round it spot-checks a random
snapshot: the manifest's digest and signature, then a HEAD of a few of its blobs.

The pure parts (the key file, a registration, the bounds) are plain functions; `IndexStore` is
the sqlite shell, used from one thread; `Poller` is the asyncio loop around both.

The feed reader is peer/feed.py's (the mirror builds feeds in mirror/feed.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import logging
import random
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from peer.errors import WeightswarmError
from peer.feed import MAX_FEED_BYTES, read_feed
from peer.keys import parse_public_key, public_key_text
from peer.manifest import FORMAT, ManifestError, StaleRef, open_envelope, read_manifest, sign

from . import search

log = logging.getLogger(__name__)

#: a registration older than this, or from further ahead than CLOCK_SKEW, is refused
REGISTRATION_MAX_AGE = 600
CLOCK_SKEW = 30
MAX_REGISTRATION_BYTES = 64 * 1024
MAX_NETBLOCKS = 64
MAX_URL = 512
#: repos, refs and snapshots held for one mirror at most; a feed that would pass it is refused
MAX_ROWS_PER_MIRROR = 500_000
#: feeds followed (`more`) in one poll of one mirror
MAX_PAGES_PER_POLL = 100
#: a poll's pages are applied in one transaction up to about this many repos
BATCH_REPOS = 20_000
#: seconds: one feed request, one spot-check request
FEED_TIMEOUT = 60.0
CHECK_TIMEOUT = 10.0
#: blobs HEADed per spot-check
BLOBS_PER_CHECK = 3
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ENDPOINT = re.compile(r"[A-Za-z0-9.\-]{1,253}:\d{1,5}|\[[0-9A-Fa-f:.]{2,45}\]:\d{1,5}")
_REGISTRATION_FIELDS = frozenset({"format", "kind", "key", "base_url", "bittorrent", "site",
                                  "region", "netblocks", "weight", "timestamp"})
#: a mirror's share in the weighted random order among equally near ones
MAX_WEIGHT = 1000.0


class IndexRefused(WeightswarmError):
    """A registration or feed the index does not take; the message says why."""

    status = 400


class UnknownMirror(IndexRefused):
    status = 403


class UrlTaken(IndexRefused):
    status = 409


# -- the operator's list of accepted mirrors ------------------------------------------------------


def parse_mirror_keys(text: str) -> tuple[dict[str, str | None], list[str]]:
    """(key -> name or None, problems) from a `mirror_keys` file: one `ed25519:<hex>` key a
    line, an optional name after it, `#` starting a comment. A bad line is a problem, not the
    end of the list: the other mirrors stay accepted."""
    keys: dict[str, str | None] = {}
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        words = line.partition("#")[0].split()
        if not words:
            continue
        try:
            parse_public_key(words[0])
        except ValueError as e:
            problems.append(f"line {number}: {e}")
            continue
        keys[words[0]] = " ".join(words[1:])[:128] or None
    return keys, problems


def read_mirror_keys(path: str | Path | None,
                     own: frozenset[str] = frozenset()) -> dict[str, str | None]:
    """The accepted keys, read afresh (each registration and each poll round): removing a
    line revokes that mirror at once. An unreadable file accepts nobody but `own` (the
    all-in-one node's own mirror, always accepted)."""
    accepted: dict[str, str | None] = dict.fromkeys(own, "this node")
    if not path:
        return accepted
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        log.warning("index: mirror_keys %s unreadable, no mirror accepted from it: %s", path, e)
        return accepted
    keys, problems = parse_mirror_keys(text)
    for problem in problems:
        log.warning("index: mirror_keys %s %s (line ignored)", path, problem)
    return accepted | keys


# -- a registration: pure ---------------------------------------------------------------------


@dataclass(frozen=True)
class Registration:
    key: str
    base_url: str
    bittorrent: str | None
    site: str | None
    region: str | None
    netblocks: tuple[str, ...]
    timestamp: float
    weight: float = 1.0


def build_registration(key: Ed25519PrivateKey, base_url: str, *, bittorrent: str | None = None,
                       site: str | None = None, region: str | None = None,
                       netblocks: tuple[str, ...] = (), weight: float = 1.0,
                       now: float) -> bytes:
    """A mirror's signed registration (what `[mirror] index` sends)."""
    payload = {"format": FORMAT, "kind": "register", "key": public_key_text(key),
               "base_url": base_url.rstrip("/"), "bittorrent": bittorrent, "site": site,
               "region": region, "netblocks": list(netblocks), "weight": weight,
               "timestamp": now}
    return sign("register", msgpack.packb(payload, use_bin_type=True), key)


_HEX64 = re.compile(r"[0-9a-f]{64}")
#: the most tracker keys one mirror feeds (one per live token, and its own)
MAX_TRACKER_KEYS = 100_000


def build_tracker_keys(key: Ed25519PrivateKey, hashes: list[str], *, now: float,
                       seeders: list[str] = ()) -> bytes:
    """A mirror's signed list of its private-swarm keys (their sha256s), for its tracker;
    `seeders`: those among them that may start a private swarm (the mirror's own)."""
    payload = {"format": FORMAT, "kind": "tracker-keys", "key": public_key_text(key),
               "keys": list(hashes), "seeders": list(seeders), "timestamp": now}
    return sign("tracker-keys", msgpack.packb(payload, use_bin_type=True), key)


def read_tracker_keys(data: bytes, accepted: set[str] | frozenset[str],
                      now: float) -> tuple[str, frozenset[str], frozenset[str], float]:
    """(mirror key, key hashes, seeders' hashes, timestamp) of a fed list, checked whole as
    a registration is: signed by an accepted mirror, fresh, each hash 64 lower-case hex, the
    seeders among the keys."""
    if len(data) > 64 * MAX_TRACKER_KEYS + 4096:
        raise IndexRefused(f"a tracker-key list holds at most {MAX_TRACKER_KEYS} keys")
    body, key = open_envelope("tracker-keys", data, accepted)
    if set(body) != {"format", "kind", "key", "keys", "seeders", "timestamp"} or \
            body["key"] != key:
        raise IndexRefused("a tracker-key list holds format, kind, key (the signer's), keys, "
                           "seeders and timestamp")
    stamp, hashes, seeders = body["timestamp"], body["keys"], body["seeders"]
    if not isinstance(seeders, list) or not set(map(str, seeders)) <= set(map(str, hashes)):
        raise IndexRefused("seeders must be among the keys")
    if isinstance(stamp, bool) or not isinstance(stamp, int | float) or \
            not now - REGISTRATION_MAX_AGE <= stamp <= now + CLOCK_SKEW:
        raise IndexRefused("a tracker-key list's timestamp must be now")
    if not isinstance(hashes, list) or len(hashes) > MAX_TRACKER_KEYS or not all(
            isinstance(h, str) and len(h) == 64 and _HEX64.fullmatch(h) for h in hashes):
        raise IndexRefused(f"keys must be at most {MAX_TRACKER_KEYS} sha256s (64 hex)")
    return key, frozenset(hashes), frozenset(seeders), float(stamp)


def read_registration(data: bytes, accepted: set[str] | frozenset[str],
                      now: float) -> Registration:
    """A registration checked whole: signed by an accepted key (`UnknownKey` otherwise, a
    `ManifestError`), fresh, every field well-formed (`IndexRefused` says which is not)."""
    if len(data) > MAX_REGISTRATION_BYTES:
        raise IndexRefused(f"a registration is at most {MAX_REGISTRATION_BYTES} bytes")
    body, key = open_envelope("register", data, accepted)
    if set(body) != _REGISTRATION_FIELDS:
        raise IndexRefused(f"a registration holds exactly {', '.join(sorted(_REGISTRATION_FIELDS))}")
    if body["key"] != key:
        raise IndexRefused("the registration names another key than the one that signed it")
    stamp = body["timestamp"]
    if isinstance(stamp, bool) or not isinstance(stamp, int | float):
        raise IndexRefused("timestamp must be seconds since the epoch")
    if stamp < now - REGISTRATION_MAX_AGE:
        raise IndexRefused(f"stale registration: made {now - stamp:.0f} s ago "
                           f"(at most {REGISTRATION_MAX_AGE} s)")
    if stamp > now + CLOCK_SKEW:
        raise IndexRefused(f"registration from the future: {stamp - now:.0f} s ahead")
    weight = body["weight"]
    if isinstance(weight, bool) or not isinstance(weight, int | float) or \
            not 0 < weight <= MAX_WEIGHT:
        raise IndexRefused(f"weight must be a number above 0, at most {MAX_WEIGHT:g}")
    return Registration(key, _base_url(body["base_url"]), _endpoint(body["bittorrent"]),
                        _label(body["site"], "site"), _label(body["region"], "region"),
                        _netblocks(body["netblocks"]), float(stamp), float(weight))


def _base_url(value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_URL:
        raise IndexRefused(f"base_url must be text of at most {MAX_URL} characters")
    m = re.fullmatch(r"(https?)://([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(:\d{1,5})?(/[A-Za-z0-9._~/\-]*)?",
                     value)
    if not m or (m.group(3) and not 0 < int(m.group(3)[1:]) < 65536):
        raise IndexRefused(f"base_url is not a plain http(s) URL: {value[:80]!r}")
    return value.rstrip("/")


def _endpoint(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _ENDPOINT.fullmatch(value) or \
            not 0 < int(value.rpartition(":")[2]) < 65536:
        raise IndexRefused(f"bittorrent must be host:port, got {str(value)[:80]!r}")
    return value


def _label(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise IndexRefused(f"{what} must be a short name (letters, digits, . _ -)")
    return value


def _netblocks(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_NETBLOCKS:
        raise IndexRefused(f"netblocks must be a list of at most {MAX_NETBLOCKS} networks")
    blocks = []
    for item in value:
        try:
            if not isinstance(item, str) or len(item) > 64:
                raise ValueError
            blocks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise IndexRefused(f"netblock {str(item)[:64]!r} is not a network (CIDR)") from None
    return tuple(blocks)


# -- the store: sqlite, one thread ----------------------------------------------------------------

_M1 = """
CREATE TABLE mirrors (
    key TEXT PRIMARY KEY, name TEXT, base_url TEXT NOT NULL UNIQUE, bittorrent TEXT,
    site TEXT, region TEXT, netblocks TEXT NOT NULL DEFAULT '[]',
    registered_at REAL NOT NULL, last_polled REAL, last_verified REAL, last_error TEXT,
    demoted INTEGER NOT NULL DEFAULT 0, demoted_reason TEXT, upto INTEGER NOT NULL DEFAULT 0);
CREATE TABLE repos (
    mirror TEXT NOT NULL, hub TEXT NOT NULL, type TEXT NOT NULL, repo_id TEXT NOT NULL,
    seq INTEGER NOT NULL, gated INTEGER NOT NULL, updated_at REAL NOT NULL,
    tags TEXT NOT NULL, license TEXT, pipeline_tag TEXT, library_name TEXT,
    PRIMARY KEY (mirror, hub, type, repo_id));
CREATE TABLE refs (
    mirror TEXT NOT NULL, hub TEXT NOT NULL, type TEXT NOT NULL, repo_id TEXT NOT NULL,
    kind TEXT NOT NULL, name TEXT NOT NULL, commit_id TEXT NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (mirror, hub, type, repo_id, kind, name));
CREATE TABLE snapshots (
    mirror TEXT NOT NULL, hub TEXT NOT NULL, type TEXT NOT NULL, repo_id TEXT NOT NULL,
    commit_id TEXT NOT NULL, manifest_sha256 TEXT NOT NULL, size INTEGER NOT NULL,
    files INTEGER NOT NULL, created_at REAL NOT NULL,
    PRIMARY KEY (mirror, hub, type, repo_id, commit_id));
CREATE INDEX repos_by_id ON repos (hub, type, repo_id);
"""
#: MIGRATIONS[i] takes the schema from version i to i + 1: a script, or a list of statements
MIGRATIONS = [_M1, search.M2, search.M3]
SCHEMA_VERSION = len(MIGRATIONS)
_TABLES = ("repos", "refs", "snapshots")


@dataclass(frozen=True)
class MirrorRow:
    key: str
    name: str | None
    base_url: str
    bittorrent: str | None
    site: str | None
    region: str | None
    netblocks: tuple[str, ...]
    registered_at: float
    last_polled: float | None
    last_verified: float | None
    last_error: str | None
    demoted: bool
    demoted_reason: str | None
    upto: int


class IndexStore:
    """What the index holds, in sqlite (WAL), used from one thread."""

    def __init__(self, path: Path, *, max_rows_per_mirror: int = MAX_ROWS_PER_MIRROR):
        self.path = Path(path)
        self.max_rows = max_rows_per_mirror
        self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA busy_timeout = 5000")
        # A feed dirties ~10k pages of a 1M index: with sqlite's 2 MB default they spill to
        # the WAL mid-transaction (issue 18's benchmark: 1.5x the ingest rate at 1M)
        self.conn.execute("PRAGMA cache_size = -262144")
        if self.conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            self.conn.execute("PRAGMA journal_mode = WAL")
        # WAL's NORMAL stays consistent through a crash and loses at most the last feeds
        # applied, which the next poll fetches again (their cursor goes back with them); FULL's
        # fsync a feed was a quarter of the ingest (issue 18's benchmark)
        self.conn.execute("PRAGMA synchronous = NORMAL")
        # A checkpoint every 256 MiB of WAL, not sqlite's every 4 MiB: a poll's commit is
        # larger than that, so each one was checkpointed, copying the same hot b-tree pages
        # into the database again and again (ops/bench/index.py, 200,000 repos: 7,720 rows/s
        # before, 8,629 after, the final checkpoint included)
        self.conn.execute("PRAGMA wal_autocheckpoint = 65536")
        self._migrate()

    def close(self) -> None:
        self.conn.close()

    def _migrate(self) -> None:
        with self.transaction():
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"index {self.path} has schema {version}, newer than this "
                                   f"weightswarm ({SCHEMA_VERSION}): upgrade weightswarm")
            for script in MIGRATIONS[version:]:
                statements = script if isinstance(script, list) else script.split(";")
                for statement in filter(str.strip, statements):
                    self.conn.execute(statement)
            if 0 < version < 2:  # the entries began with version 2: made from the rows held
                search.touch_mirror(self.conn, None)
                search.refresh(self.conn)
            self.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One transaction; inside another, a savepoint (its failure undoes only its part)."""
        begin, undo, end = ("SAVEPOINT inner", "ROLLBACK TO inner; RELEASE inner",
                            "RELEASE inner") if self.conn.in_transaction else \
            ("BEGIN IMMEDIATE", "ROLLBACK", "COMMIT")
        self.conn.execute(begin)
        try:
            yield self.conn
        except BaseException:
            for statement in undo.split("; "):
                self.conn.execute(statement)
            raise
        self.conn.execute(end)

    # -- mirrors --

    def register(self, reg: Registration, name: str | None, now: float) -> bool:
        """Upsert a mirror; True if it is new. `UrlTaken` if another key holds its URL."""
        with self.transaction() as c:
            other = c.execute("SELECT key FROM mirrors WHERE base_url = ? AND key != ?",
                              (reg.base_url, reg.key)).fetchone()
            if other:
                raise UrlTaken(f"{reg.base_url} is registered by another mirror's key")
            new = c.execute("SELECT 1 FROM mirrors WHERE key = ?", (reg.key,)).fetchone() is None
            c.execute(
                "INSERT INTO mirrors (key, name, base_url, bittorrent, site, region, netblocks,"
                " weight, registered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET"
                " name = excluded.name, base_url = excluded.base_url,"
                " bittorrent = excluded.bittorrent, site = excluded.site,"
                " region = excluded.region, netblocks = excluded.netblocks,"
                " weight = excluded.weight, registered_at = excluded.registered_at",
                (reg.key, name, reg.base_url, reg.bittorrent, reg.site, reg.region,
                 json.dumps(list(reg.netblocks)), reg.weight, now))
        return new

    def mirrors(self) -> list[MirrorRow]:
        rows = self.conn.execute(
            "SELECT key, name, base_url, bittorrent, site, region, netblocks, registered_at,"
            " last_polled, last_verified, last_error, demoted, demoted_reason, upto"
            " FROM mirrors ORDER BY base_url").fetchall()
        return [MirrorRow(*r[:6], tuple(json.loads(r[6])), *r[7:11], bool(r[11]), *r[12:])
                for r in rows]

    def mirror(self, key: str) -> MirrorRow | None:
        return next((m for m in self.mirrors() if m.key == key), None)

    def keep_only(self, accepted: dict[str, str | None]) -> list[str]:
        """Forget every mirror whose key is no longer accepted (its rows with it), and take
        the names the key file gives now; the base URLs of those dropped."""
        with self.transaction() as c:
            dropped = [(k, url) for k, url in c.execute("SELECT key, base_url FROM mirrors")
                       if k not in accepted]
            for key, _ in dropped:
                search.touch_mirror(c, key)
                self._drop_rows(c, key)
                c.execute("DELETE FROM mirrors WHERE key = ?", (key,))
            if dropped:
                search.refresh(c)
            for key, name in accepted.items():
                c.execute("UPDATE mirrors SET name = ? WHERE key = ?", (name, key))
        return [url for _, url in dropped]

    def repo_counts(self) -> dict[str, int]:
        return dict(self.conn.execute("SELECT mirror, count(*) FROM repos GROUP BY mirror"))

    def repos_of(self, key: str) -> list[tuple[str, str, str]]:
        return self.conn.execute("SELECT hub, type, repo_id FROM repos WHERE mirror = ?"
                                 " ORDER BY hub, type, repo_id", (key,)).fetchall()

    def rows_of(self, key: str) -> int:
        return sum(self.conn.execute(f"SELECT count(*) FROM {t} WHERE mirror = ?",  # noqa: S608
                                     (key,)).fetchone()[0] for t in _TABLES)

    def record_poll(self, key: str, now: float, error: str | None) -> None:
        with self.transaction() as c:
            c.execute("UPDATE mirrors SET last_polled = ?, last_error = ? WHERE key = ?",
                      (now, error, key))

    def record_check(self, key: str, now: float, failure: str | None) -> None:
        """A spot-check's outcome: a pass records when, and lifts a demotion; a failure
        demotes, with why."""
        with self.transaction() as c:
            if failure is None:
                c.execute("UPDATE mirrors SET last_verified = ?, demoted = 0,"
                          " demoted_reason = NULL WHERE key = ?", (now, key))
            else:
                c.execute("UPDATE mirrors SET demoted = 1, demoted_reason = ? WHERE key = ?",
                          (failure[:500], key))

    def random_snapshot(self, key: str, rng: random.Random) -> tuple | None:
        """(hub, type, repo id, commit, manifest sha256, gated) of one snapshot the mirror
        lists."""
        count = self.conn.execute("SELECT count(*) FROM snapshots WHERE mirror = ?",
                                  (key,)).fetchone()[0]
        if not count:
            return None
        return self.conn.execute(
            "SELECT s.hub, s.type, s.repo_id, s.commit_id, s.manifest_sha256, "
            "coalesce(r.gated, 0) FROM snapshots s LEFT JOIN repos r ON r.mirror = s.mirror "
            "AND r.hub = s.hub AND r.type = s.type AND r.repo_id = s.repo_id"
            " WHERE s.mirror = ? ORDER BY s.hub, s.type, s.repo_id, s.commit_id LIMIT 1 "
            "OFFSET ?", (key, rng.randrange(count))).fetchone()

    # -- feeds --

    def apply_feed(self, key: str, feed, now: float) -> None:
        """A checked feed (mirror/feed.py's `Feed`) into the mirror's rows, in one transaction:
        a full feed replaces them all; an incremental one drops its tombstones' repos and
        replaces its repos whole. A sequence that went back, or rows beyond the bound, refuse
        the whole feed (`StaleRef`, `IndexRefused`) and leave what was held."""
        with self.transaction() as c:
            upto = c.execute("SELECT upto FROM mirrors WHERE key = ?", (key,)).fetchone()
            if upto is None:
                raise UnknownMirror("not a registered mirror")
            if feed.since != upto[0]:
                raise StaleRef(f"the feed starts at {feed.since}, the index holds up to {upto[0]}")
            if feed.full:
                search.touch_mirror(c, key)
                self._drop_rows(c, key)
            search.touch(c, [t.key for t in feed.removed] + [r.key for r in feed.repos])
            if not feed.full:
                held = _forward(c, key, feed)
                self._drop_many(c, key, held)
            _insert_repos(c, key, feed.repos)
            rows = self.rows_of(key)
            if rows > self.max_rows:
                raise IndexRefused(f"the feed would make {rows} rows for this mirror, more than "
                                   f"{self.max_rows}")
            search.refresh(c)
            c.execute("UPDATE mirrors SET upto = ? WHERE key = ?", (feed.upto, key))

    def apply_feeds(self, key: str, feeds: list, now: float) -> tuple[int, Exception | None]:
        """Feeds in order, in one transaction (a feed's pages dirty the same index pages, so
        one commit for a poll's pages writes each page once): each as `apply_feed`, under a
        savepoint. A refused feed keeps those before it: (how many applied, why the next was
        refused or None)."""
        done, refused = 0, None
        with self.transaction():
            for feed in feeds:
                try:
                    self.apply_feed(key, feed, now)
                except (ManifestError, IndexRefused) as e:
                    refused = e
                    break
                done += 1
        return done, refused

    @staticmethod
    def _drop_rows(c: sqlite3.Connection, key: str) -> None:
        for table in _TABLES:
            c.execute(f"DELETE FROM {table} WHERE mirror = ?", (key,))  # noqa: S608

    @staticmethod
    def _drop_many(c: sqlite3.Connection, key: str, repos: list[tuple]) -> None:
        for table in _TABLES:
            c.executemany(f"DELETE FROM {table} WHERE mirror = ? AND hub = ? AND type = ?"  # noqa: S608
                          " AND repo_id = ?", [(key, *repo) for repo in repos])


def _forward(c: sqlite3.Connection, key: str, feed) -> list[tuple]:
    """An incremental feed must move each repo it carries, and each of its refs, forward (as
    mirror/feed.py's `apply`); a repo the same feed removes is not checked. Returns the keys of
    the touched repos the mirror holds now (those the feed replaces or removes), found in one
    query over the touched ones, as their refs."""
    held = {tuple(r[:3]): r[3] for r in c.execute(
        "SELECT r.hub, r.type, r.repo_id, r.seq FROM temp.touched t CROSS JOIN repos r"
        " ON r.mirror = ? AND r.hub = t.hub AND r.type = t.type AND r.repo_id = t.repo_id",
        (key,))}
    refs: dict[tuple, dict] = {}
    if held:
        for hub, type_, repo_id, kind, name, commit, seq in c.execute(
                "SELECT f.hub, f.type, f.repo_id, f.kind, f.name, f.commit_id, f.seq"
                " FROM temp.touched t CROSS JOIN refs f ON f.mirror = ? AND f.hub = t.hub"
                " AND f.type = t.type AND f.repo_id = t.repo_id", (key,)):
            refs.setdefault((hub, type_, repo_id), {})[kind, name] = (commit, seq)
    removed = {t.key for t in feed.removed}
    for repo in feed.repos:
        if repo.key in removed or repo.key not in held:
            continue
        if repo.seq <= held[repo.key]:
            raise StaleRef(f"{repo.repo_id}: sequence {repo.seq} is not after "
                           f"{held[repo.key]}, already held")
        _refs_forward(repo, refs.get(repo.key, {}))
    return list(held)


def _refs_forward(repo, refs: dict) -> None:
    for ref in repo.refs:
        old = refs.get((ref.kind, ref.name))
        if old is not None and (ref.seq < old[1] or (ref.seq == old[1] and ref.commit != old[0])):
            raise StaleRef(f"{repo.repo_id}@{ref.name}: sequence {ref.seq} goes back from "
                           f"{old[1]}")


def _insert_repos(c: sqlite3.Connection, key: str, repos) -> None:
    """A feed's repos into the mirror's rows: three statements for the whole feed."""
    heads = [(key, *repo.key) for repo in repos]
    c.executemany("INSERT INTO repos VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  [(*head, repo.seq, int(repo.gated), repo.updated_at,
                    json.dumps(list(repo.tags)), repo.license, repo.pipeline_tag,
                    repo.library_name) for head, repo in zip(heads, repos, strict=True)])
    c.executemany("INSERT INTO refs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                  [(*head, r.kind, r.name, r.commit, r.seq)
                   for head, repo in zip(heads, repos, strict=True) for r in repo.refs])
    c.executemany("INSERT INTO snapshots VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  [(*head, s.commit, s.manifest_sha256, s.size, s.files, s.created_at,
                    json.dumps(list(s.torrents)))
                   for head, repo in zip(heads, repos, strict=True) for s in repo.snapshots])


def mirrors_view(rows: list[MirrorRow], counts: dict[str, int]) -> list[dict]:
    """`GET /api/weightswarm/mirrors`: each accepted, registered mirror."""
    return [{"key": m.key, "name": m.name, "base_url": m.base_url, "bittorrent": m.bittorrent,
             "site": m.site, "region": m.region, "netblocks": list(m.netblocks),
             "repos": counts.get(m.key, 0), "registered_at": m.registered_at,
             "last_polled": m.last_polled, "last_verified": m.last_verified,
             "last_error": m.last_error, "demoted": m.demoted,
             "demoted_reason": m.demoted_reason, "upto": m.upto} for m in rows]


# -- polling: the asyncio shell -----------------------------------------------------------------


async def _bounded_body(response: aiohttp.ClientResponse, limit: int) -> bytes:
    if response.status != 200:
        raise IndexRefused(f"HTTP {response.status} from {response.url}")
    body = bytearray()
    async for chunk in response.content.iter_chunked(1 << 16):
        body += chunk
        if len(body) > limit:
            raise IndexRefused(f"an answer larger than {limit} bytes")
    return bytes(body)


class Poller:
    """One round: re-read the key file, forget revoked mirrors, poll every registered one
    (its feeds in order, then a spot-check). `on_store(fn, *args)` runs on the store's thread."""

    def __init__(self, on_store, store: IndexStore, keys_file: str | None,
                 http: aiohttp.ClientSession, metrics, rng: random.Random | None = None,
                 own_keys: frozenset[str] = frozenset()):
        self.on_store, self.store = on_store, store
        self.keys_file, self.own_keys = keys_file, own_keys
        self.http, self.metrics = http, metrics
        self.rng = rng or random.Random()

    async def round(self) -> None:
        accepted = read_mirror_keys(self.keys_file, self.own_keys)
        for url in await self.on_store(self.store.keep_only, accepted):
            log.info("index: %s revoked (its key left mirror_keys): its rows dropped", url)
        mirrors = await self.on_store(self.store.mirrors)
        limit = asyncio.Semaphore(8)

        async def one(m: MirrorRow) -> None:
            async with limit:
                if await self.poll(m):
                    await self.check(m)

        await asyncio.gather(*(one(m) for m in mirrors))

    async def poll(self, m: MirrorRow) -> bool:
        """The mirror's feeds from its cursor until `more` is off; False if one was refused
        (the mirror's last error says why; what the index held stays)."""
        cursor, batch = m.upto, []
        try:
            for _ in range(MAX_PAGES_PER_POLL):
                try:
                    feed = await self._feed(m, cursor)
                except BaseException:
                    await self._apply(m, batch)  # the pages read before this one
                    raise
                batch.append(feed)
                cursor = feed.upto
                if not feed.more or sum(len(f.repos) for f in batch) >= BATCH_REPOS:
                    pages, batch = batch, []
                    await self._apply(m, pages)
                if not feed.more:
                    break
        except (ManifestError, IndexRefused, aiohttp.ClientError, TimeoutError, OSError) as e:
            error = f"{type(e).__name__}: {e}"[:500]
            self.metrics.feeds("refused")
            log.warning("index: feed of %s refused: %s", m.base_url, error)
            await self.on_store(self.store.record_poll, m.key, time.time(), error)
            return False
        await self.on_store(self.store.record_poll, m.key, time.time(), None)
        return True

    async def _apply(self, m: MirrorRow, feeds: list) -> None:
        """Pages in one transaction; a refused one raises, after those before it are kept."""
        if not feeds:
            return
        done, refused = await self.on_store(self.store.apply_feeds, m.key, feeds, time.time())
        for feed in feeds[:done]:
            self.metrics.feeds("applied")
            if feed.repos or feed.removed:
                log.info("index: %s feed %d..%d applied (%d repos, %d removed)",
                         m.base_url, feed.since, feed.upto, len(feed.repos), len(feed.removed))
        if refused is not None:
            raise refused

    async def _feed(self, m: MirrorRow, cursor: int):
        url = f"{m.base_url}/api/weightswarm/catalog"
        async with asyncio.timeout(FEED_TIMEOUT), \
                self.http.get(url, params={"since": str(cursor)}) as response:
            data = await _bounded_body(response, MAX_FEED_BYTES)
        return read_feed(data, m.key, after=cursor)

    async def check(self, m: MirrorRow) -> None:
        """Spot-check one random snapshot: its manifest's digest and signature, then a HEAD of
        a few of its blobs. A failure demotes the mirror until a later check passes."""
        picked = await self.on_store(self.store.random_snapshot, m.key, self.rng)
        if picked is None:
            return
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                failure = await self._check(m, picked)
        except (aiohttp.ClientError, TimeoutError, OSError, IndexRefused) as e:
            failure = f"{'/'.join(picked[:3])}@{picked[3][:12]}: {type(e).__name__}: {e}"
        was = m.demoted
        await self.on_store(self.store.record_check, m.key, time.time(), failure)
        if failure is not None and not was:
            log.warning("index: %s demoted: %s", m.base_url, failure)
        elif failure is None and was:
            log.info("index: %s passed a spot-check again: no longer demoted", m.base_url)

    async def _check(self, m: MirrorRow, picked: tuple) -> str | None:
        hub, type_, repo_id, commit, digest, gated = picked
        if gated:
            # A gated repo's manifest and bytes go to the mirror's token holders only (its
            # manifest names private swarms): the index, which holds no token, checks others.
            return None
        url = f"{m.base_url}/api/weightswarm/manifests/{hub}/{type_}/{repo_id}/{commit}"
        async with self.http.get(url) as response:
            data = await _bounded_body(response, 64 * 1024 * 1024)
        where = f"{hub}/{type_}/{repo_id}@{commit[:12]}"
        if hashlib.sha256(data).hexdigest() != digest:
            return f"{where}: the manifest served is not the one the feed lists"
        try:
            manifest, _ = read_manifest(data, {m.key})
        except ManifestError as e:
            return f"{where}: manifest refused: {e}"
        files = list(manifest.files)
        for f in self.rng.sample(files, min(BLOBS_PER_CHECK, len(files))):
            async with self.http.head(f"{m.base_url}/blobs/sha256/{f.sha256}") as response:
                size = response.headers.get("Content-Length")
                if response.status != 200 or size != str(f.size):
                    return (f"{where}: blob {f.sha256[:12]} ({f.path}) answered HTTP "
                            f"{response.status}, size {size}, expected {f.size}")
        return None
