"""The asyncio-driven libtorrent session: a seeder and a leecher in one event loop meet through
our tracker; completion is awaited (alert fd), never polled."""

from __future__ import annotations

import asyncio
import os

import pytest

from peer.bencode import bencode
from peer.hashing import Hasher
from peer.torrent import info_dict

pytest.importorskip("libtorrent")
from peer.session import Session, SessionSettings  # noqa: E402
from peer.settings import MIRROR_FINGERPRINT, PEER_FINGERPRINT  # noqa: E402

SETTINGS = SessionSettings(listen="127.0.0.1:0", min_announce_interval=1)
PEER_ID = PEER_FINGERPRINT + "0123456789ab"




def blob(tmp_path, size: int) -> tuple[bytes, str, dict]:
    """Random bytes in tmp_path/seed under their sha256, an empty tmp_path/leech:
    (the bytes, their sha256, the torrent's info dict)."""
    data = os.urandom(size)
    hasher = Hasher(len(data), lfs=True)
    hasher.update(data)
    d = hasher.finish()
    (tmp_path / "seed").mkdir()
    (tmp_path / "seed" / d.sha256).write_bytes(data)
    (tmp_path / "leech").mkdir()
    return data, d.sha256, info_dict(d.sha256, d.size, d.piece_length, d.pieces)


async def test_a_leecher_completes_from_a_seeder_and_the_bytes_are_on_disk(tracker, tmp_path):
    data, sha256, info = blob(tmp_path, 6 * 1024 * 1024 + 77)
    torrent = bencode({"announce": f"{tracker.url}/announce", "info": info})
    seeder, leecher = Session(SETTINGS, role="daemon"), Session(SETTINGS, role="daemon")
    seeder.start()
    leecher.start()
    try:
        key = seeder.add(torrent, tmp_path / "seed")
        async with asyncio.timeout(60):
            await seeder.finished(key)  # checked and flushed: seeding
            assert leecher.add(torrent, tmp_path / "leech") == key
            await leecher.finished(key)
        assert (tmp_path / "leech" / sha256).read_bytes() == data
    finally:
        seeder.close()
        leecher.close()


async def test_a_torrent_completed_by_a_piece_passing_at_priority_0_is_finished(tmp_path):
    """Steering skips a piece another pull owns while its blocks may be in flight already: the
    piece passes at priority 0, every other piece had, and libtorrent makes a seed of the
    torrent without a state change or an alert. Giving the piece its priority back (as
    steering does once it is had) must let `finished` return."""
    data, _, info = blob(tmp_path, 3 * 4 * 1024 * 1024)
    piece = info["piece length"]
    session = Session(SETTINGS, role="pull", fingerprint=PEER_ID)
    session.start()
    try:
        key = session.add(info, tmp_path / "leech")
        handle = session.handle(key)
        session.set_piece_priorities(key, [4, 0, 4])
        waiting = asyncio.ensure_future(session.finished(key))
        await asyncio.sleep(0)  # it waits from now on

        async def until(check) -> None:
            while not check(handle.status()):
                await asyncio.sleep(0.05)

        async with asyncio.timeout(10):
            for i in (0, 2):
                handle.add_piece(i, data[i * piece:(i + 1) * piece], 0)
            await until(lambda s: str(s.state) == "finished")  # every piece wanted is had
            await asyncio.sleep(0.5)  # its alerts (finished, flushed) have come and gone
            handle.add_piece(1, data[piece:2 * piece], 0)  # passes at priority 0
            await until(lambda s: s.is_seeding)
            await asyncio.sleep(0.5)  # what alerts there are have come
            assert not waiting.done(), "libtorrent said nothing: the case this test is about"
            session.set_piece_priorities(key, [4, 4, 4])
            await waiting
        assert (tmp_path / "leech" / info["name"]).read_bytes() == data
    finally:
        session.close()


