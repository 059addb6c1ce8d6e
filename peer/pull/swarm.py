"""Step 3b of a pull: the large files, over BitTorrent, all at once, in one libtorrent session
on an ephemeral port (peer/session.py, role `pull`).

- **Torrents.** Each large file's torrent comes from the first mirror that has it, and is
  believed only if its info-hash is the one the signed manifest names. It is decoded with our
  strict decoder (peer/bencode.py): it is input from the network, possibly from a peer daemon
  relaying. Only its info dict goes to libtorrent; its trackers are passed apart, and its web
  seeds are held back (below). It is kept as the mirror sent it, for the peer daemon to relay.
- **Watching.** Progress is payload received, partial pieces included. The mirrors' web seeds
  join a torrent only once it has made no progress for `web_seed_grace` seconds with no peer
  (`PEERS_GRACE` times that with peers connected), so that a site's peers carry the load its
  mirror would.
- **Steering.** Which pieces to ask the mirrors for is decided by peer/steering.py (pure) from
  what `Session.swarm` shows, and applied as piece priorities; should it fail, the pull goes on
  with every piece from anyone.
- **Completion.** libtorrent checks each piece against the torrent; once it is finished and
  flushed, the whole file is checked against the manifest's sha256, then renamed from its
  partial name to its ETag while it keeps seeding.
- **Resume.** A pull cut off continues from the partial files; libtorrent's resume data, saved
  for what did not finish, spares it re-hashing them.
- **Source accounting.** Who sent what, from every block libtorrent reported (`account`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .. import atomic
from ..bencode import bdecode, bencode
from ..errors import IntegrityError, WeightswarmError, out_of_space
from ..hashing import sha256_file
from ..hfcache import RepoCache
from ..manifest import ManifestFile
from ..settings import MIRROR_FINGERPRINT, PEER_FINGERPRINT, PeerConfig
from ..steering import NORMAL, PeerView, Steering, piece_set
from ..torrent import info_hash
from .http import MirrorClient, nearest_first
from .place import etag
from .site import Site, learn_site
from .spec import PullError, PullResult

log = logging.getLogger(__name__)

#: how often progress, sources and web-seed hold-back are looked at, seconds
WATCH_EVERY = 0.5
#: how often the pieces asked of mirrors are decided again (steering.py), seconds
STEER_EVERY = 0.2
#: with peers connected, a torrent may stall this many times the grace before web seeds join
PEERS_GRACE = 4
#: seconds without progress before a pull says what it is waiting for (blocks asked of a
#: source just cut off are asked of the neighbours only once libtorrent drops it, after
#: peer/session.py's PEER_TIMEOUT: a report may come before, and "moving again" follow)
STALL_REPORT = 15.0
#: seconds between dials of the mirrors while a torrent needs them and has none connected
REDIAL_EVERY = 5.0
MiB = 1 << 20


@dataclass
class Large:
    """One large file of the pull, its torrent, and how its transfer goes."""

    file: ManifestFile
    #: its info dict alone, bencoded: what libtorrent is given
    torrent: bytes
    trackers: list[str]
    web_seeds: list[str]
    piece_length: int
    #: a private swarm's (its info dict says `private: 1`)
    private: bool = False
    key: str = ""
    seeded_web: bool = False
    done: bool = False
    last_done: int = -1
    last_progress: float = 0.0
    #: a stall has been reported and no progress made since
    stall_reported: bool = False

    @property
    def pieces(self) -> int:
        return -(-self.file.size // self.piece_length)


class BitTorrent:
    """The large files of one pull. `mirrors`: the configured mirrors, nearest first."""

    def __init__(self, config: PeerConfig, home: Path, mirrors: list[str], *,
                 relay: bool = True):
        self.config = config
        self.home = home
        self.mirrors = mirrors
        #: keep the torrents for the peer daemon to seed and relay (not what a token brought)
        self.relay = relay
        self.resume = ResumeData(home / "resume")

    async def fetch(self, client: MirrorClient, cache: RepoCache, files: list[ManifestFile],
                    result: PullResult, bar) -> None:
        from ..session import Session

        larges = [await self._torrent(client, f, result.mirror) for f in files]
        endpoints, daemons = await source_endpoints(client, self.mirrors)
        site = await learn_site(client, [t for item in larges for t in item.trackers])
        # A whole peer id, so this pull knows itself among the owners of pieces (steering.py).
        own_id = PEER_FINGERPRINT + secrets.token_hex(6)
        session = Session(self.config.pull_bt, role="pull", fingerprint=own_id)
        session.start()
        try:
            for item in larges:
                item.key = session.add(item.torrent, cache.blobs, trackers=item.trackers,
                                       resume=self.resume.read(item.file),
                                       name=cache.staging(etag(item.file)).name)
                session.dial(item.key, daemons)
                item.last_progress = time.monotonic()
            await self._transfer(session, cache, larges, Sources(own_id.encode(), endpoints, site),
                                 result, bar)
        finally:
            session.close()

    async def _torrent(self, client: MirrorClient, f: ManifestFile, first: str) -> Large:
        errors = []
        for mirror in nearest_first(first, self.mirrors):
            try:
                data = await client.bytes(f"{mirror}/api/weightswarm/torrents/{f.sha256}.torrent")
                item = read_torrent(data, f, self.mirrors)
                if item.private:
                    # A private swarm's (BEP 27): its trackers carry the reader's own key; the
                    # mirrors' web seeds need the token, which libtorrent sends as HTTP Basic
                    # from the URL (a handle cannot add a seed with headers once added, and
                    # they are added late: peers first). Only mirrors the token is for.
                    item.web_seeds = [with_token(url, client.token)
                                      for url in item.web_seeds if client.auth(url)]
                elif self.relay:
                    # Kept as the mirror sent it (trackers, web seeds) for the peer daemon.
                    atomic.write_file(self.home / "torrents" / f"{f.sha256}.torrent", data)
                return item
            except (WeightswarmError, KeyError, ValueError, TypeError) as e:
                errors.append(f"{mirror}: {e or type(e).__name__}")
        raise PullError(f"{f.path}: no mirror gave its torrent: " + "; ".join(errors))

    async def _transfer(self, session, cache: RepoCache, larges: list[Large], sources: Sources,
                        result: PullResult, bar) -> None:
        watcher = asyncio.create_task(watch(session, larges, bar, self.config.web_seed_grace))
        steerer = asyncio.create_task(steer(session, larges, sources))
        try:
            async with asyncio.TaskGroup() as group:
                for item in larges:
                    group.create_task(self._complete(session, cache, item))
        finally:
            for task in (watcher, steerer):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._save_resume(session, larges)
            await settle(session, larges)
            account(session, larges, sources.mirrors, result)

    async def _complete(self, session, cache: RepoCache, item: Large) -> None:
        f = item.file
        tag = etag(f)
        try:
            await session.finished(item.key)
        except OSError as e:  # libtorrent could not write it (peer/session.py)
            raise (out_of_space(e, cache.blobs, writing=f.path)
                   or PullError(f"{f.path}: writing to {cache.blobs} failed: {e.strerror}")
                   ) from None
        digest = await asyncio.to_thread(_sha256_synced, cache.staging(tag))
        if digest != f.sha256:
            # Every piece matched the torrent the manifest signs, yet the file does not: refuse.
            raise IntegrityError("sha256", f.sha256, digest)
        # Keep seeding under the final name while the rest of the pull runs.
        await session.rename(item.key, tag)
        await asyncio.to_thread(atomic.fsync_dir, cache.blobs)
        item.done = True
        self.resume.forget(f)
        log.info("%s: %d bytes over BitTorrent, verified", f.path, f.size)

    async def _save_resume(self, session, larges: list[Large]) -> None:
        for item in larges:
            if item.done or item.private:
                continue  # a private one's resume data would keep its web seeds: the token
            with contextlib.suppress(Exception):
                self.resume.save(item.file, await asyncio.wait_for(
                    session.save_resume(item.key), 5))


def with_token(url: str, token: str) -> str:
    """`url` with the token as its password: libtorrent sends it as HTTP Basic, which the
    mirror takes as it takes a bearer token."""
    parts = urlsplit(url)
    return parts._replace(netloc=f"token:{token}@{parts.netloc}").geturl()


def read_torrent(data: bytes, f: ManifestFile, mirrors: list[str]) -> Large:
    """A torrent as a mirror sent it, for the manifest's file `f`; raises ValueError (bad
    bencoding), KeyError or TypeError (not a torrent) or IntegrityError (another torrent)."""
    torrent = bdecode(data)
    info = torrent[b"info"]
    if info_hash(info) != f.info_hash:
        raise IntegrityError("info-hash", f.info_hash or "", "another torrent")
    tiers = torrent.get(b"announce-list", [])
    if not isinstance(tiers, list):
        raise ValueError("announce-list is not a list of tiers")
    trackers = [t for tier in tiers for t in _texts(tier, "announce-list")]
    if not trackers and b"announce" in torrent:
        trackers = _texts(torrent[b"announce"], "announce")
    seeds = _texts(torrent.get(b"url-list", []), "url-list")
    seeds += [f"{m}/blobs/sha256/{f.sha256}" for m in mirrors]
    return Large(f, bencode({b"info": info}), list(dict.fromkeys(trackers)),
                 list(dict.fromkeys(seeds)), info[b"piece length"],
                 private=info.get(b"private") == 1)


class ResumeData:
    """libtorrent's resume data of the torrents a pull did not finish, by info-hash."""

    def __init__(self, folder: Path):
        self.folder = folder

    def _path(self, f: ManifestFile) -> Path:
        return self.folder / f"{f.info_hash}.resume"

    def read(self, f: ManifestFile) -> bytes | None:
        try:
            return self._path(f).read_bytes()
        except FileNotFoundError:
            return None

    def save(self, f: ManifestFile, data: bytes) -> None:
        atomic.write_file(self._path(f), data)

    def forget(self, f: ManifestFile) -> None:
        self._path(f).unlink(missing_ok=True)


