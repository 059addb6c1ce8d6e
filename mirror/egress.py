"""One egress budget over every blob byte a mirror sends: BitTorrent upload, the web-seed
route and `resolve` downloads together (DESIGN.md section 3).

libtorrent's rate limit does not touch aiohttp, and aiohttp has none, so the budget is a token
bucket here. HTTP senders take tokens before each chunk they hand to the kernel. libtorrent
keeps its own limiter, which we steer: every tick the bytes it sent are debited from the same
bucket (which may go negative; HTTP then waits until the debt is paid), and its limit is set to
the share HTTP leaves, never less than half while both want bytes. Over any window of W seconds
the mirror sends at most `rate × W` plus one burst, one HTTP chunk and one tick of BitTorrent.
"""

from __future__ import annotations

import asyncio
import time

#: How often libtorrent's sent bytes are read and its limit steered, seconds.
TICK = 0.1


class Egress:
    def __init__(self, rate: int | None, *, clock=time.monotonic):
        self.rate = rate
        self._clock = clock
        self.burst = max(64 * 1024, int(rate * TICK)) if rate else 0
        #: HTTP hands the kernel this much per token grant
        self.chunk = min(256 * 1024, max(16 * 1024, int(rate / 20))) if rate else 1 << 20
        self._tokens = float(self.burst)
        self._stamp = clock()
        self._http_recent = 0.0  # HTTP bytes taken, decaying
        self._http_stamp = self._stamp
        self._waiting = 0
        #: streams waiting for bytes are served in turn, first come first served
        self._turn = asyncio.Lock()

    @property
    def limited(self) -> bool:
        return self.rate is not None

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def take(self, n: int) -> None:
        """Wait until `n` bytes may be sent over HTTP."""
        if self.rate is None:
            return
        self._waiting += 1
        try:
            async with self._turn:
                while True:
                    self._refill()
                    if self._tokens > 0:
                        self._tokens -= n
                        self._note_http(n)
                        return
                    await asyncio.sleep(max(0.005, -self._tokens / self.rate))
        finally:
            self._waiting -= 1

    def _note_http(self, n: int) -> None:
        now = self._clock()
        # An exponentially decaying sum with a half-life of about half a second.
        self._http_recent = self._http_recent * 0.5 ** ((now - self._http_stamp) / 0.5) + n
        self._http_stamp = now

    def http_rate(self) -> float:
        """HTTP's recent bytes/s (the decaying sum over its mean age)."""
        age = self._clock() - self._http_stamp
        return self._http_recent * 0.5 ** (age / 0.5) / 0.72

    def debit(self, n: int) -> None:
        """Bytes libtorrent already sent."""
        if self.rate is None or n <= 0:
            return
        self._refill()
        self._tokens -= n

    def bittorrent_limit(self) -> int:
        """What libtorrent may send per second from now on (0 means unlimited to libtorrent,
        so never 0 under a cap)."""
        if self.rate is None:
            return 0
        if self._waiting == 0 and self.http_rate() < 1:
            return self.rate
        return max(int(self.rate - self.http_rate()), self.rate // 2, 1)
