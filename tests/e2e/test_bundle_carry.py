"""Bundles across processes (issue 15): `kill -9` in the middle of an import, then the same
command again; and `weightswarm pull` from an air-gapped mirror that got its repo from a
bundle, believing the exporting mirror's key, while that mirror seeds the large blob."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers import VENV_BIN, fetch, make_config, start_mirror, wait_for
from mirror.bundle.export import Exporter
from mirror.bundle.select import choose
from mirror.catalog import Catalog
from mirror.importer import Importer
from peer.keys import load_or_create, public_key_text
from peer.store import BlobStore

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
HUGE = 192 * MiB


def connected_with(tmp_path: Path, repos: dict[str, dict[str, int]], *, export: bool = True):
    """A connected mirror holding `repos` (repo id → file → size; zeros for big ones,
    sparse: cheap to make, real bytes to copy and hash) and its bundle of all of them."""
    config = make_config(tmp_path / "connected")
    catalog, store = Catalog(config.catalog_path), BlobStore(config.store_dir)
    importer = Importer(catalog, store)
    for repo_id, files in repos.items():
        folder = tmp_path / "sources" / repo_id
        folder.mkdir(parents=True)
        for name, size in files.items():
            with open(folder / name, "wb") as f:
                if size > MiB:
                    f.truncate(size)
                else:
                    f.write(os.urandom(size))
        importer.import_path(folder, repo_id=repo_id)
    key = load_or_create(config.key_path)
    bundle = tmp_path / "bundle"
    if export:
        Exporter(catalog, store, key).export(choose(catalog, [], everything=True), bundle,
                                             volume_size=4 * 1024 * MiB)
    catalog.close()
    return public_key_text(key), bundle


class Watcher(threading.Thread):
    """Reads the catalog as a client would, over and over: every snapshot it can see must
    have every file's blob whole in the store."""

    def __init__(self, home: Path):
        super().__init__(daemon=True)
        self.home = home
        self.stop = threading.Event()
        self.seen: set[str] = set()
        self.violations: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            path = self.home / "catalog.sqlite"
            if path.exists():
                self.look(path)
            time.sleep(0.002)

    def look(self, path: Path) -> None:
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
            rows = conn.execute("SELECT r.repo_id, f.path, f.size, f.sha256 FROM files f JOIN "
                                "snapshots s ON s.id = f.snapshot JOIN repos r ON r.id = s.repo"
                                ).fetchall()
            conn.close()
        except sqlite3.Error:
            return  # not made yet
        blob_dir = self.home / "store" / "blobs" / "sha256"
        for repo_id, rel, size, sha256 in rows:
            self.seen.add(repo_id)
            blob = blob_dir / sha256[:2] / sha256[2:4] / sha256
            if not blob.is_file() or blob.stat().st_size != size:
                self.violations.append(f"{repo_id}: {rel} visible before its blob")


def import_command(home: Path, bundle: Path, key: str) -> list[str]:
    return [sys.executable, "-m", "mirror.cli", "--home", str(home), "mirror", "import-bundle",
            str(bundle), "--trust", key, "--no-progress"]


def test_kill_9_during_an_import_then_the_same_command_finishes_without_redoing_work(tmp_path):
    key, bundle = connected_with(tmp_path, {
        "org/small-a": {"config.json": 300, "weights.bin": 200_000},
        "org/small-b": {"config.json": 310, "weights.bin": 210_000},
        "zz/huge": {"README.md": 100, "huge.bin": HUGE},
    })
    home = tmp_path / "gapped"
    watcher = Watcher(home)
    watcher.start()
    tmp_dir = home / "store" / "tmp"
    kill_once_writing(import_command(home, bundle, key), tmp_dir, "*.part")
    assert "zz/huge" not in watcher.seen, "the huge repo was visible before its blob was in"

    done = subprocess.run(import_command(home, bundle, key), capture_output=True, text=True,
                          timeout=120)
    watcher.stop.set()
    watcher.join(10)
    assert done.returncode == 0, done.stderr
    summary = done.stdout.strip().splitlines()[-1]
    assert summary.startswith("1 snapshots published (2 already here)"), summary
    # The small repos and the huge one's README were in before the kill: not taken again.
    assert f"{HUGE} bytes in 1 blobs, 5 blobs skipped as already present" in summary, summary
    assert watcher.violations == [], watcher.violations[:3]
    assert list(tmp_dir.glob("*.part")) == [], "the killed writer's temp file is gone"


