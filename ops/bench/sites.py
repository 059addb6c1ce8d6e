"""Benchmark: a site behind a thin link (issue 16). Site A holds the mirror and the tracker
(`weightswarm serve`), site B holds N peers behind an uplink of `--mbit` each way, its LAN
unshaped; network namespaces on this machine (tests/sitelab.py), our real commands inside
(tests/sites.py). The peers of B pull one model at once with `weightswarm pull`, against the
same peers fetching it with the stock client's `snapshot_download` from the mirror (HF_ENDPOINT),
which carries N copies across the uplink.

Per N: bytes that entered B across its uplink per byte of the model (the site router's counters:
every frame, headers included), what the mirror sent per byte (its /metrics: payload), bytes
the peers sent each other on the LAN, and the slowest and median completion (each command's
wall time, start to exit) per the time one copy takes at the uplink's rate. Targets at N = 16:
at most 1.05x the model across the uplink (HTTP: 16x), slowest at most 1.3x the one-copy time.

HTTP carries N copies one after another through the link, so its N-peer run takes N one-copy
times (16 x 107 s for the defaults): for N > 1 it is run for `--http-seconds` and its time
projected from the rate it reached, marked so in the table.

Where the kernel has sch_netem the uplinks also get `--delay-ms`, and a second pass runs with
`--loss` percent loss; ours lacks it and the lab says so.

Run (as root): .venv/bin/python ops/bench/sites.py [--size-mib 256] [--mbit 20]
     [--peers 1,4,8,16] [--http-peers 1,16]        (about 20 minutes)
     .venv/bin/python ops/bench/sites.py --quick     (64 MiB, 40 Mbit/s, N = 1, 4: a smoke run)
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchlib import BenchError, bench_main, note

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from swarm import make_repo  # noqa: E402

from helpers import hf_env  # noqa: E402
from sitelab import LabUnavailable, site_lab  # noqa: E402
from sites import HUB, Host, TwoSites  # noqa: E402

REPO = "bench/sites"
MiB = 1024 * 1024

HTTP_PULL = """
import sys
from huggingface_hub import snapshot_download
snapshot_download(sys.argv[1])
"""


@dataclass
class Row:
    way: str
    n: int
    wan: float
    mirror: float
    lan: float
    slowest: float
    median: float
    projected: bool = False


def egress(sites: TwoSites) -> float:
    """The mirror's payload bytes sent so far, every way."""
    from prometheus_client.parser import text_string_to_metric_families

    text = sites.lab.fetch(sites.lab.host_ns("a", HUB), f"{sites.mirror_url}/metrics").decode()
    return sum(s.value for family in text_string_to_metric_families(text)
               for s in family.samples if s.name == "weightswarm_mirror_egress_bytes_total")


class Counters:
    """The uplink's, the LAN's and the mirror's counts at one moment."""

    def __init__(self, sites: TwoSites):
        self.wan_in, self.wan_out = sites.lab.wan_bytes("b")
        self.lan = sites.lab.lan_bytes("b")
        self.mirror = egress(sites)

    def since(self, before: Counters, size: int) -> tuple[float, float, float]:
        lan = (self.lan - before.lan) - (self.wan_out - before.wan_out)
        return ((self.wan_in - before.wan_in) / size, (self.mirror - before.mirror) / size,
                lan / size)


def fresh_hosts(sites: TwoSites, root: Path, n: int) -> list[str]:
    hosts = sites.hosts[:n]
    sites.peers = {h: Host(h, root / h) for h in sites.hosts}
    return hosts


def swarm_run(sites: TwoSites, root: Path, n: int, size: int, one_copy: float) -> Row:
    hosts = fresh_hosts(sites, root, n)
    before = Counters(sites)
    outcomes = sites.pull_all(hosts, timeout=max(600, 20 * one_copy))
    for outcome in outcomes:
        outcome.json  # noqa: B018  (raises with the pull's log if it failed)
    time.sleep(1.5)  # the mirror's counters of libtorrent's bytes are read once a second
    wan, mirror, lan = Counters(sites).since(before, size)
    times = [o.seconds for o in outcomes]
    return Row("swarm", n, wan, mirror, lan, max(times) / one_copy,
               statistics.median(times) / one_copy)


def http_run(sites: TwoSites, root: Path, n: int, size: int, one_copy: float,
             box: float) -> Row:
    """`snapshot_download` at n hosts at once; for n > 1 stopped after `box` seconds and
    the completion projected from the bytes moved (the link is shared evenly: every copy
    ends together)."""
    hosts = fresh_hosts(sites, root, n)
    before = Counters(sites)
    start = time.monotonic()
    procs = []
    for host in hosts:
        peer = sites.peers[host]
        peer.root.mkdir(parents=True)
        env = hf_env(sites.mirror_url, peer.cache)
        procs.append(sites.lab.popen(sites.lab.host_ns("b", host),
                                     [sys.executable, "-c", HTTP_PULL, REPO], env=env))
    limit = None if n == 1 else box
    times = _wait_all(procs, start, limit)
    after = Counters(sites)
    wan, mirror, lan = after.since(before, size)
    if limit is None:
        return Row("http", n, wan, mirror, lan, max(times) / one_copy,
                   statistics.median(times) / one_copy)
    # n copies at the rate the uplink carried (the mirror counts a response when it ends)
    elapsed = time.monotonic() - start
    projected = elapsed * n / max(wan, 1e-9) / one_copy
    return Row("http", n, float(n), float(n), lan, projected, projected, projected=True)


