"""Benchmark: our tracker against Debian's opentracker on loopback, under aquatic's workload
(BITTORRENT.md section 2): many torrents with a heavy-headed (Zipf) popularity, 75 % seeders,
30 peers asked per announce, one scrape per 100 announces, UDP connection ids reused.

Run: .venv/bin/python ops/bench/tracker.py [--quick] [--seconds 8] [--runs 3] [--procs 3]
     [--no-memory | --memory-only] [--mem-torrents 100000] [--mem-peers 1000000]
Needs opentracker (Debian package opentracker), taskset and setpriv (util-linux), two cores, and
root: opentracker refuses to run as root, so it runs as the unprivileged user `--ot-user`
(default wsbench, made with `useradd --system` if it is missing). The Debian build
is whitelist-only: its whitelist holds the workload's info-hashes.

Each tracker runs single-process pinned to the first core; the load generators (`--procs`
Python processes) and this script to the second. Every measurement starts the tracker fresh and
fills it identically (every peer of every torrent announces once over UDP) before the timed load.
Protocols: UDP (BEP 15), HTTP with `Connection: close` for both, and HTTP keep-alive for ours
(opentracker closes every connection). Runs alternate ours and opentracker; the table shows
medians. With --profile (the default without --quick) ours runs once more per protocol under
cProfile, and the time is grouped by where it goes. Progress goes to stderr, the table to stdout.

Memory (issue 14; skip with --no-memory, or run alone with --memory-only): each tracker's RSS
(from /proc) started fresh, then with 1,000,000 peers in 100,000 swarms (10 each, every peer
announcing once over UDP); and, in this process with tracemalloc, what our table allocates
for a swarm with its first peer and for a peer in swarms of 10 and of 1000.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import pstats
import pwd
import random
import re
import selectors
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from array import array
from bisect import bisect
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path

# benchlib sits beside this script, whose folder Python puts on sys.path.
from benchlib import (  # noqa: E402
    BenchError,
    Server,
    await_port,
    bench_main,
    clean_env,
    find_tools,
    free_port,
    note,
    signal_and_wait,
    two_cores,
)

VENV_BIN = Path(sys.executable).parent
#: tool -> the Debian package that provides it
TOOLS = {"opentracker": "opentracker", "taskset": "util-linux", "setpriv": "util-linux"}
PROTOCOL_ID = 0x41727101980
NUMWANT = 30
SCRAPE_EVERY = 100  # announces per scrape
SCRAPE_HASHES = 10  # info-hashes in one scrape
SEEDER_SHARE = 0.75
ZIPF_S = 1.0
TIMEOUT = 2.0  # seconds without an answer: the request counts as an error
RECONNECT = 50.0  # seconds a UDP connection id is reused (ours accepts it for 60-120 s)
LEFT = 1 << 30



@dataclass(frozen=True)
class Plan:
    seconds: float
    runs: int
    procs: int
    window: int
    torrents: int
    peers: int
    profile: bool
    profile_seconds: float
    ot_user: str
    server_cpu: int
    load_cpu: int
    throughput: bool
    memory: bool
    mem_torrents: int
    mem_peers: int


# -- the workload ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """Torrent i has swarm of sizes[i] peers (Zipf over the torrents, at least 4); peer j of it
    announces from port 1024 + j with a peer id naming (i, j) and is a seeder unless j % 4 == 0.
    Announces pick a torrent with the same Zipf weights and a peer uniformly in its swarm."""

    hashes: list[bytes]
    sizes: list[int]
    cumulative: list[float]

    @classmethod
    def make(cls, torrents: int, peers: int) -> Workload:
        weights = [1 / (i + 1) ** ZIPF_S for i in range(torrents)]
        total = sum(weights)
        sizes = [max(4, min(60000, round(peers * w / total))) for w in weights]
        hashes = [hashlib.sha1(f"weightswarm-bench-{i}".encode()).digest()
                  for i in range(torrents)]
        return cls(hashes, sizes, list(accumulate(weights)))

    @classmethod
    def even(cls, torrents: int, peers: int) -> Workload:
        """`peers` spread evenly over `torrents` (the memory measurement's)."""
        sizes = [peers // torrents + (i < peers % torrents) for i in range(torrents)]
        hashes = [hashlib.sha1(f"weightswarm-bench-{i}".encode()).digest()
                  for i in range(torrents)]
        return cls(hashes, sizes, list(accumulate(sizes)))

    def pick(self, rng: random.Random) -> tuple[int, int]:
        i = min(bisect(self.cumulative, rng.random() * self.cumulative[-1]), len(self.sizes) - 1)
        return i, rng.randrange(self.sizes[i])

    @staticmethod
    def peer_id(i: int, j: int) -> bytes:
        return b"-WS0001-%06d%06d" % (i, j)

    @staticmethod
    def left(j: int) -> int:
        return LEFT if j % 4 == 0 else 0  # 75 % seeders


def udp_announce(w: Workload, conn: int, tid: int, i: int, j: int, event: int = 0) -> bytes:
    return struct.pack(">QII20s20sQQQIIIiH", conn, 1, tid, w.hashes[i], w.peer_id(i, j), 0,
                       w.left(j), 0, event, 0, j & 0xFFFFFFFF, NUMWANT, 1024 + j)


def udp_scrape(w: Workload, conn: int, tid: int, rng: random.Random) -> bytes:
    picked = {w.pick(rng)[0] for _ in range(SCRAPE_HASHES)}
    return struct.pack(">QII", conn, 2, tid) + b"".join(w.hashes[i] for i in picked)


def http_request(w: Workload, quoted: list[str], rng: random.Random, n: int,
                 keep_alive: bool) -> bytes:
    if n % SCRAPE_EVERY == SCRAPE_EVERY - 1:
        picked = {w.pick(rng)[0] for _ in range(SCRAPE_HASHES)}
        target = "/scrape?" + "&".join(f"info_hash={quoted[i]}" for i in picked)
    else:
        i, j = w.pick(rng)
        target = (f"/announce?info_hash={quoted[i]}&peer_id={w.peer_id(i, j).decode()}"
                  f"&port={1024 + j}&uploaded=0&downloaded=0&left={w.left(j)}"
                  f"&numwant={NUMWANT}&compact=1")
    connection = "keep-alive" if keep_alive else "close"
    return (f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: {connection}\r\n"
            f"User-Agent: ws-bench\r\n\r\n").encode()


# -- load generators (each its own process) -------------------------------------------------------


@dataclass
class Tally:
    responses: int = 0
    announces: int = 0
    peers: int = 0
    errors: int = 0
    latencies: array | None = None  # seconds, one per response
    first_error: str = ""

    def error(self, what: str) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = what


def udp_connect(sock: socket.socket, rng: random.Random) -> int:
    for _ in range(10):
        tid = rng.getrandbits(32)
        sock.send(struct.pack(">QII", PROTOCOL_ID, 0, tid))
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                data = sock.recv(2048)
            except TimeoutError:
                break
            if len(data) >= 16 and struct.unpack_from(">II", data) == (0, tid):
                return struct.unpack_from(">Q", data, 8)[0]
    raise BenchError("UDP connect got no answer")


def udp_load(w: Workload, port: int, seconds: float, window: int, seed: int) -> Tally:
    """A window of requests in flight on one socket; a connect about once a minute."""
    rng = random.Random(seed)
    tally = Tally(latencies=array("d"))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(TIMEOUT)
    conn = udp_connect(sock, rng)
    connected = time.monotonic()
    inflight: dict[int, tuple[float, bool]] = {}  # tid -> (sent, is announce)
    sent = 0

    def send() -> None:
        nonlocal sent, conn, connected
        if time.monotonic() - connected > RECONNECT:
            conn, connected = udp_connect(sock, rng), time.monotonic()
            inflight.clear()  # answers still owed under the old id are dropped, not counted
        tid = rng.getrandbits(32)
        if sent % SCRAPE_EVERY == SCRAPE_EVERY - 1:
            packet, announce = udp_scrape(w, conn, tid, rng), False
        else:
            packet, announce = udp_announce(w, conn, tid, *w.pick(rng)), True
        sent += 1
        inflight[tid] = (time.perf_counter(), announce)
        sock.send(packet)

    end = time.perf_counter() + seconds
    for _ in range(window):
        send()
    while (now := time.perf_counter()) < end:
        try:
            data = sock.recv(4096)
        except TimeoutError:
            data = b""
        except ConnectionRefusedError:
            tally.error("connection refused (tracker gone?)")
            time.sleep(0.01)
            data = b""
        now = time.perf_counter()
        if len(data) >= 8:
            action, tid = struct.unpack_from(">II", data)
            entry = inflight.pop(tid, None)
            if entry is not None:
                if action == 3:
                    tally.error("error packet: " + data[8:].decode(errors="replace"))
                elif action == 1 and entry[1] and len(data) >= 20:
                    tally.responses += 1
                    tally.announces += 1
                    tally.peers += (len(data) - 20) // 6
                    tally.latencies.append(now - entry[0])
                elif action == 2 and not entry[1]:
                    tally.responses += 1
                    tally.latencies.append(now - entry[0])
                else:
                    tally.error(f"unexpected answer action {action}")
        stale = [t for t, (at, _) in inflight.items() if now - at > TIMEOUT] \
            if not data or tally.responses % 64 == 0 else []
        for t in stale:
            del inflight[t]
            tally.error("timeout")
        while len(inflight) < window:
            send()
    sock.close()
    return tally


PEERS_RE = re.compile(rb"5:peers(\d+):")


def http_load(w: Workload, port: int, seconds: float, window: int, seed: int,
              keep_alive: bool) -> Tally:
    """`window` connections at once, each one request (`Connection: close`) or many
    (keep-alive); non-blocking sockets on a selector."""
    rng = random.Random(seed)
    tally = Tally(latencies=array("d"))
    quoted = ["".join(f"%{b:02x}" for b in h) for h in w.hashes]
    sel = selectors.DefaultSelector()
    state: dict[socket.socket, list] = {}  # sock -> [started, request, buffer, is announce]
    count = 0
    linger = struct.pack("ii", 1, 0)

    def open_one() -> None:
        s = socket.socket()
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Reset on close: no TIME_WAIT left behind to run out of ephemeral ports.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        s.connect_ex(("127.0.0.1", port))
        state[s] = [time.perf_counter(), None, bytearray(), False]
        sel.register(s, selectors.EVENT_WRITE)

    def send(s: socket.socket, st: list) -> None:
        nonlocal count
        request = http_request(w, quoted, rng, count, keep_alive)
        count += 1
        if keep_alive:
            st[0] = time.perf_counter()
        st[1], st[2], st[3] = request, bytearray(), request.startswith(b"GET /announce")
        try:
            s.send(request)
        except OSError as e:
            close(s, f"send: {e}")
            return
        sel.modify(s, selectors.EVENT_READ)

    def close(s: socket.socket, error: str | None) -> None:
        if error:
            tally.error(error)
        sel.unregister(s)
        del state[s]
        s.close()

    def finished(st: list) -> bool:
        """Whether the buffer holds a whole response (keep-alive: by Content-Length)."""
        head, sep, body = bytes(st[2]).partition(b"\r\n\r\n")
        if not sep:
            return False
        found = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
        return found is not None and len(body) >= int(found.group(1))

    def record(st: list, now: float) -> None:
        head, _, body = bytes(st[2]).partition(b"\r\n\r\n")
        if not head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
            tally.error("status " + head.split(b"\r\n", 1)[0].decode(errors="replace"))
        elif b"failure reason" in body:
            tally.error("failure reason: " + body[:120].decode(errors="replace"))
        else:
            tally.responses += 1
            tally.latencies.append(now - st[0])
            if st[3]:
                found = PEERS_RE.search(body)
                tally.announces += 1
                tally.peers += int(found.group(1)) // 6 if found else 0

    end = time.perf_counter() + seconds
    for _ in range(window):
        open_one()
    while time.perf_counter() < end:
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            st = state[s]
            if st[1] is None:  # connected (or failed to)
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    close(s, f"connect: {os.strerror(err)}")
                    open_one()
                else:
                    send(s, st)
                    if s not in state:
                        open_one()
                continue
            try:
                data = s.recv(65536)
            except (ConnectionResetError, BlockingIOError) as e:
                if isinstance(e, BlockingIOError):
                    continue
                data = None
            now = time.perf_counter()
            if data is None or (not data and not st[2]):
                close(s, "connection closed without an answer")
                open_one()
            elif not data:  # Connection: close, the answer is complete
                record(st, now)
                close(s, None)
                open_one()
            else:
                st[2] += data
                if keep_alive and finished(st):
                    record(st, now)
                    send(s, st)
                    if s not in state:
                        open_one()
        now = time.perf_counter()
        for s, st in list(state.items()):
            if now - st[0] > TIMEOUT:
                close(s, "timeout")
                open_one()
    for s in list(state):
        close(s, None)
    return tally


def generator(kind: str, w: Workload, port: int, seconds: float, window: int, seed: int,
              cpu: int, go, results) -> None:
    os.sched_setaffinity(0, {cpu})
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent cleans up
    go.wait()
    try:
        if kind == "udp":
            tally = udp_load(w, port, seconds, window, seed)
        else:
            tally = http_load(w, port, seconds, window, seed, keep_alive=kind == "keep-alive")
    except Exception as e:  # noqa: BLE001 -- reported by the parent as one line
        results.put(("error", f"{type(e).__name__}: {e}"))
        return
    results.put(("ok", (tally.responses, tally.announces, tally.peers, tally.errors,
                        tally.first_error, tally.latencies.tobytes())))


@dataclass(frozen=True)
class Result:
    rate: float
    errors: float  # share of requests
    peers: float  # per announce
    p50: float  # ms
    p99: float
    first_error: str


def load(kind: str, w: Workload, port: int, plan: Plan, seconds: float) -> Result:
    ctx = multiprocessing.get_context("fork")
    go, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=generator, args=(kind, w, port, seconds, plan.window,
                                                 1000 * n + int(time.time()), plan.load_cpu, go,
                                                 results), daemon=True)
             for n in range(plan.procs)]
    for p in procs:
        p.start()
    time.sleep(0.2)
    go.set()
    got = []
    try:
        for _ in procs:
            got.append(results.get(timeout=seconds + 60))
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
    failed = [r for status, r in got if status == "error"]
    if failed:
        raise BenchError(f"a {kind} load generator failed: {failed[0]}")
    responses = sum(r[0] for _, r in got)
    announces = sum(r[1] for _, r in got)
    peers = sum(r[2] for _, r in got)
    errors = sum(r[3] for _, r in got)
    first_error = next((r[4] for _, r in got if r[4]), "")
    latencies = array("d")
    for _, r in got:
        latencies.frombytes(r[5])
    ordered = sorted(latencies) or [0.0]
    return Result(responses / seconds, errors / max(1, responses + errors),
                  peers / max(1, announces), 1000 * ordered[len(ordered) // 2],
                  1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], first_error)


