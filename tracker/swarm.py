"""Swarm state, as plain data and functions that take `now`.

A swarm is keyed by the 20-byte info-hash any client announces (v1 SHA-1, or a v2 SHA-256
truncated). A peer is not an object: it is a slot of its swarm, a row of 26 bytes (peer id,
IPv4 address, port; 38 in a swarm with IPv6 peers, IPv4 mapped into IPv6) in one bytearray
and one 64-bit word of traits (complete, mirror, IPv6, site and region numbers, last seen) in
one array. Objects per peer cost about 1.2 KB (issue 14: five million peers would not fit the
machine); a packed peer costs its 34 bytes and its share of the swarm's index.

Announcing is O(1). A small swarm finds a peer by searching its rows (`bytearray.find`, in
C); a larger one keeps an open-addressing index in an array of 32-bit words, two entries a
peer (by peer id, by endpoint), so that a restarted client (new id, same address) and a
client that moved (same id, new address) each replace their old entry. Removing a peer moves
the last row into its slot, so slots stay dense and a random sample is a random range of
slots. Selection (selection.py) reads slots and traits, never objects.
"""

from __future__ import annotations

import enum
import math
import socket
from array import array
from typing import NamedTuple

from peer.errors import WeightswarmError


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


# -- a peer's traits: one 64-bit word -----------------------------------------------------------

COMPLETE = 1  # nothing left to download
MIRROR = 2  # a registered mirror's endpoint
V6 = 4  # an IPv6 address
SITE_SHIFT, REGION_SHIFT, SEEN_SHIFT = 8, 20, 32
#: site and region numbers (Locality.place): 12 bits each, 0 for none
PLACE_BITS = 0xFFF
SITE = PLACE_BITS << SITE_SHIFT
REGION = PLACE_BITS << REGION_SHIFT

# -- a peer's row: 26 bytes, or 38 in a swarm with IPv6 peers -----------------------------------

PEER_ID = 0  # 20 bytes
ENDPOINT = 20  # the address and the port (big-endian): the compact form of BEP 23 or BEP 7
ROW4 = 26  # the 20-byte peer id and BEP 23's 6 bytes of an IPv4 address and port
ROW6 = 38  # the peer id and BEP 7's 18 bytes, an IPv4 address mapped into IPv6
_V4_MAPPED = bytes(10) + b"\xff\xff"

#: a swarm of more peers than this keeps an index; one of fewer than half as many drops it
INDEXED = 32
#: a peer's `uploaded` before its first announce in the swarm
UNSEEN = 2**64 - 1


class Peer(NamedTuple):
    """What an announce says of its peer, packed as the table keeps it (`make_peer`)."""

    peer_id: bytes
    endpoint: bytes  # 18 bytes: IPv6, or IPv4 mapped into it, and the port
    traits: int  # COMPLETE, MIRROR, V6 and the place bits


def is_v6(ip: str) -> bool:
    """Whether an address is IPv6 proper: an IPv4 one mapped into IPv6 is IPv4 (its answers
    carry BEP 23's 6-byte peers)."""
    return ":" in ip and not ip.startswith("::ffff:")


def make_peer(peer_id: bytes, ip: str, port: int, left: int, *, mirror: bool = False,
              place: int = 0) -> Peer:
    """`ip` as the socket gave it, or as wire.py checked it. An IPv4 address mapped into IPv6
    (how a dual-stack socket shows an IPv4 client) is an IPv4 peer."""
    if ":" in ip:
        address = socket.inet_pton(socket.AF_INET6, ip.partition("%")[0])
        traits = 0 if address.startswith(_V4_MAPPED) else V6
    else:
        address, traits = _V4_MAPPED + socket.inet_pton(socket.AF_INET, ip), 0
    traits |= place | (COMPLETE if left == 0 else 0) | (MIRROR if mirror else 0)
    return Peer(peer_id, address + port.to_bytes(2, "big"), traits)


class PeerView(NamedTuple):
    """A peer read back from its swarm, for non-compact answers and tests."""

    peer_id: bytes
    ip: str
    port: int
    complete: bool
    mirror: bool
    place: int
    last_seen: int


