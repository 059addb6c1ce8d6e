"""Pull-through: a client asks for a repo or revision the catalog lacks, and the mirror
answers it from its upstream (issue 19; DESIGN.md section 4.2; `[mirror] pull_through`).

Metadata (repo info, tree, paths-info, refs, resolve's HEAD) comes from the upstream's info and
listing of the revision, fetched once for every client asking (single flight), under a
deadline inside the client's own (HF_HUB_ETAG_TIMEOUT, 10 s), and kept briefly: a branch's
commit for NAMED_TTL, a commit's listing longer. The revision a name resolved to is what the
answer's `X-Repo-Commit` pins, and the client's next requests name that commit.

Bytes come through a `Flight` (mirror/flights.py) per file: one upstream fetch into the
store's partial file, streamed to every client as it arrives, the tail held back until the
file verified. Each verified file is recorded in the catalog's blobs; once every file of the
revision is in the store, the snapshot is published like a synced one (served from the catalog
from then, seeded, fed to the index). `pull_through_complete = "snapshot"` fetches the rest of
the revision in the background after the first file asked for.

Failures say what they are: no answer in time is 504 (`UpstreamTimeout`), a bad answer 502,
never a "not found" the client would cache; the upstream's own RepoNotFound, EntryNotFound
and GatedRepo pass through. No Xet signal reaches the client: the info loses every `xet*`
field, the listing is rebuilt from the files alone, and our resolve headers carry none.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import os
import shutil
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from peer import hubs
from peer.errors import (
    Busy,
    EntryNotFound,
    GatedRepo,
    InsufficientSpace,
    Refused,
    RepoNotFound,
    RevisionNotFound,
    Unavailable,
    UpstreamTimeout,
    WeightswarmError,
)
from peer.hfformat import FileEntry, lfs_pointer_sha1
from peer.paths import is_commit
from peer.store import BlobStore

from .catalog import BlobRecord, Catalog
from .config import Config, PullThroughConfig
from .flights import Flight, fly
from .routes import HubCall
from .scan import SUSPICIOUS, Quarantined, needs_scan, scan
from .snapshots import publish
from .sync import Syncer, SyncSpec, entry_for, partial_key, validate
from .upstreams import RemoteFile
from .upstreams.huggingface import HuggingFace

log = logging.getLogger(__name__)

#: seconds a request waits for the upstream's metadata (the client's HEAD waits 10)
META_DEADLINE = 8.0
#: seconds a branch or tag's commit is believed before the upstream is asked again
NAMED_TTL = 60.0
#: seconds a commit's listing is kept (it cannot change), and how many are kept
COMMIT_TTL = 3600.0
MAX_REVISIONS = 512
#: seconds after a failed verification during which a client's Range is answered whole
#: (its earlier bytes may be the wrong ones: the HF client starts over on a 200)
TAINT_TTL = 600.0
#: times an upstream request without an answer, or with a 5xx or 429, is tried again
RETRIES = 2
#: files a background completion fetches at once
PARALLEL = 4


class BadGateway(Unavailable):
    """The upstream answered something the mirror refuses (a hostile listing, a lie)."""

    status = 502


class TooLarge(Refused):
    """The revision is larger than `pull_through_max_repo_size`."""


# -- the core: plain functions over data ------------------------------------------------------


@dataclass
class Revision:
    """An upstream commit the catalog lacks, as the upstream describes it."""

    hub: str
    repo_type: str
    repo_id: str
    commit: str
    files: tuple[RemoteFile, ...]
    #: the upstream's repo info at this commit, without Xet fields or siblings
    info: dict
    #: the branch or tag names that resolved to it (the refs it is published with)
    names: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.by_path = {f.path: f for f in self.files}
        self.entries = [listed_entry(f) for f in self.files]

    @property
    def gated(self) -> bool:
        return bool(self.info.get("gated"))

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def listed_entry(f: RemoteFile) -> FileEntry:
    """A listed file as the tree and paths-info show it: its upstream's oids (a regular file's
    sha256 is not known before its bytes are: it is not shown)."""
    git_sha1 = f.git_sha1 or (lfs_pointer_sha1(f.sha256, f.size) if f.lfs and f.sha256 else "")
    return FileEntry(f.path, f.size, f.sha256 or "", git_sha1, f.lfs)


def without_xet(value: Any) -> Any:
    """A JSON value with every `xet*` key dropped, at any depth (PROTOCOLS.md section 1.9)."""
    if isinstance(value, dict):
        return {k: without_xet(v) for k, v in value.items()
                if not (isinstance(k, str) and k.lower().startswith("xet"))}
    if isinstance(value, list):
        return [without_xet(v) for v in value]
    return value


def refusal(settings: PullThroughConfig, repo_id: str) -> str | None:
    """Why pull-through does not fetch this repo (its allow and deny lists), or None."""
    if not any(fnmatch.fnmatchcase(repo_id, glob) for glob in settings.allow):
        return "pull_through_allow does not list it"
    if any(fnmatch.fnmatchcase(repo_id, glob) for glob in settings.deny):
        return "pull_through_deny lists it"
    return None


def gateway_error(e: BaseException, upstream: str) -> BaseException:
    """What the client is told of an upstream failure: the upstream's own "not found" and
    "gated" as they are; no answer (or none in time) 504; any other refusal or bad answer
    502. Never a not-found for an upstream that could not say."""
    if isinstance(e, (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo, TooLarge,
                      InsufficientSpace, Quarantined)):
        return e
    if isinstance(e, TimeoutError):
        return UpstreamTimeout(f"pull-through: {upstream} did not answer in time; the mirror "
                               f"goes on asking: try again shortly")
    if isinstance(e, Unavailable) and e.status != 502:
        return e  # 503 (rate limited), 504
    if isinstance(e, Unavailable):
        if not e.http_status:  # no answer at all: refused, reset, timed out
            return UpstreamTimeout(f"pull-through: {e}")
        return e
    if isinstance(e, WeightswarmError):
        return BadGateway(f"pull-through: {upstream} answered what the mirror refuses: {e}")
    return e


def run_spec(revision: Revision) -> str:
    """The sync spec a pull-through's run is recorded under: the commit it fetched, as
    `mirror sync` takes it (a scrub's repair refetches a corrupt blob from it)."""
    prefix = "hf" if revision.repo_type == "model" else f"hf-{revision.repo_type}s"
    return f"{prefix}:{revision.repo_id}@{revision.commit}"


#: a pull-through run's sources until it ends (`mirror status` says "pull-through")
PULL_THROUGH_SOURCES = json.dumps({"upstream": 0, "mirrors": {}, "dropped": {},
                                   "via": "pull-through"})


def _prune(until: dict, most: int = 1024) -> None:
    """Drop what has expired (values are `until` or `(until, ...)`) once there are many."""
    if len(until) > most:
        now = time.monotonic()
        for key in [k for k, v in until.items() if (v[0] if isinstance(v, tuple) else v) <= now]:
            del until[key]


@dataclass
class _Run:
    started: asyncio.Task  # its id in sync_runs
    flights: int = 0
    fetched: int = 0
    bytes: int = 0
    error: str | None = None


# -- the shell ---------------------------------------------------------------------------------


class PullThrough:
    """Fetch on demand from the Hugging Face upstream (`mirror.upstreams.huggingface`): the
    revisions looked up, the files in flight, what failed lately. On the event loop;
    the catalog only through `on_catalog` (its one thread)."""

    def __init__(self, config: Config, store: BlobStore,
                 on_catalog: Callable[..., Awaitable[Any]], catalog: Catalog,
                 spawn: Callable[[Any, str], asyncio.Task],
                 count: Callable[[str, int], None] = lambda event, n: None):
        self.settings = config.mirror.pull_through
        up = config.mirror.upstreams[hubs.HUGGINGFACE]
        # Few retries: a client is waiting (META_DEADLINE), and it retries itself.
        self.upstream = HuggingFace(up.endpoint, token=up.token,
                                    requests_per_5min=up.requests_per_5min,
                                    bandwidth=up.bandwidth, retries=min(up.retries, RETRIES))
        self.store = store
        self.min_free = config.mirror.min_free
        self.scan_policy = config.mirror.scan_policy
        self.on_catalog = on_catalog
        self.catalog = catalog
        self.spawn = spawn
        self._revisions: OrderedDict[tuple, tuple[float, Revision]] = OrderedDict()
        self._lookups: dict[tuple, asyncio.Task] = {}
        self._flights: dict[str, Flight] = {}
        self._failed: dict[str, tuple[float, BaseException]] = {}
        self._tainted: dict[str, float] = {}
        self._completing: set[str] = set()
        self._runs: dict[str, _Run] = {}
        #: count(event, n): hit, miss, bytes, wait, upstream_error (the mirror's metrics)
        self.count = count

    async def close(self) -> None:
        await self.upstream.close()

    @property
    def in_flight(self) -> list[Flight]:
        return list(self._flights.values())

    def covers(self, call: HubCall) -> bool:
        return (self.settings.enabled and call.hub == hubs.HUGGINGFACE and bool(call.repo_id)
                and refusal(self.settings, call.repo_id) is None)

    # -- metadata --

    async def revision(self, call: HubCall) -> Revision:
        """The upstream's view of the call's revision: from what was looked up lately, else
        looked up (once for every client asking), waited for up to META_DEADLINE."""
        if await self.on_catalog(self._private, call):
            # Ours, and not to be shown: never replaced by, nor mixed with, the upstream's.
            raise RepoNotFound(call.repo_id, call.repo_type)
        name = call.revision or "main"
        key = (call.repo_type, call.repo_id, name)
        held = self._revisions.get(key)
        if held is not None and held[0] > time.monotonic():
            self.count("hit", 1)
            return held[1]
        self.count("miss", 1)
        task = self._lookups.get(key)
        if task is None:
            task = self._lookups[key] = self.spawn(self._guarded_lookup(key), "pull-through")
        try:
            async with asyncio.timeout(META_DEADLINE):
                outcome = await asyncio.shield(task)
        except TimeoutError:
            raise gateway_error(TimeoutError(), self.upstream.name) from None
        if isinstance(outcome, BaseException):
            raise outcome.with_traceback(None)
        return outcome

    def _private(self, call: HubCall) -> bool:
        try:
            return self.catalog.repo(call.hub, call.repo_type, call.repo_id).access == "private"
        except LookupError:
            return False

    async def _guarded_lookup(self, key: tuple) -> Revision | BaseException:
        """A loop of the service must not raise: the outcome is the error, for every waiter."""
        try:
            return await self._look_up(*key)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # every failure becomes the answer; the log says which
            self.count("upstream_error", 1)
            log.warning("pull-through: %s@%s: %s", key[1], key[2], e)
            return gateway_error(e, self.upstream.name)
        finally:
            self._lookups.pop(key, None)

    async def _look_up(self, repo_type: str, repo_id: str, name: str) -> Revision:
        info = await self.upstream.info(repo_type, repo_id, name)
        commit = info["sha"]
        if is_commit(name) and commit != name:
            raise BadGateway(f"pull-through: {self.upstream.name} answered {repo_id}@{name[:12]}"
                             f" with another commit, {commit[:12]}")
        held = self._revisions.get((repo_type, repo_id, commit))
        if held is not None:
            revision = held[1]
        else:
            listed = await self.upstream.list_files(repo_type, repo_id, commit)
            files = tuple(validate(listed))
            revision = Revision(hubs.HUGGINGFACE, repo_type, repo_id, commit, files,
                                without_xet({k: v for k, v in info.items() if k != "siblings"}))
            cap = self.settings.max_repo_size
            if cap is not None and revision.size > cap:
                raise TooLarge(f"pull-through: {repo_id}@{commit[:12]} is {revision.size} bytes, "
                              f"more than pull_through_max_repo_size ({cap})")
            log.info("pull-through: %s@%s is %s (%d files, %d bytes)", repo_id, name,
                     commit[:12], len(files), revision.size)
        now = time.monotonic()
        self._keep((repo_type, repo_id, commit), revision, now + COMMIT_TTL)
        if not is_commit(name):
            revision.names.add(name)
            self._keep((repo_type, repo_id, name), revision, now + NAMED_TTL)
        return revision

    def _keep(self, key: tuple, revision: Revision, until: float) -> None:
        self._revisions[key] = (until, revision)
        self._revisions.move_to_end(key)
        while len(self._revisions) > MAX_REVISIONS:
            self._revisions.popitem(last=False)

    async def refs(self, call: HubCall) -> dict:
        await self.revision(call)  # the repo exists upstream, and is not refused
        try:
            return without_xet(await self.upstream.refs(call.repo_type, call.repo_id))
        except Exception as e:
            raise gateway_error(e, self.upstream.name) from None

    # -- bytes --

    def flight(self, revision: Revision, f: RemoteFile) -> Flight:
        """The file's flight: the one under way, or a new one (unless it failed lately)."""
        key = partial_key(self.upstream.name, revision.repo_id, revision.commit, f)
        flight = self._flights.get(key)
        if flight is not None:
            return flight
        failed = self._failed.get(key)
        if failed is not None and failed[0] > time.monotonic():
            raise failed[1].with_traceback(None)
        self._check_space(f)
        flight = self._flights[key] = Flight(f, key)
        self.spawn(self._fly(revision, flight), "pull-through fetch")
        return flight

    def tainted(self, flight: Flight) -> bool:
        """Bytes of this file failed verification lately: a client may hold some."""
        return flight.failed_once or self._tainted.get(flight.key, 0) > time.monotonic()

    def _check_space(self, f: RemoteFile) -> None:
        free = shutil.disk_usage(self.store.root).free - self.min_free
        if f.size > free:
            raise InsufficientSpace(f.size, max(free, 0), str(self.store.root),
                                    reserve="mirror.min_free")

    async def _fly(self, revision: Revision, flight: Flight) -> None:
        run = await self._run_begins(revision)
        error = None
        try:
            await self._fetch(revision, flight)
        except asyncio.CancelledError:
            flight.finish(error=Unavailable("the mirror is stopping"))
            raise
        except Exception as e:
            error = gateway_error(e, self.upstream.name)
            flight.finish(error=error)
            self.count("upstream_error", 1)
            if not isinstance(e, Busy):  # another process's fetch: not the file's fault
                self._failed[flight.key] = (time.monotonic() + self.settings.failure_ttl,
                                            error)
                _prune(self._failed)
            log.warning("pull-through: %s %s: %s", revision.repo_id, flight.file.path, e)
        finally:
            self.count("wait", flight.waits)
            self.count("bytes", flight.fetched)
            run.fetched += flight.stored
            run.bytes += flight.fetched
            if flight.failed_once:
                self._tainted[flight.key] = time.monotonic() + TAINT_TTL
                _prune(self._tainted)
            self._flights.pop(flight.key, None)
        kept = flight.stored or flight.refusal is not None  # in the store either way
        published = kept and await self._publish_if_whole(revision)
        await self._run_ends(revision, run, published, error)

    async def _fetch(self, revision: Revision, flight: Flight) -> None:
        spec = SyncSpec("hf", revision.repo_type, revision.repo_id, revision.commit,
                        hub=revision.hub)
        syncer = Syncer(self.catalog, self.store, self.upstream)
        f = flight.file

        # Streamed: its clients read the file as it arrives, and wait only for its check
        digests = await fly(
            flight, self.store, revision.repo_id,
            lambda: syncer._writer(spec, revision.commit, f, streamed=True),
            lambda writer, progress, answered: syncer._transfer(
                spec, revision.commit, f, writer, progress, answered, self.upstream),
            vet=lambda writer: self._vet(f, writer))
        if digests is not None:
            await self.on_catalog(self.catalog.put_blob, digests)
        if flight.refusal is not None:
            raise flight.refusal
        log.info("pull-through: %s %s verified (%d bytes)", revision.repo_id, f.path, f.size)

    async def _vet(self, f: RemoteFile, writer) -> BaseException | None:
        """With a scan policy other than "flag": a pickle-based file the scanner flags is not
        given to the client (its verdict is recorded; publication applies the policy)."""
        if self.scan_policy == "flag" or not needs_scan(f.path):
            return None
        verdict = await asyncio.to_thread(scan, writer.tmp_path, f.path)
        await self.on_catalog(self.catalog.put_scan, writer.verify().sha256, verdict)
        return Quarantined(f.path) if verdict.status == SUSPICIOUS else None

    async def kept_back(self, f: RemoteFile) -> BaseException | None:
        """A stored file's scan verdict under a policy other than "flag": why not to serve it."""
        if self.scan_policy == "flag" or not f.sha256:
            return None
        flagged = await self.on_catalog(self.catalog.suspicious, f.sha256)
        return Quarantined(f.path) if flagged else None

    # -- runs: what `mirror status` shows --

    async def _run_begins(self, revision: Revision) -> _Run:
        """The revision's run in the catalog's sync runs: one while any of its files is in
        flight."""
        run = self._runs.get(revision.commit)
        if run is None:
            async def start() -> int:
                return await self.on_catalog(self.catalog.start_run, run_spec(revision),
                                             os.getpid(), time.time(), PULL_THROUGH_SOURCES)

            run = self._runs[revision.commit] = _Run(self.spawn(start(), "pull-through run"))
        run.flights += 1
        await asyncio.shield(run.started)
        return run

    async def _run_ends(self, revision: Revision, run: _Run, published: bool,
                        error: BaseException | None) -> None:
        run.flights -= 1
        if error is not None:
            run.error = str(error)
        if run.flights or self._runs.get(revision.commit) is not run:
            return
        del self._runs[revision.commit]
        status = "ok" if published else "failed" if run.error else "partial"
        sources = json.dumps({"upstream": run.bytes, "mirrors": {}, "dropped": {},
                              "via": "pull-through"})
        await self.on_catalog(
            lambda: self.catalog.finish_run(
                run.started.result(), time.time(), status=status, repo_id=revision.repo_id,
                commit=revision.commit, files=len(revision.files), fetched=run.fetched,
                nbytes=run.bytes, error=run.error, sources=sources))

    def complete(self, revision: Revision) -> None:
        """With `pull_through_complete = "snapshot"`: fetch the revision's other files too."""
        if self.settings.complete != "snapshot" or revision.commit in self._completing:
            return
        self._completing.add(revision.commit)
        self.spawn(self._complete(revision), "pull-through completion")

    async def _complete(self, revision: Revision) -> None:
        gate = asyncio.Semaphore(PARALLEL)

        async def one(f: RemoteFile) -> None:
            async with gate:
                if await self.on_catalog(self._known, f) is not None:
                    return
                try:
                    await asyncio.shield(self.flight(revision, f).result)
                except Exception as e:  # the flight logged it; the rest goes on
                    log.debug("pull-through: %s: %s", f.path, e)

        try:
            await asyncio.gather(*(one(f) for f in revision.files))
        finally:
            self._completing.discard(revision.commit)

    # -- publication --

    def _known(self, f: RemoteFile) -> BlobRecord | None:
        """On the catalog's thread: the stored blob's record for a listed file, if any."""
        record = self.catalog.blob(f.sha256) if f.lfs and f.sha256 else \
            self.catalog.blob_by_git_sha1(f.git_sha1) if f.git_sha1 else None
        if record is None or not self.store.has(record.sha256) or record.size != f.size:
            return None
        return record

    def _whole(self, revision: Revision) -> list[FileEntry] | None:
        """On the catalog's thread: every file's entry, if the store holds them all."""
        entries = []
        for f in revision.files:
            known = self._known(f)
            if known is None:
                return None
            entries.append(entry_for(f, known.sha256, known.git_sha1))
        return entries

    async def _publish_if_whole(self, revision: Revision) -> bool:
        try:
            entries = await self.on_catalog(self._whole, revision)
            if entries is None:
                return False
            refs = []
            for name in sorted(revision.names):
                kind = await self.upstream.ref_kind(revision.repo_type, revision.repo_id, name)
                refs.append((kind, name))
            await self.on_catalog(
                lambda: publish(
                    self.catalog, self.store, hub=revision.hub, repo_type=revision.repo_type,
                    repo_id=revision.repo_id, commit=revision.commit, files=entries, refs=refs,
                    access="private" if revision.info.get("private") else
                    "gated" if revision.gated else None,
                    title=f"Pulled through from {self.upstream.name}",
                    verified_by={f.path: f.verified_by for f in revision.files},
                    scan_policy=self.scan_policy))
            return True
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the next file's arrival tries again
            log.warning("pull-through: %s@%s not published: %s", revision.repo_id,
                        revision.commit[:12], e)
            return False

