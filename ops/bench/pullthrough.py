"""Benchmark: a cold file through a mirror's pull-through (issue 19) against the same stock
client downloading it straight from the upstream.

The upstream is tests/fakehub.py in this process on 127.0.0.1 (its 302 to the CDN host on, its
429s, cuts and Xet off), holding one `--size-mib` MiB LFS file. The mirror is `weightswarm
mirror serve` in a process of its own, with `pull_through = true`, seeding off, a fresh home
each run (so every run is cold: nothing in its store). The clients are stock
`hf_hub_download`s, each in a process of its own with its own cache, started together; the
first byte is when the client's progress bar first moves (its `tqdm_class` hook: after its
first read of the body, up to 10 MB, huggingface_hub's DOWNLOAD_CHUNK_SIZE), the total when
the call returns. At 1 and at 8 clients, direct and through the mirror alternate
`--runs` times; the table shows medians, the ratios against direct, and the upstream's bytes
for the mirror's runs (what a site's WAN link carries) against the file's size.

The speed ratio is the median of each run's direct / pulled (the two back to back), beside
the ratio of the medians.

Run: .venv/bin/python ops/bench/pullthrough.py [--size-mib 1024] [--runs 3] [--clients 1,8]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from benchlib import (  # noqa: E402
    Server,
    await_port,
    await_ready,
    bench_main,
    clean_env,
    go_and_collect,
    note,
)
from fakehub import FakeHub  # noqa: E402

VENV_BIN = Path(sys.executable).parent
REPO = "bench/cold"
FILE = "model.safetensors"

#: one stock client: ready, then on "go" the download, then its times as JSON
CLIENT = """
import json, sys, time
from huggingface_hub import hf_hub_download
from tqdm.auto import tqdm

first = []

class Watch(tqdm):
    def update(self, n=1):
        if n and not first:
            first.append(time.perf_counter())
        return super().update(n)

endpoint, cache, repo, name = sys.argv[1:5]
print("ready", flush=True)
sys.stdin.readline()
start, cpu = time.perf_counter(), time.process_time()
hf_hub_download(repo, name, endpoint=endpoint, cache_dir=cache, tqdm_class=Watch)
done = time.perf_counter()
print(json.dumps({"first": (first or [done])[0] - start, "total": done - start,
                  "cpu": time.process_time() - cpu}), flush=True)
"""


def clients(endpoint: str, work: Path, count: int) -> list[dict]:
    """`count` stock clients at once, each its own process and cache: their times."""
    env = clean_env(HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="0",
                    HF_HUB_DISABLE_XET="1")
    procs = []
    for k in range(count):
        cache = work / f"client-{k}"
        procs.append(subprocess.Popen(
            [sys.executable, "-c", CLIENT, endpoint, str(cache), REPO, FILE], env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True))
    await_ready(procs, "a client")
    times = go_and_collect(procs, "a client", timeout=1800)
    for k in range(count):
        shutil.rmtree(work / f"client-{k}", ignore_errors=True)
    return times


def start_mirror(home: Path, hub: FakeHub) -> Server:
    home.mkdir()
    log = home / "mirror.log"
    env = clean_env(WEIGHTSWARM_MIRROR_UPSTREAMS_HUGGINGFACE_ENDPOINT=hub.url,
                    WEIGHTSWARM_MIRROR_PULL_THROUGH="true", WEIGHTSWARM_MIRROR_SEED="false",
                    WEIGHTSWARM_MIRROR_PORT="0")
    with open(log, "wb") as err:
        process = subprocess.Popen([str(VENV_BIN / "weightswarm"), "--home", str(home),
                                    "mirror", "serve"], stdin=subprocess.DEVNULL,
                                   stdout=err, stderr=err, env=env, start_new_session=True)
    return await_port(Server("mirror", process, 0, log), rb"listening on .*:(\d+)",
                      "the mirror", 60)


def one_round(hub: FakeHub, work: Path, count: int, run: int) -> dict:
    direct = clients(hub.url, work, count)
    home = work / f"mirror-{count}-{run}"
    mirror = start_mirror(home, hub)
    try:
        hub.reset_counts()
        idle = mirror.cpu_seconds()
        pulled = clients(mirror.url, work, count)
        upstream = hub.bytes_served
        mirror_cpu = mirror.cpu_seconds() - idle
    finally:
        mirror.stop()
        shutil.rmtree(home, ignore_errors=True)
    return {"direct": direct, "pulled": pulled, "upstream": upstream, "mirror_cpu": mirror_cpu}


def medians(rounds: list[dict], side: str, what: str) -> float:
    """The median over rounds of the slowest client's figure (what the last user waits)."""
    return statistics.median(max(c[what] for c in r[side]) for r in rounds)