# -- watching: progress, and the web seeds held back ---------------------------------------------


def web_seeds_due(item: Large, status, now: float, grace: float) -> bool:
    """Whether the mirrors' web seeds join `item`'s torrent now: it has made no progress for
    `grace` seconds with no peer connected. Connected peers may be slow to start (a
    rate-limited seed takes seconds to send its first piece): they get `PEERS_GRACE` times
    longer."""
    if item.seeded_web or status.is_seeding:
        return False
    return now - item.last_progress >= (grace if status.peers == 0 else PEERS_GRACE * grace)


async def watch(session, larges: list[Large], bar, grace: float) -> None:
    shown = 0
    while True:
        await asyncio.sleep(WATCH_EVERY)
        now = time.monotonic()
        total = 0
        for item in larges:
            status = session.status(item.key)
            # Payload received, partial pieces included: a 4 MiB piece from a slow source
            # takes seconds to complete, and is progress all the while.
            total += status.downloaded
            _watch_one(session, item, status, now, grace)
        bar.update(total - shown)
        shown = total


def _watch_one(session, item: Large, status, now: float, grace: float) -> None:
    """Progress of one torrent; web seeds added when it stalls, and a stall said once."""
    if status.downloaded > item.last_done:
        if item.stall_reported:
            log.info("%s: moving again", item.file.path)
            item.stall_reported = False
        item.last_done, item.last_progress = status.downloaded, now
        return
    if web_seeds_due(item, status, now, grace):
        log.info("%s: no progress for %.0fs with %d peers: adding %d web seeds",
                 item.file.path, now - item.last_progress, status.peers, len(item.web_seeds))
        session.set_url_seeds(item.key, item.web_seeds)
        item.seeded_web = True
    if (not item.stall_reported and not status.is_seeding
            and now - item.last_progress >= STALL_REPORT):
        # A cut link: the site's peers have traded what is inside, and the rest is far.
        have, peers, _ = session.swarm(item.key)
        had = piece_set(have)
        offered = 0
        for p in peers:
            if not (p.seed or p.web_seed):  # a seed connected yet silent: a far mirror
                offered |= piece_set(p.pieces)
        lacking = (offered & ~had).bit_count()
        missing = item.pieces - had.bit_count()
        log.warning("%s: %d of %d pieces here, and nothing more for %.0fs from the %d peers "
                    "connected (who hold %d pieces this pull lacks): the other %d pieces "
                    "(%.1f MiB) are at no source this pull reaches; it waits for them and "
                    "goes on by itself when one comes back",
                    item.file.path, item.pieces - missing, item.pieces,
                    now - item.last_progress, status.peers, lacking, missing,
                    missing * item.piece_length / MiB)
        item.stall_reported = True


