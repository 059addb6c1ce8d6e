"""The tracker protocols as pure parsers and renderers: HTTP announce and scrape (BEP 3, 23,
7, 48) from the raw query string, and BEP 15 UDP packets. Nothing here touches a socket.

`info_hash` and `peer_id` arrive percent-encoded as raw bytes: the query string is split and
decoded as bytes (`unquote_to_bytes`), never as UTF-8, which would destroy them.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from typing import NamedTuple
from urllib.parse import unquote_to_bytes

from peer.bencode import bencode

from .swarm import Peer, Refusal, TrackerRefused

MAX_QUERY = 8192
MAX_SCRAPE_HASHES = 74  # what fits one UDP answer; the same bound for HTTP
EVENTS = {b"": "", b"started": "started", b"completed": "completed", b"stopped": "stopped",
          b"paused": ""}
UDP_EVENTS = {0: "", 1: "completed", 2: "started", 3: "stopped"}
PROTOCOL_ID = 0x41727101980
CONNECT, ANNOUNCE, SCRAPE, ERROR = 0, 1, 2, 3


class Announce(NamedTuple):  # a tuple: built for every announce, cheaper than a dataclass
    info_hash: bytes
    peer_id: bytes
    port: int
    uploaded: int
    downloaded: int
    left: int
    event: str
    numwant: int | None
    compact: bool
    no_peer_id: bool
    ip: str
    key: bytes | None


def parse_query(raw: str) -> dict[bytes, list[bytes]]:
    if len(raw) > MAX_QUERY:
        raise TrackerRefused(f"query string longer than {MAX_QUERY} bytes", Refusal.TOO_LARGE)
    params: dict[bytes, list[bytes]] = {}
    for part in raw.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        params.setdefault(unquote_to_bytes(name.replace("+", " ")), []).append(
            unquote_to_bytes(value.replace("+", " ")))
    return params


def _one(params: dict, name: bytes, *, required: bool = True) -> bytes | None:
    values = params.get(name)
    if not values:
        if required:
            raise TrackerRefused(f"missing {name.decode()}", Refusal.MALFORMED)
        return None
    return values[0]


def _int(params: dict, name: bytes, *, default: int | None = None, low: int = 0,
         high: int = 2**63 - 1) -> int | None:
    value = _one(params, name, required=default is None)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise TrackerRefused(f"{name.decode()} is not a number", Refusal.MALFORMED) from None
    if not low <= number <= high:
        raise TrackerRefused(f"{name.decode()} out of range", Refusal.MALFORMED)
    return number


def parse_announce(raw_query: str, remote_ip: str, *, ip_trusted: bool) -> Announce:
    params = parse_query(raw_query)
    info_hash = _one(params, b"info_hash")
    peer_id = _one(params, b"peer_id")
    if len(info_hash) != 20:
        raise TrackerRefused("info_hash must be 20 bytes", Refusal.MALFORMED)
    if len(peer_id) != 20:
        raise TrackerRefused("peer_id must be 20 bytes", Refusal.MALFORMED)
    event = _one(params, b"event", required=False) or b""
    if event not in EVENTS:
        raise TrackerRefused("unknown event", Refusal.MALFORMED)
    numwant = _int(params, b"numwant", default=-1, low=-1)
    ip = remote_ip
    claimed = _one(params, b"ip", required=False)
    if claimed and ip_trusted:
        try:
            ip = str(ipaddress.ip_address(claimed.decode("ascii")))
        except (UnicodeDecodeError, ValueError):
            raise TrackerRefused("ip is not an address", Refusal.MALFORMED) from None
    return Announce(
        info_hash=info_hash, peer_id=peer_id,
        port=_int(params, b"port", low=1, high=65535),
        uploaded=_int(params, b"uploaded", default=0),
        downloaded=_int(params, b"downloaded", default=0),
        left=_int(params, b"left", default=0),
        event=EVENTS[event],
        numwant=None if numwant == -1 else numwant,
        compact=(_one(params, b"compact", required=False) or b"1") != b"0",
        no_peer_id=(_one(params, b"no_peer_id", required=False) or b"0") == b"1",
        ip=ip, key=_one(params, b"key", required=False),
    )


def parse_scrape(raw_query: str) -> list[bytes]:
    hashes = parse_query(raw_query).get(b"info_hash", [])
    if any(len(h) != 20 for h in hashes):
        raise TrackerRefused("info_hash must be 20 bytes", Refusal.MALFORMED)
    if len(hashes) > MAX_SCRAPE_HASHES:
        raise TrackerRefused(f"at most {MAX_SCRAPE_HASHES} info_hash per scrape",
                             Refusal.TOO_LARGE)
    return hashes


@functools.lru_cache(maxsize=1 << 16)
def _packed(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed


def compact_peer(ip: str, port: int) -> bytes:
    return _packed(ip) + port.to_bytes(2, "big")


def _compact(p: Peer) -> bytes:
    return p.compact or compact_peer(p.ip, p.port)


def announce_body(peers: list[Peer], complete: int, incomplete: int, *, interval: int,
                  min_interval: int, compact: bool, no_peer_id: bool) -> bytes:
    body: dict = {"interval": interval, "min interval": min_interval, "complete": complete,
                  "incomplete": incomplete}
    v4 = [p for p in peers if ":" not in p.ip]
    v6 = [p for p in peers if ":" in p.ip]
    if compact:
        body["peers"] = b"".join(_compact(p) for p in v4)
        if v6:
            body["peers6"] = b"".join(_compact(p) for p in v6)
    else:
        body["peers"] = [
            {"ip": p.ip, "port": p.port, **({} if no_peer_id else {"peer id": p.peer_id})}
            for p in peers
        ]
    return bencode(body)


def scrape_body(stats: dict[bytes, tuple[int, int, int]]) -> bytes:
    return bencode({"files": {h: {"complete": c, "downloaded": d, "incomplete": i}
                              for h, (c, d, i) in stats.items()}})


def failure_body(reason: str) -> bytes:
    return bencode({"failure reason": reason})


# -- UDP (BEP 15) ---------------------------------------------------------------------------------


class UdpRequest(NamedTuple):
    action: int
    connection_id: int
    transaction_id: int
    payload: bytes


def parse_udp(packet: bytes) -> UdpRequest | None:
    """None for a packet too short to answer at all (no transaction id to echo)."""
    if len(packet) < 16:
        return None
    connection_id, action, transaction_id = struct.unpack_from(">QII", packet)
    return UdpRequest(action, connection_id, transaction_id, packet[16:])


def udp_connect_answer(transaction_id: int, connection_id: int) -> bytes:
    return struct.pack(">IIQ", CONNECT, transaction_id, connection_id)


def udp_error(transaction_id: int, message: str) -> bytes:
    return struct.pack(">II", ERROR, transaction_id) + message.encode()[:200]


def parse_udp_announce(req: UdpRequest, remote_ip: str) -> Announce:
    if len(req.payload) < 82:
        raise TrackerRefused("announce packet too short", Refusal.MALFORMED)
    (info_hash, peer_id, downloaded, left, uploaded, event, _ip, key, numwant,
     port) = struct.unpack_from(">20s20sQQQIIIiH", req.payload)
    if event not in UDP_EVENTS:
        raise TrackerRefused("unknown event", Refusal.MALFORMED)
    if port == 0:
        raise TrackerRefused("port 0", Refusal.MALFORMED)
    return Announce(info_hash, peer_id, port, uploaded, downloaded, left, UDP_EVENTS[event],
                    None if numwant < 0 else numwant, True, True, remote_ip,
                    key.to_bytes(4, "big"))


def udp_announce_answer(transaction_id: int, interval: int, leechers: int, seeders: int,
                        peers: list[Peer], *, v6: bool) -> bytes:
    head = struct.pack(">IIIII", ANNOUNCE, transaction_id, interval, leechers, seeders)
    size = 18 if v6 else 6  # an answer carries the family the request came in
    return head + b"".join(c for c in map(_compact, peers) if len(c) == size)


def parse_udp_scrape(req: UdpRequest) -> list[bytes]:
    if not req.payload or len(req.payload) % 20:
        raise TrackerRefused("scrape needs whole 20-byte info hashes", Refusal.MALFORMED)
    hashes = [req.payload[i : i + 20] for i in range(0, len(req.payload), 20)]
    if len(hashes) > MAX_SCRAPE_HASHES:
        raise TrackerRefused(f"at most {MAX_SCRAPE_HASHES} info hashes per scrape",
                             Refusal.TOO_LARGE)
    return hashes


def udp_scrape_answer(transaction_id: int, stats: list[tuple[int, int, int]]) -> bytes:
    return struct.pack(">II", SCRAPE, transaction_id) + b"".join(
        struct.pack(">III", complete, downloaded, incomplete)
        for complete, downloaded, incomplete in stats)
