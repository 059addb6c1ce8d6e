"""The egress budget (mirror/egress.py) on a virtual clock: HTTP takes from a token bucket,
BitTorrent's sent bytes are debited from it, and libtorrent's limit is the share HTTP leaves.

`Egress` reads its clock through the `clock` it is given and waits with `asyncio.sleep`; here
both are a virtual time that moves only when every task is asleep, so these tests are exact and
take milliseconds, whatever the machine."""

from __future__ import annotations

import asyncio
import heapq
import itertools

import pytest

from mirror import egress as egress_module
from mirror.egress import TICK, Egress

MiB = 1024 * 1024
RATE = 10 * MiB

_real_sleep = asyncio.sleep


class VirtualTime:
    """A clock and an `asyncio.sleep` for it: `run_until(t)` wakes sleepers in time order,
    setting the clock to each one's wake-up time, once all tasks are parked."""

    def __init__(self, start: float = 1000.0):
        self.now = start
        self._timers: list = []
        self._order = itertools.count()
        self.sleeps = 0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self.now + max(0.0, seconds), next(self._order), future))
        await future

    async def _settle(self) -> None:
        for _ in range(5):  # a woken task runs on to its next sleep
            await _real_sleep(0)

    async def run_until(self, end: float) -> None:
        while True:
            await self._settle()
            if not self._timers or self._timers[0][0] > end:
                break
            when, _, future = heapq.heappop(self._timers)
            self.now = when
            if not future.done():  # a cancelled sleeper's is
                future.set_result(None)
        self.now = max(self.now, end)
        await self._settle()

    async def run_for(self, seconds: float) -> None:
        await self.run_until(self.now + seconds)


class _AsyncioOn:
    """The asyncio module as mirror/egress.py sees it: all of it, but sleeping in `time`."""

    def __init__(self, time: VirtualTime):
        self.sleep = time.sleep

    def __getattr__(self, name: str):
        return getattr(asyncio, name)


@pytest.fixture
def vt(monkeypatch):
    time = VirtualTime()
    monkeypatch.setattr(egress_module, "asyncio", _AsyncioOn(time))
    return time


async def _cancel(tasks) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _worst_excess(events: list[tuple[float, int]], rate: int) -> float:
    """Over every stretch from one event to a later one (both included): bytes in it minus
    rate × its length; the largest such excess."""
    worst = float("-inf")
    for i, (start, _) in enumerate(events):
        total = 0
        for when, n in events[i:]:
            total += n
            worst = max(worst, total - rate * (when - start))
    return worst


async def test_unlimited_never_waits_and_leaves_libtorrent_unlimited(vt):
    egress = Egress(None, clock=vt)
    assert not egress.limited
    for n in (1, egress.chunk, 1 << 40):
        await asyncio.wait_for(egress.take(n), 1)
    egress.debit(1 << 40)
    await asyncio.wait_for(egress.take(1 << 30), 1)
    assert vt.sleeps == 0
    assert egress.bittorrent_limit() == 0


