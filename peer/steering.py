"""Which pieces a pull asks the far sources for: the pieces only far sources hold are shared
out among the pulls of one site, so each crosses the site's uplink about once, and the pulls
trade the rest among themselves.

libtorrent asks any peer that has a piece for it, and a mirror has every piece. Three pulls
started together under a capped mirror each fetched from it pieces that another pull was
fetching at the same moment, or already held, and the mirror sent 1.5-1.9 copies of a blob to
three pulls (tests/e2e/test_pull_faults.py, before this module): nobody sees the pieces another
peer has in flight, only the ones it has finished.

So the pulls of a site split the far-only pieces between them without a word exchanged:
every pull knows the others by their peer id (ours is chosen whole, so each pull knows its
own), and with the owners sorted by peer id, piece i belongs to owner i mod n. Every pull
computes the same owners, each owns an equal share (a hash per piece gave one pull of three 9
of 16 pieces), and asks for:

- a piece some near peer holds: normal priority, so it comes from that peer;
- a piece only far sources hold that it owns: top priority, ahead of everything else the
  far connections could be asked for;
- a piece only far sources hold that another pull owns: not at all, until the owner has it.

**Far** is a mirror, a web seed, or a peer of another site (issue 16): the source whose
bytes cost the site's uplink. Which peers are of this site the pull learns from its tracker
(`/api/weightswarm/sites`, from `[tracker] sites`) or from local discovery (BEP 14: a peer
found on the LAN is near); with neither, every peer is near and only mirrors are far, as on
one LAN. A mirror inside the site (a site cache) is near.

And a pull with nothing to ask of the far sources says so (`needs_far` false): libtorrent
fills a connection that has no request left with one block another connection is already
fetching (its end game, which our skipped pieces bring early), so an idle mirror connection
sent a stream of duplicates across the uplink, 0.36 of a model for eight pulls behind a
40 Mbit/s link (tests/sites.py). The pull then closes its far connections until it owns a
far-only piece again (pull/swarm.py).

A pull counts as an owner while it makes progress: one whose piece count has not grown for a
few piece-times (stopped, stalled, gone quiet) is left out, and its share passes to the rest.
And when this pull itself has received nothing for a while, the split is dropped and every
piece asked for from anyone, so a wrong guess about the others costs a pause, never a stall.

Only weightswarm pulls (peer id `-WP`) of this site own pieces: a foreign client does not know
it should, and a pull of another site shares out its own site's far pieces. Far sources are
the source being shared, never owners.

Pure: no libtorrent here; `pull/swarm.py` reads the session into `PeerView`s and applies the answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .settings import PEER_FINGERPRINT

TOP = 7
NORMAL = 4
SKIP = 0

#: only pulls of ours follow the split
OWNER_PREFIX = PEER_FINGERPRINT[:3].encode()
#: bounds, seconds, of how long a pull may show no progress before it is no longer an owner
STALE_MIN, STALE_MAX = 10.0, 120.0
#: bounds, seconds, of how long this pull waits with nothing received before it drops the split
RELAX_MIN, RELAX_MAX = 3.0, 120.0
#: a piece-time assumed before any rate from the far sources is known, seconds
FIRST_PIECE_TIME = 2.0
#: how the peak rate from far sources decays, per second (to a third in 20 s)
RATE_DECAY = 0.95


@dataclass(frozen=True)
class PeerView:
    """One connection of a torrent, as far as steering cares."""
    pid: bytes
    #: a mirror (its peer id or endpoint), a web seed or a peer of another site, none of them
    #: inside this pull's site: the source being shared
    far: bool
    #: it has every piece
    seed: bool
    #: the pieces it has, as `piece_set` makes them
    pieces: int


@dataclass
class _Seen:
    first: float
    count: int
    grew: float


@dataclass
class Steering:
    """The piece priorities of one torrent of a pull, decided again on each `decide`."""

    own_id: bytes
    num_pieces: int
    piece_length: int
    #: this pull's receive rate from far sources, bytes/s: the peak, decaying slowly
    far_rate: float = 0.0
    relaxed: bool = False
    #: the last `decide` left something for the far sources to send: a piece of this pull's
    #: share, or every piece (relaxed)
    needs_far: bool = True
    #: the pull closes its far connections while it needs nothing far (a site known,
    #: pull/swarm.py): the peak far rate is then kept, and the other pulls' clocks stand
    #: still while this one receives nothing. Without a site (one LAN, loopback) neither:
    #: the three-pull test under a capped mirror fell below its floor twice in CI with them.
    closes_far: bool = False
    #: pulls connected but left out of the owners: they made no progress for a while
    stalled: set[bytes] = field(default_factory=set)
    _seen: dict[bytes, _Seen] = field(default_factory=dict)
    _received: int = -1
    _received_at: float = 0.0
    _rate_at: float | None = None

    def __post_init__(self) -> None:
        self._all = piece_set([True] * self.num_pieces)

    def decide(self, now: float, have: int, peers: list[PeerView], received: int,
               rate_from_far: float) -> list[int]:
        """The priority of every piece (those had are left at NORMAL: libtorrent skips
        them). `have`: this pull's pieces (`piece_set`); `received`: payload bytes received
        so far, from anyone."""
        piece_time = self._piece_time(now, received, rate_from_far)
        stale = min(max(3 * piece_time, STALE_MIN), STALE_MAX)
        relax_after = min(max(2 * piece_time, RELAX_MIN), RELAX_MAX)

        held = 0
        owners = [self.own_id]
        self.stalled = set()
        for p in peers:
            if p.far:
                continue
            held |= self._all if p.seed else p.pieces
            if p.seed or not p.pid.startswith(OWNER_PREFIX) or p.pid == self.own_id:
                continue
            seen = self._seen.get(p.pid)
            count = p.pieces.bit_count()
            if seen is None:
                seen = self._seen[p.pid] = _Seen(now, count, now)
            elif count > seen.count:
                seen.count, seen.grew = count, now
            if now - seen.first < stale or now - seen.grew < stale:
                owners.append(p.pid)
            else:
                self.stalled.add(p.pid)

        self.relaxed = now - self._received_at >= relax_after
        out = [NORMAL] * self.num_pieces
        if self.relaxed:
            self.needs_far = True
            return out
        got = (have | held).to_bytes(self.num_pieces, "little")
        missing = [i for i in range(self.num_pieces) if not got[i]]
        mine = share_out(owners, self.own_id, missing)
        for i in missing:
            out[i] = SKIP
        for i in mine:
            out[i] = TOP
        self.needs_far = bool(mine)
        return out


    def _piece_time(self, now: float, received: int, rate_from_far: float) -> float:
        """Seconds a piece takes from the far sources, by the peak rate seen from them; the
        clocks of received bytes and of the other pulls' progress moved on."""
        if received > self._received:
            self._received, self._received_at = received, now
        elif self._rate_at is not None and self.closes_far:
            self._pause_clocks(now - self._rate_at)
        # The peak, not an average: libtorrent's rate of an idle connection decays to nothing,
        # and an average of that made a piece-time of hours, so a pull whose neighbour froze
        # waited the full RELAX_MAX before asking the mirror for the neighbour's share.
        # While the pull needs nothing far, the peak is kept: its far connections are idle or
        # closed, and a decayed rate made a piece-time of minutes, so a pull whose share's
        # owners disagreed after a cut link waited 90 s to relax (tests/e2e/test_sites.py).
        if self._rate_at is not None and (self.needs_far or not self.closes_far):
            self.far_rate *= RATE_DECAY ** (now - self._rate_at)
        self._rate_at = now
        self.far_rate = max(self.far_rate, rate_from_far)
        return self.piece_length / self.far_rate if self.far_rate else FIRST_PIECE_TIME

    def _pause_clocks(self, elapsed: float) -> None:
        """While this pull receives nothing, the other pulls' lack of progress says nothing of
        them (a cut uplink stops every pull of the site at once): their clocks stand still.
        Without this, every pull of a site took every other for stalled during a cut, owned
        everything after it, and fetched the rest up to four times (tests/e2e/test_sites.py)."""
        for seen in self._seen.values():
            seen.first += elapsed
            seen.grew += elapsed


def share_out(owners: list[bytes], own_id: bytes, missing: list[int]) -> list[int]:
    """The pieces of `missing` (held by no near peer) that `own_id` fetches from the far
    sources: with `owners` (pull peer ids, own_id among them) sorted, piece i belongs to owner
    i mod n."""
    owners = sorted(owners)
    n, k = len(owners), owners.index(own_id)
    return [i for i in missing if i % n == k]


def piece_set(flags) -> int:
    """A bitfield (libtorrent's list of booleans) as an int with one byte per piece, byte i
    being 1 if piece i is there: sets are joined with `|`, counted with `bit_count()`, and
    read back with `to_bytes`, each in C (a bit per piece took 0.4 ms for 5120 pieces)."""
    return int.from_bytes(bytes(flags), "little")
