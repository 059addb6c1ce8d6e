"""Benchmark: the mirror serving a repo over the Hugging Face API, against Debian's nginx serving
the same blob files and the same repo-info JSON as static files, and the import of a large file
against `openssl dgst -sha256` of it.

Run: .venv/bin/python ops/bench/serve.py [--quick] [--size-mib 1024] [--runs 3]
Needs nginx (Debian package nginx), wrk (wrk), ab (apache2-utils), taskset (util-linux), openssl
(openssl), and two cores: both servers run single-process pinned to the first, every load
generator and this script to the second. Each measurement alternates weightswarm and nginx
`--runs` times in one run; the table shows medians (page cache warm: this measures the servers,
not the disk). Both servers keep their access log on, each writing to a file, as users run them.
Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import pstats
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# benchlib sits beside this script, whose folder Python puts on sys.path.
from benchlib import (  # noqa: E402
    BenchError,
    Server,
    await_port,
    await_ready,
    bench_main,
    clean_env,
    find_tools,
    free_port,
    go_and_collect,
    note,
    signal_and_wait,
    two_cores,
)

from mirror.config import load_config  # noqa: E402
from peer.store import BlobStore  # noqa: E402

VENV_BIN = Path(sys.executable).parent
REPO = "bench/model"
#: the same files as a private repo, read with a token (issue 20's rows)
PRIVATE = "bench/private"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
RANGE_CLIENTS = 16
CONNECTIONS = 64
#: tool -> the Debian package that provides it
TOOLS = {"nginx": "nginx", "wrk": "wrk", "ab": "apache2-utils", "taskset": "util-linux",
         "openssl": "openssl"}
#: headers the HF client reads from a resolve answer (PROTOCOLS.md section 1.7)
HF_HEADERS = ("ETag", "X-Repo-Commit", "Content-Length", "Accept-Ranges")



@dataclass(frozen=True)
class Plan:
    size_mib: int
    runs: int
    wrk_seconds: int
    ab_requests: int
    ab_seconds: int
    profile: bool
    server_cpu: str
    load_cpu: str


def run(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(map(str, cmd[:4]))}... exited {done.returncode}: "
                         f"{(done.stderr or done.stdout).strip()[-600:]}")
    return done


def pinned(cpu: str, cmd: list) -> list[str]:
    return ["taskset", "-c", cpu, *map(str, cmd)]


# -- the model folder ----------------------------------------------------------------------------


def make_model(root: Path, size_mib: int) -> Path:
    """A card, a config and a valid safetensors file of `size_mib` MiB of random U8 data."""
    root.mkdir(parents=True)
    (root / "README.md").write_text("---\nlicense: mit\nlibrary_name: transformers\ntags:\n"
                                    "- benchmark\n---\n# Benchmark model\n\nRandom bytes.\n")
    (root / CONFIG).write_text(json.dumps({"model_type": "bert", "hidden_size": 768}) + "\n")
    n = size_mib << 20
    header = json.dumps({"w": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(root / WEIGHTS, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        for _ in range(size_mib // 16):
            f.write(os.urandom(16 << 20))
        f.write(os.urandom(n % (16 << 20)))
        # Written back now, not in the middle of a measurement.
        f.flush()
        os.fsync(f.fileno())
    return root / WEIGHTS


# -- import against openssl ---------------------------------------------------------------------


def import_seconds(model: Path, home: Path, cpus: str) -> float:
    """The whole `weightswarm mirror import` command, into a mirror home that exists already
    (its catalog created, as on any running mirror), start-up of the command included."""
    ws = [VENV_BIN / "weightswarm", "--home", home]
    run(pinned(cpus, [*ws, "mirror", "ls"]), timeout=120, env=clean_env())
    cmd = pinned(cpus, [*ws, "mirror", "import", model, "--repo", REPO, "--no-progress"])
    start = time.perf_counter()
    run(cmd, timeout=600, env=clean_env())
    return time.perf_counter() - start


INGEST = """
import sys, time
from peer.store import BlobStore
store = BlobStore(sys.argv[2])
start = time.perf_counter()
store.ingest_file(sys.argv[1], lfs=True)
print(time.perf_counter() - start)
"""


def ingest_seconds(weights: Path, store: Path, cpus: str) -> float:
    """The store's ingest of the large file alone (every hash, O_DIRECT write, fsync, rename),
    timed inside the process: the steady rate a large import runs at, without start-up."""
    done = run(pinned(cpus, [sys.executable, "-c", INGEST, weights, store]), timeout=600,
               env=clean_env())
    shutil.rmtree(store)
    return float(done.stdout.strip().splitlines()[-1])


def openssl_seconds(weights: Path, cpus: str) -> float:
    start = time.perf_counter()
    run(pinned(cpus, ["openssl", "dgst", "-sha256", weights]), timeout=600)
    return time.perf_counter() - start


def copy_seconds(weights: Path, dest: Path, cpus: str, direct: bool) -> float:
    """A durable copy of the file with dd: through the page cache with one fsync at the end
    (as the import writes), or `direct` (O_DIRECT: what the disk itself takes)."""
    start = time.perf_counter()
    run(pinned(cpus, ["dd", f"if={weights}", f"of={dest}", "bs=16M", "conv=fsync",
                      *(["oflag=direct"] if direct else [])]), timeout=600)
    seconds = time.perf_counter() - start
    dest.unlink()
    return seconds


def bench_import(plan: Plan, model: Path, weights: Path, work: Path) -> tuple[dict, Path]:
    """Warm each once, then alternate import, openssl and two durable copies (MB/s samples by
    name); every import goes into a fresh home. The last home is kept: the mirror serves it."""
    cpus = f"{plan.server_cpu},{plan.load_cpu}"
    total = sum(p.stat().st_size for p in model.iterdir())
    size = weights.stat().st_size
    warm = work / "home-warm"
    import_seconds(model, warm, cpus)
    shutil.rmtree(warm)
    openssl_seconds(weights, cpus)
    copy_seconds(weights, work / "copy", cpus, direct=False)
    copy_seconds(weights, work / "copy", cpus, direct=True)
    samples: dict[str, list[float]] = {"import": [], "ingest": [], "openssl": [], "dd": [],
                                       "dd direct": []}
    home = work / "home"
    for i in range(plan.runs):
        home = work / f"home-{i}"
        samples["import"].append(total / import_seconds(model, home, cpus) / 1e6)
        samples["ingest"].append(size / ingest_seconds(weights, work / "ingest", cpus) / 1e6)
        samples["openssl"].append(size / openssl_seconds(weights, cpus) / 1e6)
        samples["dd"].append(size / copy_seconds(weights, work / "copy", cpus, False) / 1e6)
        samples["dd direct"].append(
            size / copy_seconds(weights, work / "copy", cpus, True) / 1e6)
        note(f"  run {i + 1}: " + ", ".join(f"{k} {v[-1]:.0f} MB/s" for k, v in samples.items()))
        if i < plan.runs - 1:
            shutil.rmtree(home)
    return samples, home


def add_private(home: Path, model: Path) -> str:
    """The same files again as a private repo (PRIVATE), an access file whose one token may
    read it (returned), and the mirror set to read that file: what the token rows measure."""
    from mirror.accounts import add_token

    ws = [VENV_BIN / "weightswarm", "--home", home]
    run([*ws, "mirror", "import", model, "--repo", PRIVATE, "--access", "private",
         "--no-progress"], timeout=600, env=clean_env())
    (home / "weightswarm.toml").write_text('[mirror]\naccess_file = "access.toml"\n')
    return add_token(home / "access.toml", "bench", read=["bench/*"], admin=[], expires=None)


def with_token(plan: Plan, mirror: Server, token: str, commit: str,
               private_commit: str, work: Path) -> tuple[dict, dict]:
    """Repo info and HEAD of the private repo with the token on every request, against the
    public one without (alternating; the samples keyed as `Row` pairs them)."""
    gets: dict[str, list] = {"weightswarm": [], "nginx": []}
    heads: dict[str, list] = {"weightswarm": [], "nginx": []}
    for i in range(plan.runs):
        gets["nginx"].append(wrk_get(plan, mirror, f"/api/models/{REPO}"))
        gets["weightswarm"].append(wrk_get(plan, mirror, f"/api/models/{PRIVATE}", token))
        heads["nginx"].append(ab_head(plan, mirror, f"/{REPO}/resolve/{commit}/{CONFIG}",
                                      work / "ab.csv"))
        heads["weightswarm"].append(ab_head(
            plan, mirror, f"/{PRIVATE}/resolve/{private_commit}/{CONFIG}", work / "ab.csv",
            token))
        note(f"    run {i + 1}: GET {gets['weightswarm'][-1]} with a token, "
             f"{gets['nginx'][-1]} without; HEAD {heads['weightswarm'][-1]} with, "
             f"{heads['nginx'][-1]} without")
    return gets, heads


def page_rates(plan: Plan, mirror: Server) -> dict[str, dict]:
    """The repo page and a search page (a browser's Accept), against the repo-info JSON of
    the same repo, alternating; each keyed as `Row` pairs them."""
    paths = {"repo": f"/{REPO}", "search": "/models?search=bench"}
    out = {kind: {"weightswarm": [], "nginx": []} for kind in paths}
    for i in range(plan.runs):
        for kind, path in paths.items():
            out[kind]["nginx"].append(wrk_get(plan, mirror, f"/api/models/{REPO}"))
            out[kind]["weightswarm"].append(wrk_get(plan, mirror, path, extra=BROWSER))
            note(f"    run {i + 1}: {kind} page {out[kind]['weightswarm'][-1]}, repo info "
                 f"{out[kind]['nginx'][-1]}")
    return out


# -- the servers ---------------------------------------------------------------------------------


def start_mirror(home: Path, cpu: str, log: Path, profile_to: Path | None = None) -> Server:
    """The mirror alone (`mirror serve`: `serve` would start a tracker too, and log its port
    first) as users run it, or (`profile_to`) under PROFILED_MIRROR."""
    args = ["--home", home, "mirror", "serve", "--host", "127.0.0.1", "--port", "0"]
    if profile_to is None:
        cmd = [VENV_BIN / "weightswarm", *args]
    else:
        cmd = [sys.executable, "-c", PROFILED_MIRROR, profile_to, *args]
    with open(log, "wb") as err:
        # Its own session: a Ctrl-C reaches only us, and we stop the servers in order.
        process = subprocess.Popen(pinned(cpu, cmd), stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=err, env=clean_env(),
                                   start_new_session=True)
    server = Server("weightswarm", process, 0, log)
    return await_port(server, rb"mirror listening on http://127\.0\.0\.1:(\d+)", "the mirror", 60)


#: The mirror with cProfile switched on by SIGUSR1 and off by SIGUSR2 (so startup is left out),
#: timing CPU per thread (`thread_time`: waiting in epoll or for the GIL is not counted): one
#: profile for the event-loop thread, one for the work items run in worker threads (the catalog
#: lookups, file opens). Written to argv[1] + ".loop" and ".workers".
PROFILED_MIRROR = """
import cProfile, pstats, signal, sys, threading, time
import concurrent.futures.thread as pool
from mirror.cli import main

out = sys.argv[1]
sys.argv = ["weightswarm", *sys.argv[2:]]
loop_profile = cProfile.Profile(time.thread_time)
worker_profiles = []
local = threading.local()
state = {"on": False}
run_item = pool._WorkItem.run

def profiled_run(self):
    if not state["on"]:
        return run_item(self)
    profile = getattr(local, "profile", None)
    if profile is None:
        profile = local.profile = cProfile.Profile(time.thread_time)
        worker_profiles.append(profile)
    profile.enable()
    try:
        return run_item(self)
    finally:
        profile.disable()

def start(*_):
    state["on"] = True
    loop_profile.enable()
    print("profiling on", file=sys.stderr, flush=True)

def stop(*_):
    loop_profile.disable()
    state["on"] = False
    loop_profile.dump_stats(out + ".loop")
    if worker_profiles:
        pstats.Stats(*worker_profiles).dump_stats(out + ".workers")
    print("profile written", file=sys.stderr, flush=True)

pool._WorkItem.run = profiled_run
signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, stop)
main()
"""


def nginx_conf(root: Path, port: int, commit: str, files: dict[str, tuple[Path, str, str]],
               repo_info: Path) -> str:
    """One process, everything under `root`, each measured URL an exact location with the
    headers the mirror sends (the ETag is the content hash, not nginx's own)."""
    locations = []
    for name, (path, etag, content_type) in files.items():
        locations.append(f"""
        location = /{REPO}/resolve/{commit}/{name} {{
            alias {path};
            types {{ }}
            default_type {content_type};
            etag off;
            add_header ETag '"{etag}"' always;
            add_header X-Repo-Commit {commit} always;
            add_header Content-Disposition "inline; filename*=UTF-8''{name}" always;
            add_header Cache-Control "public, max-age=31536000, immutable" always;
        }}""")
    temp = "\n".join(f"    {kind}_temp_path {root}/{kind}_temp;"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""
daemon off;
master_process off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
{temp}
    access_log {root}/access.log;
    sendfile on;
    tcp_nopush on;
    # aiohttp never closes a keep-alive connection after N requests: neither does nginx here.
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        location = /api/models/{REPO} {{
            alias {repo_info};
            types {{ }}
            default_type application/json;
            etag off;
        }}
{"".join(locations)}
    }}
}}
"""


def start_nginx(root: Path, cpu: str, conf: str, port: int) -> Server:
    root.mkdir(parents=True, exist_ok=True)
    (root / "nginx.conf").write_text(conf)
    cmd = ["nginx", "-p", root, "-c", root / "nginx.conf", "-e", root / "error.log"]
    with open(root / "stderr.log", "wb") as err:
        process = subprocess.Popen(pinned(cpu, cmd), stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=err,
                                   start_new_session=True)
    server = Server("nginx", process, port, root / "access.log")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server
        except OSError:
            time.sleep(0.05)
    server.stop()
    errors = (root / "stderr.log").read_text() + (root / "error.log").read_text()
    raise BenchError(f"nginx did not start: {errors.strip()[-800:]}")


def request(url: str, method: str, path: str, headers: dict | None = None,
            sink=None) -> tuple[int, dict, bytes]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        if sink is None:
            body = response.read()
        else:
            body = b""
            while chunk := response.read(1 << 20):
                sink(chunk)
        return response.status, dict(response.getheaders()), body
    finally:
        conn.close()


def check_same(mirror: Server, nginx: Server, commit: str, size: int) -> None:
    """Both servers answer the measured URLs with the same bytes and the headers HF needs."""
    for name in (CONFIG, WEIGHTS):
        path = f"/{REPO}/resolve/{commit}/{name}"
        heads = [request(s.url, "HEAD", path) for s in (mirror, nginx)]
        for header in HF_HEADERS:
            values = [h[1].get(header) for h in heads]
            if values[0] is None or values[0] != values[1] or {heads[0][0], heads[1][0]} != {200}:
                raise BenchError(f"HEAD {path}: {header} differs: mirror {values[0]!r}, "
                                 f"nginx {values[1]!r} (status {heads[0][0]}, {heads[1][0]})")
    path = f"/{REPO}/resolve/{commit}/{WEIGHTS}"
    part = f"bytes={size // 3}-{size // 3 + 99_999}"
    partial = [request(s.url, "GET", path, {"Range": part}) for s in (mirror, nginx)]
    if {partial[0][0], partial[1][0]} != {206} or partial[0][2] != partial[1][2]:
        raise BenchError(f"GET {path} with Range {part}: the two answers differ")
    bodies = [request(s.url, "GET", f"/api/models/{REPO}")[2] for s in (mirror, nginx)]
    if bodies[0] != bodies[1]:
        raise BenchError(f"GET /api/models/{REPO}: the two bodies differ")
    etag = request(mirror.url, "HEAD", f"/{REPO}/resolve/{commit}/{WEIGHTS}")[1]["ETag"]
    for server in (mirror, nginx):
        digest = hashlib.sha256()
        request(server.url, "GET", f"/{REPO}/resolve/{commit}/{WEIGHTS}", sink=digest.update)
        if f'"{digest.hexdigest()}"' != etag:
            raise BenchError(f"{server.name} sent {WEIGHTS} bytes that do not hash to {etag}")


# -- load generators -----------------------------------------------------------------------------

DOWNLOAD = """
import json, os, sys, time
from huggingface_hub import hf_hub_download
endpoint, repo, filename, commit = sys.argv[1:5]
start, cpu = time.perf_counter(), time.process_time()
path = hf_hub_download(repo, filename, revision=commit, endpoint=endpoint)
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
print(json.dumps({"seconds": seconds, "cpu": cpu, "bytes": os.path.getsize(path)}))
"""


@dataclass(frozen=True)
class Transfer:
    mbps: float
    busy: float  # share of the transfer's wall time the client (or server) was on a CPU

    def __str__(self) -> str:
        return f"{self.mbps:.0f} MB/s"


def hf_download(plan: Plan, server: Server, commit: str, size: int, cache: Path) -> Transfer:
    """MB/s of one stock `hf_hub_download` (HEAD, then GET) into a fresh cache, and how busy
    the client was."""
    env = clean_env(HF_HOME=str(cache / "hf-home"), HF_HUB_CACHE=str(cache / "hub"),
                    HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_UPDATE_CHECK="1",
                    HF_HUB_DISABLE_IMPLICIT_TOKEN="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    try:
        done = run(pinned(plan.load_cpu, [sys.executable, "-c", DOWNLOAD, server.url, REPO,
                                          WEIGHTS, commit]), timeout=600, env=env)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["bytes"] != size:
        raise BenchError(f"hf_hub_download from {server.name}: {result['bytes']} bytes, "
                         f"expected {size}")
    return Transfer(size / result["seconds"] / 1e6, result["cpu"] / result["seconds"])


#: One range client: waits for "go" on stdin, GETs its range on a fresh connection, discards
#: the body, prints its start, end (CLOCK_MONOTONIC, the same in every process) and byte count.
RANGE_CLIENT = """
import json, socket, sys, time
port, path, first, last = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
buf = memoryview(bytearray(1 << 20))
print("ready", flush=True)
sys.stdin.readline()
start = time.monotonic()
s = socket.create_connection(("127.0.0.1", port), timeout=60)
s.sendall(f"GET {path} HTTP/1.1\\r\\nHost: 127.0.0.1:{port}\\r\\nRange: bytes={first}-{last}"
          f"\\r\\nConnection: close\\r\\n\\r\\n".encode())
