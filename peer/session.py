"""One libtorrent session per process, driven from asyncio (BITTORRENT.md section 1).

libtorrent tells us something happened by writing to a file descriptor we give it
(`set_alert_fd`): the write end of a non-blocking socketpair, whose read end the event loop
watches. On readable we drain the socket and pop every alert, copying the few fields we need
inside the handler: an alert object used after the next `pop_alerts()` crashes the process.
No polling, no Python callback from libtorrent's threads.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path

import libtorrent as lt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionSettings:
    listen: str = "0.0.0.0:6881"
    dht: bool = False
    lsd: bool = False
    upnp: bool = False
    natpmp: bool = False
    upload_rate: int = 0  # bytes/s, 0 = unlimited
    download_rate: int = 0
    connections: int = 200
    #: loopback tests: announce often, reconnect fast
    fast: bool = False


def _settings(s: SessionSettings) -> dict:
    pack = {
        "listen_interfaces": s.listen,
        "enable_dht": s.dht, "enable_lsd": s.lsd, "enable_upnp": s.upnp,
        "enable_natpmp": s.natpmp, "dht_bootstrap_nodes": "",
        "enable_outgoing_utp": False, "enable_incoming_utp": False,
        "allow_multiple_connections_per_ip": True,
        "upload_rate_limit": s.upload_rate, "download_rate_limit": s.download_rate,
        "connections_limit": s.connections, "stop_tracker_timeout": 1, "hashing_threads": 2,
        "alert_mask": lt.alert_category.status | lt.alert_category.error
        | lt.alert_category.storage,
    }
    if s.fast:
        pack.update(min_announce_interval=1, min_reconnect_time=1)
    return pack


@dataclass
class _Waiters:
    finished: dict[str, list[asyncio.Future]] = field(default_factory=dict)


class Session:
    """Add torrents, await their completion; `close()` shuts down in about a second."""

    def __init__(self, settings: SessionSettings):
        params = lt.session_params(_settings(settings))
        # mmap disk I/O: 455 vs 312 MiB/s for a leecher here (BITTORRENT.md).
        params.disk_io_constructor = "mmap_disk_io_constructor"
        self.lt = lt.session(params)
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)
        self.lt.set_alert_fd(self._write.fileno())
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters = _Waiters()
        self._handles: dict[str, lt.torrent_handle] = {}
        self.errors: list[str] = []

    @property
    def port(self) -> int:
        return self.lt.listen_port()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._read.fileno(), self._pump)

    def add(self, torrent: bytes, save_path: Path) -> str:
        """Add a torrent (bencoded), running at once (not queued); returns its info-hash."""
        params = lt.add_torrent_params()
        params.ti = lt.torrent_info(lt.bdecode(torrent))
        params.save_path = str(save_path)
        # A mirror seeds thousands: auto-management would let only a handful run.
        params.flags &= ~lt.torrent_flags.auto_managed
        params.flags &= ~lt.torrent_flags.paused
        handle = self.lt.add_torrent(params)
        key = params.ti.info_hash().to_string().hex()
        self._handles[key] = handle
        return key

    async def finished(self, info_hash: str) -> None:
        """Return once the torrent is complete and its bytes are on disk (flushed)."""
        handle = self._handles[info_hash]
        future = asyncio.get_running_loop().create_future()
        self._waiters.finished.setdefault(info_hash, []).append(future)
        if handle.status().is_seeding:
            handle.flush_cache()  # its cache_flushed alert resolves the future
        await future

    def _pump(self) -> None:
        try:
            while self._read.recv(4096):
                pass
        except BlockingIOError:
            pass
        for alert in self.lt.pop_alerts():
            # Copy what is needed now: the alert object is dead after the next pop_alerts().
            if isinstance(alert, lt.torrent_finished_alert):
                # Finished is not on disk: ask for a flush, and resolve on cache_flushed.
                alert.handle.flush_cache()
            elif isinstance(alert, lt.cache_flushed_alert):
                key = alert.handle.info_hash().to_string().hex()
                for future in self._waiters.finished.pop(key, []):
                    if not future.done():
                        future.set_result(None)
            elif isinstance(alert, (lt.tracker_error_alert, lt.file_error_alert,
                                    lt.hash_failed_alert)):
                message = alert.message()
                self.errors.append(message)
                log.info("libtorrent: %s", message)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._read.fileno())
        self.lt.pause()
        self._handles.clear()
        del self.lt
        self._read.close()
        self._write.close()
