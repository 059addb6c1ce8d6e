"""The mirror's catalog: repos, snapshots, files, refs and blob records, in sqlite.

WAL mode with a busy timeout, so the CLI (an import) and a running server can both write.
Every write that must be seen whole (a snapshot with its files and refs) is one
`BEGIN IMMEDIATE` transaction: a reader sees the snapshot complete or not at all. The schema
carries a version (`PRAGMA user_version`) and upgrades itself through `MIGRATIONS`.

A Catalog object is used from one thread at a time (the server gives it its own thread).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import shutil
import sqlite3
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from peer import atomic, hubs
from peer.errors import InsufficientSpace, RepoNotFound, RevisionNotFound, out_of_space
from peer.hashing import Digests
from peer.hfformat import REF_KINDS, FileEntry, derive_tags
from peer.paths import is_commit

from .scan import SUSPICIOUS, Verdict

if TYPE_CHECKING:
    import sqlite_utils

log = logging.getLogger(__name__)
T = TypeVar("T")

ACCESS_LEVELS = ("public", "gated", "private")
#: the default branch of Hugging Face and of ModelScope
DEFAULT_BRANCHES = ("main", "master")
#: what a file's bytes were checked against before publication: the upstream's sha256
#: (HF's lfs.oid, ModelScope's Sha256), its git blob sha1 (HF's oid), an MD5 from the storage
#: answer (Kaggle's x-goog-hash), or nothing the upstream published (a folder, a Kaggle file
#: without x-goog-hash: trust rests on the mirror's own hashes)
VERIFIED_BY = ("sha256", "git-sha1", "md5", "none")
#: The metadata a model card's front matter contributes to a repo (issue 2).
CARD_FIELDS = ("license", "tags", "pipeline_tag", "library_name", "base_model", "datasets",
               "language")


def _m1(db: sqlite_utils.Database) -> None:
    db["repos"].create(
        {
            "id": int, "hub": str, "type": str, "repo_id": str, "access": str,
            "created_at": float, "updated_at": float, "downloads": int, "likes": int,
            "license": str, "pipeline_tag": str, "library_name": str, "tags": str,
            "base_model": str, "datasets": str, "language": str, "card_data": str,
        },
        pk="id",
        not_null={"hub", "type", "repo_id", "access", "created_at", "updated_at"},
        defaults={"access": "public", "downloads": 0, "likes": 0},
    )
    db["repos"].create_index(["hub", "type", "repo_id"], unique=True)
    db["snapshots"].create(
        {
            "id": int, "repo": int, "commit_id": str, "parent": str, "title": str,
            "message": str, "created_at": float, "card_data": str, "safetensors": str,
        },
        pk="id",
        foreign_keys=[("repo", "repos", "id")],
        not_null={"repo", "commit_id", "created_at"},
    )
    db["snapshots"].create_index(["repo", "commit_id"], unique=True)
    db.execute(
        "CREATE TABLE files (snapshot INTEGER NOT NULL REFERENCES snapshots(id), "
        "path TEXT NOT NULL, size INTEGER NOT NULL, sha256 TEXT NOT NULL, "
        "git_sha1 TEXT NOT NULL, lfs INTEGER NOT NULL, PRIMARY KEY (snapshot, path)) WITHOUT ROWID"
    )
    db["files"].create_index(["sha256"])
    db.execute(
        "CREATE TABLE refs (repo INTEGER NOT NULL REFERENCES repos(id), kind TEXT NOT NULL, "
        "name TEXT NOT NULL, commit_id TEXT NOT NULL, seq INTEGER NOT NULL, "
        "updated_at REAL NOT NULL, PRIMARY KEY (repo, kind, name)) WITHOUT ROWID"
    )
    db["blobs"].create(
        {
            "sha256": str, "size": int, "git_sha1": str, "blake3": str, "piece_length": int,
            "pieces": bytes, "created_at": float, "verified_at": float,
        },
        pk="sha256",
        not_null={"size", "blake3", "created_at"},
    )
    db["state"].create({"key": str, "value": int}, pk="key")
    db.execute("INSERT INTO state (key, value) VALUES ('seq', 0)")


def _m2(db: sqlite_utils.Database) -> None:
    """Search (FTS5 trigram index over repo ids, kept in step by triggers) and the flag for
    safetensors files whose header did not validate."""
    db.execute(
        "CREATE VIRTUAL TABLE repos_fts USING fts5(repo_id, content='repos', "
        "content_rowid='id', tokenize='trigram')"
    )
    db.execute(
        "CREATE TRIGGER repos_fts_insert AFTER INSERT ON repos BEGIN "
        "INSERT INTO repos_fts(rowid, repo_id) VALUES (new.id, new.repo_id); END"
    )
    db.execute(
        "CREATE TRIGGER repos_fts_delete AFTER DELETE ON repos BEGIN "
        "INSERT INTO repos_fts(repos_fts, rowid, repo_id) VALUES ('delete', old.id, old.repo_id); "
        "END"
    )
    db.execute(
        "CREATE TRIGGER repos_fts_update AFTER UPDATE OF repo_id ON repos BEGIN "
        "INSERT INTO repos_fts(repos_fts, rowid, repo_id) VALUES ('delete', old.id, old.repo_id); "
        "INSERT INTO repos_fts(rowid, repo_id) VALUES (new.id, new.repo_id); END"
    )
    db.execute("INSERT INTO repos_fts(repos_fts) VALUES ('rebuild')")
    db.execute("ALTER TABLE snapshots ADD COLUMN invalid_safetensors TEXT")


def _m3(db: sqlite_utils.Database) -> None:
    """Syncs know a small file upstream by its git sha1 only: find its blob by that."""
    db["blobs"].create_index(["git_sha1"])


def _m4(db: sqlite_utils.Database) -> None:
    """Sync runs (for `mirror status`), and repos an archive keeps after the upstream lost them."""
    db["sync_runs"].create(
        {"id": int, "spec": str, "pid": int, "started_at": float, "finished_at": float,
         "status": str, "repo_id": str, "commit_id": str, "files": int, "fetched": int,
         "bytes": int, "error": str},
        pk="id", not_null={"spec", "started_at", "status"},
    )
    db["sync_runs"].create_index(["started_at"])
    db.execute("ALTER TABLE repos ADD COLUMN gone_upstream_at REAL")


def _m5(db: sqlite_utils.Database) -> None:
    """Blobs a scrub found corrupt on disk: not seeded nor served until repaired."""
    db.execute("ALTER TABLE blobs ADD COLUMN corrupt_at REAL")
    db.execute("ALTER TABLE blobs ADD COLUMN corrupt_reason TEXT")


def _m6(db: sqlite_utils.Database) -> None:
    """Bundles (mirror/bundle/): the manifests as the exporting mirror signed them, served as
    they are, and the newest ref statement imported from each exporting key (refs only move
    forward)."""
    db.execute(
        "CREATE TABLE signed_manifests (hub TEXT NOT NULL, type TEXT NOT NULL, "
        "repo_id TEXT NOT NULL, commit_id TEXT NOT NULL, envelope BLOB NOT NULL, "
        "key TEXT NOT NULL, PRIMARY KEY (hub, type, repo_id, commit_id)) WITHOUT ROWID"
    )
    db.execute(
        "CREATE TABLE bundle_refs (key TEXT NOT NULL, hub TEXT NOT NULL, type TEXT NOT NULL, "
        "repo_id TEXT NOT NULL, ref TEXT NOT NULL, seq INTEGER NOT NULL, "
        "commit_id TEXT NOT NULL, PRIMARY KEY (key, hub, type, repo_id, ref)) WITHOUT ROWID"
    )


def _m7(db: sqlite_utils.Database) -> None:
    """Blobs a bundle import took in for a snapshot still waiting for other volumes: nothing
    references them until it is published, and `gc` must not take them meanwhile (volumes may
    come days apart, one drive at a time)."""
    db.execute(
        "CREATE TABLE pending_blobs (sha256 TEXT NOT NULL, snapshot TEXT NOT NULL, "
        "since REAL NOT NULL, PRIMARY KEY (sha256, snapshot)) WITHOUT ROWID"
    )


def _m8(db: sqlite_utils.Database) -> None:
    """Which upstream hash each file was checked against (`VERIFIED_BY`): a Kaggle file's trust
    rests on an MD5 from a storage header, or on nothing, and a user must be able to see that.
    NULL for files published before this was recorded. And when the upstream made each ref
    (ModelScope's `CreatedAt`: tags on one commit keep their own dates, and its client picks
    a tag by them); NULL: when this mirror first set it (`updated_at`)."""
    db.execute("ALTER TABLE files ADD COLUMN verified_by TEXT")
    db.execute("ALTER TABLE refs ADD COLUMN created_at REAL")


def _m9(db: sqlite_utils.Database) -> None:
    """The catalog feed (mirror/feed.py; issue 18): each repo's sequence number at its last
    change a reader of the feed must learn, and the repos a reader must forget (removed, or
    made private) with the number of that. Every repo there is gets a number of its own,
    past every ref's, so that a reader from 0 is sent them all."""
    db.execute("ALTER TABLE repos ADD COLUMN seq INTEGER NOT NULL DEFAULT 0")
    base = db.execute("SELECT value FROM state WHERE key = 'seq'").fetchone()[0]
    ids = [row[0] for row in db.execute("SELECT id FROM repos ORDER BY id").fetchall()]
    db.conn.executemany("UPDATE repos SET seq = ? WHERE id = ?",
                        [(base + n, rid) for n, rid in enumerate(ids, 1)])
    db.execute("UPDATE state SET value = ? WHERE key = 'seq'", (base + len(ids),))
    db.execute("CREATE INDEX repos_seq ON repos (seq)")
    db.execute(
        "CREATE TABLE feed_tombstones (hub TEXT NOT NULL, type TEXT NOT NULL, "
        "repo_id TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (hub, type, repo_id)) "
        "WITHOUT ROWID"
    )
    db.execute("CREATE INDEX feed_tombstones_seq ON feed_tombstones (seq)")