head = b""
while b"\\r\\n\\r\\n" not in head and len(head) < 65536:
    chunk = s.recv(65536)
    if not chunk:
        break
    head += chunk
head, _, body = head.partition(b"\\r\\n\\r\\n")
status = int(head.split(b" ", 2)[1])
got, want = len(body), last - first + 1
while got < want:
    n = s.recv_into(buf)
    if n == 0:
        break
    got += n
end = time.monotonic()
print(json.dumps({"status": status, "bytes": got, "start": start, "end": end}))
"""


def range_downloads(plan: Plan, server: Server, commit: str, size: int) -> Transfer:
    """Aggregate MB/s of RANGE_CLIENTS processes, each GETting a disjoint slice of the file:
    all bytes over the time from the first request's start to the last one's end; and how busy
    the server was."""
    path = f"/{REPO}/resolve/{commit}/{WEIGHTS}"
    step = -(-size // RANGE_CLIENTS)
    clients = []
    try:
        for i in range(RANGE_CLIENTS):
            first, last = i * step, min(size, (i + 1) * step) - 1
            clients.append(subprocess.Popen(
                pinned(plan.load_cpu, [sys.executable, "-c", RANGE_CLIENT, server.port, path,
                                       first, last]),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        await_ready(clients, "a range client")
        cpu = sum(thread_cpu(server.process.pid))
        results = go_and_collect(clients, f"a range client against {server.name}")
        cpu = sum(thread_cpu(server.process.pid)) - cpu
    finally:
        for c in clients:
            if c.poll() is None:
                c.kill()
                c.wait(10)
    total = sum(r["bytes"] for r in results)
    if total != size or any(r["status"] != 206 for r in results):
        raise BenchError(f"range downloads from {server.name}: {total} bytes of {size}, "
                         f"statuses {sorted({r['status'] for r in results})}")
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    return Transfer(total / wall / 1e6, cpu / wall)


@dataclass(frozen=True)
class Rate:
    rps: float
    p99_ms: float
    requests: int
    cpu_main: float  # seconds of CPU the server's first thread used during the run
    cpu_other: float  # ... and its other threads
    wall: float

    def __str__(self) -> str:
        return f"{self.rps:.0f} req/s, p99 {self.p99_ms:.2f} ms"


def thread_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds of the process's main thread and of all its other threads together."""
    tick = os.sysconf("SC_CLK_TCK")
    main = other = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        seconds = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        if int(tid) == pid:
            main += seconds
        else:
            other += seconds
    return main, other


