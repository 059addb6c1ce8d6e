"""A disk that fills up is an expected condition (issue 14): each command says so in one line
(where, and how much is free), the failure is recorded with its reason, nothing partial is
published, and a later run resumes. Each test mounts a small tmpfs of its own (root only;
skipped with the reason elsewhere)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fakehub import FakeHub, tiny_repo_files

from helpers import VENV_BIN, make_tiny_model, tmpfs, wait_for

MiB = 1024 * 1024


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of 40 MiB mounted at tmp_path/disk (tmpfs refuses O_DIRECT: the store writes
    through the page cache there, as on any such file system)."""
    with tmpfs(tmp_path / "disk", "40m") as disk:
        yield disk


def fill(disk: Path, name: str = "filler") -> Path:
    """Take every byte the disk has left (unbuffered writes, smaller and smaller)."""
    filler = disk / name
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for size in (MiB, 64 * 1024, 4096, 512, 1):
            block = bytes(size)
            while True:
                try:
                    if os.write(fd, block) < size:
                        break
                except OSError:
                    break
    finally:
        os.close(fd)
    return filler


def ws(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "weightswarm"), "--home", str(home), *args],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=180)


def one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr[-4000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-2000:]
    return errors[0]


def _largest_partial(folder) -> int:
    """The largest partial file's size; one that is renamed into the store while it is
    looked at (a small file finishing) counts as none."""
    sizes = [0]
    for p in folder.glob("*.part") if folder.exists() else ():
        try:
            sizes.append(p.stat().st_size)
        except FileNotFoundError:
            pass
    return max(sizes)


