"""Benchmark: our bencoding (peer/bencode.py) against libtorrent's `bencode`/`bdecode` on what
each is used for: the tracker's answers, the info dict hashed into an info-hash, and decoding a
blob's torrent file.

Run: .venv/bin/python ops/bench/bencode.py [--repeat 15]
Prints a markdown table of medians, µs a call; ours and libtorrent's run interleaved, so that a
busy neighbour costs both alike. peer/bencode.py's docstring quotes it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import libtorrent as lt  # noqa: E402

from peer.bencode import bdecode, bencode  # noqa: E402
from peer.hashing import piece_length_for  # noqa: E402


def medians(calls, number: int, repeat: int) -> list[float]:
    runs: list[list[float]] = [[] for _ in calls]
    for _ in range(repeat):
        for times, call in zip(runs, calls, strict=True):
            times.append(timeit.timeit(call, number=number) / number * 1e6)
    return [statistics.median(times) for times in runs]


def cases() -> list[tuple[str, str, object, int]]:
    """(what, encode or decode, the value or the bytes, calls per repeat)."""
    announce = {"complete": 12, "incomplete": 38, "interval": 1800, "min interval": 900,
                "peers": os.urandom(6 * 50)}
    scrape = {"files": {os.urandom(20): {"complete": 12, "downloaded": 40, "incomplete": 38}}}
    found = [("a compact announce answer, 50 peers", "encode", announce, 20000),
             ("a scrape answer, one info-hash", "encode", scrape, 20000)]
    for size, label in [(1 << 30, "1 GiB"), (20 << 30, "20 GiB")]:
        piece_length = piece_length_for(size)
        count = -(-size // piece_length)
        # bytes values: libtorrent converts a str only with a DeprecationWarning
        info = {b"name": b"ab" * 32, b"length": size, b"piece length": piece_length,
                b"pieces": os.urandom(20 * count)}
        torrent = bencode({b"announce": b"http://tracker:6969/announce",
                           b"announce-list": [[b"http://tracker:6969/announce"]], b"info": info,
                           b"url-list": [b"http://mirror:8470/blobs/sha256/" + b"ab" * 32]})
        found.append((f"the info dict of a {label} blob ({count} pieces)", "encode", info, 5000))
        found.append((f"decoding its torrent file ({len(torrent)} bytes)", "decode", torrent,
                      5000))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    print(f"libtorrent {lt.__version__}, median of {args.repeat} repeats, µs a call\n")
    print(f"| {'what':50} | ours | libtorrent |")
    print(f"|{'-' * 52}|-----:|-----------:|")
    for what, way, value, number in cases():
        if way == "encode":
            calls = [lambda v=value: bencode(v), lambda v=value: lt.bencode(v)]
        else:
            calls = [lambda v=value: bdecode(v), lambda v=value: lt.bdecode(v)]
        ours, theirs = medians(calls, number, args.repeat)
        print(f"| {what:50} | {ours:4.1f} | {theirs:10.1f} |")


if __name__ == "__main__":
    main()
