"""The tracker under junk (issue 14): whatever a client sends, what the tracker keeps and
reports stays within a fixed bound."""

from __future__ import annotations

import logging
import struct
import time
import urllib.request

import pytest
from test_contract import UdpClient

from helpers import start_tracker
from tracker.app import TRACKER, Kind, Protocol
from tracker.config import TrackerConfig
from tracker.swarm import Refusal


@pytest.fixture
def tracker():
    running = start_tracker(TrackerConfig(port=0))
    yield running
    running.stop()


def metrics_text(tracker) -> str:
    with urllib.request.urlopen(f"{tracker.url}/metrics") as r:
        return r.read().decode()


def test_made_up_udp_actions_add_no_series_no_table_entries_and_no_log_lines(tracker, caplog):
    client = UdpClient(tracker.port)
    try:
        cid = client.connect()
        client.ask(struct.pack(">QII", cid, 4, 4))  # the first refusal of its kind: one line
        before = metrics_text(tracker)
        with caplog.at_level(logging.INFO, logger="tracker.app"):
            for action in range(5, 1005):
                answer = client.ask(struct.pack(">QII", cid, action, action))
                assert struct.unpack(">II", answer[:8]) == (3, action), "an error packet"
        after = metrics_text(tracker)
    finally:
        client.close()
    assert 'kind="17"' not in after, "an action number became a label value"
    assert len(after) - len(before) < 200, f"/metrics grew by {len(after) - len(before)} bytes"
    assert 'weightswarm_tracker_refusals_total{kind="other",protocol="udp",reason="action"} ' \
           '1001.0' in after
    logged = [r for r in caplog.records if r.getMessage().startswith("refused")]
    assert logged == [], "one line a minute for one kind of refusal"
    bound = len(Protocol) * len(Kind) * len(Refusal)
    assert len(tracker.app[TRACKER]._refusals_logged) <= bound


def test_a_full_table_is_logged_once_and_again_only_after_it_had_room(caplog):
    from test_contract import announce, pid

    running = start_tracker(TrackerConfig(port=0, max_peers=2))
    tracker = running.app[TRACKER]

    async def expire_everyone():
        return tracker.expire(time.time() + 10**6)

    try:
        with caplog.at_level(logging.INFO, logger="tracker.app"):
            for n in range(6):
                body = announce(running.port, b"\x40" * 20, pid(n), 7000 + n)
                assert (b"failure reason" in body) == (n >= 2), body
            assert b"too many peers" in body[b"failure reason"]
            assert running.call(expire_everyone()) == 2
            for n in range(6):
                announce(running.port, b"\x40" * 20, pid(10 + n), 7100 + n)
    finally:
        running.stop()
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2, [r.getMessage() for r in warned]
    assert "max_peers 2" in warned[0].getMessage()
