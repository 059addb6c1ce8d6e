"""The tracker's settings (`[tracker]`, `[[tracker.sites]]`), declared beside the frozen
dataclass the CLI builds and passes down, and the CIDR map of sites and regions that peer
selection ranks by."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from peer.config import REQUIRED, Section, Setting, Tables, parse_tables, port, positive
from peer.settings import HttpLimits, http_limits, http_settings

from .swarm import PLACE_BITS, REGION_SHIFT, SITE_SHIFT


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
    #: the table's bounds: both full (in the costliest mix of swarm sizes), the tracker's RSS
    #: was 726 MiB, so it fits in 1 GiB (tracker/swarm.py; the README's tracker benchmark)
    max_swarms: int = 1_000_000
    max_peers: int = 5_000_000
    private_hashes: frozenset[bytes] = field(default_factory=frozenset)
    http: HttpLimits = HttpLimits()
    #: the home folder (Config.home): the index keeps index.sqlite and index.key there; None
    #: (a tracker built without one) runs no index. Not a setting: left out of comparisons
    home: Path | None = field(default=None, compare=False)
    #: run the federated index (registration, feed polling) beside the tracker
    index: bool = True
    #: accepted mirror keys, one `ed25519:<hex> [name]` a line (tracker/index.py)
    mirror_keys: str | None = None
    #: seconds between polls of every registered mirror's catalog feed
    poll_interval: float = 60.0
    #: mirror keys accepted besides the file's: the all-in-one node's own mirror. Not a
    #: setting: left out of comparisons
    own_keys: frozenset[str] = field(default=frozenset(), compare=False)


def _numbered(names) -> dict[str, int]:
    """Each distinct name a number from 1 (0 is none), within a peer's PLACE_BITS."""
    numbers: dict[str, int] = {}
    for name in names:
        numbers.setdefault(name, len(numbers) + 1)
    if len(numbers) > PLACE_BITS:
        raise ValueError(f"more than {PLACE_BITS} sites or regions")
    return numbers


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError as e:
        raise ValueError(f"is not a network: {e}") from None


def _info_hashes(texts: list[str]) -> frozenset[bytes]:
    for text in texts:
        if not re.fullmatch(r"[0-9a-fA-F]{40}", text):
            raise ValueError(f"must be info-hashes of 40 hex characters, got {text!r}")
    return frozenset(bytes.fromhex(text) for text in texts)


def _most_specific_first(sites) -> tuple[Site, ...]:
    return tuple(sorted(sites, key=lambda s: s.network.prefixlen, reverse=True))


SITES = Tables("sites", (
    Setting("cidr", str, REQUIRED, "a network (CIDR) whose peers are at the site", check=_network),
    Setting("site", str, REQUIRED, "the site's name; peers at one site are ranked first"),
    Setting("region", str, None, "the site's region, ranked next"),
), build=lambda v: Site(v["cidr"], v["site"], v["region"] or None),
    example={"cidr": "10.20.0.0/16", "site": "berlin", "region": "eu-central"})


def parse_sites(raw) -> tuple[Site, ...]:
    """`[[tracker.sites]]` tables given as data, most specific first; ValueError (BadSettings)
    names what is wrong."""
    return _most_specific_first(parse_tables("tracker", SITES, raw))


def _tracker_config(values) -> TrackerConfig:
    return TrackerConfig(
        host=values["host"], port=values["port"],
        interval=values["interval"], min_interval=values["min_interval"],
        peer_ttl=2 * values["interval"] + 300,
        sites=_most_specific_first(values["sites"]), mirrors=frozenset(values["mirrors"]),
        keys_file=values["keys_file"], trusted_proxies=tuple(values["trusted_proxies"]),
        max_swarms=values["max_swarms"], max_peers=values["max_peers"],
        private_hashes=values["private_hashes"], http=http_limits(values),
        index=values["index"], mirror_keys=values["mirror_keys"],
        poll_interval=values["poll_interval"],
    )


TRACKER = Section("tracker", (
    Setting("host", str, "127.0.0.1", "address the tracker binds (HTTP and UDP)"),
    Setting("port", int, 6969, "tracker port, HTTP and UDP (0: any free port)", check=port),
    *http_settings(),
    Setting("interval", int, 1800, "seconds between a peer's announces"),
    Setting("min_interval", int, 60, "the least a peer may wait between announces"),
    Setting("mirrors", list, [], "mirrors' BitTorrent endpoints, ip:port"),
    Setting("keys_file", str, None, "private-swarm keys, one per line"),
    Setting("private_hashes", list, [],
            "info-hashes (40 hex) of private swarms, besides those announced privately",
            check=_info_hashes),
    Setting("trusted_proxies", list, ["127.0.0.0/8", "::1/128"],
            "addresses whose ip= is believed"),
    Setting("max_swarms", int, 1_000_000,
            "swarms held in memory at most (about 400 bytes each, with a first peer)"),
    Setting("max_peers", int, 5_000_000,
            "peers held in memory at most (under 100 bytes each); both full: under 800 MiB"),
    Setting("index", bool, True, "run the federated index beside the tracker: mirrors register, "
            "it polls their catalog feeds (state in the home folder)"),
    Setting("mirror_keys", str, None, "file of the mirror keys the index accepts, one "
            "`ed25519:<hex> [name]` a line; removing a line revokes that mirror",
            unset="no mirror accepted"),
    Setting("poll_interval", float, 60.0, "seconds between the index's polls of each mirror",
            check=positive("seconds")),
    SITES,
), build=_tracker_config)


class Locality:
    """Which site and region an address is in, by the CIDR map (longest prefix wins); as
    names (`where`), or as the numbers a packed peer keeps (`place`, tracker/swarm.py)."""

    def __init__(self, sites: tuple[Site, ...]):
        self.sites = sites
        self.where = lru_cache(maxsize=65536)(self._where)
        self.place = lru_cache(maxsize=65536)(self._place)
        self._site_numbers = _numbered(s.site for s in sites)
        self._region_numbers = _numbered(s.region for s in sites if s.region)

    def _place(self, ip: str) -> int:
        site, region = self.where(ip)
        return (self._site_numbers.get(site, 0) << SITE_SHIFT
                | self._region_numbers.get(region, 0) << REGION_SHIFT)

    def _where(self, ip: str) -> tuple[str | None, str | None]:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return None, None
        for s in self.sites:
            if address.version == s.network.version and address in s.network:
                return s.site, s.region
        return None, None
