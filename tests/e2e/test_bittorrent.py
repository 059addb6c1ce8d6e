"""Real BitTorrent clients find each other only through our tracker and complete a transfer:
two libtorrent sessions (settings of BITTORRENT.md section 1), and a libtorrent seeder with
aria2c, a client nobody here wrote, on a v1 torrent of our deterministic kind."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from helpers import aria2c_download, plain_session, start_tracker
from peer.bencode import bencode
from peer.hashing import Hasher
from peer.torrent import info_dict, info_hash
from tracker.config import TrackerConfig

lt = pytest.importorskip("libtorrent")
pytestmark = pytest.mark.slow

SIZE = 9 * 1024 * 1024 + 4321




@pytest.fixture
def blob(tmp_path):
    data = os.urandom(SIZE)
    hasher = Hasher(SIZE, lfs=True)
    hasher.update(data)
    d = hasher.finish()
    info = info_dict(d.sha256, d.size, d.piece_length, d.pieces)
    seed_dir = tmp_path / "seed"
    seed_dir.mkdir()
    (seed_dir / d.sha256).write_bytes(data)
    return data, d.sha256, info, seed_dir


def add(ses, torrent: bytes, save_path: Path):
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(lt.bdecode(torrent))
    params.save_path = str(save_path)
    params.flags &= ~lt.torrent_flags.auto_managed
    params.flags &= ~lt.torrent_flags.paused
    return ses.add_torrent(params)


def wait_seeding(ses, handle, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if handle.status().is_seeding:
            return
        ses.wait_for_alert(200)  # wakes on the next alert: progress, tracker replies, errors
        ses.pop_alerts()
    raise AssertionError(f"not complete after {timeout}s: {handle.status().progress:.0%}")


def test_two_libtorrent_sessions_meet_through_the_tracker(tracker, blob, tmp_path):
    data, sha256, info, seed_dir = blob
    torrent = bencode({"announce": f"{tracker.url}/announce", "info": info})
    assert lt.torrent_info(lt.bdecode(torrent)).info_hash().to_string().hex() == info_hash(info)
    seeder, leecher = plain_session(), plain_session()
    try:
        seed = add(seeder, torrent, seed_dir)
        wait_seeding(seeder, seed)
        leech_dir = tmp_path / "leech"
        leech_dir.mkdir()
        got = add(leecher, torrent, leech_dir)
        wait_seeding(leecher, got)
        got.flush_cache()
        leecher.wait_for_alert(2000)
        assert (leech_dir / sha256).read_bytes() == data
    finally:
        del seeder, leecher


@pytest.mark.skipif(shutil.which("aria2c") is None, reason="aria2c (Debian aria2) not installed")
def test_aria2c_downloads_from_a_libtorrent_seeder_through_the_tracker(tracker, blob, tmp_path):
    data, sha256, info, seed_dir = blob
    torrent = bencode({"announce": f"{tracker.url}/announce", "info": info})
    torrent_file = tmp_path / "blob.torrent"
    torrent_file.write_bytes(torrent)
    seeder = plain_session()
    try:
        seed = add(seeder, torrent, seed_dir)
        wait_seeding(seeder, seed)
        out = tmp_path / "aria2"
        done = aria2c_download(torrent_file, out, stop_after=60, timeout=120)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert (out / sha256).read_bytes() == data
    finally:
        del seeder


def _announce_from(source_ip: str, port: int, info_hash_: bytes, numwant: int) -> list[str]:
    """One HTTP announce sent from `source_ip`, as a peer of that site would: the peers'
    addresses the tracker hands back."""
    import http.client
    import socket
    from urllib.parse import quote_from_bytes

    from peer.bencode import bdecode

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10,
                                      source_address=(source_ip, 0))
    peer_id = b"-PROBE-0000000000000"  # one probe peer, replaced by each announce
    query = (f"info_hash={quote_from_bytes(info_hash_)}&peer_id={quote_from_bytes(peer_id)}"
             f"&port=7777&left=100&compact=1&numwant={numwant}")
    conn.request("GET", f"/announce?{query}")
    body = bdecode(conn.getresponse().read())
    conn.close()
    peers = body[b"peers"]
    return [socket.inet_ntoa(peers[i : i + 4]) for i in range(0, len(peers), 6)]


def test_locality_a_site_1_leecher_gets_site_1_first_farther_slots_and_its_mirror(blob,
                                                                                tmp_path):
    from tracker.config import parse_sites

    data, sha256, info, seed_dir = blob
    site1 = [f"127.1.0.{i}" for i in range(2, 6)]
    site2 = [f"127.2.0.{i}" for i in range(2, 6)]
    mirror1, mirror2 = "127.1.0.9", "127.2.0.9"
    sessions = {ip: plain_session(ip) for ip in (*site1, *site2, mirror1, mirror2)}
    ports = {ip: s.listen_port() for ip, s in sessions.items()}
    config = TrackerConfig(
        port=0, interval=2, min_interval=1, peer_ttl=60,
        sites=parse_sites([{"cidr": "127.1.0.0/16", "site": "s1", "region": "eu"},
                           {"cidr": "127.2.0.0/16", "site": "s2", "region": "us"}]),
        mirrors=frozenset({f"{mirror1}:{ports[mirror1]}", f"{mirror2}:{ports[mirror2]}"}),
    )
    tracker = start_tracker(config)
    try:
        torrent = bencode({"announce": f"{tracker.url}/announce", "info": info})
        for ip, ses in sessions.items():
            folder = tmp_path / ip
            if ip in (mirror1, mirror2):
                shutil.copytree(seed_dir, folder)
            else:
                folder.mkdir()
            add(ses, torrent, folder)
        ih = bytes.fromhex(info_hash(info))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # every session has announced from its address
            seen = set(_announce_from("127.1.0.200", tracker.port, ih, 50))
            if seen >= {*site1, *site2, mirror1, mirror2}:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"sessions not all announced from their addresses: {seen}")
        counts = {"s1": 0, "s2": 0}
        mirror_seen = 0
        runs = 200
        for n in range(runs):  # measured over many announces
            got = _announce_from(f"127.1.1.{n % 200 + 1}", tracker.port, ih, 5)
            assert len(got) == 5
            mirror_seen += mirror1 in got
            for ip in got:
                counts["s1" if ip.startswith("127.1.") else "s2"] += 1
        assert mirror_seen == runs, "a site-1 leecher always gets its site's mirror"
        share = counts["s1"] / (counts["s1"] + counts["s2"])
        assert 0.75 <= share <= 0.9, f"same-site share {share:.2f}: site first, a slot far"
        assert counts["s2"] >= runs * 0.9, "the reserved slot goes to farther peers"
    finally:
        tracker.stop()
        sessions.clear()
