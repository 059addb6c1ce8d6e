"""Which of a pull's sources are at its own site (issue 16): the pull asks its trackers where it
is (`/api/weightswarm/sites`: the asker's site by `[tracker] sites`, and that site's
networks), and a source in those networks is near; anything else is far, and what only far
sources hold is shared out among the site's pulls (peer/steering.py). A peer found by local
discovery (BEP 14) is near whatever the tracker says: it is on this machine's LAN.

No tracker of ours, no map, or an address outside it: the site is unknown, and every peer is
near and every mirror far, as on one LAN.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from dataclasses import dataclass

from ..errors import WeightswarmError
from ..torrent import tracker_http
from .http import MirrorClient

log = logging.getLogger(__name__)

#: seconds a tracker has to say where this machine is (a cut link must not hold a pull)
ASK_TIMEOUT = 5.0


@dataclass(frozen=True)
class Site:
    """This pull's site, as its tracker placed it."""

    name: str | None = None
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @property
    def known(self) -> bool:
        return bool(self.networks)

    def near(self, ip: str) -> bool | None:
        """Whether `ip` is at this site; None when the site is not known."""
        if not self.networks:
            return None
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address.version == n.version and address in n for n in self.networks)


def sites_url(announce: str) -> str | None:
    """Where the tracker of an announce URL answers `/api/weightswarm/sites`."""
    base = tracker_http(announce)
    return None if base is None else f"{base}/api/weightswarm/sites"


async def learn_site(client: MirrorClient, trackers: list[str]) -> Site:
    """The site the first of `trackers` that knows it names, with its networks."""
    for url in dict.fromkeys(filter(None, map(sites_url, trackers))):
        try:
            body = await asyncio.wait_for(client.json(url), ASK_TIMEOUT)
            networks = tuple(ipaddress.ip_network(n, strict=False)
                             for n in body.get("site_networks") or ())
        except (WeightswarmError, TimeoutError, ValueError, TypeError, AttributeError) as e:
            log.debug("%s: no site from it: %s", url, e)
            continue
        if networks:
            log.info("this machine is at site %s (%s, by %s)", body.get("site"),
                     ", ".join(map(str, networks)), url)
            return Site(str(body.get("site")), networks)
    return Site()