class Swarm:
    __slots__ = ("rows", "width", "traits", "index", "used", "complete", "downloaded",
                 "mirrors", "sent", "peers_sent")

    def __init__(self) -> None:
        self.rows = bytearray()
        #: bytes a row: ROW4 until the first IPv6 peer, then ROW6 (the rows widened once)
        self.width = ROW4
        #: per slot: the traits, and the second it was last seen in the top 32 bits (so that
        #: min() of the array, in C, finds the stalest peer)
        self.traits = array("Q")
        #: open addressing, linear probing; 0 empty, 1 deleted, else (slot + 1) << 1 | field
        #: (0 peer id, 1 endpoint). None while the swarm is small.
        self.index: array | None = None
        self.used = 0  # index entries live or deleted
        self.complete = 0  # peers with nothing left, kept as they come and go
        self.downloaded = 0  # completed events seen
        #: the slots of the mirrors among the peers (few): every answer considers them
        self.mirrors: tuple[int, ...] = ()
        #: per slot: the `uploaded` the peer last announced (UNSEEN before its first)
        self.sent = array("Q")
        #: bytes the peers that are not mirrors say they sent (tracker/carried.py)
        self.peers_sent = 0

    def __len__(self) -> int:
        return len(self.traits)

    def counts(self) -> tuple[int, int]:
        """(complete, incomplete), in O(1)."""
        return self.complete, len(self.traits) - self.complete

    # -- finding ----------------------------------------------------------------------------

    def find_id(self, peer_id: bytes) -> int:
        """The slot of the peer with this id, or -1."""
        return self._find(peer_id, PEER_ID)

    def find_endpoint(self, endpoint: bytes) -> int:
        """The slot of the peer at this endpoint (`Peer.endpoint`'s form), or -1."""
        if self.width == ROW6:
            return self._find(endpoint, ENDPOINT)
        if not endpoint.startswith(_V4_MAPPED):
            return -1  # no IPv6 peer here yet
        return self._find(endpoint[len(_V4_MAPPED) :], ENDPOINT)

    def _find(self, key: bytes, field: int) -> int:
        rows, width, index = self.rows, self.width, self.index
        if index is None:
            at = rows.find(key)
            while at >= 0:  # a match at another offset is part of some other field
                if at % width == field:
                    return at // width
                at = rows.find(key, at + 1)
            return -1
        kind = field != PEER_ID
        mask = len(index) - 1
        i = hash(key) & mask
        while entry := index[i]:
            if entry & 1 == kind and entry != 1 and rows.startswith(
                    key, ((entry >> 1) - 1) * width + field):
                return (entry >> 1) - 1
            i = (i + 1) & mask
        return -1

    def is_at(self, slot: int, endpoint: bytes) -> bool:
        width = self.width
        if width == ROW4 and not endpoint.startswith(_V4_MAPPED):
            return False  # an IPv6 endpoint, where none is yet
        return self.rows.startswith(endpoint[ROW6 - width :], slot * width + ENDPOINT)

    def view(self, slot: int) -> PeerView:
        width = self.width
        row = bytes(self.rows[slot * width : slot * width + width])
        traits = self.traits[slot]
        if traits & V6:
            ip = socket.inet_ntop(socket.AF_INET6, row[ENDPOINT:-2])
        else:
            ip = socket.inet_ntop(socket.AF_INET, row[-6:-2])
        return PeerView(row[:ENDPOINT], ip, int.from_bytes(row[-2:], "big"),
                        bool(traits & COMPLETE), bool(traits & MIRROR),
                        traits & (SITE | REGION), traits >> SEEN_SHIFT)

    def compact(self, slots: list[int], v6: bool) -> bytes:
        """BEP 23's 6 bytes (or BEP 7's 18) of each of `slots` of that family."""
        rows, traits, width = self.rows, self.traits, self.width
        if v6:
            return b"".join([rows[s * width + ENDPOINT : s * width + width] for s in slots
                             if traits[s] & V6])
        v4 = width - 6
        return b"".join([rows[s * width + v4 : s * width + width] for s in slots
                         if not traits[s] & V6])

    # -- changing ---------------------------------------------------------------------------

    def add(self, peer: Peer, seen: int) -> int:
        if peer.traits & V6 and self.width == ROW4:
            self._widen()
        slot = len(self.traits)
        endpoint = peer.endpoint[ROW6 - self.width :]
        self.rows += peer.peer_id
        self.rows += endpoint
        self.traits.append(peer.traits | seen << SEEN_SHIFT)
        self.sent.append(UNSEEN)
        self.complete += peer.traits & COMPLETE
        if peer.traits & MIRROR:
            self.mirrors += (slot,)
        if self.index is not None and 3 * (self.used + 2) <= 2 * len(self.index):
            self._enter(peer.peer_id, (slot + 1) << 1)
            self._enter(endpoint, (slot + 1) << 1 | 1)
        elif self.index is not None or slot >= INDEXED:
            self._reindex()
        return slot

    def update(self, slot: int, traits: int, seen: int) -> None:
        """The same peer from the same endpoint again, with what it says now."""
        old = self.traits[slot]
        self.traits[slot] = traits | seen << SEEN_SHIFT
        self.complete += (traits & COMPLETE) - (old & COMPLETE)
        if (old ^ traits) & MIRROR:
            self.mirrors = tuple(s for s in self.mirrors if s != slot) + (
                (slot,) if traits & MIRROR else ())

    def note_uploaded(self, slot: int, uploaded: int, started: bool) -> int:
        """The bytes the peer at `slot` sent since its last announce, by its `uploaded`
        (counted from the client's `started`). Its first announce here counts only if it
        is its `started` one: after an expiry or a restart of the tracker it is a baseline."""
        before = self.sent[slot]
        self.sent[slot] = uploaded
        if before == UNSEEN:
            return uploaded if started else 0
        return uploaded - before if uploaded >= before else uploaded  # went back: restarted

    def remove(self, slot: int) -> None:
        """Remove the peer at `slot`; the last peer moves into it."""
        last, width = len(self.traits) - 1, self.width
        traits = self.traits[slot]
        self.complete -= traits & COMPLETE
        if traits & MIRROR:
            self.mirrors = tuple(s for s in self.mirrors if s != slot)
        if self.index is not None:
            self._forget(slot, 1)
        if slot != last:
            moved = self.traits[last]
            if self.index is not None:
                self._forget(last, (slot + 1) << 1)
            if moved & MIRROR:
                self.mirrors = tuple(slot if s == last else s for s in self.mirrors)
            self.rows[slot * width : slot * width + width] = self.rows[last * width :]
            self.traits[slot] = moved
            self.sent[slot] = self.sent[last]
        del self.rows[last * width :]
        self.traits.pop()
        self.sent.pop()
        if self.index is not None and len(self.traits) < INDEXED // 2:
            self.index, self.used = None, 0

    def expire(self, oldest: int) -> int:
        """Drop the peers last seen before second `oldest`; how many."""
        traits = self.traits
        stale = [s for s in range(len(traits)) if traits[s] >> SEEN_SHIFT < oldest]
        for slot in reversed(stale):  # from the end: what moves into a slot is never stale
            self.remove(slot)
        return len(stale)

    def _widen(self) -> None:
        """The first IPv6 peer: every row gets the 18-byte endpoint (IPv4 mapped)."""
        rows = self.rows
        self.rows = bytearray().join(
            rows[at : at + ENDPOINT] + _V4_MAPPED + rows[at + ENDPOINT : at + ROW4]
            for at in range(0, len(rows), ROW4))
        self.width = ROW6
        if self.index is not None:
            self._reindex()  # the endpoints' keys changed

    # -- the index --------------------------------------------------------------------------

    def _key(self, slot: int, field: int) -> bytes:
        at = slot * self.width
        return bytes(self.rows[at + field : at + (ENDPOINT if field == PEER_ID else self.width)])

    def _enter(self, key: bytes, entry: int) -> None:
        index = self.index
        mask = len(index) - 1
        i = hash(key) & mask
        while index[i] > 1:
            i = (i + 1) & mask
        self.used += index[i] == 0
        index[i] = entry

    def _forget(self, slot: int, replacement: int) -> None:
        """Both index entries of `slot`: deleted (`replacement` 1), or pointed at another
        slot (`replacement` (other + 1) << 1)."""
        index = self.index
        mask = len(index) - 1
        for field, kind in ((PEER_ID, 0), (ENDPOINT, 1)):
            entry = (slot + 1) << 1 | kind
            i = hash(self._key(slot, field)) & mask
            while (found := index[i]) != entry:
                if found == 0:
                    raise AssertionError(f"swarm index lost slot {slot}")
                i = (i + 1) & mask
            index[i] = 1 if replacement == 1 else replacement | kind

    def _reindex(self) -> None:
        """A fresh index at most half full, without deleted entries; `add` makes a new one
        when live and deleted entries fill two thirds."""
        n = len(self.traits)
        size = 64
        while size < 2 * 2 * n:
            size *= 2
        self.index = array("I", bytes(4 * size))
        self.used = 0
        for slot in range(n):
            self._enter(self._key(slot, PEER_ID), (slot + 1) << 1)
            self._enter(self._key(slot, ENDPOINT), (slot + 1) << 1 | 1)


