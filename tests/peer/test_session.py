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

SETTINGS = SessionSettings(listen="127.0.0.1:0", min_announce_interval=1)




async def test_a_leecher_completes_from_a_seeder_and_the_bytes_are_on_disk(tracker, tmp_path):
    data = os.urandom(6 * 1024 * 1024 + 77)
    hasher = Hasher(len(data), lfs=True)
    hasher.update(data)
    d = hasher.finish()
    torrent = bencode({"announce": f"{tracker.url}/announce",
                       "info": info_dict(d.sha256, d.size, d.piece_length, d.pieces)})
    (tmp_path / "seed").mkdir()
    (tmp_path / "seed" / d.sha256).write_bytes(data)
    (tmp_path / "leech").mkdir()
    seeder, leecher = Session(SETTINGS), Session(SETTINGS)
    seeder.start()
    leecher.start()
    try:
        key = seeder.add(torrent, tmp_path / "seed")
        async with asyncio.timeout(60):
            await seeder.finished(key)  # checked and flushed: seeding
            assert leecher.add(torrent, tmp_path / "leech") == key
            await leecher.finished(key)
        assert (tmp_path / "leech" / d.sha256).read_bytes() == data
    finally:
        seeder.close()
        leecher.close()


def test_a_mirror_offers_no_allowed_fast_pieces_and_few_uploads_and_a_peer_keeps_the_defaults():
    """Every peer of one site shares a /24, so a seed's BEP 6 allowed-fast set is the same
    for all of them: they all fetched those pieces from the mirror at once (ops/bench/swarm.py:
    the mirror sent 1.66x the model for 8 peers with it, 1.32x without)."""
    from peer.session import MIRROR_FINGERPRINT, MIRROR_UPLOAD_SLOTS, PEER_FINGERPRINT

    mirror = Session(SETTINGS, fingerprint=MIRROR_FINGERPRINT)
    peer = Session(SETTINGS, fingerprint=PEER_FINGERPRINT)
    try:
        m, p = mirror.lt.get_settings(), peer.lt.get_settings()
        assert m["allowed_fast_set_size"] == 0
        assert m["unchoke_slots_limit"] == MIRROR_UPLOAD_SLOTS == 4
        assert m["seeding_outgoing_connections"] is False
        assert p["allowed_fast_set_size"] > 0 and p["unchoke_slots_limit"] == 8
    finally:
        mirror.close()
        peer.close()
