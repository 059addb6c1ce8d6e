"""A network lab for tests with BitTorrent clients nobody here wrote: two network namespaces
joined by a veth pair, one for the mirror and one for the clients, with addresses from
198.18.0.0/15 (RFC 2544's benchmarking range, never routed).

Not loopback: Transmission refuses 127/8 as a peer address, and a veth link has the MTU (1500)
and the µTP and TCP behaviour of a real network card, where loopback has 64 KiB frames.
The namespaces are new and private to one lab, so every port in them is free and nothing a
lab does is seen by the host or by another test running at the same time.

`Lab.close()` kills every process left in the two namespaces (all of them started by the
lab, as nothing else runs there) and deletes the namespaces, which takes the veth pair with
them. `lab()` does that on the way out, whatever happened inside.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

#: the mirror's and the clients' addresses, on either end of the veth pair
MIRROR_IP = "198.18.0.1"
CLIENT_IP = "198.18.0.2"
PREFIX = 24


class LabUnavailable(Exception):
    """`ip netns` is not permitted here (not root, no CAP_NET_ADMIN, no iproute2)."""


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@dataclass
class Lab:
    token: str
    #: the processes started with `popen`, so that a log can be read when a test fails
    started: list[subprocess.Popen] = field(default_factory=list)

    @property
    def mirror_ns(self) -> str:
        return f"ws-{self.token}-mirror"

    @property
    def client_ns(self) -> str:
        return f"ws-{self.token}-client"

    def create(self) -> None:
        try:
            _ip("netns", "add", self.mirror_ns)
        except (OSError, FileNotFoundError, subprocess.TimeoutExpired) as e:
            raise LabUnavailable(str(e)) from e
        _ip("netns", "add", self.client_ns)
        # Both ends are made inside the namespaces: no interface name on the host to collide.
        _ip("-n", self.mirror_ns, "link", "add", "m0", "type", "veth", "peer", "name", "c0",
            "netns", self.client_ns)
        for ns, dev, address in ((self.mirror_ns, "m0", MIRROR_IP),
                                 (self.client_ns, "c0", CLIENT_IP)):
            _ip("-n", ns, "addr", "add", f"{address}/{PREFIX}", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")  # a client's own RPC port (Transmission)

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

    def fetch(self, url: str, timeout: float = 10) -> bytes:
        """GET `url` from the clients' side, as a client there would."""
        done = self.run(self.client_ns, ["curl", "-sSf", "--max-time", str(timeout), url],
                        capture_output=True, timeout=timeout + 5)
        if done.returncode != 0:
            raise OSError(f"GET {url}: {done.stderr.decode(errors='replace').strip()}")
        return done.stdout

    def pids(self, ns: str) -> list[int]:
        done = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                              timeout=10)
        return [int(p) for p in done.stdout.split()]

    def kill_all(self, ns: str) -> None:
        """Stop every process in `ns`: SIGTERM, then SIGKILL for what is left after 5 s."""
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            for pid in self.pids(ns):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            while self.pids(ns) and time.monotonic() < deadline:
                self._reap()
                time.sleep(0.05)
        self._reap()

    def _reap(self) -> None:
        for process in self.started:
            process.poll()

    def close(self) -> None:
        for ns in (self.client_ns, self.mirror_ns):
            if os.path.exists(f"/run/netns/{ns}"):
                self.kill_all(ns)
                _ip("netns", "del", ns)


@contextmanager
def lab() -> Iterator[Lab]:
    """A new lab; everything in it killed and both namespaces deleted on the way out.
    Raises LabUnavailable when network namespaces cannot be made here."""
    made = Lab(secrets.token_hex(3))
    try:
        made.create()
        yield made
    finally:
        made.close()
