"""The tracker protocols as pure parsers and renderers: HTTP announce and scrape (BEP 3, 23,
7, 48) from the raw query string, and BEP 15 UDP packets. Nothing here touches a socket.

`info_hash` and `peer_id` arrive percent-encoded as raw bytes: the query string is split and
decoded as bytes (`unquote_to_bytes`), never as UTF-8, which would destroy them. The query
string is the one the client sent (the request target's), not aiohttp's `query_string`,
which yarl has already percent-decoded once: decoding that again turned an info-hash's
`%2526` (the bytes `%26`) into `&`.

Each parameter accepts exactly its grammar and nothing else: the query is RFC 3986 query
characters with well-formed percent escapes (ASCII only); numbers are ASCII digits, no sign,
space or `_` (which `int()` allows); `compact` and `no_peer_id` are 0 or 1. A refusal names
the parameter; its `Refusal` is one of a fixed few (swarm.py).
"""

from __future__ import annotations

import ipaddress
import re
import struct
from typing import NamedTuple
from urllib.parse import unquote_to_bytes

from peer.bencode import bencode

from .swarm import Refusal, Swarm, TrackerRefused

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


#: RFC 3986's query characters (pchar, "/" and "?"); "%" only as the start of an escape
_QUERY_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
#: the digits of the largest number a parameter holds (2**63 - 1 has 19)
MAX_DIGITS = 20


def parse_query(raw: str) -> dict[bytes, list[bytes]]:
    """The parameters of a raw (still percent-encoded) query string, names and values as
    bytes, each name's values in order."""
    if len(raw) > MAX_QUERY:
        raise TrackerRefused(f"query string longer than {MAX_QUERY} bytes", Refusal.TOO_LARGE)
    if not (raw.isascii() and _QUERY_CHARS.fullmatch(raw)) or ("%" in raw
                                                                and _BAD_ESCAPE.search(raw)):
        raise TrackerRefused("query string is not percent-encoded ASCII", Refusal.MALFORMED)
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
    # bytes.isdigit is ASCII digits only (str.isdigit also takes "¹" and "١")
    if not (value.isdigit() and len(value) <= MAX_DIGITS):
        raise TrackerRefused(f"{name.decode()} is not a number", Refusal.MALFORMED)
    number = int(value)
    if not low <= number <= high:
        raise TrackerRefused(f"{name.decode()} out of range", Refusal.MALFORMED)
    return number


def _numwant(params: dict) -> int | None:
    """None for the client's default (absent, or -1 as some send); never refused for being
    large (it is clamped), so any run of digits is taken."""
    value = _one(params, b"numwant", required=False)
    if value is None or value == b"-1":
        return None
    if not value.isdigit():
        raise TrackerRefused("numwant is not a number", Refusal.MALFORMED)
    return int(value) if len(value) <= MAX_DIGITS else 2**63 - 1


def _flag(params: dict, name: bytes, default: bool) -> bool:
    value = _one(params, name, required=False)
    if value is None:
        return default
    if value not in (b"0", b"1"):
        raise TrackerRefused(f"{name.decode()} must be 0 or 1", Refusal.MALFORMED)
    return value == b"1"


def _address(claimed: bytes) -> str:
    """An `ip=` address: IPv4 or IPv6, without an IPv6 zone (`%eth0`)."""
    try:
        if b"%" in claimed:
            raise ValueError("a zone")
        return str(ipaddress.ip_address(claimed.decode("ascii")))
    except (UnicodeDecodeError, ValueError):
        raise TrackerRefused("ip is not an address", Refusal.MALFORMED) from None


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
    claimed = _one(params, b"ip", required=False)
    return Announce(
        info_hash=info_hash, peer_id=peer_id,
        port=_int(params, b"port", low=1, high=65535),
        uploaded=_int(params, b"uploaded", default=0),
        downloaded=_int(params, b"downloaded", default=0),
        left=_int(params, b"left", default=0),
        event=EVENTS[event],
        numwant=_numwant(params),
        compact=_flag(params, b"compact", True),
        no_peer_id=_flag(params, b"no_peer_id", False),
        ip=_address(claimed) if claimed and ip_trusted else remote_ip,
        key=_one(params, b"key", required=False),
    )


def parse_scrape(raw_query: str) -> list[bytes]:
    hashes = parse_query(raw_query).get(b"info_hash", [])
    if any(len(h) != 20 for h in hashes):
        raise TrackerRefused("info_hash must be 20 bytes", Refusal.MALFORMED)
    if len(hashes) > MAX_SCRAPE_HASHES:
        raise TrackerRefused(f"at most {MAX_SCRAPE_HASHES} info_hash per scrape",
                             Refusal.TOO_LARGE)
    return hashes


def announce_body(swarm: Swarm, peers: list[int], complete: int, incomplete: int, *,
                  interval: int, min_interval: int, compact: bool, no_peer_id: bool) -> bytes:
    """`peers` are slots of `swarm`."""
    body: dict = {"interval": interval, "min interval": min_interval, "complete": complete,
                  "incomplete": incomplete}
    if compact:
        body["peers"] = swarm.compact(peers, v6=False)
        v6 = swarm.compact(peers, v6=True)
        if v6:
            body["peers6"] = v6
    else:
        views = map(swarm.view, peers)
        body["peers"] = [
            {"ip": p.ip, "port": p.port, **({} if no_peer_id else {"peer id": p.peer_id})}
            for p in views
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
                        peers: bytes) -> bytes:
    """`peers` compact, of the family the request came in (Swarm.compact)."""
    return struct.pack(">IIIII", ANNOUNCE, transaction_id, interval, leechers, seeders) + peers


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
