"""BitTorrent session settings, the HTTP limits every server of ours keeps, and the `[peer]`
section, declared beside their dataclasses and kept apart from peer/session.py and
peer/service.py so that reading a config imports neither libtorrent nor aiohttp."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Section, Setting, http_url, listen, port, positive

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
class HttpLimits:
    """How long a server of ours waits for a client: real servers bound the time to read a
    request's head and an idle keep-alive, or fifty clients that send half a request hold
    fifty connections for as long as they like (issue 14)."""

    #: a connection is closed when it has not sent a whole request head this many seconds
    #: after it opened or after its last answer: an idle keep-alive, or a slow or stuck client
    idle_timeout: float = 60.0
    #: seconds a request's body may take to arrive
    body_timeout: float = 60.0


def http_settings() -> tuple[Setting, ...]:
    """The `http_*` keys of every section that runs an HTTP server."""
    return (
        Setting("http_idle_timeout", float, HttpLimits.idle_timeout,
                "seconds a connection may wait for its next whole request head (idle "
                "keep-alives and slow or stuck clients are closed)",
                check=positive("seconds")),
        Setting("http_body_timeout", float, HttpLimits.body_timeout,
                "seconds a request's body may take to arrive", check=positive("seconds")),
    )


def http_limits(values: Mapping[str, Any]) -> HttpLimits:
    return HttpLimits(idle_timeout=values["http_idle_timeout"],
                      body_timeout=values["http_body_timeout"])


def bittorrent_settings(listen_help: str, lsd: bool) -> tuple[Setting, ...]:
    """The `bt_*` keys of a section that runs a session (`[mirror]`, `[peer]`). `lsd`: local
    discovery's default, on for the peers of a site (they find each other when the WAN and
    its tracker are gone, issue 16), off for a mirror facing the WAN (nobody on its LAN
    needs its multicasts)."""
    return (
        Setting("bt_listen", str, "0.0.0.0:6881", listen_help, check=listen),
        Setting("bt_dht", bool, True, "join the DHT (BEP 5)"),
        Setting("bt_lsd", bool, lsd, "local service discovery on the LAN (BEP 14): peers of "
                "one LAN find each other with no tracker"),
        Setting("bt_upnp", bool, False, "map the BitTorrent port with UPnP"),
        Setting("bt_natpmp", bool, False, "map the BitTorrent port with NAT-PMP"),
        Setting("bt_min_announce_interval", int, 300,
                "the least time between announces to one tracker, seconds (tests use 1)"),
    )


def session_settings(values: Mapping[str, Any]) -> SessionSettings:
    """A session's settings from a section's checked `bt_*` values (`bt_connections` where the
    section declares it)."""
    return SessionSettings(
        listen=values["bt_listen"], dht=values["bt_dht"], lsd=values["bt_lsd"],
        upnp=values["bt_upnp"], natpmp=values["bt_natpmp"],
        connections=values.get("bt_connections", SessionSettings.connections),
        min_announce_interval=values["bt_min_announce_interval"])


@dataclass(frozen=True)
class PeerConfig:
    """The `[peer]` section: where `pull` asks, whom it believes, how the daemon runs."""

    #: $WEIGHTSWARM_HOME: pinned keys, ref ledger, manifests and torrents pulled, resume data
    home: Path = Path(".")
    mirrors: tuple[str, ...] = ()
    trusted_keys: tuple[str, ...] = ()
    #: the index's base URL: where a pull asks which mirrors hold a revision when no mirror
    #: is given, and whose signed list of accepted mirror keys it believes
    index: str | None = None
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
    #: the daemon's HTTP server
    http: HttpLimits = HttpLimits()
    #: a mirror token (`mirror token add`) a pull sends to the mirrors it is given
    token: str | None = None


def _peer_config(values: Mapping[str, Any]) -> PeerConfig:
    """`home` is not a `[peer]` setting: load_config sets it from --home or $WEIGHTSWARM_HOME."""
    serve_bt = session_settings(values)
    return PeerConfig(
        mirrors=tuple(m.rstrip("/") for m in values["mirrors"]),
        trusted_keys=tuple(values["trusted_keys"]),
        index=values["index"],
        host=values["host"], port=values["port"],
        serve_bt=serve_bt, pull_bt=dataclasses.replace(serve_bt, listen=values["pull_listen"]),
        web_seed_grace=values["web_seed_grace"], cache=values["cache"],
        http=http_limits(values), token=values["token"],
    )


PEER = Section("peer", (
    Setting("mirrors", list, [], "mirror base URLs a pull asks, nearest first"),
    Setting("token", str, None, "a mirror token (`weightswarm mirror token add`) for gated "
            "and private repos, sent only to the mirrors named here or with --mirror (never "
            "to the index or the mirrors it locates); what is pulled with it is not passed "
            "on by the peer daemon", unset="public repos only"),
    Setting("trusted_keys", list, [],
            "mirror keys (ed25519:<hex>) whose manifests are believed, besides pinned ones; "
            "an index's key here is believed without pinning"),
    Setting("index", str, None, "the index a pull asks which mirrors hold a revision when no "
            "mirror is given, and whose signed list of accepted mirror keys it believes (the "
            "tracker's base URL, e.g. http://tracker:6969; its key is pinned on first use "
            "unless listed in trusted_keys)", check=http_url),
    Setting("host", str, "127.0.0.1", "address the peer daemon's /metrics binds"),
    Setting("port", int, 8471, "port of the peer daemon's /metrics (0: any)", check=port),
    *http_settings(),
    *bittorrent_settings("the peer daemon's BitTorrent address, host:port", lsd=True),
    Setting("pull_listen", str, "0.0.0.0:0", "a pull's BitTorrent address (port 0: ephemeral)",
            check=listen),
    Setting("web_seed_grace", float, 5.0,
            "seconds a pull waits for peers to deliver before the mirrors' web seeds join"),
    Setting("cache", str, None, "the Hugging Face cache a pull fills",
            unset="$HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub"),
), build=_peer_config)
