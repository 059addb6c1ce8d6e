"""A mirror seeds its large blobs over BitTorrent (mirror/seeding.py), and clients nobody here
wrote download them: a plain libtorrent session through our tracker or from the web seed alone,
and aria2c. Two mirrors holding the same bytes land in one swarm, and a mirror restarted with
hundreds of blobs seeds them all again without hashing a byte."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote_from_bytes

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import (
    aria2c_download,
    fetch,
    make_config,
    make_tiny_model,
    plain_session,
    start_mirror,
    start_tracker,
    wait_for,
)
from mirror import app as mirror_app
from mirror.catalog import Catalog
from mirror.importer import Importer
from peer.hashing import hash_file
from peer.store import BlobStore
from tracker.config import TrackerConfig

lt = pytest.importorskip("libtorrent")

pytestmark = pytest.mark.slow

REPO = "tests/seeded"


# -- helpers ----------------------------------------------------------------------------------






def import_folder(home: Path, folder: Path, repo: str = REPO) -> None:
    """`weightswarm mirror import FOLDER --repo REPO` into `home`, in this process."""
    config = make_config(home)
    catalog = Catalog(config.catalog_path)
    try:
        Importer(catalog, BlobStore(config.store_dir)).import_path(folder, repo_id=repo)
    finally:
        catalog.close()


def big_blob(folder: Path) -> tuple[str, bytes]:
    """sha256 and bytes of make_tiny_model's 5 MiB `big.bin`."""
    path = folder / "big.bin"
    return hash_file(path, lfs=True).sha256, path.read_bytes()


def seeded(mirror) -> dict[str, str]:
    """sha256 → info-hash, as the mirror's /api/weightswarm/torrents lists them."""
    body = json.loads(fetch(f"{mirror.url}/api/weightswarm/torrents"))
    return {t["sha256"]: t["info_hash"] for t in body["torrents"] if t["state"] == "seeding"}


def on_loop(mirror, coro_fn: Callable, *args):
    """`await coro_fn(*args)` on the mirror's loop, where its seeder and session live."""
    return asyncio.run_coroutine_threadsafe(coro_fn(*args), mirror.loop).result(30)


def seeder_of(mirror):
    return mirror.app[mirror_app.SEEDER]


def egress(mirror) -> dict[str, float]:
    """The mirror's `weightswarm_mirror_egress_bytes_total` by `via`."""
    text = fetch(f"{mirror.url}/metrics").decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "weightswarm_mirror_egress_bytes_total":
                out[sample.labels["via"]] = sample.value
    return out


def scrape(tracker, info_hash: str) -> dict:
    body = lt.bdecode(fetch(f"{tracker.url}/scrape?info_hash="
                            f"{quote_from_bytes(bytes.fromhex(info_hash))}"))
    return body[b"files"].get(bytes.fromhex(info_hash), {})


def mirror_torrent(mirror, sha256: str) -> dict:
    """The mirror's .torrent for a blob, decoded by libtorrent (keys are bytes)."""
    return lt.bdecode(fetch(f"{mirror.url}/api/weightswarm/torrents/{sha256}.torrent"))


def leech(torrent: dict, save_path: Path, timeout: float = 30) -> None:
    """Download `torrent` into `save_path` with a fresh session; return once the bytes are on
    disk (finished, then flushed: BITTORRENT.md, "Finishing a download")."""
    save_path.mkdir(parents=True, exist_ok=True)
    ses = plain_session(alert_mask=lt.alert_category.status | lt.alert_category.error | lt.alert_category.storage)
    try:
        params = lt.add_torrent_params()
        params.ti = lt.torrent_info(torrent)
        params.save_path = str(save_path)
        params.flags &= ~lt.torrent_flags.auto_managed
        params.flags &= ~lt.torrent_flags.paused
        handle = ses.add_torrent(params)
        deadline = time.monotonic() + timeout
        while not handle.status().is_seeding:
            if time.monotonic() > deadline:
                s = handle.status()
                raise AssertionError(f"leecher not complete after {timeout}s: "
                                     f"{s.progress:.0%}, {s.num_peers} peers, "
                                     f"{s.num_seeds} seeds, error {s.errc.message()!r}")
            ses.wait_for_alert(200)
            ses.pop_alerts()
        handle.flush_cache()
        while True:
            if any(isinstance(a, lt.cache_flushed_alert) for a in ses.pop_alerts()):
                return
            if time.monotonic() > deadline:
                raise AssertionError("leecher's cache never flushed")
            ses.wait_for_alert(200)
    finally:
        del ses  # blocks for stop_tracker_timeout (1 s) at most




