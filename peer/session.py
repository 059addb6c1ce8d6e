"""One libtorrent session per process, driven from asyncio (BITTORRENT.md section 1).

libtorrent tells us something happened by writing to a file descriptor we give it
(`set_alert_fd`): the write end of a non-blocking socketpair, whose read end the event loop
watches. On readable we drain the socket and pop every alert, and hand each to the handler its
type names in `Session._HANDLERS`. A handler copies the few fields it needs at once: an alert
object used after the next `pop_alerts()` crashes the process. No polling, no Python callback
from libtorrent's threads.

Whoever awaits an alert (a torrent finished and flushed, its resume data, a rename, the
session's counters) waits on a future in one registry, keyed by what it waits for and the
info-hash; the handler resolves or fails them, and `close()` cancels every one left.

A session has a role, which chooses its tuning: `mirror` (reachable, serves everyone, holds few
requests per peer), `pull` (counts every block by its sender, asks for pieces as steering.py
says) or `daemon` (libtorrent's defaults: a peer seeding what it pulled). The peer id is
another matter: `fingerprint`, the start of it, or all 20 characters of it.

Verified data is added with every piece marked had (`have_pieces`): that is resume data
built from what the store already checked, so a mirror with thousands of blobs seeds again
within milliseconds of a restart and hashes nothing. Partial downloads keep libtorrent's own
resume data (`save_resume`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import libtorrent as lt

from .bencode import bencode
from .settings import SessionSettings

log = logging.getLogger(__name__)

#: libtorrent's request size: a block_finished_alert stands for this many bytes (the last block
#: of a torrent is shorter: the count is an upper bound by less than one block)
BLOCK = 16 * 1024
#: block requests a mirror holds queued from one peer: libtorrent's default. It drops what comes
#: beyond, and a client that neither honours `reqq` nor re-asks stalls (issue 14)
MIRROR_REQUEST_QUEUE = 2000
#: seconds a connection of ours may stay silent before it is closed; a keep-alive goes out
#: after half of it without a message sent (libtorrent's default is 120)
PEER_TIMEOUT = 20
#: seconds of a source's rate a pull keeps requested from it (libtorrent's default is 3)
PULL_REQUEST_QUEUE_TIME = 1
#: block requests a pull keeps outstanding at one source, at most (libtorrent's default 500)
PULL_REQUEST_QUEUE = 64
#: errors kept in `Session.errors`, the latest
ERRORS_KEPT = 100

Role = Literal["mirror", "pull", "daemon"]

__all__ = ["Role", "Session", "SessionSettings", "TorrentStatus"]

_ALERTS = lt.alert_category.status | lt.alert_category.error | lt.alert_category.storage

#: What a mirror's session sets beyond the common pack.
_MIRROR_TUNING = {
    # A mirror is reachable: leechers dial it, so every connection from a mirror is to its
    # listen endpoint, by which a pull knows it whatever its peer id.
    "seeding_outgoing_connections": False,
    # A seed offers each peer an "allowed fast" set it may fetch while choked, drawn from the
    # peer's /24 (BEP 6): every peer of one site gets the same few pieces, and all of them
    # fetched those from the mirror at once. Off: 1.66x -> 1.32x of the model sent by the
    # mirror for 8 peers (ops/bench/swarm.py).
    "allowed_fast_set_size": 0,
    # Every interested peer is unchoked, as an HTTP server serves every client: the pulls of a
    # swarm split the mirror's pieces between them (steering.py), and an owner left choked
    # holds back its share for everyone. 4 slots (the earlier setting, when fewer uploads meant
    # fewer duplicates): a choked owner waited up to a minute for libtorrent's round-robin;
    # ops/bench/swarm.py N=8, one run each: 4 slots 1.16x sent, 8 slots 1.11-1.17x, unlimited
    # 1.12-1.14x.
    "unchoke_slots_limit": -1,
    # Every request a client sends is queued: libtorrent drops those beyond this queue, and
    # tells only BEP 6 peers so (a reject). At 64 (the earlier setting, for the swarm's sake)
    # rTorrent 0.9.8, which neither honours `reqq` nor asks again, stalled after 7 of 17
    # pieces and Transmission 3.00 took 86 s instead of 26 (tests/e2e/test_foreign_clients.py,
    # 64 MiB); at the default both complete. Our pulls bound their own queue at a mirror
    # instead (`request_queue_time`, below).
    "max_allowed_in_request_queue": MIRROR_REQUEST_QUEUE,
    # Clients that dial µTP first get it: Transmission 3.00 never fell back to TCP from a
    # mirror refusing µTP (its attempt never times out in a session that has had no µTP peer
    # yet: Transmission PR #4897), and stayed at 0 %. Outgoing µTP stays off: a mirror never
    # dials.
    "enable_incoming_utp": True,
    # A keep-alive after half of this without a message sent. Transmission 3.00 reads the
    # messages that arrive with a µTP handshake (the mirror's have-all among them) only once
    # more data comes (Transmission issue #6909): with libtorrent's 120 s it sat idle, knowing
    # no piece of the mirror, until the first keep-alive a minute later (77 s for 64 MiB);
    # with 20 s it starts after 10 (26 s). A connection silent for this long is closed: our
    # pulls send keep-alives as often (_PULL_TUNING), foreign clients send requests while
    # they download.
    "peer_timeout": PEER_TIMEOUT,
}

#: What a pull's session sets beyond the common pack: it counts every block received by the
#: peer id and address that sent it (`Session.sources`), and asks for pieces as steering.py
#: needs.
_PULL_TUNING = {
    "alert_mask": _ALERTS | lt.alert_category.block_progress | lt.alert_category.peer,
    # one alert per 16 KiB block: a busy event loop must not lose any (the default queue holds
    # 2000, 31 MiB of blocks)
    "alert_queue_size": 1 << 20,
    # A pull's requests wait at a mirror no longer than about a second, so it can still take
    # a piece from a neighbour instead: libtorrent keeps this many seconds of a source's rate
    # requested from it (at most the source's `reqq`), and at most PULL_REQUEST_QUEUE
    # blocks (1 MiB). With 3 s and a mirror's queue of 2000, pulls had 3 pieces (11 MiB, 4 s)
    # queued at a capped mirror, and fetched them from it after their neighbours held them;
    # the mirror's queue bounded that before (64 blocks), and stalled foreign clients with it
    # (_MIRROR_TUNING). The second bound is the mirror's old one, kept by the pull: with the
    # first alone, three pulls from a mirror capped at 8 MiB/s (tests/e2e/test_pull_faults.py)
    # got 0.48-0.69 of their bytes from each other (one run in four under issue 7's floor of
    # a half), with both 0.54-0.69 in five. 64 blocks in flight keep a LAN neighbour busy
    # (1 MiB at a 1 ms round trip is 1 GB/s).
    "request_queue_time": PULL_REQUEST_QUEUE_TIME,
    "max_out_request_queue": PULL_REQUEST_QUEUE,
    # No whole pieces at a time from a fast source: they jump the queue above by a whole
    # piece (256 blocks).
    "whole_pieces_threshold": 0,
    # Keep-alives to a mirror as often as it expects them (_MIRROR_TUNING): a pull waiting for
    # its neighbours' pieces asks the mirror nothing for a while, and must keep its connection.
    "peer_timeout": PEER_TIMEOUT,
    # A pull waiting for the pieces other pulls own has every piece it asks for (steering.py):
    # libtorrent would call it finished, and close its connections to the other finished
    # pulls, the very peers it waits for.
    "close_redundant_connections": False,
    # A pull closes its far mirrors' addresses while it needs nothing from them (Session.
    # keep_off): not its tracker's, which often shares the mirror's address (all-in-one), and
    # which it needs to find its neighbours (issue 16: announces were "banned by IP filter").
    "apply_ip_filter_to_trackers": False,
    # A pull's sources are few and it lives minutes: it tries a lost one again every few
    # seconds, for as long as it runs. libtorrent waits 60 s times the failures between
    # attempts and gives a peer up after 3: after a cut uplink came back, pulls sat for a
    # minute and more with their mirror "failed" (tests/e2e/test_sites.py).
    "min_reconnect_time": 2,
    "max_failcount": 1000,
}

#: A peer daemon seeds what its machine pulled, as any BitTorrent client does: the defaults.
_TUNING: dict[str, dict] = {"mirror": _MIRROR_TUNING, "pull": _PULL_TUNING, "daemon": {}}


def settings_pack(s: SessionSettings, role: Role, fingerprint: str | None = None) -> dict:
    """libtorrent's settings for a session of this role; `fingerprint`: the start of our peer
    ids (`-WM0100-` for mirrors, `-WP0100-` for peers), so a downloader can tell a mirror's
    bytes from a peer's; 20 characters are the whole peer id."""
    if role not in _TUNING:
        raise ValueError(f"a session's role is one of {sorted(_TUNING)}, not {role!r}")
    pack = {
        "listen_interfaces": s.listen,
        "enable_dht": s.dht, "enable_lsd": s.lsd, "enable_upnp": s.upnp,
        "enable_natpmp": s.natpmp, "enable_ip_notifier": False,
        "enable_outgoing_utp": False, "enable_incoming_utp": False,
        "allow_multiple_connections_per_ip": True,
        "upload_rate_limit": s.upload_rate, "download_rate_limit": s.download_rate,
        "connections_limit": s.connections, "stop_tracker_timeout": 1, "hashing_threads": 2,
        # A mirror seeds thousands of torrents: none of them may wait in a queue.
        "active_limit": -1, "active_seeds": -1, "active_downloads": -1,
        "min_announce_interval": s.min_announce_interval,
        "alert_mask": _ALERTS,
    }
    if not s.dht:
        pack["dht_bootstrap_nodes"] = ""
    if fingerprint:
        pack["peer_fingerprint"] = fingerprint
    pack.update(_TUNING[role])
    if s.fast:
        pack.update(min_reconnect_time=1, tracker_backoff=1)
    return pack


