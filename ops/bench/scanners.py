"""Which pickle scanner (issue 20): picklescan, fickling and modelscan on the same corpus
(tests/scancorpus.py: pickles that run `os.system`, `subprocess`, `eval`, `exec` or
`getattr(__import__(...))` through `__reduce__`, protocols 0 to 5, raw and inside torch.save
zips, an object `.npy`; and benign ones: OrderedDicts, plain dicts, a torch state dict of
tensors, a numpy array), each scanner's newest release installed into a venv of its own in a
temp folder (from the package registry), each file scanned as a user would scan it:
picklescan's `scan_file_path`, fickling's `is_likely_safe`, modelscan's CLI with a JSON report.
A file is flagged when the scanner reports it unsafe; "unscanned" when it skipped it or failed.

Then what scanning costs an import: `Importer.import_path` of a repo with a `--import-mib`
MiB `pytorch_model.bin` (a raw pickle of the legacy format, then a torch.save zip) and a config,
in this process, with the scan at publication against the same import with it left out,
alternating `--runs` times in fresh homes; medians.

Run: .venv/bin/python ops/bench/scanners.py [--import-mib 1024] [--runs 3] [--skip-compare]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import scancorpus  # noqa: E402
from benchlib import BenchError, bench_main, note  # noqa: E402

#: each with numpy, which .npy scanning needs (the mirror has it)
CANDIDATES = {"picklescan": ["picklescan", "numpy"],
              "fickling": ["fickling", "typing_extensions", "numpy"],
              "modelscan": ["modelscan", "numpy"]}

#: run in a candidate's venv: argv = scanner, files...; prints {file: [verdict, detail, ms]}
RUNNER = r"""
import json, os, subprocess, sys, time
scanner, files = sys.argv[1], sys.argv[2:]
out = {}
for path in files:
    start = time.perf_counter()
    try:
        if scanner == "picklescan":
            from picklescan.scanner import scan_file_path
            r = scan_file_path(path)
            verdict = "flagged" if r.infected_files else "passed"
            detail = sorted({f"{g.module}.{g.name}" for g in r.globals
                             if g.safety.name == "Dangerous"})
        elif scanner == "fickling":
            import fickling
            verdict = "passed" if fickling.is_likely_safe(path) else "flagged"
            detail = []
        else:
            bin_dir = os.path.dirname(sys.executable)
            run = subprocess.run([os.path.join(bin_dir, "modelscan"), "-p", path, "-r", "json"],
                                 capture_output=True, text=True)
            text = run.stdout.replace("\n", "")
            body = json.loads(text[text.index('{"summary"'):])
            if not body["summary"]["scanned"]["total_scanned"]:
                verdict, detail = "unscanned", [e.get("description", "")[:60]
                                                for e in body["errors"]]
            else:
                verdict = "flagged" if body["summary"]["total_issues"] else "passed"
                detail = [i.get("module", "") + "." + i.get("operator", "")
                          for i in body["issues"]]
    except Exception as e:
        verdict, detail = "unscanned", [f"{type(e).__name__}: {e}"[:60]]
    out[path] = [verdict, detail, (time.perf_counter() - start) * 1000]
