"""What the fake hubs (tests/fakehub.py, fakems.py, fakekaggle.py) share: real aiohttp servers
on 127.0.0.1, served from one event loop in a daemon thread, so that a test can use them with
blocking clients and stop them whatever happened."""

from __future__ import annotations

import asyncio
import threading

from aiohttp import web


class LoopServers:
    """Subclasses build their apps in `_start_servers`, listening with `_listen`."""

    thread_name = "fake-servers"

    def start(self):
        """Serve; raises what starting raised (a port taken: OSError), having cleaned up."""
        self._loop = asyncio.new_event_loop()
        self._runners: list[web.AppRunner] = []
        self._thread = threading.Thread(target=self._loop.run_forever, name=self.thread_name,
                                        daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start_servers(), self._loop).result(30)
        except BaseException:
            self.stop()
            raise
        return self

    async def _start_servers(self) -> None:
        raise NotImplementedError

    async def _listen(self, app: web.Application, port: int = 0) -> tuple[web.AppRunner, int]:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner, runner.addresses[0][1]

    def stop(self) -> None:
        loop = getattr(self, "_loop", None)
        if loop is None:
            return
        for runner in self._runners:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(30)
        loop.close()
        self._loop, self._runners = None, []

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
