"""mirror.flights: a streamed pull-through lets go of the page cache behind its readers.

Each client reads a pulled file once, as it arrives; the pages every reader has passed (and
that are on disk) are dropped, so a GiB streamed does not hold a GiB of memory taken fresh.
What the clients receive is shown byte-identical by tests/mirror/test_pullthrough.py (ten
clients of a 200 MiB file); these show what is dropped and when."""

from __future__ import annotations

import os
import subprocess

import pytest

from mirror.flights import DROP_EVERY, Flight
from mirror.upstreams import RemoteFile

MiB = 1 << 20
SIZE = 48 * MiB


def resident(path) -> int:
    """Bytes of the file in the page cache (util-linux fincore)."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip())


@pytest.fixture
def written(tmp_path):
    """A partial file of SIZE bytes, written and on disk."""
    path = tmp_path / "partial"
    with open(path, "wb") as f:
        for _ in range(SIZE // MiB):
            f.write(os.urandom(MiB))
        f.flush()
        os.fsync(f.fileno())
    fd = os.open(path, os.O_RDONLY)
    yield path, fd
    os.close(fd)


async def test_what_every_reader_passed_leaves_the_page_cache(written):
    path, fd = written
    flight = Flight(RemoteFile("w.bin", SIZE, None, "0" * 64, True), "0" * 64)
    flight.begin(path, SIZE, lambda: SIZE)
    ahead, behind = object(), object()
    flight.passed(ahead, 40 * MiB, fd)
    assert flight.dropped == 40 * MiB, "one reader alone: what it passed"
    flight.passed(behind, 8 * MiB, fd)
    flight.passed(ahead, SIZE, fd)
    assert flight.dropped == 40 * MiB, "a reader behind holds the pages it has yet to read"
    flight.passed(behind, 30 * MiB, fd)
    assert flight.dropped == 40 * MiB, "less than DROP_EVERY more: not yet"
    flight.left(behind)
    flight.passed(ahead, SIZE, fd)
    assert flight.dropped == SIZE, "a reader gone holds nothing; the end is dropped whole"
    assert resident(path) == 0


async def test_bytes_not_yet_on_disk_are_kept_and_a_new_attempt_starts_over(written):
    path, fd = written
    flight = Flight(RemoteFile("w.bin", SIZE, None, "0" * 64, True), "0" * 64)
    on_disk = 10 * MiB + 123
    flight.begin(path, SIZE, lambda: on_disk)
    reader = object()
    flight.passed(reader, SIZE, fd)
    assert flight.dropped == 0, "under DROP_EVERY of it on disk"
    on_disk = DROP_EVERY + 4096 + 5
    flight.passed(reader, SIZE, fd)
    assert flight.dropped == DROP_EVERY + 4096, "up to the last whole page on disk"
    flight.begin(path, 0, lambda: 0)
    assert (flight.dropped, flight.readers) == (0, {}), "a new attempt: its own readers"
