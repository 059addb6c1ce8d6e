"""Benchmark: how long the mirror takes to render its pages (issue 21's "fast": a repo page
and a search page under 20 ms, for a repo of 1,000 files in a catalog of 100,000 repos).

A catalog of `--repos` synthetic repos (ops/bench/index.py's network, filled in bulk) and one
repo of `--files` files with a model card are made in a temp folder; then each page is
rendered `--runs` times in this process, uncached (the mirror keeps a rendered page until the
catalog changes: this is the first view after a change), and the medians printed. The HTTP
rates of the pages against the repo-info JSON are rows of ops/bench/serve.py.

Run: .venv/bin/python ops/bench/pages.py [--repos 100000] [--files 1000] [--runs 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchlib import bench_main, note  # noqa: E402
from index import Network, fill_catalog  # noqa: E402

from mirror import pages  # noqa: E402
from mirror.catalog import Catalog  # noqa: E402
from mirror.hfapi import HubService  # noqa: E402
from mirror.importer import Importer  # noqa: E402
from mirror.routes import HubCall  # noqa: E402
from peer import pages as page_kit  # noqa: E402
from peer.store import BlobStore  # noqa: E402

REPO = "bench/thousand-files"
TARGET_MS = 20.0
CARD = """---
license: apache-2.0
library_name: transformers
pipeline_tag: text-generation
tags: [bench, llama]
---
# A repo of many files

""" + "\n".join(f"- item {i}: *some* `markdown` with a [link](https://example.com/{i})"
                for i in range(200))


def make_repo(folder: Path, files: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "README.md").write_text(CARD)
    for i in range(files - 1):
        sub = folder / f"shard-{i // 100:02d}"
        sub.mkdir(exist_ok=True)
        (sub / f"part-{i:04d}.json").write_text(f'{{"part": {i}}}')
    return folder


def timed(runs: int, render) -> list[float]:
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        render()
        out.append((time.perf_counter() - started) * 1000)
    return out


def bench(args, work: Path) -> None:
    note(f"filling a catalog with {args.repos:,} repos")
    path = work / "catalog.sqlite"
    fill_catalog(Network(args.repos, 1), path, list(range(args.repos)))
    catalog, store = Catalog(path), BlobStore(work / "store")
    try:
        note(f"importing {REPO} with {args.files} files")
        Importer(catalog, store).import_path(make_repo(work / "repo", args.files), repo_id=REPO)
        service, base = HubService(catalog, store), "http://mirror.example:8470"
        model = HubCall("huggingface", "", "page", "model")
        repo = HubCall("huggingface", "", "page", "model", REPO)
        folder = HubCall("huggingface", "", "page", "model", REPO, "main", "shard-03")
        cases = [
            (f"repo page, {args.files} files (root: 11 entries)", lambda: pages.repo_page(
                service, repo, base)),
            ("repo page, a folder of 100 files", lambda: pages.repo_page(service, folder, base)),
            ("search page, no query (most downloaded)", lambda: pages.search_page(
                service, model, {}, base)),
            ("search page, 'llama'", lambda: pages.search_page(
                service, model, {"search": "llama"}, base)),
            ("search page, licence filter, by name", lambda: pages.search_page(
                service, model, {"license": "apache-2.0", "sort": "id"}, base)),
            ("search page, page 100", lambda: pages.search_page(
                service, model, {"p": "100"}, base)),
        ]
        page_kit.compile_templates()  # as the mirror does when it starts
        main = HubCall("huggingface", "", "page", "model", REPO, "main")
        first = timed(1, lambda: pages.repo_page(service, main, base))[0]
        kb = len(CARD) // 1024
        rows = [(f"repo page, first view ({kb} kB card, kept at publish)", first, first)]
        catalog.conn.execute("DELETE FROM cards")  # as one published before cards were kept
        pages._card_body.cache_clear()
        unkept = timed(1, lambda: pages.repo_page(service, main, base))[0]
        rows.append(("  for reference: the same card not kept", unkept, unkept))
        for name, render in cases:
            render()  # warm: templates compiled, pages of the catalog in memory
            samples = timed(args.runs, render)
            rows.append((name, statistics.median(samples), sorted(samples)[int(len(samples) * .9)]))
            note(f"  {name}: {rows[-1][1]:.1f} ms")
    finally:
        catalog.close()
    print(f"page renders in process, uncached, {args.runs} runs each, catalog of {args.repos:,} "
          f"repos (plus {REPO})")
    print()
    print(f"| {'page':<52} | median ms | p90 ms | target        |")
    print(f"|{'-' * 54}|-----------|--------|---------------|")
    for name, median, p90 in rows:
        verdict = "" if name.startswith(" ") else "met" if median < TARGET_MS else "MISSED"
        print(f"| {name:<52} | {median:9.1f} | {p90:6.1f} | < {TARGET_MS:.0f} ms {verdict:<6} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repos", type=int, default=100_000)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    with bench_main(), tempfile.TemporaryDirectory(prefix="weightswarm-pages-") as tmp:
        bench(args, Path(tmp))


if __name__ == "__main__":
    main()