@dataclass(frozen=True)
class TorrentStatus:
    info_hash: str
    name: str
    state: str
    progress: float
    peers: int
    seeds: int
    uploaded: int  # payload bytes, this session
    downloaded: int
    upload_rate: int
    download_rate: int
    is_seeding: bool
    hash_failures: int
    #: payload received twice (the same block from two connections: the end game), part of
    #: `downloaded`
    redundant: int = 0
    #: the swarm's seeders and leechers as its tracker last said (-1: not said yet)
    swarm_complete: int = -1
    swarm_incomplete: int = -1


@dataclass(frozen=True)
class PeerState:
    pid: bytes
    ip: str
    port: int
    web_seed: bool
    seed: bool
    pieces: list[bool]
    #: payload bytes/s received from it
    rate: int
    #: found by local discovery (BEP 14): on this machine's LAN
    lsd: bool = False


def _os_error(error: lt.error_code, filename) -> OSError:
    """libtorrent's error as the OSError it stands for: its errno where it is a system error
    (`generic`/`system` category), else 0; `filename` as libtorrent names it."""
    errno = error.value() if error.category().name() in ("generic", "system") else 0
    return OSError(errno, error.message(), str(filename) if filename not in (None, "") else None)


class _Waiters:
    """Futures awaiting an alert, keyed by (what, info-hash): one registry for every kind, so
    that the pump resolves each kind the same way and `close()` cancels them all."""

    def __init__(self) -> None:
        self._futures: dict[tuple[str, str], list[asyncio.Future]] = {}

    def add(self, what: str, key: str = "") -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self._futures.setdefault((what, key), []).append(future)
        return future

    def resolve(self, what: str, key: str = "", value=None) -> None:
        for future in self._futures.pop((what, key), []):
            if not future.done():
                future.set_result(value)

    def fail(self, what: str, key: str, error: BaseException) -> None:
        for future in self._futures.pop((what, key), []):
            if not future.done():
                future.set_exception(error)

    def __contains__(self, key: tuple[str, str]) -> bool:
        return bool(self._futures.get(key))

    def cancel_all(self) -> None:
        waiting, self._futures = self._futures, {}
        for futures in waiting.values():
            for future in futures:
                if not future.done():
                    future.cancel()