def _m10(db: sqlite_utils.Database) -> None:
    """Where a sync run's bytes came from (mirror/network.py `sources_record`): the upstream,
    other mirrors (issue 18, item 6). NULL for runs before this was recorded."""
    db.execute("ALTER TABLE sync_runs ADD COLUMN sources TEXT")


def _m11(db: sqlite_utils.Database) -> None:
    """What the pickle scanner found in each blob of a pickle-based format (mirror/scan.py;
    issue 20): its verdict, the dangerous globals, why, and which scanner said so."""
    db.execute(
        "CREATE TABLE scans (sha256 TEXT PRIMARY KEY, status TEXT NOT NULL, "
        "found TEXT NOT NULL DEFAULT '[]', reason TEXT NOT NULL DEFAULT '', "
        "scanner TEXT NOT NULL, scanned_at REAL NOT NULL) WITHOUT ROWID"
    )


def _m12(db: sqlite_utils.Database) -> None:
    """Repo access set by glob (`mirror access GLOB LEVEL`; issue 20): for the repos it matched
    when set, and for those published later. The latest rule that matches a repo wins."""
    db.execute(
        "CREATE TABLE access_rules (glob TEXT PRIMARY KEY, access TEXT NOT NULL, "
        "set_at REAL NOT NULL) WITHOUT ROWID"
    )


def _m13(db: sqlite_utils.Database) -> None:
    """The listing's sorts served by indexes (the search page and `/api/models?sort=`): at
    100,000 repos, a sort without one took about 100 ms a page. And each repo's size (its
    main branch's files; before this, its latest snapshot's), which the search page sorts by."""
    db.execute("ALTER TABLE repos ADD COLUMN size INTEGER NOT NULL DEFAULT 0")
    db.execute("UPDATE repos SET size = coalesce((SELECT sum(f.size) FROM files f WHERE "
               "f.snapshot = (SELECT s.id FROM snapshots s WHERE s.repo = repos.id "
               "ORDER BY s.created_at DESC LIMIT 1)), 0)")
    for column in ("downloads", "updated_at", "likes", "created_at", "size"):
        db.execute(f"CREATE INDEX IF NOT EXISTS repos_by_{column} ON repos "
                   f"(hub, type, {column} DESC, repo_id)")


def _m14(db: sqlite_utils.Database) -> None:
    """Model cards rendered when their snapshot is published (issue 21): Markdown took most of
    a repo page's first view (45 ms, against 4-8 ms for the views after). By the README's blob,
    zlib-compressed, with the renderer's version (`peer.pages.RENDERER`). Cards published
    before this are rendered on their first view and kept then."""
    db.execute("CREATE TABLE cards (sha256 TEXT PRIMARY KEY, renderer INTEGER NOT NULL, "
               "html BLOB NOT NULL) WITHOUT ROWID")


#: MIGRATIONS[i] takes the schema from version i to i + 1.
MIGRATIONS = [_m1, _m2, _m3, _m4, _m5, _m6, _m7, _m8, _m9, _m10, _m11, _m12, _m13, _m14]
#: sort key of the listing API → column (all sorts are descending unless asked otherwise).
SORTS = {
    "downloads": "downloads", "likes": "likes", "lastModified": "updated_at",
    "createdAt": "created_at", "trendingScore": "downloads", "id": "repo_id",
    # ours (the search page's): the main branch's bytes
    "size": "size",
}
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True)
class Repo:
    id: int
    hub: str
    type: str
    repo_id: str
    access: str
    created_at: float
    updated_at: float
    downloads: int = 0
    likes: int = 0
    card: dict = field(default_factory=dict)
    #: when a sync found the repo deleted upstream (an archive keeps serving it)
    gone_upstream_at: float | None = None

    @property
    def author(self) -> str | None:
        return self.repo_id.split("/")[0] if "/" in self.repo_id else None


@dataclass(frozen=True)
class Snapshot:
    id: int
    repo: int
    commit: str
    parent: str | None
    title: str
    message: str
    created_at: float
    card_data: dict
    safetensors: dict | None
    #: safetensors files whose header did not validate: path → reason (served all the same)
    invalid_safetensors: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Ref:
    kind: str
    name: str
    commit: str
    seq: int
    updated_at: float
    #: when the upstream made it, if it said (else None: see `updated_at`)
    created_at: float | None = None


@dataclass(frozen=True)
class BlobRecord:
    sha256: str
    size: int
    git_sha1: str | None
    blake3: str
    piece_length: int
    pieces: bytes


@dataclass
class NewSnapshot:
    """What an importer or a sync hands to `publish`: a whole snapshot and the refs to move."""

    hub: str
    type: str
    repo_id: str
    commit: str
    files: list[FileEntry]
    refs: list[tuple[str, str]]  # (kind, name)
    title: str = ""
    message: str = ""
    parent: str | None = None
    created_at: float | None = None
    card_data: dict = field(default_factory=dict)
    safetensors: dict | None = None
    invalid_safetensors: dict = field(default_factory=dict)
    #: the repo's access; None: as it is (a new repo: public). An access rule that matches the
    #: repo (`Catalog.set_access`) wins over both.
    access: str | None = "public"
    #: path → one of VERIFIED_BY (files left out: not recorded)
    verified_by: dict = field(default_factory=dict)
    #: (kind, name) → when the upstream made that ref
    ref_times: dict = field(default_factory=dict)
    #: (README's sha256, renderer, its body as `peer.pages.card_markdown` renders it), if any
    card_html: tuple[str, int, str] | None = None


