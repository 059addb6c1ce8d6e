"""A lab of sites on one machine, for the tests and benchmarks of thin links (issue 16): every
host a Linux network namespace of its own, each site's hosts on a bridge (their LAN,
unshaped), each site's router joined to one WAN router by an uplink with `tc` on both of its
directions. Our real commands run inside with `ip netns exec`.

    host a1 ─┐                                 ┌─ host b1
    host a2 ─┤ lan0 [site a] wan0 ══ u1 [wan] u2 ══ wan0 [site b] lan0 ├─ host b2
                     198.18.1.0/24   198.19.k.0/30    198.18.2.0/24

Addresses come from 198.18.0.0/15 (RFC 2544's benchmarking range, never routed): site k's
LAN is 198.18.k.0/24 (its router .1, its hosts from .11), its uplink 198.19.k.0/30.

The uplink's rate is a token bucket (`tbf`) on the site router's `wan0` (what leaves the site)
and on the WAN router's end (what enters it). Delay and loss need `sch_netem`, which the
kernels of our machines lack: where it is missing the lab says so (`netem`, `notes`) and runs
rate-only, never failing for it. `wan_bytes` reads the site router's interface counters, so
what crossed a link is the kernel's count, not ours; `cut` and `mend` set the uplink down and
up.

Every namespace is named `ws-<pid>-<token>-…` after the process that made it. `close()`
kills every process in the lab's namespaces (all started by the lab: nothing else runs
there) and deletes them, which takes their links with them; `site_lab()` does so on the way
out whatever happened inside, and `sweep()`, run as each lab is made, removes what a lab
whose process died (`kill -9`, a crashed test run) left behind.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from peer.atomic import pid_alive

#: the names of every lab's namespaces, with the pid of the process that made them
NAME = re.compile(r"^ws-(\d+)-[0-9a-f]+-")
#: the first host address of a site's LAN
FIRST_HOST = 11
#: a token bucket's depth, bytes: a few packets, as a real link's buffer holds
BURST = 64 * 1024
#: how long a packet may wait in the bucket before it is dropped, ms (a router's queue)
LATENCY_MS = 200


class LabUnavailable(Exception):
    """`ip netns` is not permitted here (not root, no CAP_NET_ADMIN, no iproute2)."""


def ip(*args: str) -> str:
    """`ip ARGS`, its output; OSError with ip's own message when it fails."""
    try:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    except FileNotFoundError as e:
        raise LabUnavailable("ip (iproute2) is not installed") from e
    if done.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def namespaces() -> list[str]:
    """Every network namespace on the machine, by name."""
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


def pids(ns: str) -> list[int]:
    done = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                          timeout=10)
    return [int(p) for p in done.stdout.split()]


def sweep() -> list[str]:
    """Remove the namespaces (and their processes) of labs whose process is gone; their
    names."""
    gone = []
    for ns in namespaces():
        m = NAME.match(ns)
        if m and not pid_alive(int(m.group(1))):
            remove(ns)
            gone.append(ns)
    return gone


