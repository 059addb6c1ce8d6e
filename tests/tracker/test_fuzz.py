"""A UDP fuzzer against the real tracker command (issue 14): 200,000 packets of random bytes,
announces with every BEP 15 field mutated, valid connection ids with wrong actions, scrapes of
no hash and of too many, connects with the wrong protocol id. The tracker must answer on, its
memory (RSS, from /proc), `/metrics` and log must stay within a bound, and a real announce
must still work.

The valid announces among the mutations name one of 64 swarms and one of 512 peer ids (a
mutated field makes a new one): what the table holds for them is a few MiB at most."""

from __future__ import annotations

import random
import struct
import time
import urllib.request

from test_contract import UdpClient, compact, pid
from test_tracker_cli import _listening

PACKETS = 200_000
PROTOCOL_ID = 0x41727101980
ANNOUNCE = struct.Struct(">QII20s20sQQQIIIiH")
#: (field, its struct code) of a BEP 15 announce, after connection id, action, transaction id
FIELDS = ["info_hash", "peer_id", "downloaded", "left", "uploaded", "event", "ip", "key",
          "numwant", "port"]
#: RSS the fuzz may add: the table's peers (a few MiB), Python's arenas settling, the caches'
#: entries; before issue 14 each made-up action number was a new series and log-table entry
RSS_BOUND = 16 * 2**20
METRICS_BOUND = 16_384