class SwarmTable:
    def __init__(self, *, ttl: float, max_swarms: int = 1_000_000, max_peers: int = 5_000_000):
        self.ttl = ttl
        self.max_swarms = max_swarms
        self.max_peers = max_peers
        self.swarms: dict[bytes, Swarm] = {}
        self.peer_count = 0
        self.seeders = 0  # complete peers over every swarm

    def announce(self, info_hash: bytes, peer: Peer, event: str, now: float) -> tuple[Swarm, int]:
        """The swarm after the announce, and the peer's slot in it (-1 once stopped)."""
        swarm = self.swarms.get(info_hash)
        if swarm is None:
            if event == "stopped":
                return Swarm(), -1
            self._room_for(swarm=True)
            swarm = self.swarms[info_hash] = Swarm()
        slot = swarm.find_id(peer.peer_id)
        if slot >= 0 and event != "stopped" and swarm.is_at(slot, peer.endpoint):
            # The common case: the same peer again, from the same endpoint.
            old = swarm.traits[slot]
            swarm.downloaded += event == "completed" and not old & COMPLETE
            swarm.update(slot, peer.traits, int(now))
            self.seeders += (peer.traits & COMPLETE) - (old & COMPLETE)
            return swarm, slot
        return swarm, self._replace(info_hash, swarm, slot, peer, event, int(now))

    def _replace(self, info_hash: bytes, swarm: Swarm, slot: int, peer: Peer, event: str,
                 now: int) -> int:
        """A peer new to the swarm, or one that changed its id or endpoint: its old entries go
        (by peer id, and whoever held its endpoint: the same client restarted)."""
        before = swarm.complete
        was_complete = slot >= 0 and swarm.traits[slot] & COMPLETE
        for find, key in ((swarm.find_id, peer.peer_id), (swarm.find_endpoint, peer.endpoint)):
            old = find(key)
            if old >= 0:
                swarm.remove(old)
                self.peer_count -= 1
        try:
            if event == "stopped":
                return -1
            self._room_for(swarm=False)
            swarm.downloaded += event == "completed" and not was_complete
            self.peer_count += 1
            return swarm.add(peer, now)
        finally:
            self.seeders += swarm.complete - before
            if not len(swarm):
                del self.swarms[info_hash]

    def _room_for(self, *, swarm: bool) -> None:
        if swarm and len(self.swarms) >= self.max_swarms:
            raise TrackerRefused("tracker is full: too many swarms", Refusal.FULL)
        if self.peer_count >= self.max_peers:
            raise TrackerRefused("tracker is full: too many peers", Refusal.FULL)

    def expire(self, now: float) -> int:
        """Drop peers not heard from within the ttl, and swarms left empty."""
        oldest = math.ceil(now - self.ttl)  # seen before now - ttl, in whole seconds
        first = oldest << SEEN_SHIFT
        stale = [h for h, s in self.swarms.items() if min(s.traits, default=0) < first]
        dropped = 0
        for info_hash in stale:
            swarm = self.swarms[info_hash]
            before = swarm.complete
            dropped += swarm.expire(oldest)
            self.seeders += swarm.complete - before
            if not len(swarm):
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
