"""The index's entries, search and locate order, over the store (issue 18, items 3, 4 and 7):
one entry per repo across mirrors kept in step with every feed, revocation and tombstone; the
HF listing's parameters; nearest first by netblock, site, region; behind, demoted and stale
marked; weighted random among equals."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from peer.feed import Feed, FeedRef, FeedRepo, FeedSnapshot, Tombstone
from peer.keys import public_key_text
from peer.listing import parse_list_query
from tracker import search
from tracker.index import MIGRATIONS, IndexStore, Registration

HF = "huggingface"
NOW = 1_800_000_000.0
OLD, NEW = "a" * 40, "b" * 40
TORRENT = "c" * 40


def _repo(repo_id: str, seq: int, commit: str = OLD, *, created: float = NOW, tags=("tiny",),
          branch: str = "main", torrents=()) -> FeedRepo:
    return FeedRepo(HF, "model", repo_id, seq, False, NOW, tuple(tags), "mit", "fill-mask",
                    None, (FeedRef("branch", branch, commit, seq),),
                    (FeedSnapshot(commit, "d" * 64, 100 * seq, 3, created, tuple(torrents)),))


def _feed(since: int, upto: int, repos=(), removed=()) -> Feed:
    return Feed("k", since, upto, since == 0, False, tuple(repos), tuple(removed))


@pytest.fixture
def store(tmp_path):
    s = IndexStore(tmp_path / "index.sqlite")
    yield s
    s.close()


def _mirror(store, port: int, *, site=None, region=None, netblocks=(), weight=1.0) -> str:
    key = public_key_text(Ed25519PrivateKey.generate())
    store.register(Registration(key, f"http://127.0.0.1:{port}", None, site, region,
                                tuple(netblocks), NOW, weight), f"m{port}", NOW)
    with store.transaction() as c:
        c.execute("UPDATE mirrors SET last_polled = ? WHERE key = ?", (NOW, key))
    return key


class _Params(dict):
    """The MultiDict face parse_list_query reads."""

    def getall(self, name, default=()):
        value = self.get(name)
        return default if value is None else (value if isinstance(value, list) else [value])


def _list(store, **params) -> list[search.EntryRow]:
    return search.search(store.conn, HF, "model", parse_list_query(_Params(params)))


def test_one_entry_per_repo_counts_the_mirrors_at_its_newest_main_and_those_behind(store):
    a, b, c = (_mirror(store, p) for p in (1, 2, 3))
    store.apply_feed(a, _feed(0, 2, [_repo("org/shared", 1, OLD, created=NOW - 100),
                                     _repo("org/only-a", 2)]), NOW)
    store.apply_feed(b, _feed(0, 1, [_repo("org/shared", 1, NEW, created=NOW)]), NOW)
    store.apply_feed(c, _feed(0, 1, [_repo("org/shared", 1, NEW, created=NOW)]), NOW)
    rows = {r.repo_id: r for r in _list(store)}
    assert set(rows) == {"org/only-a", "org/shared"}
    shared = rows["org/shared"]
    assert (shared.commit, shared.mirrors, shared.behind) == (NEW, 2, 1)
    assert (rows["org/only-a"].mirrors, rows["org/only-a"].behind) == (1, 0)
    # the mirror behind catches up in an incremental feed: all three at the newest
    store.apply_feed(a, _feed(2, 3, [_repo("org/shared", 3, NEW, created=NOW)]), NOW)
    assert {r.repo_id: (r.mirrors, r.behind) for r in _list(store)}["org/shared"] == (3, 0)


def test_tombstones_full_feeds_and_revocation_keep_the_entries_in_step(store):
    a, b = _mirror(store, 1), _mirror(store, 2)
    store.apply_feed(a, _feed(0, 2, [_repo("org/x", 1), _repo("org/y", 2)]), NOW)
    store.apply_feed(b, _feed(0, 1, [_repo("org/x", 1)]), NOW)
    store.apply_feed(a, _feed(2, 3, removed=[Tombstone(HF, "model", "org/y", 3)]), NOW)
    assert [r.repo_id for r in _list(store)] == ["org/x"]
    with store.transaction() as c:  # b started over: its cursor back at 0
        c.execute("UPDATE mirrors SET upto = 0 WHERE key = ?", (b,))
    store.apply_feed(b, _feed(0, 5, [_repo("org/z", 5)]), NOW)
    assert {r.repo_id: r.mirrors for r in _list(store)} == {"org/x": 1, "org/z": 1}
    store.keep_only({a: "a"})  # b's key left the file
    assert [r.repo_id for r in _list(store)] == ["org/x"]


def test_the_listing_parameters_search_author_filter_sort_and_pages(store):
    a = _mirror(store, 1)
    repos = [_repo("google/bert-base", 1, created=NOW - 30, tags=("bert", "en")),
             _repo("google/t5-small", 2, created=NOW - 20, tags=("t5",)),
             _repo("acme/BERT-tiny", 3, created=NOW - 10, tags=("bert",)),
             _repo("acme/gpt", 4, created=NOW, tags=("gpt",))]
    store.apply_feed(a, _feed(0, 4, repos), NOW)
    ids = lambda rows: [r.repo_id for r in rows]  # noqa: E731
    assert ids(_list(store, search="bert")) == ["acme/BERT-tiny", "google/bert-base"]
    assert ids(_list(store, search="t5")) == ["google/t5-small"]  # under 3: LIKE
    assert ids(_list(store, author="google")) == ["google/bert-base", "google/t5-small"]
    assert ids(_list(store, filter="bert", author="acme")) == ["acme/BERT-tiny"]
    assert ids(_list(store, sort="lastModified"))[:2] == ["acme/gpt", "acme/BERT-tiny"]
    assert ids(_list(store, sort="createdAt", direction="1"))[0] == "google/bert-base"
    page = _list(store, limit="2")
    assert len(page) == 3  # one more than asked: there is a next page
    assert ids(_list(store, limit="2", cursor="2")) == ["google/bert-base", "google/t5-small"]
    assert ids(_list(store, search='"; DROP TABLE entries; --')) == []
    assert ids(_list(store, search="%")) == []


def test_entry_json_is_the_listing_shape_with_ours_under_weightswarm(store):
    a = _mirror(store, 1)
    store.apply_feed(a, _feed(0, 1, [_repo("org/m", 1, torrents=[TORRENT])]), NOW)
    [row] = _list(store)
    assert row.torrents == (TORRENT,)
    item = search.entry_json(row, seeders=4, full=True, card=True)
    assert item["id"] == item["modelId"] == "org/m"
    assert item["weightswarm"] == {"hub": HF, "mirrors": 1, "behind": 0, "seeders": 4,
                                   "size": 100, "files": 3, "sha": OLD}
    assert item["sha"] == OLD and item["cardData"]["license"] == "mit"


def test_an_index_of_schema_1_builds_its_entries_from_the_rows_it_holds(tmp_path):
    path = tmp_path / "index.sqlite"
    s = IndexStore(path)
    key = _mirror(s, 1)
    s.apply_feed(key, _feed(0, 1, [_repo("org/kept", 1)]), NOW)
    with s.transaction() as c:  # back to schema 1 with its rows
        c.execute("DELETE FROM entries")
    s.conn.execute("PRAGMA user_version = 1")
    s.close()
    again = _reopen_at_1(path)
    assert [r.repo_id for r in _list(again)] == ["org/kept"]
    again.close()


def _reopen_at_1(path):
    """Reopen a store whose version says 1, running only migration 2's backfill (its tables
    already exist here, so the migration's statements are skipped)."""
    saved = MIGRATIONS[1]
    MIGRATIONS[1] = []
    try:
        return IndexStore(path)
    finally:
        MIGRATIONS[1] = saved