def _under_load(server: Server, cmd: list[str], timeout: float) -> tuple[str, float, float, float]:
    before = thread_cpu(server.process.pid)
    start = time.perf_counter()
    out = run(cmd, timeout=timeout).stdout
    wall = time.perf_counter() - start
    after = thread_cpu(server.process.pid)
    return out, after[0] - before[0], after[1] - before[1], wall


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def _header_args(token: str | None) -> list[str]:
    return ["-H", f"Authorization: Bearer {token}"] if token else []


#: what a browser sends: the mirror answers a page
BROWSER = ["-H", "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"]


def wrk_get(plan: Plan, server: Server, path: str, token: str | None = None,
            extra: list[str] = ()) -> Rate:
    cmd = pinned(plan.load_cpu, ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{plan.wrk_seconds}s",
                                 "--latency", *_header_args(token), *extra, server.url + path])
    out, main, other, wall = _under_load(server, cmd, plan.wrk_seconds + 60)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    if bad or errors:
        raise BenchError(f"wrk against {server.name}: "
                         f"{bad.group(1) + ' error answers' if bad else errors.group(1)}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    return Rate(rps, _ms(*p99.groups()), requests, main, other, wall)


def ab_head(plan: Plan, server: Server, path: str, csv: Path, token: str | None = None) -> Rate:
    # -t before -n: -t alone implies -n 50000, so this order bounds both count and time.
    cmd = pinned(plan.load_cpu, ["ab", "-q", "-i", "-k", "-c", CONNECTIONS,
                                 "-t", plan.ab_seconds, "-n", plan.ab_requests,
                                 *_header_args(token), "-e", csv, server.url + path])
    out, main, other, wall = _under_load(server, cmd, plan.ab_seconds + 60)
    failed = int(re.search(r"Failed requests:\s+(\d+)", out).group(1))
    non2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
    keepalive = int(re.search(r"Keep-Alive requests:\s+(\d+)", out).group(1))
    requests = int(re.search(r"Complete requests:\s+(\d+)", out).group(1))
    if failed or non2xx or keepalive < requests:
        raise BenchError(f"ab against {server.name}: {failed} failed, "
                         f"{non2xx.group(1) if non2xx else 0} non-2xx, "
                         f"{keepalive} of {requests} on kept-alive connections")
    rps = float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1))
    percentiles = dict(line.split(",") for line in csv.read_text().splitlines()[1:])
    return Rate(rps, float(percentiles["99"]), requests, main, other, wall)


