"""Benchmark: carrying a repo across an air gap (issue 15). `weightswarm mirror export` of a
2 GiB repo to a bundle folder and `weightswarm mirror import-bundle` of that folder into a
second mirror, against `cp -r` of the same files and against `cp -r` followed by `sha256sum`
of every copied file (what a careful person does by hand today), in one run, alternating, in
fresh folders. Parity is measured on its own: `par2` writing 5 % of recovery data for one
512 MiB volume (mirror/parity.py's `protect`), and verifying it with no damage (`check`).

Everything sits on one local disk and, on a machine with RAM to spare, in the page cache: this
measures the work each side does (hashing, copying, fsync), not a USB stick's speed, which
would hide all of it. Medians of the runs, rates in MB/s of repo bytes, ratios against `cp -r`.
Targets: import at least 0.8x of `cp -r`, export at least 0.9x.

Run: .venv/bin/python ops/bench/bundle.py [--size-mib 2048] [--runs 3]
         [--parity-mib 512] [--percent 5]
     .venv/bin/python ops/bench/bundle.py --parity-only     (par2 alone: no bundle commands)
     .venv/bin/python ops/bench/bundle.py --quick           (256 MiB / 64 MiB, one run)
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

from benchlib import BenchError, bench_main, clean_env, find_tools, note

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from mirror import parity  # noqa: E402
from peer.keys import load_or_create, public_key_text  # noqa: E402

VENV_BIN = Path(sys.executable).parent
WS = str(VENV_BIN / "weightswarm")
REPO = "bench/bundle"
MiB = 1024 * 1024
SHARDS = 4


def make_repo(folder: Path, size: int, shards: int = SHARDS) -> int:
    """`shards` safetensors-sized files of random bytes and a config, as a model repo has;
    the bytes in all."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "bench"}\n')
    per = size // shards
    for i in range(shards):
        with open(folder / f"model-{i + 1:05d}-of-{shards:05d}.safetensors", "wb") as f:
            for _ in range(per // MiB):
                f.write(os.urandom(MiB))
            f.write(os.urandom(per % MiB))
    return sum(p.stat().st_size for p in folder.iterdir())


def run(cmd: list, env: dict | None = None) -> None:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env,
                          timeout=3600)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(map(str, cmd[:4]))}... failed: "
                         f"{(done.stderr or done.stdout)[-800:]}")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cp_r(source: Path, dest: Path) -> None:
    run(["cp", "-r", source, dest])


def files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def cp_r_sync(source: Path, dest: Path) -> None:
    """cp -r, then fsync of every copied file (coreutils' sync FILE...): the bytes on the
    disk, as an export and an import leave them, not only in the page cache."""
    cp_r(source, dest)
    run(["sync", "--", *files_in(dest)])


def cp_r_sha256sum(source: Path, dest: Path) -> None:
    cp_r(source, dest)
    run(["sha256sum", "--", *files_in(dest)])


def parity_cost(work: Path, size_mib: int, percent: float, runs: int) -> dict:
    """Seconds (median) for par2 to protect one volume of `size_mib` at `percent` and to
    verify it undamaged, and the recovery data's size."""
    volume = work / "volume"
    size = make_repo(volume, size_mib * MiB)
    files = [p.relative_to(volume) for p in volume.iterdir()]
    note(f"parity: protecting {size_mib} MiB at {percent:g} %, {runs} runs")
    protect, verify, copy = [], [], []
    for i in range(runs):
        protect.append(timed(lambda: parity.protect(volume, files, percent)))
        verify.append(timed(lambda: parity.check(volume)))
        copy.append(timed(lambda i=i: cp_r(volume, work / f"copy-{i}")))
        shutil.rmtree(work / f"copy-{i}")
        note(f"  run {i + 1}: protect {protect[-1]:.2f} s, verify {verify[-1]:.2f} s, "
             f"cp -r {copy[-1]:.2f} s")
    made = sum(p.stat().st_size for p in parity.recovery_files(volume))
    block, count, _ = parity.recovery_plan([p.stat().st_size for p in volume.iterdir()
                                            if p.is_file() and p not in
                                            parity.recovery_files(volume)], percent)
    shutil.rmtree(volume)
    med = statistics.median
    return {"bytes": size, "percent": percent, "protect": med(protect), "verify": med(verify),
            "cp": med(copy), "parity_bytes": made, "block": block, "recovery_blocks": count,
            "runs": (protect, verify, copy)}


def bundle_cycle(work: Path, size_mib: int, runs: int) -> dict:
    """Medians (seconds) of export, import-bundle, cp -r and cp -r + sha256sum of a repo."""
    repo = work / "repo"
    size = make_repo(repo, size_mib * MiB)
    source = clean_env(WEIGHTSWARM_HOME=str(work / "source"))
    note(f"bundle: a {size_mib} MiB repo into the exporting mirror")
    run([WS, "mirror", "import", repo, "--repo", REPO, "--no-progress"], source)
    # the far side believes the exporting mirror's key, as [mirror] bundle_keys would say
    key = public_key_text(load_or_create(work / "source" / "mirror.key"))
    samples: dict[str, list[float]] = {"export": [], "import": [], "cp": [], "cp+sync": [],
                                       "cp+sha": []}
    for i in range(-1, runs):  # run -1 warms the page cache and the imports; not counted
        seconds = one_cycle(work, repo, source, key, i)
        if i >= 0:
            for what, value in seconds.items():
                samples[what].append(value)
            note(f"  run {i + 1}: " + ", ".join(f"{w} {size / s / 1e6:.0f} MB/s"
                                                 for w, s in seconds.items()))
    return {"bytes": size, **{w: statistics.median(v) for w, v in samples.items()},
            "samples": samples}