def test_a_mirror_unchokes_everyone_offers_no_allowed_fast_pieces_and_queues_every_request():
    """Every peer of one site shares a /24, so a seed's BEP 6 allowed-fast set is the same
    for all of them: they all fetched those pieces from the mirror at once (ops/bench/swarm.py:
    the mirror sent 1.66x the model for 8 peers with it, 1.32x without). The pulls of a swarm
    split the mirror's pieces (peer/steering.py): each must be unchoked to fetch its share.
    A client that ignores `reqq` must not lose requests (rTorrent stalled at 64 queued), one
    that dials µTP first must get it (Transmission never fell back to TCP), and a keep-alive
    goes out after 10 s of silence (Transmission 3.00 waited for one: issue 14)."""
    from peer.session import MIRROR_REQUEST_QUEUE, PEER_TIMEOUT

    mirror = Session(SETTINGS, role="mirror", fingerprint=MIRROR_FINGERPRINT)
    peer = Session(SETTINGS, role="daemon", fingerprint=PEER_FINGERPRINT)
    try:
        m, p = mirror.lt.get_settings(), peer.lt.get_settings()
        assert m["allowed_fast_set_size"] == 0
        assert m["unchoke_slots_limit"] == -1
        assert m["max_allowed_in_request_queue"] == MIRROR_REQUEST_QUEUE == 2000
        assert m["enable_incoming_utp"] is True and m["enable_outgoing_utp"] is False
        assert m["peer_timeout"] == PEER_TIMEOUT == 20
        assert m["seeding_outgoing_connections"] is False
        assert p["allowed_fast_set_size"] > 0 and p["unchoke_slots_limit"] == 8
        assert p["max_allowed_in_request_queue"] == 2000
        assert p["enable_incoming_utp"] is False and p["peer_timeout"] == 120
    finally:
        mirror.close()
        peer.close()


def test_a_pull_keeps_its_connections_and_a_second_of_requests_at_a_source():
    """A pull waiting for pieces other pulls own has every piece it asks for: libtorrent
    would close its connections to the other pulls it waits for, and a mirror would close a
    connection that sends it nothing for its `peer_timeout`. A pull's requests wait at a
    mirror about a second (the mirror itself queues every request now): neither whole-piece
    requests nor libtorrent's 3 s of a source's rate."""
    from peer.session import PEER_TIMEOUT

    pull = Session(SETTINGS, role="pull", fingerprint=PEER_ID)
    try:
        s = pull.lt.get_settings()
        assert s["close_redundant_connections"] is False
        assert s["peer_timeout"] == PEER_TIMEOUT
        assert s["whole_pieces_threshold"] == 0
        assert s["request_queue_time"] == 1
        assert s["max_out_request_queue"] == 64
        assert s["peer_fingerprint"] == PEER_ID
    finally:
        pull.close()


async def test_a_whole_peer_id_is_the_one_the_other_side_sees_and_swarm_reports_the_pieces(
        tmp_path):
    """steering.py needs a pull to know its own peer id among the others' (a 20-character
    fingerprint is used as the whole id), and `swarm` to tell what each connection holds."""
    data, _, info = blob(tmp_path, 8 * 1024 * 1024)
    seeder = Session(SETTINGS, role="mirror", fingerprint=MIRROR_FINGERPRINT)
    leecher = Session(SETTINGS, role="pull", fingerprint=PEER_ID)
    seeder.start()
    leecher.start()
    try:
        seeder.limit_every_peer()
        seeder.set_upload_limit(4 * 1024 * 1024)  # the transfer lasts while we look
        key = seeder.add(info, tmp_path / "seed", have_all=True)
        leecher.add(info, tmp_path / "leech")
        leecher.handle(key).connect_peer(("127.0.0.1", seeder.port))
        async with asyncio.timeout(30):
            while not [p for p in seeder.swarm(key)[1] if p.pid.strip(b"\0")]:
                await asyncio.sleep(0.05)
            have, peers, _ = seeder.swarm(key)
            assert [p.pid for p in peers] == [PEER_ID.encode()]
            assert have == [True, True] and not peers[0].seed and not peers[0].web_seed
            while not [p for p in leecher.swarm(key)[1] if p.pid.strip(b"\0")]:
                await asyncio.sleep(0.05)
            (mirror,) = leecher.swarm(key)[1]
            assert mirror.pid.startswith(MIRROR_FINGERPRINT.encode()) and mirror.seed
            assert (mirror.ip, mirror.port) == ("127.0.0.1", seeder.port)
            assert mirror.pieces == [True, True]
            await leecher.finished(key)
        assert leecher.swarm(key)[2] >= len(data)
    finally:
        seeder.close()
        leecher.close()


def test_a_session_has_one_of_three_roles():
    with pytest.raises(ValueError, match="role"):
        Session(SETTINGS, role="seeder")


async def test_close_cancels_whoever_still_waits_on_an_alert(tmp_path):
    """One registry of waiters: a torrent that can never finish (no peer anywhere) leaves its
    waiter cancelled at close, not hanging."""
    _, _, info = blob(tmp_path, 4 * 1024 * 1024)
    session = Session(SETTINGS, role="pull", fingerprint=PEER_ID)
    session.start()
    try:
        key = session.add(info, tmp_path / "leech")
        never = asyncio.ensure_future(session.finished(key))
        async with asyncio.timeout(30):
            # Resolved by its own alert, after `never` (started first) has begun to wait.
            assert await session.save_resume(key)
    finally:
        session.close()
    with pytest.raises(asyncio.CancelledError):
        await never
