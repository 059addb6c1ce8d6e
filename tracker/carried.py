"""Who carried the bytes: how much the peers of a mirror's swarms sent each other, so that the
mirror's operator sees the share of a model's bytes that did not cross its uplink (issue 21).

Every announce says how much its client has uploaded since it started; the swarm keeps each
peer's last figure (`Swarm.note_uploaded`), so an announce adds what the peer sent since its
previous one. A swarm adds up what its peers that are not mirrors sent (`Swarm.peers_sent`);
the tracker remembers which swarms each mirror seeds (a weightswarm mirror's peer id starts
`-WM`; its endpoint as the tracker sees it) and what the mirror itself sent. A mirror asks at
`/api/weightswarm/carried?port=<its BitTorrent port>`, from its own address, and gets the sums
over its swarms: running totals since this tracker started (a swarm that empties takes its
figures with it), which the mirror samples and turns into rates.

The figures are the peers' own word, as every tracker's are; they are a picture for an operator,
not a bill. Bounded: MAX_MIRRORS endpoints are followed, the first that announce, and an
endpoint not heard from within the peers' ttl (so gone from every swarm) is forgotten.
"""

from __future__ import annotations

import time

from peer.settings import MIRROR_FINGERPRINT

from .swarm import Swarm

MIRROR_PREFIX = MIRROR_FINGERPRINT[:3].encode()
#: the mirror endpoints followed at most (a peer id is the client's own claim)
MAX_MIRRORS = 4096


class Carried:
    def __init__(self) -> None:
        self.since = time.time()
        #: a mirror's endpoint ("ip:port") → the info-hashes of the swarms it is in
        self.swarms: dict[str, set[bytes]] = {}
        #: a mirror's endpoint → the bytes it says it sent
        self.mirror_sent: dict[str, int] = {}
        #: a mirror's endpoint → when it last announced
        self.heard: dict[str, float] = {}
        self.peers_total = 0  # every swarm's, for /metrics
        self.mirrors_total = 0

    def note(self, swarm: Swarm, slot: int, info_hash: bytes, peer_id: bytes, endpoint: str,
             uploaded: int, event: str, now: float) -> None:
        """One announce, of the peer at `slot` of `swarm` (-1: none); a `stopped` one is
        noted before its peer leaves, for the bytes it sent since its last."""
        mirror = peer_id.startswith(MIRROR_PREFIX)
        if slot >= 0:
            sent = swarm.note_uploaded(slot, uploaded, event == "started")
            if mirror:
                self.mirror_sent[endpoint] = self.mirror_sent.get(endpoint, 0) + sent
                self.mirrors_total += sent
            else:
                swarm.peers_sent += sent
                self.peers_total += sent
        if not mirror:
            return
        held = self.swarms.get(endpoint)
        if event == "stopped":
            if held is not None:
                held.discard(info_hash)
            return
        if held is None:
            if len(self.swarms) >= MAX_MIRRORS:
                return
            held = self.swarms[endpoint] = set()
        held.add(info_hash)
        self.heard[endpoint] = now

    def expire(self, now: float, ttl: float) -> None:
        """Forget the mirrors not heard from within `ttl`: they left every swarm (a mirror
        restarted on another port is another endpoint)."""
        for endpoint in [e for e, when in self.heard.items() if when < now - ttl]:
            del self.heard[endpoint]
            self.swarms.pop(endpoint, None)
            self.mirror_sent.pop(endpoint, None)

    def of(self, endpoint: str, swarms: dict[bytes, Swarm]) -> dict:
        """The sums over the swarms of the mirror at `endpoint`."""
        held = self.swarms.get(endpoint, set())
        found = [swarms[h] for h in held if h in swarms]
        return {"endpoint": endpoint, "swarms": len(found),
                "peers_sent": sum(s.peers_sent for s in found),
                "mirror_sent": self.mirror_sent.get(endpoint, 0), "since": self.since}
