"""BitTorrent session settings, kept apart from peer/session.py so that reading a config does
not import libtorrent."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: the start of our peer ids, so a downloader can tell a mirror's bytes from a peer's
MIRROR_FINGERPRINT = "-WM0100-"
PEER_FINGERPRINT = "-WP0100-"


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


@dataclass(frozen=True)
class PeerConfig:
    """The `[peer]` section: where `pull` asks, whom it believes, how the daemon runs."""

    #: $WEIGHTSWARM_HOME: pinned keys, ref ledger, manifests and torrents pulled, resume data
    home: Path = Path(".")
    mirrors: tuple[str, ...] = ()
    trusted_keys: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8471
    #: the daemon's session (`peer serve`)
    serve_bt: SessionSettings = SessionSettings()
    #: a pull's own session: an ephemeral port
    pull_bt: SessionSettings = SessionSettings(listen="0.0.0.0:0")
    #: seconds a pull waits for peers before the mirrors' web seeds join a torrent
    web_seed_grace: float = 5.0
    #: the Hugging Face cache [default: HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub]
    cache: str | None = None
