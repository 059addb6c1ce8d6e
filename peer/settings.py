"""BitTorrent session settings, kept apart from peer/session.py so that reading a config does
not import libtorrent."""

from __future__ import annotations

from dataclasses import dataclass


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
    #: libtorrent's default is 300 s, which silently clamps a tracker's shorter interval;
    #: loopback tests use 1 and reconnect as fast (BITTORRENT.md section 1).
    min_announce_interval: int = 300

    @property
    def fast(self) -> bool:
        return self.min_announce_interval < 60