def one_cycle(work: Path, repo: Path, source: dict, key: str, i: int) -> dict[str, float]:
    """One run of each, alternating, each into a fresh folder removed afterwards."""
    bundle, far = work / f"bundle-{i}", work / f"far-{i}"
    copy, synced, checked = work / f"cp-{i}", work / f"cpy-{i}", work / f"cps-{i}"
    seconds = {
        "export": timed(lambda: run([WS, "mirror", "export", f"hf:{REPO}", "--to", bundle,
                                     "--no-progress"], source)),
        "cp": timed(lambda: cp_r(repo, copy)),
        "import": timed(lambda: run([WS, "mirror", "import-bundle", bundle, "--trust", key,
                                     "--no-progress"], clean_env(WEIGHTSWARM_HOME=str(far)))),
        "cp+sha": timed(lambda: cp_r_sha256sum(repo, checked)),
        "cp+sync": timed(lambda: cp_r_sync(repo, synced)),
    }
    for leftover in (bundle, far, copy, synced, checked):
        shutil.rmtree(leftover, ignore_errors=True)
    return seconds


def print_bundle_table(result: dict) -> None:
    size, cp, durable = result["bytes"], result["cp"], result["cp+sync"]
    rows = [("cp -r of the repo's files", cp, "reference"),
            ("cp -r, then sync (fsync) of every copied file", result["cp+sync"], ""),
            ("cp -r, then sha256sum of every copied file", result["cp+sha"], ""),
            ("weightswarm mirror export (bundle folder, no parity)", result["export"], 0.9),
            ("weightswarm mirror import-bundle (every byte verified)", result["import"], 0.8)]
    print(f"| {'what':<56} | {'MB/s':>6} | {'vs cp -r':>8} | {'target':<15} | "
          f"{'vs cp -r + sync':>15} |")
    print(f"|{'-' * 58}|{'-' * 8}|{'-' * 10}|{'-' * 17}|{'-' * 17}|")
    for what, seconds, target in rows:
        if isinstance(target, float):
            target = f">= {target:.2f}x " + ("met" if cp / seconds >= target else "MISSED")
        print(f"| {what:<56} | {size / seconds / 1e6:6.0f} | {cp / seconds:7.2f}x | "
              f"{target:<15} | {durable / seconds:14.2f}x |")
    print("Every run (MB/s): " + "; ".join(
        f"{w} " + " ".join(f"{size / s / 1e6:.0f}" for s in v)
        for w, v in result["samples"].items()))


def print_parity_table(result: dict) -> None:
    size, cp = result["bytes"], result["cp"]
    print(f"parity of one {size / MiB:.0f} MiB volume at {result['percent']:g} % "
          f"({result['recovery_blocks']} recovery blocks of {result['block'] // 1024} KiB, "
          f"{result['parity_bytes'] / MiB:.1f} MiB of .par2 files), par2 "
          f"{par2_version()}")
    print()
    print(f"| {'what':<44} | {'seconds':>7} | {'MB/s':>6} | {'vs cp -r':>8} |")
    print(f"|{'-' * 46}|{'-' * 9}|{'-' * 8}|{'-' * 10}|")
    for what, seconds in (("cp -r of the volume (reference)", cp),
                          (f"protect: par2 create, {result['percent']:g} %", result["protect"]),
                          ("check: par2 verify, no damage", result["verify"])):
        print(f"| {what:<44} | {seconds:7.2f} | {size / seconds / 1e6:6.0f} | "
              f"{seconds / cp:7.2f}x |")
    print("(vs cp -r here is time, not speed: how many cp -r's of the volume each costs)")
    protect, verify, copy = result["runs"]
    print("Every run (s): protect " + " ".join(f"{s:.2f}" for s in protect)
          + "; verify " + " ".join(f"{s:.2f}" for s in verify)
          + "; cp -r " + " ".join(f"{s:.2f}" for s in copy))


def par2_version() -> str:
    out = subprocess.run(["par2", "-V"], capture_output=True, text=True).stdout.strip()
    return out.splitlines()[0] if out else "(unknown version)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=2048, help="the repo [2048]")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--parity-mib", type=int, default=512, help="the volume [512]")
    parser.add_argument("--percent", type=float, default=5.0, help="parity [5]")
    parser.add_argument("--parity-only", action="store_true",
                        help="measure par2 alone, without the bundle commands")
    parser.add_argument("--quick", action="store_true", help="256 MiB / 64 MiB, one run")
    args = parser.parse_args()
    if args.quick:
        args.size_mib, args.parity_mib, args.runs = 256, 64, 1
    find_tools({"par2": "par2", "cp": "coreutils", "sha256sum": "coreutils"})
    with tempfile.TemporaryDirectory(prefix="ws-bench-bundle-") as tmp:
        work = Path(tmp)
        bundles = None if args.parity_only else bundle_cycle(work / "cycle", args.size_mib,
                                                              args.runs)
        costs = parity_cost(work / "parity", args.parity_mib, args.percent, args.runs)
    print(f"{os.cpu_count()} cores, medians of {args.runs} runs, page cache warm")
    print()
    if bundles:
        print(f"a {bundles['bytes'] / MiB:.0f} MiB repo ({SHARDS} shards) across an air gap")
        print()
        print_bundle_table(bundles)
        print()
    print_parity_table(costs)


if __name__ == "__main__":
    with bench_main():
        main()