def populate(w: Workload, port: int) -> None:
    """Every peer of every torrent announces once (event started), so announces find peers."""
    rng = random.Random(1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(0.5)
    conn, connected = udp_connect(sock, rng), time.monotonic()
    todo = [(i, j) for i, size in enumerate(w.sizes) for j in range(size)]
    for _ in range(5):  # resend what got no answer
        pending: dict[int, tuple[int, int]] = {}
        for start in range(0, len(todo), 64):
            if time.monotonic() - connected > RECONNECT:  # a big fill outlives an id
                conn, connected = udp_connect(sock, rng), time.monotonic()
            for i, j in todo[start:start + 64]:
                tid = rng.getrandbits(32)
                pending[tid] = (i, j)
                sock.send(udp_announce(w, conn, tid, i, j, event=2))
            while True:
                try:
                    data = sock.recv(4096)
                except TimeoutError:
                    break
                if len(data) >= 8:
                    action, tid = struct.unpack_from(">II", data)
                    if action == 3:
                        raise BenchError(f"filling the tracker: {data[8:].decode(errors='replace')}")
                    pending.pop(tid, None)
                if not pending:
                    break
        todo = list(pending.values())
        if not todo:
            sock.close()
            return
    sock.close()
    raise BenchError(f"filling the tracker: {len(todo)} announces got no answer")


# -- the trackers ---------------------------------------------------------------------------------


#: our tracker with cProfile switched on by SIGUSR1 and off (and written to argv[1]) by SIGUSR2,
#: so that start-up and filling are left out; CPU time of the one thread (`thread_time`).
PROFILED_TRACKER = """
import cProfile, signal, sys, time
from mirror.cli import main

out = sys.argv[1]
sys.argv = ["weightswarm", *sys.argv[2:]]
profile = cProfile.Profile(time.thread_time)

def start(*_):
    profile.enable()
    print("profiling on", file=sys.stderr, flush=True)

def stop(*_):
    profile.disable()
    profile.dump_stats(out)
    print("profile written", file=sys.stderr, flush=True)

signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, stop)
main()
"""


def start_ours(work: Path, cpu: int, profile_to: Path | None = None) -> Server:
    home = Path(tempfile.mkdtemp(prefix="home-", dir=work))
    log = home / "tracker.log"
    args = ["--home", home, "tracker", "serve", "--host", "127.0.0.1", "--port", "0"]
    if profile_to is None:
        cmd = [VENV_BIN / "weightswarm", *args]
    else:
        cmd = [sys.executable, "-c", PROFILED_TRACKER, profile_to, *args]
    with open(log, "wb") as err:
        # Its own session: a Ctrl-C reaches only us, and we stop the trackers ourselves.
        process = subprocess.Popen(["taskset", "-c", str(cpu), *map(str, cmd)],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=err, env=clean_env(), start_new_session=True)
    server = Server("weightswarm", process, 0, log, signal.SIGINT)
    return await_port(server, rb"udp://127\.0\.0\.1:(\d+)", "our tracker", 60)


def start_opentracker(work: Path, cpu: int, w: Workload, user: str) -> Server:
    """opentracker in the foreground on 127.0.0.1, TCP and UDP on one port, its whitelist the
    workload's hashes, as `user` (it refuses root)."""
    root = Path(tempfile.mkdtemp(prefix="opentracker-", dir=work))
    root.chmod(0o755)
    whitelist = root / "whitelist.txt"
    whitelist.write_text("".join(h.hex() + "\n" for h in w.hashes))
    port = free_port()
    conf = root / "opentracker.conf"
    conf.write_text(f"listen.tcp_udp 127.0.0.1:{port}\naccess.whitelist {whitelist}\n")
    for f in (whitelist, conf):
        f.chmod(0o644)
    log = root / "opentracker.log"
    cmd = ["taskset", "-c", str(cpu)]
    if os.geteuid() == 0:
        cmd += ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"]
    cmd += ["opentracker", "-f", str(conf)]
    with open(log, "wb") as err:
        process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                   start_new_session=True, cwd=root)
    server = Server("opentracker", process, port, log, signal.SIGINT)
    # It prints nothing when ready: ready is when it answers a UDP connect.
    deadline = time.monotonic() + 20
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("127.0.0.1", port))
        s.settimeout(0.2)
        while time.monotonic() < deadline and process.poll() is None:
            try:
                s.send(struct.pack(">QII", PROTOCOL_ID, 0, 7))
                if len(s.recv(64)) == 16:
                    return server
            except (TimeoutError, ConnectionRefusedError):
                time.sleep(0.05)
    server.stop()
    raise BenchError(f"opentracker did not start: {log.read_text()[-800:]}")


