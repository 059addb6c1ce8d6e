"""Benchmark: N peers pulling one repo at once from a mirror whose egress is capped, over the
swarm (`weightswarm pull`) against plain HTTP from the same capped mirror (the stock client's
`snapshot_download` with HF_ENDPOINT pointing at it).

One tracker and one mirror run as commands on 127.0.0.1, the mirror capped with
`[mirror] egress_limit` (BitTorrent upload, web seed and resolve together). For each N the
peers start together, each in its own home and Hugging Face cache; a peer's completion time is
its command's wall time. The mirror's bytes come from its own /metrics.

Per N: completion time (median over every peer of every repetition, and the slowest peer,
median over repetitions), what the mirror sent per byte of the model, and what the peers sent
each other (from the pulls' libtorrent per-peer counters). Targets for N = 8: mirror egress at
most 1.2x the model size (plain HTTP: 8x), slowest completion at most 1.3x the single-peer time.

Run: .venv/bin/python ops/bench/swarm.py [--size-mib 512] [--cap-mib 10] [--reps 3]
     [--peers 1,2,4,8] [--http-peers 1,8]          (about 20 minutes)
     .venv/bin/python ops/bench/swarm.py --quick    (64 MiB, one repetition: a smoke run)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchlib import BenchError, bench_main, clean_env, free_port, note

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
WS = str(VENV_BIN / "weightswarm")
REPO = "bench/swarm"
MiB = 1024 * 1024

#: every node on loopback, nothing that reaches past this host, announces as often as asked
BT = {"BT_LISTEN": "127.0.0.1:0", "BT_DHT": "0", "BT_LSD": "0", "BT_UPNP": "0",
      "BT_NATPMP": "0", "BT_MIN_ANNOUNCE_INTERVAL": "1"}

HTTP_PULL = """
import sys, time
from huggingface_hub import snapshot_download
snapshot_download(sys.argv[1])
"""


def make_repo(folder: Path, size: int) -> int:
    """Two LFS shards of random bytes and a config: what a model repo looks like."""
    folder.mkdir(parents=True)
    (folder / ".gitattributes").write_text("*.bin filter=lfs diff=lfs merge=lfs -text\n")
    (folder / "config.json").write_text('{"model_type": "bench"}\n')
    half = size // 2
    for i, n in enumerate((half, size - half)):
        with open(folder / f"shard-{i}.bin", "wb") as f:
            left = n
            while left:
                chunk = os.urandom(min(left, 64 * MiB))
                f.write(chunk)
                left -= len(chunk)
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def start(cmd: list[str], env: dict, log: Path, pattern: str, timeout: float = 60):
    """A server command; returns (process, the first group of `pattern` in its log)."""
    out = open(log, "wb")
    process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, log.read_text(errors="replace"))
        if found:
            return process, found.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    raise BenchError(f"{' '.join(cmd[:4])} did not start: {log.read_text()[-800:]}")


def mirror_egress(url: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(m.group(1)) for m in
               re.finditer(r'^weightswarm_mirror_egress_bytes_total\{via="\w+"\} (\S+)$', text,
                           re.M))


def run_peers(n: int, work: Path, make_cmd, env_for) -> list[tuple[float, dict | None]]:
    """Start n peer commands at once; (seconds, JSON outcome or None) for each."""
    procs = []
    for i in range(n):
        home = work / f"peer-{i}"
        home.mkdir(parents=True)
        started = time.monotonic()
        procs.append((subprocess.Popen(make_cmd(home), env=env_for(home), stdout=subprocess.PIPE,
                                       stderr=open(home / "log", "wb")), started))
    results = []
    for process, started in procs:
        out, _ = process.communicate(timeout=1800)
        seconds = time.monotonic() - started
        if process.returncode != 0:
            raise BenchError(f"a peer failed ({process.returncode}): "
                             f"{(work / 'peer-0' / 'log').read_text()[-800:]}")
        text = out.decode().strip()
        results.append((seconds, json.loads(text.splitlines()[-1]) if text else None))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--cap-mib", type=float, default=10)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--peers", default="1,2,4,8")
    parser.add_argument("--http-peers", default="1,8")
    parser.add_argument("--quick", action="store_true", help="64 MiB, one repetition")
    args = parser.parse_args()
    if args.quick:
        args.size_mib, args.reps = 64, 1
    peer_counts = [int(n) for n in args.peers.split(",") if n]
    http_counts = [int(n) for n in args.http_peers.split(",") if n]
    cap = int(args.cap_mib * MiB)
    began = time.monotonic()

    with tempfile.TemporaryDirectory(prefix="ws-bench-swarm-") as tmp:
        work = Path(tmp)
        note(f"making a {args.size_mib} MiB repo")
        size = make_repo(work / "repo", args.size_mib * MiB)
        mirror_home = work / "mirror"
        env = clean_env(WEIGHTSWARM_HOME=str(mirror_home))
        subprocess.run([WS, "mirror", "import", str(work / "repo"), "--repo", REPO,
                        "--no-progress"], env=env, check=True, capture_output=True)
        tracker_port = free_port()
        tracker, _ = start([WS, "tracker", "serve", "--port", str(tracker_port)],
                           clean_env(WEIGHTSWARM_HOME=str(work / "tracker"),
                                     WEIGHTSWARM_TRACKER_INTERVAL="5",
                                     WEIGHTSWARM_TRACKER_MIN_INTERVAL="1"),
                           work / "tracker.log", r"tracker listening on (http)")
        announce = f"http://127.0.0.1:{tracker_port}/announce"
        mirror_env = clean_env(WEIGHTSWARM_HOME=str(mirror_home),
                               WEIGHTSWARM_MIRROR_TRACKERS=announce,
                               WEIGHTSWARM_MIRROR_EGRESS_LIMIT=str(cap),
                               WEIGHTSWARM_MIRROR_SCRUB_INTERVAL="0",
                               **{f"WEIGHTSWARM_MIRROR_{k}": v for k, v in BT.items()})
        mirror, port = start([WS, "mirror", "serve", "--port", "0"], mirror_env,
                             work / "mirror.log", r"mirror listening on http://[\d.]+:(\d+)")
        url = f"http://127.0.0.1:{port}"
        time.sleep(2)  # the mirror announces its torrents

        def swarm_env(home: Path) -> dict:
            return clean_env(WEIGHTSWARM_HOME=str(home), HF_HUB_CACHE=str(home / "cache"),
                             WEIGHTSWARM_PEER_PULL_LISTEN="127.0.0.1:0",
                             **{f"WEIGHTSWARM_PEER_{k}": v for k, v in BT.items()})

        def swarm_cmd(home: Path) -> list[str]:
            return [WS, "pull", REPO, "--mirror", url, "--json", "--no-progress"]

        def http_env(home: Path) -> dict:
            return clean_env(HF_ENDPOINT=url, HF_HUB_CACHE=str(home / "cache"),
                             HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1",
                             HF_HUB_DOWNLOAD_TIMEOUT="60")

        def http_cmd(home: Path) -> list[str]:
            return [sys.executable, "-c", HTTP_PULL, REPO]

        rows = []
        try:
            for kind, counts, reps, cmd, penv in (
                    ("swarm", peer_counts, args.reps, swarm_cmd, swarm_env),
                    ("http", http_counts, 1, http_cmd, http_env)):
                for n in counts:
                    runs = []
                    for rep in range(reps):
                        folder = work / f"{kind}-{n}-{rep}"
                        before = mirror_egress(url)
                        outcome = run_peers(n, folder, cmd, penv)
                        time.sleep(1.5)  # the mirror's BitTorrent counter ticks
                        sent = mirror_egress(url) - before
                        p2p = sum((o or {}).get("from_peers", 0) for _, o in outcome)
                        web = sum((o or {}).get("from_web_seeds", 0) for _, o in outcome)
                        from_mirrors = sum((o or {}).get("from_mirrors", 0) for _, o in outcome)
                        times = [s for s, _ in outcome]
                        runs.append({"times": times, "mirror": sent / size, "p2p": p2p / size})
                        note(f"{kind} N={n} rep {rep + 1}: slowest {max(times):.1f}s, mirror "
                             f"sent {sent / size:.2f}x the model, peers to peers "
                             f"{p2p / size:.2f}x, pulls counted from mirrors "
                             f"{from_mirrors / size:.2f}x and web seeds {web / size:.2f}x "
                             f"({time.monotonic() - began:.0f}s so far)")
                        shutil.rmtree(folder)
                    rows.append((kind, n, runs))
        finally:
            for process in (mirror, tracker):
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()

    med = statistics.median
    single = next((med([t for r in runs for t in r["times"]]) for kind, n, runs in rows
                   if kind == "swarm" and n == 1), None)
    print(f"{args.size_mib} MiB repo (two shards and a config), mirror egress capped at "
          f"{args.cap_mib:g} MiB/s, N peers at once on 127.0.0.1, {os.cpu_count()} cores; "
          f"swarm: median of {args.reps} repetitions, plain HTTP: one")
    print()
    print("| way | N | completion, median | slowest | slowest / single peer | "
          "mirror sent / model | peers sent each other / model |")
    print("|---|---|---|---|---|---|---|")
    for kind, n, runs in rows:
        every = [t for r in runs for t in r["times"]]
        slowest = med([max(r["times"]) for r in runs])
        ratio = f"{slowest / single:.2f}x" if single else "-"
        print(f"| {'weightswarm pull' if kind == 'swarm' else 'plain HTTP'} | {n} | "
              f"{med(every):.1f} s | {slowest:.1f} s | {ratio} | "
              f"{med([r['mirror'] for r in runs]):.2f}x | "
              f"{med([r['p2p'] for r in runs]):.2f}x |")
    print()
    print("Targets at N = 8: mirror sent <= 1.2x the model (plain HTTP: 8x); slowest <= 1.3x "
          f"the single-peer time. Whole run: {(time.monotonic() - began) / 60:.1f} minutes.")


if __name__ == "__main__":
    with bench_main():
        main()
