"""`weightswarm peer serve`: keep seeding what this machine pulled (DESIGN.md section 4).

The daemon seeds every blob of the local Hugging Face cache that a trusted manifest names,
straight from the cache (no copy), announces to the torrents' trackers, and picks up new pulls
within seconds. Its HTTP port (8471) serves `/metrics` and relays, read-only, what it pulled: the
mirrors' signed manifests, ref statements and torrents, and the blobs themselves, so the next
machine on the site can pull from it while the mirrors are unreachable. Relaying needs no trust
in this daemon: a pull believes only signatures from keys it trusts, and checks every byte.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import libtorrent as lt
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from .errors import BadRequest, NotFound, RevisionNotFound
from .hfcache import RepoCache, etag_of, hub_cache
from .hfformat import REPO_TYPES
from .http import errors_middleware
from .hubs import HUBS
from .manifest import ManifestError, UnknownKey, read_manifest
from .metrics import Children, metrics_response
from .paths import check_repo_id, check_revision, is_commit, is_sha256
from .service import LIMITS, LOOPS, Service, background, listening
from .service import serve as serve_services
from .service import start as start_service
from .settings import PEER_FINGERPRINT, PeerConfig
from .torrent import info_hash
from .trust import Trust

log = logging.getLogger(__name__)

#: how often the daemon looks for new pulls, seconds
SCAN_EVERY = 2.0


@dataclass(frozen=True)
class Held:
    """A blob this machine holds, named by a trusted manifest."""

    path: Path
    size: int
    torrent: Path | None


class PeerDaemon:
    """What the daemon holds and seeds, and its HTTP handlers (over that state only)."""

    def __init__(self, config: PeerConfig):
        self.config = config
        self.home = config.home
        self.cache = Path(config.cache) if config.cache else hub_cache()
        self.trust = Trust(self.home, config.trusted_keys)
        self.held: dict[str, Held] = {}
        self.seeding: dict[str, str] = {}  # sha256 → info-hash
        self._seen: dict[Path, float] = {}
        self.session = None
        self.registry = CollectorRegistry()
        self.m_torrents = Gauge("weightswarm_peer_torrents_seeded", "Blobs seeded",
                                registry=self.registry)
        self.m_peers = Gauge("weightswarm_peer_bittorrent_peers", "BitTorrent peers connected",
                             registry=self.registry)
        self.m_up = Children(Counter("weightswarm_peer_uploaded_bytes",
                                     "Payload bytes sent, by way", ["via"],
                                     registry=self.registry))
        self._sent = 0

    # -- what we hold ---------------------------------------------------------------------------

    def scan(self) -> list[str]:
        """Read manifests not seen before; returns the sha256 of blobs newly held."""
        new = []
        # A pull may have pinned a mirror's key since the last scan: read the pins again,
        # and the index's key list the last pull believed (peer/trust.py).
        self.trust = Trust(self.home, self.config.trusted_keys)
        if self.config.index:
            self.trust.delegated = self.trust.delegated_on_disk(self.config.index)
        trusted = self.trust.keys()
        for path in sorted((self.home / "manifests").glob("*/*/**/*.msgpack")):
            mtime = path.stat().st_mtime
            if self._seen.get(path) == mtime:
                continue
            try:
                manifest, _ = read_manifest(path.read_bytes(), trusted)
            except UnknownKey as e:
                log.debug("%s: not used yet: %s", path, e)  # a key may be trusted later
                continue
            except (ManifestError, OSError) as e:
                self._seen[path] = mtime
                log.warning("%s: not used: %s", path, e)
                continue
            cache = RepoCache(self.cache, manifest.type, manifest.repo)
            for f in manifest.files:
                if f.sha256 in self.held:
                    continue
                blob = cache.blob(etag_of(f.sha256, f.git_sha1, f.lfs))
                if not cache.has_blob(etag_of(f.sha256, f.git_sha1, f.lfs), f.size):
                    continue
                torrent = None
                if f.info_hash:
                    candidate = self.home / "torrents" / f"{f.sha256}.torrent"
                    if _info_hash(candidate) == f.info_hash:
                        torrent = candidate
                self.held[f.sha256] = Held(blob, f.size, torrent)
                new.append(f.sha256)
            if all(f.sha256 in self.held for f in manifest.files):
                # Whole: nothing more to find here. A pull still running (or one limited by
                # --include) is looked at again at the next scan.
                self._seen[path] = mtime
        return new

    def seed(self, sha256s: list[str]) -> None:
        for sha256 in sha256s:
            held = self.held[sha256]
            if held.torrent is None or sha256 in self.seeding:
                continue
            torrent = lt.bdecode(held.torrent.read_bytes())
            trackers = [t.decode() for tier in torrent.get(b"announce-list", []) for t in tier]
            # Verified when pulled (every piece, then the whole sha256): seed without hashing.
            self.seeding[sha256] = self.session.add(
                lt.bencode({b"info": torrent[b"info"]}), held.path.parent, trackers=trackers,
                have_all=True, name=held.path.name)
        self.m_torrents.set(len(self.seeding))

    async def _rescan(self) -> None:
        while True:
            await asyncio.sleep(SCAN_EVERY)
            try:
                new = await asyncio.to_thread(self.scan)
                if new:
                    self.seed(new)
                    log.info("seeding %d more blobs (%d in all)", len(new), len(self.seeding))
                counters = await self.session.stats()
                sent = counters.get("net.sent_payload_bytes", 0)
                self.m_up("bittorrent").inc(max(0, sent - self._sent))
                self._sent = sent
                self.m_peers.set(counters.get("peer.num_peers_connected", 0))
            except Exception:
                log.exception("scanning for new pulls failed; trying again")

    # -- HTTP ---------------------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        return web.json_response({"service": "weightswarm peer", "seeding": len(self.seeding),
                                  "bittorrent_port": self.session.port if self.session else None})

    async def metrics(self, request: web.Request) -> web.Response:
        return metrics_response(self.registry)

    def _repo_dir(self, request: web.Request, root: str) -> Path:
        hub, repo_type, repo = (request.match_info[k] for k in ("hub", "type", "repo"))
        if hub not in HUBS or repo_type not in REPO_TYPES:
            raise NotFound("no such hub or type")
        return self.home / root / hub / repo_type / check_repo_id(repo)

    async def snapshot(self, request: web.Request) -> web.Response:
        folder = self._repo_dir(request, "snapshots")
        revision = check_revision(request.query.get("revision", "main"))
        try:
            return web.json_response(json.loads(
                (folder / f"{quote(revision, safe='')}.json").read_text()))
        except FileNotFoundError:
            pass
        manifests = self._repo_dir(request, "manifests")
        if is_commit(revision) and (manifests / f"{revision}.msgpack").is_file():
            return web.json_response({"commit": revision})
        raise RevisionNotFound(request.match_info["repo"], revision,
                               message=f"this peer has not pulled {revision}")

    async def manifest(self, request: web.Request) -> web.Response:
        commit = request.match_info["commit"]
        if not is_commit(commit):
            raise BadRequest("a manifest is named by its commit")
        path = self._repo_dir(request, "manifests") / f"{commit}.msgpack"
        if not path.is_file():
            raise NotFound("no such manifest here")
        return web.Response(body=path.read_bytes(), content_type="application/x-msgpack")

    async def torrent(self, request: web.Request) -> web.Response:
        sha256 = request.match_info["sha256"]
        held = self.held.get(sha256) if is_sha256(sha256) else None
        if held is None or held.torrent is None:
            raise NotFound("no such torrent here")
        return web.Response(body=held.torrent.read_bytes(),
                            content_type="application/x-bittorrent")

    async def blob(self, request: web.Request) -> web.StreamResponse:
        sha256 = request.match_info["sha256"]
        held = self.held.get(sha256) if is_sha256(sha256) else None
        if held is None:
            raise NotFound("no such blob here")
        self.m_up("http").inc(held.size)
        return web.FileResponse(held.path)


# -- the service: each resource in its own cleanup_ctx entry (peer/service.py) --------------

DAEMON = web.AppKey("daemon", PeerDaemon)


async def _session(app: web.Application) -> AsyncIterator[None]:
    from .session import Session

    daemon = app[DAEMON]
    daemon.session = Session(daemon.config.serve_bt, role="daemon",
                             fingerprint=PEER_FINGERPRINT)
    daemon.session.start()
    try:
        yield
    finally:
        daemon.session.close()


async def _seeding(app: web.Application) -> AsyncIterator[None]:
    """Seed what the cache holds now, then look for new pulls every few seconds."""
    daemon = app[DAEMON]
    daemon.seed(await asyncio.to_thread(daemon.scan))
    task = app[LOOPS].spawn(daemon._rescan(), "looking for new pulls")
    try:
        yield
    finally:
        await app[LOOPS].stop([task])


def create_app(config: PeerConfig) -> web.Application:
    daemon = PeerDaemon(config)
    app = web.Application(middlewares=[errors_middleware])
    app[DAEMON] = daemon
    app[LIMITS] = config.http
    app.cleanup_ctx.extend([listening(config.host, config.port), background("peer daemon"),
                            _session, _seeding])
    app.router.add_get("/", daemon.index)
    app.router.add_get("/metrics", daemon.metrics)
    app.router.add_get("/api/weightswarm/snapshots/{hub}/{type}/{repo:.+}", daemon.snapshot)
    app.router.add_get("/api/weightswarm/manifests/{hub}/{type}/{repo:.+}/{commit}",
                       daemon.manifest)
    app.router.add_get("/api/weightswarm/torrents/{sha256}.torrent", daemon.torrent)
    app.router.add_get("/blobs/sha256/{sha256}", daemon.blob)
    return app


async def start(config: PeerConfig) -> Service:
    app = create_app(config)
    service = await start_service(app, "peer daemon")
    daemon = app[DAEMON]
    service = dataclasses.replace(service, bittorrent_port=daemon.session.port)
    log.info("peer daemon: seeding %d blobs from %s on BitTorrent port %d; %s/metrics",
             len(daemon.seeding), daemon.cache, daemon.session.port, service.url)
    return service


async def serve(config: PeerConfig) -> None:
    await serve_services(await start(config))


def _info_hash(path: Path) -> str | None:
    try:
        return info_hash(lt.bdecode(path.read_bytes())[b"info"])
    except (OSError, RuntimeError, ValueError, KeyError, TypeError):
        return None
