"""Benchmark: one read pass computing every hash a blob needs, sequential vs parallel threads,
against sha256 alone (hashlib.file_digest) and coreutils' sha256sum on the same file.

Run: .venv/bin/python ops/bench/hashing.py [--size-mib 512] [--runs 5]
Prints medians and ratios against sha256sum (page cache warm: this measures CPU, not disk).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from peer.hashing import Hasher, read_chunks, sha256_file  # noqa: E402


def one_pass(path: Path, lfs: bool, parallel: bool) -> None:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        hasher = Hasher(size, lfs=lfs, parallel=parallel)
        for chunk in read_chunks(f, size):
            hasher.update(chunk)
        hasher.finish()


def timed(fn, runs: int) -> float:
    fn()  # warm the page cache and the thread pool
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "blob"
        with open(path, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(1024 * 1024))
        cases = [
            ("sha256sum (coreutils), sha256 only", lambda: subprocess.run(
                ["sha256sum", str(path)], check=True, capture_output=True)),
            ("hashlib sha256 only", lambda: sha256_file(path)),
            ("one pass, LFS (sha256+blake3+pieces), sequential",
             lambda: one_pass(path, True, False)),
            ("one pass, LFS (sha256+blake3+pieces), parallel",
             lambda: one_pass(path, True, True)),
            ("one pass, git (sha256+blake3+git sha1), sequential",
             lambda: one_pass(path, False, False)),
            ("one pass, git (sha256+blake3+git sha1), parallel",
             lambda: one_pass(path, False, True)),
        ]
        results = [(name, timed(fn, args.runs)) for name, fn in cases]
    reference = results[0][1]
    print(f"hashing {args.size_mib} MiB, median of {args.runs} runs, {os.cpu_count()} cores")
    print(f"| {'what':<52} | {'MiB/s':>7} | {'vs sha256sum':>12} |")
    print(f"|{'-' * 54}|{'-' * 9}|{'-' * 14}|")
    for name, seconds in results:
        print(f"| {name:<52} | {args.size_mib / seconds:7.0f} | {reference / seconds:11.2f}x |")


if __name__ == "__main__":
    main()
