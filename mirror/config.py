"""Settings, declared once: the file (`weightswarm.toml`), `WEIGHTSWARM_<SECTION>_<KEY>`
environment variables and command-line flags, in rising priority (DESIGN.md section 8).

The CLI builds one frozen `Config` and passes it down; nothing reads the environment later.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peer.errors import ConfigError
from peer.settings import PeerConfig, SessionSettings
from tracker.config import TrackerConfig, parse_sites

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Setting:
    section: str
    key: str
    type: type
    default: Any
    help: str

    @property
    def env(self) -> str:
        return f"WEIGHTSWARM_{self.section.upper().replace('.', '_')}_{self.key.upper()}"


SETTINGS = [
    Setting("mirror", "host", str, "127.0.0.1", "address the mirror's HTTP API binds to"),
    Setting("mirror", "port", int, 8470, "port of the mirror's HTTP API (0: any free port)"),
    Setting("mirror", "public_url", str, None,
            "base URL clients see; default: the request's own scheme, host and port"),
    Setting("mirror", "archive", bool, False,
            "never remove anything: rm and gc refuse, syncs keep what the upstream removed"),
    Setting("mirror", "trackers", list, [],
            "tracker announce URLs our torrents carry [default: the embedded tracker]"),
    Setting("mirror", "min_free", int, 16 * 1024 * 1024,
            "bytes an import must leave free on the store's disk"),
    Setting("mirror", "egress_limit", int, None,
            "bytes/s over all blob egress: BitTorrent upload, web seed and resolve together "
            "[default: unlimited]"),
    Setting("mirror", "seed", bool, True, "seed every large blob over BitTorrent"),
    Setting("mirror", "bt_listen", str, "0.0.0.0:6881",
            "BitTorrent listen address, host:port (port 0: any free port)"),
    Setting("mirror", "bt_connections", int, 500, "BitTorrent connections at most"),
    Setting("mirror", "bt_dht", bool, True, "join the DHT (BEP 5)"),
    Setting("mirror", "bt_lsd", bool, True, "local service discovery on the LAN (BEP 14)"),
    Setting("mirror", "bt_upnp", bool, False, "map the BitTorrent port with UPnP"),
    Setting("mirror", "bt_natpmp", bool, False, "map the BitTorrent port with NAT-PMP"),
    Setting("mirror", "bt_min_announce_interval", int, 300,
            "the least time between announces to one tracker, seconds (tests use 1)"),
    Setting("mirror", "scrub_interval", str, "7d",
            "how often every blob is re-hashed (blake3) to find silent corruption; 0: never"),
    Setting("tracker", "host", str, "127.0.0.1", "address the tracker binds (HTTP and UDP)"),
    Setting("tracker", "port", int, 6969, "tracker port, HTTP and UDP (0: any free port)"),
    Setting("tracker", "interval", int, 1800, "seconds between a peer's announces"),
    Setting("tracker", "min_interval", int, 60, "the least a peer may wait between announces"),
    Setting("tracker", "mirrors", list, [], "mirrors' BitTorrent endpoints, ip:port"),
    Setting("tracker", "keys_file", str, None, "private-swarm keys, one per line"),
    Setting("tracker", "private_hashes", list, [],
            "info-hashes (40 hex) of private swarms, besides those announced privately"),
    Setting("tracker", "trusted_proxies", list, ["127.0.0.0/8", "::1/128"],
            "addresses whose ip= is believed"),
    Setting("tracker", "max_swarms", int, 1_000_000, "swarms held in memory at most"),
    Setting("tracker", "max_peers", int, 5_000_000, "peers held in memory at most"),
    Setting("peer", "mirrors", list, [], "mirror base URLs a pull asks, nearest first"),
    Setting("peer", "trusted_keys", list, [],
            "mirror keys (ed25519:<hex>) whose manifests are believed, besides pinned ones"),
    Setting("peer", "host", str, "127.0.0.1", "address the peer daemon's /metrics binds"),
    Setting("peer", "port", int, 8471, "port of the peer daemon's /metrics (0: any)"),
    Setting("peer", "bt_listen", str, "0.0.0.0:6881", "the peer daemon's BitTorrent address"),
    Setting("peer", "pull_listen", str, "0.0.0.0:0",
            "a pull's BitTorrent address (port 0: ephemeral)"),
    Setting("peer", "bt_dht", bool, True, "join the DHT (BEP 5)"),
    Setting("peer", "bt_lsd", bool, True, "local service discovery on the LAN (BEP 14)"),
    Setting("peer", "bt_upnp", bool, False, "map the BitTorrent port with UPnP"),
    Setting("peer", "bt_natpmp", bool, False, "map the BitTorrent port with NAT-PMP"),
    Setting("peer", "bt_min_announce_interval", int, 300,
            "the least time between announces to one tracker, seconds (tests use 1)"),
    Setting("peer", "web_seed_grace", float, 5.0,
            "seconds a pull waits for peers to deliver before the mirrors' web seeds join"),
    Setting("peer", "cache", str, None,
            "Hugging Face cache [default: $HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub]"),
    Setting("mirror.upstreams.huggingface", "endpoint", str, "https://huggingface.co",
            "the Hugging Face-compatible endpoint hf: specs sync from"),
    Setting("mirror.upstreams.huggingface", "token", str, None,
            "token sent to that endpoint [default: $HF_TOKEN]"),
    Setting("mirror.upstreams.huggingface", "requests_per_5min", int, 500,
            "request budget per five minutes (HF's lower published limit)"),
    Setting("mirror.upstreams.huggingface", "bandwidth", float, None,
            "bytes/s cap over all downloads from it [default: unlimited]"),
]
_BY_NAME = {(s.section, s.key): s for s in SETTINGS}
HF_SECTION = "mirror.upstreams.huggingface"


def _flatten(table: dict, section: str = ""):
    """(section, key, value) of a TOML document: [mirror.upstreams.huggingface] nests."""
    for key, value in table.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{section}.{key}" if section else key)
        elif section:
            yield section, key, value
        else:
            yield None, key, value


@dataclass(frozen=True)
class MirrorConfig:
    host: str
    port: int
    public_url: str | None
    archive: bool
    min_free: int
    trackers: tuple
    upstreams: dict  # hub → {endpoint, token, requests_per_5min, bandwidth}
    #: [[mirror.sync]] jobs: {spec, include, exclude, interval (seconds)}
    syncs: tuple = ()
    egress_limit: int | None = None
    #: None: do not seed
    bittorrent: SessionSettings | None = None
    scrub_interval: float = 7 * 86400  # 0: never


@dataclass(frozen=True)
class Config:
    home: Path
    mirror: MirrorConfig
    tracker: TrackerConfig = TrackerConfig()
    peer: PeerConfig = PeerConfig()

    @property
    def store_dir(self) -> Path:
        return self.home / "store"

    @property
    def catalog_path(self) -> Path:
        return self.home / "catalog.sqlite"

    @property
    def key_path(self) -> Path:
        return self.home / "mirror.key"

    @property
    def repair_dir(self) -> Path:
        """Blobs found corrupt, being mended piece by piece from the swarm."""
        return self.store_dir / "repair"


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any, origin: str, *, least: float = 60) -> float:
    """Seconds from 3600, "3600", "90m", "6h" or "1d"; 0 passes when `least` is 0."""
    text = str(value).strip().lower()
    try:
        if text and text[-1] in _UNITS:
            seconds = float(text[:-1]) * _UNITS[text[-1]]
        else:
            seconds = float(text)
    except ValueError:
        raise ConfigError(f"{origin}: {value!r} is not a duration (e.g. 3600, 90m, 6h)") from None
    if seconds < 0 or (seconds < least):
        raise ConfigError(f"{origin}: {value!r} is under a minute (the least is {least:.0f} s)"
                          if least == 60 else f"{origin}: {value!r} is negative")
    return seconds


def _sync_jobs(raw: Any, origin: Path) -> tuple:
    if not isinstance(raw, list) or not all(isinstance(job, dict) for job in raw):
        raise ConfigError(f"{origin}: [[mirror.sync]] must be a list of tables")
    jobs = []
    for job in raw:
        unknown = set(job) - {"spec", "include", "exclude", "interval"}
        if unknown or not isinstance(job.get("spec"), str):
            raise ConfigError(f"{origin}: a [[mirror.sync]] table needs spec (text) and takes "
                              f"include, exclude, interval; got {sorted(job)}")
        patterns = {}
        for key in ("include", "exclude"):
            value = job.get(key, [])
            value = [value] if isinstance(value, str) else value
            if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
                raise ConfigError(f"{origin}: mirror.sync {key} is a glob or a list of globs")
            patterns[key] = tuple(value)
        jobs.append({"spec": job["spec"], **patterns,
                     "interval": parse_duration(job.get("interval", "6h"), str(origin))})
    return tuple(jobs)


def default_home(env: Mapping[str, str]) -> Path:
    if env.get("WEIGHTSWARM_HOME"):
        return Path(env["WEIGHTSWARM_HOME"]).expanduser()
    base = env.get("XDG_DATA_HOME") or os.path.join(env.get("HOME", "~"), ".local", "share")
    return Path(base).expanduser() / "weightswarm"


def _coerce(setting: Setting, value: Any, origin: str) -> Any:
    if value is None:
        return None
    try:
        if setting.type is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if setting.type is int and isinstance(value, bool):
            raise ValueError(value)
        if setting.type is list:
            if isinstance(value, str):  # from the environment: comma-separated
                return [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(value)
            return list(value)
        return setting.type(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{origin}: {setting.section}.{setting.key} must be a {setting.type.__name__}, "
            f"got {value!r}"
        ) from None


def _check_listen(text: str, name: str) -> None:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{name} must be host:port, got {text!r}")


def _bittorrent(values: dict, section: str) -> SessionSettings:
    """A session's settings from a section's bt_* keys."""
    bt = {key[3:]: values[(s, key)] for (s, key) in _BY_NAME
          if s == section and key.startswith("bt_")}
    _check_listen(bt["listen"], f"{section}.bt_listen")
    return SessionSettings(
        listen=bt["listen"], dht=bt["dht"], lsd=bt["lsd"], upnp=bt["upnp"], natpmp=bt["natpmp"],
        connections=bt.get("connections", 200),
        min_announce_interval=bt["min_announce_interval"])


def load_config(
    *,
    home: Path | None = None,
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[tuple[str, str], Any] | None = None,
) -> Config:
    env = os.environ if env is None else env
    home = Path(home) if home else default_home(env)
    values = {name: s.default for name, s in _BY_NAME.items()}
    syncs: tuple = ()
    sites: tuple = ()

    path = Path(config_file) if config_file else home / "weightswarm.toml"
    if config_file and not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path.is_file():
        try:
            data = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: {e}") from None
        mirror_table = data.get("mirror")
        if isinstance(mirror_table, dict):
            syncs = _sync_jobs(mirror_table.pop("sync", []), path)
        tracker_table = data.get("tracker")
        if isinstance(tracker_table, dict):
            try:
                sites = parse_sites(tracker_table.pop("sites", []))
            except ValueError as e:
                raise ConfigError(f"{path}: {e}") from None
        for section, key, value in _flatten(data):
            if section is None:
                log.warning("%s: ignoring top-level key %r (settings live in sections)", path, key)
                continue
            setting = _BY_NAME.get((section, key))
            if setting is None:
                log.warning("%s: unknown setting %s.%s ignored", path, section, key)
                continue
            values[(section, key)] = _coerce(setting, value, str(path))

    for name, setting in _BY_NAME.items():
        if setting.env in env:
            values[name] = _coerce(setting, env[setting.env], setting.env)
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = _coerce(_BY_NAME[name], value, "command line")

    public_url = values[("mirror", "public_url")]
    if public_url:
        public_url = public_url.rstrip("/")
        if not public_url.startswith(("http://", "https://")):
            raise ConfigError(f"mirror.public_url must start with http:// or https://: {public_url}")
    port = values[("mirror", "port")]
    if not 0 <= port <= 65535:
        raise ConfigError(f"mirror.port must be 0-65535, got {port}")
    egress = values[("mirror", "egress_limit")]
    if egress is not None and egress <= 0:
        raise ConfigError(f"mirror.egress_limit must be a positive number of bytes/s, got {egress}")
    bt = _bittorrent(values, "mirror")
    pb = _bittorrent(values, "peer")
    _check_listen(values[("peer", "pull_listen")], "peer.pull_listen")
    scrub = values[("mirror", "scrub_interval")]
    scrub_interval = parse_duration(scrub, "mirror.scrub_interval", least=0)
    t = {key: values[("tracker", key)] for (section, key) in _BY_NAME if section == "tracker"}
    if not 0 <= t["port"] <= 65535:
        raise ConfigError(f"tracker.port must be 0-65535, got {t['port']}")
    private = []
    for text in t["private_hashes"]:
        if not re.fullmatch(r"[0-9a-fA-F]{40}", text):
            raise ConfigError(f"tracker.private_hashes: {text!r} is not 40 hex characters")
        private.append(bytes.fromhex(text))
    tracker = TrackerConfig(
        host=t["host"], port=t["port"], interval=t["interval"], min_interval=t["min_interval"],
        peer_ttl=2 * t["interval"] + 300, sites=sites, mirrors=frozenset(t["mirrors"]),
        keys_file=t["keys_file"], trusted_proxies=tuple(t["trusted_proxies"]),
        max_swarms=t["max_swarms"], max_peers=t["max_peers"], private_hashes=frozenset(private),
    )
    peer = PeerConfig(
        home=home,
        mirrors=tuple(m.rstrip("/") for m in values[("peer", "mirrors")]),
        trusted_keys=tuple(values[("peer", "trusted_keys")]),
        host=values[("peer", "host")], port=values[("peer", "port")],
        serve_bt=pb, pull_bt=dataclasses.replace(pb, listen=values[("peer", "pull_listen")]),
        web_seed_grace=values[("peer", "web_seed_grace")], cache=values[("peer", "cache")],
    )
    return Config(
        home=home,
        tracker=tracker,
        peer=peer,
        mirror=MirrorConfig(
            host=values[("mirror", "host")],
            port=port,
            public_url=public_url,
            archive=values[("mirror", "archive")],
            min_free=values[("mirror", "min_free")],
            trackers=tuple(values[("mirror", "trackers")]),
            syncs=syncs,
            egress_limit=egress,
            bittorrent=bt if values[("mirror", "seed")] else None,
            scrub_interval=scrub_interval,
            upstreams={
                "huggingface": {
                    "endpoint": values[(HF_SECTION, "endpoint")].rstrip("/"),
                    "token": values[(HF_SECTION, "token")]
                    or env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN"),
                    "requests_per_5min": values[(HF_SECTION, "requests_per_5min")],
                    "bandwidth": values[(HF_SECTION, "bandwidth")],
                },
            },
        ),
    )
