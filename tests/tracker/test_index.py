"""The index's store and registry, pure (issue 18, items 1, 2 and 7): feeds applied full and
incrementally, tombstones, bounds, refusals that lose nothing; the key file; registrations."""

from __future__ import annotations

import random

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from peer.feed import Feed, FeedRef, FeedRepo, FeedSnapshot, Tombstone
from peer.keys import public_key_text
from peer.manifest import StaleRef, UnknownKey
from tracker.index import (
    IndexRefused,
    IndexStore,
    Registration,
    UrlTaken,
    build_registration,
    parse_mirror_keys,
    read_registration,
)

HF = "huggingface"
NOW = 1_800_000_000.0


def _repo(repo_id: str, seq: int, commit: str = "a" * 40, ref_seq: int | None = None) -> FeedRepo:
    return FeedRepo(HF, "model", repo_id, seq, False, NOW, ("tiny",), "mit", None, None,
                    (FeedRef("branch", "main", commit, ref_seq or seq),),
                    (FeedSnapshot(commit, "d" * 64, 100, 3, NOW),))


def _feed(since: int, upto: int, repos=(), removed=(), more=False) -> Feed:
    return Feed("k", since, upto, since == 0, more, tuple(repos), tuple(removed))


@pytest.fixture
def store(tmp_path):
    s = IndexStore(tmp_path / "index.sqlite")
    yield s
    s.close()


@pytest.fixture
def mirror(store):
    key = public_key_text(Ed25519PrivateKey.generate())
    store.register(Registration(key, "http://127.0.0.1:1", None, None, None, (), NOW), "m", NOW)
    return key


def _repos(store, key) -> set[str]:
    return {r[2] for r in store.repos_of(key)}


def test_a_full_feed_replaces_what_the_mirror_held(store, mirror):
    store.apply_feed(mirror, _feed(0, 2, [_repo("org/a", 1), _repo("org/b", 2)]), NOW)
    assert _repos(store, mirror) == {"org/a", "org/b"}
    with store.transaction() as c:  # the mirror started over: its cursor back at 0
        c.execute("UPDATE mirrors SET upto = 0")
    store.apply_feed(mirror, _feed(0, 5, [_repo("org/c", 5)]), NOW)
    assert _repos(store, mirror) == {"org/c"}, "a full feed drops what it does not list"
    assert store.rows_of(mirror) == 3, "one repo, one ref, one snapshot"


def test_incremental_feeds_change_repos_and_tombstones_remove_them(store, mirror):
    store.apply_feed(mirror, _feed(0, 2, [_repo("org/a", 1), _repo("org/b", 2)]), NOW)
    store.apply_feed(mirror, _feed(2, 4, [_repo("org/a", 3, "b" * 40)],
                                   [Tombstone(HF, "model", "org/b", 4)]), NOW)
    assert _repos(store, mirror) == {"org/a"}
    commits = store.conn.execute("SELECT commit_id FROM refs").fetchall()
    assert commits == [("b" * 40,)], "a repo entry replaces the repo whole"
    assert store.mirror(mirror).upto == 4


def test_a_refused_feed_leaves_what_the_index_held(store, mirror):
    store.apply_feed(mirror, _feed(0, 3, [_repo("org/a", 3)]), NOW)
    with pytest.raises(StaleRef):  # the ref's sequence goes back: a rollback
        store.apply_feed(mirror, _feed(3, 5, [_repo("org/a", 5, "c" * 40, ref_seq=2),
                                              _repo("org/new", 4)]), NOW)
    with pytest.raises(StaleRef):  # not where the index is: a gap
        store.apply_feed(mirror, _feed(4, 6, [_repo("org/x", 6)]), NOW)
    assert _repos(store, mirror) == {"org/a"}, "nothing of a refused feed is applied"
    assert store.mirror(mirror).upto == 3


def test_a_polls_pages_apply_in_one_transaction_up_to_a_refused_one(store, mirror):
    pages = [_feed(0, 2, [_repo("org/a", 1), _repo("org/b", 2)], more=True),
             _feed(2, 3, [_repo("org/a", 3, "b" * 40)], more=True),
             _feed(3, 5, [_repo("org/a", 5, "c" * 40, ref_seq=1)], more=True),  # a rollback
             _feed(5, 6, [_repo("org/c", 6)])]
    done, refused = store.apply_feeds(mirror, pages, NOW)
    assert (done, type(refused)) == (2, StaleRef)
    assert _repos(store, mirror) == {"org/a", "org/b"}, "the pages before the refused one stay"
    assert store.conn.execute("SELECT commit_id FROM refs WHERE repo_id = 'org/a'"
                              ).fetchall() == [("b" * 40,)], "and nothing of the refused one"
    assert store.mirror(mirror).upto == 3
    assert not store.conn.in_transaction
    assert store.apply_feeds(mirror, [_feed(3, 4, [_repo("org/c", 4)])], NOW) == (1, None)
    assert _repos(store, mirror) == {"org/a", "org/b", "org/c"}