def rss(pid_: int) -> int:
    with open(f"/proc/{pid_}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as r:
        return r.read().decode()


class Fuzzer:
    """Packets for one client socket (connection ids are bound to its address)."""

    def __init__(self, rng: random.Random, connection_id: int):
        self.rng = rng
        self.cid = connection_id
        self.hashes = [rng.randbytes(20) for _ in range(64)]
        self.peer_ids = [b"-FZ0001-" + rng.randbytes(12) for _ in range(512)]

    def valid_announce(self) -> list:
        r = self.rng
        return [self.cid, 1, r.getrandbits(32), r.choice(self.hashes), r.choice(self.peer_ids),
                r.getrandbits(20), r.choice([0, 1 << 20]), 0, r.randrange(4), 0,
                r.getrandbits(32), r.choice([-1, 30, 50]), r.randrange(1, 65536)]

    def mutated_announce(self) -> bytes:
        r = self.rng
        values = self.valid_announce()
        field = r.randrange(len(values))
        if field == 3 or field == 4:  # info_hash, peer_id: any bytes, any length
            values[field] = r.randbytes(r.choice([20, 20, 0, 19, 21]))[:20].ljust(20, b"\0")
        elif field == 11:  # numwant, signed
            values[field] = r.randrange(-(2**31), 2**31)
        elif field in (5, 6, 7):  # downloaded, left, uploaded
            values[field] = r.choice([0, 2**64 - 1, r.getrandbits(64)])
        elif field == 12:  # port, 0 included
            values[field] = r.choice([0, 1, 65535])
        elif field == 0:
            values[field] = r.getrandbits(64)  # a wrong connection id
        else:  # action, transaction id, event, ip, key
            values[field] = r.getrandbits(32)
        packet = ANNOUNCE.pack(*values)
        cut = r.random()
        if cut < 0.1:
            return packet[: r.randrange(16, len(packet))]  # truncated
        if cut < 0.2:
            return packet + r.randbytes(r.randrange(1, 60))  # BEP 41 options, or junk
        return packet

    def packet(self) -> bytes:
        r = self.rng
        kind = r.random()
        if kind < 0.2:
            return r.randbytes(r.randrange(0, 200))
        if kind < 0.55:
            return self.mutated_announce()
        if kind < 0.75:  # a valid connection id, a wrong action (3 is the error's, not a request)
            return struct.pack(">QII", self.cid, r.choice([3, r.randrange(4, 2**32)]),
                               r.getrandbits(32)) + r.randbytes(r.randrange(0, 40))
        if kind < 0.9:  # scrapes of no hash, of too many, of partial hashes
            count = r.choice([0, 0, 75, 100, r.randrange(1, 75)])
            return (struct.pack(">QII", self.cid, 2, r.getrandbits(32))
                    + r.randbytes(20 * count + r.choice([0, 0, 7])))
        return struct.pack(">QII", r.choice([PROTOCOL_ID, r.getrandbits(64)]), 0,
                           r.getrandbits(32)) + r.randbytes(r.randrange(0, 8))


def blast(port: int, count: int, rng: random.Random) -> tuple[int, int]:
    """`count` fuzz packets from a fresh socket, a window at a time (waiting for the answers
    of a window, briefly, so that the tracker's socket buffer does not overflow): (packets
    sent that a tracker answers, answers received)."""
    client = UdpClient(port)
    client.sock.settimeout(0.05)
    try:
        fuzz = Fuzzer(rng, client.connect())
        expected = answered = 0
        for start in range(0, count, 128):
            window = [fuzz.packet() for _ in range(min(128, count - start))]
            for packet in window:
                client.sock.sendto(packet, ("127.0.0.1", port))
            owed = sum(len(p) >= 16 for p in window)
            expected += owed
            try:
                for _ in range(owed):
                    client.sock.recv(65536)
                    answered += 1
            except TimeoutError:
                pass
        return expected, answered
    finally:
        client.close()


def test_200000_fuzzed_packets_leave_memory_metrics_and_log_bounded(tmp_path):
    log: list[str] = []
    process, ports = _listening(["--home", str(tmp_path), "tracker", "serve", "--port", "0"],
                                r"tracker listening on http://127\.0\.0\.1:(\d+)", 1, log)
    port = ports[0]
    rng = random.Random(14)
    try:
        blast(port, 20_000, rng)  # warm-up: every label series made, the swarms there
        rss_before, metrics_before = rss(process.pid), len(metrics(port))
        started = time.monotonic()
        expected = answered = 0
        for _ in range(PACKETS // 20_000):  # a new client (and connection id) every 20,000
            e, a = blast(port, 20_000, rng)
            expected, answered = expected + e, answered + a
        seconds = time.monotonic() - started
        grown, text = rss(process.pid) - rss_before, metrics(port)
        assert process.poll() is None, "the tracker died"
        handled = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                      if line.startswith("weightswarm_tracker_requests_total"))
        assert answered > 0.9 * expected and handled > 0.9 * (expected + 20_000), (
            f"only {answered} of {expected} packets answered ({handled:.0f} counted)")
        assert grown < RSS_BOUND, f"RSS grew {grown / 2**20:.1f} MiB in {seconds:.0f} s"
        assert len(text) < METRICS_BOUND and len(text) - metrics_before < 1024, (
            f"/metrics went from {metrics_before} to {len(text)} bytes")
        real_announce_works(port)
    finally:
        process.terminate()
        process.wait(30)
    # what the tracker logged: one line a minute for each kind of refusal, at most
    refusals = [line for line in log if "refused" in line]
    assert 0 < len(refusals) <= 60, f"{len(refusals)} refusal lines logged"
    print(f"fuzz: {PACKETS} packets in {seconds:.1f} s; RSS {rss_before / 2**20:.1f} MiB "
          f"before, +{grown / 2**20:.1f} MiB after; /metrics {len(text)} bytes")


def real_announce_works(port: int) -> None:
    a, b = UdpClient(port), UdpClient(port)
    try:
        h = b"\x77" * 20
        first = a.announce(a.connect(), h, pid(1), 7701, left=0)
        assert struct.unpack(">I", first[:4])[0] == 1, first
        second = b.announce(b.connect(), h, pid(2), 7702)
        assert struct.unpack(">I", second[:4])[0] == 1
        assert compact(second[20:]) == [("127.0.0.1", 7701)]
    finally:
        a.close()
        b.close()
