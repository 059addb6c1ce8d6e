"""Hostile requests get a precise error, never a file from outside the store, and the server
keeps serving."""

from __future__ import annotations

import json
import socket

import pytest

from helpers import make_config, make_tiny_model
from mirror.catalog import Catalog
from mirror.importer import Importer
from peer.store import BlobStore

REPO = "tests/hostile"


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    from helpers import start_mirror

    home = tmp_path_factory.mktemp("home")
    config = make_config(home)
    catalog = Catalog(config.catalog_path)
    Importer(catalog, BlobStore(config.store_dir)).import_path(
        make_tiny_model(tmp_path_factory.mktemp("tiny")), repo_id=REPO)
    catalog.close()
    (home / "secret.txt").write_text("outside the store")
    running = start_mirror(config)
    yield running
    running.stop()


def raw_request(port: int, target: bytes, method: bytes = b"GET") -> tuple[int, dict, bytes]:
    """One request with the target sent byte for byte (http.client would refuse some)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(method + b" " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


@pytest.mark.parametrize(
    "target",
    [
        b"/tests/hostile/resolve/main/../../secret.txt",
        b"/tests/hostile/resolve/main/%2e%2e/%2e%2e/secret.txt",
        b"/tests/hostile/resolve/main/..%2F..%2Fsecret.txt",
        b"/tests/hostile/resolve/main/%2Fetc%2Fpasswd",
        b"/tests/hostile/resolve/main/a%00b",
        b"/tests/hostile/resolve/%2e%2e/config.json",
        b"/api/models/tests/hostile/tree/main/%2e%2e",
        b"/api/models/" + b"a" * 400,
        b"/api/models/te--sts/hostile",
        b"/tests/hostile/resolve/main/%C0%AE%C0%AE/secret.txt",
    ],
)
def test_hostile_targets_get_a_precise_400_and_the_server_keeps_serving(mirror, target):
    status, headers, body = raw_request(mirror.port, target)
    assert status == 400, f"{target!r} answered {status}"
    assert "x-error-message" in headers
    assert "error" in json.loads(body)
    assert b"outside the store" not in body
    ok, _, _ = raw_request(mirror.port, f"/api/models/{REPO}".encode())
    assert ok == 200, "the server must keep serving after a hostile request"


def test_absolute_and_overlong_targets_never_reach_a_file(mirror):
    for target in (b"/etc/passwd", b"//etc/passwd", b"/" + b"x" * 5000):
        status, _, body = raw_request(mirror.port, target)
        assert status in (400, 404, 414, 431), f"{target[:40]!r} answered {status}"
        assert b"root:" not in body
    ok, _, _ = raw_request(mirror.port, f"/api/models/{REPO}".encode())
    assert ok == 200


def test_errors_never_carry_a_traceback(mirror):
    for target in (b"/api/models/tests/hostile/tree/main?cursor=abc",
                   b"/api/models/tests/hostile/tree/main/nope", b"/tests/hostile/resolve/x/y"):
        status, headers, body = raw_request(mirror.port, target)
        assert status in (400, 404)
        assert b"Traceback" not in body and b'File "' not in body


def test_wrong_methods_are_refused(mirror):
    status, _, _ = raw_request(mirror.port, f"/{REPO}/resolve/main/config.json".encode(), b"DELETE")
    assert status == 405
    status, _, _ = raw_request(mirror.port, f"/api/models/{REPO}".encode(), b"POST")
    assert status == 405
