"""A mirror seeds every large public blob it holds (DESIGN.md section 4, flow 4).

`Seeder` owns the process's libtorrent session. It follows the catalog: on start, and whenever
the catalog changes (an import from the command line, a sync, an `rm`), it adds the torrents of
blobs it should seed and drops the others, each added as complete and verified (the store
checked every byte at ingest) so nothing is hashed again. It steers libtorrent's upload limit
so that one egress budget (mirror/egress.py) covers BitTorrent and HTTP together, runs the
periodic blake3 scrub, and mends blobs found corrupt from the swarm.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from peer.atomic import place
from peer.hashing import hash_file
from peer.service import Loops
from peer.store import BlobStore
from peer.torrent import info_hash as compute_info_hash

from .catalog import BlobRecord, Catalog
from .distribution import blob_info
from .egress import TICK, Egress
from .scrub import Finding, quarantine, scrub, take_out

log = logging.getLogger(__name__)

#: How often the catalog's version is looked at for new or removed blobs, seconds.
FOLLOW_EVERY = 1.0
#: Torrents added per turn of the event loop while catching up with the catalog.
ADD_BATCH = 500


class Seeder:
    def __init__(self, *, session, store: BlobStore, repair_dir: Path, egress: Egress,
                 trackers: list[str], on_catalog: Callable[..., Awaitable[Any]],
                 catalog: Catalog, catalog_version: Callable[[], int], loops: Loops,
                 scrub_interval: float = 0, metrics=None,
                 refetch: Callable[[str], bool] | None = None, quarantine: bool = False,
                 private_trackers: list[str] | None = None):
        self.session = session
        #: the trackers with this mirror's own private-swarm key (`/announce/<key>`): blobs
        #: of gated and private repos are seeded in private swarms (`private: 1`, so never
        #: over DHT, PEX or local discovery), announced there only; None: not seeded at all
        self.private_trackers = private_trackers
        #: sha256 of what is seeded in a private swarm
        self.private: set[str] = set()
        self.store = store
        self.repair_dir = repair_dir
        self.egress = egress
        self.trackers = list(trackers)
        self._on_catalog = on_catalog
        self.catalog = catalog
        self._catalog_version = catalog_version
        #: `scan_policy = "quarantine"`: what the pickle scanner flagged is not seeded
        self.quarantine = quarantine
        #: the service's background loops: ours run there
        self.loops = loops
        self.scrub_interval = scrub_interval
        self.metrics = metrics
        #: fetches a blob again from its upstream (blocking; run in a thread)
        self.refetch = refetch
        #: how long a repair waits for the swarm before asking the upstream, seconds
        self.upstream_after = 60.0
        #: sha256 → info-hash of what is seeded
        self.seeding: dict[str, str] = {}
        #: sha256 → the task mending it
        self.repairs: dict[str, asyncio.Task] = {}
        self.repaired: list[str] = []
        self._tasks: list[asyncio.Task] = []
        self._followed: int | None = None
        self._sent_bt = 0
        self._limit_set = -1
        self._reconciling = asyncio.Lock()

    # -- life ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Seed what the catalog holds now, then follow it (the session is started already)."""
        if self.egress.limited:
            self.session.limit_every_peer()
        await self.reconcile()
        self._tasks = [self.loops.spawn(self._follow(), "following the catalog"),
                       self.loops.spawn(self._steer(), "egress steering")]
        if self.scrub_interval > 0:
            self._tasks.append(self.loops.spawn(self._scrub_periodically(), "scrub"))
        log.info("seeding %d blobs over BitTorrent on port %d, announcing to %s",
                 len(self.seeding), self.session.port, ", ".join(self.trackers) or "no tracker")

    async def close(self) -> None:
        """Stop following, steering, scrubbing and repairing (the session closes after)."""
        await self.loops.stop([*self._tasks, *self.repairs.values()])

    # -- following the catalog --------------------------------------------------------------

    async def reconcile(self) -> None:
        """Seed what the catalog says we hold, drop what it no longer does, mend what it marks
        corrupt."""
        async with self._reconciling:
            self._followed = self._catalog_version()
            wanted = await self._wanted()
            corrupt = await self._on_catalog(self.catalog.corrupt_blobs)
            for sha256 in [s for s in self.seeding
                           if wanted.get(s, (None, None))[1] != (s in self.private)]:
                # gone, or gone from public to private (or back): another info-hash
                if sha256 not in self.repairs:
                    self.session.remove(self.seeding.pop(sha256))
                    self.private.discard(sha256)
            added = 0
            for record, private in wanted.values():
                if record.sha256 in self.seeding or record.sha256 in self.repairs:
                    continue
                self._seed(record, private)
                added += 1
                if added % ADD_BATCH == 0:
                    await asyncio.sleep(0)
            if added:
                log.info("seeding %d more blobs (%d in all)", added, len(self.seeding))
            for record, reason in corrupt:
                if record.sha256 not in self.repairs:
                    self.repairs[record.sha256] = self.loops.spawn(
                        self._repair(record, reason), f"repair {record.sha256[:12]}")

    async def _wanted(self) -> dict[str, tuple[BlobRecord, bool]]:
        """sha256 → (record, in a private swarm) of every blob to seed."""
        wanted = {r.sha256: (r, False)
                  for r in await self._on_catalog(self.catalog.seedable_blobs, self.quarantine)}
        if self.private_trackers is not None:
            for r in await self._on_catalog(
                    lambda: self.catalog.seedable_blobs(self.quarantine, private=True)):
                wanted[r.sha256] = (r, True)
        return wanted

    def _seed(self, record: BlobRecord, private: bool = False) -> None:
        path = self.store.path_for(record.sha256)
        info = blob_info(record, private=private)
        self.seeding[record.sha256] = self.session.add(
            info, path.parent, trackers=self.private_trackers if private else self.trackers,
            have_all=True)
        if private:
            self.private.add(record.sha256)

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(FOLLOW_EVERY)
            try:
                if self._catalog_version() != self._followed:
                    await self.reconcile()
            except Exception:
                log.exception("following the catalog failed; trying again")

    # -- one egress budget ------------------------------------------------------------------

    async def _steer(self) -> None:
        """Read what libtorrent sent, debit it from the budget, and set its next limit."""
        while True:
            await asyncio.sleep(TICK if self.egress.limited else 1.0)
            counters = await self.session.stats()
            sent = counters.get("net.sent_payload_bytes", 0)
            delta, self._sent_bt = sent - self._sent_bt, sent
            self.egress.debit(delta)
            if self.metrics is not None:
                self.metrics.egress(delta, "bittorrent")
                self.metrics.bt_peers.set(counters.get("peer.num_peers_connected", 0))
                self.metrics.bt_torrents.set(len(self.seeding))
            if self.egress.limited:
                limit = self.egress.bittorrent_limit()
                if abs(limit - self._limit_set) > 0.05 * self.egress.rate:
                    self.session.set_upload_limit(limit)
                    self._limit_set = limit

    # -- scrub and repair -------------------------------------------------------------------

    async def scrub_now(self) -> list[Finding]:
        """Re-hash every seeded or served blob with blake3; take the bad ones out of service."""
        records = [r for r in await self._on_catalog(self.catalog.blobs)
                   if r.sha256 not in self.repairs]
        started = time.monotonic()
        found_bad = await asyncio.to_thread(scrub, self.store, records)
        for finding in found_bad:
            await self._on_catalog(quarantine, self.store, self.catalog, self.repair_dir,
                                   finding)
        log.info("scrubbed %d blobs in %.1fs: %d corrupt", len(records),
                 time.monotonic() - started, len(found_bad))
        if self.metrics is not None:
            self.metrics.scrubbed.inc(len(records))
            self.metrics.corrupt_found.inc(len(found_bad))
        if found_bad:
            await self.reconcile()
        return found_bad

    async def _scrub_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.scrub_interval)
            try:
                await self.scrub_now()
            except Exception:
                log.exception("scrub failed; trying again at the next interval")

    async def _repair(self, record: BlobRecord, reason: str) -> None:
        """Mend one blob; should that fail, the next look at the catalog tries again (the blob
        stays marked corrupt, out of service, meanwhile)."""
        try:
            await self._mend_blob(record, reason)
        except Exception:
            log.exception("repairing blob %s failed; trying again in %.0fs", record.sha256,
                          self.upstream_after)
            await asyncio.sleep(self.upstream_after)
        finally:
            self.repairs.pop(record.sha256, None)
        await self.reconcile()

    async def _mend_blob(self, record: BlobRecord, reason: str) -> None:
        """Fetch the bad pieces of a blob from the swarm (or the whole blob from its upstream),
        check the whole blob, put it back."""
        sha256 = record.sha256
        old = self.seeding.pop(sha256, None)
        private = sha256 in self.private
        self.private.discard(sha256)
        if old is not None:
            self.session.remove(old)
        # Marked by another process (`mirror scrub`), or moved already: either way here.
        target = take_out(self.store, self.repair_dir, sha256)
        if record.piece_length:
            log.info("repairing blob %s (%s) from the swarm", sha256, reason)
            key = self.session.add(blob_info(record, private=private), self.repair_dir,
                                   trackers=self.private_trackers if private else self.trackers)
            source = await self._mend(record, key, target)
            self.session.remove(key)
        else:  # small: no torrent, only its upstream has it
            log.info("repairing blob %s (%s) from its upstream", sha256, reason)
            wait = self.upstream_after
            while not (self.refetch and await asyncio.to_thread(self.refetch, sha256)):
                await asyncio.sleep(wait)
                wait = min(wait * 2, 3600)
            source = "upstream"
        if source == "swarm":
            place(target, self.store.path_for(sha256), mode=0o444)
            await self._on_catalog(self.catalog.clear_corrupt, sha256)
        else:
            target.unlink(missing_ok=True)  # the upstream's copy is in the store already
        self.repaired.append(sha256)
        log.info("blob %s repaired from the %s and verified", sha256, source)
        if self.metrics is not None:
            self.metrics.repaired.inc()

    async def _mend(self, record: BlobRecord, key: str, target: Path) -> str:
        """Wait for the swarm to supply the wrong pieces; when it has not after a while, and a
        sync brought the blob, fetch it again from that upstream. Returns where it came from."""
        wait = self.upstream_after
        finished = asyncio.create_task(self._from_swarm(record, key, target))
        try:
            while True:
                done, _ = await asyncio.wait([finished], timeout=wait)
                if done:
                    finished.result()
                    return "swarm"
                if self.refetch is not None:
                    log.info("blob %s: no peer mended it in %.0fs; asking its upstream",
                             record.sha256, wait)
                    if await asyncio.to_thread(self.refetch, record.sha256):
                        return "upstream"
                wait = min(wait * 2, 3600)
        finally:
            finished.cancel()
            await asyncio.wait([finished])

    async def _from_swarm(self, record: BlobRecord, key: str, target: Path) -> None:
        while True:
            await self.session.finished(key)
            digests = await asyncio.to_thread(hash_file, target, lfs=True)
            if digests.sha256 == record.sha256 and digests.blake3 == record.blake3:
                return
            log.warning("blob %s still wrong after the swarm's pieces: checking again",
                        record.sha256)
            self.session.force_recheck(key)

    # -- reporting --------------------------------------------------------------------------

    def swarm(self, sha256: str) -> tuple[int, int, int] | None:
        """(seeders, leechers as the tracker last said, -1 if not yet; peers connected to
        this mirror) of a blob seeded, None if it is not: the repo page's Swarm column."""
        key = self.seeding.get(sha256)
        try:
            s = self.session.status(key) if key else None
        except KeyError:
            return None
        return (s.swarm_complete, s.swarm_incomplete, s.peers) if s else None

    def torrents(self) -> list[dict]:
        rows = []
        for sha256, key in sorted(self.seeding.items()):
            if sha256 in self.private:
                continue  # its info-hash is what keeps others out of a private swarm
            s = self.session.status(key)
            rows.append({"sha256": sha256, "info_hash": key, "state": s.state,
                         "peers": s.peers, "uploaded": s.uploaded,
                         "upload_rate": s.upload_rate})
        for sha256 in sorted(self.repairs):
            rows.append({"sha256": sha256, "info_hash": None, "state": "repairing",
                         "peers": 0, "uploaded": 0, "upload_rate": 0})
        return rows


def info_hash_of(record: BlobRecord) -> str | None:
    info = blob_info(record, private=False)
    return compute_info_hash(info) if info else None
