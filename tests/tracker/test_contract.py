"""Contract tests for the tracker's HTTP and UDP protocols, over real sockets on 127.0.0.1, in
the spirit of torrust-tracker's: what every BitTorrent client relies on."""

from __future__ import annotations

import http.client
import socket
import struct
import time
from urllib.parse import quote_from_bytes

import pytest

from helpers import start_tracker
from peer.bencode import bdecode
from tracker.app import CONNECTION_WINDOW, TRACKER
from tracker.config import TrackerConfig

H1, H2 = b"\x01" * 20, b"\x02" * 20


@pytest.fixture(scope="module")
def tracker():
    running = start_tracker(TrackerConfig(port=0, interval=120, min_interval=30, peer_ttl=300))
    yield running
    running.stop()


def get(port: int, target: bytes | str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest("GET", target if isinstance(target, str) else target.decode("latin-1"),
                    skip_accept_encoding=True)
    conn.endheaders()
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, bdecode(body)


def announce(port: int, info_hash: bytes, peer_id: bytes, peer_port: int, *, left: int = 100,
             event: str = "", extra: str = "", uploaded: int = 0) -> dict:
    query = (f"info_hash={quote_from_bytes(info_hash)}&peer_id={quote_from_bytes(peer_id)}"
             f"&port={peer_port}&uploaded={uploaded}&downloaded=0&left={left}&compact=1")
    if event:
        query += f"&event={event}"
    status, body = get(port, f"/announce?{query}{extra}")
    assert status == 200
    return body


def compact(peers: bytes) -> list[tuple[str, int]]:
    return [(socket.inet_ntoa(peers[i : i + 4]), struct.unpack(">H", peers[i + 4 : i + 6])[0])
            for i in range(0, len(peers), 6)]


def pid(n: int) -> bytes:
    return b"-WS0001-" + b"%012d" % n


def test_the_first_peer_gets_no_peers_and_the_second_gets_the_first(tracker):
    h = b"\x10" * 20
    first = announce(tracker.port, h, pid(1), 7001, event="started")
    assert first[b"peers"] == b"" and first[b"interval"] == 120 and first[b"min interval"] == 30
    second = announce(tracker.port, h, pid(2), 7002, event="started")
    assert compact(second[b"peers"]) == [("127.0.0.1", 7001)]
    assert (second[b"complete"], second[b"incomplete"]) == (0, 2)


def test_the_same_peer_id_from_a_new_port_replaces_the_old_entry(tracker):
    h = b"\x11" * 20
    announce(tracker.port, h, pid(1), 7001)
    announce(tracker.port, h, pid(1), 7005)
    other = announce(tracker.port, h, pid(2), 7002)
    assert compact(other[b"peers"]) == [("127.0.0.1", 7005)]


def test_stopped_removes_and_completed_counts(tracker):
    h = b"\x12" * 20
    announce(tracker.port, h, pid(1), 7001)
    announce(tracker.port, h, pid(2), 7002)
    announce(tracker.port, h, pid(1), 7001, left=0, event="completed")
    status, scraped = get(tracker.port, f"/scrape?info_hash={quote_from_bytes(h)}")
    assert scraped[b"files"][h] == {b"complete": 1, b"downloaded": 1, b"incomplete": 1}
    announce(tracker.port, h, pid(2), 7002, event="stopped")
    third = announce(tracker.port, h, pid(3), 7003)
    assert compact(third[b"peers"]) == [("127.0.0.1", 7001)], "the stopped peer is gone"


def test_non_compact_lists_and_no_peer_id(tracker):
    h = b"\x13" * 20
    announce(tracker.port, h, pid(1), 7001)
    query = (f"info_hash={quote_from_bytes(h)}&peer_id={quote_from_bytes(pid(2))}&port=7002"
             f"&left=5&compact=0")
    _, body = get(tracker.port, f"/announce?{query}")
    assert body[b"peers"] == [{b"ip": b"127.0.0.1", b"port": 7001, b"peer id": pid(1)}]
    _, body = get(tracker.port, f"/announce?{query}&no_peer_id=1")
    assert body[b"peers"] == [{b"ip": b"127.0.0.1", b"port": 7001}]


def test_peers6_for_ipv6_peers_from_a_trusted_proxy(tracker):
    h = b"\x14" * 20
    announce(tracker.port, h, pid(1), 7001, extra="&ip=2001:db8::1")  # loopback is trusted
    body = announce(tracker.port, h, pid(2), 7002)
    six = body[b"peers6"]
    assert len(six) == 18 and socket.inet_ntop(socket.AF_INET6, six[:16]) == "2001:db8::1"
    assert struct.unpack(">H", six[16:])[0] == 7001


def test_scrape_of_several_hashes_and_an_unknown_one(tracker):
    a, b, unknown = b"\x15" * 20, b"\x16" * 20, b"\x17" * 20
    announce(tracker.port, a, pid(1), 7001, left=0)
    announce(tracker.port, b, pid(2), 7002)
    query = "&".join(f"info_hash={quote_from_bytes(h)}" for h in (a, b, unknown))
    _, body = get(tracker.port, f"/scrape?{query}")
    files = body[b"files"]
    assert files[a][b"complete"] == 1 and files[b][b"incomplete"] == 1
    assert files[unknown] == {b"complete": 0, b"downloaded": 0, b"incomplete": 0}


def test_a_huge_numwant_is_answered_with_at_most_50(tracker):
    h = b"\x18" * 20
    for n in range(70):
        announce(tracker.port, h, pid(n), 8000 + n)
    body = announce(tracker.port, h, pid(999), 9999, extra="&numwant=1000000000")
    assert len(compact(body[b"peers"])) == 50


A = "a" * 20  # 20 bytes: a valid info_hash or peer_id


@pytest.mark.parametrize("query, reason", [
    (f"peer_id={A}&port=1", b"info_hash"),
    (f"info_hash=abc&peer_id={A}&port=1", b"info_hash"),
    (f"info_hash={A}&peer_id=short&port=1", b"peer_id"),
    (f"info_hash={A}&peer_id={A}&port=0", b"port"),
    (f"info_hash={A}&peer_id={A}&port=70000", b"port"),
    (f"info_hash={A}&peer_id={A}&port=http", b"port"),
    (f"info_hash={A}&peer_id={A}&port=1&left=-5", b"left"),
    (f"info_hash={A}&peer_id={A}&port=1&event=exploded", b"event"),
    ("x=" + "y" * 100_000, b"query"),
    # what int() and a lenient percent-decoding let through before (issue 14)
    (f"info_hash={A}&peer_id={A}&port=%2B80", b"port"),
    (f"info_hash={A}&peer_id={A}&port=+80", b"port"),
    (f"info_hash={A}&peer_id={A}&port=8_0", b"port"),
    (f"info_hash={A}&peer_id={A}&port=%2080", b"port"),
    (f"info_hash={A}&peer_id={A}&port=80%20", b"port"),
    (f"info_hash={A}&peer_id={A}&port=%D9%A1", b"port"),
    (f"info_hash={A}&peer_id={A}&port=1&left=%C2%B9", b"left"),
    (f"info_hash={A}&peer_id={A}&port=1&numwant=%EF%BC%95", b"numwant"),
    (f"info_hash={A}&peer_id={A}&port=1&compact=2", b"compact"),
    (f"info_hash={A}&peer_id={A}&port=1&no_peer_id=yes", b"no_peer_id"),
    (f"info_hash={A}&peer_id={A}&port=1&ip=fe80::1%25eth0", b"ip"),
    (f"info_hash=%zz{A[3:]}&peer_id={A}&port=1", b"query"),
    (f"info_hash={A}&peer_id={A}&port=1&x=%e", b"query"),
    (f"info_hash={A}&peer_id={A}&port=1&x=<script>", b"query"),
])
def test_hostile_announces_get_a_failure_reason_and_the_tracker_keeps_serving(tracker, query,
                                                                            reason):
    status, body = get(tracker.port, f"/announce?{query}")
    assert status == 200 and reason in body[b"failure reason"], body
    ok = announce(tracker.port, b"\x19" * 20, pid(1), 7001)
    assert b"failure reason" not in ok


def test_an_info_hash_is_percent_decoded_exactly_once(tracker):
    # The bytes "%26" are sent as %2526; decoded twice (aiohttp's query_string, then ours)
    # they were "&" and the hash two bytes short.
    h = b"%26%2B+&=" + b"\x1a" * 11
    first = announce(tracker.port, h, pid(1), 7001)
    assert b"failure reason" not in first, first
    second = announce(tracker.port, h, pid(2), 7002)
    assert compact(second[b"peers"]) == [("127.0.0.1", 7001)]
    _, scraped = get(tracker.port, f"/scrape?info_hash={quote_from_bytes(h)}")
    assert scraped[b"files"][h][b"incomplete"] == 2


# -- UDP --------------------------------------------------------------------------------------------


def udp(port: int, packet: bytes, timeout: float = 2.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.bind(("127.0.0.1", 0))
        s.sendto(packet, ("127.0.0.1", port))
        try:
            return s.recv(65536)
        except TimeoutError:
            return None


class UdpClient:
    """One client socket (the connection id is bound to its address)."""

    def __init__(self, port: int):
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(2.0)
        self.sock.bind(("127.0.0.1", 0))

    def ask(self, packet: bytes) -> bytes:
        self.sock.sendto(packet, ("127.0.0.1", self.port))
        return self.sock.recv(65536)

    def connect(self) -> int:
        answer = self.ask(struct.pack(">QII", 0x41727101980, 0, 42))
        action, tid, cid = struct.unpack(">IIQ", answer)
        assert (action, tid) == (0, 42)
        return cid

    def announce(self, cid: int, info_hash: bytes, peer_id: bytes, port: int, *, left=100,
                 event=2, numwant=-1) -> bytes:
        return self.ask(struct.pack(">QII20s20sQQQIIIiH", cid, 1, 7, info_hash, peer_id, 0,
                                    left, 0, event, 0, 0, numwant, port))

    def close(self) -> None:
        self.sock.close()


def test_udp_connect_announce_and_scrape(tracker):
    a, b = UdpClient(tracker.port), UdpClient(tracker.port)
    try:
        h = b"\x20" * 20
        first = a.announce(a.connect(), h, pid(1), 7101, left=0)
        action, tid, interval, leechers, seeders = struct.unpack(">IIIII", first[:20])
        assert (action, tid, interval, leechers, seeders) == (1, 7, 120, 0, 1)
        assert first[20:] == b"", "the first peer gets no peers"
        cid = b.connect()
        second = b.announce(cid, h, pid(2), 7102)
        assert compact(second[20:]) == [("127.0.0.1", 7101)]
        scrape = b.ask(struct.pack(">QII", cid, 2, 9) + h + b"\x21" * 20)
        assert struct.unpack(">II", scrape[:8]) == (2, 9)
        assert struct.unpack(">IIIIII", scrape[8:]) == (1, 0, 1, 0, 0, 0)
        stopped = b.announce(cid, h, pid(2), 7102, event=3)
        assert struct.unpack(">I", stopped[:4])[0] == 1
    finally:
        a.close()
        b.close()


def test_udp_wrong_and_expired_connection_ids_are_refused(tracker):
    client = UdpClient(tracker.port)
    try:
        answer = client.announce(12345, b"\x22" * 20, pid(1), 7001)
        assert struct.unpack(">I", answer[:4])[0] == 3 and b"connection id" in answer[8:]
        # An id is an HMAC of the address and the minute: one from three minutes ago is dead.
        state = tracker.app[TRACKER]
        stale_minute = int(time.time() // CONNECTION_WINDOW) - 3
        stale = state.connection_id(client.sock.getsockname(), stale_minute)
        answer = client.announce(stale, b"\x22" * 20, pid(1), 7001)
        assert struct.unpack(">I", answer[:4])[0] == 3
        fresh = state.connection_id(client.sock.getsockname(), stale_minute + 2)
        assert struct.unpack(">I", client.announce(fresh, b"\x22" * 20, pid(1), 7001)[:4])[0] == 1
    finally:
        client.close()


def test_udp_garbage_truncated_and_oversized_packets_never_stop_it(tracker):
    client = UdpClient(tracker.port)
    try:
        assert udp(tracker.port, b"hello", timeout=0.3) is None, "too short: ignored"
        bad_protocol = udp(tracker.port, struct.pack(">QII", 1, 0, 5))
        assert struct.unpack(">II", bad_protocol[:8]) == (3, 5)
        cid = client.connect()
        truncated = client.ask(struct.pack(">QII", cid, 1, 6) + b"\x01" * 30)
        assert struct.unpack(">II", truncated[:8]) == (3, 6)
        oversized_scrape = client.ask(struct.pack(">QII", cid, 2, 8) + b"\x01" * 20 * 200)
        assert struct.unpack(">II", oversized_scrape[:8]) == (3, 8)
        unknown_action = client.ask(struct.pack(">QII", cid, 9, 10))
        assert struct.unpack(">II", unknown_action[:8]) == (3, 10)
        for n in range(300):  # a bounded flood of connects
            client.sock.sendto(struct.pack(">QII", 0x41727101980, 0, n), ("127.0.0.1",
                                                                            tracker.port))
        got = 0
        try:
            while got < 300:
                client.sock.recv(64)
                got += 1
        except TimeoutError:
            pass
        assert got > 250, f"only {got} of 300 connects answered"
        assert struct.unpack(">I", client.announce(client.connect(), b"\x23" * 20, pid(1),
                                                   7001)[:4])[0] == 1
    finally:
        client.close()


def test_stats_and_metrics(tracker):
    import json
    import urllib.request

    with urllib.request.urlopen(f"{tracker.url}/api/weightswarm/stats") as r:
        stats = json.loads(r.read())
    assert stats["swarms"] > 0 and stats["peers"] > 0
    with urllib.request.urlopen(f"{tracker.url}/metrics") as r:
        text = r.read().decode()
    assert 'weightswarm_tracker_requests_total{kind="announce",protocol="http",result="ok"}' in text
    assert "weightswarm_tracker_peers" in text


def test_what_a_mirrors_peers_carried_is_summed_over_its_swarms_from_their_announces(tracker):
    """Issue 21's share of bytes peers carried: each announce adds what its peer uploaded since
    its previous one; the mirror (peer id `-WM`) asks, by its port, from its own address."""
    import json
    import urllib.error
    import urllib.request

    port = tracker.port
    h1, h2, h3 = b"\x31" * 20, b"\x32" * 20, b"\x33" * 20
    mirror = b"-WM0100-" + b"%012d" % 1
    for h in (h1, h2):
        announce(port, h, mirror, 7100, left=0, event="started")
    announce(port, h1, pid(901), 7201, event="started")
    announce(port, h1, pid(901), 7201, uploaded=1000)  # +1000
    announce(port, h1, pid(902), 7202, event="started", uploaded=500)  # +500
    announce(port, h1, pid(902), 7202, uploaded=800)  # +300
    announce(port, h2, pid(903), 7203, uploaded=7777)  # its first, not `started`: a baseline
    announce(port, h2, pid(903), 7203, uploaded=100)  # went back (restarted): +100
    announce(port, h3, pid(904), 7204, event="started", uploaded=9999)  # not the mirror's
    announce(port, h1, mirror, 7100, left=0, uploaded=4000)

    def carried(query: str) -> dict:
        with urllib.request.urlopen(f"{tracker.url}/api/weightswarm/carried?{query}") as r:
            return json.loads(r.read())

    got = carried("port=7100")
    assert (got["swarms"], got["peers_sent"], got["mirror_sent"]) == (2, 1900, 4000), got
    assert got["endpoint"] == "127.0.0.1:7100"
    announce(port, h1, pid(901), 7201, event="stopped", uploaded=1250)  # +250 as it leaves
    assert carried("port=7100")["peers_sent"] == 2150
    announce(port, h2, mirror, 7100, left=0, event="stopped")
    assert carried("port=7100")["swarms"] == 1 and carried("port=7100")["peers_sent"] == 2050
    assert carried("port=7199")["swarms"] == 0, "another mirror's"
    for bad in ("port=x", "port=0", "port=70000", ""):
        with pytest.raises(urllib.error.HTTPError) as e:
            carried(bad)
        assert e.value.code == 400
    with urllib.request.urlopen(f"{tracker.url}/metrics") as r:
        assert 'weightswarm_tracker_carried_bytes{by="mirrors"}' in r.read().decode()


def test_a_mirror_not_heard_from_within_the_ttl_is_forgotten_by_the_count():
    """A mirror restarted on another port is another endpoint: the old one's swarms must not
    pile up (tracker/carried.py)."""
    from tracker.app import Tracker
    from tracker.wire import Announce

    tracker = Tracker(TrackerConfig(peer_ttl=300))
    mirror = b"-WM0100-" + b"%012d" % 7
    for port, now in ((7301, 1000.0), (7302, 1200.0)):
        tracker.announce(Announce(H1, mirror, port, 0, 0, 0, "started", 30, True, True,
                                  "127.0.0.1", None), now)
    assert set(tracker.carried.swarms) == {"127.0.0.1:7301", "127.0.0.1:7302"}
    tracker.expire(1350.0)
    assert set(tracker.carried.swarms) == {"127.0.0.1:7302"}
    assert set(tracker.carried.heard) == {"127.0.0.1:7302"}