def test_rows_beyond_the_bound_refuse_the_feed(tmp_path, mirror):
    small = IndexStore(tmp_path / "small.sqlite", max_rows_per_mirror=5)
    key = public_key_text(Ed25519PrivateKey.generate())
    small.register(Registration(key, "http://127.0.0.1:2", None, None, None, (), NOW), None, NOW)
    with pytest.raises(IndexRefused, match="more than 5"):
        small.apply_feed(key, _feed(0, 2, [_repo("org/a", 1), _repo("org/b", 2)]), NOW)
    assert small.rows_of(key) == 0
    small.close()


def test_a_revoked_mirror_is_forgotten_with_its_rows(store, mirror):
    store.apply_feed(mirror, _feed(0, 1, [_repo("org/a", 1)]), NOW)
    assert store.keep_only({}) == ["http://127.0.0.1:1"]
    assert store.mirrors() == [] and store.rows_of(mirror) == 0


def test_a_base_url_belongs_to_one_key(store, mirror):
    other = public_key_text(Ed25519PrivateKey.generate())
    with pytest.raises(UrlTaken):
        store.register(Registration(other, "http://127.0.0.1:1", None, None, None, (), NOW),
                       None, NOW)


def test_spot_check_outcomes_demote_and_restore(store, mirror):
    store.apply_feed(mirror, _feed(0, 1, [_repo("org/a", 1)]), NOW)
    assert store.random_snapshot(mirror, random.Random(1))[2] == "org/a"
    store.record_check(mirror, NOW, "blob 404")
    assert store.mirror(mirror).demoted and store.mirror(mirror).demoted_reason == "blob 404"
    store.record_check(mirror, NOW + 1, None)
    m = store.mirror(mirror)
    assert not m.demoted and m.last_verified == NOW + 1


def test_the_store_survives_a_reopen(tmp_path):
    path = tmp_path / "index.sqlite"
    s = IndexStore(path)
    key = public_key_text(Ed25519PrivateKey.generate())
    s.register(Registration(key, "http://127.0.0.1:3", None, None, None, (), NOW), None, NOW)
    s.apply_feed(key, _feed(0, 1, [_repo("org/a", 1)]), NOW)
    s.close()
    again = IndexStore(path)
    assert _repos(again, key) == {"org/a"} and again.mirror(key).upto == 1
    again.close()


def test_the_key_file_takes_keys_names_and_comments_and_reports_bad_lines():
    a, b = (public_key_text(Ed25519PrivateKey.generate()) for _ in range(2))
    text = f"# accepted mirrors\n{a} berlin mirror # the first\n\n  {b}\nnot-a-key x\n"
    keys, problems = parse_mirror_keys(text)
    assert keys == {a: "berlin mirror", b: None}
    assert len(problems) == 1 and problems[0].startswith("line 5")


@pytest.fixture
def key():
    return Ed25519PrivateKey.generate()


def test_a_registration_is_read_back_checked(key):
    data = build_registration(key, "http://127.0.0.1:8470/", bittorrent="127.0.0.1:6881",
                              site="berlin", region="eu", netblocks=("10.0.0.0/8",), now=NOW)
    reg = read_registration(data, {public_key_text(key)}, NOW + 5)
    assert reg.base_url == "http://127.0.0.1:8470" and reg.netblocks == ("10.0.0.0/8",)
    assert reg.site == "berlin" and reg.bittorrent == "127.0.0.1:6881"


@pytest.mark.parametrize("what, kwargs, now, error", [
    ("stale", {}, NOW + 601, "stale"),
    ("from the future", {}, NOW - 60, "future"),
    ("hostile URL", {"base_url": "http://x/../?a=b"}, NOW, "base_url"),
    ("hostile site", {"site": "../etc"}, NOW, "site"),
    ("bad netblock", {"netblocks": ("not a net",)}, NOW, "netblock"),
    ("bad endpoint", {"bittorrent": "host"}, NOW, "bittorrent"),
])
def test_bad_registrations_are_refused_with_the_reason(key, what, kwargs, now, error):
    base = kwargs.pop("base_url", "http://127.0.0.1:8470")
    data = build_registration(key, base, now=NOW, **kwargs)
    with pytest.raises(IndexRefused, match=error):
        read_registration(data, {public_key_text(key)}, now)


def test_a_registration_by_an_unknown_key_is_refused(key):
    data = build_registration(key, "http://127.0.0.1:8470", now=NOW)
    with pytest.raises(UnknownKey):
        read_registration(data, {public_key_text(Ed25519PrivateKey.generate())}, NOW)
