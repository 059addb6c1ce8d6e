"""The tracker's settings (`[tracker]`), a frozen dataclass the CLI builds and passes down, and
the CIDR map of sites and regions that peer selection ranks by."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from functools import lru_cache


@dataclass(frozen=True)
class Site:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    site: str
    region: str | None


@dataclass(frozen=True)
class TrackerConfig:
    host: str = "127.0.0.1"
    port: int = 6969
    #: seconds a peer is told to wait between announces, and the least it may
    interval: int = 1800
    min_interval: int = 60
    #: a peer not heard from for this long is dropped
    peer_ttl: int = 3900
    sites: tuple[Site, ...] = ()
    #: the mirrors' BitTorrent endpoints, "ip:port" (until mirrors register themselves)
    mirrors: frozenset[str] = frozenset()
    keys_file: str | None = None
    trusted_proxies: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    max_swarms: int = 1_000_000
    max_peers: int = 5_000_000
    private_hashes: frozenset[bytes] = field(default_factory=frozenset)


def parse_sites(raw) -> tuple[Site, ...]:
    """`[[tracker.sites]]` tables of cidr, site and (optional) region, most specific first."""
    if not isinstance(raw, list):
        raise ValueError("[[tracker.sites]] must be a list of tables")
    sites = []
    for entry in raw:
        if not isinstance(entry, dict) or not isinstance(entry.get("cidr"), str) \
                or not isinstance(entry.get("site"), str):
            raise ValueError(f"a [[tracker.sites]] table needs cidr and site: {entry!r}")
        try:
            network = ipaddress.ip_network(entry["cidr"], strict=False)
        except ValueError as e:
            raise ValueError(f"tracker.sites: {e}") from None
        region = entry.get("region")
        sites.append(Site(network, entry["site"], str(region) if region else None))
    return tuple(sorted(sites, key=lambda s: s.network.prefixlen, reverse=True))


class Locality:
    """Which site and region an address is in, by the CIDR map (longest prefix wins)."""

    def __init__(self, sites: tuple[Site, ...]):
        self.sites = sites
        self.where = lru_cache(maxsize=65536)(self._where)

    def _where(self, ip: str) -> tuple[str | None, str | None]:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return None, None
        for s in self.sites:
            if address.version == s.network.version and address in s.network:
                return s.site, s.region
        return None, None