# -- where the time goes ---------------------------------------------------------------------------

_LOOP = "event loop, and handing work to threads and back"
_AIOHTTP = "aiohttp: parse the request, build and send the answer"
_MIRROR = "mirror: middleware, route and path checks, handler, headers"
#: (part of a source path, or of a C function's name, and what that code does), first match wins
LOOP_PARTS = [
    ("of '_socket.socket' objects", "socket reads and writes (system calls)"),
    ("/logging/", "access log (logging: a record, format, one write per request)"),
    ("/json/", "JSON encoding"),
    ("/prometheus_client/", "metrics counters"),
    ("/aiohttp/", _AIOHTTP),
    ("/multidict/", _AIOHTTP),
    ("/yarl/", _AIOHTTP),
    ("/asyncio/", _LOOP),
    ("/concurrent/", _LOOP),
    ("/threading.py", _LOOP),
    ("/selectors.py", _LOOP),
    ("/queue.py", _LOOP),
    ("/mirror/", _MIRROR),
    ("/peer/", _MIRROR),
]
WORKER_PARTS = [
    ("sqlite3", "worker threads: sqlite queries"),
    ("/json/", "worker threads: decoding the JSON columns of catalog rows"),
    ("of '_socket.socket' objects", "worker threads: handing the result back to the event loop"),
    ("/concurrent/", "worker threads: handing the result back to the event loop"),
    ("/asyncio/", "worker threads: handing the result back to the event loop"),
    ("io.open", "worker threads: opening and closing the blob file"),
    ("of '_io.", "worker threads: opening and closing the blob file"),
    ("", "worker threads: catalog and hfapi Python (rows to objects, tags, dates)"),
]


