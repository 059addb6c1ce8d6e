"""peer/pull/site.py and the far/near rule of a pull's sources (peer/pull/swarm.py): which
sources are at the pull's own site, learnt from its tracker or from local discovery."""

from __future__ import annotations

import ipaddress

import pytest

from peer.pull.site import Site, sites_url
from peer.pull.swarm import Sources
from peer.session import PeerState

SITE_B = Site("b", (ipaddress.ip_network("198.18.2.0/24"),))
MIRROR = ("198.18.1.11", 6881)
PULL = b"-WP0100-" + bytes(12)


def state(ip: str, port: int = 7000, *, pid: bytes = PULL, web_seed: bool = False,
          lsd: bool = False) -> PeerState:
    return PeerState(pid, ip, port, web_seed, False, [], 0, lsd)


@pytest.mark.parametrize(("announce", "url"), [
    ("http://198.18.1.11:6969/announce", "http://198.18.1.11:6969/api/weightswarm/sites"),
    ("http://t.example/announce/k3y", "http://t.example/api/weightswarm/sites"),
    ("https://t.example:8443/announce", "https://t.example:8443/api/weightswarm/sites"),
    ("udp://198.18.1.11:6969", "http://198.18.1.11:6969/api/weightswarm/sites"),
    ("udp://[2001:db8::1]:6969/announce", "http://[2001:db8::1]:6969/api/weightswarm/sites"),
    ("wss://t.example/announce", None),
    ("http:///announce", None),
    ("http://t.example:99999/announce", None),
])
def test_the_sites_question_goes_to_the_trackers_http_port(announce, url):
    assert sites_url(announce) == url


def test_a_site_knows_its_own_addresses_and_nothing_when_unknown():
    assert SITE_B.near("198.18.2.40") is True
    assert SITE_B.near("198.18.1.11") is False
    assert SITE_B.near("2001:db8::1") is False
    assert SITE_B.near("not an address") is False
    assert Site().near("198.18.2.40") is None


def test_far_is_a_mirror_or_web_seed_outside_the_site_or_a_peer_of_another_site():
    sources = Sources(PULL, {MIRROR, ("198.18.2.5", 6881)}, SITE_B)
    assert sources.far(state(*MIRROR, pid=b"-WM0100-" + bytes(12)))
    assert sources.far(state("198.18.1.11", 80, pid=bytes(20), web_seed=True))
    assert sources.far(state("198.18.3.7")), "a pull of a third site"
    assert not sources.far(state("198.18.2.12")), "a pull of this site"
    assert not sources.far(state("198.18.2.5", 6881)), "a mirror at this site: a site cache"
    assert not sources.far(state("10.9.9.9", lsd=True)), "found on the LAN"
    assert sources.closable == {MIRROR}


def test_with_the_site_unknown_only_mirrors_are_far_and_none_is_closed():
    sources = Sources(PULL, {("127.0.0.1", 6881)}, Site())
    assert sources.far(state("127.0.0.1", 6881, pid=bytes(20)))
    assert not sources.far(state("127.0.0.1", 7001))
    assert sources.closable == set()
