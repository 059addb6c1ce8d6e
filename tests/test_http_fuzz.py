"""An HTTP fuzzer for the mirror, the tracker and the peer daemon, each run as its command is:
hostile paths (traversal in every encoding we know of: plain, percent, double-percent, full-width,
overlong UTF-8, backslashes, NUL), every method on every route, malformed and non-ASCII `Range`
and conditional headers, oversized lines and headers, broken request lines, and requests held
open half-sent. It asserts what issue 14 asks: no 5xx, no traceback in the log, no byte from
outside the store (canary files planted beside the home), slow clients timed out, and the
server still answering a plain request at the end.

Bounded: a fixed seed, a few thousand requests per server, a two-second idle timeout."""

from __future__ import annotations

import os
import random
import re
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import VENV_BIN, make_tiny_model, wait_for

pytestmark = pytest.mark.slow

WEIGHTSWARM = str(VENV_BIN / "weightswarm")
IDLE = 2.0
REQUESTS = 1500

NORMAL = {"r": "org/tiny", "v": "main", "p": "config.json", "h": "huggingface",
          "s": "a" * 64, "c": "b" * 40, "k": "somekey"}
HOSTILE = [
    "..", "../..", "%2e%2e", "%2e%2e%2f%2e%2e", "%252e%252e%252f", "．．", "．．／．．",
    "%c0%ae%c0%ae", "%c0%af", "%e0%80%ae", "..%2f..%2fcanary.txt", "..\\..\\canary.txt",
    "%5c..%5c", "%00", "a%00b", "\x00", "/etc/passwd", "%2fetc%2fpasswd", "//etc/passwd",
    "../../canary.txt", "....//", "%ff%fe", "~root", "CON", "a" * 300, "x" * 5000,
    "%", "%zz", "refs%2Fpr%2F1", "@{-1}", "main..other", ".git", "org/../tiny",
]
MIRROR_ROUTES = [
    "/", "/metrics", "/api/models", "/api/datasets", "/api/models/{r}",
    "/api/models/{r}/revision/{v}", "/api/models/{r}/tree/{v}", "/api/models/{r}/tree/{v}/{p}",
    "/api/models/{r}/refs", "/api/models/{r}/paths-info/{v}", "/api/models/{r}/commits/{v}",
    "/{r}/resolve/{v}/{p}", "/datasets/{r}/resolve/{v}/{p}", "/hubs/{h}/api/models/{r}",
    "/hubs/{h}/{r}/resolve/{v}/{p}", "/blobs/sha256/{s}", "/api/weightswarm/key",
    "/api/weightswarm/snapshots/{h}/model/{r}?revision={v}",
    "/api/weightswarm/manifests/{h}/model/{r}/{c}", "/api/weightswarm/torrents",
    "/api/weightswarm/torrents/{s}.torrent", "/{p}", "/{p}/{p}",
]
TRACKER_ROUTES = ["/announce?info_hash={p}&peer_id={p}&port={p}", "/scrape?info_hash={p}",
                  "/announce/{k}?info_hash={p}", "/scrape/{k}", "/api/weightswarm/stats",
                  "/metrics", "/{p}"]
DAEMON_ROUTES = ["/", "/metrics", "/api/weightswarm/snapshots/{h}/model/{r}?revision={v}",
                 "/api/weightswarm/manifests/{h}/model/{r}/{c}",
                 "/api/weightswarm/torrents/{s}.torrent", "/blobs/sha256/{s}", "/{p}"]
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "FOO"]
HEADERS = [
    b"Range: bytes=0-1", b"Range: bytes=\xc2\xb9-2", b"Range: bytes=-\xd9\xa3", b"Range: bytes=5-1",
    b"Range: bytes=99999999999999999999999-", b"Range: bytes=0-1,3-4", b"Range: items=0-1",
    b"Range: bytes= 1-2", b"Range: bytes=-0", b"Range: bytes=", b"Range: \xff\xfe",
    b'If-None-Match: "' + b"a" * 64 + b'"', b"If-None-Match: \xc2\xb9", b"If-None-Match: *",
    b'If-Range: W/"x"', b"If-Range: Tue, 01 Dec 2026 10:00:00 GMT", b"If-Range: \x01",
    b"X-Long: " + b"a" * 20000, b"Content-Length: -1", b"Content-Length: 99999999999",
    b"Transfer-Encoding: chunked, identity", b"Expect: 100-continue", b"Host: \xc3\x28",
    b"Accept-Encoding: " + b"gzip," * 500, b"Cookie: " + b"a=b;" * 2000,
]
RAW = [
    b"GET / HTTP/9.9\r\n\r\n", b"GET\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"G\x00T / HTTP/1.1\r\nHost: x\r\n\r\n", b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
    b"GET / HTTP/1.1\r\n folded: header\r\n\r\n", b"GET http://[::1 HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(300)) + b"\r\n",
    b"POST /api/models/org/tiny/paths-info/main HTTP/1.1\r\nHost: x\r\n"
    b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 5\r\n\r\nab",
    b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
]


