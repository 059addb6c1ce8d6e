"""`weightswarm pull`: a model from nearby peers into the Hugging Face cache (DESIGN.md
section 4, flow 5).

1. Ask the configured mirrors, nearest first, what the revision is
   (`/api/weightswarm/snapshots/...`): the commit and, for a ref, a signed ref statement.
2. Fetch the signed manifest and believe it only if a trusted key signed it (peer/trust.py).
   Nothing else is fetched before this.
3. Small files over HTTP from the first mirror that has them; large files over BitTorrent,
   all at once, in one session on an ephemeral port. The mirrors' web seeds are held back and
   join a torrent only when no peer has delivered for `web_seed_grace` seconds, so a site's
   peers carry the load its mirror would. libtorrent checks each piece against the torrent,
   whose info-hash the manifest signs; the whole file is then checked against the manifest's
   sha256.
4. Blobs are written into the cache's `blobs/` under a temporary name and renamed to their
   ETag once verified; the snapshot's links and the ref follow. A peer daemon later seeds them
   from there, no copy.

An interrupted pull (Ctrl-C, a crash) starts again where it stopped: libtorrent finds the pieces
already in the partial files (resume data saves it re-hashing them after a Ctrl-C).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

import aiohttp

from . import atomic, hubs
from .bencode import bdecode, bencode
from .errors import (
    BadRequest,
    InsufficientSpace,
    IntegrityError,
    NotFound,
    RemoteError,
    WeightswarmError,
)
from .hashing import sha256_file
from .hfcache import RepoCache, etag_of, hub_cache
from .http import raise_for_status, unreachable
from .manifest import Manifest, ManifestError, ManifestFile, read_manifest, read_ref
from .paths import check_repo_id, check_revision, is_commit
from .patterns import select
from .settings import MIRROR_FINGERPRINT, PEER_FINGERPRINT, PeerConfig
from .steering import NORMAL, PeerView, Steering, piece_set
from .torrent import info_hash
from .trust import Trust

log = logging.getLogger(__name__)

#: how often progress, sources and web-seed hold-back are looked at, seconds
WATCH_EVERY = 0.5
HTTP_PARALLEL = 8
#: how often the pieces asked of mirrors are decided again (steering.py), seconds
STEER_EVERY = 0.2
#: with peers connected, a torrent may stall this many times the grace before web seeds join
PEERS_GRACE = 4


class PullError(WeightswarmError):
    status = 502


@dataclass(frozen=True)
class PullSpec:
    repo_id: str
    revision: str = "main"
    hub: str = hubs.DEFAULT
    repo_type: str = "model"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    local_dir: Path | None = None
    dry_run: bool = False

    @classmethod
    def parse(cls, text: str, **kwargs) -> PullSpec:
        """`org/name` or `org/name@revision`."""
        repo_id, at, revision = text.partition("@")
        check_repo_id(repo_id)
        if at:
            check_revision(revision)  # "org/name@" names no revision: refused
        return cls(repo_id, revision or "main", **kwargs)


@dataclass
class PullResult:
    repo_id: str
    commit: str
    mirror: str
    files: list[dict]
    total_bytes: int
    #: bytes already in the cache before this run
    present_bytes: int = 0
    http_bytes: int = 0
    #: BitTorrent payload received in this run, by kind of source
    from_peers: int = 0
    from_mirrors: int = 0
    from_web_seeds: int = 0
    #: payload bytes received from each peer endpoint, "ip:port"
    by_peer: dict[str, int] = field(default_factory=dict)
    path: str = ""
    seconds: float = 0.0
    web_seeds_added: int = 0
    #: payload libtorrent received that no block alert accounted for (0 unless alerts were
    #: lost); kept apart rather than guessed
    unattributed: int = 0

    @property
    def bittorrent_bytes(self) -> int:
        return self.from_peers + self.from_mirrors + self.from_web_seeds


class MirrorClient:
    """The few HTTP calls a pull makes to mirrors (or to peer daemons relaying them). Every
    error is the contract's (peer/http.py): an answer's by its code and status, and no
    answer at all as `Unavailable`."""

    def __init__(self, session: aiohttp.ClientSession):
        self.http = session

    @contextlib.asynccontextmanager
    async def _get(self, url: str) -> AsyncIterator[aiohttp.ClientResponse]:
        try:
            async with self.http.get(url) as r:
                await raise_for_status(r)
                yield r
        except (TimeoutError, aiohttp.ClientError) as e:
            raise unreachable(url, e) from e

    async def json(self, url: str):
        async with self._get(url) as r:
            try:
                return await r.json(content_type=None)
            except ValueError:
                raise PullError(f"{url}: the answer is not JSON") from None

    async def bytes(self, url: str, limit: int = 64 << 20) -> bytes:
        async with self._get(url) as r:
            data = await r.content.read(limit + 1)
            if len(data) > limit:
                raise PullError(f"{url}: larger than {limit} bytes")
            return data

    async def download(self, url: str, dest: Path, size: int, sha256: str,
                       progress: Callable[[int], None]) -> None:
        """Stream `url` into place at `dest`, only if it is `size` bytes hashing to `sha256`."""
        digest = hashlib.sha256()
        got = 0
        async with self._get(url) as r:
            with atomic.replacing(dest) as out:
                async for chunk in r.content.iter_chunked(1 << 20):
                    got += len(chunk)
                    if got > size:
                        raise IntegrityError("size", str(size), f"more than {size} bytes")
                    digest.update(chunk)
                    out.write(chunk)
                    progress(len(chunk))
                if got != size:
                    raise IntegrityError("size", str(size), str(got))
                if digest.hexdigest() != sha256:
                    raise IntegrityError("sha256", sha256, digest.hexdigest())


@dataclass
class _Large:
    file: ManifestFile
    torrent: bytes
    trackers: list[str]
    web_seeds: list[str]
    piece_length: int
    key: str = ""
    seeded_web: bool = False
    done: bool = False
    last_done: int = -1
    last_progress: float = 0.0

    @property
    def pieces(self) -> int:
        return -(-self.file.size // self.piece_length)


class Pull:
    def __init__(self, config: PeerConfig, home: Path, spec: PullSpec, *,
                 mirrors: tuple[str, ...] = (), progress: bool = False,
                 echo: Callable[[str], None] = print):
        self.config = config
        self.home = home
        self.spec = spec
        self.mirrors = [m.rstrip("/") for m in (mirrors or config.mirrors)]
        if not self.mirrors:
            raise BadRequest("no mirror to ask: set [peer] mirrors or pass --mirror URL")
        self.trust = Trust(home, config.trusted_keys)
        self.progress = progress
        self.echo = echo
        self.resume_dir = home / "resume"

    # -- 1 and 2: what to fetch, believed -----------------------------------------------------

    async def _metadata(self, client: MirrorClient) -> tuple[str, str, Manifest, dict]:
        spec = self.spec
        errors = []
        for mirror in self.mirrors:
            try:
                return await self._metadata_from(client, mirror)
            except (ManifestError, IntegrityError) as e:
                raise PullError(f"{mirror}: refused: {e}") from e
            except (RemoteError, PullError) as e:
                errors.append(f"{mirror}: {e}")
        raise NotFound(f"no mirror has {spec.repo_id}@{spec.revision}: " + "; ".join(errors))

    async def _metadata_from(self, client: MirrorClient, mirror: str):
        spec = self.spec
        with contextlib.suppress(NotFound):  # a peer daemon relaying has no key of its own
            answer = await client.json(f"{mirror}/api/weightswarm/key")
            self.trust.pin(mirror, answer["key"])
        trusted = self.trust.keys()
        base = f"{mirror}/api/weightswarm/snapshots/{spec.hub}/{spec.repo_type}/{spec.repo_id}"
        snap = await client.json(f"{base}?revision={quote(spec.revision, safe='')}")
        commit = snap.get("commit")
        if not isinstance(commit, str) or not is_commit(commit):
            raise PullError(f"{mirror}: no commit in its answer")
        if not is_commit(spec.revision):
            text = snap.get("ref_statement")
            if not isinstance(text, str):
                raise ManifestError(f"no signed ref statement for {spec.revision}")
            statement, key = read_ref(bytes.fromhex(text), trusted)
            if (statement.hub, statement.type, statement.repo, statement.ref, statement.commit) \
                    != (spec.hub, spec.repo_type, spec.repo_id, spec.revision, commit):
                raise ManifestError("the ref statement is for another repo, ref or commit")
            self.trust.accept_ref(statement, key)
        elif commit != spec.revision:
            raise ManifestError(f"asked for commit {spec.revision}, answered {commit}")
        data = await client.bytes(
            f"{mirror}/api/weightswarm/manifests/{spec.hub}/{spec.repo_type}/{spec.repo_id}/"
            f"{commit}")
        manifest, key = read_manifest(data, trusted)
        if (manifest.hub, manifest.type, manifest.repo, manifest.commit) != \
                (spec.hub, spec.repo_type, spec.repo_id, commit):
            raise ManifestError("the manifest is for another repo or commit")
        log.info("%s@%s is %s, manifest signed by %s", spec.repo_id, spec.revision, commit[:12],
                 key)
        self._save_metadata(snap, data, commit)
        return mirror, commit, manifest, snap

    def _save_metadata(self, snap: dict, manifest: bytes, commit: str) -> None:
        """Keep what the peer daemon relays: signed, so any peer may pass it on."""
        spec = self.spec
        folder = self.home / "manifests" / spec.hub / spec.repo_type / spec.repo_id
        atomic.write_file(folder / f"{commit}.msgpack", manifest)
        refs = self.home / "snapshots" / spec.hub / spec.repo_type / spec.repo_id
        atomic.write_file(refs / f"{quote(spec.revision, safe='')}.json", json.dumps(snap).encode())

    # -- the whole pull ------------------------------------------------------------------------

    async def run(self) -> PullResult:
        started = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            client = MirrorClient(http)
            mirror, commit, manifest, _ = await self._metadata(client)
            files = select(manifest.files, self.spec.include, self.spec.exclude)
            total = sum(f.size for f in files)
            result = PullResult(self.spec.repo_id, commit, mirror,
                                [{"path": f.path, "size": f.size, "sha256": f.sha256,
                                  "bittorrent": f.info_hash is not None} for f in files], total)
            if self.spec.dry_run:
                for f in files:
                    self.echo(f"{f.size:>14}  {'bt  ' if f.info_hash else 'http'}  {f.path}")
                self.echo(f"{len(files)} files, {total} bytes at {commit}")
                return result
            cache = self._repo_cache()
            cache.blobs.mkdir(parents=True, exist_ok=True)
            wanted = [f for f in files
                      if not cache.has_blob(etag_of(f.sha256, f.git_sha1, f.lfs), f.size)]
            result.present_bytes = total - sum(f.size for f in wanted)
            self._check_space(cache.blobs, wanted)
            await self._fetch(client, cache, wanted, result)
            self._publish(cache, files, commit, result)
        result.seconds = time.monotonic() - started
        return result

    def _repo_cache(self) -> RepoCache:
        if self.spec.local_dir is not None:
            # A plain folder: blobs gather in its hidden cache and are moved into place.
            root = self.spec.local_dir / ".cache" / "weightswarm"
            cache = RepoCache(root, self.spec.repo_type, self.spec.repo_id)
            return cache
        root = Path(self.config.cache) if self.config.cache else hub_cache()
        return RepoCache(root, self.spec.repo_type, self.spec.repo_id)

    def _check_space(self, folder: Path, wanted: list[ManifestFile]) -> None:
        need = sum(f.size for f in wanted)
        partial = sum(_size_of(folder / f"{etag_of(f.sha256, f.git_sha1, f.lfs)}.wspart")
                      for f in wanted)
        free = shutil.disk_usage(folder).free
        if need - partial > free:
            raise InsufficientSpace(need - partial, free, str(folder))

    async def _fetch(self, client: MirrorClient, cache: RepoCache, wanted: list[ManifestFile],
                     result: PullResult) -> None:
        small = [f for f in wanted if f.info_hash is None]
        large = [f for f in wanted if f.info_hash is not None]
        bar = _bar(result.total_bytes - result.present_bytes, self.progress, self.spec.repo_id)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._fetch_small(client, cache, small, result, bar))
                if large:
                    group.create_task(self._fetch_large(client, cache, large, result, bar))
        except* WeightswarmError as group_error:
            raise group_error.exceptions[0] from None
        finally:
            bar.close()

    async def _fetch_small(self, client: MirrorClient, cache: RepoCache,
                           files: list[ManifestFile], result: PullResult, bar) -> None:
        gate = asyncio.Semaphore(HTTP_PARALLEL)

        async def one(f: ManifestFile) -> None:
            etag = etag_of(f.sha256, f.git_sha1, f.lfs)
            errors = []
            async with gate:
                for mirror in [result.mirror] + [m for m in self.mirrors if m != result.mirror]:
                    got = 0

                    def count(n: int) -> None:
                        nonlocal got
                        got += n
                        bar.update(n)

                    try:
                        await client.download(f"{mirror}/blobs/sha256/{f.sha256}",
                                              cache.blob(etag), f.size, f.sha256, count)
                        result.http_bytes += got
                        return
                    except (WeightswarmError, OSError) as e:
                        bar.update(-got)
                        errors.append(f"{mirror}: {e or type(e).__name__}")
            raise PullError(f"{f.path}: no mirror gave the right bytes: " + "; ".join(errors))

        async with asyncio.TaskGroup() as group:
            for f in files:
                group.create_task(one(f))

    async def _torrent(self, client: MirrorClient, f: ManifestFile, first: str) -> _Large:
        errors = []
        for mirror in [first] + [m for m in self.mirrors if m != first]:
            try:
                data = await client.bytes(f"{mirror}/api/weightswarm/torrents/{f.sha256}.torrent")
                torrent = bdecode(data)
                info = torrent[b"info"]
                if info_hash(info) != f.info_hash:
                    raise IntegrityError("info-hash", f.info_hash or "", "another torrent")
                trackers = [t.decode() for tier in torrent.get(b"announce-list", [])
                            for t in tier]
                if not trackers and b"announce" in torrent:
                    trackers = [torrent[b"announce"].decode()]
                seeds = [u.decode() for u in _as_list(torrent.get(b"url-list"))]
                seeds += [f"{m}/blobs/sha256/{f.sha256}" for m in self.mirrors]
                # Kept as the mirror sent it (trackers, web seeds) for the peer daemon.
                atomic.write_file(self.home / "torrents" / f"{f.sha256}.torrent", data)
                return _Large(f, bencode({b"info": info}), list(dict.fromkeys(trackers)),
                              list(dict.fromkeys(seeds)), info[b"piece length"])
            except (WeightswarmError, KeyError, ValueError, TypeError) as e:
                errors.append(f"{mirror}: {e or type(e).__name__}")
        raise PullError(f"{f.path}: no mirror gave its torrent: " + "; ".join(errors))

    async def _fetch_large(self, client: MirrorClient, cache: RepoCache,
                           files: list[ManifestFile], result: PullResult, bar) -> None:
        from .session import Session

        larges = [await self._torrent(client, f, result.mirror) for f in files]
        mirror_endpoints = await self._mirror_endpoints(client)
        # A whole peer id, so this pull knows itself among the owners of pieces (steering.py).
        own_id = PEER_FINGERPRINT + secrets.token_hex(6)
        session = Session(self.config.pull_bt, role="pull", fingerprint=own_id)
        session.start()
        self.resume_dir.mkdir(parents=True, exist_ok=True)
        try:
            for item in larges:
                etag = etag_of(item.file.sha256, item.file.git_sha1, item.file.lfs)
                resume = _read(self.resume_dir / f"{item.file.info_hash}.resume")
                item.key = session.add(item.torrent, cache.blobs, trackers=item.trackers,
                                       resume=resume, name=f"{etag}.wspart")
                item.last_progress = time.monotonic()
            watcher = asyncio.create_task(self._watch(session, larges, bar))
            steerer = asyncio.create_task(self._steer(session, larges, own_id.encode(),
                                                      mirror_endpoints))
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
                # The last blocks' alerts may trail the torrent's completion: take them in.
                await asyncio.sleep(0.2)
                session.drain()
                self._account(session, larges, mirror_endpoints, result)
        finally:
            session.close()

    async def _complete(self, session, cache: RepoCache, item: _Large) -> None:
        f = item.file
        etag = etag_of(f.sha256, f.git_sha1, f.lfs)
        staging = cache.staging(etag)
        await session.finished(item.key)
        digest = await asyncio.to_thread(_sha256_synced, staging)
        if digest != f.sha256:
            # Every piece matched the torrent the manifest signs, yet the file does not: refuse.
            raise IntegrityError("sha256", f.sha256, digest)
        # Keep seeding under the final name while the rest of the pull runs.
        await session.rename(item.key, etag)
        await asyncio.to_thread(atomic.fsync_dir, cache.blobs)
        item.done = True
        (self.resume_dir / f"{f.info_hash}.resume").unlink(missing_ok=True)
        log.info("%s: %d bytes over BitTorrent, verified", f.path, f.size)

    async def _watch(self, session, larges: list[_Large], bar) -> None:
        grace = self.config.web_seed_grace
        shown = 0
        while True:
            await asyncio.sleep(WATCH_EVERY)
            now = time.monotonic()
            total = 0
            for item in larges:
                status = session.status(item.key)
                # Payload received, partial pieces included: a 4 MiB piece from a slow
                # source takes seconds to complete, and is progress all the while.
                done = status.downloaded
                total += done
                if done > item.last_done:
                    item.last_done, item.last_progress = done, now
                elif (not item.seeded_web and not status.is_seeding
                      and now - item.last_progress >= (grace if status.peers == 0
                                                        else PEERS_GRACE * grace)):
                    # Connected peers may be slow to start (a rate-limited seed takes seconds
                    # to send its first piece): give them longer than no peers.
                    log.info("%s: no progress for %.0fs with %d peers: adding %d web seeds",
                             item.file.path, now - item.last_progress, status.peers,
                             len(item.web_seeds))
                    session.set_url_seeds(item.key, item.web_seeds)
                    item.seeded_web = True
            bar.update(total - shown)
            shown = total

    async def _steer(self, session, larges: list[_Large], own_id: bytes,
                     mirrors: set[tuple[str, int]]) -> None:
        """Share the mirrors' pieces out among the pulls fetching them (steering.py). Should
        it fail, the pull goes on without it: every piece from anyone."""
        try:
            await self._steer_pieces(session, larges, own_id, mirrors)
        except Exception:
            log.exception("steering pieces failed: every piece from anyone from now on")
            for item in larges:
                with contextlib.suppress(Exception):
                    session.set_piece_priorities(item.key, [NORMAL] * item.pieces)

    async def _steer_pieces(self, session, larges: list[_Large], own_id: bytes,
                            mirrors: set[tuple[str, int]]) -> None:
        steerings = {item.key: Steering(own_id, item.pieces, item.piece_length)
                     for item in larges}
        applied: dict[str, list[int]] = {}
        while True:
            now = time.monotonic()
            for item in larges:
                if item.done:
                    continue
                try:
                    have, peers, received = session.swarm(item.key)
                except KeyError:
                    continue
                views, from_mirrors = [], 0
                for p in peers:
                    mirror = p.web_seed or _is_mirror(p.pid, p.ip, p.port, mirrors)
                    if mirror:
                        from_mirrors += p.rate
                    views.append(PeerView(p.pid, mirror, p.seed, piece_set(p.pieces)))
                steering = steerings[item.key]
                was_relaxed, was_stalled = steering.relaxed, steering.stalled
                priorities = steering.decide(now, piece_set(have), views, received,
                                             from_mirrors)
                if steering.relaxed != was_relaxed:
                    log.info("%s: %s", item.file.path,
                             "nothing received for a while: every piece from anyone"
                             if steering.relaxed else "mirror pieces shared out again")
                for pid in steering.stalled - was_stalled:
                    log.info("%s: pull %s makes no progress: its share of the mirrors' pieces "
                             "passes to the others", item.file.path, pid.decode(errors="replace"))
                if priorities != applied.get(item.key):
                    session.set_piece_priorities(item.key, priorities)
                    applied[item.key] = priorities
            await asyncio.sleep(STEER_EVERY)

    async def _save_resume(self, session, larges: list[_Large]) -> None:
        for item in larges:
            if item.done:
                continue
            with contextlib.suppress(Exception):
                data = await asyncio.wait_for(session.save_resume(item.key), 5)
                atomic.write_file(self.resume_dir / f"{item.file.info_hash}.resume", data)

    async def _mirror_endpoints(self, client: MirrorClient) -> set[tuple[str, int]]:
        """The mirrors' BitTorrent listen endpoints. Mirrors never dial out, so every
        connection from a mirror is to one of these, whatever peer id it shows."""
        endpoints = set()
        for mirror in self.mirrors:
            with contextlib.suppress(WeightswarmError, ValueError, TypeError, AttributeError):
                info = await client.json(f"{mirror}/")
                if info.get("service") == "weightswarm mirror" and info.get("bittorrent_port"):
                    endpoints.add((urlsplit(mirror).hostname, int(info["bittorrent_port"])))
        return endpoints

    def _account(self, session, larges: list[_Large], mirrors: set[tuple[str, int]],
                 result: PullResult) -> None:
        """Who sent what, from every block libtorrent received: a mirror by its peer id
        (-WM, peer/session.py) or its listen endpoint, a web seed by its URL's endpoint
        (libtorrent gives web seeds a made-up peer id). libtorrent reports a block when its
        write completes; a write completing after the last piece passed is reported by no
        alert (the torrent, a seed by then, has dropped its piece picker): those few bytes
        are `unattributed`."""
        for item in larges:
            web_seeds = _endpoints(item.web_seeds)
            for (pid, ip, port), n in session.sources.get(item.key, {}).items():
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
            counted = sum(session.sources.get(item.key, {}).values())
            with contextlib.suppress(KeyError):
                received = session.status(item.key).downloaded
                result.unattributed += max(0, received - counted)

    # -- 4: the snapshot ------------------------------------------------------------------------

    def _publish(self, cache: RepoCache, files: list[ManifestFile], commit: str,
                 result: PullResult) -> None:
        if self.spec.local_dir is not None:
            root = self.spec.local_dir
            placed: dict[str, Path] = {}
            for f in files:
                etag = etag_of(f.sha256, f.git_sha1, f.lfs)
                dest = root / f.path  # the manifest's paths are checked (manifest.py)
                if etag in placed:  # the same bytes at two paths: the second is a copy
                    atomic.copy_file(placed[etag], dest)
                else:
                    atomic.place(cache.blob(etag), dest)
                    placed[etag] = dest
            shutil.rmtree(root / ".cache" / "weightswarm", ignore_errors=True)
            result.path = str(root)
            return
        cache.link_snapshot(commit, [(f.path, etag_of(f.sha256, f.git_sha1, f.lfs))
                                     for f in files])
        cache.set_ref(self.spec.revision, commit)
        result.path = str(cache.root / "snapshots" / commit)


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
        try:
            for *_, address in socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM):
                found.add((address[0], port))
        except (OSError, UnicodeError):
            continue
    return found


def _as_list(value) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _sha256_synced(path: Path) -> str:
    """The file's sha256, its bytes made durable first (libtorrent wrote them; the rename into
    place follows)."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())
    return sha256_file(path)


def _bar(total: int, show: bool, name: str):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                disable=not show)