def kill_all(ns: str, reap=lambda: None) -> None:
    """Stop every process in `ns`: SIGTERM, then SIGKILL for what is left after 5 s."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        for pid in pids(ns):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while pids(ns) and time.monotonic() < deadline:
            reap()
            time.sleep(0.05)
    reap()


def remove(ns: str, reap=lambda: None) -> None:
    if os.path.exists(f"/run/netns/{ns}"):
        kill_all(ns, reap)
        ip("netns", "del", ns)


def has_netem() -> bool:
    """Whether this kernel has `sch_netem` (tried on a veth link in a namespace of its own)."""
    ns = f"ws-{os.getpid()}-{secrets.token_hex(3)}-netem"
    ip("netns", "add", ns)
    try:
        ip("-n", ns, "link", "add", "t0", "type", "veth", "peer", "name", "t1")
        done = subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "t0",
                               "root", "netem", "delay", "1ms"], capture_output=True, timeout=10)
        return done.returncode == 0
    finally:
        ip("netns", "del", ns)


@dataclass
class Namespaces:
    """Namespaces made by one lab, and the processes it started in them."""

    token: str = field(default_factory=lambda: f"{os.getpid()}-{secrets.token_hex(3)}")
    made: list[str] = field(default_factory=list)
    #: the processes started with `popen`, so that a log can be read when a test fails
    started: list[subprocess.Popen] = field(default_factory=list)

    def name(self, role: str) -> str:
        return f"ws-{self.token}-{role}"

    def add(self, role: str) -> str:
        ns = self.name(role)
        try:
            ip("netns", "add", ns)
        except OSError as e:
            raise LabUnavailable(str(e)) from e
        self.made.append(ns)
        ip("-n", ns, "link", "set", "lo", "up")
        return ns

    def argv(self, ns: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def run(self, ns: str, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        """`argv` inside namespace `ns`, to completion (`subprocess.run`'s arguments)."""
        return subprocess.run(self.argv(ns, argv), **kwargs)

    def popen(self, ns: str, argv: list[str], **kwargs) -> subprocess.Popen:
        """`argv` started inside namespace `ns` (`ip netns exec` execs it: same pid)."""
        process = subprocess.Popen(self.argv(ns, argv), **kwargs)
        self.started.append(process)
        return process

    def fetch(self, ns: str, url: str, timeout: float = 10) -> bytes:
        """GET `url` from inside `ns`, as a client there would."""
        done = self.run(ns, ["curl", "-sSf", "--max-time", str(timeout), url],
                        capture_output=True, timeout=timeout + 5)
        if done.returncode != 0:
            raise OSError(f"GET {url}: {done.stderr.decode(errors='replace').strip()}")
        return done.stdout

    def kill_all(self, ns: str) -> None:
        kill_all(ns, self._reap)

    def _reap(self) -> None:
        for process in self.started:
            process.poll()

    def close(self) -> None:
        for ns in reversed(self.made):
            remove(ns, self._reap)
        self.made.clear()


@dataclass
class Site:
    name: str
    number: int
    hosts: list[str]
    #: the uplink's rate each way, Mbit/s (None: unshaped)
    mbit: float | None

    def ip(self, host: str) -> str:
        return f"198.18.{self.number}.{FIRST_HOST + self.hosts.index(host)}"

    @property
    def network(self) -> str:
        return f"198.18.{self.number}.0/24"


@dataclass
class SiteLab(Namespaces):
    """Sites joined by a WAN; `add_site` makes one, `host_ns`/`ip` name its hosts."""

    sites: dict[str, Site] = field(default_factory=dict)
    #: sch_netem is there: uplinks get their delay and loss
    netem: bool = False
    notes: list[str] = field(default_factory=list)
    delay_ms: float = 0
    loss: float = 0

    def create(self, delay_ms: float = 0, loss: float = 0) -> None:
        self.delay_ms, self.loss = delay_ms, loss
        self.wan = self.add("wan")
        self._sysctl(self.wan, "net.ipv4.ip_forward=1")
        if delay_ms or loss:
            self.netem = has_netem()
            if not self.netem:
                lacking = [f"no {delay_ms:g} ms delay"] if delay_ms else []
                lacking += [f"no {loss:g} % loss"] if loss else []
                self.notes.append("this kernel has no sch_netem: the uplinks run rate-only "
                                  f"({', '.join(lacking)})")

    def _sysctl(self, ns: str, setting: str) -> None:
        self.run(ns, ["sysctl", "-qw", setting], check=True, capture_output=True, timeout=10)

    def router_ns(self, site: str) -> str:
        return self.name(site)

    def host_ns(self, site: str, host: str) -> str:
        return self.name(f"{site}-{host}")

    def ip(self, site: str, host: str) -> str:
        return self.sites[site].ip(host)

    def add_site(self, name: str, hosts: list[str], mbit: float | None = None) -> Site:
        site = self.sites[name] = Site(name, len(self.sites) + 1, list(hosts), mbit)
        k = site.number
        router = self.add(name)
        self._sysctl(router, "net.ipv4.ip_forward=1")
        ip("-n", router, "link", "add", "lan0", "type", "bridge", "mcast_snooping", "0")
        ip("-n", router, "addr", "add", f"198.18.{k}.1/24", "dev", "lan0")
        ip("-n", router, "link", "set", "lan0", "up")
        # The uplink: wan0 in the site's router, u<k> in the WAN router.
        ip("-n", router, "link", "add", "wan0", "type", "veth", "peer", "name", f"u{k}",
           "netns", self.wan)
        ip("-n", router, "addr", "add", f"198.19.{k}.2/30", "dev", "wan0")
        ip("-n", self.wan, "addr", "add", f"198.19.{k}.1/30", "dev", f"u{k}")
        self.mend(name)
        for ns, dev in ((router, "wan0"), (self.wan, f"u{k}")):
            self._shape(ns, dev, mbit)
        for i, host in enumerate(site.hosts):
            self._add_host(site, host, f"h{i}")
        return site

    def _add_host(self, site: Site, host: str, port: str) -> None:
        router, ns = self.router_ns(site.name), self.add(f"{site.name}-{host}")
        ip("-n", router, "link", "add", port, "type", "veth", "peer", "name", "eth0",
           "netns", ns)
        ip("-n", router, "link", "set", port, "master", "lan0", "up")
        ip("-n", ns, "addr", "add", f"{site.ip(host)}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", ns, "route", "add", "default", "via", f"198.18.{site.number}.1")

    def _shape(self, ns: str, dev: str, mbit: float | None) -> None:
        if self.netem:
            rule = ["netem", "delay", f"{self.delay_ms}ms", "loss", f"{self.loss}%"]
            if mbit:
                rule += ["rate", f"{mbit}mbit"]
        elif mbit:
            rule = ["tbf", "rate", f"{mbit}mbit", "burst", str(BURST),
                    "latency", f"{LATENCY_MS}ms"]
        else:
            return
        self.run(ns, ["tc", "qdisc", "replace", "dev", dev, "root", *rule], check=True,
                 capture_output=True, timeout=10)

    def cut(self, site: str) -> None:
        """Take `site`'s uplink down, both ends: nothing crosses until `mend`."""
        k = self.sites[site].number
        ip("-n", self.router_ns(site), "link", "set", "wan0", "down")
        ip("-n", self.wan, "link", "set", f"u{k}", "down")

    def mend(self, site: str) -> None:
        """Bring `site`'s uplink (back) up, with the routes across it."""
        k = self.sites[site].number
        router = self.router_ns(site)
        ip("-n", router, "link", "set", "wan0", "up")
        ip("-n", self.wan, "link", "set", f"u{k}", "up")
        ip("-n", router, "route", "replace", "default", "via", f"198.19.{k}.1")
        ip("-n", self.wan, "route", "replace", f"198.18.{k}.0/24", "via", f"198.19.{k}.2")

    def wan_bytes(self, site: str) -> tuple[int, int]:
        """(into, out of) `site` across its uplink so far, from its router's counters of
        `wan0`: every byte of every frame, headers and retransmissions included."""
        (link,) = json.loads(ip("-n", self.router_ns(site), "-s", "-j", "link", "show",
                                "dev", "wan0"))
        stats = link["stats64"]
        return stats["rx"]["bytes"], stats["tx"]["bytes"]

    def lan_bytes(self, site: str) -> int:
        """Bytes the site's hosts sent into their LAN so far (each host's `eth0`), those
        that went on to the WAN included."""
        total = 0
        for host in self.sites[site].hosts:
            (link,) = json.loads(ip("-n", self.host_ns(site, host), "-s", "-j", "link", "show",
                                    "dev", "eth0"))
            total += link["stats64"]["tx"]["bytes"]
        return total


@contextmanager
def site_lab(delay_ms: float = 0, loss: float = 0) -> Iterator[SiteLab]:
    """A new lab (add its sites with `add_site`); everything in it killed and every namespace
    deleted on the way out. Raises LabUnavailable when namespaces cannot be made here."""
    sweep()
    made = SiteLab()
    try:
        made.create(delay_ms, loss)
        yield made
    finally:
        made.close()
