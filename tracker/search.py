"""The index's answers over what the feeds said (issue 18, items 3 and 4): one entry per repo
across every mirror, kept in step with the per-mirror rows as each feed is applied, searched as
a mirror searches its catalog (the HF listing contract); and `locate`, the mirrors holding a
revision, nearest first for the asking address.

The tables are tracker/index.py's (its migrations). `refresh` runs inside the writer's
transaction; `search` and `locate_rows` run on a reader's connection; the orders and the JSON
are plain functions.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import random
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

from peer.hfformat import iso_z
from peer.listing import ListQuery
from peer.locate import NEARNESS, LocatedMirror
from peer.paths import is_commit

RepoKey = tuple[str, str, str]

#: the listing's sorts → the entry's columns: the index keeps no download counts, so the
#: popularity sorts order by how many mirrors hold the repo's newest main
SORTS = {"downloads": "mirrors", "likes": "mirrors", "trendingScore": "mirrors",
         "lastModified": "updated_at", "createdAt": "created_at", "id": "repo_id"}
#: the branches a repo's "main revision" is: ModelScope's default is `master`
DEFAULT_BRANCHES = ("main", "master")

#: one statement an item (a trigger holds semicolons of its own)
M2 = [
    """ALTER TABLE mirrors ADD COLUMN weight REAL NOT NULL DEFAULT 1.0""",
    """ALTER TABLE snapshots ADD COLUMN torrents TEXT NOT NULL DEFAULT '[]'""",
    """CREATE INDEX refs_by_id ON refs (hub, type, repo_id)""",
    """CREATE INDEX snapshots_by_id ON snapshots (hub, type, repo_id)""",
    """CREATE TABLE entries (
    id INTEGER PRIMARY KEY, hub TEXT NOT NULL, type TEXT NOT NULL, repo_id TEXT NOT NULL,
    author TEXT COLLATE NOCASE, commit_id TEXT NOT NULL, mirrors INTEGER NOT NULL,
    behind INTEGER NOT NULL, size INTEGER NOT NULL, files INTEGER NOT NULL,
    updated_at REAL NOT NULL, created_at REAL NOT NULL, gated INTEGER NOT NULL,
    tags TEXT NOT NULL, license TEXT, pipeline_tag TEXT, library_name TEXT,
    torrents TEXT NOT NULL, UNIQUE (hub, type, repo_id))""",
    """CREATE INDEX entries_by_author ON entries (hub, type, author, repo_id)""",
    """CREATE INDEX entries_by_updated ON entries (hub, type, updated_at)""",
    """CREATE INDEX entries_by_created ON entries (hub, type, created_at)""",
    """CREATE INDEX entries_by_mirrors ON entries (hub, type, mirrors)""",
    """CREATE TABLE entry_tags (tag TEXT NOT NULL, entry INTEGER NOT NULL,
    PRIMARY KEY (tag, entry)) WITHOUT ROWID""",
    """CREATE VIRTUAL TABLE entries_fts USING fts5(repo_id, content='entries', content_rowid='id',
    tokenize='trigram')""",
    """CREATE TRIGGER entries_fts_insert AFTER INSERT ON entries BEGIN
    INSERT INTO entries_fts(rowid, repo_id) VALUES (new.id, new.repo_id); END""",
    """CREATE TRIGGER entries_fts_delete AFTER DELETE ON entries BEGIN
    INSERT INTO entries_fts(entries_fts, rowid, repo_id) VALUES ('delete', old.id, old.repo_id);
    DELETE FROM entry_tags WHERE entry = old.id; END""",
]
#: deleting an entry's tags (each refresh, and the delete trigger) finds them by entry
M3 = ["""CREATE INDEX IF NOT EXISTS entry_tags_by_entry ON entry_tags (entry)"""]


# -- the entries: kept in step with the mirrors' rows -----------------------------------------


def touch(c: sqlite3.Connection, keys: Iterable[RepoKey]) -> None:
    """Mark repos whose entries `refresh` recomputes (inside the writer's transaction)."""
    c.execute("CREATE TEMP TABLE IF NOT EXISTS touched (hub TEXT NOT NULL, type TEXT NOT NULL,"
              " repo_id TEXT NOT NULL, PRIMARY KEY (hub, type, repo_id)) WITHOUT ROWID")
    c.executemany("INSERT OR IGNORE INTO temp.touched VALUES (?, ?, ?)", keys)


def touch_mirror(c: sqlite3.Connection, mirror: str | None) -> None:
    """Mark every repo a mirror holds (every repo of every mirror: None)."""
    touch(c, ())
    where, args = ("WHERE mirror = ?", (mirror,)) if mirror is not None else ("", ())
    c.execute(f"INSERT OR IGNORE INTO temp.touched SELECT hub, type, repo_id FROM repos {where}",  # noqa: S608
              args)


def refresh(c: sqlite3.Connection) -> int:
    """Recompute the entry of every touched repo from every mirror's rows, in a few set-wide
    queries: its newest main revision, how many mirrors hold it and how many are behind, its
    size, dates, card fields and torrents. A repo no mirror holds any more loses its entry.
    Returns the entries touched."""
    touch(c, ())
    held: dict[RepoKey, dict[str, tuple]] = {}
    for row in c.execute(
            "SELECT r.hub, r.type, r.repo_id, r.mirror, r.gated, r.tags, r.license,"
            " r.pipeline_tag, r.library_name FROM temp.touched t CROSS JOIN repos r"
            " ON r.hub = t.hub AND r.type = t.type AND r.repo_id = t.repo_id"):
        held.setdefault(row[:3], {})[row[3]] = row[4:]
    heads: dict[tuple, str] = {}
    for hub, type_, repo_id, mirror, name, commit in c.execute(
            "SELECT f.hub, f.type, f.repo_id, f.mirror, f.name, f.commit_id FROM temp.touched t"
            " CROSS JOIN refs f ON f.hub = t.hub AND f.type = t.type AND f.repo_id = t.repo_id"
            " WHERE f.kind = 'branch' AND f.name IN ('main', 'master')"):
        slot = (hub, type_, repo_id, mirror)
        if name == "main" or slot not in heads:
            heads[slot] = commit
    snaps: dict[tuple, list[tuple]] = {}
    for row in c.execute(
            "SELECT s.hub, s.type, s.repo_id, s.mirror, s.commit_id, s.created_at, s.size,"
            " s.files, s.torrents FROM temp.touched t CROSS JOIN snapshots s ON s.hub = t.hub"
            " AND s.type = t.type AND s.repo_id = t.repo_id"):
        snaps.setdefault(row[:4], []).append(row[4:])
    keys = [tuple(k) for k in c.execute("SELECT hub, type, repo_id FROM temp.touched")]
    gone = [k for k in keys if k not in held]
    c.executemany("DELETE FROM entries WHERE hub = ? AND type = ? AND repo_id = ?", gone)
    _write_entries(c, {key: _entry(key, mirrors, heads, snaps)
                       for key, mirrors in held.items()})
    c.execute("DELETE FROM temp.touched")
    return len(keys)


@dataclass(frozen=True)
class _Entry:
    commit: str
    mirrors: int
    behind: int
    size: int
    files: int
    updated_at: float
    created_at: float
    gated: bool
    card: tuple  # tags (json), license, pipeline_tag, library_name
    torrents: str


def _entry(key: RepoKey, mirrors: dict[str, tuple], heads: dict, snaps: dict) -> _Entry:
    """One repo's entry: each mirror's head is its main (or master) branch, else its newest
    snapshot; the newest head by date is the repo's; the mirrors at another are behind."""
    holding: dict[str, tuple] = {}
    for mirror in mirrors:
        own = {s[0]: s for s in snaps.get((*key, mirror), ())}
        head = heads.get((*key, mirror))
        snap = own.get(head) if head else max(own.values(), key=lambda s: s[1], default=None)
        if snap is not None:
            holding[mirror] = snap
    if not holding:  # refs without snapshots: a feed refuses those, so only defensively
        return _Entry("0" * 40, 0, len(mirrors), 0, 0, 0.0, 0.0, False, ("[]", None, None, None),
                      "[]")
    chosen = max(holding, key=lambda m: (holding[m][1], holding[m][0]))
    newest = holding[chosen]
    count = sum(snap[0] == newest[0] for snap in holding.values())
    first = min(s[1] for m in mirrors for s in snaps.get((*key, m), ()))
    _gated, *card = mirrors[chosen]
    return _Entry(newest[0], count, len(mirrors) - count, newest[2], newest[3], newest[1],
                  first, any(m[0] for m in mirrors.values()), tuple(card), newest[4])


def _write_entries(c: sqlite3.Connection, entries: dict[RepoKey, _Entry]) -> None:
    """The touched repos' entries, in a few statements for the lot: those held are updated in
    place (their id, so their full-text row, stays; their tags are rewritten only if they
    changed), the new ones inserted with the next ids (the writer is alone in its
    transaction)."""
    held = {tuple(r[1:4]): (r[0], r[4]) for r in c.execute(
        "SELECT e.id, e.hub, e.type, e.repo_id, e.tags FROM temp.touched t CROSS JOIN entries e"
        " ON e.hub = t.hub AND e.type = t.type AND e.repo_id = t.repo_id")}
    next_id = c.execute("SELECT coalesce(max(id), 0) FROM entries").fetchone()[0] + 1
    updates, inserts, retag, tags = [], [], [], []
    for key, e in entries.items():
        values = (e.commit, e.mirrors, e.behind, e.size, e.files, e.updated_at, e.created_at,
                  int(e.gated), *e.card, e.torrents)
        if key in held:
            entry, old_tags = held[key]
            updates.append((*values, entry))
            if old_tags == e.card[0]:
                continue
            retag.append((entry,))
        else:
            entry, next_id = next_id, next_id + 1
            author = key[2].partition("/")[0] if "/" in key[2] else None
            inserts.append((entry, *key, author, *values))
        tags.extend((tag, entry) for tag in json.loads(e.card[0]))
    c.executemany(
        "UPDATE entries SET commit_id = ?, mirrors = ?, behind = ?, size = ?, files = ?,"
        " updated_at = ?, created_at = ?, gated = ?, tags = ?, license = ?, pipeline_tag = ?,"
        " library_name = ?, torrents = ? WHERE id = ?", updates)
    c.executemany(f"INSERT INTO entries (id, {_ENTRY_COLUMNS}) VALUES"  # noqa: S608
                  f" ({', '.join('?' * 18)})", inserts)
    c.executemany("DELETE FROM entry_tags WHERE entry = ?", retag)
    c.executemany("INSERT OR IGNORE INTO entry_tags VALUES (?, ?)", tags)


# -- search: the HF listing over the entries --------------------------------------------------


@dataclass(frozen=True)
class EntryRow:
    hub: str
    type: str
    repo_id: str
    author: str | None
    commit: str
    mirrors: int
    behind: int
    size: int
    files: int
    updated_at: float
    created_at: float
    gated: bool
    tags: tuple[str, ...]
    license: str | None
    pipeline_tag: str | None
    library_name: str | None
    torrents: tuple[str, ...]


_ENTRY_COLUMNS = ("hub, type, repo_id, author, commit_id, mirrors, behind, size, files,"
                  " updated_at, created_at, gated, tags, license, pipeline_tag, library_name,"
                  " torrents")


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


#: a search term or tag matching at most this many entries is searched from its matches (then
#: sorted); one matching more, by walking the listing's order until a page is found
FEW = 2000


def search(conn: sqlite3.Connection, hub: str, type_: str, q: ListQuery) -> list[EntryRow]:
    """The entries a listing asks for, `q.limit` + 1 of them (the extra one says there is a
    next page): search terms are case-insensitive substrings of the id, `author` the
    namespace, every `filter` tag present.

    A term or tag with few matches (FEW) is searched from them: the full-text index (FTS5
    trigram) or the tag's rows, then sorted. One with many is checked row by row while the
    listing's own index is walked in order (LIKE: ids are ASCII, so it matches as the trigram
    index does), which stops after a page: each found at least every N/FEW rows. Either way a
    page costs about FEW rows at most, not every match nor every entry (issue 18's benchmark)."""
    where, args, few = ["hub = ?", "type = ?"], [hub, type_], False
    for term in q.search:
        matches = [] if len(term) < 3 else [row[0] for row in conn.execute(
            "SELECT rowid FROM entries_fts WHERE entries_fts MATCH ? LIMIT ?",
            ('"' + term.replace('"', '""') + '"', FEW + 1))]
        if len(term) >= 3 and len(matches) <= FEW:
            where.append(f"id IN ({', '.join(map(str, matches)) or 'NULL'})")
            few = True
        else:
            where.append("repo_id LIKE ? ESCAPE '\\'")
            args.append("%" + _like_escape(term) + "%")
    if q.author:
        where.append("author = ?")
        args.append(q.author)
    for tag in q.tags:
        count = conn.execute("SELECT count(*) FROM (SELECT 1 FROM entry_tags WHERE tag = ?"
                             " LIMIT ?)", (tag, FEW + 1)).fetchone()[0]
        if count <= FEW:
            where.append("id IN (SELECT entry FROM entry_tags WHERE tag = ?)")
            few = True
        else:
            where.append("EXISTS (SELECT 1 FROM entry_tags WHERE tag = ? AND entry = entries.id)")
        args.append(tag)
    column = SORTS[q.sort or "id"]
    order = "ASC" if q.ascending or column == "repo_id" else "DESC"
    # `repo_id` twice would keep sqlite from the author index (it satisfies one, not both)
    then = "" if column == "repo_id" else ", repo_id ASC"
    # From the matches by rowid, then sorted: no index walked (sqlite would walk the order's)
    source = "entries NOT INDEXED" if few else "entries"
    rows = conn.execute(
        f"SELECT {_ENTRY_COLUMNS} FROM {source} WHERE {' AND '.join(where)}"  # noqa: S608
        f" ORDER BY {column} {order}{then} LIMIT ? OFFSET ?",
        (*args, q.limit + 1, q.offset)).fetchall()
    return [EntryRow(*r[:11], bool(r[11]), tuple(json.loads(r[12])), *r[13:16],
                     tuple(json.loads(r[16]))) for r in rows]


def entry_json(e: EntryRow, *, seeders: int, full: bool, card: bool) -> dict:
    """One item of the index's /api/models or /api/datasets: the mirror's listing shape, and
    ours under `weightswarm` (the client keeps unknown keys)."""
    item: dict = {"id": e.repo_id, "author": e.author, "likes": 0, "trendingScore": 0,
                  "private": False, "downloads": 0, "tags": list(e.tags),
                  "createdAt": iso_z(e.created_at), "lastModified": iso_z(e.updated_at),
                  "weightswarm": {"hub": e.hub, "mirrors": e.mirrors, "behind": e.behind,
                                  "seeders": seeders, "size": e.size, "files": e.files,
                                  "sha": e.commit}}
    if e.type == "model":
        item["modelId"] = e.repo_id
        item["pipeline_tag"] = e.pipeline_tag
        item["library_name"] = e.library_name
    if full:
        item.update(sha=e.commit, gated="manual" if e.gated else False, disabled=False,
                    usedStorage=e.size)
    if card:
        item["cardData"] = {k: v for k, v in (("license", e.license), ("tags", list(e.tags)),
                                              ("pipeline_tag", e.pipeline_tag),
                                              ("library_name", e.library_name)) if v}
    return {k: v for k, v in item.items() if v is not None}


# -- locate: who holds a revision, nearest first ----------------------------------------------


@dataclass(frozen=True)
class Holder:
    """A mirror that holds the revision, with what the index knows of it."""

    key: str
    name: str | None
    base_url: str
    bittorrent: str | None
    site: str | None
    region: str | None
    netblocks: tuple[str, ...]
    weight: float
    demoted: bool
    stale: bool
    last_verified: float | None
    commit: str
    manifest_sha256: str
    created_at: float


def holders(conn: sqlite3.Connection, hub: str, type_: str, repo_id: str, revision: str,
            stale_before: float) -> list[Holder]:
    """Every mirror holding `revision` of the repo (`holder_rows`), as it stands now."""
    return holders_at(holder_rows(conn, hub, type_, repo_id, revision), stale_before)


def holder_rows(conn: sqlite3.Connection, hub: str, type_: str, repo_id: str, revision: str
                ) -> list[tuple]:
    """The rows of every mirror holding `revision` of the repo: a commit it has a snapshot of,
    or a ref (a branch or tag of that name; `main` and `master` stand for each other, as a
    mirror resolves them) naming a snapshot it has. They depend on the index's contents only
    (whether a mirror is stale is `holders_at`'s, at the time of asking), so they can be kept
    until the index changes."""
    if is_commit(revision):
        match, args = "s.commit_id = ?", [revision]
    else:
        names = DEFAULT_BRANCHES if revision in DEFAULT_BRANCHES else (revision,)
        match = ("s.commit_id = (SELECT f.commit_id FROM refs f WHERE f.mirror = s.mirror"
                 " AND f.hub = s.hub AND f.type = s.type AND f.repo_id = s.repo_id"
                 f" AND f.name IN ({', '.join('?' * len(names))})"
                 " ORDER BY f.kind = 'branch' DESC, f.name = ? DESC LIMIT 1)")
        args = [*names, revision]
    rows = conn.execute(
        "SELECT m.key, m.name, m.base_url, m.bittorrent, m.site, m.region, m.netblocks,"
        " m.weight, m.demoted, m.last_polled, m.last_error, m.last_verified, s.commit_id,"
        " s.manifest_sha256, s.created_at FROM snapshots s JOIN mirrors m ON m.key = s.mirror"
        f" WHERE s.hub = ? AND s.type = ? AND s.repo_id = ? AND {match}",  # noqa: S608
        (hub, type_, repo_id, *args)).fetchall()
    return [(*r[:6], tuple(json.loads(r[6])), *r[7:]) for r in rows]


def holders_at(rows: list[tuple], stale_before: float) -> list[Holder]:
    """`holder_rows` as Holders: a mirror not polled since `stale_before`, or whose last poll
    failed, is stale."""
    return [Holder(*r[:8], bool(r[8]),
                   r[9] is None or r[9] < stale_before or r[10] is not None, *r[11:])
            for r in rows]


@functools.lru_cache(maxsize=4096)
def _networks(netblocks: tuple[str, ...]) -> tuple:
    return tuple(map(ipaddress.ip_network, netblocks))


def _address(address: str | None):
    if address is None:
        return None
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        return None


def nearness(h: Holder, address, where: tuple[str | None, str | None]) -> str:
    """Where a mirror stands for an address (text, or one `ipaddress` parsed): in its declared
    netblocks, at its site, in its region (by the tracker's sites map), or none of these."""
    ip = _address(address) if isinstance(address, str) else address
    if ip is not None and any(ip.version == n.version and ip in n
                              for n in _networks(h.netblocks)):
        return "netblock"
    site, region = where
    if site is not None and h.site == site:
        return "site"
    if region is not None and h.region == region:
        return "region"
    return "other"


def order(found: list[Holder], address: str | None, where: tuple[str | None, str | None],
          rng: random.Random) -> list[LocatedMirror]:
    """Nearest first (netblock, site, region, the rest), demoted or stale mirrors last; among
    equals a weighted random order (Efraimidis-Spirakis: each draws u^(1/weight)); each
    marked behind if it holds an older commit than the newest any of them holds."""
    if not found:
        return []
    newest = max(found, key=lambda h: (h.created_at, h.commit)).commit
    ip = _address(address)
    ranked = []
    for h in found:
        near = nearness(h, ip, where)
        draw = rng.random() ** (1.0 / h.weight)
        ranked.append(((h.demoted or h.stale, NEARNESS.index(near), -draw), h, near))
    ranked.sort(key=lambda r: r[0])
    return [LocatedMirror(h.key, h.name, h.base_url, h.bittorrent, h.site, h.region, h.commit,
                          h.manifest_sha256, h.commit != newest, near, h.demoted, h.stale,
                          h.last_verified) for _, h, near in ranked]