def test_a_disk_that_fills_during_a_sync_fails_it_in_one_line_and_the_next_sync_resumes(
        small_disk):
    home = small_disk / "home"
    files = tiny_repo_files(seed=3, shards=2, shard_size=8 * MiB)
    total = sum(len(b) for b in files.values())
    with FakeHub(send_rate=4 * MiB) as hub:  # slow enough to fill the disk mid-transfer
        hub.add_repo("org/big", files)
        env = {"WEIGHTSWARM_MIRROR_UPSTREAMS_HUGGINGFACE_ENDPOINT": hub.url,
               "WEIGHTSWARM_MIRROR_MIN_FREE": "0"}
        sync = subprocess.Popen(
            [str(VENV_BIN / "weightswarm"), "--home", str(home), "mirror", "sync", "hf:org/big",
             "--no-progress"], env={**os.environ, **env}, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        partial = home / "store" / "partial"
        wait_for(lambda: _largest_partial(partial) > MiB, 60, "the sync writing its first MiB")
        filler = fill(small_disk)
        out, err = sync.communicate(timeout=120)
        line = one_error_line(subprocess.CompletedProcess(sync.args, sync.returncode, out, err))
        assert f"space in {home / 'store'}" in line and "bytes free" in line, line

        # The reason is recorded (the catalog gave up its reserve for it), nothing published.
        runs = json.loads(ws(home, "mirror", "status", "--json").stdout)
        assert runs[0]["status"] == "failed" and "bytes free" in runs[0]["error"], runs[0]
        assert json.loads(ws(home, "mirror", "ls", "--json").stdout) == [], "nothing published"
        kept = sum(p.stat().st_size for p in partial.glob("*.part"))
        assert kept > MiB, "what arrived is kept for the next run"

        # Space again: the next sync takes up where this one stopped.
        filler.unlink()
        hub.reset_counts()
        done = ws(home, "mirror", "sync", "hf:org/big", "--no-progress", **env)
        assert done.returncode == 0, done.stderr[-2000:]
        assert hub.bytes_served <= total - kept + 2 * MiB, \
            f"resumed: {hub.bytes_served} bytes fetched again, {kept} were kept"
        assert (home / "catalog.sqlite.reserve").exists(), "the reserve is back"


def test_serve_on_a_full_disk_says_so_in_one_line(small_disk):
    fill(small_disk)
    done = ws(small_disk / "home", "mirror", "serve", "--port", "0")
    line = one_error_line(done)
    assert "no space left in" in line, line


def test_an_import_that_cannot_fit_is_refused_up_front_and_leaves_nothing(small_disk, tmp_path):
    model = make_tiny_model(tmp_path / "model", big_size=48 * MiB)  # more than the disk
    home = small_disk / "home"
    line = one_error_line(ws(home, "mirror", "import", str(model), "--repo", "org/big"))
    assert "not enough space in" in line, line
    assert json.loads(ws(home, "mirror", "ls", "--json").stdout) == []
    leftovers = [p for p in (home / "store").rglob("*") if p.is_file()]
    assert leftovers == [], leftovers


def test_a_pull_into_a_cache_that_cannot_hold_it_is_refused_before_a_byte(small_disk, tmp_path):
    """The pull's check up front, on a real small disk (the cache), with a real mirror."""
    from helpers import make_config, start_mirror
    from mirror.catalog import Catalog
    from mirror.importer import Importer
    from peer.store import BlobStore

    config = make_config(tmp_path / "mirror-home")
    catalog = Catalog(config.catalog_path)
    Importer(catalog, BlobStore(config.store_dir)).import_path(
        make_tiny_model(tmp_path / "model", big_size=48 * MiB), repo_id="org/big")
    catalog.close()
    mirror = start_mirror(config)
    try:
        cache = small_disk / "hf-cache"
        done = ws(tmp_path / "peer-home", "pull", "org/big", "--mirror", mirror.url,
                  HF_HUB_CACHE=str(cache))
    finally:
        mirror.stop()
    line = one_error_line(done)
    assert "not enough space in" in line, line
    assert not any(p.is_file() for p in cache.rglob("*")) if cache.exists() else True


def test_a_disk_that_fills_during_a_pull_fails_it_in_one_line_and_the_next_pull_resumes(
        small_disk, tmp_path):
    """The space check passed, then something else took the disk while the bytes came over
    BitTorrent (a mirror capped at 4 MiB/s): libtorrent's write fails, and the pull says so in
    one line instead of waiting for ever; nothing is published, and once there is room the
    next pull keeps the pieces it had and completes."""
    from helpers import make_config, start_mirror
    from mirror.catalog import Catalog
    from mirror.importer import Importer
    from peer.store import BlobStore

    config = make_config(tmp_path / "mirror-home", egress_limit=4 * MiB)
    catalog = Catalog(config.catalog_path)
    Importer(catalog, BlobStore(config.store_dir)).import_path(
        make_tiny_model(tmp_path / "model", big_size=24 * MiB), repo_id="org/big")
    catalog.close()
    mirror = start_mirror(config)
    cache = small_disk / "hf-cache"
    env = {**os.environ, "HF_HUB_CACHE": str(cache)}
    argv = [str(VENV_BIN / "weightswarm"), "--home", str(tmp_path / "peer-home"), "pull",
            "org/big", "--mirror", mirror.url, "--no-progress"]
    try:
        pulling = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: any(p.stat().st_size > 2 * MiB for p in cache.rglob("*")
                                 if p.is_file()), 60, "the pull's first bytes", 0.1)
            filler = fill(small_disk)
            out, err = pulling.communicate(timeout=120)
        finally:
            pulling.kill()
        line = one_error_line(subprocess.CompletedProcess(argv, pulling.returncode, out, err))
        assert "no space left in" in line and str(cache) in line and "big.bin" in line, line
        assert not list(cache.glob("models--org--big/snapshots/*/big.bin")), "nothing published"
        filler.unlink()
        again = ws(tmp_path / "peer-home", "pull", "org/big", "--mirror", mirror.url,
                   "--no-progress", HF_HUB_CACHE=str(cache))
        assert again.returncode == 0, again.stderr[-3000:]
    finally:
        mirror.stop()
    assert len(list(cache.glob("models--org--big/snapshots/*/big.bin"))) == 1


def test_the_free_space_figure_names_the_right_disk(small_disk):
    from peer.errors import out_of_space

    error = out_of_space(OSError(28, "No space left on device"), small_disk / "no" / "such")
    assert error is not None and error.free == shutil.disk_usage(small_disk).free
    assert out_of_space(OSError(2, "No such file"), small_disk) is None


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
