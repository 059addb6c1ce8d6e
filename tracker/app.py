"""The tracker service: HTTP (`/announce`, `/scrape`) and BEP 15 UDP on the same port number,
around the pure swarm table and wire formats.

Every refusal is a bencoded `failure reason` with status 200 on HTTP and an error packet on
UDP; garbage UDP is ignored or answered with an error, never a crash. UDP connection ids are
an HMAC of the client's address and the current minute: valid for about two minutes, nothing
stored per client.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import ipaddress
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from peer.metrics import Children, metrics_response
from peer.service import LIMITS, LOOPS, Service, background, listening, port_of
from peer.service import serve as serve_services
from peer.service import start as start_service

from .carried import Carried
from .config import Locality, TrackerConfig
from .indexhttp import INDEX, add_routes, index_context
from .indexpages import add_pages
from .selection import select_peers
from .swarm import Refusal, Swarm, SwarmTable, TrackerRefused, is_v6, make_peer
from .wire import (
    ANNOUNCE,
    CONNECT,
    PROTOCOL_ID,
    SCRAPE,
    Announce,
    UdpRequest,
    announce_body,
    failure_body,
    parse_announce,
    parse_scrape,
    parse_udp,
    parse_udp_announce,
    parse_udp_scrape,
    scrape_body,
    udp_announce_answer,
    udp_connect_answer,
    udp_error,
    udp_scrape_answer,
)

log = logging.getLogger(__name__)

TRACKER = web.AppKey("tracker", "Tracker")
CONFIG = web.AppKey("config", TrackerConfig)
CONNECTION_WINDOW = 60  # seconds; an id is accepted in its minute and the next
REFUSAL_LOG_EVERY = 60  # seconds between log lines for one kind of refusal


class Protocol(enum.StrEnum):
    HTTP = "http"
    UDP = "udp"


class Kind(enum.StrEnum):
    """What a request asked for; with `Protocol` and `Refusal`, the tracker's only label
    values (a UDP action number that BEP 15 does not define is OTHER, never its number)."""

    CONNECT = "connect"
    ANNOUNCE = "announce"
    SCRAPE = "scrape"
    OTHER = "other"


UDP_KINDS = {CONNECT: Kind.CONNECT, ANNOUNCE: Kind.ANNOUNCE, SCRAPE: Kind.SCRAPE}
RESULTS = ("ok", "refused")


class Tracker:
    """The tracker's state and decisions, shared by the HTTP and UDP front ends."""

    def __init__(self, config: TrackerConfig, *, rng: random.Random | None = None):
        self.config = config
        self.table = SwarmTable(ttl=config.peer_ttl, max_swarms=config.max_swarms,
                                max_peers=config.max_peers)
        self.locality = Locality(config.sites)
        self.rng = rng or random.Random()
        self.secret = secrets.token_bytes(32)
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in config.trusted_proxies]
        self.registry = CollectorRegistry()
        self.requests = Counter("weightswarm_tracker_requests", "Announces and scrapes",
                                ["protocol", "kind", "result"], registry=self.registry)
        self.refusals = Counter("weightswarm_tracker_refusals", "Requests refused, by why",
                                ["protocol", "kind", "reason"], registry=self.registry)
        self.swarms_gauge = Gauge("weightswarm_tracker_swarms", "Swarms held",
                                  registry=self.registry)
        self.peers_gauge = Gauge("weightswarm_tracker_peers", "Peers held", registry=self.registry)
        self.seeders_gauge = Gauge("weightswarm_tracker_seeders", "Complete peers held",
                                   registry=self.registry)
        self.carried = Carried()
        self.carried_gauge = Gauge("weightswarm_tracker_carried_bytes", "Bytes the peers say "
                                   "they sent, by mirrors and by the rest, since the start",
                                   ["by"], registry=self.registry)
        #: (protocol, kind, reason) -> (when its last line was logged, refusals since): keyed
        #: by the fixed vocabularies only, so it holds a few dozen entries at most
        self._refusals_logged: dict[tuple[Protocol, Kind, Refusal], tuple[float, int]] = {}
        self._counters = Children(self.requests, Protocol, Kind, RESULTS)
        self._refusal_counters = Children(self.refusals, Protocol, Kind, Refusal)
        #: whether the table's refusing for a bound has been logged (again once it has room)
        self._full_logged = False
        #: info-hashes of private swarms: from the config, and learned from private announces
        self.private: set[bytes] = set(config.private_hashes)
        self._keys: frozenset[str] = frozenset()
        self._keys_stamp: tuple | None = None
        self._keys_checked = 0.0
        #: seconds between looks at the keys file (a revocation takes effect within this)
        self.keys_check_every = 1.0
        #: mirror key → (the sha256s of the private-swarm keys it fed, when it signed them)
        self._fed: dict[str, tuple[frozenset[str], frozenset[str], float]] = {}
        self._fed_union: frozenset[str] = frozenset()
        self._fed_seeders: frozenset[str] = frozenset()

    def keys(self) -> frozenset[str]:
        """The keys file, re-read when it changes (checked at most once a second): removing a
        line revokes that key at once."""
        path = self.config.keys_file
        if not path:
            return frozenset()
        now = time.monotonic()
        if now - self._keys_checked >= self.keys_check_every:
            self._keys_checked = now
            try:
                st = os.stat(path)
                stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            except OSError:
                stamp = None
            if stamp != self._keys_stamp:
                self._keys_stamp = stamp
                try:
                    with open(path, encoding="utf-8") as f:
                        self._keys = frozenset(
                            line.strip() for line in f
                            if line.strip() and not line.lstrip().startswith("#"))
                except OSError:
                    self._keys = frozenset()
        return self._keys

    def feed_keys(self, mirror: str, hashes: frozenset[str], stamp: float, *,
                  accepted: frozenset[str], seeders: frozenset[str] = frozenset()) -> bool:
        """A mirror's private-swarm keys (sha256 of each; `seeders`: those that may start a
        private swarm), replacing what it fed before unless older; those of mirrors no longer
        accepted are dropped. True if anything changed."""
        held = self._fed.get(mirror)
        if held is not None and held[2] > stamp:
            return False
        changed = held is None or held[:2] != (hashes, seeders)
        self._fed[mirror] = (hashes, seeders, stamp)
        for gone in [m for m in self._fed if m not in accepted]:
            del self._fed[gone]
            changed = True
        if changed:
            self._fed_union = frozenset().union(*(h for h, _, _ in self._fed.values()))
            self._fed_seeders = frozenset().union(*(s for _, s, _ in self._fed.values()))
        return changed

    def key_kind(self, key: str) -> str | None:
        """"seeder" for a key that may start a private swarm (the keys file's, a mirror's
        own), "reader" for one that may only join one (a token's: revoking the token removes
        it from the mirror's next feed), None for no valid key."""
        if key in self.keys():
            return "seeder"
        if not self._fed_union:
            return None
        digest = hashlib.sha256(key.encode()).hexdigest()
        if digest in self._fed_seeders:
            return "seeder"
        return "reader" if digest in self._fed_union else None

    def key_valid(self, key: str) -> bool:
        return self.key_kind(key) is not None

    def check_access(self, info_hash: bytes, key: str | None) -> None:
        """Open announces may not touch a private swarm; private ones need a valid key, and
        only a seeder's key starts one (a reader's could otherwise close a public swarm)."""
        if key is None:
            if info_hash in self.private:
                raise TrackerRefused("private torrent: announce with your key (/announce/<key>)",
                                     Refusal.PRIVATE)
            return
        kind = self.key_kind(key)
        if kind is None:
            raise TrackerRefused("unknown or revoked key", Refusal.KEY)
        if info_hash not in self.private:
            if kind != "seeder":
                raise TrackerRefused("no such private swarm (yet): its seeder has not "
                                     "announced it", Refusal.KEY)
            self.private.add(info_hash)

    def scrape_visible(self, hashes: list[bytes], key: str | None) -> dict:
        """Scrape; a private swarm shows zeros unless the key is valid."""
        if key is not None and not self.key_valid(key):
            raise TrackerRefused("unknown or revoked key", Refusal.KEY)
        return {h: (0, 0, 0) if (h in self.private and key is None) else self.table.scrape(h)
                for h in hashes}

    def count(self, protocol: Protocol, kind: Kind) -> None:
        self._counters(protocol, kind, "ok").inc()

    def ip_trusted(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address.version == n.version and address in n for n in self.trusted)

    def announce(self, a: Announce, now: float) -> tuple[Swarm, list[int], int, int]:
        """The swarm, the slots of the peers to hand out, and the swarm's counts."""
        config = self.config
        peer = make_peer(a.peer_id, a.ip, a.port, a.left,
                         mirror=bool(config.mirrors) and f"{a.ip}:{a.port}" in config.mirrors,
                         place=self.locality.place(a.ip) if config.sites else 0)
        endpoint = f"{a.ip}:{a.port}"
        if a.event == "stopped" and (leaving := self.table.swarms.get(a.info_hash)):
            # what it sent since its last announce, before it leaves
            self.carried.note(leaving, leaving.find_id(a.peer_id), a.info_hash, a.peer_id,
                              endpoint, a.uploaded, a.event, now)
        swarm, slot = self.table.announce(a.info_hash, peer, a.event, now)
        if a.event != "stopped":
            self.carried.note(swarm, slot, a.info_hash, a.peer_id, endpoint, a.uploaded, a.event,
                              now)
        complete, incomplete = swarm.counts()
        if slot < 0:
            return swarm, [], complete, incomplete
        peers = select_peers(swarm, slot, a.numwant, now, config.peer_ttl,
                             tiered=bool(config.sites), rng=self.rng)
        return swarm, peers, complete, incomplete

    def scrape(self, hashes: list[bytes]) -> dict[bytes, tuple[int, int, int]]:
        return {h: self.table.scrape(h) for h in hashes}

    def expire(self, now: float) -> int:
        dropped = self.table.expire(now)
        self.carried.expire(now, self.config.peer_ttl)
        table = self.table
        if table.peer_count < table.max_peers and len(table.swarms) < table.max_swarms:
            self._full_logged = False  # the next refusal for a bound is news again
        return dropped

    def connection_id(self, addr: tuple, minute: int) -> int:
        # Keyed BLAKE2b is a MAC in one call, several times cheaper than HMAC-SHA256.
        message = f"{addr[0]}|{addr[1]}|{minute}".encode()
        return int.from_bytes(hashlib.blake2b(message, digest_size=8, key=self.secret).digest(),
                              "big")

    def connection_ok(self, connection_id: int, addr: tuple, now: float) -> bool:
        minute = int(now // CONNECTION_WINDOW)
        return (connection_id == self.connection_id(addr, minute)
                or connection_id == self.connection_id(addr, minute - 1))

    def refused(self, protocol: Protocol, kind: Kind, error: TrackerRefused) -> None:
        """Count a refusal, and log it: one line a minute for each (protocol, kind, reason),
        saying how many more there were."""
        self._counters(protocol, kind, "refused").inc()
        self._refusal_counters(protocol, kind, error.reason).inc()
        if error.reason is Refusal.FULL and not self._full_logged:
            self._full_logged = True
            log.warning("%s: new peers are refused until some expire ([tracker] max_swarms %d, "
                        "max_peers %d)", error, self.table.max_swarms, self.table.max_peers)
        key = (protocol, kind, error.reason)
        now = time.monotonic()
        last, since = self._refusals_logged.get(key, (-REFUSAL_LOG_EVERY, 0))
        if now - last < REFUSAL_LOG_EVERY:
            self._refusals_logged[key] = (last, since + 1)
            return
        self._refusals_logged[key] = (now, 0)
        log.info("refused %s %s (%s): %s%s", protocol, kind, error.reason, error,
                 f"; and {since} more like it since the last line" if since else "")


# -- HTTP -------------------------------------------------------------------------------------------


def _bencoded(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="text/plain")


def _raw_query(request: web.Request) -> str:
    """The query string as the client sent it: aiohttp's `query_string` is already
    percent-decoded once (yarl), which destroys raw info-hashes (wire.py)."""
    return request.raw_path.partition("?")[2]


async def http_announce(request: web.Request) -> web.Response:
    tracker = request.app[TRACKER]
    remote = request.remote or ""
    try:
        a = parse_announce(_raw_query(request), remote, ip_trusted=tracker.ip_trusted(remote))
        tracker.check_access(a.info_hash, request.match_info.get("key"))
        swarm, peers, complete, incomplete = tracker.announce(a, time.time())
    except TrackerRefused as e:
        tracker.refused(Protocol.HTTP, Kind.ANNOUNCE, e)
        return _bencoded(failure_body(str(e)))
    tracker.count(Protocol.HTTP, Kind.ANNOUNCE)
    return _bencoded(announce_body(swarm, peers, complete, incomplete,
                                   interval=tracker.config.interval,
                                   min_interval=tracker.config.min_interval,
                                   compact=a.compact, no_peer_id=a.no_peer_id))


async def http_scrape(request: web.Request) -> web.Response:
    tracker = request.app[TRACKER]
    try:
        hashes = parse_scrape(_raw_query(request))
        stats = tracker.scrape_visible(hashes, request.match_info.get("key"))
    except TrackerRefused as e:
        tracker.refused(Protocol.HTTP, Kind.SCRAPE, e)
        return _bencoded(failure_body(str(e)))
    tracker.count(Protocol.HTTP, Kind.SCRAPE)
    return _bencoded(scrape_body(stats))


async def stats(request: web.Request) -> web.Response:
    table = request.app[TRACKER].table
    return web.json_response({"swarms": len(table.swarms), "peers": table.peer_count,
                              "seeders": table.seeders})


async def carried(request: web.Request) -> web.Response:
    """What the peers of the asking mirror's swarms sent, and what it sent (tracker/carried.py):
    `?port=` its BitTorrent port; the address is the one it asks from (or `ip=` from a
    trusted proxy, as for the sites)."""
    tracker = request.app[TRACKER]
    remote = request.remote or ""
    port = request.query.get("port", "")
    if not (port.isdigit() and 0 < int(port) < 65536):
        return web.json_response({"error": "port: the mirror's BitTorrent port"}, status=400)
    ip = (request.query.get("ip", "") if tracker.ip_trusted(remote) else "") or remote
    return web.json_response(tracker.carried.of(f"{ip}:{int(port)}", tracker.table.swarms))


async def sites(request: web.Request) -> web.Response:
    """Where the asker is by the CIDR map, and the networks of its own site and region: what a
    pull needs to tell its site's peers (near, asked first) from the rest (far, shared out
    so each piece crosses the site's uplink about once; peer/steering.py). The rest of the
    map is not given away. With no map (or an address outside it) the site is null."""
    tracker = request.app[TRACKER]
    remote = request.remote or ""
    asked = request.query.get("ip", "") if tracker.ip_trusted(remote) else ""
    ip = asked or remote
    site, region = tracker.locality.where(ip)
    return web.json_response({
        "ip": ip, "site": site, "region": region,
        "site_networks": [str(s.network) for s in tracker.config.sites
                          if site is not None and s.site == site],
        "region_networks": [str(s.network) for s in tracker.config.sites
                            if region is not None and s.region == region],
    })


async def metrics(request: web.Request) -> web.Response:
    tracker = request.app[TRACKER]
    table = tracker.table
    tracker.swarms_gauge.set(len(table.swarms))
    tracker.peers_gauge.set(table.peer_count)
    tracker.seeders_gauge.set(table.seeders)
    tracker.carried_gauge.labels("peers").set(tracker.carried.peers_total)
    tracker.carried_gauge.labels("mirrors").set(tracker.carried.mirrors_total)
    if request.app.get(INDEX) is not None:
        await request.app[INDEX].view()  # sets the index's gauges
    return metrics_response(tracker.registry)


# -- UDP ----------------------------------------------------------------------------------------------


class UdpTracker:
    """BEP 15 on a non-blocking socket read straight from the loop: each time it is readable
    up to BATCH datagrams are answered in one go (asyncio's datagram transport takes one loop
    iteration per packet, most of a small answer's cost). An answer the kernel cannot take at
    once is dropped, as UDP may; the client asks again."""

    BATCH = 64

    def __init__(self, tracker: Tracker, sock: socket.socket):
        self.tracker = tracker
        self.sock = sock
        sock.setblocking(False)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        self._loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def _readable(self) -> None:
        now = time.time()
        for _ in range(self.BATCH):
            try:
                data, addr = self.sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. ICMP port unreachable reported on Linux
                log.debug("UDP receive: %s", e)
                continue
            try:
                answer = self.answer(data, addr, now)
            except Exception:  # a bug must not take the tracker down; the packet gets no answer
                log.exception("UDP packet from %s failed", addr[0])
                continue
            if answer is not None:
                try:
                    self.sock.sendto(answer, addr)
                except (BlockingIOError, InterruptedError, OSError):
                    pass

    def answer(self, data: bytes, addr, now: float) -> bytes | None:
        req = parse_udp(data)
        if req is None:
            return None  # too short to carry a transaction id: ignored
        kind = UDP_KINDS.get(req.action, Kind.OTHER)
        try:
            answer = self._answer(req, kind, addr, now)
        except TrackerRefused as e:
            self.tracker.refused(Protocol.UDP, kind, e)
            return udp_error(req.transaction_id, str(e))
        self.tracker.count(Protocol.UDP, kind)
        return answer

    def _answer(self, req: UdpRequest, kind: Kind, addr, now: float) -> bytes:
        tracker = self.tracker
        if kind is Kind.CONNECT:
            if req.connection_id != PROTOCOL_ID:
                raise TrackerRefused("bad protocol id", Refusal.CONNECTION)
            minute = int(now // CONNECTION_WINDOW)
            return udp_connect_answer(req.transaction_id, tracker.connection_id(addr, minute))
        if not tracker.connection_ok(req.connection_id, addr, now):
            raise TrackerRefused("unknown or expired connection id", Refusal.CONNECTION)
        if kind is Kind.ANNOUNCE:
            a = parse_udp_announce(req, addr[0])
            tracker.check_access(a.info_hash, None)  # BEP 15 carries no key
            swarm, peers, complete, incomplete = tracker.announce(a, now)
            # an answer carries the family the request came in
            return udp_announce_answer(req.transaction_id, tracker.config.interval,
                                       incomplete, complete,
                                       swarm.compact(peers, v6=is_v6(addr[0])))
        if kind is Kind.SCRAPE:
            stats = tracker.scrape_visible(parse_udp_scrape(req), None)
            return udp_scrape_answer(req.transaction_id, [stats[h] for h in stats])
        raise TrackerRefused(f"unknown action {req.action}", Refusal.ACTION)


async def _index(app: web.Application) -> AsyncIterator[None]:
    """The index (tracker/indexhttp.py), when `[tracker] index` is on and there is a home."""
    async for _ in index_context(app, app[CONFIG], app[TRACKER]):
        yield


# -- the service: each resource in its own cleanup_ctx entry (peer/service.py) --------------


async def _state(app: web.Application) -> AsyncIterator[None]:
    app[TRACKER] = Tracker(app[CONFIG])
    yield


async def _udp(app: web.Application) -> AsyncIterator[None]:
    """BEP 15 on the HTTP port's number."""
    config = app[CONFIG]
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((config.host, port_of(app)))
    except BaseException:
        sock.close()
        raise
    endpoint = UdpTracker(app[TRACKER], sock)
    endpoint.start(asyncio.get_running_loop())
    try:
        yield
    finally:
        endpoint.close()


async def _expiry(app: web.Application) -> AsyncIterator[None]:
    tracker = app[TRACKER]

    async def expire() -> None:
        while True:
            await asyncio.sleep(min(60, tracker.config.peer_ttl))
            dropped = tracker.expire(time.time())
            if dropped:
                log.info("expired %d peers", dropped)

    task = app[LOOPS].spawn(expire(), "peer expiry")
    try:
        yield
    finally:
        await app[LOOPS].stop([task])


def create_app(config: TrackerConfig) -> web.Application:
    # A long request line gets our bencoded refusal instead of aiohttp's plain 400.
    app = web.Application(handler_args={"max_line_size": 131072})
    app[CONFIG] = config
    app[LIMITS] = config.http
    app.cleanup_ctx.extend([listening(config.host, config.port), background("tracker"), _state,
                            _udp, _expiry, _index])
    app.router.add_get("/announce", http_announce)
    app.router.add_get("/scrape", http_scrape)
    app.router.add_get("/announce/{key}", http_announce)
    app.router.add_get("/scrape/{key}", http_scrape)
    app.router.add_get("/api/weightswarm/stats", stats)
    app.router.add_get("/api/weightswarm/sites", sites)
    app.router.add_get("/api/weightswarm/carried", carried)
    app.router.add_get("/metrics", metrics)
    add_routes(app)
    add_pages(app)
    return app


async def start(config: TrackerConfig) -> Service:
    """HTTP and UDP on the configured port (0: any free port, the same number for both)."""
    service = await start_service(create_app(config), "tracker")
    log.info("tracker listening on %s/announce and udp://%s", service.url, service.netloc)
    return service


async def serve(config: TrackerConfig) -> None:
    await serve_services(await start(config))
