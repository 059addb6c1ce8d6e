"""Swarm state and peer selection, as plain data and functions that take `now`.

A swarm is keyed by the 20-byte info-hash any client announces (v1 SHA-1, or a v2 SHA-256
truncated). Announcing is O(1): a dict of swarms, each a dict of peers by peer id. Selection
follows BITTORRENT.md section 2: tiers by site and region from the CIDR map (none without a
map), complete peers first within a tier, a few slots reserved for random farther peers so the
swarm stays connected, and a leecher always gets the nearest mirror (every mirror while no
peer is complete).
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass, field

from peer.errors import WeightswarmError

MAX_NUMWANT = 50
DEFAULT_NUMWANT = 50
#: a complete peer needs no seeds; it gets at most this many leechers to serve
COMPLETE_NUMWANT = 5
#: selection ranks a random sample of this many times numwant peers
SAMPLE_FACTOR = 4


class Refusal(enum.StrEnum):
    """Why the tracker refused a request: the fixed vocabulary of its metrics' labels and of
    its rate-limited log. Nothing a client sends may add a value to either, or each junk
    packet adds a series and a table entry (issue 14: 300,000 packets with made-up action
    numbers took `/metrics` to 43 MB); the message the client gets may still be precise."""

    #: not its protocol's grammar: a field missing, of the wrong size, not a number, out of range
    MALFORMED = "malformed"
    #: a query string or a scrape beyond what the tracker answers
    TOO_LARGE = "too_large"
    #: BEP 15: a connect with the wrong protocol id, or an unknown or expired connection id
    CONNECTION = "connection"
    #: BEP 15: an action number the protocol does not define
    ACTION = "action"
    #: an announce without a key for a private swarm (BEP 27)
    PRIVATE = "private"
    #: a private-swarm key that is unknown or revoked
    KEY = "key"
    #: the swarm table is at one of its bounds
    FULL = "full"


class TrackerRefused(WeightswarmError):
    """An announce or scrape the tracker refuses: answered with a bencoded `failure reason`
    over HTTP (status 200, as BEP 3 has it) or an error packet over UDP, never a crash.
    `reason` says which kind of refusal it is, for metrics and the log; the message is for
    the client."""

    def __init__(self, message: str, reason: Refusal):
        super().__init__(message)
        self.reason = reason


@dataclass(slots=True)
class Peer:
    peer_id: bytes
    ip: str
    port: int
    left: int
    last_seen: float
    mirror: bool = False
    site: str | None = None
    region: str | None = None
    #: the 6 (IPv4) or 18 (IPv6) bytes of a compact answer, made once when the peer announces
    compact: bytes = b""

    @property
    def complete(self) -> bool:
        return self.left == 0

    @property
    def endpoint(self) -> tuple[str, int]:
        return self.ip, self.port


@dataclass
class Swarm:
    peers: dict[bytes, Peer] = field(default_factory=dict)
    #: which peer id holds each endpoint, so a restarted client (new id, same address) replaces
    #: its old entry in O(1)
    endpoints: dict[tuple[str, int], bytes] = field(default_factory=dict)
    downloaded: int = 0  # completed events seen
    private: bool = False
    complete: int = 0  # peers with nothing left, kept as they come and go
    #: the mirrors among the peers (few): every leecher's answer considers them
    mirrors: dict[bytes, Peer] = field(default_factory=dict)
    #: the peers again, as a list for O(1) random access (removal swaps with the last)
    order: list[Peer] = field(default_factory=list)
    slots: dict[bytes, int] = field(default_factory=dict)

    def add(self, peer: Peer) -> None:
        self.peers[peer.peer_id] = peer
        self.endpoints[peer.endpoint] = peer.peer_id
        self.complete += peer.left == 0
        if peer.mirror:
            self.mirrors[peer.peer_id] = peer
        self.slots[peer.peer_id] = len(self.order)
        self.order.append(peer)

    def remove(self, peer_id: bytes) -> Peer | None:
        peer = self.peers.pop(peer_id, None)
        if peer is not None:
            slot = self.slots.pop(peer_id)
            last = self.order.pop()
            if last is not peer:
                self.order[slot] = last
                self.slots[last.peer_id] = slot
            self.mirrors.pop(peer_id, None)
            self.complete -= peer.left == 0
            if self.endpoints.get(peer.endpoint) == peer_id:
                del self.endpoints[peer.endpoint]
        return peer

    def counts(self) -> tuple[int, int]:
        """(complete, incomplete), in O(1)."""
        return self.complete, len(self.peers) - self.complete


class SwarmTable:
    def __init__(self, *, ttl: float, max_swarms: int = 1_000_000, max_peers: int = 5_000_000):
        self.ttl = ttl
        self.max_swarms = max_swarms
        self.max_peers = max_peers
        self.swarms: dict[bytes, Swarm] = {}
        self.peer_count = 0

    def announce(self, info_hash: bytes, peer: Peer, event: str, now: float) -> Swarm:
        swarm = self.swarms.get(info_hash)
        if swarm is None:
            if event == "stopped":
                return Swarm()
            if len(self.swarms) >= self.max_swarms:
                raise TrackerRefused("tracker is full: too many swarms", Refusal.FULL)
            swarm = self.swarms[info_hash] = Swarm()
        old = swarm.remove(peer.peer_id)
        if old is not None:
            self.peer_count -= 1
        holder = swarm.endpoints.get(peer.endpoint)
        if holder is not None and swarm.remove(holder) is not None:
            # Another id on the same endpoint: the same client restarted.
            self.peer_count -= 1
        if event == "stopped":
            if not swarm.peers:
                del self.swarms[info_hash]
            return swarm
        if self.peer_count >= self.max_peers:
            raise TrackerRefused("tracker is full: too many peers", Refusal.FULL)
        if event == "completed" and (old is None or old.left > 0):
            swarm.downloaded += 1
        peer.last_seen = now
        swarm.add(peer)
        self.peer_count += 1
        return swarm

    def expire(self, now: float) -> int:
        """Drop peers not heard from within the ttl, and swarms left empty."""
        dropped = 0
        for info_hash in list(self.swarms):
            swarm = self.swarms[info_hash]
            stale = [pid for pid, p in swarm.peers.items() if now - p.last_seen > self.ttl]
            for pid in stale:
                swarm.remove(pid)
            dropped += len(stale)
            if not swarm.peers:
                del self.swarms[info_hash]
        self.peer_count -= dropped
        return dropped

    def scrape(self, info_hash: bytes) -> tuple[int, int, int]:
        """(complete, downloaded, incomplete) of one swarm; zeros for an unknown one."""
        swarm = self.swarms.get(info_hash)
        if swarm is None:
            return 0, 0, 0
        complete, incomplete = swarm.counts()
        return complete, swarm.downloaded, incomplete


def _tier(requester: Peer, other: Peer, tiered: bool) -> int:
    if not tiered:
        return 2
    if requester.site is not None and other.site == requester.site:
        return 0
    if requester.region is not None and other.region == requester.region:
        return 1
    return 2


def _scatter(pool: list[Peer], k: int, rng: random.Random) -> list[Peer]:
    """k peers of `pool` in a random order (all of them, permuted, when k >= len(pool)).

    A random arithmetic progression modulo the pool's size with a step prime to it: a few
    random draws per announce instead of one per peer, which per-element shuffles and samples
    cost in Python and which was most of the tracker's time in big swarms."""
    n = len(pool)
    if n <= 1:
        return list(pool)
    k = min(k, n)
    start = rng.randrange(n)
    step = rng.randrange(1, n)
    while math.gcd(step, n) != 1:
        step += 1
    return [pool[(start + i * step) % n] for i in range(k)]


