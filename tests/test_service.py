"""peer/service.py, the one shape of the mirror, the tracker and the peer daemon: every resource
in its own cleanup_ctx entry, so a failure half-way through start-up closes exactly what was
opened; background loops in one TaskGroup, cancelled and awaited on shutdown; a failed loop
stops the service."""

import asyncio
import os
import socket
import threading

import pytest

from helpers import make_config
from mirror import app as mirror_app
from peer import daemon as daemon_app
from peer.service import LISTENER, LOOPS, ServiceFailed, start, until_stopped
from peer.settings import PeerConfig, SessionSettings
from tracker import app as tracker_app
from tracker.config import TrackerConfig


class Boom(Exception):
    pass


def fail_after(app, resource, note) -> dict:
    """Insert, right after `resource`, a resource that notes what is open (`note(app)`, a
    dict) and then fails to open; returns the dict it will fill."""
    seen: dict = {}

    async def fails(app):
        seen.update(note(app))
        raise Boom("the next resource fails to open")
        yield  # an async generator, as cleanup_ctx entries are

    app.cleanup_ctx.insert(app.cleanup_ctx.index(resource) + 1, fails)
    return seen


def _catalog_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("catalog") and t.is_alive()]


def _listens(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return False
        return True


def _can_bind(port: int, kind: int = socket.SOCK_STREAM) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _open_files() -> set[str]:
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
    return found


def _http_port(app) -> int:
    return app[LISTENER].getsockname()[1]


async def test_a_mirror_whose_resource_fails_at_start_closes_the_catalog_the_session_and_its_socket(
        tmp_path):
    config = make_config(tmp_path / "home")
    app = mirror_app.create_app(config)
    seen = fail_after(app, mirror_app._session, lambda app: {
        "threads": _catalog_threads(), "http": _http_port(app),
        "bt": app[mirror_app.SESSION].port, "files": _open_files()})
    with pytest.raises(Boom):
        await start(app, "mirror")
    # What was open when the failure came: the socket, the loops, the catalog, the session.
    assert seen["threads"] and str(config.catalog_path) in seen["files"]
    assert seen["bt"] > 0, "and the session had its port"

    assert not _catalog_threads(), "the catalog thread is gone"
    assert str(config.catalog_path) not in _open_files(), "the catalog file is closed"
    assert not hasattr(app[mirror_app.SESSION], "lt"), "the libtorrent session is closed"
    assert not _listens(seen["bt"]) and _can_bind(seen["bt"]), "its BitTorrent port is free"
    assert app[LISTENER].fileno() == -1 and _can_bind(seen["http"]), "the HTTP socket is closed"
    assert app[LOOPS]._host.done(), "the service's loops are closed"


async def test_a_tracker_whose_resource_fails_at_start_closes_its_http_and_udp_sockets():
    app = tracker_app.create_app(TrackerConfig(port=0))
    seen = fail_after(app, tracker_app._udp, lambda app: {"port": _http_port(app)})
    with pytest.raises(Boom):
        await start(app, "tracker")
    assert _can_bind(seen["port"], socket.SOCK_DGRAM), "the UDP port is free"
    assert _can_bind(seen["port"], socket.SOCK_STREAM), "the HTTP port is free"
    assert app[LISTENER].fileno() == -1


async def test_a_peer_daemon_whose_resource_fails_at_start_closes_its_session_and_socket(
        tmp_path):
    config = PeerConfig(home=tmp_path / "home", cache=str(tmp_path / "cache"), port=0,
                        serve_bt=SessionSettings(listen="127.0.0.1:0", min_announce_interval=1))
    app = daemon_app.create_app(config)
    seen = fail_after(app, daemon_app._session, lambda app: {
        "http": _http_port(app), "bt": app[daemon_app.DAEMON].session.port})
    with pytest.raises(Boom):
        await start(app, "peer daemon")
    assert not hasattr(app[daemon_app.DAEMON].session, "lt"), "the session is closed"
    assert not _listens(seen["bt"]) and _can_bind(seen["bt"])
    assert app[LISTENER].fileno() == -1 and _can_bind(seen["http"])


async def test_a_failing_background_loop_stops_the_service_and_the_others_are_cancelled():
    service = await tracker_app.start(TrackerConfig(port=0))
    try:
        loops = service.app[LOOPS]
        expiry = next(t for t in loops._tasks if "expiry" in t.get_name())

        async def breaks():
            await asyncio.sleep(0)
            raise RuntimeError("a bug in a loop")

        loops.spawn(breaks(), "breaks")
        async with asyncio.timeout(10):
            with pytest.raises(ServiceFailed, match="tracker"):
                await until_stopped(service)
        assert service.failed
        assert expiry.cancelled(), "the other loops were cancelled, not left running"
    finally:
        await service.stop()


async def test_stopping_a_mirror_awaits_every_loop_it_started(tmp_path):
    config = make_config(tmp_path / "home")
    service = await mirror_app.start(config)
    loops = service.app[LOOPS]
    running = set(loops._tasks)
    assert any("access log" in t.get_name() for t in running)
    assert any("following the catalog" in t.get_name() for t in running), "the seeder's loops"
    await service.stop()
    assert all(t.done() for t in running), "no loop outlives the service"
    mine = [t for t in asyncio.all_tasks() if t.get_name().startswith("mirror")]
    assert mine == [], f"tasks left behind: {mine}"


async def test_a_stop_that_takes_long_says_what_it_waits_on(monkeypatch, caplog):
    """A stop that hangs (the all-in-one node once outlasted 30 s of SIGTERM in CI) says in
    one line where every task waits, so the next one can be found from the log."""
    import logging

    from peer import service as service_module

    monkeypatch.setattr(service_module, "STOP_REPORT_AFTER", 0.2)
    app = tracker_app.create_app(TrackerConfig(port=0))

    async def slow_to_close(app):
        yield
        await asyncio.sleep(0.6)  # what a stuck resource would be doing

    app.cleanup_ctx.append(slow_to_close)
    service = await start(app, "tracker")
    with caplog.at_level(logging.WARNING, logger="peer.service"):
        stop = asyncio.create_task(service_module.serve(service))
        await asyncio.sleep(0.05)
        os.kill(os.getpid(), __import__("signal").SIGTERM)
        async with asyncio.timeout(10):
            await stop
    said = [r.getMessage() for r in caplog.records if "still waiting" in r.getMessage()]
    assert len(said) == 1 and "closing test_a_stop_that_takes_long_says_what_it_waits_on.<locals>.slow_to_close at slow_to_close (test_service.py:" in said[0], said
