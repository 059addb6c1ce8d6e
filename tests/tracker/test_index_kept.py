"""The index answers repeated searches and locates from kept answers (tracker/indexhttp.py over
peer/answers.py): kept until the index's database changes, as any poll's commit does, so never
staler than what the index holds; a locate is still signed for each asker and moment, and
whether a mirror is stale is decided when it is asked."""

from __future__ import annotations

import json
import re
import sqlite3
import time
import urllib.request
from urllib.parse import quote

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from helpers import start_tracker
from peer.feed import Feed, FeedRef, FeedRepo, FeedSnapshot
from peer.keys import public_key_text
from peer.locate import read_located
from tracker import search
from tracker.config import TrackerConfig
from tracker.index import IndexStore, Registration

HF = "huggingface"
COMMIT = "a" * 40


def _repo(repo_id: str, seq: int) -> FeedRepo:
    return FeedRepo(HF, "model", repo_id, seq, False, time.time(), ("tiny",), "mit", None, None,
                    (FeedRef("branch", "main", COMMIT, seq),),
                    (FeedSnapshot(COMMIT, "d" * 64, 100, 3, time.time()),))


def _feed(since: int, upto: int, repos) -> Feed:
    return Feed("k", since, upto, since == 0, False, tuple(repos), ())


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.read()


def _kept(url: str, kind: str) -> dict[str, float]:
    text = _get(f"{url}/metrics").decode()
    return {result: float(value) for result, value in re.findall(
        rf'weightswarm_index_kept_answers_total{{kind="{kind}",result="(\w+)"}} ([\d.e+]+)', text)}


def _first_poll_done(db, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        while conn.execute("SELECT count(*) FROM mirrors WHERE last_polled IS NULL"
                           ).fetchone()[0]:
            assert time.monotonic() < deadline, "the index never polled its mirror"
            time.sleep(0.05)
    finally:
        conn.close()


def test_kept_searches_and_locates_last_until_the_index_changes(tmp_path):
    home = tmp_path / "index"
    home.mkdir()
    key = public_key_text(Ed25519PrivateKey.generate())
    (home / "mirror_keys").write_text(f"{key} m\n")
    store = IndexStore(home / "index.sqlite")
    try:
        now = time.time()
        store.register(Registration(key, "http://127.0.0.1:1", None, None, None, (), now),
                       "m", now)
        store.apply_feed(key, _feed(0, 201, [_repo("org/a", 1)] + [
            _repo(f"big/r-{k}", k + 2) for k in range(200)]), now)
        config = TrackerConfig(host="127.0.0.1", port=0, home=home,
                               mirror_keys=str(home / "mirror_keys"), poll_interval=86400.0)
        index = start_tracker(config)
        try:
            _first_poll_done(home / "index.sqlite")

            def ids() -> list[str]:
                return sorted(m["id"] for m in json.loads(_get(f"{index.url}/api/models"
                                                              "?search=org")))

            assert ids() == ids() == ["org/a"]
            assert _kept(index.url, "search") == {"miss": 1.0, "hit": 1.0}
            # another connection commits, as the poller's does: the next answer is fresh
            store.apply_feed(key, _feed(201, 202, [_repo("org/b", 202)]), time.time())
            assert ids() == ["org/a", "org/b"]
            assert _kept(index.url, "search")["miss"] == 2.0

            path = f"/api/weightswarm/locate/{HF}/model/{quote('org/b')}?revision=main"
            answers = [read_located(_get(index.url + path), index.app_key, now=time.time(),
                                    hub=HF, type="model", repo="org/b", revision="main")
                       for _ in range(2)] if hasattr(index, "app_key") else [
                _get(index.url + path) for _ in range(2)]
            assert answers[0] != answers[1]  # each signed for its moment, though kept
            assert _kept(index.url, "locate") == {"miss": 1.0, "hit": 1.0}

            # a long page is answered, not kept: the kept answers stay small
            for _ in range(2):
                assert len(json.loads(_get(f"{index.url}/api/models?limit=300"))) == 202
            assert _kept(index.url, "search")["miss"] == 4.0
        finally:
            index.stop()
    finally:
        store.close()


def test_whether_a_kept_holder_is_stale_is_decided_when_asked(tmp_path):
    store = IndexStore(tmp_path / "index.sqlite")
    try:
        key = public_key_text(Ed25519PrivateKey.generate())
        polled = 1_800_000_000.0
        store.register(Registration(key, "http://127.0.0.1:1", None, None, None,
                                    ("10.0.0.0/8",), polled), "m", polled)
        with store.transaction() as c:
            c.execute("UPDATE mirrors SET last_polled = ?", (polled,))
        store.apply_feed(key, _feed(0, 1, [_repo("org/a", 1)]), polled)
        rows = search.holder_rows(store.conn, HF, "model", "org/a", "main")
        [fresh] = search.holders_at(rows, stale_before=polled - 1)
        [stale] = search.holders_at(rows, stale_before=polled + 1)
        assert (fresh.stale, stale.stale) == (False, True)
        assert fresh.netblocks == ("10.0.0.0/8",)
        assert search.nearness(fresh, "10.1.2.3", (None, None)) == "netblock"
        assert search.nearness(fresh, "192.0.2.1", (None, None)) == "other"
        assert search.nearness(fresh, "not an address", (None, None)) == "other"
    finally:
        store.close()
