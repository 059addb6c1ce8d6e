"""Deterministic torrents: one v1 single-file torrent per large blob (DESIGN.md section 3).

The info dict depends on the content alone (name = the sha256 hex, length, piece length by
DESIGN.md's function, the piece SHA-1s the store computed at ingest, and `private` for gated or
private content), so every mirror holding the same bytes computes the same info-hash and joins
the same swarm. Trackers and web seeds live outside the info dict.
"""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit

from .bencode import bencode
from .hashing import TORRENT_MIN_SIZE, piece_length_for
from .paths import is_sha256


def info_dict(sha256: str, size: int, piece_length: int, pieces: bytes, *, private: bool = False) -> dict:
    if not is_sha256(sha256):
        raise ValueError(f"not a sha256: {sha256!r}")
    if size < TORRENT_MIN_SIZE:
        raise ValueError(f"blobs under {TORRENT_MIN_SIZE} bytes travel over HTTP, not BitTorrent")
    if piece_length != piece_length_for(size):
        raise ValueError(f"piece length {piece_length} is not the one for {size} bytes")
    count = -(-size // piece_length)
    if len(pieces) != 20 * count:
        raise ValueError(f"{len(pieces)} bytes of piece hashes, expected {20 * count}")
    info = {"name": sha256, "length": size, "piece length": piece_length, "pieces": pieces}
    if private:
        info["private"] = 1
    return info


def info_hash(info: dict) -> str:
    """The v1 info-hash: SHA-1 of the bencoded info dict, lower-case hex."""
    return hashlib.sha1(bencode(info)).hexdigest()


def tracker_http(announce: str) -> str | None:
    """The HTTP base of the tracker of an announce URL: our tracker serves HTTP and UDP on
    one port, so a `udp://` tracker is asked over HTTP there."""
    try:
        parts = urlsplit(announce)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https", "udp") or not parts.hostname:
        return None
    scheme = "http" if parts.scheme == "udp" else parts.scheme
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{scheme}://{host}{f':{port}' if port else ''}"
