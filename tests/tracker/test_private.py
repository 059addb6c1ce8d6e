"""Private swarms (BEP 27): a per-user key in the path, revocable by removing its line."""

from __future__ import annotations

from urllib.parse import quote_from_bytes

import pytest
from test_contract import compact, get, pid

from helpers import start_tracker
from tracker.app import TRACKER
from tracker.config import TrackerConfig

PRIVATE = b"\x30" * 20


@pytest.fixture
def tracker(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# one key per line\nalice-key\nbob-key\n")
    running = start_tracker(TrackerConfig(port=0, keys_file=str(keys)))
    running.keys = keys
    running.app[TRACKER].keys_check_every = 0  # look at the file on every announce
    yield running
    running.stop()


def announce(port, key, peer_id, peer_port, info_hash=PRIVATE, left=10):
    path = f"/announce/{key}" if key else "/announce"
    query = (f"info_hash={quote_from_bytes(info_hash)}&peer_id={quote_from_bytes(peer_id)}"
             f"&port={peer_port}&left={left}&compact=1")
    return get(port, f"{path}?{query}")[1]


def scrape(port, key, info_hash=PRIVATE):
    path = f"/scrape/{key}" if key else "/scrape"
    return get(port, f"{path}?info_hash={quote_from_bytes(info_hash)}")[1]


def test_good_unknown_and_revoked_keys(tracker):
    assert b"failure reason" not in announce(tracker.port, "alice-key", pid(1), 7001, left=0)
    second = announce(tracker.port, "bob-key", pid(2), 7002)
    assert compact(second[b"peers"]) == [("127.0.0.1", 7001)]
    assert b"unknown or revoked" in announce(tracker.port, "mallory", pid(3), 7003)[
        b"failure reason"]
    tracker.keys.write_text("alice-key\n")  # bob's line removed: revoked
    assert b"unknown or revoked" in announce(tracker.port, "bob-key", pid(2), 7002)[
        b"failure reason"]


def test_a_private_hash_never_answers_on_the_open_path(tracker):
    announce(tracker.port, "alice-key", pid(1), 7001, left=0)
    refused = announce(tracker.port, None, pid(9), 7009)
    assert b"private torrent" in refused[b"failure reason"]
    assert scrape(tracker.port, None)[b"files"][PRIVATE] == {
        b"complete": 0, b"downloaded": 0, b"incomplete": 0}, "zeros without a key"
    assert scrape(tracker.port, "alice-key")[b"files"][PRIVATE][b"complete"] == 1
    assert b"unknown or revoked" in scrape(tracker.port, "nobody")[b"failure reason"]
    open_hash = b"\x31" * 20
    assert b"failure reason" not in announce(tracker.port, None, pid(5), 7005,
                                             info_hash=open_hash)


def test_private_hashes_from_the_config_are_private_from_the_start(tmp_path):
    from mirror.config import load_config

    (tmp_path / "weightswarm.toml").write_text(
        f'[tracker]\nprivate_hashes = ["{PRIVATE.hex()}"]\nkeys_file = "{tmp_path}/keys"\n'
        '[[tracker.sites]]\ncidr = "127.1.0.0/16"\nsite = "s1"\n')
    (tmp_path / "keys").write_text("k\n")
    config = load_config(home=tmp_path, env={}, overrides={("tracker", "port"): 0})
    assert config.tracker.sites[0].site == "s1"
    running = start_tracker(config.tracker)
    try:
        assert b"private torrent" in announce(running.port, None, pid(1), 7001)[b"failure reason"]
        assert b"failure reason" not in announce(running.port, "k", pid(1), 7001)
    finally:
        running.stop()


def test_bad_tracker_settings_are_refused(tmp_path):
    from mirror.config import load_config
    from peer.errors import ConfigError

    for text in ('[tracker]\nprivate_hashes = ["nothex"]\n',
                 '[[tracker.sites]]\ncidr = "300.0.0.0/8"\nsite = "x"\n',
                 '[[tracker.sites]]\nsite = "x"\n'):
        (tmp_path / "weightswarm.toml").write_text(text)
        with pytest.raises(ConfigError):
            load_config(home=tmp_path, env={})