#: bytes kept in reserve beside the catalog (`catalog.sqlite.reserve`), given up when the disk
#: is full so that the failure can still be recorded (a sync run's reason, say)
RESERVE = 1 << 20


class Catalog:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        #: `facets` answers, with the sequence they were counted at
        self._facets: dict[tuple, tuple[int, dict]] = {}
        self.reserve_path = self.path.with_name(self.path.name + ".reserve")
        with self._space():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None,
                                   check_same_thread=False)
            self.conn = conn
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = NORMAL")
            self._use_wal()
            self._migrate()
        self._keep_reserve()

    def close(self) -> None:
        self.conn.close()

    # -- a full disk ---------------------------------------------------------------------------

    @contextmanager
    def _space(self) -> Iterator[None]:
        """A full disk is `InsufficientSpace`, said in one line (sqlite says "database or
        disk is full", or cannot open its files)."""
        try:
            yield
        except OSError as e:
            full = out_of_space(e, self.path.parent, writing=f"the catalog {self.path}")
            if full is None:
                raise
            raise full from e
        except sqlite3.Error as e:
            if not _disk_full(e, self.path.parent):
                raise
            free = shutil.disk_usage(self.path.parent).free
            raise InsufficientSpace(None, free, str(self.path.parent),
                                    writing=f"the catalog {self.path.name}") from e

    def _keep_reserve(self) -> None:
        """Put the reserve back where it was given up, if the disk has room now."""
        if self.reserve_path.exists():
            return
        try:
            atomic.write_new(self.reserve_path, bytes(RESERVE))
        except InsufficientSpace:
            pass  # still full: the next catalog opened tries again

    def recording(self, write: Callable[..., T], *args, **kwargs) -> T:
        """`write(*args, **kwargs)`, and again once with the reserve given up if the disk was
        full: what must be recorded (why a sync failed) is recorded even then."""
        try:
            return write(*args, **kwargs)
        except InsufficientSpace:
            if not self._give_up_reserve():
                raise
            log.warning("the disk of %s is full: gave up its reserve to record", self.path)
            return write(*args, **kwargs)

    def _give_up_reserve(self) -> bool:
        try:
            self.reserve_path.unlink()
            return True
        except FileNotFoundError:
            return False

    def _use_wal(self) -> None:
        """WAL mode is persistent: set it once. Switching needs an exclusive lock, for which
        sqlite does not always wait, so two brand-new catalogs opened at once retry briefly."""
        for attempt in range(100):
            if self.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return
            try:
                self.conn.execute("PRAGMA journal_mode = WAL")
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or attempt == 99:
                    raise
                time.sleep(0.05)

    def _version(self) -> int:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"catalog {self.path} has schema {version}, newer than this weightswarm "
                f"({SCHEMA_VERSION}): upgrade weightswarm"
            )
        return version

    def _migrate(self) -> None:
        if self._version() == SCHEMA_VERSION:
            return  # the common case; sqlite-utils (a tenth of a second to import) not needed
        import sqlite_utils

        with self.transaction():
            version = self._version()  # again, under the write lock: another may have migrated
            for step in MIGRATIONS[version:]:
                step(sqlite_utils.Database(self.conn))
            if version != SCHEMA_VERSION:
                self.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction that holds the write lock from its start (no upgrade races)."""
        with self._space():
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise

    # -- repos, snapshots, refs --------------------------------------------------------------

    def repo(self, hub: str, type: str, repo_id: str) -> Repo:
        row = self.conn.execute(
            f"SELECT {_REPO_COLUMNS} FROM repos WHERE hub = ? AND type = ? AND repo_id = ?",
            (hub, type, repo_id),
        ).fetchone()
        if row is None:
            raise RepoNotFound(repo_id, type)
        return _repo(row)

    def repos(self, hub: str | None = None) -> list[Repo]:
        where = " WHERE hub = ?" if hub else ""
        rows = self.conn.execute(
            f"SELECT {_REPO_COLUMNS} FROM repos{where} ORDER BY hub, type, repo_id",
            (hub,) if hub else (),
        ).fetchall()
        return [_repo(row) for row in rows]

    def refs(self, repo: Repo) -> list[Ref]:
        rows = self.conn.execute(
            "SELECT kind, name, commit_id, seq, updated_at, created_at FROM refs WHERE repo = ? "
            "ORDER BY kind, name", (repo.id,)
        ).fetchall()
        return [Ref(*row) for row in rows]

    def resolve(self, repo: Repo, revision: str) -> str:
        """A branch, tag, `refs/...` name or full commit id → the commit it names."""
        kinds: tuple[tuple[str, str], ...]
        if revision.startswith("refs/heads/"):
            kinds = (("branch", revision[11:]),)
        elif revision.startswith("refs/tags/"):
            kinds = (("tag", revision[10:]),)
        elif revision.startswith("refs/pr/"):
            kinds = (("pr", revision[8:]),)
        elif revision.startswith("refs/convert/"):
            kinds = (("convert", revision[13:]),)
        else:
            kinds = (("branch", revision), ("tag", revision))
            if repo.hub == hubs.MODELSCOPE and revision in DEFAULT_BRANCHES:
                # ModelScope's default branch is `master`, the HF clients ask for `main`:
                # either name finds the other where the repo has only one of them.
                other = DEFAULT_BRANCHES[1 - DEFAULT_BRANCHES.index(revision)]
                kinds = (*kinds, ("branch", other))
        for kind, name in kinds:
            row = self.conn.execute(
                "SELECT commit_id FROM refs WHERE repo = ? AND kind = ? AND name = ?",
                (repo.id, kind, name),
            ).fetchone()
            if row:
                return row[0]
        if is_commit(revision) and self._snapshot_row(repo, revision):
            return revision
        raise RevisionNotFound(repo.repo_id, revision)

    def _snapshot_row(self, repo: Repo, commit: str) -> tuple | None:
        return self.conn.execute(
            "SELECT id, repo, commit_id, parent, title, message, created_at, card_data, "
            "safetensors, invalid_safetensors FROM snapshots WHERE repo = ? AND commit_id = ?",
            (repo.id, commit),
        ).fetchone()

    def snapshot(self, repo: Repo, commit: str) -> Snapshot:
        row = self._snapshot_row(repo, commit)
        if row is None:
            raise RevisionNotFound(repo.repo_id, commit)
        sid, rid, c, parent, title, message, created, card, st, invalid = row
        return Snapshot(sid, rid, c, parent, title or "", message or "", created,
                        json.loads(card) if card else {}, json.loads(st) if st else None,
                        json.loads(invalid) if invalid else {})

    def snapshots(self, repo: Repo) -> list[str]:
        return [r[0] for r in self.conn.execute(
            "SELECT commit_id FROM snapshots WHERE repo = ? ORDER BY created_at, id", (repo.id,))]

    def files(self, snapshot: Snapshot) -> list[FileEntry]:
        rows = self.conn.execute(
            "SELECT path, size, sha256, git_sha1, lfs FROM files WHERE snapshot = ? ORDER BY path",
            (snapshot.id,),
        ).fetchall()
        return [FileEntry(p, s, h, g, bool(lfs)) for p, s, h, g, lfs in rows]

    def verified_by(self, snapshot: Snapshot) -> dict[str, str]:
        """path → what the file was checked against (VERIFIED_BY), where that was recorded."""
        return dict(self.conn.execute(
            "SELECT path, verified_by FROM files WHERE snapshot = ? AND verified_by IS NOT NULL "
            "ORDER BY path", (snapshot.id,)).fetchall())

    def file(self, snapshot: Snapshot, path: str) -> FileEntry | None:
        row = self.conn.execute(
            "SELECT path, size, sha256, git_sha1, lfs FROM files WHERE snapshot = ? AND path = ?",
            (snapshot.id, path),
        ).fetchone()
        return FileEntry(row[0], row[1], row[2], row[3], bool(row[4])) if row else None

    def card(self, sha256: str, renderer: int) -> str | None:
        """The rendered card of a README blob, if it was rendered by this renderer."""
        row = self.conn.execute("SELECT html FROM cards WHERE sha256 = ? AND renderer = ?",
                                (sha256, renderer)).fetchone()
        return zlib.decompress(row[0]).decode() if row else None

    def put_card(self, sha256: str, renderer: int, html: str) -> None:
        with self.transaction() as c:
            _put_card(c, sha256, renderer, html)

    def blob_is_public(self, sha256: str) -> bool:
        """True when a published snapshot of a public repo holds the blob (the web-seed rule)."""
        row = self.conn.execute(
            "SELECT 1 FROM files f JOIN snapshots s ON s.id = f.snapshot "
            "JOIN repos r ON r.id = s.repo WHERE f.sha256 = ? AND r.access = 'public' LIMIT 1",
            (sha256,),
        ).fetchone()
        return row is not None

    def publish(self, new: NewSnapshot, now: float | None = None) -> Snapshot:
        """Make a snapshot, its files and its refs visible, all at once."""
        now = time.time() if now is None else now
        if new.access not in (*ACCESS_LEVELS, None):
            raise ValueError(f"access must be one of {ACCESS_LEVELS}")
        if any(kind not in REF_KINDS for kind, _ in new.refs):
            raise ValueError(f"ref kind must be one of {REF_KINDS}")
        with self.transaction() as c:
            key = (new.hub, new.type, new.repo_id)
            before, seq_before = _feed_view(c, key), self._seq(c)
            repo_pk = self._put_repo(c, new, now)
            self._put_snapshot(c, repo_pk, new, now)
            for kind, name in new.refs:
                self._move_ref(c, repo_pk, kind, name, new.commit, now,
                               new.ref_times.get((kind, name)))
            self._note_change(c, key, before, seq_before)
            if new.card_html is not None:
                _put_card(c, *new.card_html)
        return self.snapshot(self.repo(new.hub, new.type, new.repo_id), new.commit)

    @staticmethod
    def _put_repo(c: sqlite3.Connection, new: NewSnapshot, now: float) -> int:
        """The repo's row, made or touched; its card metadata follows its main branch."""
        row = c.execute(
            "SELECT id FROM repos WHERE hub = ? AND type = ? AND repo_id = ?",
            (new.hub, new.type, new.repo_id),
        ).fetchone()
        access = _ruled_access(c, new.repo_id) or new.access
        if row:
            repo_pk = row[0]
            c.execute("UPDATE repos SET updated_at = ?, access = coalesce(?, access) "
                      "WHERE id = ?", (now, access, repo_pk))
        else:
            repo_pk = c.execute(
                "INSERT INTO repos (hub, type, repo_id, access, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (new.hub, new.type, new.repo_id, access or "public", now, now),
            ).lastrowid
        # ModelScope's default branch is master (DEFAULT_BRANCHES)
        if any(kind == "branch" and name in DEFAULT_BRANCHES for kind, name in new.refs) \
                or not row:
            card = {k: new.card_data.get(k) for k in CARD_FIELDS
                    if new.card_data.get(k) is not None}
            c.execute("UPDATE repos SET size = ? WHERE id = ?",
                      (sum(f.size for f in new.files), repo_pk))
            c.execute(
                "UPDATE repos SET license = ?, pipeline_tag = ?, library_name = ?, tags = ?, "
                "base_model = ?, datasets = ?, language = ?, card_data = ? WHERE id = ?",
                (
                    _text(card.get("license")), _text(card.get("pipeline_tag")),
                    _text(card.get("library_name")),
                    json.dumps(derive_tags(card, new.safetensors is not None)),
                    json.dumps(_list(card.get("base_model"))),
                    json.dumps(_list(card.get("datasets"))),
                    json.dumps(_list(card.get("language"))),
                    json.dumps(new.card_data, default=str), repo_pk,
                ),
            )
        return repo_pk

    @staticmethod
    def _put_snapshot(c: sqlite3.Connection, repo_pk: int, new: NewSnapshot, now: float) -> None:
        """The snapshot and its files, unless it is here already (snapshots are immutable)."""
        if c.execute("SELECT 1 FROM snapshots WHERE repo = ? AND commit_id = ?",
                     (repo_pk, new.commit)).fetchone():
            return
        sid = c.execute(
            "INSERT INTO snapshots (repo, commit_id, parent, title, message, created_at, "
            "card_data, safetensors, invalid_safetensors) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                repo_pk, new.commit, new.parent, new.title, new.message,
                new.created_at or now, json.dumps(new.card_data, default=str),
                json.dumps(new.safetensors) if new.safetensors else None,
                json.dumps(new.invalid_safetensors) if new.invalid_safetensors else None,
            ),
        ).lastrowid
        if any(v not in VERIFIED_BY for v in new.verified_by.values()):
            raise ValueError(f"verified_by must be one of {VERIFIED_BY}")
        c.executemany(
            "INSERT INTO files (snapshot, path, size, sha256, git_sha1, lfs, verified_by) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(sid, f.path, f.size, f.sha256, f.git_sha1, int(f.lfs), new.verified_by.get(f.path))
             for f in new.files],
        )

    def _move_ref(self, c: sqlite3.Connection, repo_pk: int, kind: str, name: str, commit: str,
                  now: float, created: float | None = None) -> None:
        """Point a ref at `commit`, with the next sequence number (unless it points there)."""
        current = c.execute(
            "SELECT commit_id FROM refs WHERE repo = ? AND kind = ? AND name = ?",
            (repo_pk, kind, name),
        ).fetchone()
        if current and current[0] == commit:
            return
        c.execute(
            "INSERT INTO refs (repo, kind, name, commit_id, seq, updated_at, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (repo, kind, name) DO UPDATE SET "
            "commit_id = excluded.commit_id, seq = excluded.seq, "
            "updated_at = excluded.updated_at, created_at = excluded.created_at",
            (repo_pk, kind, name, commit, self._next_seq(c), now, created),
        )

    @staticmethod
    def _next_seq(c: sqlite3.Connection) -> int:
        c.execute("UPDATE state SET value = value + 1 WHERE key = 'seq'")
        return c.execute("SELECT value FROM state WHERE key = 'seq'").fetchone()[0]

    @staticmethod
    def _seq(c: sqlite3.Connection) -> int:
        return c.execute("SELECT value FROM state WHERE key = 'seq'").fetchone()[0]

    def sequence(self) -> int:
        return self._seq(self.conn)

    def _note_change(self, c: sqlite3.Connection, key: tuple[str, str, str],
                     before: tuple | None, seq_before: int) -> None:
        """In the transaction that changed a repo: give it the sequence number of the change
        (the last ref it moved, else a new one; nothing when a reader would see no change),
        and keep its tombstone: a repo removed or made private is one a reader must forget,
        while one that is visible again is sent whole, tombstone or not (mirror/feed.py)."""
        after = _feed_view(c, key)
        moved = self._seq(c)
        if moved == seq_before and after == before:
            return  # the same commit published again: no number burnt
        seq = moved if moved > seq_before else self._next_seq(c)
        c.execute("UPDATE repos SET seq = ? WHERE hub = ? AND type = ? AND repo_id = ?",
                  (seq, *key))
        if after is not None and after[0] != "private":
            c.execute("DELETE FROM feed_tombstones WHERE hub = ? AND type = ? AND repo_id = ?",
                      key)
        elif before is not None and before[0] != "private":
            # A repo private from the start is never named: no reader ever knew it.
            c.execute("INSERT INTO feed_tombstones (hub, type, repo_id, seq) VALUES (?, ?, ?, ?) "
                      "ON CONFLICT DO UPDATE SET seq = excluded.seq", (*key, seq))

    # -- access (mirror/access.py decides; the catalog holds each repo's) -------------------

    def set_access(self, glob: str, access: str, now: float | None = None) -> list[Repo]:
        """Set the access of every repo `glob` matches (fnmatch; an exact id is a glob), and
        of those published later under it. Returns the repos whose access changed; each is a
        change the feed sends (made private: a tombstone)."""
        if access not in ACCESS_LEVELS:
            raise ValueError(f"access must be one of {ACCESS_LEVELS}")
        now = time.time() if now is None else now
        changed = []
        with self.transaction() as c:
            c.execute("INSERT INTO access_rules (glob, access, set_at) VALUES (?, ?, ?) "
                      "ON CONFLICT DO UPDATE SET access = excluded.access, "
                      "set_at = excluded.set_at", (glob, access, now))
            rows = c.execute(f"SELECT {_REPO_COLUMNS} FROM repos WHERE access != ?",
                             (access,)).fetchall()
            for repo in map(_repo, rows):
                if not fnmatch.fnmatchcase(repo.repo_id, glob):
                    continue
                key = (repo.hub, repo.type, repo.repo_id)
                before, seq_before = _feed_view(c, key), self._seq(c)
                c.execute("UPDATE repos SET access = ?, updated_at = ? WHERE id = ?",
                          (access, now, repo.id))
                self._note_change(c, key, before, seq_before)
                changed.append(repo)
        return changed

    def add_downloads(self, counts: dict[tuple[str, str, str], int]) -> None:
        """Whole-file downloads served, per (hub, type, repo id): the listing's `downloads`."""
        with self.transaction() as c:
            c.executemany("UPDATE repos SET downloads = downloads + ? WHERE hub = ? AND "
                          "type = ? AND repo_id = ?",
                          [(n, *key) for key, n in counts.items()])

    def ruled_access(self, repo_id: str) -> str | None:
        """The access the latest rule matching `repo_id` sets (a repo not held yet), if any."""
        return _ruled_access(self.conn, repo_id)

    def access_rules(self) -> list[tuple[str, str, float]]:
        """(glob, access, when set), the latest last."""
        return [tuple(r) for r in self.conn.execute(
            "SELECT glob, access, set_at FROM access_rules ORDER BY set_at, glob")]

    def private_repos(self, hub: str, type: str) -> list[tuple[int, str]]:
        """(row id, repo id) of a hub's private repos of a type: the few a listing may show
        to a reader with the right (`search(readable=...)`)."""
        return [tuple(r) for r in self.conn.execute(
            "SELECT id, repo_id FROM repos WHERE hub = ? AND type = ? AND access = 'private'",
            (hub, type))]

    def facets(self, hub: str, type: str, top: int = 30,
               sample: int = 1000) -> dict[str, list[str]]:
        """The most common libraries, licences and tags of a hub's repos of a type, for the
        search page's filters; counted over the `sample` latest updated, and kept until the
        catalog's sequence moves (every search page asks: 14 ms a time at 100,000 repos)."""
        seq, asked = self.sequence(), (hub, type, top, sample)
        kept = self._facets.get(asked)
        if kept is not None and kept[0] == seq:
            return kept[1]
        recent = ("SELECT library_name, license, tags FROM repos WHERE hub = ? AND type = ? "
                  "AND access != 'private' ORDER BY updated_at DESC LIMIT ?")
        out = {}
        for key, expr in (("library", "library_name"), ("license", "license")):
            out[key] = [r[0] for r in self.conn.execute(
                f"SELECT {expr}, count(*) AS n FROM ({recent}) WHERE {expr} IS NOT NULL "  # noqa: S608
                f"GROUP BY {expr} ORDER BY n DESC, {expr} LIMIT ?", (hub, type, sample, top))]
        out["tag"] = [r[0] for r in self.conn.execute(
            f"SELECT j.value, count(*) AS n FROM ({recent}) r, json_each(r.tags) j "  # noqa: S608
            "WHERE j.value NOT LIKE '%:%' GROUP BY j.value ORDER BY n DESC, j.value LIMIT ?",
            (hub, type, sample, top))]
        if len(self._facets) > 64:
            self._facets.clear()
        self._facets[asked] = (seq, out)
        return out

    def blob_access(self, sha256: str) -> list[tuple[str, str, str, str]]:
        """(hub, type, repo id, access) of every repo a published snapshot of which holds
        these bytes."""
        return [tuple(r) for r in self.conn.execute(
            "SELECT DISTINCT r.hub, r.type, r.repo_id, r.access FROM files f "
            "JOIN snapshots s ON s.id = f.snapshot JOIN repos r ON r.id = s.repo "
            "WHERE f.sha256 = ? LIMIT 1000", (sha256,))]

    # -- the catalog feed (mirror/feed.py) ------------------------------------------------------

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: every query in it sees the catalog as it was at its first."""
        self.conn.execute("BEGIN")
        try:
            yield self.conn
        finally:
            if self.conn.in_transaction:
                self.conn.execute("COMMIT")

    def feed_repos(self, since: int, limit: int) -> list[tuple[int, Repo]]:
        """(sequence, repo) of the repos a feed reader sees (public and gated) whose last
        change came after `since`, oldest change first."""
        rows = self.conn.execute(
            f"SELECT seq, {_REPO_COLUMNS} FROM repos WHERE seq > ? AND access != 'private' "
            "ORDER BY seq LIMIT ?", (since, limit)).fetchall()
        return [(row[0], _repo(row[1:])) for row in rows]

    def feed_tombstones(self, since: int, limit: int) -> list[tuple[int, str, str, str]]:
        """(sequence, hub, type, repo id) of the repos removed or made private after `since`
        (and not visible again since), oldest first."""
        return [tuple(row) for row in self.conn.execute(
            "SELECT seq, hub, type, repo_id FROM feed_tombstones WHERE seq > ? ORDER BY seq "
            "LIMIT ?", (since, limit)).fetchall()]

    def snapshot_sizes(self, repo: Repo) -> list[tuple[str, float, int, int]]:
        """(commit, created at, file count, total bytes) of each of the repo's snapshots."""
        return [tuple(row) for row in self.conn.execute(
            "SELECT s.commit_id, s.created_at, count(f.path), coalesce(sum(f.size), 0) "
            "FROM snapshots s LEFT JOIN files f ON f.snapshot = s.id WHERE s.repo = ? "
            "GROUP BY s.id ORDER BY s.created_at, s.id", (repo.id,)).fetchall()]

    def search(
        self,
        hub: str,
        type: str,
        *,
        search: list[str] = (),
        author: str | None = None,
        tags: list[str] = (),
        sort: str | None = None,
        ascending: bool = False,
        offset: int = 0,
        limit: int = 1000,
        readable: tuple[int, ...] = (),
    ) -> list[Repo]:
        """Repos of one hub and type, as HF's listing finds them: `search` terms are
        case-insensitive substrings of the id (FTS5 trigram; LIKE under three characters),
        `author` the namespace, every one of `tags` present. Private repos are listed only
        when `readable` names them (row ids, from `private_repos`)."""
        where = ["r.hub = ?", "r.type = ?"]
        args: list = [hub, type]
        if readable:
            where.append(f"(r.access != 'private' OR r.id IN "
                         f"({', '.join('?' * len(readable))}))")
            args.extend(readable)
        else:
            where.append("r.access != 'private'")
        for term in search:
            if len(term) >= 3:
                # Always one quoted phrase: FTS5 syntax in user input is just text.
                where.append("r.id IN (SELECT rowid FROM repos_fts WHERE repos_fts MATCH ?)")
                args.append('"' + term.replace('"', '""') + '"')
            elif term:
                where.append("r.repo_id LIKE ? ESCAPE '\\'")
                args.append("%" + _like_escape(term) + "%")
        if author:
            where.append("r.repo_id LIKE ? ESCAPE '\\'")
            args.append(_like_escape(author) + "/%")
        for tag in tags:
            where.append("EXISTS (SELECT 1 FROM json_each(r.tags) WHERE value = ?)")
            args.append(tag)
        column = SORTS.get(sort or "id")
        if column is None:
            raise ValueError(f"sort must be one of {', '.join(SORTS)}")
        order = "ASC" if ascending or column == "repo_id" else "DESC"
        sql = (
            f"SELECT {_REPO_COLUMNS_R} FROM repos r WHERE {' AND '.join(where)} "
            f"ORDER BY r.{column} {order}, r.repo_id ASC LIMIT ? OFFSET ?"
        )
        rows = self.conn.execute(sql, (*args, limit, offset)).fetchall()
        return [_repo(row) for row in rows]

    def remove(self, repo: Repo, revision: str | None = None) -> list[str]:
        """Remove a whole repo, or one revision of it: a commit (with the refs naming it) or
        a ref (and its snapshot, if no other ref names it). Returns the commits removed.
        Blobs stay in the store until `gc`."""
        key = (repo.hub, repo.type, repo.repo_id)
        with self.transaction() as c:
            before, seq_before = _feed_view(c, key), self._seq(c)
            if revision is None:
                commits = [r[0] for r in c.execute(
                    "SELECT commit_id FROM snapshots WHERE repo = ?", (repo.id,))]
                c.execute("DELETE FROM refs WHERE repo = ?", (repo.id,))
            else:
                commit = self.resolve(repo, revision)
                if is_commit(revision) and revision == commit:
                    c.execute("DELETE FROM refs WHERE repo = ? AND commit_id = ?", (repo.id, commit))
                else:
                    kind, name = _ref_key(revision, c, repo.id)
                    c.execute("DELETE FROM refs WHERE repo = ? AND kind = ? AND name = ?",
                              (repo.id, kind, name))
                still = c.execute("SELECT 1 FROM refs WHERE repo = ? AND commit_id = ?",
                                  (repo.id, commit)).fetchone()
                commits = [] if still else [commit]
            for commit in commits:
                sid = c.execute("SELECT id FROM snapshots WHERE repo = ? AND commit_id = ?",
                                (repo.id, commit)).fetchone()[0]
                c.execute("DELETE FROM files WHERE snapshot = ?", (sid,))
                c.execute("UPDATE snapshots SET parent = NULL WHERE repo = ? AND parent = ?",
                          (repo.id, commit))
                c.execute("DELETE FROM snapshots WHERE id = ?", (sid,))
            left = c.execute("SELECT count(*) FROM snapshots WHERE repo = ?", (repo.id,)).fetchone()
            if revision is None or left[0] == 0:
                c.execute("DELETE FROM repos WHERE id = ?", (repo.id,))
            self._note_change(c, key, before, seq_before)
        return commits

    def unreferenced_blobs(self, touched_before: float) -> list[str]:
        """Blobs no snapshot references, last recorded before `touched_before` (an import in
        progress records its blobs before it publishes: the grace period keeps them)."""
        rows = self.conn.execute(
            "SELECT b.sha256 FROM blobs b WHERE NOT EXISTS "
            "(SELECT 1 FROM files f WHERE f.sha256 = b.sha256) AND NOT EXISTS "
            "(SELECT 1 FROM pending_blobs p WHERE p.sha256 = b.sha256) AND b.verified_at < ?",
            (touched_before,),
        ).fetchall()
        return [r[0] for r in rows]

    def forget_blob(self, sha256: str, touched_before: float) -> bool:
        """Drop a blob's record unless a snapshot references it or an import touched it since
        `touched_before` (checked in the same transaction, so a concurrent import wins)."""
        with self.transaction() as c:
            if c.execute("SELECT 1 FROM files WHERE sha256 = ? LIMIT 1", (sha256,)).fetchone():
                return False
            if c.execute("SELECT 1 FROM pending_blobs WHERE sha256 = ? LIMIT 1",
                         (sha256,)).fetchone():
                return False
            row = c.execute("SELECT verified_at FROM blobs WHERE sha256 = ?", (sha256,)).fetchone()
            if row and row[0] is not None and row[0] >= touched_before:
                return False
            c.execute("DELETE FROM blobs WHERE sha256 = ?", (sha256,))
            c.execute("DELETE FROM cards WHERE sha256 = ?", (sha256,))
            return True

    def referenced(self, sha256: str) -> bool:
        """A snapshot's file, or held for one still waiting for bundle volumes."""
        return self.conn.execute(
            "SELECT 1 FROM files WHERE sha256 = ? UNION ALL "
            "SELECT 1 FROM pending_blobs WHERE sha256 = ? LIMIT 1",
            (sha256, sha256)).fetchone() is not None

    def hold(self, snapshot: str, sha256s: Iterable[str], now: float | None = None) -> None:
        """Keep these blobs from `gc` for `snapshot` (hub/type/repo@commit), until `release`."""
        now = time.time() if now is None else now
        with self.transaction() as c:
            c.executemany("INSERT OR IGNORE INTO pending_blobs VALUES (?, ?, ?)",
                          [(h, snapshot, now) for h in sha256s])

    def release(self, snapshot: str) -> None:
        with self.transaction() as c:
            c.execute("DELETE FROM pending_blobs WHERE snapshot = ?", (snapshot,))

    def pending(self) -> dict[str, int]:
        """Snapshots waiting for bundle volumes → how many blobs are held for each."""
        return dict(self.conn.execute(
            "SELECT snapshot, count(*) FROM pending_blobs GROUP BY snapshot").fetchall())

    def mark_gone_upstream(self, repo: Repo, when: float | None) -> None:
        """Record (or clear, with None) that the upstream no longer has this repo."""
        with self.transaction() as c:
            c.execute("UPDATE repos SET gone_upstream_at = ? WHERE id = ?", (when, repo.id))

    def start_run(self, spec: str, pid: int, now: float, sources: str | None = None) -> int:
        with self.transaction() as c:
            return c.execute(
                "INSERT INTO sync_runs (spec, pid, started_at, status, sources) "
                "VALUES (?, ?, ?, 'running', ?)", (spec, pid, now, sources),
            ).lastrowid

    def finish_run(self, run_id: int, now: float, *, status: str, repo_id: str | None = None,
                   commit: str | None = None, files: int = 0, fetched: int = 0,
                   nbytes: int = 0, error: str | None = None,
                   sources: str | None = None) -> None:
        with self.transaction() as c:
            c.execute(
                "UPDATE sync_runs SET finished_at = ?, status = ?, repo_id = ?, commit_id = ?, "
                "files = ?, fetched = ?, bytes = ?, error = ?, sources = ? WHERE id = ?",
                (now, status, repo_id, commit, files, fetched, nbytes, error, sources, run_id),
            )

    def runs(self, limit: int = 50) -> list[dict]:
        cursor = self.conn.execute(
            "SELECT id, spec, pid, started_at, finished_at, status, repo_id, commit_id, files, "
            "fetched, bytes, error, sources FROM sync_runs ORDER BY started_at DESC, id DESC "
            "LIMIT ?",
            (limit,),
        )
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    # -- scans (mirror/scan.py) ------------------------------------------------------------------

    def put_scan(self, sha256: str, verdict: Verdict, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO scans VALUES (?, ?, ?, ?, ?, ?)",
                      (sha256, verdict.status, json.dumps(list(verdict.found)), verdict.reason,
                       verdict.scanner, now))

    def scan_of(self, sha256: str) -> Verdict | None:
        row = self.conn.execute("SELECT status, found, reason, scanner FROM scans "
                                "WHERE sha256 = ?", (sha256,)).fetchone()
        return Verdict(row[0], tuple(json.loads(row[1])), row[2], row[3]) if row else None

    def suspicious(self, sha256: str) -> bool:
        """The pickle scanner flagged this blob (what quarantine keeps from everyone)."""
        return self.conn.execute("SELECT 1 FROM scans WHERE sha256 = ? AND status = ?",
                                 (sha256, SUSPICIOUS)).fetchone() is not None

    def scans(self, snapshot: Snapshot) -> dict[str, Verdict]:
        """path → the verdict on its blob, for the snapshot's scanned files."""
        return {path: Verdict(status, tuple(json.loads(found)), reason, scanner)
                for path, status, found, reason, scanner in self.conn.execute(
                    "SELECT f.path, s.status, s.found, s.reason, s.scanner FROM files f "
                    "JOIN scans s ON s.sha256 = f.sha256 WHERE f.snapshot = ? ORDER BY f.path",
                    (snapshot.id,))}

    def flagged(self, repo: Repo) -> dict[str, str]:
        """path → verdict, for the repo's files (any snapshot) whose verdict is not safe."""
        return dict(self.conn.execute(
            "SELECT DISTINCT f.path, c.status FROM snapshots s JOIN files f ON f.snapshot = s.id "
            "JOIN scans c ON c.sha256 = f.sha256 WHERE s.repo = ? AND c.status != 'safe' "
            "ORDER BY f.path", (repo.id,)).fetchall())

    def scannable(self) -> list[tuple[str, str, str]]:
        """(sha256, a path it is published under, the scanner of its verdict or '') for every
        published blob, one path each: what `mirror scan` looks at."""
        return self.conn.execute(
            "SELECT f.sha256, min(f.path), coalesce(c.scanner, '') FROM files f "
            "LEFT JOIN scans c ON c.sha256 = f.sha256 GROUP BY f.sha256 ORDER BY f.sha256"
        ).fetchall()

    def scan_counts(self) -> dict[str, int]:
        """Scanned blobs by verdict."""
        return dict(self.conn.execute("SELECT status, count(*) FROM scans GROUP BY status"))

    def store_bytes(self) -> int:
        return self.conn.execute("SELECT coalesce(sum(size), 0) FROM blobs").fetchone()[0]

    # -- blobs ------------------------------------------------------------------------------

    def put_blob(self, d: Digests, now: float | None = None) -> None:
        """Record a blob's hashes; an existing record gains what it lacked (a git sha1 when the
        same bytes arrive as a non-LFS file, piece hashes when they arrive as LFS)."""
        now = time.time() if now is None else now
        with self.transaction() as c:
            c.execute(
                "INSERT INTO blobs (sha256, size, git_sha1, blake3, piece_length, pieces, "
                "created_at, verified_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (sha256) DO UPDATE SET "
                "git_sha1 = coalesce(blobs.git_sha1, excluded.git_sha1), "
                "piece_length = CASE WHEN blobs.piece_length > 0 THEN blobs.piece_length "
                "ELSE excluded.piece_length END, "
                "pieces = CASE WHEN blobs.piece_length > 0 THEN blobs.pieces "
                "ELSE excluded.pieces END, verified_at = excluded.verified_at, "
                # the store holds verified bytes again: whatever a scrub found is mended
                "corrupt_at = NULL, corrupt_reason = NULL",
                (d.sha256, d.size, d.git_sha1, d.blake3, d.piece_length, d.pieces, now, now),
            )

    def seedable_blobs(self, quarantine: bool = False, *,
                       private: bool = False) -> list[BlobRecord]:
        """Blobs that travel over BitTorrent in the public swarm: large (they have piece
        hashes), held by a public repo, and not found corrupt; with `quarantine`, not flagged
        by the pickle scanner either. `private`: those of private swarms instead, held by
        gated or private repos and by no public one."""
        flagged = ("AND NOT EXISTS (SELECT 1 FROM scans c WHERE c.sha256 = b.sha256 "
                   "AND c.status = 'suspicious')") if quarantine else ""
        held = ("EXISTS (SELECT 1 FROM files f JOIN snapshots s ON s.id = f.snapshot "
                "JOIN repos r ON r.id = s.repo WHERE f.sha256 = b.sha256{})")
        where = held.format(" AND r.access = 'public'")
        if private:
            where = f"{held.format('')} AND NOT {where}"
        rows = self.conn.execute(
            "SELECT b.sha256, b.size, b.git_sha1, b.blake3, b.piece_length, b.pieces FROM blobs b "
            f"WHERE b.piece_length > 0 AND b.corrupt_at IS NULL AND {where} {flagged}"  # noqa: S608
        ).fetchall()
        return [BlobRecord(*row) for row in rows]

    def mark_corrupt(self, sha256: str, reason: str, now: float | None = None) -> None:
        with self.transaction() as c:
            c.execute("UPDATE blobs SET corrupt_at = ?, corrupt_reason = ? WHERE sha256 = ?",
                      (time.time() if now is None else now, reason, sha256))

    def clear_corrupt(self, sha256: str, now: float | None = None) -> None:
        """The blob was mended and verified again."""
        with self.transaction() as c:
            c.execute("UPDATE blobs SET corrupt_at = NULL, corrupt_reason = NULL, "
                      "verified_at = ? WHERE sha256 = ?",
                      (time.time() if now is None else now, sha256))

    def corrupt_blobs(self) -> list[tuple[BlobRecord, str]]:
        rows = self.conn.execute(
            "SELECT sha256, size, git_sha1, blake3, piece_length, pieces, corrupt_reason "
            "FROM blobs WHERE corrupt_at IS NOT NULL").fetchall()
        return [(BlobRecord(*row[:6]), row[6]) for row in rows]

    def holders(self, sha256: str) -> list[tuple[str, str, str, str, str]]:
        """(hub, type, repo id, commit, path) of every published file with these bytes."""
        return [tuple(row) for row in self.conn.execute(
            "SELECT r.hub, r.type, r.repo_id, s.commit_id, f.path FROM files f "
            "JOIN snapshots s ON s.id = f.snapshot JOIN repos r ON r.id = s.repo "
            "WHERE f.sha256 = ? ORDER BY s.created_at DESC", (sha256,)).fetchall()]

    def sync_spec_for(self, repo_id: str) -> str | None:
        """The spec of the latest successful sync that brought this repo (an author sync
        records every repo it brought, comma-separated)."""
        row = self.conn.execute(
            "SELECT spec FROM sync_runs WHERE status = 'ok' AND (repo_id = ? OR "
            "', ' || repo_id || ', ' LIKE '%, ' || ? || ', %' ESCAPE '\\') "
            "ORDER BY started_at DESC LIMIT 1", (repo_id, _like_escape(repo_id))).fetchone()
        return row[0] if row else None

    # -- what bundles brought (mirror/bundle/) ------------------------------------------------

    def put_signed_manifest(self, hub: str, type: str, repo_id: str, commit: str,
                            envelope: bytes, key: str) -> None:
        """Keep a manifest as another mirror signed it (checked by the caller)."""
        with self.transaction() as c:
            c.execute(
                "INSERT INTO signed_manifests (hub, type, repo_id, commit_id, envelope, key) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (hub, type, repo_id, commit, envelope, key))

    def signed_manifest(self, hub: str, type: str, repo_id: str, commit: str) -> bytes | None:
        row = self.conn.execute(
            "SELECT envelope FROM signed_manifests WHERE hub = ? AND type = ? AND repo_id = ? "
            "AND commit_id = ?", (hub, type, repo_id, commit)).fetchone()
        return row[0] if row else None

    def bundle_ref(self, key: str, hub: str, type: str, repo_id: str,
                   ref: str) -> tuple[int, str] | None:
        """(sequence, commit) of the newest statement about `ref` imported from `key`."""
        row = self.conn.execute(
            "SELECT seq, commit_id FROM bundle_refs WHERE key = ? AND hub = ? AND type = ? "
            "AND repo_id = ? AND ref = ?", (key, hub, type, repo_id, ref)).fetchone()
        return (row[0], row[1]) if row else None

    def note_bundle_ref(self, key: str, hub: str, type: str, repo_id: str, ref: str, seq: int,
                        commit: str) -> None:
        with self.transaction() as c:
            c.execute(
                "INSERT INTO bundle_refs (key, hub, type, repo_id, ref, seq, commit_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET seq = excluded.seq, "
                "commit_id = excluded.commit_id", (key, hub, type, repo_id, ref, seq, commit))

    def blob_count(self) -> int:
        return self.conn.execute("SELECT count(*) FROM blobs").fetchone()[0]

    def blob_by_git_sha1(self, git_sha1: str) -> BlobRecord | None:
        row = self.conn.execute(
            "SELECT sha256, size, git_sha1, blake3, piece_length, pieces FROM blobs "
            "WHERE git_sha1 = ? LIMIT 1", (git_sha1,)
        ).fetchone()
        return BlobRecord(*row) if row else None

    def blob(self, sha256: str) -> BlobRecord | None:
        row = self.conn.execute(
            "SELECT sha256, size, git_sha1, blake3, piece_length, pieces FROM blobs "
            "WHERE sha256 = ?", (sha256,)
        ).fetchone()
        return BlobRecord(*row) if row else None

    def blobs(self, repo: Repo | None = None) -> Iterable[BlobRecord]:
        if repo is None:
            sql, args = "SELECT sha256, size, git_sha1, blake3, piece_length, pieces FROM blobs", ()
        else:
            sql = (
                "SELECT DISTINCT b.sha256, b.size, b.git_sha1, b.blake3, b.piece_length, b.pieces "
                "FROM blobs b JOIN files f ON f.sha256 = b.sha256 "
                "JOIN snapshots s ON s.id = f.snapshot WHERE s.repo = ?"
            )
            args = (repo.id,)
        for row in self.conn.execute(sql, args).fetchall():
            yield BlobRecord(*row)


#: sqlite's result codes of a full disk, and of the I/O and opening errors a full disk causes
_FULL_CODES = frozenset(getattr(sqlite3, n) for n in ("SQLITE_FULL",) if hasattr(sqlite3, n))
_MAYBE_FULL = frozenset(getattr(sqlite3, n) for n in ("SQLITE_IOERR", "SQLITE_CANTOPEN")
                        if hasattr(sqlite3, n))


def _disk_full(error: sqlite3.Error, folder: Path) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    if code in _FULL_CODES or "database or disk is full" in str(error):
        return True
    # An I/O or open error on a disk with (next to) nothing left is the full disk too.
    if code is not None and (code & 0xFF) in _MAYBE_FULL:
        try:
            return shutil.disk_usage(folder).free < 64 * 1024
        except OSError:
            return False
    return False


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, list):
        return str(value[0]) if value else None
    return str(value)


