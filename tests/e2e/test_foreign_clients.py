"""Issue 14: every BitTorrent client completes from a mirror. Debian's aria2c 1.36,
Transmission 3.00 and rTorrent 0.9.8, clients nobody here wrote, and libtorrent with its own
defaults (qBittorrent's engine) download a large blob from a real mirror (`weightswarm serve`:
the mirror and its tracker in one process) over a veth link between two network namespaces
(tests/netlab.py; not loopback, which Transmission refuses as a peer address), each in three
modes:

- the torrent as the mirror serves it (its tracker and the mirror's web seed);
- peer wire only: the same torrent with its web seeds taken out, so every byte comes from the
  mirror's libtorrent session;
- the magnet link the mirror serves.

Each client runs as the command a user types, with DHT, local discovery and peer exchange off,
so the tracker (or the magnet itself) is its only way to the mirror; each client's bytes are
checked against the blob's sha256, and each download is bounded to a minute. The whole matrix
takes about two and a half minutes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from helpers import VENV_BIN, make_tiny_model, wait_for
from netlab import MIRROR_IP, Lab, LabUnavailable, lab
from peer.bencode import bdecode, bencode
from peer.torrent import info_hash

pytest.importorskip("libtorrent")
pytestmark = pytest.mark.slow

WS = str(VENV_BIN / "weightswarm")
MiB = 1024 * 1024
#: 16 pieces of 4 MiB: enough for a client's request pipeline to outgrow a short queue
BLOB_SIZE = 64 * MiB + 12345
REPO = "org/lab"
HTTP_PORT, TRACKER_PORT, BT_PORT = 8470, 6969, 6881
MIRROR_URL = f"http://{MIRROR_IP}:{HTTP_PORT}"
#: how long one client may take to download the blob, seconds
DEADLINE = 60


@dataclass
class LabMirror:
    lab: Lab
    sha256: str
    torrent: dict
    magnet: str
    log: Path

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def _start_mirror(net: Lab, home: Path) -> Path:
    """`weightswarm serve` (mirror and tracker) in the mirror's namespace; its log's path."""
    env = dict(os.environ,
               WEIGHTSWARM_HOME=str(home),
               WEIGHTSWARM_MIRROR_BT_LISTEN=f"{MIRROR_IP}:{BT_PORT}",
               WEIGHTSWARM_MIRROR_SCRUB_INTERVAL="0",
               # The tracker knows its mirror by its BitTorrent endpoint (BITTORRENT.md 2.7).
               WEIGHTSWARM_TRACKER_MIRRORS=f"{MIRROR_IP}:{BT_PORT}")
    log = home.parent / "mirror.log"
    with open(log, "wb") as out:
        net.popen(net.mirror_ns, [WS, "-v", "serve", "--host", MIRROR_IP, "--port",
                                  str(HTTP_PORT), "--tracker-port", str(TRACKER_PORT)],
                  env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return log


def _seeding(net: Lab, sha256: str) -> bool:
    try:
        body = json.loads(net.fetch(f"{MIRROR_URL}/api/weightswarm/torrents"))
    except OSError:
        return False
    return any(t["sha256"] == sha256 and t["state"] == "seeding" for t in body["torrents"])


def _complete_in_swarm(net: Lab, key: str) -> int:
    raw = bytes.fromhex(key)
    body = bdecode(net.fetch(f"http://{MIRROR_IP}:{TRACKER_PORT}/scrape?info_hash="
                             f"{quote(raw, safe='')}"))
    return body[b"files"].get(raw, {}).get(b"complete", 0)


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """A mirror in the lab's mirror namespace seeding one BLOB_SIZE blob, its tracker knowing
    it as complete."""
    for tool in ("ip", "curl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    root = tmp_path_factory.mktemp("lab")
    model = make_tiny_model(root / "model", big_size=BLOB_SIZE)
    sha256 = hashlib.sha256((model / "big.bin").read_bytes()).hexdigest()
    home = root / "home"
    imported = subprocess.run([WS, "--home", str(home), "mirror", "import", str(model),
                               "--repo", REPO, "--no-progress"], capture_output=True,
                              text=True, timeout=60)
    assert imported.returncode == 0, imported.stderr[-2000:]
    try:
        with lab() as net:
            log = _start_mirror(net, home)
            wait_for(lambda: _seeding(net, sha256), 30, "the mirror seeds the blob", 0.2)
            url = f"{MIRROR_URL}/api/weightswarm/torrents/{sha256}.torrent"
            torrent = bdecode(net.fetch(url))
            magnet = json.loads(net.fetch(f"{url}?format=magnet"))["magnet"]
            wait_for(lambda: _complete_in_swarm(net, info_hash(torrent[b"info"])) == 1, 15,
                     "the tracker lists the mirror as complete", 0.2)
            yield LabMirror(net, sha256, torrent, magnet, log)
    except LabUnavailable as e:
        pytest.skip(f"network namespaces are not permitted here (ip netns add: {e})")


# -- the clients ------------------------------------------------------------------------------


class Client:
    """One foreign client, run in the lab's client namespace into `out`."""

    name = ""
    #: the Debian command it needs, if any
    command = ""

    def __init__(self, net: Lab, out: Path):
        self.net = net
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.log = out.parent / f"{out.name}.log"

    def start(self, source: str) -> None:
        """Start downloading `source`: a .torrent file's path, or a magnet link."""
        raise NotImplementedError

    def done(self) -> bool:
        """Whether the bytes are all there: by default, the client has exited, and with 0."""
        code = self.process.poll()
        if code not in (None, 0):
            raise AssertionError(f"{self.name} exited {code}: {self.state()}")
        return code == 0

    def state(self) -> str:
        """What the client says of its progress, for a failure's message."""
        return self.log.read_text(errors="replace")[-1500:] if self.log.exists() else ""

    def popen(self, argv: list[str], **kwargs) -> subprocess.Popen:
        with open(self.log, "ab") as log:
            return self.net.popen(self.net.client_ns, argv, stdout=log,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kwargs)