class Session:
    """Add torrents, await their completion; `close()` shuts down in about a second."""

    def __init__(self, settings: SessionSettings, *, role: Role,
                 fingerprint: str | None = None):
        """`role`: "mirror", "pull" or "daemon", which chooses the tuning (`settings_pack`);
        `fingerprint`: the start of our peer ids, or the whole of it in 20 characters."""
        params = lt.session_params(settings_pack(settings, role, fingerprint))
        # mmap disk I/O: 455 vs 312 MiB/s for a leecher here (BITTORRENT.md).
        params.disk_io_constructor = "mmap_disk_io_constructor"
        self.lt = lt.session(params)
        self.settings = settings
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)
        self.lt.set_alert_fd(self._write.fileno())
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters = _Waiters()
        self._handles: dict[str, lt.torrent_handle] = {}
        self.hash_failures: dict[str, int] = {}
        self.errors: list[str] = []
        self.counters: dict[str, int] = {}
        #: info-hash → (peer id, ip, port) → payload bytes received, when counting sources
        self.sources: dict[str, dict[tuple[bytes, str, int], int]] = {}

    @property
    def port(self) -> int:
        return self.lt.listen_port()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._read.fileno(), self._pump)

    # -- torrents ---------------------------------------------------------------------------

    def add(self, torrent: bytes | dict, save_path: Path, *, trackers: Iterable[str] = (),
            url_seeds: Iterable[str] = (), have_all: bool = False,
            resume: bytes | None = None, name: str | None = None) -> str:
        """Add a torrent (bencoded, or its info dict), running at once (never queued); returns
        its info-hash. `have_all`: the file at save_path/name is complete and verified, seed it
        without hashing. `resume`: libtorrent resume data of an earlier partial download.
        `name`: write the file under this name instead of the torrent's."""
        if isinstance(torrent, dict):
            torrent = bencode({"info": torrent})
        ti = lt.torrent_info(torrent)  # libtorrent parses the bytes itself
        key = ti.info_hash().to_string().hex()
        if key in self._handles:
            return key
        if resume:
            params = lt.read_resume_data(resume)
        else:
            params = lt.add_torrent_params()
        params.ti = ti
        params.save_path = str(save_path)
        if name is not None:
            params.renamed_files = {0: name}
        if have_all:
            params.have_pieces = [True] * ti.num_pieces()
        params.trackers = list(trackers) or list(params.trackers)
        params.url_seeds = list(url_seeds)
        # A mirror seeds thousands: auto-management would let only a handful run.
        params.flags &= ~lt.torrent_flags.auto_managed
        params.flags &= ~lt.torrent_flags.paused
        # libtorrent puts a torrent whose write failed (a full disk) in upload mode, and its
        # resume data keeps it there: the next pull would never download.
        params.flags &= ~lt.torrent_flags.upload_mode
        self._handles[key] = self.lt.add_torrent(params)
        self.hash_failures.pop(key, None)
        return key

    def remove(self, info_hash: str) -> None:
        handle = self._handles.pop(info_hash, None)
        if handle is not None:
            self.lt.remove_torrent(handle)
        for what in ("finished", "resume", "renamed"):  # nothing will come for it now
            self._waiters.fail(what, info_hash,
                               asyncio.CancelledError(f"torrent {info_hash} removed"))

    def __contains__(self, info_hash: str) -> bool:
        return info_hash in self._handles

    def __len__(self) -> int:
        return len(self._handles)

    def info_hashes(self) -> list[str]:
        return list(self._handles)

    def handle(self, info_hash: str) -> lt.torrent_handle:
        return self._handles[info_hash]

    def status(self, info_hash: str) -> TorrentStatus:
        s = self._handles[info_hash].status()
        return TorrentStatus(
            info_hash, s.name, "error" if s.errc.value() else str(s.state), s.progress,
            s.num_peers, s.num_seeds, s.total_payload_upload, s.total_payload_download,
            s.upload_payload_rate, s.download_payload_rate, s.is_seeding,
            self.hash_failures.get(info_hash, 0), s.total_redundant_bytes, s.num_complete,
            s.num_incomplete)

    def statuses(self) -> list[TorrentStatus]:
        return [self.status(key) for key in list(self._handles)]

    def swarm(self, info_hash: str) -> tuple[list[bool], list[PeerState], int]:
        """The pieces this torrent has, its connections, and payload bytes received."""
        handle = self._handles[info_hash]
        status = handle.status(lt.status_flags_t.query_pieces)
        peers = []
        for p in handle.get_peer_info():
            web_seed = p.connection_type != lt.peer_info.standard_bittorrent
            peers.append(PeerState(bytes(p.pid.to_bytes()), p.ip[0], p.ip[1], web_seed,
                                   bool(p.flags & lt.peer_info.seed), list(p.pieces),
                                   p.payload_down_speed, bool(p.source & lt.peer_info.lsd)))
        return list(status.pieces), peers, status.total_payload_download

    def set_piece_priorities(self, info_hash: str, priorities: list[int]) -> None:
        handle = self._handles[info_hash]
        handle.prioritize_pieces(priorities)
        # A piece that passes while its priority is 0, every other piece had already, makes a
        # seed of the torrent without a word: libtorrent 2.1 leaves it in state "finished"
        # and posts no torrent_finished_alert, so whoever awaits `finished` would wait for
        # ever (a pull of ops/bench/swarm.py hung so, its file complete on disk). Steering
        # gives such a piece its priority back once it is had, which brings us here: flush,
        # and the flushed alert resolves the waiters.
        if ("finished", info_hash) in self._waiters and handle.status().is_seeding:
            handle.flush_cache()

    def set_url_seeds(self, info_hash: str, urls: Iterable[str]) -> None:
        handle = self._handles[info_hash]
        for url in handle.url_seeds():
            handle.remove_url_seed(url)
        for url in urls:
            handle.add_url_seed(url)

    def keep_off(self, addresses: Iterable[str]) -> None:
        """Refuse connections to and from `addresses` in every torrent not opened to them
        with `reach`. Torrents are added closed (libtorrent applies the filter by default)."""
        f = lt.ip_filter()
        for address in addresses:
            f.add_rule(address, address, 1)  # 1: blocked
        self.lt.set_ip_filter(f)

    def reach(self, info_hash: str, endpoints: Iterable[tuple[str, int]] | None) -> None:
        """Open the torrent to the addresses `keep_off` holds back and dial `endpoints`, or
        (None) close it to them: libtorrent drops those connections at once, and their
        requests with them."""
        handle = self._handles[info_hash]
        if endpoints is None:
            handle.set_flags(lt.torrent_flags.apply_ip_filter)
            return
        handle.unset_flags(lt.torrent_flags.apply_ip_filter)
        self.dial(info_hash, endpoints)

    def dial(self, info_hash: str, endpoints: Iterable[tuple[str, int]]) -> None:
        """Connect the torrent to these peers, as if a tracker had named them."""
        handle = self._handles[info_hash]
        for endpoint in endpoints:
            handle.connect_peer(endpoint)

    def force_recheck(self, info_hash: str) -> None:
        self._handles[info_hash].force_recheck()

    def set_upload_limit(self, rate: int) -> None:
        """Bytes/s over all peers, 0 for none; it applies to local peers too (see
        `limit_every_peer`)."""
        self.lt.apply_settings({"upload_rate_limit": int(rate)})

    def limit_every_peer(self) -> None:
        """libtorrent exempts local peers (LAN, loopback) from rate limits; a mirror's egress
        cap covers every byte, so put every address in the global peer class."""
        f = lt.ip_filter()
        cls = 1 << lt.session.global_peer_class_id
        f.add_rule("0.0.0.0", "255.255.255.255", cls)
        f.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", cls)
        self.lt.set_peer_class_filter(f)

    # -- waiting ------------------------------------------------------------------------------

    async def finished(self, info_hash: str) -> None:
        """Return once the torrent is complete and its bytes are on disk (flushed)."""
        handle = self._handles[info_hash]
        future = self._waiters.add("finished", info_hash)
        status = handle.status()
        if status.errc.value():
            # Stopped by an error already (its alert came before anyone waited).
            self._waiters.fail("finished", info_hash, _os_error(status.errc, None))
        elif status.is_seeding:
            handle.flush_cache()  # its cache_flushed alert resolves the future
        await future

    async def save_resume(self, info_hash: str) -> bytes:
        """libtorrent's resume data of a torrent (pieces had, peers), bencoded."""
        future = self._waiters.add("resume", info_hash)
        self._handles[info_hash].save_resume_data(lt.save_resume_flags_t.flush_disk_cache)
        return await future

    async def rename(self, info_hash: str, name: str) -> None:
        """Rename the torrent's file on disk (relative to its save path), seeding on."""
        future = self._waiters.add("renamed", info_hash)
        self._handles[info_hash].rename_file(0, name)
        await future

    async def stats(self) -> dict[str, int]:
        """The session's counters (`lt.session_stats_metrics()` names), fresh."""
        future = self._waiters.add("stats")
        self.lt.post_session_stats()
        return await future

    def drain(self) -> None:
        """Handle every alert waiting now, without waiting for the event loop's turn."""
        self._pump()

    # -- the alert pump -------------------------------------------------------------------------

    def _pump(self) -> None:
        try:
            while self._read.recv(4096):
                pass
        except BlockingIOError:
            pass
        for alert in self.lt.pop_alerts():
            handler = self._HANDLERS.get(type(alert))
            if handler is not None:
                handler(self, alert)

    # Each handler copies what it needs now: the alert object is dead after the next
    # pop_alerts().

    def _on_block(self, alert) -> None:
        ip, port = alert.endpoint
        slot = (bytes(alert.pid.to_bytes()), ip, port)
        counts = self.sources.setdefault(_key(alert), {})
        counts[slot] = counts.get(slot, 0) + BLOCK

    def _on_stats(self, alert) -> None:
        self.counters = dict(alert.values)
        self._waiters.resolve("stats", "", self.counters)

    def _on_finished(self, alert) -> None:
        # Finished is not on disk: ask for a flush, and resolve on cache_flushed.
        alert.handle.flush_cache()

    def _on_flushed(self, alert) -> None:
        if alert.handle.status().is_seeding:
            self._waiters.resolve("finished", _key(alert))

    def _on_resume(self, alert) -> None:
        self._waiters.resolve("resume", _key(alert), lt.write_resume_data_buf(alert.params))

    def _on_resume_failed(self, alert) -> None:
        self._waiters.fail("resume", _key(alert), RuntimeError(alert.message()))

    def _on_renamed(self, alert) -> None:
        self._waiters.resolve("renamed", _key(alert))

    def _on_rename_failed(self, alert) -> None:
        self._waiters.fail("renamed", _key(alert), OSError(alert.message()))

    def _on_hash_failed(self, alert) -> None:
        key = _key(alert)
        self.hash_failures[key] = self.hash_failures.get(key, 0) + 1
        self._on_error(alert)

    def _on_file_error(self, alert) -> None:
        # libtorrent stops the torrent (a full disk, a read-only one): whoever awaits its
        # completion gets the OSError, errno and file named, instead of waiting for ever.
        self._on_error(alert)
        self._waiters.fail("finished", _key(alert), _os_error(alert.error, alert.filename()))

    def _on_dropped(self, alert) -> None:
        log.warning("libtorrent dropped alerts: its queue was full")

    def _on_error(self, alert) -> None:
        message = alert.message()
        if self.errors and self.errors[-1] == message:
            return  # one line for a failure libtorrent reports block by block (a full disk)
        self.errors.append(message)
        del self.errors[:-ERRORS_KEPT]
        log.info("libtorrent: %s", message)

    #: alert type → handler; the types not named here are not looked at
    _HANDLERS = {
        lt.block_finished_alert: _on_block,
        lt.session_stats_alert: _on_stats,
        lt.torrent_finished_alert: _on_finished,
        lt.cache_flushed_alert: _on_flushed,
        lt.save_resume_data_alert: _on_resume,
        lt.save_resume_data_failed_alert: _on_resume_failed,
        lt.file_renamed_alert: _on_renamed,
        lt.file_rename_failed_alert: _on_rename_failed,
        lt.hash_failed_alert: _on_hash_failed,
        lt.alerts_dropped_alert: _on_dropped,
        lt.tracker_error_alert: _on_error,
        lt.file_error_alert: _on_file_error,
        lt.listen_failed_alert: _on_error,
        lt.torrent_error_alert: _on_error,
        lt.peer_ban_alert: _on_error,
    }

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._read.fileno())
        self._waiters.cancel_all()
        self.lt.pause()
        self._handles.clear()
        del self.lt
        self._read.close()
        self._write.close()


def _key(alert) -> str:
    """The info-hash of a torrent alert's torrent, as `Session.add` returned it."""
    return alert.handle.info_hash().to_string().hex()
