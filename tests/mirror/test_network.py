"""Which mirrors a sync takes a commit's bytes from (mirror/network.py), how it reports where
they came from, and the index key pinned on first use."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mirror.network import IndexKeys, choose, read_sources, sources_record, sources_text
from peer.keys import public_key_text
from peer.locate import Located, LocatedMirror

COMMIT = "a" * 40


def key() -> str:
    return public_key_text(Ed25519PrivateKey.generate())


def mirror(url: str, commit: str = COMMIT, *, k: str | None = None, demoted: bool = False,
           stale: bool = False) -> LocatedMirror:
    return LocatedMirror(k or key(), None, url, None, None, None, commit, "0" * 64, False,
                         "other", demoted, stale, None)


def located(*mirrors: LocatedMirror) -> Located:
    return Located(key(), "huggingface", "model", "org/m", COMMIT, COMMIT, None, 0.0, mirrors)


def test_only_mirrors_holding_exactly_the_commit_are_chosen_in_the_index_order():
    near, behind, far = mirror("http://near"), mirror("http://behind", "b" * 40), \
        mirror("http://far")
    assert [m.base_url for m in choose(located(near, behind, far), COMMIT)] == \
        ["http://near", "http://far"]


def test_demoted_and_stale_mirrors_come_after_the_rest_keeping_their_order():
    chosen = choose(located(mirror("http://d", demoted=True), mirror("http://s", stale=True),
                            mirror("http://ok1"), mirror("http://ok2")), COMMIT)
    assert [m.base_url for m in chosen] == ["http://ok1", "http://ok2", "http://d", "http://s"]


def test_the_mirror_itself_is_never_chosen_by_key_or_by_url():
    own = key()
    chosen = choose(located(mirror("http://me-by-key", k=own), mirror("http://me"),
                            mirror("http://other")), COMMIT, own_key=own, own_url="http://me/")
    assert [m.base_url for m in chosen] == ["http://other"]


def test_a_run_records_and_shows_where_its_bytes_came_from():
    results = [SimpleNamespace(from_upstream=10, from_mirrors={"http://a": 5},
                               dropped_mirrors={}),
               SimpleNamespace(from_upstream=1, from_mirrors={"http://a": 2, "http://b": 3},
                               dropped_mirrors={"http://b": "its x did not verify"})]
    record = sources_record(results)
    assert json.loads(record) == {"upstream": 11, "mirrors": {"http://a": 7, "http://b": 3},
                                  "dropped": {"http://b": "its x did not verify"}}
    assert read_sources(record) == sources_text(
        11, {"http://a": 7, "http://b": 3}, {"http://b": "its x did not verify"}) == (
        "11 bytes from the upstream; 7 bytes from http://a; 3 bytes from http://b; "
        "http://b dropped (its x did not verify)")
    assert read_sources(None) is None and read_sources("not json") is None


def test_the_index_key_is_pinned_on_first_use_and_another_is_refused(tmp_path):
    keys = IndexKeys(tmp_path)
    first, second = key(), key()
    assert keys.pinned("http://index") is None
    assert keys.pin("http://index/", first) == first
    assert keys.pin("http://index", first) == first
    assert IndexKeys(tmp_path).pinned("http://index") == first
    with pytest.raises(ValueError, match="pins"):
        keys.pin("http://index", second)
    assert keys.pin("http://other", second) == second
    assert (tmp_path / "known_indexes").read_text() == \
        f"http://index {first}\nhttp://other {second}\n"
    with pytest.raises(ValueError):
        keys.pin("http://third", "ed25519:nothex")


def test_sync_from_network_off_leaves_every_sync_to_the_upstream(tmp_path):
    from mirror.config import load_config
    from mirror.network import network_for

    on = load_config(home=tmp_path, env={}, overrides={("mirror", "index"): "http://127.0.0.1:1"})
    assert network_for(on).index == "http://127.0.0.1:1"
    off = load_config(home=tmp_path, env={}, overrides={
        ("mirror", "index"): "http://127.0.0.1:1", ("mirror", "sync_from_network"): False})
    assert network_for(off) is None
