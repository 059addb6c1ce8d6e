"""A client given a magnet link announces `left=0` before it knows the size (aria2 does), so
the tracker took it for a seeder and gave it neither seeds nor the mirror: it got nothing.
Every announce from a peer that is not a mirror now lists the nearest mirror (issue 14)."""

from __future__ import annotations

import shutil
from urllib.parse import quote

import pytest
from e2e.test_bittorrent import add, blob, wait_seeding  # noqa: F401 (blob is a fixture)

from helpers import aria2c_download, plain_session, start_tracker
from peer.bencode import bencode
from peer.torrent import info_hash
from tracker.app import TRACKER
from tracker.config import TrackerConfig

lt = pytest.importorskip("libtorrent")
pytestmark = pytest.mark.slow


def wait_announced(ses, tracker, info: dict, timeout_ms: int = 30_000) -> None:
    """Until the tracker holds the session's seeder (woken by the session's alerts)."""
    h = bytes.fromhex(info_hash(info))
    for _ in range(timeout_ms // 200):
        if tracker.app[TRACKER].table.scrape(h)[0] == 1:
            return
        ses.wait_for_alert(200)
        ses.pop_alerts()
    raise AssertionError("the seeder never announced")


@pytest.mark.skipif(shutil.which("aria2c") is None, reason="aria2c (Debian aria2) not installed")
def test_aria2c_given_a_magnet_link_gets_the_mirror_and_the_blob(blob, tmp_path):  # noqa: F811
    data, sha256, info, seed_dir = blob
    seeder = plain_session(alert_mask=lt.alert_category.status | lt.alert_category.error
                           | lt.alert_category.tracker)  # woken by the tracker's answers too
    mirror = f"127.0.0.1:{seeder.listen_port()}"
    tracker = start_tracker(TrackerConfig(port=0, interval=2, min_interval=1, peer_ttl=60,
                                          mirrors=frozenset({mirror})))
    try:
        torrent = bencode({"announce": f"{tracker.url}/announce", "info": info})
        wait_seeding(seeder, add(seeder, torrent, seed_dir))
        wait_announced(seeder, tracker, info)
        magnet = (f"magnet:?xt=urn:btih:{info_hash(info)}"
                  f"&tr={quote(tracker.url + '/announce', safe='')}")
        out = tmp_path / "aria2"
        done = aria2c_download(magnet, out, stop_after=20, timeout=90)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert (out / sha256).read_bytes() == data
    finally:
        tracker.stop()
        del seeder