@pytest.fixture
def model(tmp_path) -> Path:
    return make_tiny_model(tmp_path / "tiny")


def seeding_mirror(home: Path, model: Path, trackers: list[str], serve):
    """A mirror that imported `model` and seeds its big blob; (mirror, sha256, bytes)."""
    import_folder(home, model)
    mirror = serve(make_config(home, trackers=trackers))
    sha256, data = big_blob(model)
    wait_for(lambda: sha256 in seeded(mirror), 10, "mirror seeds the big blob")
    return mirror, sha256, data


# -- tests ------------------------------------------------------------------------------------


def test_two_mirrors_importing_the_same_bytes_join_one_swarm(tracker, model, tmp_path, serve):
    announce = [f"{tracker.url}/announce"]
    sha256, _ = big_blob(model)
    mirrors = []
    for name in ("a", "b"):  # separate homes, separate imports, same folder
        import_folder(tmp_path / name, model)
        mirrors.append(serve(make_config(tmp_path / name, trackers=announce)))
    listed = [wait_for(lambda m=m: seeded(m).get(sha256), 10, "mirror seeds big.bin")
              for m in mirrors]
    assert listed[0] == listed[1], "the same bytes make the same info-hash on every mirror"
    info_hash = listed[0]
    torrents = [mirror_torrent(m, sha256) for m in mirrors]
    infos = [lt.bencode(t[b"info"]) for t in torrents]
    assert infos[0] == infos[1]
    for t in torrents:
        assert lt.torrent_info(t).info_hash().to_string().hex() == info_hash
        assert t[b"announce-list"] == [[announce[0].encode()]]
    files = wait_for(lambda: (f := scrape(tracker, info_hash)) and f[b"complete"] == 2 and f,
                     15, "both mirrors complete in the tracker's swarm")
    assert files[b"incomplete"] == 0


def test_libtorrent_leecher_downloads_from_the_mirror_over_bittorrent_only(
        tracker, model, tmp_path, serve):
    mirror, sha256, data = seeding_mirror(tmp_path / "home", model,
                                          [f"{tracker.url}/announce"], serve)
    torrent = mirror_torrent(mirror, sha256)
    assert torrent[b"url-list"] == [f"{mirror.url}/blobs/sha256/{sha256}".encode()]
    del torrent[b"url-list"]  # no web seed: the bytes must come over BitTorrent
    info_hash = seeded(mirror)[sha256]
    wait_for(lambda: scrape(tracker, info_hash).get(b"complete") == 1, 15,
             "the mirror announced itself complete")
    before = egress(mirror)

    leech(torrent, tmp_path / "leech")

    assert (tmp_path / "leech" / sha256).read_bytes() == data
    # The seeder reads libtorrent's counters about once a second.
    after = wait_for(lambda: (e := egress(mirror))["bittorrent"] - before["bittorrent"]
                     >= len(data) and e, 10, "BitTorrent egress counted")
    assert after["webseed"] == before["webseed"], "no byte came from the web seed"


def test_libtorrent_leecher_downloads_from_the_web_seed_alone_with_the_tracker_down(
        model, tmp_path, serve):
    tracker = start_tracker(TrackerConfig(port=0, interval=2, min_interval=1, peer_ttl=60))
    try:
        mirror, sha256, data = seeding_mirror(tmp_path / "home", model,
                                              [f"{tracker.url}/announce"], serve)
        torrent = mirror_torrent(mirror, sha256)
    finally:
        tracker.stop()
    assert b"url-list" in torrent  # kept: the only source left
    before = egress(mirror)

    leech(torrent, tmp_path / "leech")

    assert (tmp_path / "leech" / sha256).read_bytes() == data
    after = egress(mirror)
    assert after["webseed"] - before["webseed"] >= len(data), (before, after)
    time.sleep(1.2)  # one turn of the seeder's counter reading
    assert egress(mirror)["bittorrent"] == before["bittorrent"], "no peer could be found"


