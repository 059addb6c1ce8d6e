"""The mirror's settings (`[mirror]`, `[mirror.upstreams.<hub>]`, `[[mirror.sync]]`), declared
beside its frozen dataclasses, and `load_config`, which builds every role's from the file
(`weightswarm.toml`), `WEIGHTSWARM_<SECTION>_<KEY>` environment variables and command-line flags,
in rising priority (DESIGN.md section 8; peer/config.py does the merging).

The CLI builds one frozen `Config` and passes it down; nothing reads the environment later.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from peer import hubs
from peer.config import (
    REQUIRED,
    Section,
    Setting,
    Subsections,
    Tables,
    duration,
    http_url,
    not_negative,
    port,
    positive,
    read_settings,
    render_example,
)
from peer.errors import ConfigError
from peer.keys import parse_public_key
from peer.settings import (
    PEER,
    HttpLimits,
    PeerConfig,
    SessionSettings,
    bittorrent_settings,
    http_limits,
    http_settings,
    session_settings,
)
from tracker.config import TRACKER, TrackerConfig

from .aliases import Aliases, read_aliases
from .scan import scan_policy


@dataclass(frozen=True)
class UpstreamConfig:
    """`[mirror.upstreams.<hub>]`: where a hub's repos are synced from, and how politely."""

    endpoint: str
    token: str | None = None
    #: requests in any five minutes at most (0: unlimited)
    requests_per_5min: int = 500
    #: bytes/s over all downloads from it (None or 0: unlimited)
    bandwidth: float | None = None
    #: times a request that got no answer or a 5xx is tried again, with backoff
    retries: int = 5


@dataclass(frozen=True)
class _Hub:
    name: str
    endpoint: str
    #: the variables the hub's own client reads its token from (PROTOCOLS.md sections 1-3)
    token_env: tuple[str | tuple[str, ...], ...]
    budget_note: str = ""


_PUBLIC = {
    hubs.HUGGINGFACE: _Hub("Hugging Face", "https://huggingface.co",
                           ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"),
                           "; 500 is Hugging Face's lower published limit"),
    hubs.MODELSCOPE: _Hub("ModelScope", "https://modelscope.cn", ("MODELSCOPE_API_TOKEN",)),
    # kagglehub sends KAGGLE_API_TOKEN as a bearer token, else KAGGLE_USERNAME and KAGGLE_KEY
    # as HTTP Basic: that pair is the token "username:key".
    # Its RPC base (kagglesdk's PROD; a local test server is http://localhost:7777/api).
    hubs.KAGGLE: _Hub("Kaggle", "https://api.kaggle.com",
                      ("KAGGLE_API_TOKEN", ("KAGGLE_USERNAME", "KAGGLE_KEY"))),
}


def _upstream(hub: str) -> Section[UpstreamConfig]:
    public = _PUBLIC[hub]
    return Section(f"mirror.upstreams.{hub}", (
        Setting("endpoint", str, public.endpoint,
                f"the {public.name}-compatible endpoint its repos are synced from", check=http_url),
        Setting("token", str, None, "token sent to that endpoint", fallback_env=public.token_env),
        Setting("requests_per_5min", int, 500,
                "requests in any five minutes at most (0: unlimited)" + public.budget_note,
                check=not_negative),
        Setting("bandwidth", float, None, "bytes/s cap over all downloads from it",
                check=not_negative, unset="unlimited"),
        Setting("retries", int, 5, "times a request that got no answer or a 5xx is tried "
                "again (backoff 0.5, 1, 2, 4... s)", check=not_negative),
    ), build=lambda values: UpstreamConfig(**values))


@dataclass(frozen=True)
class ScheduledSync:
    """A `[[mirror.sync]]` table: a spec the scheduler syncs at start and every `interval`
    seconds. The spec stays text: `mirror.sync.parse_spec` reads it when the mirror serves."""

    spec: str
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    interval: float = 6 * 3600


def _globs(value: Any) -> tuple[str, ...]:
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise ValueError(f"must be a glob or a list of globs, got {value!r}")
    return tuple(value)


