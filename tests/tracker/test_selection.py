"""Peer selection and swarm state: pure functions over data and `now`. A peer in a swarm is a
slot; the tests read them back as views (peer id, ip, port ...)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tracker.config import Locality, parse_sites
from tracker.selection import MAX_NUMWANT, select_peers
from tracker.swarm import Peer, SwarmTable, TrackerRefused, make_peer

SITES = parse_sites([
    {"cidr": "127.1.0.0/16", "site": "s1", "region": "eu"},
    {"cidr": "127.2.0.0/16", "site": "s2", "region": "eu"},
    {"cidr": "127.3.0.0/16", "site": "s3", "region": "us"},
])
LOCALITY = Locality(SITES)


def peer(n: int, ip: str, *, left: int = 100, mirror: bool = False) -> Peer:
    return make_peer(b"%020d" % n, ip, 6000 + n % 1000, left, mirror=mirror,
                     place=LOCALITY.place(ip))


def swarm_of(peers: list[Peer], now: float = 0.0):
    table = SwarmTable(ttl=100)
    for p in peers:
        table.announce(b"h" * 20, p, "started", now)
    return table, table.swarms[b"h" * 20]


def join(table: SwarmTable, requester: Peer) -> int:
    """The requester announces too (selection is for a peer in the swarm): its slot."""
    return table.announce(b"h" * 20, requester, "started", 0.0)[1]


def chosen_views(swarm, slots: list[int]):
    return [swarm.view(s) for s in slots]


def ids(views) -> set[bytes]:
    return {v.peer_id for v in views}


def site(view) -> str | None:
    return LOCALITY.where(view.ip)[0]


def views(swarm):
    return [swarm.view(s) for s in range(len(swarm))]


def test_the_locality_map_picks_the_longest_prefix():
    sites = parse_sites([{"cidr": "10.0.0.0/8", "site": "big"},
                         {"cidr": "10.1.0.0/16", "site": "small", "region": "r"}])
    where = Locality(sites).where
    assert where("10.1.2.3") == ("small", "r") and where("10.9.9.9") == ("big", None)
    assert where("192.0.2.1") == (None, None) and where("not an ip") == (None, None)
    with pytest.raises(ValueError):
        parse_sites([{"cidr": "10.0.0.0/33", "site": "x"}])


def test_a_leecher_gets_its_site_first_the_reserved_far_slots_and_the_mirror():
    rng = random.Random(7)
    near = [peer(i, f"127.1.0.{i}") for i in range(1, 60)]
    region = [peer(100 + i, f"127.2.0.{i}") for i in range(1, 30)]
    far = [peer(200 + i, f"127.3.0.{i}") for i in range(1, 30)]
    mirror = peer(300, "127.2.9.9", left=0, mirror=True)
    seed = peer(301, "127.3.9.9", left=0)
    table, swarm = swarm_of([*near, *region, *far, mirror, seed])
    me = peer(999, "127.1.9.9")
    slot = join(table, me)
    tiers = Counter()
    for _ in range(200):  # over many announces, not one
        chosen = chosen_views(swarm, select_peers(swarm, slot, 50, 0.0, 100, tiered=True,
                                                  rng=rng))
        assert len(chosen) == 50 and me.peer_id not in ids(chosen)
        assert mirror.peer_id in ids(chosen), "a leecher always gets the nearest mirror"
        tiers.update(site(p) for p in chosen)
    share_near = tiers["s1"] / sum(tiers.values())
    assert 0.75 <= share_near <= 0.90, f"same-site share {share_near:.2f}"
    assert tiers["s2"] + tiers["s3"] > 200 * 2, "reserved slots go to farther peers"


def test_every_mirror_while_no_peer_is_complete():
    mirrors = [peer(i, f"127.3.0.{i}", left=0, mirror=True) for i in range(1, 4)]
    leechers = [peer(10 + i, f"127.1.0.{i}") for i in range(1, 80)]
    table, swarm = swarm_of([*mirrors, *leechers])
    chosen = chosen_views(swarm, select_peers(swarm, join(table, peer(999, "127.1.9.9")), 50,
                                              0.0, 100, tiered=True, rng=random.Random(1)))
    assert all(m.peer_id in ids(chosen) for m in mirrors)


def test_without_a_map_the_choice_is_random_and_numwant_is_clamped():
    table, swarm = swarm_of([peer(i, f"10.0.{i // 250}.{i % 250}") for i in range(300)])
    me = join(table, peer(999, "10.9.9.9"))
    assert len(select_peers(swarm, me, 10**9, 0.0, 100, tiered=False,
                            rng=random.Random(2))) == MAX_NUMWANT
    assert len(select_peers(swarm, me, 7, 0.0, 100, tiered=False, rng=random.Random(2))) == 7
    assert select_peers(swarm, me, 0, 0.0, 100, tiered=False, rng=random.Random(2)) == []


def test_a_complete_peer_gets_few_leechers_and_no_seeds():
    seeds = [peer(i, f"10.0.0.{i}", left=0) for i in range(1, 20)]
    leechers = [peer(50 + i, f"10.0.1.{i}") for i in range(1, 20)]
    table, swarm = swarm_of([*seeds, *leechers])
    chosen = chosen_views(swarm, select_peers(swarm, join(table, peer(999, "10.9.9.9", left=0)),
                                              50, 0.0, 100, tiered=False, rng=random.Random(3)))
    assert 0 < len(chosen) <= 5 and not any(p.complete for p in chosen)


def test_a_complete_peer_also_gets_the_nearest_mirror_and_a_mirror_gets_none():
    # A magnet link's first announce says left=0: it must still be handed a mirror (issue 14).
    mirrors = [peer(1, "127.1.0.1", left=0, mirror=True),
               peer(2, "127.3.0.1", left=0, mirror=True)]
    seeds = [peer(10 + i, f"127.1.1.{i}", left=0) for i in range(1, 20)]
    leechers = [peer(50 + i, f"127.2.1.{i}") for i in range(1, 20)]
    table, swarm = swarm_of([*mirrors, *seeds, *leechers])
    magnet = join(table, peer(999, "127.1.9.9", left=0))
    for tiered in (True, False):
        chosen = chosen_views(swarm, select_peers(swarm, magnet, 50, 0.0, 100, tiered=tiered,
                                                  rng=random.Random(4)))
        assert chosen[0].mirror and 1 < len(chosen) <= 6, chosen
        assert not any(p.complete for p in chosen[1:]), "besides the mirror, leechers only"
        if tiered:
            assert chosen[0].peer_id == mirrors[0].peer_id, "the mirror of its own site"
    one = select_peers(swarm, magnet, 1, 0.0, 100, tiered=False, rng=random.Random(4))
    assert [swarm.view(s).mirror for s in one] == [True], "numwant 1: the mirror"
    own = swarm.find_id(mirrors[0].peer_id)
    chosen = chosen_views(swarm, select_peers(swarm, own, 50, 0.0, 100, tiered=True,
                                              rng=random.Random(4)))
    assert chosen and not any(p.mirror for p in chosen), "a mirror needs no other mirror"


def test_table_replaces_by_peer_id_and_endpoint_counts_completed_and_expires():
    table = SwarmTable(ttl=100)
    h = b"x" * 20
    table.announce(h, make_peer(b"a" * 20, "10.0.0.1", 1, 10), "started", 0)
    table.announce(h, make_peer(b"a" * 20, "10.0.0.1", 2, 10), "", 1)  # new port, same id
    assert [p.port for p in views(table.swarms[h])] == [2]
    table.announce(h, make_peer(b"b" * 20, "10.0.0.1", 2, 10), "", 2)  # new id, same endpoint
    assert [p.peer_id for p in views(table.swarms[h])] == [b"b" * 20]
    assert table.peer_count == 1
    table.announce(h, make_peer(b"b" * 20, "10.0.0.1", 2, 0), "completed", 3)
    table.announce(h, make_peer(b"b" * 20, "10.0.0.1", 2, 0), "completed", 4)
    assert table.scrape(h) == (1, 1, 0), "completed counts once per download"
    table.announce(h, make_peer(b"c" * 20, "10.0.0.2", 3, 5), "started", 50)
    assert table.expire(now=120) == 1 and table.scrape(h) == (0, 1, 1)
    table.announce(h, make_peer(b"c" * 20, "10.0.0.2", 3, 5), "stopped", 121)
    assert h not in table.swarms and table.peer_count == 0


def test_the_table_refuses_beyond_its_bounds():
    table = SwarmTable(ttl=100, max_swarms=2, max_peers=3)
    for i in range(2):
        table.announce(bytes([i]) * 20, make_peer(bytes([i]) * 20, "10.0.0.1", 1 + i, 1),
                       "started", 0)
    with pytest.raises(TrackerRefused, match="swarms"):
        table.announce(b"z" * 20, make_peer(b"z" * 20, "10.0.0.9", 9, 1), "started", 0)
    table.announce(b"\0" * 20, make_peer(b"p" * 20, "10.0.0.5", 5, 1), "started", 0)
    with pytest.raises(TrackerRefused, match="peers"):
        table.announce(b"\0" * 20, make_peer(b"q" * 20, "10.0.0.6", 6, 1), "started", 0)


def test_a_big_swarm_is_ranked_by_a_sample_and_keeps_its_mirror():
    peers = [peer(i, f"127.{1 + i % 3}.{i // 250 % 250}.{i % 250}") for i in range(5000)]
    mirror = peer(9000, "127.1.200.1", left=0, mirror=True)
    seed = peer(9001, "127.3.200.1", left=0)
    table, swarm = swarm_of([*peers, mirror, seed])
    me = join(table, peer(99999, "127.1.250.250"))
    chosen = chosen_views(swarm, select_peers(swarm, me, 50, 0.0, 100, tiered=True,
                                              rng=random.Random(5)))
    assert len(chosen) == 50 and mirror.peer_id in ids(chosen)
    assert sum(site(p) == "s1" for p in chosen) >= 40, "the sample still favours the site"
