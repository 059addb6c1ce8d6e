"""The shape every long-running weightswarm service shares: the mirror, the tracker and the peer
daemon (STYLE.md, "the shape of a module").

- `create_app(config)` builds an aiohttp application. Each resource the service needs (its
  listening socket, a thread, a libtorrent session, a UDP endpoint, a scheduler) opens in its
  own `cleanup_ctx` entry, in order, and closes in reverse: a failure half-way through start-up
  closes exactly what was opened before it, and nothing else.
- Its background loops run in the service's `Loops`: one `asyncio.TaskGroup`, held open by a
  task of its own so that a loop started by any resource belongs to it. Each resource cancels
  and awaits its own loops when it closes; whatever is left is cancelled and awaited last. A
  loop that fails takes the group down, as a failing child does a trio nursery: the failure is
  logged and the service stops, never left running with a loop silently dead.
- `start(app, name)` opens every resource, then accepts connections on the app's listening
  socket, and returns a `Service`: where it listens, what it says of itself, and `stop()`.
  Every server bounds how long it waits for a client (`LIMITS`, from the role's `http_*`
  settings), and refuses a malformed request with one line in the log, never a traceback.
- `serve(*services)` runs them until SIGINT or SIGTERM, or until one of them fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .errors import WeightswarmError
from .settings import HttpLimits

log = logging.getLogger(__name__)


class ServiceFailed(WeightswarmError):
    """A service stopped on its own: one of its background loops failed (the log says why)."""


class Loops:
    """The background loops of one service, in one TaskGroup the service owns."""

    def __init__(self, name: str):
        self.name = name
        self._group: asyncio.TaskGroup | None = None
        self._host: asyncio.Task | None = None
        self._closing = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        #: set when a loop failed: the service is to stop
        self.failed = asyncio.Event()

    async def open(self) -> None:
        ready = asyncio.get_running_loop().create_future()
        self._host = asyncio.create_task(self._hold(ready), name=f"{self.name} loops")
        await ready

    async def _hold(self, ready: asyncio.Future) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                ready.set_result(None)
                await self._closing.wait()
                for task in list(self._tasks):
                    task.cancel()
        except Exception as e:  # an ExceptionGroup of what the loops raised
            log.error("%s: a background loop failed; the service stops", self.name, exc_info=e)
            self.failed.set()
        finally:
            self._group = None
            if not ready.done():
                ready.set_result(None)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task:
        """Run `coro` as one of the service's loops."""
        if self._group is None:
            coro.close()
            raise RuntimeError(f"{self.name} is not running: no loop can start")
        task = self._group.create_task(coro, name=f"{self.name}: {name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def stop(self, tasks: list[asyncio.Task]) -> None:
        """Cancel these loops and wait until they are gone (a resource closing its own)."""
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def close(self) -> None:
        self._closing.set()
        if self._host is not None:
            await self._host


LISTENER = web.AppKey("listener", socket.socket)
LOOPS = web.AppKey("loops", Loops)
#: how long the service waits for a client; set by create_app from the role's config
LIMITS = web.AppKey("limits", HttpLimits)

CleanupContext = Callable[[web.Application], AsyncIterator[None]]


def bind_tcp(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port (port 0: any free one), not yet listening."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def listening(host: str, port: int) -> CleanupContext:
    """The service's HTTP socket, bound first: its port is known to every later resource
    (the tracker's UDP endpoint takes the same number)."""

    async def listener(app: web.Application) -> AsyncIterator[None]:
        sock = bind_tcp(host, port)
        app[LISTENER] = sock
        try:
            yield
        finally:
            sock.close()

    return listener


def background(name: str) -> CleanupContext:
    """The service's `Loops`, opened before the resources that start loops in it."""

    async def loops(app: web.Application) -> AsyncIterator[None]:
        app[LOOPS] = group = Loops(name)
        await group.open()
        try:
            yield
        finally:
            await group.close()

    return loops


def port_of(app: web.Application) -> int:
    return app[LISTENER].getsockname()[1]


@dataclass(frozen=True)
class Service:
    """A started service."""

    name: str
    host: str
    port: int
    runner: web.AppRunner = dataclasses.field(repr=False)
    #: the service's public key (a mirror's), if it has one
    key: str | None = None
    #: its BitTorrent listen port (a mirror's or a peer daemon's), if it seeds
    bittorrent_port: int | None = None

    @property
    def netloc(self) -> str:
        """host:port to reach it at (a wildcard address reached on loopback)."""
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.netloc}"

    @property
    def app(self) -> web.Application:
        return self.runner.app

    @property
    def failed(self) -> bool:
        return self.app[LOOPS].failed.is_set()

    async def stop(self) -> None:
        """Stop accepting, finish what is in flight, close every resource in reverse."""
        await self.runner.cleanup()


class MalformedRequests(logging.Filter):
    """aiohttp answers a request it cannot parse (a line too long, a bad method or header, an
    invalid URL) with a 400, and logs each as an ERROR with a traceback: about one line of
    traceback per ten hostile requests. A refusal is an expected event: one INFO line instead,
    at most once a minute for each kind (aiohttp's error classes, a small fixed set), with how
    many were refused meanwhile."""

    EVERY = 60.0

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[str, float] = {}
        self._since: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError):
            return True  # a real failure: its traceback is wanted
        kind, now = type(error).__name__, time.monotonic()
        if now - self._last.get(kind, -self.EVERY) < self.EVERY:
            self._since[kind] = self._since.get(kind, 0) + 1
            return False
        self._last[kind] = now
        more = self._since.pop(kind, 0)
        detail = " ".join(str(error.message).split())[:160]
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.msg = "refused a malformed request from %s: %s (%s)%s"
        record.args = (record.args[0] if record.args else "?", kind, detail,
                       f"; {more} more refused since the last line" if more else "")
        record.exc_info, record.exc_text = None, None
        return True


