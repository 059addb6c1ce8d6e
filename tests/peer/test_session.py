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
