"""`weightswarm tracker serve` and the all-in-one `weightswarm serve` with its tracker."""

from __future__ import annotations

import re
import subprocess
import threading
import urllib.request

from helpers import VENV_BIN
from peer.bencode import bdecode


def _listening(args: list[str], pattern: str, count: int,
               lines: list[str] | None = None) -> tuple[subprocess.Popen, list]:
    """The command started, once it logged `count` ports (`pattern`'s group); every line it
    logs is added to `lines` if given."""
    process = subprocess.Popen([str(VENV_BIN / "weightswarm"), *args], stderr=subprocess.PIPE,
                               text=True)
    found: list = []
    ready = threading.Event()

    def read() -> None:
        for line in process.stderr:
            if lines is not None:
                lines.append(line)
            match = re.search(pattern, line)
            if match:
                found.append(int(match.group(1)))
                if len(found) >= count:
                    ready.set()

    threading.Thread(target=read, daemon=True).start()
    assert ready.wait(30), f"never logged {count} ports"
    return process, found


def test_tracker_serve_on_port_0_logs_its_port_and_answers(tmp_path):
    process, ports = _listening(["--home", str(tmp_path), "tracker", "serve", "--port", "0"],
                                r"tracker listening on http://127\.0\.0\.1:(\d+)", 1)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/scrape") as r:
            assert bdecode(r.read()) == {b"files": {}}
    finally:
        process.terminate()
        process.wait(30)


def test_the_all_in_one_node_serves_mirror_and_tracker(tmp_path):
    lines: list[str] = []
    process, ports = _listening(
        ["--home", str(tmp_path), "serve", "--port", "0", "--tracker-port", "0"],
        r"(?:tracker|mirror) listening on http://127\.0\.0\.1:(\d+)", 2, lines)
    try:
        tracker_port, mirror_port = ports  # the tracker starts first: torrents name it
        with urllib.request.urlopen(f"http://127.0.0.1:{mirror_port}/api/weightswarm/key") as r:
            assert b"ed25519:" in r.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{tracker_port}/scrape") as r:
            assert bdecode(r.read()) == {b"files": {}}
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            # Once, under CI's load, it outlasted 30 s: say where it was stuck.
            process.kill()
            process.wait(10)
            raise AssertionError("the node did not stop within 30 s of SIGTERM; its log ends:\n"
                                 + "".join(lines[-40:])) from None