class Aria2(Client):
    name = command = "aria2c"

    def start(self, source: str) -> None:
        self.process = self.popen([
            "aria2c", "--dir", str(self.out), "--seed-time=0", "--enable-dht=false",
            "--enable-dht6=false", "--bt-enable-lpd=false", "--enable-peer-exchange=false",
            "--listen-port=6991-6999", "--summary-interval=5", "--file-allocation=none",
            "--console-log-level=notice", "--bt-stop-timeout=0", source])


class Transmission(Client):
    """transmission-daemon in the foreground, driven with transmission-remote over its RPC
    port on the namespace's own loopback."""

    name = "transmission"
    command = "transmission-daemon"
    rpc = "127.0.0.1:9091"

    def start(self, source: str) -> None:
        config = self.out.parent / f"{self.out.name}-config"
        config.mkdir(exist_ok=True)
        (config / "settings.json").write_text(json.dumps({
            "dht-enabled": False, "lpd-enabled": False, "pex-enabled": False,
            "port-forwarding-enabled": False, "peer-port": 51413,
            "rpc-bind-address": "127.0.0.1", "rpc-port": 9091,
            "rpc-authentication-required": False, "rpc-whitelist-enabled": False,
            "download-dir": str(self.out), "incomplete-dir-enabled": False,
            "rename-partial-files": False, "start-added-torrents": True,
            "ratio-limit-enabled": False, "message-level": 2,
        }))
        self.process = self.popen(["transmission-daemon", "-f", "-g", str(config),
                                   "--log-info"])
        wait_for(lambda: self._remote("-l").returncode == 0, 10, "transmission's RPC answers",
                 0.2)
        added = self._remote("-a", source)
        assert added.returncode == 0, added.stdout + added.stderr

    def _remote(self, *args: str) -> subprocess.CompletedProcess:
        return self.net.run(self.net.client_ns, ["transmission-remote", self.rpc, *args],
                            capture_output=True, text=True, timeout=10)

    def done(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"transmission-daemon exited: {self.state()}")
        return "Percent Done: 100%" in self._remote("-t", "all", "-i").stdout

    def state(self) -> str:
        info = self._remote("-t", "all", "-i").stdout if self.process.poll() is None else ""
        return info + super().state()