# -- profile --------------------------------------------------------------------------------------

#: (substring of a profiled function's file or name, group), first match wins
GROUPS = [
    ("tracker/swarm.py", "swarm table + peer selection (swarm.py, selection.py)"),
    ("tracker/selection.py", "swarm table + peer selection (swarm.py, selection.py)"),
    # random.py and _random's methods, and what randrange calls
    ("random", "swarm table + peer selection (swarm.py, selection.py)"),
    ("bit_length", "swarm table + peer selection (swarm.py, selection.py)"),
    ("tracker/wire.py", "wire parse/render (wire.py, urllib, struct, ipaddress)"),
    ("urllib/parse", "wire parse/render (wire.py, urllib, struct, ipaddress)"),
    ("ipaddress.py", "wire parse/render (wire.py, urllib, struct, ipaddress)"),
    ("bencode", "wire parse/render (wire.py, urllib, struct, ipaddress)"),
    ("struct", "wire parse/render (wire.py, urllib, struct, ipaddress)"),
    ("blake2", "UDP connection ids (keyed blake2b)"),
    ("prometheus_client", "prometheus counters"),
    ("tracker/app.py", "handlers (app.py)"),
    ("tracker/config.py", "handlers (app.py)"),
    ("aiohttp", "aiohttp (HTTP parsing, request/response objects)"),
    ("multidict", "aiohttp (HTTP parsing, request/response objects)"),
    ("yarl", "aiohttp (HTTP parsing, request/response objects)"),
    ("logging", "logging"),
    ("asyncio", "event loop + socket syscalls"),
    ("selectors", "event loop + socket syscalls"),
    ("socket", "event loop + socket syscalls"),
    ("sendto", "event loop + socket syscalls"),
    ("recv", "event loop + socket syscalls"),
    ("send", "event loop + socket syscalls"),
    ("poll", "event loop + socket syscalls"),
    ("dataclasses", "other"),
]