# -- steering: the far sources' pieces shared out (steering.py) -----------------------------------


@dataclass(frozen=True)
class Sources:
    """What a pull knows of its sources: its own peer id, the mirrors' BitTorrent endpoints,
    and its site."""

    own_id: bytes
    mirrors: set[tuple[str, int]]
    site: Site

    def far(self, p) -> bool:
        """A connection (`PeerState`) is far: a mirror or web seed not known to be at this
        site, or a peer known to be elsewhere. A peer found by local discovery is near."""
        near = True if p.lsd else self.site.near(p.ip)
        if p.web_seed or _is_mirror(p.pid, p.ip, p.port, self.mirrors):
            return near is not True
        return near is False

    @property
    def closable(self) -> set[tuple[str, int]]:
        """The mirrors a torrent is closed to while it needs nothing far: those outside the
        site, when the site is known (without it a mirror may share its address with a
        near peer: loopback, one machine)."""
        if not self.site.known:
            return set()
        return {(ip, port) for ip, port in self.mirrors if self.site.near(ip) is False}


async def steer(session, larges: list[Large], sources: Sources) -> None:
    """Share the far sources' pieces out among the site's pulls (steering.py). Should it
    fail, the pull goes on without it: every piece from anyone, every source open."""
    try:
        await _steer_pieces(session, larges, sources)
    except Exception:
        log.exception("steering pieces failed: every piece from anyone from now on")
        for item in larges:
            with contextlib.suppress(Exception):
                session.set_piece_priorities(item.key, [NORMAL] * item.pieces)
                session.reach(item.key, sources.closable)


