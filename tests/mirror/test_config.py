"""Every role's settings as `load_config` builds them: from defaults, the file, the environment
and flags in rising priority, into each role's frozen dataclass, every bad value reported at
once with where it came from."""

from __future__ import annotations

import ipaddress

import pytest

from mirror.config import MirrorConfig, ScheduledSync, UpstreamConfig, load_config
from peer import hubs
from peer.errors import ConfigError
from peer.settings import PeerConfig, SessionSettings
from tracker.config import TrackerConfig


def load(home, text=None, env=None, **overrides):
    if text is not None:
        home.mkdir(exist_ok=True)
        (home / "weightswarm.toml").write_text(text)
    return load_config(home=home, env=env or {},
                       overrides={tuple(k.split("__")): v for k, v in overrides.items()})


def test_every_role_from_defaults(tmp_path):
    config = load(tmp_path)
    assert isinstance(config.mirror, MirrorConfig)
    assert (config.mirror.host, config.mirror.port, config.mirror.public_url) == (
        "127.0.0.1", 8470, None)
    assert config.mirror.bittorrent == SessionSettings(
        listen="0.0.0.0:6881", dht=True, lsd=False, connections=500)
    assert config.mirror.scrub_interval == 7 * 86400 and config.mirror.syncs == ()
    assert config.tracker == TrackerConfig(), "the declared defaults are the dataclass's"
    assert config.peer == PeerConfig(
        home=tmp_path, serve_bt=SessionSettings(dht=True, lsd=True),
        pull_bt=SessionSettings(listen="0.0.0.0:0", dht=True, lsd=True))


def test_the_mirror_from_file_then_env_then_flags(tmp_path):
    text = ('[mirror]\nport = 9000\ntrackers = ["http://t/announce"]\negress_limit = 1000\n'
            'seed = false\nscrub_interval = "1d"\n')
    config = load(tmp_path, text)
    assert (config.mirror.port, config.mirror.trackers) == (9000, ("http://t/announce",))
    assert (config.mirror.egress_limit, config.mirror.bittorrent) == (1000, None)
    assert config.mirror.scrub_interval == 86400
    env = {"WEIGHTSWARM_MIRROR_PORT": "9100", "WEIGHTSWARM_MIRROR_SEED": "yes",
           "WEIGHTSWARM_MIRROR_BT_CONNECTIONS": "7"}
    config = load(tmp_path, env=env)
    assert config.mirror.port == 9100 and config.mirror.bittorrent.connections == 7
    assert config.mirror.trackers == ("http://t/announce",), "the file's, not overridden"
    config = load(tmp_path, env=env, mirror__port=0, mirror__bt_connections=None)
    assert config.mirror.port == 0 and config.mirror.bittorrent.connections == 7


def test_the_tracker_from_file_then_env_then_flags(tmp_path):
    hashes = ["ab" * 20, "CD" * 20]
    text = (f'[tracker]\ninterval = 100\nprivate_hashes = {hashes!r}\n'
            '[[tracker.sites]]\ncidr = "10.0.0.0/8"\nsite = "big"\n'
            '[[tracker.sites]]\ncidr = "10.1.0.0/16"\nsite = "small"\nregion = "eu"\n')
    config = load(tmp_path, text)
    assert (config.tracker.interval, config.tracker.peer_ttl) == (100, 500), "ttl derived"
    assert config.tracker.private_hashes == {b"\xab" * 20, b"\xcd" * 20}
    assert [(s.site, s.region) for s in config.tracker.sites] == [("small", "eu"), ("big", None)]
    assert config.tracker.sites[0].network == ipaddress.ip_network("10.1.0.0/16")
    config = load(tmp_path, env={"WEIGHTSWARM_TRACKER_INTERVAL": "60",
                                 "WEIGHTSWARM_TRACKER_MIRRORS": "1.2.3.4:6881,5.6.7.8:6881"})
    assert (config.tracker.interval, config.tracker.peer_ttl) == (60, 420)
    assert config.tracker.mirrors == {"1.2.3.4:6881", "5.6.7.8:6881"}
    assert load(tmp_path, tracker__port=0, tracker__host="0.0.0.0").tracker.port == 0


def test_the_peer_from_file_then_env_then_flags(tmp_path):
    text = ('[peer]\nmirrors = ["http://m1/", "http://m2"]\nbt_listen = "127.0.0.1:7000"\n'
            'pull_listen = "127.0.0.1:0"\nbt_dht = false\nweb_seed_grace = 3\n')
    peer = load(tmp_path, text).peer
    assert peer.mirrors == ("http://m1", "http://m2") and peer.web_seed_grace == 3.0
    assert peer.serve_bt.listen == "127.0.0.1:7000" and peer.pull_bt.listen == "127.0.0.1:0"
    assert peer.serve_bt.dht is peer.pull_bt.dht is False, "the pull shares the daemon's bt_*"
    peer = load(tmp_path, env={"WEIGHTSWARM_PEER_BT_DHT": "1"}, peer__port=0).peer
    assert peer.pull_bt.dht is True and peer.port == 0 and peer.home == tmp_path