def kill_once_writing(command: list[str], folder: Path, pattern: str) -> None:
    """Run `command`, and kill -9 it once a file matching `pattern` under `folder` passes
    32 MiB (the large blob is being written)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        found = list(folder.rglob(pattern)) if folder.exists() else []
        if any(p.stat().st_size > 32 * MiB for p in found if p.exists()):
            break
        time.sleep(0.002)
    assert process.poll() is None, f"{command[4:6]} finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)


def test_kill_9_during_an_export_leaves_no_bundle_and_the_same_command_finishes_it(tmp_path):
    key, bundle = connected_with(tmp_path, {
        "org/small": {"config.json": 300, "weights.bin": 200_000},
        "zz/huge": {"huge.bin": HUGE},
    }, export=False)
    export = [sys.executable, "-m", "mirror.cli", "--home", str(tmp_path / "connected"),
              "mirror", "export", "--all", "--to", str(bundle), "--no-progress"]
    kill_once_writing(export, bundle, "*.wstmp")
    assert not list(bundle.rglob("index.msgpack")), "a killed export left an index"
    verify = subprocess.run(export[:6] + ["verify-bundle", str(bundle), "--no-progress"],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 1 and "cut off" in verify.stderr

    done = subprocess.run(export, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "2 already written" in done.stdout, done.stdout
    assert not list(bundle.rglob("*.wstmp")), "the killed writer's temp file is gone"
    imported = subprocess.run(import_command(tmp_path / "gapped", bundle, key),
                              capture_output=True, text=True, timeout=120)
    assert imported.returncode == 0 and "2 snapshots published" in imported.stdout, \
        imported.stderr


def test_pull_from_an_air_gapped_mirror_believes_the_exporting_mirrors_key_and_it_seeds(
        tmp_path):
    key, bundle = connected_with(tmp_path, {
        "org/delta": {"config.json": 200, "model.bin": 5 * MiB + 123},
    })
    config = make_config(tmp_path / "gapped")
    imported = subprocess.run(import_command(config.home, bundle, key), capture_output=True,
                              text=True, timeout=120)
    assert imported.returncode == 0, imported.stderr
    running = start_mirror(config)
    try:
        big = (tmp_path / "sources" / "org/delta" / "model.bin").read_bytes()

        def seeding():
            body = json.loads(fetch(f"{running.url}/api/weightswarm/torrents"))
            return [t for t in body["torrents"] if t["state"] == "seeding"]

        assert len(wait_for(seeding, 30, "the imported large blob seeded")) == 1
        peer_home = tmp_path / "peer"
        env = dict(os.environ, WEIGHTSWARM_HOME=str(peer_home),
                   HF_HUB_CACHE=str(tmp_path / "peer-cache"),
                   WEIGHTSWARM_PEER_TRUSTED_KEYS=key)
        pulled = subprocess.run([str(VENV_BIN / "weightswarm"), "pull", "org/delta",
                                 "--mirror", running.url, "--json", "--no-progress"],
                                env=env, capture_output=True, text=True, timeout=90)
        assert pulled.returncode == 0, pulled.stderr[-3000:]
        snapshot = next((tmp_path / "peer-cache").glob("models--org--delta/snapshots/*"))
        assert (snapshot / "model.bin").read_bytes() == big

        untrusting = dict(env, WEIGHTSWARM_HOME=str(tmp_path / "peer2"),
                          WEIGHTSWARM_PEER_TRUSTED_KEYS="")
        refused = subprocess.run([str(VENV_BIN / "weightswarm"), "pull", "org/delta",
                                  "--mirror", running.url, "--no-progress"], env=untrusting,
                                 capture_output=True, text=True, timeout=90)
        assert refused.returncode != 0 and "does not trust" in refused.stderr
    finally:
        running.stop()