def _list(value) -> list:
    if value is None:
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    return [str(value)]


_REPO_COLUMNS = (
    "id, hub, type, repo_id, access, created_at, updated_at, downloads, likes, license, "
    "pipeline_tag, library_name, tags, base_model, datasets, language, card_data, "
    "gone_upstream_at"
)


_REPO_COLUMNS_R = ", ".join(f"r.{c.strip()}" for c in _REPO_COLUMNS.split(","))


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


_REF_PREFIXES = (("refs/heads/", "branch"), ("refs/tags/", "tag"), ("refs/pr/", "pr"),
                 ("refs/convert/", "convert"))


def ref_of(name: str) -> tuple[str, str]:
    """(kind, short name) of a ref written in full (refs/pr/1 → pr 1); a bare name is a branch."""
    for prefix, kind in _REF_PREFIXES:
        if name.startswith(prefix):
            return kind, name[len(prefix):]
    return "branch", name


def _ref_key(revision: str, c: sqlite3.Connection, repo_pk: int) -> tuple[str, str]:
    """The ref a revision names in this repo: a full name, else a branch or tag of that name."""
    if any(revision.startswith(prefix) for prefix, _ in _REF_PREFIXES):
        return ref_of(revision)
    for kind in ("branch", "tag"):
        if c.execute("SELECT 1 FROM refs WHERE repo = ? AND kind = ? AND name = ?",
                     (repo_pk, kind, revision)).fetchone():
            return kind, revision
    return "branch", revision