def _part(func: tuple, parts: list) -> str | None:
    where = f"{func[0].replace(os.sep, '/')}:{func[2]}"
    return next((label for needle, label in parts if needle in where), None)


def profile_parts(stats_file: Path, parts: list) -> dict[str, float]:
    """Seconds of CPU by part. A function no part names (a C function, a stdlib helper) counts
    for the part of its callers, found up to a few calls up."""
    stats = pstats.Stats(str(stats_file)).stats
    named: dict[tuple, str] = {}

    def name(func: tuple, depth: int = 0) -> str:
        if func not in named:
            label = _part(func, parts)
            callers = stats.get(func, (0, 0, 0, 0, {}))[4]
            if label is None and callers and depth < 8:
                caller = max(callers, key=lambda c: callers[c][3])
                label = name(caller, depth + 1)
            named[func] = label or "other"
        return named[func]

    seconds: dict[str, float] = {}
    for func, (_cc, _nc, tottime, _ct, callers) in stats.items():
        if _part(func, parts) is not None or not callers:
            shares = {name(func): tottime}
        else:
            shares = {}
            for caller, (_c, _n, caller_tt, _t) in callers.items():
                shares[name(caller)] = shares.get(name(caller), 0.0) + caller_tt
        for label, value in shares.items():
            seconds[label] = seconds.get(label, 0.0) + value
    return seconds