SYNCS = Tables("sync", (
    Setting("spec", str, REQUIRED, "what to sync, as `weightswarm mirror sync` takes it"),
    Setting("include", object, [], "only paths matching this glob (or list of globs)",
            check=_globs),
    Setting("exclude", object, [], "skip paths matching this glob (or list of globs)",
            check=_globs),
    Setting("interval", str, "6h", "how often, a minute or more (e.g. 3600, 90m, 6h)",
            check=duration(a_minute_or_more=True)),
), build=lambda values: ScheduledSync(**values),
    example={"spec": "hf:sentence-transformers/all-MiniLM-L6-v2",
             "include": ["*.json", "*.txt", "*.safetensors"]})


@dataclass(frozen=True)
class PullThroughConfig:
    """`[mirror] pull_through*`: what a client's request for a repo the catalog lacks may
    fetch from the upstream."""

    enabled: bool = False
    allow: tuple[str, ...] = ("*",)
    deny: tuple[str, ...] = ()
    #: "requested": only the files clients ask for (the snapshot is published once all are
    #: here); "snapshot": the rest too, in the background, after the first file asked for
    complete: str = "requested"
    #: bytes a repo's revision may total (None: any)
    max_repo_size: int | None = None
    #: seconds a file that failed verification (twice) is refused before it is fetched again
    failure_ttl: float = 30.0


def _complete(value: Any) -> str:
    if value not in ("requested", "snapshot"):
        raise ValueError(f'must be "requested" or "snapshot", got {value!r}')
    return value


@dataclass(frozen=True)
class MirrorConfig:
    host: str
    port: int
    public_url: str | None
    archive: bool
    min_free: int
    trackers: tuple
    #: hub id -> its upstream, for every hub of peer/hubs.py
    upstreams: Mapping[str, UpstreamConfig]
    syncs: tuple[ScheduledSync, ...] = ()
    egress_limit: int | None = None
    #: None: do not seed
    bittorrent: SessionSettings | None = None
    scrub_interval: float = 7 * 86400  # 0: never
    http: HttpLimits = HttpLimits()
    #: keys (ed25519:<hex>) whose bundles `mirror import-bundle` believes
    bundle_keys: tuple[str, ...] = ()
    #: old names (retired URLs, renamed repos) answered with a redirect (mirror/aliases.py)
    aliases: Aliases = Aliases({}, ())
    #: the index this mirror registers with (its tracker's base URL), if any
    index: str | None = None
    #: what the mirror tells its index of where it is (the index's `locate` ranks by them)
    site: str | None = None
    region: str | None = None
    netblocks: tuple[str, ...] = ()
    #: this mirror's share among equally near ones in the index's weighted random order
    weight: float = 1.0
    #: with `index` set: a sync takes its bytes from mirrors the index locates first
    sync_from_network: bool = True
    #: fetch what clients ask for and the catalog lacks from the upstream (mirror/pullthrough.py)
    pull_through: PullThroughConfig = PullThroughConfig()
    #: what a file the pickle scanner flags does to its snapshot (mirror/scan.py)
    scan_policy: str = "flag"
    #: users, groups, tokens and repo access (mirror/access.py); None: no tokens
    access_file: str | None = None
    #: the pages show a model card's images from other sites (off: a page loads nothing
    #: from elsewhere, which an air-gapped site could not anyway)
    remote_images: bool = False


def _keys(value: Any) -> list[str]:
    """Every item an `ed25519:<64 hex>` public key."""
    for key in value:
        parse_public_key(key)  # ValueError says what is wrong
    return value


def _aliases(value: Any) -> Aliases:
    return Aliases.parse(read_aliases(value))  # ValueError says what is wrong