@pytest.mark.skipif(shutil.which("aria2c") is None, reason="aria2c (Debian aria2) not installed")
def test_aria2c_downloads_a_blob_from_the_mirror_through_the_tracker(
        tracker, model, tmp_path, serve):
    mirror, sha256, data = seeding_mirror(tmp_path / "home", model,
                                          [f"{tracker.url}/announce"], serve)
    torrent = mirror_torrent(mirror, sha256)
    del torrent[b"url-list"]  # BitTorrent only
    torrent_file = tmp_path / "blob.torrent"
    torrent_file.write_bytes(lt.bencode(torrent))
    info_hash = seeded(mirror)[sha256]
    wait_for(lambda: scrape(tracker, info_hash).get(b"complete") == 1, 15,
             "the mirror announced itself complete")
    before = egress(mirror)
    out = tmp_path / "aria2"
    done = aria2c_download(torrent_file, out, stop_after=30, timeout=45)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (out / sha256).read_bytes() == data
    after = wait_for(lambda: (e := egress(mirror))["bittorrent"] - before["bittorrent"]
                     >= len(data) and e, 10, "BitTorrent egress counted")
    assert after["webseed"] == before["webseed"]


MANY = 500
BLOB_SIZE = 4 * 1024 * 1024  # the smallest blob that gets a torrent


async def _states(seeder) -> list[str]:
    """libtorrent's state of every torrent in the mirror's session."""
    session = seeder.session
    return [session.status(key).state for key in session.info_hashes()]


async def _stats(seeder) -> dict[str, int]:
    return await seeder.session.stats()


def _all_seeding(mirror) -> bool:
    seeder = seeder_of(mirror)
    states = on_loop(mirror, _states, seeder)
    return len(seeder.seeding) == MANY and len(states) == MANY and set(states) == {"seeding"}


def _assert_nothing_hashed(mirror) -> None:
    counters = on_loop(mirror, _stats, seeder_of(mirror))
    hashed = {k: counters[k] for k in ("disk.disk_hash_time", "disk.num_blocks_hashed",
                                        "disk.num_blocks_read")}
    # Measured: a torrent added without have_all reads and hashes every block here
    # (disk_hash_time > 0, num_blocks_read = one per 16 KiB).
    assert hashed == dict.fromkeys(hashed, 0), hashed


def test_a_restarted_mirror_seeds_500_blobs_again_without_hashing(tmp_path):
    source = tmp_path / "many"
    source.mkdir()
    for i in range(MANY):  # distinct 4 MiB blobs, sparse: 8 leading bytes and zeros
        with open(source / f"w{i:03d}.bin", "wb") as f:
            f.write(i.to_bytes(8, "big"))
            f.truncate(BLOB_SIZE)
    home = tmp_path / "home"
    try:
        import_folder(home, source, "tests/many")  # .bin: LFS by rule, 4 MiB: one torrent each

        first = start_mirror(make_config(home))
        try:
            wait_for(lambda: _all_seeding(first), 20, f"first mirror seeds {MANY}")
            before = dict(seeded(first))
            assert len(before) == MANY
            _assert_nothing_hashed(first)
        finally:
            first.stop()

        started = time.monotonic()
        again = start_mirror(make_config(home))
        try:
            wait_for(lambda: _all_seeding(again), 20, f"restarted mirror seeds {MANY}")
            took = time.monotonic() - started
            assert seeded(again) == before
            _assert_nothing_hashed(again)
            assert took < 5, f"seeding {MANY} again took {took:.1f}s"
        finally:
            again.stop()
    finally:
        shutil.rmtree(home, ignore_errors=True)  # 2 GiB: do not leave it to pytest's basetemp