def _fitted(parts: dict[str, float], measured: float, rest: str) -> dict[str, float]:
    """`parts` made to add up to the thread CPU the kernel counted (`/proc`) during the run: a
    remainder becomes its own part `rest`; a profile that claims more is scaled down."""
    profiled = sum(parts.values())
    if profiled > measured > 0:
        return {label: value * measured / profiled for label, value in parts.items()}
    return {**parts, rest: measured - profiled}


def where_time_goes(plan: Plan, home: Path, work: Path, commit: str) -> list[str]:
    """The mirror under cProfile for each request-rate load: its CPU by part, all threads."""
    lines = ["Where the mirror's time goes (cProfile, CPU time per thread, fitted to the CPU "
             "the kernel counted for each thread; the profiler inflates Python calls, so read "
             "shares, not absolute times):"]
    loads = [
        ("GET /api/models/{repo}", lambda s: wrk_get(plan, s, f"/api/models/{REPO}")),
        ("HEAD resolve/<commit>/config.json",
         lambda s: ab_head(plan, s, f"/{REPO}/resolve/{commit}/{CONFIG}", work / "ab-prof.csv")),
    ]
    prefix = work / "mirror.prof"
    for what, load in loads:
        log = work / "mirror-prof.log"
        server = start_mirror(home, plan.server_cpu, log, prefix)
        try:
            signal_and_wait(server.process, server.log, signal.SIGUSR1, b"profiling on", "mirror")
            rate = load(server)
            signal_and_wait(server.process, server.log, signal.SIGUSR2, b"profile written", "mirror")
        finally:
            server.stop()
        seconds = _fitted(profile_parts(Path(f"{prefix}.loop"), LOOP_PARTS), rate.cpu_main,
                          "event-loop thread: outside the profile")
        workers = Path(f"{prefix}.workers")
        found = profile_parts(workers, WORKER_PARTS) if workers.is_file() else {}
        seconds.update(_fitted(found, rate.cpu_other,
                               "worker threads: outside the work items (queue, wake-ups)"))
        for suffix in (".loop", ".workers"):
            Path(f"{prefix}{suffix}").unlink(missing_ok=True)
        total = sum(seconds.values())
        lines.append(f"  {what} ({rate.requests} requests, {rate.rps:.0f}/s under the "
                     f"profiler):")
        for label, value in sorted(seconds.items(), key=lambda kv: -kv[1]):
            if value / total >= 0.01:
                lines.append(f"    {100 * value / total:3.0f}%  {label}")
    return lines


# -- the run --------------------------------------------------------------------------------------


def alternate(runs: int, servers: list[Server], measure, show, warm: bool = False):
    """`runs` samples per server, taken in turn. `warm`: one untimed round first (the first
    large download of a run is slow whichever server sends it: its client spends about twice
    the usual kernel time writing the file)."""
    samples: dict[str, list] = {s.name: [] for s in servers}
    for server in servers if warm else []:
        note(f"    warm-up {server.name}: {show(measure(server))}")
    for i in range(runs):
        for server in servers:
            samples[server.name].append(measure(server))
            note(f"    run {i + 1} {server.name}: {show(samples[server.name][-1])}")
    return samples


