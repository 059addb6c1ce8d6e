"""Silent corruption: a byte flipped in a stored blob is found by the blake3 scrub (the command
or the periodic one), the blob stops being seeded and served at once, and the mirror mends it
from another mirror's swarm, fetching only the wrong piece, byte-identical."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from helpers import VENV_BIN, flip_a_byte, make_config, start_mirror, wait_for
from mirror.app import SEEDER
from peer.hashing import hash_file
from peer.store import BlobStore

pytest.importorskip("libtorrent")
pytestmark = pytest.mark.slow

MiB = 1024 * 1024
#: five 4 MiB pieces: a repair that fetched the whole blob would show
BIG = 20 * MiB + 12345


def ws(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "weightswarm"), "--home", str(home), *args],
                          capture_output=True, text=True, timeout=120)


def model(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / ".gitattributes").write_text("*.bin filter=lfs diff=lfs merge=lfs -text\n")
    (root / "config.json").write_text('{"model_type": "bert"}')
    (root / "weights.bin").write_bytes(os.urandom(BIG))
    return root


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def torrents(mirror) -> dict[str, dict]:
    with urllib.request.urlopen(f"{mirror.url}/api/weightswarm/torrents", timeout=10) as r:
        return {t["sha256"]: t for t in json.load(r)["torrents"]}




def test_a_flipped_byte_is_found_taken_out_of_service_and_mended_from_another_mirror(
        tracker, tmp_path):
    src = model(tmp_path / "model")
    original = (src / "weights.bin").read_bytes()
    homes = [tmp_path / "a", tmp_path / "b"]
    for home in homes:
        assert ws(home, "mirror", "import", str(src), "--repo", "org/m").returncode == 0
    trackers = [f"{tracker.url}/announce"]
    a = start_mirror(make_config(homes[0], trackers=trackers, scrub_interval="0"))
    b = None
    try:
        sha256 = wait_for(lambda: next(iter(torrents(a)), None), 30, "mirror a seeds the blob")
        blob_url = f"{a.url}/blobs/sha256/{sha256}"
        resolve_url = f"{a.url}/org/m/resolve/main/weights.bin"
        assert get(blob_url) == (200, original)
        listed = ws(homes[0], "mirror", "torrents", "--url", a.url)
        assert listed.returncode == 0, listed.stderr
        info_hash = torrents(a)[sha256]["info_hash"]
        assert f"{info_hash}  {sha256[:16]}  seeding" in listed.stdout
        assert "1 torrents, BitTorrent port" in listed.stdout

        flip_a_byte(BlobStore(homes[0] / "store").path_for(sha256), 9 * MiB + 7)
        scrubbed = ws(homes[0], "mirror", "scrub")
        assert scrubbed.returncode == 1, scrubbed.stderr
        assert f"CORRUPT {sha256}" in scrubbed.stdout

        # Out of service at once: not seeded, not served by either route.
        wait_for(lambda: torrents(a)[sha256]["state"] == "repairing", 30, "a stops seeding it")
        assert get(blob_url)[0] == 503
        assert get(resolve_url)[0] == 503
        # The command does not mark it twice, and verify sees it gone from the store.
        again = ws(homes[0], "mirror", "scrub")
        assert again.returncode == 0 and "1 already under repair" in again.stdout

        # A second mirror holding the same bytes joins the swarm: a mends from it.
        b = start_mirror(make_config(homes[1], trackers=trackers, scrub_interval="0"))
        wait_for(lambda: torrents(a).get(sha256, {}).get("state") == "seeding", 60,
                 "a repaired the blob from b's swarm")
        assert get(blob_url) == (200, original)
        assert get(resolve_url) == (200, original)
        path = BlobStore(homes[0] / "store").path_for(sha256)
        assert hash_file(path, lfs=True).sha256 == sha256
        assert oct(path.stat().st_mode & 0o777) == "0o444"
        assert not (homes[0] / "store" / "repair" / sha256).exists()

        seeder = a.app[SEEDER]
        counters = asyncio.run_coroutine_threadsafe(seeder.session.stats(), a.loop).result(10)
        # Only the bad piece came back over the wire: one 4 MiB piece, not 20 MiB.
        assert 0 < counters["net.recv_payload_bytes"] <= 2 * 4 * MiB
        assert seeder.repaired == [sha256]
        assert "corrupt_blobs 0.0" in get(f"{a.url}/metrics")[1].decode()
    finally:
        a.stop()
        if b is not None:
            b.stop()


def test_the_periodic_scrub_takes_a_corrupt_blob_out_of_service_and_keeps_it_out(tmp_path):
    """With nowhere to mend it from, the blob stays out of service, across a restart."""
    src = model(tmp_path / "model")
    home = tmp_path / "a"
    assert ws(home, "mirror", "import", str(src), "--repo", "org/m").returncode == 0
    a = start_mirror(make_config(home, scrub_interval="1"))
    try:
        sha256 = wait_for(lambda: next(iter(torrents(a)), None), 30, "the mirror seeds the blob")
        flip_a_byte(BlobStore(home / "store").path_for(sha256), 123)
        wait_for(lambda: torrents(a)[sha256]["state"] == "repairing", 30, "the scrub finds it")
        assert get(f"{a.url}/blobs/sha256/{sha256}")[0] == 503
        metrics = get(f"{a.url}/metrics")[1].decode()
        assert "weightswarm_mirror_corrupt_blobs 1.0" in metrics
        assert "weightswarm_mirror_corrupt_found_total 1.0" in metrics
    finally:
        a.stop()
    listed = ws(home, "mirror", "torrents", "--url", "http://127.0.0.1:9", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {t["sha256"]: t for t in json.loads(listed.stdout)["torrents"]}
    assert rows[sha256]["state"] == "corrupt"
    a = start_mirror(make_config(home, scrub_interval="0"))
    try:
        assert wait_for(lambda: torrents(a).get(sha256), 30, "listed after a restart")["state"] == \
            "repairing"
        assert get(f"{a.url}/blobs/sha256/{sha256}")[0] == 503
    finally:
        a.stop()


def test_with_no_peer_a_corrupt_blob_comes_again_from_the_upstream_a_sync_brought_it_from(
        tmp_path):
    src = model(tmp_path / "model")
    (src / "notes.txt").write_text("a small file: no torrent, mended from upstream only\n")
    original = (src / "weights.bin").read_bytes()
    home = tmp_path / "a"
    synced = ws(home, "mirror", "sync", f"local:{src}#org/m")
    assert synced.returncode == 0, synced.stderr
    a = start_mirror(make_config(home, scrub_interval="0"))
    try:
        seeder = a.app[SEEDER]
        seeder.upstream_after = 0.5  # no peer will come: ask the upstream soon
        sha256 = wait_for(lambda: next(iter(torrents(a)), None), 30, "the mirror seeds the blob")
        store = BlobStore(home / "store")
        flip_a_byte(store.path_for(sha256), 5 * MiB)
        notes = b"a small file: no torrent, mended from upstream only\n"
        small = hashlib.sha256(notes).hexdigest()
        flip_a_byte(store.path_for(small), 0)
        found = asyncio.run_coroutine_threadsafe(seeder.scrub_now(), a.loop).result(30)
        assert {f.sha256 for f in found} == {sha256, small}
        wait_for(lambda: sorted(seeder.repaired) == sorted([sha256, small]), 30,
                 "both blobs fetched again from the upstream")
        assert get(f"{a.url}/org/m/resolve/main/weights.bin") == (200, original)
        assert get(f"{a.url}/org/m/resolve/main/notes.txt") == (200, notes)
        wait_for(lambda: torrents(a).get(sha256, {}).get("state") == "seeding", 30,
                 "seeded again")
        assert not list((home / "store" / "repair").iterdir())
    finally:
        a.stop()
