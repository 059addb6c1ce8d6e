"""A network lab for tests with BitTorrent clients nobody here wrote: two network namespaces
joined by a veth pair, one for the mirror and one for the clients, with addresses from
198.18.0.0/15 (RFC 2544's benchmarking range, never routed). The namespaces, their processes
and their removal are tests/sitelab.py's (`Namespaces`), which builds whole sites.

Not loopback: Transmission refuses 127/8 as a peer address, and a veth link has the MTU (1500)
and the µTP and TCP behaviour of a real network card, where loopback has 64 KiB frames.
The namespaces are new and private to one lab, so every port in them is free and nothing a
lab does is seen by the host or by another test running at the same time.

`lab()` kills every process left in the two namespaces and deletes them (and the veth pair
with them) on the way out, whatever happened inside.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sitelab import LabUnavailable, Namespaces, ip, sweep

__all__ = ["CLIENT_IP", "MIRROR_IP", "Lab", "LabUnavailable", "lab"]

#: the mirror's and the clients' addresses, on either end of the veth pair
MIRROR_IP = "198.18.0.1"
CLIENT_IP = "198.18.0.2"
PREFIX = 24


@dataclass
class Lab(Namespaces):
    @property
    def mirror_ns(self) -> str:
        return self.name("mirror")

    @property
    def client_ns(self) -> str:
        return self.name("client")

    def create(self) -> None:
        self.add("mirror")
        self.add("client")
        # Both ends are made inside the namespaces: no interface name on the host to collide.
        ip("-n", self.mirror_ns, "link", "add", "m0", "type", "veth", "peer", "name", "c0",
           "netns", self.client_ns)
        for ns, dev, address in ((self.mirror_ns, "m0", MIRROR_IP),
                                 (self.client_ns, "c0", CLIENT_IP)):
            ip("-n", ns, "addr", "add", f"{address}/{PREFIX}", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")

    def fetch(self, url: str, timeout: float = 10) -> bytes:
        """GET `url` from the clients' side, as a client there would."""
        return super().fetch(self.client_ns, url, timeout)


@contextmanager
def lab() -> Iterator[Lab]:
    """A new lab; everything in it killed and both namespaces deleted on the way out.
    Raises LabUnavailable when network namespaces cannot be made here."""
    sweep()
    made = Lab()
    try:
        made.create()
        yield made
    finally:
        made.close()
