"""Politeness towards an upstream: a request budget, a bandwidth cap, and how long a 429 or a
failure asks us to wait. The decisions are plain functions; the two limiters await."""

from __future__ import annotations

import asyncio
import collections
import email.utils
import re
import time
from collections.abc import Mapping

from peer.paths import ascii_digits

WINDOW = 300.0  # HF publishes its limits per 5 minutes
MAX_WAIT = 300.0


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds a 429 (or 503) asks us to wait: `Retry-After` (seconds or an HTTP date), else
    the IETF RateLimit headers (`RateLimit: "api";r=0;t=55`, or `RateLimit-Reset: 55`)."""
    now = time.time() if now is None else now
    value = headers.get("Retry-After")
    if value:
        value = value.strip()
        seconds = ascii_digits(value)
        if seconds is not None:
            return min(float(seconds), MAX_WAIT)
        try:
            when = email.utils.parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError):
            when = None
        if when is not None:
            return min(max(0.0, when - now), MAX_WAIT)
    value = headers.get("RateLimit")
    if value:
        match = re.search(r"(?:^|;)[ \t]*t=([0-9]{1,19})", value)
        if match:
            return min(float(match.group(1)), MAX_WAIT)
    reset = ascii_digits((headers.get("RateLimit-Reset") or "").strip())
    if reset is not None:
        return min(float(reset), MAX_WAIT)
    return None


def backoff(attempt: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff for 5xx answers and timeouts: 0.5, 1, 2, 4 ... seconds, capped."""
    return min(cap, base * (2 ** attempt))


class RequestBudget:
    """At most `limit` requests in any window of five minutes (0: unlimited)."""

    def __init__(self, limit: int, window: float = WINDOW):
        self.limit = limit
        self.window = window
        self.sent: collections.deque[float] = collections.deque()

    def delay(self, now: float) -> float:
        """Seconds until one more request fits, given what was sent (pure but for pruning)."""
        while self.sent and self.sent[0] <= now - self.window:
            self.sent.popleft()
        if not self.limit or len(self.sent) < self.limit:
            return 0.0
        return self.sent[0] + self.window - now

    async def acquire(self) -> None:
        while (wait := self.delay(time.monotonic())) > 0:
            await asyncio.sleep(wait)
        self.sent.append(time.monotonic())


class Bandwidth:
    """A token bucket over bytes per second (None: unlimited), shared by every download from
    one upstream."""

    def __init__(self, rate: float | None):
        self.rate = rate
        self.allowance = rate or 0.0
        self.at = time.monotonic()

    async def consume(self, n: int) -> None:
        if not self.rate:
            return
        now = time.monotonic()
        self.allowance = min(self.rate, self.allowance + (now - self.at) * self.rate)
        self.at = now
        self.allowance -= n
        if self.allowance < 0:
            await asyncio.sleep(-self.allowance / self.rate)