def _wait_all(procs, start: float, limit: float | None) -> list[float]:
    times = []
    for proc in procs:
        left = None if limit is None else max(0.1, start + limit - time.monotonic())
        try:
            proc.wait(timeout=left)
            if proc.returncode != 0:
                raise BenchError(f"snapshot_download exited {proc.returncode}")
            times.append(time.monotonic() - start)
        except Exception:
            if limit is None:
                raise
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return times


def table(rows: list[Row], args, size: int, one_copy: float, notes: list[str]) -> str:
    lines = [f"Site B behind {args.mbit:g} Mbit/s, a {size / MiB:.0f} MiB model (one copy: "
             f"{one_copy:.0f} s at that rate); N peers of B at once.", "",
             "| way | N | across the uplink / model | mirror sent / model | LAN / model "
             "| slowest / one copy | median / one copy |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        mark = " (projected)" if r.projected else ""
        across = f"{r.wan:.0f}x (N copies)" if r.projected else f"{r.wan:.3f}x"
        sent = f"{r.mirror:.0f}x" if r.projected else f"{r.mirror:.3f}x"
        lines.append(f"| {r.way} | {r.n} | {across} | {sent} | {r.lan:.2f}x | "
                     f"{r.slowest:.2f}x{mark} | {r.median:.2f}x{mark} |")
    lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines)


def one_pass(args, root: Path, model: Path, size: int, loss: float,
             hosts: list[str]) -> tuple[list[Row], list[str], bool]:
    """Every run of one lab: (rows, the lab's notes, whether it had netem)."""
    one_copy = size * 8 / (args.mbit * 1e6)
    peers = [int(n) for n in args.peers.split(",")]
    http_peers = [int(n) for n in args.http_peers.split(",") if n] if not loss else []
    with site_lab(delay_ms=args.delay_ms, loss=loss) as lab:
        sites = TwoSites(lab, root / f"loss-{loss:g}", hosts, args.mbit, repo=REPO,
                         model=model)
        sites.build()
        sites.start_mirror()
        rows = []
        for n in peers:
            note(f"swarm, N = {n}, loss {loss:g} % ...")
            rows.append(swarm_run(sites, sites.root / f"swarm-{n}", n, size, one_copy))
            note(f"  {rows[-1]}")
        for n in http_peers:
            note(f"http, N = {n} ...")
            rows.append(http_run(sites, sites.root / f"http-{n}", n, size, one_copy,
                                 args.http_seconds))
            note(f"  {rows[-1]}")
        return rows, list(lab.notes), lab.netem


def run(args) -> None:
    peers = [int(n) for n in args.peers.split(",")]
    http_peers = [int(n) for n in args.http_peers.split(",") if n]
    hosts = [f"p{i}" for i in range(max(peers + http_peers))]
    with tempfile.TemporaryDirectory(prefix="ws-sites-") as tmp:
        root = Path(tmp)
        model = root / "model"
        size = make_repo(model, args.size_mib * MiB)
        one_copy = size * 8 / (args.mbit * 1e6)
        try:
            rows, notes, netem = one_pass(args, root, model, size, 0.0, hosts)
            if netem:
                lossy, _, _ = one_pass(args, root, model, size, args.loss, hosts)
                rows += [dataclasses.replace(r, way=f"swarm, {args.loss:g} % loss")
                         for r in lossy]
            else:
                notes.append("no second pass with loss: it needs sch_netem")
        except LabUnavailable as e:
            raise BenchError(f"network namespaces cannot be made here ({e}): run as root "
                             "with iproute2 installed") from None
    print(table(rows, args, size, one_copy, notes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--mbit", type=float, default=20)
    parser.add_argument("--peers", default="1,4,8,16")
    parser.add_argument("--http-peers", default="1,16")
    parser.add_argument("--http-seconds", type=float, default=60,
                        help="how long an HTTP run of N > 1 goes before its time is projected")
    parser.add_argument("--delay-ms", type=float, default=40,
                        help="one-way delay on the uplinks, where netem exists")
    parser.add_argument("--loss", type=float, default=1,
                        help="loss, percent, of the second pass, where netem exists")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.size_mib, args.mbit, args.peers, args.http_peers = 64, 40, "1,4", "1,4"
        args.http_seconds = 15
    started = time.monotonic()
    run(args)
    note(f"done in {(time.monotonic() - started) / 60:.1f} min")


if __name__ == "__main__":
    with bench_main():
        main()