def _mirror_config(values: Mapping[str, Any]) -> MirrorConfig:
    return MirrorConfig(
        host=values["host"], port=values["port"], public_url=values["public_url"],
        archive=values["archive"], min_free=values["min_free"],
        trackers=tuple(values["trackers"]),
        upstreams=MappingProxyType(dict(values["upstreams"])),
        syncs=values["sync"], egress_limit=values["egress_limit"],
        bittorrent=session_settings(values) if values["seed"] else None,
        scrub_interval=values["scrub_interval"], http=http_limits(values),
        bundle_keys=tuple(values["bundle_keys"]),
        aliases=values["aliases"] if isinstance(values["aliases"], Aliases)
        else _aliases(values["aliases"]),
        index=values["index"], site=values["site"], region=values["region"],
        netblocks=tuple(values["netblocks"]), weight=values["weight"],
        sync_from_network=values["sync_from_network"],
        pull_through=PullThroughConfig(
            enabled=values["pull_through"], allow=values["pull_through_allow"],
            deny=values["pull_through_deny"], complete=values["pull_through_complete"],
            max_repo_size=values["pull_through_max_repo_size"],
            failure_ttl=values["pull_through_failure_ttl"]),
        scan_policy=values["scan_policy"], access_file=values["access_file"],
        remote_images=values["remote_images"],
    )


def _netblocks(value: Any) -> list[str]:
    """Every item a network (CIDR)."""
    for block in value:
        try:
            ipaddress.ip_network(block, strict=False)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{block!r} is not a network (CIDR): {e}") from None
    return value


def _place_name(value: Any) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", value):
        raise ValueError("must be a short name: letters, digits, . _ - (at most 64)")
    return value


MIRROR = Section("mirror", (
    Setting("host", str, "127.0.0.1", "address the mirror's HTTP API binds to"),
    Setting("port", int, 8470, "port of the mirror's HTTP API (0: any free port)", check=port),
    *http_settings(),
    Setting("public_url", str, None, "base URL clients see", check=http_url,
            unset="the request's own scheme, host and port"),
    Setting("archive", bool, False,
            "never remove anything: rm and gc refuse, syncs keep what the upstream removed"),
    Setting("trackers", list, [], "tracker announce URLs our torrents carry",
            unset="the embedded tracker"),
    Setting("min_free", int, 16 * 1024 * 1024,
            "bytes an import must leave free on the store's disk"),
    Setting("egress_limit", int, None,
            "bytes/s over all blob egress: BitTorrent upload, web seed and resolve together",
            check=positive("bytes/s"), unset="unlimited"),
    Setting("seed", bool, True, "seed every large blob over BitTorrent"),
    *bittorrent_settings("BitTorrent listen address, host:port (port 0: any free port)",
                         lsd=False),
    Setting("bt_connections", int, 500, "BitTorrent connections at most"),
    Setting("scrub_interval", str, "7d",
            "how often every blob is re-hashed (blake3) to find silent corruption; 0: never",
            check=duration()),
    Setting("bundle_keys", list, [],
            "keys (ed25519:<hex>) of the mirrors whose bundles `mirror import-bundle` "
            "believes: their indexes, manifests and ref statements", check=_keys),
    Setting("aliases", object, {},
            "old names answered with a redirect to a repo this mirror holds: a table of "
            "retired URL or old repo (as a sync spec) = \"new repo as a sync spec\", or the "
            "path of a TOML or YAML file of one (e.g. \"tfhub.dev/google/bert\" = "
            "\"kaggle:google/bert/tensorFlow2/en-uncased\")", check=_aliases),
    Setting("index", str, None, "the index this mirror registers with, at start and every few "
            "minutes (the tracker's base URL, e.g. http://tracker:6969)", check=http_url),
    Setting("site", str, None, "the site this mirror is at, told to the index (its locate "
            "ranks mirrors at the asker's site next after netblocks)", check=_place_name),
    Setting("region", str, None, "the region this mirror is in, told to the index",
            check=_place_name),
    Setting("netblocks", list, [], "networks (CIDR) this mirror serves first: the index's "
            "locate ranks it nearest for addresses in them", check=_netblocks),
    Setting("weight", float, 1.0, "this mirror's share among equally near mirrors in the "
            "index's weighted random order", check=positive("a share")),
    Setting("sync_from_network", bool, True, "with index set: take a sync's bytes from the "
            "mirrors the index locates holding the upstream's commit, each file still checked "
            "against the upstream's hashes (the upstream then serves only the listing)"),
    Setting("pull_through", bool, False, "fetch on demand: a request for a repo or revision "
            "the catalog lacks is answered from its upstream (mirror.upstreams.huggingface), "
            "every byte verified before the client can keep it, and the files land in the "
            "store; the snapshot is published (served, seeded, in the index) once all are here"),
    Setting("pull_through_allow", object, ["*"], "repos (globs of the id, e.g. \"google/*\") "
            "pull-through may fetch", check=_globs),
    Setting("pull_through_deny", object, [], "repos (globs) pull-through never fetches, even "
            "if allowed", check=_globs),
    Setting("pull_through_complete", str, "requested", "\"requested\": fetch only the files "
            "clients ask for; \"snapshot\": after the first, the rest of the revision too, in "
            "the background", check=_complete),
    Setting("pull_through_max_repo_size", int, None, "bytes a revision fetched through "
            "pull-through may total", check=positive("bytes"), unset="any size"),
    Setting("pull_through_failure_ttl", str, "30s", "how long a file that failed verification "
            "twice is answered 502 before the upstream is asked again", check=duration()),
    Setting("scan_policy", str, "flag", "a file of a pickle-based format that the scanner flags "
            "(it imports what can run code when loaded): \"flag\" serves it and says so in "
            "repo info and mirror ls; \"quarantine\" keeps it but serves it to no one; "
            "\"refuse\" publishes none of its snapshot", check=scan_policy),
    Setting("access_file", str, None, "users, groups, tokens (stored hashed) and repo access "
            "by glob, TOML or YAML, relative to the home; read again whenever it changes "
            "(`mirror token add` writes it)", unset="no tokens: gated and private repos are "
            "served to no one"),
    Setting("remote_images", bool, False, "the web pages show a model card's images from "
            "other sites (https only); off, a page loads nothing from anywhere else"),
    SYNCS,
    Subsections("upstreams", {hub: _upstream(hub) for hub in hubs.HUBS}),
), build=_mirror_config)