async def test_http_alone_never_takes_more_than_rate_times_elapsed_plus_burst_and_a_chunk(vt):
    egress = Egress(RATE, clock=vt)
    assert egress.limited and 0 < egress.chunk <= egress.burst
    await vt.run_for(5)  # idle: the bucket fills up to one burst, no more
    start = vt.now
    grants: list[tuple[float, int]] = [(start, 0)]
    taken = [0, 0, 0]

    async def sender(i: int, sizes) -> None:
        for n in itertools.cycle(sizes):
            await egress.take(n)
            grants.append((vt.now, n))
            taken[i] += n
            await _real_sleep(0)  # if take() never waited, the clock would still run

    sizes = ([egress.chunk], [egress.chunk // 3, egress.chunk], [1, 4096, egress.chunk // 2])
    tasks = [asyncio.create_task(sender(i, s)) for i, s in enumerate(sizes)]
    await vt.run_for(10)
    await _cancel(tasks)

    total = sum(taken)
    assert total > 0
    assert total <= RATE * (vt.now - start) + egress.burst + egress.chunk
    assert _worst_excess(grants, RATE) <= egress.burst + egress.chunk


async def test_bittorrent_debits_make_http_wait_until_the_debt_is_paid(vt):
    egress = Egress(RATE, clock=vt)
    start = vt.now
    egress.debit(3 * RATE)  # libtorrent sent three seconds' worth
    granted = []

    async def http() -> None:
        await egress.take(egress.chunk)
        granted.append(vt.now)

    task = asyncio.create_task(http())
    debt_paid = start + (3 * RATE - egress.burst) / RATE
    await vt.run_until(debt_paid - 0.01)
    assert not granted, "HTTP was granted bytes while BitTorrent's debt was unpaid"
    await vt.run_until(debt_paid + 0.1)
    assert granted and granted[0] >= debt_paid - 1e-9
    await _cancel([task])


async def test_http_and_steered_bittorrent_together_stay_within_the_budget(vt):
    """The seeder's loop (mirror/seeding.py `_steer`) against two HTTP streams: each tick
    libtorrent sends what its limit allows, that is debited, and its next limit is set."""
    egress = Egress(RATE, clock=vt)
    start = vt.now
    events: list[tuple[float, int]] = [(start, 0)]
    by = {"bittorrent": 0, "http": 0}
    limits = []

    async def bittorrent() -> None:
        limit = egress.bittorrent_limit()
        while True:
            await vt.sleep(TICK)
            sent = int(limit * TICK)  # libtorrent keeps to the limit it was given
            egress.debit(sent)
            events.append((vt.now, sent))
            by["bittorrent"] += sent
            limit = egress.bittorrent_limit()
            limits.append(limit)

    async def http() -> None:
        while True:
            await egress.take(egress.chunk)
            events.append((vt.now, egress.chunk))
            by["http"] += egress.chunk
            await _real_sleep(0)

    tasks = [asyncio.create_task(bittorrent()), asyncio.create_task(http()),
             asyncio.create_task(http())]
    await vt.run_for(10)
    await _cancel(tasks)

    assert by["bittorrent"] > 0 and by["http"] > 0, by
    # one burst, one HTTP chunk and the tick of BitTorrent not yet debited (egress.py)
    slack = egress.burst + egress.chunk + RATE * TICK
    assert _worst_excess(events, RATE) <= slack, by
    assert all(RATE // 2 <= limit <= RATE for limit in limits), (min(limits), max(limits))


async def test_bittorrent_gets_the_whole_rate_when_http_is_idle(vt):
    egress = Egress(RATE, clock=vt)
    assert egress.bittorrent_limit() == RATE
    await vt.run_for(5)
    assert egress.bittorrent_limit() == RATE
    egress.debit(RATE)  # BitTorrent's own bytes do not make HTTP busy
    assert egress.bittorrent_limit() == RATE


async def test_bittorrent_gets_at_least_half_while_http_is_busy_and_all_once_it_is_idle(vt):
    egress = Egress(RATE, clock=vt)

    async def http() -> None:
        while True:
            await egress.take(egress.chunk)
            await _real_sleep(0)

    task = asyncio.create_task(http())
    seen = []
    for _ in range(30):
        await vt.run_for(0.1)
        seen.append(egress.bittorrent_limit())
    await _cancel([task])
    assert all(RATE // 2 <= limit <= RATE for limit in seen), seen
    assert seen[-1] < RATE, "HTTP taking the whole rate leaves libtorrent less than all of it"

    await vt.run_for(60)  # HTTP long idle
    assert egress.bittorrent_limit() == RATE


async def test_bittorrent_gets_at_least_half_while_http_waits(vt):
    egress = Egress(RATE, clock=vt)
    await egress.take(egress.chunk)
    egress.debit(10 * RATE)
    waiter = asyncio.create_task(egress.take(egress.chunk))
    await vt.run_for(1)
    assert not waiter.done()
    assert RATE // 2 <= egress.bittorrent_limit() <= RATE
    await _cancel([waiter])


async def test_concurrent_http_streams_each_get_bytes(vt):
    egress = Egress(RATE, clock=vt)
    taken = [0, 0, 0]

    async def sender(i: int) -> None:
        while True:
            await egress.take(egress.chunk)
            taken[i] += egress.chunk
            await _real_sleep(0)  # as a response's sendfile would

    tasks = [asyncio.create_task(sender(i)) for i in range(3)]
    await vt.run_for(1)  # past the first burst, which each stream may share
    taken[:] = [0, 0, 0]
    await vt.run_for(10)
    await _cancel(tasks)
    assert all(taken), f"bytes each stream got in 10 s: {taken}"