def _wanted(numwant: int | None, requester: Peer) -> int:
    want = DEFAULT_NUMWANT if numwant is None or numwant < 0 else min(numwant, MAX_NUMWANT)
    return min(want, COMPLETE_NUMWANT) if requester.complete else want


def _candidates(swarm: Swarm, requester: Peer, want: int, oldest: float,
                rng: random.Random) -> list[Peer]:
    """The peers worth ranking, in a random order: a random sample of the swarm (a sample of
    this size still holds the requester's site in proportion), plus every mirror for a
    leecher; fresh, not the requester, and only leechers for a complete requester."""
    pool = _scatter(swarm.order, SAMPLE_FACTOR * want, rng)
    if requester.complete:
        return [p for p in pool if p.left and p is not requester and p.last_seen >= oldest]
    if swarm.mirrors:
        sampled = set(map(id, pool))
        pool.extend(m for m in swarm.mirrors.values() if id(m) not in sampled)
    return [p for p in pool if p is not requester and p.last_seen >= oldest]


def _ranked(candidates: list[Peer], requester: Peer, tiered: bool) -> list[Peer]:
    """Nearest tier first; within a tier mirrors and complete peers first, else in the
    random order of the sample (the sort is stable)."""
    if tiered:
        candidates.sort(key=lambda p: (_tier(requester, p, True), not p.mirror, p.left != 0))
        return candidates
    # the same order by partition, cheaper than a keyed sort
    return ([p for p in candidates if p.mirror]
            + [p for p in candidates if p.left == 0 and not p.mirror]
            + [p for p in candidates if p.left and not p.mirror])


def _mirrors_first(ranked: list[Peer], want: int) -> list[Peer]:
    """A leecher always gets the nearest mirror, and every mirror while no peer is complete."""
    mirrors = [p for p in ranked if p.mirror]
    if not any(p.left == 0 and not p.mirror for p in ranked):
        return mirrors[:want]
    return mirrors[:1]


def _without(peers: list[Peer], taken: list[Peer]) -> list[Peer]:
    if not taken:
        return peers  # the common case: nothing to skip
    ids = set(map(id, taken))
    return [p for p in peers if id(p) not in ids]


def select_peers(swarm: Swarm, requester: Peer, numwant: int | None, now: float, ttl: float,
                 *, tiered: bool, rng: random.Random) -> list[Peer]:
    """Which peers an announce returns (BITTORRENT.md section 2)."""
    want = _wanted(numwant, requester)
    if want == 0:
        return []
    candidates = _candidates(swarm, requester, want, now - ttl, rng)
    if len(candidates) > 1:
        candidates = _ranked(candidates, requester, tiered)
    if len(candidates) <= want:
        return candidates
    chosen = [] if requester.complete else _mirrors_first(candidates, want)
    reserved = max(1, want * 15 // 100) if tiered else 0
    chosen.extend(_without(candidates, chosen)[: max(0, want - len(chosen) - reserved)])
    if len(chosen) >= want:
        return chosen
    rest = _without(candidates, chosen)
    # The reserved slots go to peers of farther tiers than the nearest one, so that sites stay
    # connected to each other; only if there are none do they go to whoever is left.
    nearest = _tier(requester, candidates[0], tiered)
    farther = [p for p in rest if _tier(requester, p, tiered) > nearest] or rest
    chosen.extend(_scatter(farther, want - len(chosen), rng))
    if len(chosen) < want:
        chosen.extend(_without(rest, chosen))
        del chosen[want:]
    return chosen