class RTorrent(Client):
    """rtorrent as a daemon (no terminal): quits once the download is finished."""

    name = command = "rtorrent"

    def start(self, source: str) -> None:
        session = self.out.parent / f"{self.out.name}-session"
        session.mkdir(exist_ok=True)
        self.finished = self.out.parent / f"{self.out.name}.finished"
        rc = self.out.parent / f"{self.out.name}.rc"
        rc.write_text("\n".join([
            f"directory.default.set = {self.out}",
            f"session.path.set = {session}",
            "dht.mode.set = disable",
            "protocol.pex.set = no",
            "network.port_range.set = 6890-6899",
            "system.daemon.set = true",
            "method.set_key = event.download.finished, ws_finished, "
            f'"execute.nothrow = touch, {self.finished} ; system.shutdown.normal ="',
            f"log.open_file = main, {self.log}",
            "log.add_output = info, main",
            "",
        ]))
        self.process = self.popen(["rtorrent", "-n", "-o", f"import={rc}", source])

    def done(self) -> bool:
        if self.finished.exists():
            return True
        code = self.process.poll()
        if code is not None:
            raise AssertionError(f"rtorrent exited {code} before finishing: {self.state()}")
        return False


#: libtorrent with its defaults (µTP first, then TCP), as qBittorrent and Deluge run it, but
#: for the discovery a lab has no use for; it exits once the bytes are on disk
LIBTORRENT_CLIENT = """
import sys
import libtorrent as lt

source, out = sys.argv[1:]
ses = lt.session({"listen_interfaces": "0.0.0.0:6881", "enable_dht": False,
                  "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
                  "alert_mask": lt.alert_category.status | lt.alert_category.storage})
if source.startswith("magnet:"):
    params = lt.parse_magnet_uri(source)
else:
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(source)
params.save_path = out
handle = ses.add_torrent(params)
flushed = False
while not flushed:
    ses.wait_for_alert(1000)
    for alert in ses.pop_alerts():
        if isinstance(alert, lt.torrent_finished_alert):
            handle.flush_cache()
        flushed |= isinstance(alert, lt.cache_flushed_alert) and handle.status().is_seeding
    print(f"{handle.status().progress:.1%}", flush=True)
"""


class Libtorrent(Client):
    """LIBTORRENT_CLIENT, the engine of qBittorrent, in this interpreter."""

    name = "libtorrent"

    def start(self, source: str) -> None:
        self.process = self.popen([sys.executable, "-c", LIBTORRENT_CLIENT, source,
                                   str(self.out)])


CLIENTS = {c.name: c for c in (Aria2, Transmission, RTorrent, Libtorrent)}
MODES = ("torrent as served", "peer wire only", "magnet")
def _cases():
    for name in CLIENTS:
        for mode in MODES:
            yield pytest.param(name, mode, id=f"{name}-{mode.replace(' ', '-')}")


def _source(mirror: LabMirror, mode: str, folder: Path) -> str:
    if mode == "magnet":
        return mirror.magnet
    torrent = dict(mirror.torrent)
    if mode == "peer wire only":
        torrent.pop(b"url-list", None)
    path = folder / "blob.torrent"
    path.write_bytes(bencode(torrent))
    return str(path)


def _sha256(path: Path) -> str | None:
    if not path.exists():
        return None
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@pytest.mark.timeout(DEADLINE + 60)
@pytest.mark.parametrize(("name", "mode"), list(_cases()))
def test_a_foreign_client_downloads_the_blob_from_the_mirror(mirror, name, mode, tmp_path):
    kind = CLIENTS[name]
    if kind.command and shutil.which(kind.command) is None:
        pytest.skip(f"{kind.command} (Debian) is not installed")
    client = kind(mirror.lab, tmp_path / name)
    started = time.monotonic()
    try:
        client.start(_source(mirror, mode, tmp_path))
        deadline = started + DEADLINE
        while not client.done():
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} ({mode}) not done after {DEADLINE}s:\n"
                                     f"{client.state()}\n--- mirror:\n{mirror.log_tail()}")
            time.sleep(0.25)
        took = time.monotonic() - started
        got = _sha256(client.out / mirror.sha256)
        assert got == mirror.sha256, f"{name} ({mode}) wrote other bytes: {got}"
        print(f"{name} ({mode}): {took:.1f}s")
    finally:
        mirror.lab.kill_all(mirror.lab.client_ns)
