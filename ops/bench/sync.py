"""Benchmark: `weightswarm mirror sync` of a 1 GiB repo (a few safetensors-sized shards) from a
local fake hub, against a plain aiohttp download of the same bytes to disk with fsync, from the
same server, with the same concurrency; for each hub: `hf:` (tests/fakehub.py), `ms:`
(tests/fakems.py, files served by the hub itself) and `kaggle:` (tests/fakekaggle.py, through
its redirect to signed storage, which the plain download fetches directly; the sync also
computes the MD5 that storage sends).

The fakes run in this process on 127.0.0.1, their 429s and connection cuts off. Each side runs
three times, alternating, in fresh folders; the table shows medians, the ratio and how long
hashing every byte (sha256, blake3, piece SHA-1s) takes on its own, as a share of the sync.

Run: .venv/bin/python ops/bench/sync.py [--size-mib 1024] [--shards 4] [--runs 3]
     [--hubs hf,ms,kaggle]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fakehub import FakeHub  # noqa: E402
from fakekaggle import FakeKaggle  # noqa: E402
from fakems import FakeModelScope  # noqa: E402

from peer.hashing import hash_file  # noqa: E402

VENV_BIN = Path(sys.executable).parent
REPO = "bench/model"
PARALLEL = 4

PLAIN = """
import asyncio, os, sys, time
import aiohttp

async def fetch(session, url, dest):
    async with session.get(url, headers={"Accept-Encoding": "identity"}) as r:
        r.raise_for_status()
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            async for chunk in r.content.iter_chunked(1 << 20):
                os.write(fd, chunk)
            os.fsync(fd)
        finally:
            os.close(fd)

async def main(out, parallel, urls):
    gate = asyncio.Semaphore(parallel)
    async with aiohttp.ClientSession() as session:
        async def one(i, url):
            async with gate:
                await fetch(session, url, os.path.join(out, f"shard-{i}"))
        await asyncio.gather(*(one(i, u) for i, u in enumerate(urls)))

asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3:]))
"""


def run(cmd: list, env: dict | None = None) -> None:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env,
                          timeout=900)
    if done.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd[:5]))}... failed: {done.stderr[-800:]}")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@dataclass
class Hub:
    """One fake upstream with the repo on it: the spec to sync, the URLs a plain download
    fetches, and the environment that points the mirror at it."""

    name: str
    spec: str
    urls: list[str]
    env: dict


@contextlib.contextmanager
def fake_hub(name: str, files: dict[str, bytes]):
    if name == "hf":
        with FakeHub(page_size=100, xet=False, redirect_lfs=False) as hub:
            commit = hub.add_repo(REPO, files)
            yield Hub("hf", f"hf:{REPO}", [hub.resolve_url(REPO, commit, p) for p in files],
                      {"WEIGHTSWARM_MIRROR_UPSTREAMS_HUGGINGFACE_ENDPOINT": hub.url})
    elif name == "ms":
        with FakeModelScope(redirect=False) as ms:
            ms.add_repo(REPO, files)
            yield Hub("ms", f"ms:{REPO}", [ms.file_url(REPO, p) for p in files],
                      {"WEIGHTSWARM_MIRROR_UPSTREAMS_MODELSCOPE_ENDPOINT": ms.url})
    else:
        with FakeKaggle() as kaggle:
            kaggle.add_version("bench", "model", "pyTorch", "base", files)
            names = [kaggle._object_of(KAGGLE_HANDLE, 1, p).name for p in files]
            yield Hub("kaggle", f"kaggle:{KAGGLE_HANDLE}", [kaggle.signed_url(n) for n in names],
                      {"WEIGHTSWARM_MIRROR_UPSTREAMS_KAGGLE_ENDPOINT": kaggle.endpoint})


def measure(hub: Hub, files: dict[str, bytes], work: Path, runs: int) -> dict[str, list[float]]:
    total = sum(len(d) for d in files.values())
    env = dict(os.environ, **hub.env)
    for key in ("HF_TOKEN", "MODELSCOPE_API_TOKEN", "KAGGLE_API_TOKEN", "KAGGLE_USERNAME"):
        env.pop(key, None)
    ws = [VENV_BIN / "weightswarm"]

    def sync_once(i: int) -> float:
        home = work / f"{hub.name}-home-{i}"
        run([*ws, "--home", home, "mirror", "ls"], env)  # an existing mirror's home
        seconds = timed(lambda: run([*ws, "--home", home, "mirror", "sync", hub.spec,
                                     "--no-progress", "--parallel", PARALLEL], env))
        shutil.rmtree(home)
        return seconds

    def plain_once(i: int) -> float:
        out = work / f"{hub.name}-plain-{i}"
        out.mkdir()
        seconds = timed(lambda: run([sys.executable, "-c", PLAIN, out, PARALLEL, *hub.urls]))
        shutil.rmtree(out)
        return seconds

    sync_once(-1)  # warm both paths (imports, page cache of the generator)
    plain_once(-1)
    samples: dict[str, list[float]] = {"sync": [], "plain": []}
    for i in range(runs):
        samples["sync"].append(total / sync_once(i) / 1e6)
        samples["plain"].append(total / plain_once(i) / 1e6)
        print(f"  {hub.name} run {i + 1}: sync {samples['sync'][-1]:.0f} MB/s, "
              f"plain {samples['plain'][-1]:.0f} MB/s", file=sys.stderr)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--hubs", default="hf,ms,kaggle")
    args = parser.parse_args()
    shard_size = args.size_mib * 1024 * 1024 // args.shards
    files = {f"model-{i + 1:05d}-of-{args.shards:05d}.safetensors": os.urandom(shard_size)
             for i in range(args.shards)}
    files["config.json"] = b'{"model_type": "bench"}'
    total = sum(len(d) for d in files.values())
    chosen = [h for h in args.hubs.split(",") if h]

    results = {}
    with tempfile.TemporaryDirectory(prefix="ws-bench-sync-") as tmp:
        work = Path(tmp)
        for name in chosen:
            with fake_hub(name, files) as hub:
                results[name] = measure(hub, files, work, args.runs)
        shard = work / "one-shard"
        shard.write_bytes(next(iter(files.values())))
        hashing = timed(lambda: hash_file(shard, lfs=True)) * args.shards

    med = statistics.median
    print(f"sync of a {args.size_mib} MiB repo ({args.shards} shards) from a local fake hub, "
          f"{PARALLEL} files at once, median of {args.runs} alternating runs, "
          f"{os.cpu_count()} cores")
    print()
    print(f"| {'what':<58} | {'MB/s':>6} | {'ratio':>6} | {'target':<15} |")
    print(f"|{'-' * 60}|{'-' * 8}|{'-' * 8}|{'-' * 17}|")
    for name in chosen:
        samples = results[name]
        sync_rate, plain_rate = med(samples["sync"]), med(samples["plain"])
        print(f"| {LABELS[name][0]:<58} | {plain_rate:6.0f} | {1:5.2f}x | {'reference':<15} |")
        verdict = "met" if sync_rate / plain_rate >= 0.9 else "MISSED"
        print(f"| {LABELS[name][1]:<58} | {sync_rate:6.0f} | "
              f"{sync_rate / plain_rate:5.2f}x | >= 0.90x {verdict:<6} |")
    print()
    sync_seconds = total / med(results[chosen[0]]["sync"]) / 1e6
    print(f"Hashing every byte (sha256, blake3, piece SHA-1s; one pass, threads) takes "
          f"{hashing:.2f} s on its own: {hashing / sync_seconds:.0%} of the {chosen[0]} sync's "
          f"{sync_seconds:.2f} s, overlapped with the transfer.")
    for name in chosen:
        print(f"Every run (MB/s), {name}: sync " + " ".join(f"{v:.0f}" for v in results[name]["sync"])
              + "; plain " + " ".join(f"{v:.0f}" for v in results[name]["plain"]))


KAGGLE_HANDLE = "bench/model/pyTorch/base"
LABELS = {
    "hf": ("hf: plain aiohttp download to disk with fsync",
           "hf: weightswarm mirror sync (verify, all hashes, publish)"),
    "ms": ("ms: plain aiohttp download to disk with fsync",
           "ms: weightswarm mirror sync (verify Sha256, all hashes)"),
    "kaggle": ("kaggle: plain download of the signed storage URLs",
               "kaggle: weightswarm mirror sync (RPC, redirect, MD5 too)"),
}


if __name__ == "__main__":
    main()