def group_of(func: tuple) -> str:
    filename, _, name = func
    text = f"{filename} {name}"
    for needle, group in GROUPS:
        if needle in text:
            return group
    return "other"


def profile_summary(path: Path, title: str, top: int = 10) -> list[str]:
    stats = pstats.Stats(str(path))
    total = stats.total_tt or 1e-9
    groups: dict[str, float] = {}
    for func, (_, _, tt, _, _) in stats.stats.items():
        groups[group_of(func)] = groups.get(group_of(func), 0.0) + tt
    lines = ["", f"where ours spends its CPU, {title} (cProfile, self time, "
             f"{total:.1f} s of CPU profiled):", "", "| group | share |", "|---|---:|"]
    for group, tt in sorted(groups.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {group} | {100 * tt / total:.0f} % |")
    lines += ["", f"top {top} functions by self time:", "",
              "| function | calls | self s | share |", "|---|---:|---:|---:|"]
    ranked = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:top]
    for (filename, line, name), (_, nc, tt, _, _) in ranked:
        where = "/".join(Path(filename).parts[-2:]) if filename != "~" else ""
        label = f"{where}:{line} {name}" if where else name
        lines.append(f"| `{label}` | {nc} | {tt:.2f} | {100 * tt / total:.0f} % |")
    return lines