class Server:
    """One of our commands, serving on 127.0.0.1:0, its log captured."""

    def __init__(self, args: list[str], home: Path, pattern: str, env: dict):
        self.log = home.parent / f"{args[0]}.log"
        home.mkdir(parents=True, exist_ok=True)
        with open(self.log, "w") as out:
            self.process = subprocess.Popen([WEIGHTSWARM, "--home", str(home), *args],
                                            env=env, stdout=out, stderr=subprocess.STDOUT)

        def listening():
            if self.process.poll() is not None:
                raise AssertionError(f"{args} exited:\n{self.log.read_text()[-3000:]}")
            return re.search(pattern, self.log.read_text())

        self.port = int(wait_for(listening, 30, f"{args} listening").group(1))

    def stop(self) -> str:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        return self.log.read_text()


def _exchange(port: int, data: bytes) -> tuple[list[int], bytes]:
    """Send `data`; the statuses of the answers read back (a 100 Continue, then the answer)
    and their bytes. An answer is read to its Content-Length, not to the close: a server
    lingers on a connection whose body it did not read."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(data)
        except OSError:
            pass  # the server closed on a line too long: read what it said
        buffer, statuses = b"", []
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = s.recv(65536)
                    if not chunk:
                        return statuses, buffer
                    buffer += chunk
                head, _, rest = buffer.partition(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                statuses.append(status)
                if status == 100:
                    buffer = rest
                    continue
                found = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                length = int(found.group(1)) if found and b"HEAD " not in data[:5] else 0
                while len(rest) < length:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    rest += chunk
                return statuses, head + b"\r\n\r\n" + rest
        except (ConnectionResetError, TimeoutError, ValueError, IndexError):
            return statuses, buffer


def _requests(routes: list[str], rng: random.Random, count: int) -> list[bytes]:
    out = list(RAW)
    while len(out) < count:
        route = rng.choice(routes)
        values = {k: (rng.choice(HOSTILE) if rng.random() < 0.5 else v)
                  for k, v in NORMAL.items()}
        path = route.format(**values)
        if rng.random() < 0.3:
            path += "?" + rng.choice(["cursor=\xb9", "limit=-1", "limit=%D9%A3", "recursive=1",
                                      "search=" + rng.choice(HOSTILE), "revision=..", "a=%00"])
        headers = [b"Host: 127.0.0.1"]
        headers += rng.sample(HEADERS, rng.choice([0, 1, 1, 2]))
        method = rng.choice(METHODS).encode()
        target = path.encode("utf-8", "surrogateescape")
        out.append(method + b" " + target + b" HTTP/1.1\r\n" + b"\r\n".join(headers)
                   + b"\r\nConnection: close\r\n\r\n")
    return out


def _fuzz(server: Server, routes: list[str], canaries: list[bytes], seed: int) -> dict:
    counts = {"requests": 0, "answered": 0}
    for data in _requests(routes, random.Random(seed), REQUESTS):
        statuses, answer = _exchange(server.port, data)
        counts["requests"] += 1
        counts["answered"] += bool(statuses)
        assert all(s < 500 for s in statuses), f"{data[:300]!r} -> {answer[:600]!r}"
        for token in canaries:
            assert token not in answer, f"{data[:300]!r} leaked a file from outside the store"
    return counts


def _held_open(port: int, n: int = 20) -> float:
    """Open `n` connections that send half a request head and wait; how long until the
    server has closed them all."""
    socks = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=IDLE * 5)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n" if i % 2 else b"GE")
        socks.append(s)
    started = time.monotonic()
    try:
        for s in socks:
            try:
                assert s.recv(1) == b"", "the server answered half a request?"
            except ConnectionResetError:
                pass
    finally:
        for s in socks:
            s.close()
    return time.monotonic() - started


def _plain_get(port: int, path: str) -> int:
    statuses, _ = _exchange(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n"
                                  f"Connection: close\r\n\r\n".encode())
    return statuses[-1] if statuses else 0


@pytest.fixture
def world(tmp_path):
    """A home for each server, and canary files beside them that must never be served."""
    canaries = []
    for where in (tmp_path / "canary.txt", tmp_path / "m" / "canary.txt",
                  tmp_path / "d" / "canary.txt", Path("/tmp") / f"canary-{os.getpid()}.txt"):
        token = b"CANARY-" + secrets.token_hex(8).encode()
        where.parent.mkdir(parents=True, exist_ok=True)
        where.write_bytes(token)
        canaries.append(token)
    env = {k: v for k, v in os.environ.items()}
    env.update(WEIGHTSWARM_MIRROR_HTTP_IDLE_TIMEOUT=str(IDLE),
               WEIGHTSWARM_MIRROR_HTTP_BODY_TIMEOUT=str(IDLE),
               WEIGHTSWARM_TRACKER_HTTP_IDLE_TIMEOUT=str(IDLE),
               WEIGHTSWARM_PEER_HTTP_IDLE_TIMEOUT=str(IDLE),
               WEIGHTSWARM_PEER_CACHE=str(tmp_path / "hf-cache"))
    yield tmp_path, canaries, env
    (Path("/tmp") / f"canary-{os.getpid()}.txt").unlink(missing_ok=True)


def _assert_clean(log: str, name: str) -> None:
    assert "Traceback" not in log, f"{name} logged a traceback:\n{log[-4000:]}"
    refusals = [line for line in log.splitlines() if "refused a malformed request" in line]
    assert refusals, f"{name}: malformed requests are refused with a line"
    kinds = [line.split(": ", 2)[-1].split(" ")[0] for line in refusals]
    assert len(kinds) == len(set(kinds)), f"{name}: at most one line a minute per kind"


def _import_a_model(root: Path, home: Path, env: dict) -> None:
    subprocess.run([WEIGHTSWARM, "--home", str(home), "mirror", "import",
                    str(make_tiny_model(root / "model")), "--repo", "org/tiny"],
                   env=env, check=True, capture_output=True, timeout=120)


#: each server: its command, the log line that gives its port, its routes, a path it answers
SERVERS = {
    "mirror": (["mirror", "serve", "--port", "0"],
               r"mirror listening on http://127\.0\.0\.1:(\d+)", MIRROR_ROUTES,
               "/api/models/org/tiny"),
    "tracker": (["tracker", "serve", "--port", "0"],
                r"tracker listening on http://127\.0\.0\.1:(\d+)", TRACKER_ROUTES,
                "/api/weightswarm/stats"),
    "peer daemon": (["peer", "serve", "--port", "0"],
                    r"BitTorrent port \d+; http://127\.0\.0\.1:(\d+)/metrics", DAEMON_ROUTES,
                    "/metrics"),
}


@pytest.mark.parametrize("name", list(SERVERS))
def test_a_server_survives_hostile_http(world, name):
    root, canaries, env = world
    args, pattern, routes, probe = SERVERS[name]
    home = root / {"mirror": "m", "tracker": "t", "peer daemon": "d"}[name] / "home"
    if name == "mirror":
        _import_a_model(root, home, env)  # something to serve, and to leak if it could
    server = Server(args, home, pattern, env)
    try:
        counts = _fuzz(server, routes, canaries, seed=len(name))
        held = _held_open(server.port)
        assert held < IDLE * 3, f"half-sent requests held {held:.1f}s (idle timeout {IDLE}s)"
        assert _plain_get(server.port, probe) == 200, "still serving"
    finally:
        log = server.stop()
    _assert_clean(log, name)
    print(f"{name}: {counts}, half-sent requests closed in {held:.1f}s")
    assert counts["answered"] > counts["requests"] * 0.9, counts


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-s"]))