def fmt(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


def start_servers(plan: Plan, home: Path, model: Path, work: Path,
                  servers: list[Server]) -> str:
    """The mirror serving `home`, and nginx serving the same blob files and the mirror's
    repo-info JSON, each appended to `servers` once started (the caller stops them). Returns
    the commit."""
    mirror = start_mirror(home, plan.server_cpu, work / "mirror.log")
    servers.append(mirror)
    status, _, body = request(mirror.url, "GET", f"/api/models/{REPO}")
    if status != 200:
        raise BenchError(f"the mirror answered {status} for /api/models/{REPO}")
    commit = json.loads(body)["sha"]
    (work / "repo-info.json").write_bytes(body)
    store = BlobStore(load_config(home=home, env={}).store_dir)
    files = {}
    for name, content_type in ((CONFIG, "application/json"),
                               (WEIGHTS, "application/octet-stream")):
        etag = request(mirror.url, "HEAD", f"/{REPO}/resolve/{commit}/{name}")[1]["ETag"]
        etag = etag.strip('"')
        sha256 = hashlib.sha256((model / name).read_bytes()).hexdigest() if name == CONFIG \
            else etag
        files[name] = (store.path_for(sha256), etag, content_type)
    port = free_port()
    conf = nginx_conf(work / "nginx", port, commit, files, work / "repo-info.json")
    servers.append(start_nginx(work / "nginx", plan.server_cpu, conf, port))
    return commit


def bench(plan: Plan, work: Path) -> None:
    note(f"making a {plan.size_mib} MiB safetensors file in {work}")
    weights = make_model(work / "model", plan.size_mib)
    size = weights.stat().st_size
    note("import (all hashes, fsync) against openssl dgst -sha256")
    imports, home = bench_import(plan, weights.parent, weights, work)
    token = add_private(home, weights.parent)
    os.sync()  # the imports' deleted homes and temp files: nothing left to write back

    servers: list[Server] = []
    try:
        commit = start_servers(plan, home, weights.parent, work, servers)
        note("checking both servers answer the same bytes and headers")
        check_same(*servers, commit, size)
        note(f"hf_hub_download of {WEIGHTS} ({size / 1e6:.0f} MB)")
        download = alternate(plan.runs, servers, lambda s: hf_download(
            plan, s, commit, size, work / "hf-cache"), str, warm=True)
        note(f"{RANGE_CLIENTS} concurrent range downloads")
        ranges = alternate(plan.runs, servers, lambda s: range_downloads(plan, s, commit, size),
                           str, warm=True)
        note(f"GET /api/models/{REPO}, wrk, {CONNECTIONS} connections, {plan.wrk_seconds} s")
        gets = alternate(plan.runs, servers, lambda s: wrk_get(plan, s, f"/api/models/{REPO}"),
                         str)
        note(f"HEAD .../resolve/<commit>/{CONFIG}, ab -i -k, {CONNECTIONS} connections")
        heads = alternate(plan.runs, servers, lambda s: ab_head(
            plan, s, f"/{REPO}/resolve/{commit}/{CONFIG}", work / "ab.csv"), str)
        note(f"the same on {PRIVATE} with a token on every request, against {REPO} without")
        status, _, body = request(servers[0].url, "GET", f"/api/models/{PRIVATE}",
                                  {"Authorization": f"Bearer {token}"})
        if status != 200:
            raise BenchError(f"the mirror answered {status} for {PRIVATE} with the token")
        token_gets, token_heads = with_token(plan, servers[0], token, commit,
                                             json.loads(body)["sha"], work)
        note(f"pages: /{REPO} and a search, as a browser asks, against the repo-info JSON")
        status, headers, _ = request(servers[0].url, "GET", f"/{REPO}", {"Accept": "text/html"})
        if status != 200 or not headers.get("Content-Type", "").startswith("text/html"):
            raise BenchError(f"the mirror answered {status} for the page of {REPO}")
        page_samples = page_rates(plan, servers[0])
        for server in servers:
            server.stop()
        profile = where_time_goes(plan, home, work, commit) if plan.profile else []
    finally:
        for server in servers:
            server.stop()

    report(plan, [
        Row(f"hf_hub_download, {plan.size_mib} MiB file (MB/s)",
            *_pair(download, lambda t: t.mbps), 0.95),
        Row(f"{RANGE_CLIENTS} concurrent range GETs, aggregate (MB/s)",
            *_pair(ranges, lambda t: t.mbps), 0.8),
        Row(f"GET /api/models/{{repo}}, {CONNECTIONS} conns (req/s)",
            *_pair(gets, lambda r: r.rps), 0.2),
        Row(f"GET /api/models/{{repo}}, {CONNECTIONS} conns (p99 ms)",
            *_pair(gets, lambda r: r.p99_ms), 0.2, inverse=True),
        Row(f"HEAD resolve/<commit>/config.json, {CONNECTIONS} conns (req/s)",
            *_pair(heads, lambda r: r.rps), 0.2),
        Row(f"HEAD resolve/<commit>/config.json, {CONNECTIONS} conns (p99 ms)",
            *_pair(heads, lambda r: r.p99_ms), 0.2, inverse=True),
        Row("GET repo info: private with a token / public without (req/s)",
            *_pair(token_gets, lambda r: r.rps), 0.9),
        Row("HEAD resolve: private with a token / public without (req/s)",
            *_pair(token_heads, lambda r: r.rps), 0.9),
        Row("repo page (HTML) / repo-info JSON, 64 conns (req/s)",
            *_pair(page_samples["repo"], lambda r: r.rps), 0.5),
        Row("search page (HTML) / repo-info JSON, 64 conns (req/s)",
            *_pair(page_samples["search"], lambda r: r.rps), 0.5),
        Row(f"import {plan.size_mib} MiB, all hashes + fsync (MB/s)", imports["import"],
            imports["openssl"], 0.7),
        Row("  of which the store's ingest, in process (MB/s)", imports["ingest"],
            imports["openssl"], 0.7),
    ])
    print()
    explain(download, ranges, gets, heads, imports)
    if profile:
        print()
    for line in profile:
        print(line)


def explain(download, ranges, gets, heads, imports) -> None:
    """What bounds each row: the client's or server's CPU, the disk, CPU per request."""
    med = statistics.median
    client = [med(t.busy for t in download[name]) for name in ("weightswarm", "nginx")]
    print(f"Transfers: the hf_hub_download client was on its CPU {client[0]:.0%} (weightswarm) "
          f"and {client[1]:.0%} (nginx) of the download"
          f"{': it is the bound' if min(client) >= 0.9 else ''}. Serving the {RANGE_CLIENTS} "
          f"ranges kept the server's core busy {med(t.busy for t in ranges['weightswarm']):.0%}"
          f" (weightswarm) and {med(t.busy for t in ranges['nginx']):.0%} (nginx).")
    copy, direct = med(imports["dd"]), med(imports["dd direct"])
    print(f"Import: the store writes with O_DIRECT as dd oflag=direct does ({direct:.0f} MB/s "
          f"for a plain durable copy; through the page cache with one fsync, dd conv=fsync: "
          f"{copy:.0f} MB/s), while its threads compute sha256, blake3 and the piece SHA-1s on "
          f"two cores where openssl computes one sha256 on one. The command adds its start-up "
          f"(Python, imports, catalog): the ingest alone runs at {med(imports['ingest']):.0f} "
          f"MB/s, the whole command at {med(imports['import']):.0f} MB/s.")
    print()
    print("Server CPU per request under load (medians; the server's core is busy this share "
          "of the run):")
    for what, samples in (("GET /api/models/{repo}", gets),
                          ("HEAD resolve config.json", heads)):
        for name, rates in samples.items():
            per_req = med(1e6 * (r.cpu_main + r.cpu_other) / r.requests for r in rates)
            busy = med((r.cpu_main + r.cpu_other) / r.wall for r in rates)
            split = ""
            if name == "weightswarm":
                loop = med(1e6 * r.cpu_main / r.requests for r in rates)
                split = (f" (event-loop thread {loop:.0f} us, catalog and file threads "
                         f"{per_req - loop:.0f} us)")
            print(f"  {what:<26} {name:<12} {per_req:6.0f} us{split}, core busy {busy:.0%}")


@dataclass(frozen=True)
class Row:
    name: str
    ours: list[float]
    reference: list[float]
    target: float
    inverse: bool = False  # lower is better: the ratio is reference / ours


def _pair(samples: dict[str, list], value) -> tuple[list[float], list[float]]:
    return [value(s) for s in samples["weightswarm"]], [value(s) for s in samples["nginx"]]


def report(plan: Plan, rows: list[Row]) -> None:
    med = statistics.median
    print(f"weightswarm against nginx {nginx_version()} (static files, same bytes) and openssl "
          f"dgst -sha256; median of {plan.runs} alternating runs; servers single-process on "
          f"cpu {plan.server_cpu}, load generators on cpu {plan.load_cpu}; both access logs on")
    print()
    print(f"| {'measurement':<54} | {'weightswarm':>11} | {'reference':>9} | {'ratio':>6} "
          f"| {'target':<15} |")
    print(f"|{'-' * 56}|{'-' * 13}|{'-' * 11}|{'-' * 8}|{'-' * 17}|")
    for row in rows:
        ours, reference = med(row.ours), med(row.reference)
        ratio = reference / ours if row.inverse else ours / reference
        verdict = "met" if ratio >= row.target else "MISSED"
        print(f"| {row.name:<54} | {fmt(ours):>11} | {fmt(reference):>9} | {ratio:5.2f}x "
              f"| >= {row.target:.2f}x {verdict:<6} |")
    print()
    print("reference: nginx, except the token rows (the mirror itself, on the public repo "
          "without a token), the page rows (the mirror's repo-info JSON of the same repo) and "
          "the import row (openssl dgst -sha256 of the same file). "
          "ratio: weightswarm / reference; for p99 rows reference / weightswarm, so higher is "
          "better on every row.")
    print()
    print("Every timed run, in order (weightswarm; reference):")
    for row in rows:
        print(f"  {row.name:<54} {' '.join(fmt(v) for v in row.ours)}; "
              f"{' '.join(fmt(v) for v in row.reference)}")


def nginx_version() -> str:
    done = subprocess.run(["nginx", "-v"], capture_output=True, text=True, timeout=30)
    found = re.search(r"nginx/(\S+)", done.stderr)
    return found.group(1) if found else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a fast check: 256 MiB, short load runs, no profile")
    parser.add_argument("--size-mib", type=int, help="size of the large file [1024; quick: 256]")
    parser.add_argument("--runs", type=int, default=3, help="alternating runs per server [3]")
    parser.add_argument("--no-profile", action="store_true",
                        help="skip the cProfile breakdown of the mirror's request handling")
    args = parser.parse_args()
    with bench_main():
        find_tools(TOOLS)
        cpus = two_cores("servers")
        plan = Plan(
            size_mib=args.size_mib or (256 if args.quick else 1024),
            runs=max(1, args.runs),
            wrk_seconds=2 if args.quick else 5,
            ab_requests=5000 if args.quick else 20000,
            ab_seconds=3 if args.quick else 8,
            profile=not (args.quick or args.no_profile),
            server_cpu=str(cpus[0]),
            load_cpu=str(cpus[1]),
        )
        # This script is a load generator too (it waits, reads output): keep it off the
        # servers' core.
        os.sched_setaffinity(0, {cpus[1]})
        with tempfile.TemporaryDirectory(prefix="ws-bench-serve-") as work:
            bench(plan, Path(work))


if __name__ == "__main__":
    main()
