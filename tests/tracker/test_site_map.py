"""`/api/weightswarm/sites`: the tracker tells an asker its site and that site's networks by
`[tracker] sites`, and nothing else of the map (issue 16)."""

from __future__ import annotations

import json
import urllib.request

from helpers import start_tracker
from tracker.config import TrackerConfig, parse_sites

SITES = parse_sites([
    {"cidr": "127.0.0.0/16", "site": "lab", "region": "eu"},
    {"cidr": "10.1.0.0/16", "site": "lab", "region": "eu"},
    {"cidr": "10.2.0.0/16", "site": "hq", "region": "eu"},
    {"cidr": "10.3.0.0/16", "site": "far", "region": "us"},
])


def sites(tracker, query: str = "") -> dict:
    with urllib.request.urlopen(f"{tracker.url}/api/weightswarm/sites{query}", timeout=10) as r:
        return json.loads(r.read())


def test_an_asker_learns_its_site_and_the_networks_of_its_site_and_region():
    tracker = start_tracker(TrackerConfig(port=0, sites=SITES))
    try:
        body = sites(tracker)
        assert body == {"ip": "127.0.0.1", "site": "lab", "region": "eu",
                        "site_networks": ["127.0.0.0/16", "10.1.0.0/16"],
                        "region_networks": ["127.0.0.0/16", "10.1.0.0/16", "10.2.0.0/16"]}
        # Loopback is a trusted proxy by default: it may ask for another address.
        assert sites(tracker, "?ip=10.3.4.5")["site_networks"] == ["10.3.0.0/16"]
        assert sites(tracker, "?ip=192.0.2.1")["site"] is None
        assert sites(tracker, "?ip=junk")["site_networks"] == []
    finally:
        tracker.stop()


def test_with_no_map_nobody_has_a_site():
    tracker = start_tracker(TrackerConfig(port=0))
    try:
        assert sites(tracker) == {"ip": "127.0.0.1", "site": None, "region": None,
                                  "site_networks": [], "region_networks": []}
    finally:
        tracker.stop()