#: every role's section, in the order the CLI's help lists them
SECTIONS = (MIRROR, TRACKER, PEER)


_EXAMPLE_INTRO = """\
# weightswarm.toml: every setting of every role, commented out at its default.
#
# Uncomment a line and change its value. The services read this file from --config (the units
# in ops/systemd/ give /etc/weightswarm/weightswarm.toml), else from
# $WEIGHTSWARM_HOME/weightswarm.toml. Each setting may also come from the environment variable
# named beside it, which wins over the file, and a command's flags win over both. A setting set
# to "" is unset.
#
# Written by `weightswarm config example` from the settings' declarations (mirror/config.py,
# tracker/config.py, peer/settings.py); tests/test_ops.py checks that
# ops/weightswarm.example.toml is what it writes.
"""


def example_config() -> str:
    """The example settings file (ops/weightswarm.example.toml)."""
    return _EXAMPLE_INTRO + render_example(SECTIONS)


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
    def access_path(self) -> Path | None:
        """`[mirror] access_file`, relative to the home."""
        value = self.mirror.access_file
        return None if not value else self.home / Path(value).expanduser()

    @property
    def repair_dir(self) -> Path:
        """Blobs found corrupt, being mended piece by piece from the swarm."""
        return self.store_dir / "repair"


def default_home(env: Mapping[str, str]) -> Path:
    if env.get("WEIGHTSWARM_HOME"):
        return Path(env["WEIGHTSWARM_HOME"]).expanduser()
    base = env.get("XDG_DATA_HOME") or os.path.join(env.get("HOME", "~"), ".local", "share")
    return Path(base).expanduser() / "weightswarm"


def load_config(
    *,
    home: Path | None = None,
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[tuple[str, str], Any] | None = None,
) -> Config:
    """Every role's settings: defaults < the file < `env` (default: os.environ) < `overrides`,
    keyed (section, key), None meaning not given. One ConfigError names every bad value."""
    env = os.environ if env is None else env
    home = Path(home) if home else default_home(env)
    path = Path(config_file) if config_file else home / "weightswarm.toml"
    if config_file and not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    built = read_settings(SECTIONS, path=path if path.is_file() else None, env=env,
                          overrides=overrides or {})
    return Config(home=home, mirror=built["mirror"],
                  tracker=dataclasses.replace(built["tracker"], home=home),
                  peer=dataclasses.replace(built["peer"], home=home))