# -- the benchmark --------------------------------------------------------------------------------

KINDS = [("udp", "UDP (BEP 15)"), ("close", "HTTP, Connection: close"),
         ("keep-alive", "HTTP, keep-alive")]


def measure(name: str, kind: str, w: Workload, plan: Plan, work: Path,
            servers: list[Server]) -> Result:
    if name == "opentracker":
        server = start_opentracker(work, plan.server_cpu, w, plan.ot_user)
    else:
        server = start_ours(work, plan.server_cpu)
    servers.append(server)
    try:
        populate(w, server.port)
        result = load(kind, w, server.port, plan, plan.seconds)
    finally:
        server.stop()
        servers.remove(server)
    note(f"  {kind:<10} {name:<12} {result.rate:8.0f} responses/s, "
         f"errors {100 * result.errors:.2f} %, {result.peers:.1f} peers/announce, "
         f"p50 {result.p50:.2f} ms, p99 {result.p99:.2f} ms"
         + (f" (first error: {result.first_error[:100]})" if result.first_error else ""))
    return result


def bench(plan: Plan, work: Path) -> None:
    if plan.throughput:
        throughput(plan, work)
    if plan.memory:
        memory(plan, work)


def throughput(plan: Plan, work: Path) -> None:
    w = Workload.make(plan.torrents, plan.peers)
    note(f"workload: {plan.torrents} torrents, {sum(w.sizes)} peers (largest swarm "
         f"{w.sizes[0]}), 75 % seeders, numwant {NUMWANT}, 1 scrape ({SCRAPE_HASHES} hashes) "
         f"per {SCRAPE_EVERY} announces; {plan.procs} generator processes x {plan.window} "
         f"in flight, {plan.seconds:g} s each")
    servers: list[Server] = []
    samples: dict[tuple[str, str], list[Result]] = {}
    try:
        for run in range(plan.runs):
            note(f"run {run + 1}/{plan.runs}")
            for kind, _ in KINDS:
                names = ["weightswarm", "opentracker"] if kind != "keep-alive" else ["weightswarm"]
                if run % 2:
                    names.reverse()
                for name in names:
                    samples.setdefault((kind, name), []).append(
                        measure(name, kind, w, plan, work, servers))
        profiles = []
        if plan.profile:
            for kind, title in KINDS[:2]:
                note(f"profiling ours, {title}, {plan.profile_seconds:g} s")
                out = work / f"profile-{kind}"
                server = start_ours(work, plan.server_cpu, profile_to=out)
                servers.append(server)
                try:
                    populate(w, server.port)
                    signal_and_wait(server.process, server.log, signal.SIGUSR1, b"profiling on", "tracker")
                    load(kind, w, server.port, plan, plan.profile_seconds)
                    signal_and_wait(server.process, server.log, signal.SIGUSR2, b"profile written", "tracker")
                finally:
                    server.stop()
                    servers.remove(server)
                profiles += profile_summary(out, title)
    finally:
        for server in servers:
            server.stop()

    user = pwd.getpwuid(os.geteuid()).pw_name
    ot_as = plan.ot_user if os.geteuid() == 0 else user
    print(f"tracker benchmark: {plan.torrents} torrents, {sum(w.sizes)} peers (Zipf s={ZIPF_S:g}, "
          f"largest swarm {w.sizes[0]}), 75 % seeders, numwant {NUMWANT}, {SCRAPE_EVERY} "
          f"announces per scrape of {SCRAPE_HASHES}; each tracker one process on CPU "
          f"{plan.server_cpu}, {plan.procs} Python load generators x {plan.window} in flight on "
          f"CPU {plan.load_cpu}; {plan.seconds:g} s per measurement, median of {plan.runs}; "
          f"opentracker {ot_version()} as user {ot_as}, whitelist = the workload's hashes")
    print()
    print("| protocol | tracker | responses/s | errors | peers/announce | p50 ms | p99 ms "
          "| vs opentracker |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for kind, title in KINDS:
        ref_kind = "close" if kind == "keep-alive" else kind
        reference = statistics.median(r.rate for r in samples[(ref_kind, "opentracker")])
        for name in ("weightswarm", "opentracker"):
            rs = samples.get((kind, name))
            if not rs:
                continue
            rate = statistics.median(r.rate for r in rs)
            ratio = f"{rate / reference:.2f}x" + (" (vs its Connection: close)" if kind == "keep-alive" else "")
            print(f"| {title} | {name} | {rate:,.0f} | "
                  f"{100 * statistics.median(r.errors for r in rs):.2f} % | "
                  f"{statistics.median(r.peers for r in rs):.1f} | "
                  f"{statistics.median(r.p50 for r in rs):.2f} | "
                  f"{statistics.median(r.p99 for r in rs):.2f} | {ratio} |")
    for line in profiles:
        print(line)
    low = [(k, n) for (k, n), rs in samples.items() if statistics.median(r.peers for r in rs) <= 0]
    if low:
        raise BenchError(f"announces returned no peers for {low}: the workload is broken")


# -- memory -----------------------------------------------------------------------------------


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for process {pid}")


@dataclass(frozen=True)
class Held:
    idle: int  # RSS started, bytes
    full: int  # RSS with the workload's peers
    fill_rate: float  # announces/s while filling


def fill(name: str, w: Workload, plan: Plan, work: Path) -> Held:
    if name == "opentracker":
        server = start_opentracker(work, plan.server_cpu, w, plan.ot_user)
    else:
        server = start_ours(work, plan.server_cpu)
    try:
        idle = rss(server.process.pid)
        started = time.perf_counter()
        populate(w, server.port)
        rate = sum(w.sizes) / (time.perf_counter() - started)
        held = Held(idle, rss(server.process.pid), rate)
    finally:
        server.stop()
    note(f"  {name:<12} RSS {held.idle / 2**20:.1f} MiB started, {held.full / 2**20:.1f} MiB "
         f"with {sum(w.sizes)} peers; filled at {rate:,.0f} announces/s")
    return held


#: what our table allocates per announce of a new peer (tracemalloc), in a fresh process (this
#: script's folder would shadow the tracker package): argv swarms, peers each, seeder share
TABLE_COST = """
import gc, hashlib, sys, time, tracemalloc
from tracker.app import Tracker
from tracker.config import TrackerConfig
from tracker.wire import Announce

swarms, each = int(sys.argv[1]), int(sys.argv[2])
tracker = Tracker(TrackerConfig(max_swarms=swarms + 1, max_peers=swarms * each + 1))
announces = [Announce(hashlib.sha1(b"%d" % i).digest(), b"-WS0001-%012d" % j, 1024 + j, 0, 0,
                      0 if j % 4 else 1 << 30, "started", 30, True, True,
                      f"10.{j >> 16 & 255}.{j >> 8 & 255}.{j & 255}", None)
             for i in range(swarms) for j in range(each)]
gc.collect()
tracemalloc.start()
before = tracemalloc.get_traced_memory()[0]
for a in announces:
    tracker.announce(a, time.time())
gc.collect()
print((tracemalloc.get_traced_memory()[0] - before) / len(announces))
"""


def table_cost(swarms: int, peers_each: int, work: Path) -> float:
    done = subprocess.run([sys.executable, "-c", TABLE_COST, str(swarms), str(peers_each)],
                          capture_output=True, text=True, cwd=work, env=clean_env())
    if done.returncode:
        raise BenchError(f"measuring the table failed: {done.stderr[-500:]}")
    return float(done.stdout)


def memory(plan: Plan, work: Path) -> None:
    w = Workload.even(plan.mem_torrents, plan.mem_peers)
    note(f"memory: {sum(w.sizes)} peers in {len(w.sizes)} swarms, each announcing once")
    held = {name: fill(name, w, plan, work) for name in ("weightswarm", "opentracker")}
    reference = held["opentracker"]
    print()
    print(f"tracker memory: RSS (/proc) started, then with {sum(w.sizes):,} peers in "
          f"{len(w.sizes):,} swarms ({w.sizes[0]} each, every peer announcing once over UDP, "
          f"75 % seeders); each tracker one process on CPU {plan.server_cpu}")
    print()
    print("| tracker | RSS started | RSS with the peers | added per peer | fill, announces/s "
          "| RSS vs opentracker | added vs opentracker |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, h in held.items():
        print(f"| {name} | {h.idle / 2**20:.1f} MiB | {h.full / 2**20:.1f} MiB | "
              f"{(h.full - h.idle) / sum(w.sizes):.0f} B | {h.fill_rate:,.0f} | "
              f"{h.full / reference.full:.2f}x | "
              f"{(h.full - h.idle) / max(1, reference.full - reference.idle):.2f}x |")
    note("our table's cost in this process (tracemalloc)")
    shapes = [("a swarm with its first peer", 20_000, 1), ("a peer, in swarms of 10", 2_000, 10),
              ("a peer, in swarms of 1000", 20, 1000)]
    print()
    print("what our swarm table allocates (tracemalloc, Tracker.announce of new peers):")
    print()
    print("| for | bytes |")
    print("|---|---:|")
    for title, swarms, each in shapes:
        print(f"| {title} | {table_cost(swarms, each, work):.0f} |")


def ot_version() -> str:
    done = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "opentracker"],
                          capture_output=True, text=True)
    return done.stdout.strip() or "(version unknown)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a fast check: 3 s per measurement, 1 run, no profile")
    parser.add_argument("--seconds", type=float, help="load per measurement [8; quick: 3]")
    parser.add_argument("--runs", type=int, help="alternating runs per tracker [3; quick: 1]")
    parser.add_argument("--procs", type=int, default=3, help="load generator processes [3]")
    parser.add_argument("--window", type=int, default=16,
                        help="requests (UDP) or connections (HTTP) in flight per generator [16]")
    parser.add_argument("--torrents", type=int, default=1000, help="torrents [1000]")
    parser.add_argument("--peers", type=int, default=20000,
                        help="peers over all torrents, shared by Zipf popularity [20000]")
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile breakdown")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the memory measurement")
    parser.add_argument("--memory-only", action="store_true",
                        help="only the memory measurement")
    parser.add_argument("--mem-torrents", type=int, default=100_000,
                        help="swarms of the memory measurement [100000]")
    parser.add_argument("--mem-peers", type=int, default=1_000_000,
                        help="peers of the memory measurement, spread evenly [1000000]")
    parser.add_argument("--ot-user", default="wsbench",
                        help="the user opentracker runs as (it refuses root) [wsbench]")
    args = parser.parse_args()
    with bench_main():
        find_tools(TOOLS)
        cpus = two_cores("trackers")
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(args.ot_user)
            except KeyError:  # a fresh machine: the bench makes its user (it runs as root)
                note(f"creating the system user {args.ot_user} for opentracker")
                made = subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                                       "/usr/sbin/nologin", args.ot_user],
                                      capture_output=True, text=True)
                if made.returncode:
                    raise BenchError(f"opentracker refuses to run as root and user "
                                     f"{args.ot_user} could not be made: "
                                     f"{made.stderr.strip()}") from None
        plan = Plan(
            seconds=args.seconds or (3 if args.quick else 8),
            runs=max(1, args.runs or (1 if args.quick else 3)),
            procs=max(2, args.procs),
            window=max(1, args.window),
            torrents=max(1, args.torrents),
            peers=max(args.torrents * 4, args.peers),
            profile=not (args.quick or args.no_profile),
            profile_seconds=4,
            ot_user=args.ot_user,
            server_cpu=cpus[0],
            load_cpu=cpus[1],
            throughput=not args.memory_only,
            memory=not args.no_memory,
            mem_torrents=max(1, args.mem_torrents),
            mem_peers=max(1, args.mem_peers),
        )
        # This script waits and aggregates, its children load: keep all off the trackers' core.
        os.sched_setaffinity(0, {cpus[1]})
        with tempfile.TemporaryDirectory(prefix="ws-bench-tracker-") as work:
            Path(work).chmod(0o755)  # opentracker, another user, reads its files in here
            bench(plan, Path(work))


if __name__ == "__main__":
    main()