# -- locate -----------------------------------------------------------------------------------


def _holders(store, revision: str = "main"):
    return search.holders(store.conn, HF, "model", "org/m", revision, stale_before=NOW - 180)


def test_locate_orders_netblock_then_site_then_region_then_the_rest(store):
    far = _mirror(store, 1)
    region = _mirror(store, 2, site="other", region="eu")
    site = _mirror(store, 3, site="berlin", region="eu")
    block = _mirror(store, 4, netblocks=["127.9.0.0/16"])
    for key in (far, region, site, block):
        store.apply_feed(key, _feed(0, 1, [_repo("org/m", 1)]), NOW)
    ordered = search.order(_holders(store), "127.9.1.1", ("berlin", "eu"), random.Random(1))
    assert [m.key for m in ordered] == [block, site, region, far]
    assert [m.near for m in ordered] == ["netblock", "site", "region", "other"]
    # an address outside every netblock and site: the site and region ranks fall away
    ordered = search.order(_holders(store), "127.1.1.1", (None, None), random.Random(1))
    assert {m.near for m in ordered} == {"other"}


def test_locate_marks_behind_puts_demoted_and_stale_last_and_takes_tags_and_commits(store):
    old, new, demoted, stale = (_mirror(store, p) for p in (1, 2, 3, 4))
    store.apply_feed(old, _feed(0, 1, [_repo("org/m", 1, OLD, created=NOW - 50)]), NOW)
    for key in (new, demoted, stale):
        store.apply_feed(key, _feed(0, 1, [_repo("org/m", 1, NEW)]), NOW)
    store.record_check(demoted, NOW, "blob 404")
    with store.transaction() as c:
        c.execute("UPDATE mirrors SET last_polled = ? WHERE key = ?", (NOW - 1000, stale))
    ordered = search.order(_holders(store), None, (None, None), random.Random(2))
    assert [m.key for m in ordered[:2]] == [old, new] or [m.key for m in ordered[:2]] == [new, old]
    assert {m.key for m in ordered[2:]} == {demoted, stale}
    assert {m.key: m.behind for m in ordered} == {old: True, new: False, demoted: False,
                                                 stale: False}
    assert {m.key: (m.demoted, m.stale) for m in ordered}[stale] == (False, True)
    assert {h.key for h in _holders(store, OLD)} == {old}
    assert _holders(store, "v1") == []


def test_main_and_master_stand_for_each_other(store):
    ms = _mirror(store, 1)
    store.apply_feed(ms, _feed(0, 1, [_repo("org/m", 1, branch="master")]), NOW)
    assert [h.key for h in _holders(store, "main")] == [ms]
    assert _list(store)[0].mirrors == 1


def test_equally_near_mirrors_share_by_weight(store):
    light, heavy = _mirror(store, 1, weight=1.0), _mirror(store, 2, weight=3.0)
    for key in (light, heavy):
        store.apply_feed(key, _feed(0, 1, [_repo("org/m", 1)]), NOW)
    rng, found = random.Random(7), _holders(store)
    first = Counter(search.order(found, None, (None, None), rng)[0].key for _ in range(4000))
    # weight 3 against 1 comes first three times in four
    assert 0.70 < first[heavy] / 4000 < 0.80
