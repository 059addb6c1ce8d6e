"""Issue 6: one egress limit, `[mirror] egress_limit`, covers every blob byte a mirror sends:
BitTorrent upload, the web-seed route (/blobs/sha256/<hex>) and `resolve` downloads together.

A real mirror capped at 10 MiB/s seeds three random blobs of one repo. At once, a plain
libtorrent leecher (found through our tracker, web seeds stripped so its bytes are BitTorrent
only) downloads blob A, one thread streams blob B from the web-seed route and another streams
blob C through `resolve`. Once all three have received bytes, a 10 s window is measured on both
sides: the mirror's own egress counters (`weightswarm_mirror_egress_bytes_total`, summed over
`via`) and the bytes the three clients received. The bound is an upper bound only (a slow machine
sends less and cannot fail it); "each made progress" is > 0 bytes, not a speed.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from helpers import VENV_BIN, make_config, plain_session, start_tracker
from peer.bencode import bdecode, bencode
from tracker.config import TrackerConfig

lt = pytest.importorskip("libtorrent")
#: the whole test, start to teardown, takes about 16 s here; every wait in it is bounded
pytestmark = [pytest.mark.slow, pytest.mark.timeout(40)]

MiB = 1024 * 1024
CAP = 10 * MiB
#: the requirement: over the window, at most this much above the cap
TOLERANCE = 1.15
WINDOW = 10.0
SAMPLE_EVERY = 0.25
REPO = "org/capped"
#: A is large enough that the leecher cannot finish it inside the window even if BitTorrent
#: had the whole cap; B and C are read at the share HTTP is left.
SIZES = {"a.bin": 160 * MiB, "b.bin": 64 * MiB, "c.bin": 64 * MiB}
#: The clients count a byte when they read it, the mirror when it hands it to the kernel (HTTP)
#: or at the seeder's next 0.1 s tick (BitTorrent, whose libtorrent sends in bursts of a few
#: MiB). A byte sent just before a window edge may be counted just after it on the other side:
#: it sat in the connection's socket buffers (loopback: a send buffer of up to 4 MiB, an
#: autotuned receive buffer) or waited for the tick. The readers keep up, so the buffers stay
#: nearly empty; this covers the worst case on each side of the comparison.
RECEIVER_SLACK = 8 * MiB
VIAS = ("bittorrent", "webseed", "resolve")
#: Counted as each chunk goes to the kernel, the mirror's counters of these and the readers'
#: counts agree but for the socket buffers. BitTorrent's counter is read from libtorrent's stats
#: at the seeder's tick, which under load comes late while libtorrent sends bursts of several
#: MiB (it lagged the leecher by up to 5.4 MiB here): it is held to the cap, not compared.
HTTP_VIAS = ("webseed", "resolve")
#: for the leecher to find the mirror through the tracker and all three to get a first byte
START_TIMEOUT = 10.0


@pytest.fixture
def tracker():
    running = start_tracker(TrackerConfig(port=0, interval=2, min_interval=1, peer_ttl=60))
    yield running
    running.stop()


def write_blobs(folder: Path) -> dict[str, str]:
    """Random files of SIZES in `folder`; their sha256 by name."""
    folder.mkdir(parents=True)
    (folder / ".gitattributes").write_text("*.bin filter=lfs diff=lfs merge=lfs -text\n")
    digests = {}
    for name, size in SIZES.items():
        h = hashlib.sha256()
        with open(folder / name, "wb") as f:
            for _ in range(size // (16 * MiB)):
                chunk = os.urandom(16 * MiB)
                h.update(chunk)
                f.write(chunk)
        digests[name] = h.hexdigest()
    return digests


def import_folder(home: Path, folder: Path) -> None:
    done = subprocess.run(
        [str(VENV_BIN / "weightswarm"), "--home", str(home), "mirror", "import", str(folder),
         "--repo", REPO, "--no-progress"],
        capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


_EGRESS_LINE = re.compile(
    r'^weightswarm_mirror_egress_bytes_total\{via="(\w+)"\}\s+(\S+)$', re.MULTILINE)


def egress_counters(base: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as r:
        text = r.read().decode()
    found = {via: float(value) for via, value in _EGRESS_LINE.findall(text)}
    return {via: found.get(via, 0.0) for via in VIAS}


class Reader(threading.Thread):
    """Streams one URL of the mirror (following a redirect, as `resolve` of a branch answers),
    counting the body bytes it receives, until `close()`."""

    def __init__(self, port: int, path: str):
        super().__init__(daemon=True)
        self.port = port
        self.path = path
        self.received = 0
        self.error: Exception | None = None
        self._closed = threading.Event()
        self._conn: http.client.HTTPConnection | None = None

    def run(self) -> None:
        try:
            path = self.path
            for _ in range(3):
                self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                if self._closed.is_set():
                    return
                self._conn.request("GET", path)
                response = self._conn.getresponse()
                if response.status not in (301, 302, 303, 307, 308):
                    break
                location = urlsplit(response.getheader("Location"))
                path = location.path + (f"?{location.query}" if location.query else "")
                response.read()
                self._conn.close()
            assert response.status == 200, f"{self.path}: HTTP {response.status}"
            while not self._closed.is_set():
                chunk = response.read1(256 * 1024)
                if not chunk:
                    break
                self.received += len(chunk)
        except Exception as e:  # reported by the test
            if not self._closed.is_set():
                self.error = e

    def close(self) -> None:
        """Drop the connection now: the mirror's handler then ends at its next chunk, and
        the thread at once, even while the mirror makes it wait."""
        self._closed.set()
        conn = self._conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        self.join(5)


def test_one_cap_covers_bittorrent_web_seed_and_resolve_together(tmp_path, tracker, serve):
    home = tmp_path / "home"
    digests = write_blobs(tmp_path / "repo")
    import_folder(home, tmp_path / "repo")
    mirror = serve(make_config(home, trackers=[f"{tracker.url}/announce"], egress_limit=CAP))

    with urllib.request.urlopen(
            f"{mirror.url}/api/weightswarm/torrents/{digests['a.bin']}.torrent",
            timeout=10) as r:
        torrent = bdecode(r.read())
    torrent.pop(b"url-list", None)  # BitTorrent bytes only: no web seed for the leecher
    assert torrent[b"announce"] == f"{tracker.url}/announce".encode()

    readers = {
        "webseed": Reader(mirror.port, f"/blobs/sha256/{digests['b.bin']}"),
        "resolve": Reader(mirror.port, f"/{REPO}/resolve/main/c.bin"),
    }
    leecher = plain_session(alert_mask=lt.alert_category.error)
    try:
        params = lt.add_torrent_params()
        params.ti = lt.torrent_info(lt.bdecode(bencode(torrent)))
        params.save_path = str(tmp_path / "leech")
        params.flags &= ~lt.torrent_flags.auto_managed
        params.flags &= ~lt.torrent_flags.paused
        handle = leecher.add_torrent(params)
        for reader in readers.values():
            reader.start()

        def received() -> dict[str, int]:
            return {"bittorrent": handle.status().total_payload_download,
                    "webseed": readers["webseed"].received,
                    "resolve": readers["resolve"].received}

        deadline = time.monotonic() + START_TIMEOUT
        while min(received().values()) == 0:
            assert time.monotonic() < deadline, (
                f"not all three clients received bytes within {START_TIMEOUT}s: {received()}, "
                f"reader errors {[r.error for r in readers.values()]}")
            leecher.pop_alerts()
            time.sleep(0.1)

        samples = []  # (monotonic time, mirror's counters, clients' received bytes)
        started = time.monotonic()
        while True:
            now = time.monotonic()
            samples.append((now, egress_counters(mirror.url), received()))
            leecher.pop_alerts()
            if now - started >= WINDOW:
                break
            time.sleep(SAMPLE_EVERY)
    finally:
        for reader in readers.values():
            reader.close()
        leecher.pause()
        del leecher

    for name, reader in readers.items():
        assert reader.error is None, f"{name} reader failed: {reader.error!r}"
    (t0, sent0, got0), (t1, sent1, got1) = samples[0], samples[-1]
    window = t1 - t0
    bound = TOLERANCE * CAP * window
    sent = {via: sent1[via] - sent0[via] for via in VIAS}
    got = {via: got1[via] - got0[via] for via in VIAS}
    report = (
        f"window {window:.2f}s, cap {CAP / MiB:.0f} MiB/s, bound {bound / MiB:.1f} MiB; "
        f"mirror's counters {_split(sent, window)}; clients received {_split(got, window)}; "
        f"most over any >= 1 s of samples: counters {_peak(samples, 1) / CAP:.2f}x cap, "
        f"clients {_peak(samples, 2) / CAP:.2f}x cap")
    print(report)
    failures = []
    if sum(sent.values()) > bound:
        failures.append("the mirror's counters show more blob egress than the cap allows")
    if sum(got.values()) > bound + RECEIVER_SLACK:
        failures.append("the clients received more than the cap allows")
    for via in VIAS:
        if got[via] <= 0:
            failures.append(f"the {via} client received nothing in the window")
        if sent[via] <= 0:
            failures.append(f"the mirror's {via} counter did not move in the window")
        if via in HTTP_VIAS and abs(sent[via] - got[via]) > RECEIVER_SLACK:
            failures.append(f"the mirror's {via} counter moved {sent[via] / MiB:.1f} MiB while "
                            f"its client received {got[via] / MiB:.1f} MiB")
    assert not failures, "; ".join(failures) + f" ({report})"


def _split(counts: dict[str, float], window: float) -> str:
    total = sum(counts.values())
    return (f"{total / MiB:.1f} MiB = {total / (CAP * window):.3f} of the cap ("
            + ", ".join(f"{via} {counts[via] / MiB:.1f}" for via in VIAS) + ")")


def _peak(samples: list, side: int) -> float:
    """The highest rate over any stretch of samples at least 1 s long, bytes/s (a report only:
    the requirement is about the whole window)."""
    return max((sum(b[side][v] - a[side][v] for v in VIAS) / (b[0] - a[0])
                for i, a in enumerate(samples) for b in samples[i + 1:] if b[0] - a[0] >= 1.0),
               default=0.0)