@dataclass
class _Steered:
    """One torrent's steering and what was last applied of it."""

    steering: Steering
    applied: list[int] | None = None
    #: open to the far sources (`Session.reach`)
    reached: bool = True
    dialled: float = 0.0


async def _steer_pieces(session, larges: list[Large], sources: Sources) -> None:
    now = time.monotonic()
    steered = {item.key: _Steered(Steering(sources.own_id, item.pieces, item.piece_length),
                                  dialled=now) for item in larges}
    closable = sources.closable
    if closable:
        for item in larges:
            session.reach(item.key, closable)
            steered[item.key].steering.closes_far = True
        session.keep_off({ip for ip, _ in closable})
    while True:
        now = time.monotonic()
        for item in larges:
            if not item.done:
                _steer_one(session, item, steered[item.key], sources, closable, now)
        await asyncio.sleep(STEER_EVERY)


def _steer_one(session, item: Large, state: _Steered, sources: Sources,
               closable: set[tuple[str, int]], now: float) -> None:
    """Decide one torrent's priorities again, and open or close it to the far sources."""
    try:
        have, peers, received = session.swarm(item.key)
    except KeyError:
        return
    steering = state.steering
    priorities = _decide(steering, item.file.path, now, piece_set(have), peers, received,
                         sources)
    if priorities != state.applied:
        session.set_piece_priorities(item.key, priorities)
        state.applied = priorities
    if closable and steering.needs_far != state.reached:
        state.reached = steering.needs_far
        session.reach(item.key, closable if steering.needs_far else None)
        log.debug("%s: %s", item.file.path, "far sources reopened" if steering.needs_far
                  else "nothing left for the far sources: their connections closed")
    elif closable and steering.needs_far and now - state.dialled >= REDIAL_EVERY:
        _redial(session, item.key, peers, sources)
        state.dialled = now


def _redial(session, key: str, peers: list, sources: Sources) -> None:
    """Dial the mirrors when the torrent needs them and none is connected: libtorrent gives up
    on a peer after a few failed attempts (a cut link), and the tracker that would name it
    again may be behind the same link."""
    if sources.mirrors and not any(_is_mirror(p.pid, p.ip, p.port, sources.mirrors)
                                   for p in peers):
        session.dial(key, sources.mirrors)


def _decide(steering: Steering, path: str, now: float, have: int, peers: list,
            received: int, sources: Sources) -> list[int]:
    """One torrent's priorities from what its connections hold; logs what changed."""
    views, from_far = [], 0
    for p in peers:
        far = sources.far(p)
        if far:
            from_far += p.rate
        views.append(PeerView(p.pid, far, p.seed, piece_set(p.pieces)))
    was_relaxed, was_stalled = steering.relaxed, steering.stalled
    priorities = steering.decide(now, have, views, received, from_far)
    if steering.relaxed != was_relaxed:
        log.info("%s: %s", path, "nothing received for a while: every piece from anyone"
                 if steering.relaxed else "far pieces shared out again")
    for pid in steering.stalled - was_stalled:
        log.info("%s: pull %s makes no progress: its share of the far pieces passes to "
                 "the others", path, pid.decode(errors="replace"))
    return priorities


# -- whose bytes -----------------------------------------------------------------------------------