def _put_card(c: sqlite3.Connection, sha256: str, renderer: int, html: str) -> None:
    c.execute("INSERT OR REPLACE INTO cards (sha256, renderer, html) VALUES (?, ?, ?)",
              (sha256, renderer, zlib.compress(html.encode(), 6)))


def _ruled_access(c: sqlite3.Connection, repo_id: str) -> str | None:
    """The access the latest rule matching `repo_id` sets, if one does."""
    for glob, access in c.execute(
            "SELECT glob, access FROM access_rules ORDER BY set_at DESC, glob DESC"):
        if fnmatch.fnmatchcase(repo_id, glob):
            return access
    return None


def _feed_view(c: sqlite3.Connection, key: tuple[str, str, str]) -> tuple | None:
    """What a feed reader sees of a repo, access first (None: no such repo): a change of it
    moves the repo's sequence number (with the refs' numbers, which move by themselves)."""
    return c.execute(
        "SELECT r.access, r.license, r.pipeline_tag, r.library_name, r.tags, r.base_model, "
        "r.datasets, r.language, (SELECT count(*) FROM snapshots s WHERE s.repo = r.id), "
        "(SELECT count(*) FROM refs f WHERE f.repo = r.id) FROM repos r "
        "WHERE r.hub = ? AND r.type = ? AND r.repo_id = ?", key).fetchone()


def _repo(row: tuple) -> Repo:
    (id_, hub, type_, repo_id, access, created, updated, downloads, likes, license_, pipeline,
     library, tags, base_model, datasets, language, card_data, gone) = row
    card = {
        "license": license_, "pipeline_tag": pipeline, "library_name": library,
        "tags": json.loads(tags or "[]"), "base_model": json.loads(base_model or "[]"),
        "datasets": json.loads(datasets or "[]"), "language": json.loads(language or "[]"),
        "card_data": json.loads(card_data or "{}"),
    }
    return Repo(id_, hub, type_, repo_id, access, created, updated, downloads or 0, likes or 0,
                card, gone)
