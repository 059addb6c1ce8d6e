"""Which peers an announce returns (BITTORRENT.md section 2), as a plain function of a swarm,
the requester's slot in it, `now` and a random generator.

Tiers by site and region from the CIDR map (none without a map), mirrors and complete peers
first within a tier, a few slots reserved for random farther peers so the swarm stays
connected. Mirrors are listed to every announce that may need one: a leecher always gets the
nearest mirror (every mirror while no peer is complete), and a complete peer that is not a
mirror gets the nearest one too, besides its few leechers. A complete peer may well need it:
a client given a magnet link announces `left=0` before it knows the size (aria2 does), and
with no seeds and no mirror it was handed nothing it could get the torrent from (issue 14).
Peers are slots of the swarm (tracker/swarm.py) and their traits, never objects.
"""

from __future__ import annotations

import math
import random

from .swarm import COMPLETE, MIRROR, REGION, SEEN_SHIFT, SITE, Swarm

MAX_NUMWANT = 50
DEFAULT_NUMWANT = 50
#: a complete peer needs no seeds; it gets at most this many leechers to serve (and a mirror)
COMPLETE_NUMWANT = 5
#: selection ranks a random sample of this many times numwant peers
SAMPLE_FACTOR = 4


def _tier(mine: int, other: int) -> int:
    """0 same site, 1 same region, 2 anything else; `mine` and `other` are traits."""
    site = mine & SITE
    if site and other & SITE == site:
        return 0
    region = mine & REGION
    if region and other & REGION == region:
        return 1
    return 2


def _sample(n: int, k: int, rng: random.Random) -> list[int]:
    """k of the numbers below n in a random order (all of them, permuted, when k >= n).

    A random arithmetic progression modulo n with a step prime to it: a few random draws per
    announce instead of one per peer, which per-element shuffles and samples cost in Python
    and which was most of the tracker's time in big swarms."""
    if n <= 1:
        return list(range(n))
    k = min(k, n)
    start = rng.randrange(n)
    step = rng.randrange(1, n)
    while math.gcd(step, n) != 1:
        step += 1
    return [i % n for i in range(start, start + k * step, step)]


def _scatter(pool: list[int], k: int, rng: random.Random) -> list[int]:
    """k items of `pool` in a random order."""
    return [pool[i] for i in _sample(len(pool), k, rng)]


def _candidates(swarm: Swarm, me: int, want: int, fresh: int, rng: random.Random) -> list[int]:
    """The peers worth ranking, in a random order: a random sample of the swarm (a sample of
    this size still holds the requester's site in proportion), plus every mirror for a
    leecher; fresh (traits at least `fresh`), not the requester, and only leechers for a
    complete requester."""
    traits = swarm.traits
    pool = _sample(len(traits), SAMPLE_FACTOR * want, rng)
    if traits[me] & COMPLETE:
        return [s for s in pool if not traits[s] & COMPLETE and s != me and traits[s] >= fresh]
    if swarm.mirrors:
        sampled = set(pool)
        pool.extend(m for m in swarm.mirrors if m not in sampled)
    return [s for s in pool if s != me and traits[s] >= fresh]


def _ranked(candidates: list[int], traits, mine: int) -> list[int]:
    """Nearest tier first; within a tier mirrors and complete peers first, else in the
    random order of the sample (the sort is stable). `~t & 3` orders by (not mirror, not
    complete)."""
    candidates.sort(key=lambda s: _tier(mine, traits[s]) << 2 | (~traits[s] & 3))
    return candidates


def _untiered(candidates: list[int], swarm: Swarm, want: int) -> list[int]:
    """Without tiers: mirrors, then complete peers, then leechers, each in the random order
    of the sample, the first `want` of them (which also gives a leecher every mirror), by
    partition, cheaper than a keyed sort, and only as far as `want` needs."""
    traits = swarm.traits
    chosen = [s for s in candidates if traits[s] & MIRROR] if swarm.mirrors else []
    if len(chosen) < want:
        chosen += [s for s in candidates if traits[s] & 3 == COMPLETE]
    if len(chosen) < want:
        chosen += [s for s in candidates if not traits[s] & 3]
    return chosen[:want]


def _mirrors_first(ranked: list[int], swarm: Swarm, want: int) -> list[int]:
    """A leecher always gets the nearest mirror, and every mirror while no peer is complete."""
    if not swarm.mirrors:
        return []
    traits = swarm.traits
    mirrors = [s for s in ranked if traits[s] & MIRROR]
    if not any(traits[s] & 3 == COMPLETE for s in ranked):
        return mirrors[:want]
    return mirrors[:1]


def _without(slots: list[int], taken: list[int]) -> list[int]:
    if not taken:
        return slots  # the common case: nothing to skip
    ids = set(taken)
    return [s for s in slots if s not in ids]


def _nearest_mirror(swarm: Swarm, me: int, fresh: int, tiered: bool,
                    rng: random.Random) -> list[int]:
    """The nearest fresh mirror other than `me` (one at random of the nearest), or none."""
    traits = swarm.traits
    mirrors = [m for m in swarm.mirrors if m != me and traits[m] >= fresh]
    if len(mirrors) <= 1:
        return mirrors
    if tiered:
        mine = traits[me]
        nearest = min(_tier(mine, traits[m]) for m in mirrors)
        mirrors = [m for m in mirrors if _tier(mine, traits[m]) == nearest]
    return [rng.choice(mirrors)]


def select_peers(swarm: Swarm, me: int, numwant: int | None, now: float, ttl: float,
                 *, tiered: bool, rng: random.Random) -> list[int]:
    """The slots of the peers that the announce of the peer at slot `me` returns."""
    want = DEFAULT_NUMWANT if numwant is None or numwant < 0 else min(numwant, MAX_NUMWANT)
    if want == 0:
        return []
    mine = swarm.traits[me]
    fresh = math.ceil(now - ttl) << SEEN_SHIFT
    if not mine & COMPLETE:
        return _chosen(swarm, me, want, fresh, tiered, rng)
    leechers = _chosen(swarm, me, min(want, COMPLETE_NUMWANT), fresh, tiered, rng)
    if mine & MIRROR or not swarm.mirrors:
        return leechers
    mirror = _nearest_mirror(swarm, me, fresh, tiered, rng)
    return (mirror + _without(leechers, mirror))[:want]


def _chosen(swarm: Swarm, me: int, want: int, fresh: int, tiered: bool,
            rng: random.Random) -> list[int]:
    """The peers of the swarm's sample (`_candidates`) that the requester gets, ranked."""
    traits = swarm.traits
    mine = traits[me]
    candidates = _candidates(swarm, me, want, fresh, rng)
    if not tiered:
        return _untiered(candidates, swarm, want)
    if len(candidates) > 1:
        candidates = _ranked(candidates, traits, mine)
    if len(candidates) <= want:
        return candidates
    chosen = [] if mine & COMPLETE else _mirrors_first(candidates, swarm, want)
    reserved = max(1, want * 15 // 100)
    chosen.extend(_without(candidates, chosen)[: max(0, want - len(chosen) - reserved)])
    if len(chosen) >= want:
        return chosen
    rest = _without(candidates, chosen)
    # The reserved slots go to peers of farther tiers than the nearest one, so that sites stay
    # connected to each other; only if there are none do they go to whoever is left.
    nearest = _tier(mine, traits[candidates[0]])
    farther = [s for s in rest if _tier(mine, traits[s]) > nearest] or rest
    chosen.extend(_scatter(farther, want - len(chosen), rng))
    if len(chosen) < want:
        chosen.extend(_without(rest, chosen))
        del chosen[want:]
    return chosen