print(json.dumps(out))
"""


def install(name: str, packages: list[str], folder: Path) -> Path:
    note(f"installing {name} into its own venv")
    venv.create(folder, with_pip=True)
    python = folder / "bin" / "python"
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", *packages],
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise BenchError(f"could not install {name}: {done.stderr[-400:]}")
    return python


def version(python: Path, name: str) -> str:
    done = subprocess.run([str(python), "-c", "import importlib.metadata as m, sys; "
                           f"print(m.version({name!r}))"], capture_output=True, text=True)
    return done.stdout.strip() or "?"


def compare(work: Path) -> None:
    corpus = scancorpus.build(work / "corpus")
    files = [str(s.path) for s in corpus.values()]
    rows, details = [], []
    for name, packages in CANDIDATES.items():
        python = install(name, packages, work / name)
        done = subprocess.run([str(python), "-c", RUNNER, name, *files],
                              capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise BenchError(f"{name} did not run: {done.stderr[-400:]}")
        verdicts = json.loads(done.stdout.strip().splitlines()[-1])
        evil = [s for s in corpus.values() if s.malicious]
        good = [s for s in corpus.values() if not s.malicious]
        caught = sum(verdicts[str(s.path)][0] == "flagged" for s in evil)
        false = sum(verdicts[str(s.path)][0] == "flagged" for s in good)
        skipped = sum(v[0] == "unscanned" for v in verdicts.values())
        ms = sorted(v[2] for v in verdicts.values())[len(verdicts) // 2]
        rows.append(f"| {name} {version(python, name)} | {caught} of {len(evil)} | "
                    f"{false} of {len(good)} | {skipped} | {ms:.1f} |")
        for sample_name, sample in corpus.items():
            verdict = verdicts[str(sample.path)]
            if (verdict[0] == "flagged") != sample.malicious:
                details.append(f"- {name}: {sample_name} ({sample.what}): {verdict[0]} "
                               f"{', '.join(verdict[1])}".rstrip())
    print(f"pickle scanners on tests/scancorpus.py ({len(corpus)} files)")
    print()
    print("| scanner | malicious flagged | benign flagged | unscanned | median ms a file |")
    print("|---|---:|---:|---:|---:|")
    print("\n".join(rows))
    print()
    print("Where a scanner was wrong:")
    print("\n".join(details) or "- nowhere")
    print()


def repo(folder: Path, size: int, kind: str) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bench"}')
    data = os.urandom(size)
    if kind == "raw":
        with open(folder / "pytorch_model.bin", "wb") as f:
            pickle.dump({"layer.weight": data}, f, protocol=4)
    else:
        with zipfile.ZipFile(folder / "pytorch_model.bin", "w") as z:
            z.writestr("archive/data.pkl", pickle.dumps({"layer.weight": 0}, protocol=2))
            z.writestr("archive/data/0", data)
    return folder


def imports(work: Path, size: int, runs: int) -> None:
    from mirror import snapshots
    from mirror.catalog import Catalog
    from mirror.importer import Importer
    from peer.store import BlobStore

    scanning = snapshots.scan_files

    def once(folder: Path, scan: bool, k: int) -> float:
        home = work / f"home-{k}"
        catalog = Catalog(home / "catalog.sqlite")
        snapshots.scan_files = scanning if scan else (lambda *args: {})
        try:
            started = time.perf_counter()
            Importer(catalog, BlobStore(home / "store")).import_path(folder, repo_id="b/m")
            return time.perf_counter() - started
        finally:
            snapshots.scan_files = scanning
            catalog.close()
            subprocess.run(["rm", "-rf", str(home)], check=True)

    print(f"import of a {size >> 20} MiB pytorch_model.bin, scanning against not, median of "
          f"{runs} alternating runs")
    print()
    print("| file | import s, no scan | import s, scanned | ratio (target <= 1.10x) |")
    print("|---|---:|---:|---:|")
    k = 0
    for kind in ("raw", "zip"):
        folder = repo(work / f"repo-{kind}", size, kind)
        seconds: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(runs):
            for scan in (False, True):
                seconds[scan].append(once(folder, scan, k := k + 1))
        plain, scanned = (statistics.median(seconds[s]) for s in (False, True))
        verdict = "met" if scanned / plain <= 1.10 else "MISSED"
        label = "raw pickle (legacy torch.save)" if kind == "raw" else "torch.save zip"
        print(f"| {label} | {plain:.2f} | {scanned:.2f} | {scanned / plain:.2f}x {verdict} |")
        subprocess.run(["rm", "-rf", str(folder)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--import-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-compare", action="store_true")
    args = parser.parse_args()
    with bench_main(), tempfile.TemporaryDirectory(prefix="ws-bench-scan-") as tmp:
        if not args.skip_compare:
            compare(Path(tmp))
        imports(Path(tmp), args.import_mib << 20, args.runs)


if __name__ == "__main__":
    main()
