"""One libtorrent session per process, driven from asyncio (BITTORRENT.md section 1).

libtorrent tells us something happened by writing to a file descriptor we give it
(`set_alert_fd`): the write end of a non-blocking socketpair, whose read end the event loop
watches. On readable we drain the socket and pop every alert, copying the few fields we need
inside the handler: an alert object used after the next `pop_alerts()` crashes the process.
No polling, no Python callback from libtorrent's threads.

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

import libtorrent as lt

from .bencode import bencode
from .settings import MIRROR_FINGERPRINT, SessionSettings

log = logging.getLogger(__name__)

#: libtorrent's request size: a block_finished_alert stands for this many bytes (the last block
#: of a torrent is shorter: the count is an upper bound by less than one block)
BLOCK = 16 * 1024
#: block requests a mirror accepts queued from one peer (libtorrent's default is 2000)
MIRROR_REQUEST_QUEUE = 64

__all__ = ["Session", "SessionSettings", "TorrentStatus"]


def _settings(s: SessionSettings) -> dict:
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
        "alert_mask": lt.alert_category.status | lt.alert_category.error
        | lt.alert_category.storage,
    }
    if not s.dht:
        pack["dht_bootstrap_nodes"] = ""
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


class Session:
    """Add torrents, await their completion; `close()` shuts down in about a second."""

    def __init__(self, settings: SessionSettings, *, fingerprint: str | None = None,
                 pull: bool = False):
        """`fingerprint`: the start of our peer ids (`-WM0100-` for mirrors, `-WP0100-` for
        peers), so a downloader can tell a mirror's bytes from a peer's; 20 characters are
        the whole peer id. `pull`: a pull's session, which counts every block received by
        the peer id and address that sent it (`sources`) and asks for pieces as steering.py
        needs."""
        pack = _settings(settings)
        if fingerprint:
            pack["peer_fingerprint"] = fingerprint
        if fingerprint == MIRROR_FINGERPRINT:
            # A mirror is reachable: leechers dial it, so every connection from a mirror is
            # to its listen endpoint, by which a pull knows it whatever its peer id.
            pack["seeding_outgoing_connections"] = False
            # A seed offers each peer an "allowed fast" set it may fetch while choked, drawn
            # from the peer's /24 (BEP 6): every peer of one site gets the same few pieces,
            # and all of them fetched those from the mirror at once. Off: 1.66x -> 1.32x of
            # the model sent by the mirror for 8 peers (ops/bench/swarm.py).
            pack["allowed_fast_set_size"] = 0
            # Every interested peer is unchoked, as an HTTP server serves every client: the
            # pulls of a swarm split the mirror's pieces between them (steering.py), and an
            # owner left choked holds back its share for everyone. 4 slots (the earlier
            # setting, when fewer uploads meant fewer duplicates): a choked owner waited up to
            # a minute for libtorrent's round-robin; ops/bench/swarm.py N=8, one run each:
            # 4 slots 1.16x sent, 8 slots 1.11-1.17x, unlimited 1.12-1.14x.
            pack["unchoke_slots_limit"] = -1
            # Few requests queued per peer (libtorrent tells peers this as `reqq`, and they
            # take it as their own limit toward us): a pull's requests wait here no longer
            # than a second or so, so it can still take a piece from a neighbour instead.
            # With the default 2000, pulls had 3 pieces (11 MiB, 4 s) queued at a capped
            # mirror, and fetched them from it after their neighbours held them.
            pack["max_allowed_in_request_queue"] = MIRROR_REQUEST_QUEUE
        if pull:
            pack["alert_mask"] |= lt.alert_category.block_progress | lt.alert_category.peer
            # one alert per 16 KiB block: a busy event loop must not lose any (the default
            # queue holds 2000, 31 MiB of blocks)
            pack["alert_queue_size"] = 1 << 20
            # No whole pieces at a time from a fast source: they jump the queue above by a
            # whole piece (256 blocks) whatever the mirror's `reqq`.
            pack["whole_pieces_threshold"] = 0
            # A pull waiting for the pieces other pulls own has every piece it asks for
            # (steering.py): libtorrent would call it finished, and close its connections to
            # the other finished pulls, the very peers it waits for.
            pack["close_redundant_connections"] = False
        params = lt.session_params(pack)
        # mmap disk I/O: 455 vs 312 MiB/s for a leecher here (BITTORRENT.md).
        params.disk_io_constructor = "mmap_disk_io_constructor"
        self.lt = lt.session(params)
        self.settings = settings
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)
        self.lt.set_alert_fd(self._write.fileno())
        self._loop: asyncio.AbstractEventLoop | None = None
        self._finished: dict[str, list[asyncio.Future]] = {}
        self._resume: dict[str, list[asyncio.Future]] = {}
        self._stats: list[asyncio.Future] = []
        self._renamed: dict[str, list[asyncio.Future]] = {}
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
        self._handles[key] = self.lt.add_torrent(params)
        self.hash_failures.pop(key, None)
        return key

    def remove(self, info_hash: str) -> None:
        handle = self._handles.pop(info_hash, None)
        if handle is not None:
            self.lt.remove_torrent(handle)
        for future in self._finished.pop(info_hash, []):
            if not future.done():
                future.set_exception(asyncio.CancelledError(f"torrent {info_hash} removed"))

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
            info_hash, s.name, "error" if s.errc.value() else str(s.state), s.progress, s.num_peers, s.num_seeds,
            s.total_payload_upload, s.total_payload_download, s.upload_payload_rate,
            s.download_payload_rate, s.is_seeding, self.hash_failures.get(info_hash, 0))

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
                                   p.payload_down_speed))
        return list(status.pieces), peers, status.total_payload_download

    def set_piece_priorities(self, info_hash: str, priorities: list[int]) -> None:
        self._handles[info_hash].prioritize_pieces(priorities)

    def set_url_seeds(self, info_hash: str, urls: Iterable[str]) -> None:
        handle = self._handles[info_hash]
        for url in handle.url_seeds():
            handle.remove_url_seed(url)
        for url in urls:
            handle.add_url_seed(url)

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
        future = asyncio.get_running_loop().create_future()
        self._finished.setdefault(info_hash, []).append(future)
        if handle.status().is_seeding:
            handle.flush_cache()  # its cache_flushed alert resolves the future
        await future

    async def save_resume(self, info_hash: str) -> bytes:
        """libtorrent's resume data of a torrent (pieces had, peers), bencoded."""
        future = asyncio.get_running_loop().create_future()
        self._resume.setdefault(info_hash, []).append(future)
        self._handles[info_hash].save_resume_data(lt.save_resume_flags_t.flush_disk_cache)
        return await future

    async def rename(self, info_hash: str, name: str) -> None:
        """Rename the torrent's file on disk (relative to its save path), seeding on."""
        future = asyncio.get_running_loop().create_future()
        self._renamed.setdefault(info_hash, []).append(future)
        self._handles[info_hash].rename_file(0, name)
        await future

    async def stats(self) -> dict[str, int]:
        """The session's counters (`lt.session_stats_metrics()` names), fresh."""
        future = asyncio.get_running_loop().create_future()
        self._stats.append(future)
        self.lt.post_session_stats()
        return await future

    def drain(self) -> None:
        """Handle every alert waiting now, without waiting for the event loop's turn."""
        self._pump()

    def _pump(self) -> None:
        try:
            while self._read.recv(4096):
                pass
        except BlockingIOError:
            pass
        for alert in self.lt.pop_alerts():
            # Copy what is needed now: the alert object is dead after the next pop_alerts().
            if isinstance(alert, lt.block_finished_alert):
                key = alert.handle.info_hash().to_string().hex()
                ip, port = alert.endpoint
                slot = (bytes(alert.pid.to_bytes()), ip, port)
                counts = self.sources.setdefault(key, {})
                counts[slot] = counts.get(slot, 0) + BLOCK
            elif isinstance(alert, lt.session_stats_alert):
                self.counters = dict(alert.values)
                waiting, self._stats = self._stats, []
                for future in waiting:
                    if not future.done():
                        future.set_result(self.counters)
            elif isinstance(alert, lt.torrent_finished_alert):
                # Finished is not on disk: ask for a flush, and resolve on cache_flushed.
                alert.handle.flush_cache()
            elif isinstance(alert, lt.cache_flushed_alert):
                key = alert.handle.info_hash().to_string().hex()
                if alert.handle.status().is_seeding:
                    for future in self._finished.pop(key, []):
                        if not future.done():
                            future.set_result(None)
            elif isinstance(alert, lt.save_resume_data_alert):
                key = alert.handle.info_hash().to_string().hex()
                data = lt.write_resume_data_buf(alert.params)
                for future in self._resume.pop(key, []):
                    if not future.done():
                        future.set_result(data)
            elif isinstance(alert, lt.save_resume_data_failed_alert):
                key = alert.handle.info_hash().to_string().hex()
                message = alert.message()
                for future in self._resume.pop(key, []):
                    if not future.done():
                        future.set_exception(RuntimeError(message))
            elif isinstance(alert, (lt.file_renamed_alert, lt.file_rename_failed_alert)):
                key = alert.handle.info_hash().to_string().hex()
                failed = isinstance(alert, lt.file_rename_failed_alert)
                message = alert.message()
                for future in self._renamed.pop(key, []):
                    if not future.done():
                        if failed:
                            future.set_exception(OSError(message))
                        else:
                            future.set_result(None)
            elif isinstance(alert, lt.hash_failed_alert):
                key = alert.handle.info_hash().to_string().hex()
                self.hash_failures[key] = self.hash_failures.get(key, 0) + 1
                message = alert.message()
                self.errors.append(message)
                log.info("libtorrent: %s", message)
            elif isinstance(alert, lt.alerts_dropped_alert):
                log.warning("libtorrent dropped alerts: its queue was full")
            elif isinstance(alert, (lt.tracker_error_alert, lt.file_error_alert,
                                    lt.listen_failed_alert, lt.torrent_error_alert,
                                    lt.peer_ban_alert)):
                message = alert.message()
                self.errors.append(message)
                del self.errors[:-100]
                log.info("libtorrent: %s", message)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._read.fileno())
        for futures in (*self._finished.values(), *self._resume.values(),
                        *self._renamed.values(), self._stats):
            for future in futures:
                if not future.done():
                    future.cancel()
        self.lt.pause()
        self._handles.clear()
        del self.lt
        self._read.close()
        self._write.close()