def test_an_upstream_is_typed_for_every_hub_with_the_hubs_usual_token(tmp_path):
    upstreams = load(tmp_path).mirror.upstreams
    assert list(upstreams) == list(hubs.HUBS)
    assert upstreams[hubs.HUGGINGFACE] == UpstreamConfig("https://huggingface.co")
    assert upstreams[hubs.MODELSCOPE] == UpstreamConfig("https://modelscope.cn")
    assert upstreams[hubs.KAGGLE] == UpstreamConfig("https://api.kaggle.com")
    env = {"HF_TOKEN": "hf", "MODELSCOPE_API_TOKEN": "ms", "KAGGLE_USERNAME": "u",
           "KAGGLE_KEY": "k"}
    upstreams = load(tmp_path, env=env).mirror.upstreams
    assert [u.token for u in upstreams.values()] == ["hf", "ms", "u:k"]
    env.update(KAGGLE_API_TOKEN="bearer", WEIGHTSWARM_MIRROR_UPSTREAMS_MODELSCOPE_TOKEN="own")
    upstreams = load(tmp_path, env=env).mirror.upstreams
    assert [u.token for u in upstreams.values()] == ["hf", "own", "bearer"]
    text = ('[mirror.upstreams.kaggle]\nendpoint = "http://k.local/"\nrequests_per_5min = 9\n'
            'bandwidth = 1e6\ntoken = "file"\n')
    kaggle = load(tmp_path, text, env=env).mirror.upstreams[hubs.KAGGLE]
    assert kaggle == UpstreamConfig("http://k.local", "file", 9, 1e6)
    with pytest.raises(TypeError):
        upstreams["gitlab"] = kaggle  # read-only, like the rest of the config


def test_scheduled_syncs_are_typed(tmp_path):
    text = ('[[mirror.sync]]\nspec = "hf:a/b"\ninclude = "*.json"\n\n'
            '[[mirror.sync]]\nspec = "hf:c/*"\nexclude = ["*.md", "*.bin"]\ninterval = "90m"\n')
    assert load(tmp_path, text).mirror.syncs == (
        ScheduledSync("hf:a/b", include=("*.json",), interval=6 * 3600),
        ScheduledSync("hf:c/*", exclude=("*.md", "*.bin"), interval=5400),
    )


def test_three_bad_values_in_a_file_make_one_error_naming_each_line(tmp_path):
    text = ('[mirror]\n'                           # 1
            'port = 70000\n'                       # 2
            'archive = true\n'                     # 3
            '\n'                                   # 4
            '[mirror.upstreams.modelscope]\n'      # 5
            'endpoint = "ftp://ms"\n'              # 6
            '\n'                                   # 7
            '[tracker]\n'                          # 8
            'private_hashes = ["nothex"]\n')       # 9
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    path = tmp_path / "weightswarm.toml"
    assert str(caught.value) == (
        "3 bad settings:\n"
        f"  {path} line 2: mirror.port must be 0-65535, got 70000\n"
        f"  {path} line 6: mirror.upstreams.modelscope.endpoint must start with http:// or "
        "https://, got 'ftp://ms'\n"
        f"  {path} line 9: tracker.private_hashes must be info-hashes of 40 hex characters, "
        "got 'nothex'")


def test_bad_scheduled_syncs_and_sites_are_reported_with_their_lines(tmp_path):
    text = ('[[mirror.sync]]\n'                    # 1
            'spec = "hf:a/b"\n'                    # 2
            'interval = "5s"\n'                    # 3
            '[[mirror.sync]]\n'                    # 4
            'include = 3\n'                        # 5
            '[[tracker.sites]]\n'                  # 6
            'cidr = "300.0.0.0/8"\n'               # 7
            'site = "x"\n')                        # 8
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    lines = [p.split(": ", 1)[0].rsplit(" ", 1)[-1] for p in caught.value.problems]
    assert lines == ["3", "4", "5", "7"], caught.value.problems
    assert "mirror.sync needs spec" in caught.value.problems[1]
    assert "mirror.sync.include must be a glob or a list of globs" in caught.value.problems[2]


def test_a_bad_value_from_the_environment_names_the_variable(tmp_path):
    env = {"WEIGHTSWARM_MIRROR_EGRESS_LIMIT": "-5", "WEIGHTSWARM_PEER_PULL_LISTEN": ":0"}
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, env=env)
    assert caught.value.problems == (
        "WEIGHTSWARM_MIRROR_EGRESS_LIMIT: mirror.egress_limit must be a positive number of "
        "bytes/s, got -5",
        "WEIGHTSWARM_PEER_PULL_LISTEN: peer.pull_listen must be host:port, got ':0'")


def test_a_bad_flag_is_from_the_command_line(tmp_path):
    with pytest.raises(ConfigError, match=r"^command line: tracker.port must be 0-65535"):
        load(tmp_path, tracker__port=99999)


def test_unknown_settings_are_warned_about_not_fatal(tmp_path, caplog):
    config = load(tmp_path, '[mirror]\nprot = 1\n[mirror.upstreams.gitlab]\nendpoint = "x"\n')
    assert config.mirror.port == 8470
    warned = [r.getMessage() for r in caplog.records]
    assert any("line 2: unknown setting mirror.prot ignored" in w for w in warned), warned
    assert any("unknown setting mirror.upstreams.gitlab.endpoint" in w for w in warned), warned


def test_an_empty_value_leaves_a_setting_without_default_unset(tmp_path):
    config = load(tmp_path, '[mirror]\npublic_url = ""\n',
                  env={"WEIGHTSWARM_PEER_CACHE": ""})
    assert config.mirror.public_url is None and config.peer.cache is None