async def source_endpoints(client: MirrorClient, urls: list[str]
                           ) -> tuple[set[tuple[str, int]], set[tuple[str, int]]]:
    """The BitTorrent listen endpoints of the mirrors and of the peer daemons (a site cache
    relaying, issue 16) among `urls`. Mirrors never dial out, so every connection from a mirror
    is to one of these, whatever peer id it shows; a daemon the pull asks is dialled at once,
    tracker or none."""
    mirrors, daemons = set(), set()
    for url in urls:
        with contextlib.suppress(WeightswarmError, ValueError, TypeError, AttributeError):
            info = await client.json(f"{url}/")
            if not info.get("bittorrent_port"):
                continue
            port = int(info["bittorrent_port"])
            found = {(address, port) for address in _addresses(urlsplit(url).hostname, port)}
            if info.get("service") == "weightswarm mirror":
                mirrors |= found
            elif info.get("service") == "weightswarm peer":
                daemons |= found
    return mirrors, daemons


#: the longest a finished pull waits for its last blocks' alerts (a block is reported when its
#: write completes, which a slow disk can hold back after the torrent is complete)
SETTLE = 2.0


async def settle(session, larges: list[Large], most: float = SETTLE) -> None:
    """Take in the alerts that trail completion until every byte a complete torrent received
    is accounted for (`account`), or `most` seconds have passed. An unfinished torrent (a
    pull stopped or failed) holds nothing up: it is still downloading, and what comes after
    its resume data was saved would be fetched again by the next run."""
    deadline = time.monotonic() + 0.2 if not all(_complete(session, i) for i in larges) \
        else time.monotonic() + most
    while True:
        await asyncio.sleep(0.05)
        session.drain()
        if time.monotonic() >= deadline or not any(_unaccounted(session, item) for item in larges):
            return


def _complete(session, item: Large) -> bool:
    try:
        return session.status(item.key).is_seeding
    except KeyError:
        return False


def _unaccounted(session, item: Large) -> int:
    try:
        status = session.status(item.key)
    except KeyError:
        return 0
    received = sum(session.sources.get(item.key, {}).values())
    return max(0, status.downloaded - status.redundant - received)


def account(session, larges: list[Large], mirrors: set[tuple[str, int]],
            result: PullResult) -> None:
    """Who sent what, from every block libtorrent received (`session.sources`): a mirror by its
    peer id (-WM, peer/session.py) or its listen endpoint, a web seed by its URL's endpoint
    (libtorrent gives web seeds a made-up peer id). libtorrent reports each block once, when
    its write completes: a block received twice (its end game) is `redundant` (libtorrent's
    count, whose sender no alert names), and what neither accounts for is `unattributed`."""
    for item in larges:
        web_seeds = _endpoints(item.web_seeds)
        sources = session.sources.get(item.key, {})
        for (pid, ip, port), n in sources.items():
            if not pid.strip(b"\0") or (ip, port) in web_seeds:
                result.from_web_seeds += n
                continue
            if _is_mirror(pid, ip, port, mirrors):
                result.from_mirrors += n
            else:
                result.from_peers += n
            name = f"{ip}:{port}"
            result.by_peer[name] = result.by_peer.get(name, 0) + n
        result.web_seeds_added += item.seeded_web
        with contextlib.suppress(KeyError):
            result.redundant += session.status(item.key).redundant
        result.unattributed += _unaccounted(session, item)


_MIRROR_PREFIX = MIRROR_FINGERPRINT[:3].encode()


def _is_mirror(pid: bytes, ip: str, port: int, mirrors: set[tuple[str, int]]) -> bool:
    """A connection is a mirror's by its peer id (-WM, peer/session.py) or by the mirror's
    listen endpoint: mirrors never dial out, so whatever peer id it shows."""
    return pid.startswith(_MIRROR_PREFIX) or (ip, port) in mirrors


def _endpoints(urls: list[str]) -> set[tuple[str, int]]:
    """(address, port) of each URL's server, its host name resolved."""
    found = set()
    for url in urls:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        found |= {(address, port) for address in _addresses(parts.hostname, port)}
    return found


def _addresses(host: str | None, port: int) -> set[str]:
    """The addresses a host name (or address) resolves to; none if it does not."""
    try:
        return {a[0] for *_, a in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    except (OSError, UnicodeError):
        return set()


def _texts(value, what: str) -> list[str]:
    """A torrent's string, or list of strings, as text; anything else is not a torrent (a
    ValueError, as bad UTF-8 is too)."""
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(v, bytes) for v in items):
        raise ValueError(f"{what} is not a string or a list of strings")
    return [v.decode("utf-8") for v in items]


def _sha256_synced(path: Path) -> str:
    """The file's sha256, its bytes made durable first (libtorrent wrote them; the rename into
    place follows)."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())
    return sha256_file(path)