def paired(rounds: list[dict]) -> float:
    """The median over rounds of direct / pulled, each round's two runs back to back: this
    machine's speed drifts between runs (one stock client took 2.5 s and 4.3 s for the same
    download, minutes apart), and a ratio of runs side by side cancels the drift that a ratio
    of medians keeps."""
    return statistics.median(max(c["total"] for c in r["direct"])
                             / max(c["total"] for c in r["pulled"]) for r in rounds)


def table(results: dict[int, list[dict]], size: int, runs: int) -> str:
    lines = [f"pull-through of a cold {size / 2**20:.0f} MiB file against the stock client "
             f"straight from the upstream, median of {runs} alternating runs (the slowest "
             f"client of each), {os.cpu_count()} cores", "",
             "| clients | direct first byte s | pulled first byte s | first byte ratio "
             "(target <= 2x) | direct total s | pulled total s | ratio of the medians "
             "| speed ratio, median of each run's (target >= 0.9x) "
             "| upstream bytes / file (target <= 1.05) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for count, rounds in results.items():
        df, pf = medians(rounds, "direct", "first"), medians(rounds, "pulled", "first")
        dt, pt = medians(rounds, "direct", "total"), medians(rounds, "pulled", "total")
        ratio = paired(rounds)
        upstream = statistics.median(r["upstream"] for r in rounds) / size
        lines.append(
            f"| {count} | {df:.2f} | {pf:.2f} | {pf / df:.2f}x {_verdict(pf / df <= 2)} | "
            f"{dt:.2f} | {pt:.2f} | {dt / pt:.2f}x | {ratio:.2f}x {_verdict(ratio >= 0.9)} | "
            f"{upstream:.3f} {_verdict(upstream <= 1.05)} |")
    lines.append("")
    for count, rounds in results.items():
        lines.append(f"Every run, {count} client(s), slowest total s: direct "
                     + " ".join(f"{max(c['total'] for c in r['direct']):.2f}" for r in rounds)
                     + "; pulled "
                     + " ".join(f"{max(c['total'] for c in r['pulled']):.2f}" for r in rounds))
    gib = size / 2**30
    for count, rounds in results.items():
        lines.append(
            f"CPU s a GiB, {count} client(s), medians: a client direct "
            f"{statistics.median(_per_client_cpu(r['direct']) for r in rounds) / gib:.2f}, "
            f"pulled {statistics.median(_per_client_cpu(r['pulled']) for r in rounds) / gib:.2f}; "
            f"the mirror {statistics.median(r['mirror_cpu'] for r in rounds) / gib / count:.2f} "
            "a client's copy (while the clients ran)")
    return "\n".join(lines)


def _per_client_cpu(times: list[dict]) -> float:
    return statistics.mean(c["cpu"] for c in times)


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", default="1,8")
    args = parser.parse_args()
    size = args.size_mib * 2**20
    counts = [int(c) for c in args.clients.split(",") if c]
    with bench_main(), tempfile.TemporaryDirectory(prefix="ws-bench-pull-") as tmp, \
            FakeHub(page_size=100, xet=False) as hub:
        work = Path(tmp)
        note(f"generating a {args.size_mib} MiB file")
        hub.add_repo(REPO, {FILE: os.urandom(size), "config.json": b"{}"})
        results: dict[int, list[dict]] = {c: [] for c in counts}
        for run in range(args.runs):
            for count in counts:
                started = time.perf_counter()
                results[count].append(one_round(hub, work, count, run))
                note(f"  run {run + 1}, {count} client(s): "
                     f"{time.perf_counter() - started:.0f} s")
        print(table(results, size, args.runs))


if __name__ == "__main__":
    main()