#: aiohttp's own logger of the requests its servers fail to handle
_AIOHTTP_SERVER = logging.getLogger("aiohttp.server")


def _quiet_malformed_requests() -> None:
    if not any(isinstance(f, MalformedRequests) for f in _AIOHTTP_SERVER.filters):
        _AIOHTTP_SERVER.addFilter(MalformedRequests())


async def start(app: web.Application, name: str) -> Service:
    """Open every resource of `app`, then accept connections on its listening socket. Should
    anything fail, what was opened is closed again before the error propagates."""
    _quiet_malformed_requests()
    limits = app.get(LIMITS) or HttpLimits()
    # aiohttp's keep-alive timer runs from a connection's start and from each answer, and
    # closes the connection if no whole request head came meanwhile: the bound on slow heads
    # and on idle connections at once.
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=limits.idle_timeout)
    app[CLOSING] = closing = {}
    app.cleanup_ctx[:] = [_traced(resource, closing) for resource in app.cleanup_ctx]
    try:
        await runner.setup()
        await web.SockSite(runner, app[LISTENER]).start()
    except BaseException:
        await runner.cleanup()
        raise
    host, port = app[LISTENER].getsockname()[:2]
    return Service(name, host, port, runner)


def run(main: Coroutine[Any, Any, None]) -> None:
    """A command's service, in a new event loop until it stops; a Ctrl-C that comes before
    the service's own signal handlers are in place ends it quietly too. The standard loop, not
    uvloop: uvloop has no native sendfile, and blob transfers fell to half (16 concurrent
    range GETs, ops/bench/serve.py) for no clear gain in request rate."""
    try:
        asyncio.run(main)
    except KeyboardInterrupt:
        pass


async def until_stopped(*services: Service) -> None:
    """Return on SIGINT or SIGTERM; raise `ServiceFailed` if one of the services stopped on its
    own first."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    waits = [asyncio.create_task(stop.wait())]
    waits += [asyncio.create_task(s.app[LOOPS].failed.wait()) for s in services]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
        await asyncio.wait(waits)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    failed = [s.name for s in services if s.failed]
    if failed:
        raise ServiceFailed(f"{', '.join(failed)} stopped: a background loop failed (see the log)")


async def serve(*services: Service) -> None:
    """Serve until stopped (or failed), then stop every service, the last started first."""
    try:
        await until_stopped(*services)
        log.info("stopping %s", ", ".join(s.name for s in services))
    finally:
        for service in reversed(services):
            try:
                await _stop_saying_what_waits(service)
            except Exception:
                log.exception("stopping %s failed", service.name)


#: seconds a service may take to stop before the log says what it is waiting on
STOP_REPORT_AFTER = 10.0


async def _stop_saying_what_waits(service: Service) -> None:
    """`service.stop()`; should it take long, one line saying which resource is closing and
    where it waits (its await chain), and where every other task waits, once: a stop that
    hangs then says where."""
    stopping = asyncio.ensure_future(service.stop())
    done, _ = await asyncio.wait([stopping], timeout=STOP_REPORT_AFTER)
    if not done:
        name, closing = service.app[CLOSING].get("now", ("nothing", None))
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()
                  and t is not stopping]
        log.warning("stopping %s: still waiting after %.0f s, closing %s at %s; tasks: %s",
                    service.name, STOP_REPORT_AFTER, name, _chain(closing),
                    " | ".join(f"{t.get_name()}: {_chain(t.get_coro())}" for t in others))
    await stopping


def _chain(awaiting) -> str:
    """Where a coroutine (or an async generator) waits: the frames of its await chain."""
    frames = []
    while awaiting is not None and len(frames) < 16:
        frame = next((getattr(awaiting, a) for a in ("cr_frame", "ag_frame", "gi_frame")
                      if getattr(awaiting, a, None) is not None), None)
        if frame is not None:
            code = frame.f_code
            frames.append(f"{code.co_name} ({code.co_filename.rsplit('/', 1)[-1]}:"
                          f"{frame.f_lineno})")
        awaiting = next((getattr(awaiting, a) for a in ("cr_await", "ag_await", "gi_yieldfrom")
                         if getattr(awaiting, a, None) is not None), None)
    return " > ".join(frames) or "-"


#: "now": (the name of the resource being closed, its async generator), as a service stops
CLOSING = web.AppKey("closing", dict)


def _traced(resource: CleanupContext, closing: dict) -> CleanupContext:
    """A cleanup_ctx entry that notes, as it closes, that it is the one closing."""
    async def traced(app: web.Application) -> AsyncIterator[None]:
        it = resource(app)
        await it.__anext__()
        yield
        closing["now"] = (getattr(resource, "__qualname__", repr(resource)), it)
        with contextlib.suppress(StopAsyncIteration):
            await it.__anext__()
    return traced
