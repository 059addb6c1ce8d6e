"""Running syncs: from the CLI, or on the mirror's schedule while it serves. Each run is
recorded in the catalog (`weightswarm mirror status` lists them), with the reason when it
failed."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from peer import hubs
from peer.errors import WeightswarmError
from peer.store import BlobStore

from .catalog import Catalog
from .config import Config
from .network import network_for, sources_record
from .sync import Syncer, SyncResult, SyncSpec, parse_spec
from .upstreams import Upstream
from .upstreams.huggingface import HuggingFace
from .upstreams.kaggle import Kaggle, stored_credentials
from .upstreams.local import LocalFolder
from .upstreams.modelscope import ModelScope

log = logging.getLogger(__name__)


#: the upstream class of each hub a spec's short form names
_UPSTREAMS = {"hf": (hubs.HUGGINGFACE, HuggingFace), "ms": (hubs.MODELSCOPE, ModelScope),
              "kaggle": (hubs.KAGGLE, Kaggle)}


def upstream_for(config: Config, spec: SyncSpec) -> Upstream:
    if spec.kind == "local":
        return LocalFolder(Path(spec.endpoint))
    if spec.kind == "mirror":
        return HuggingFace(spec.endpoint, name=spec.endpoint, setting="the mirror: spec's URL")
    hub, cls = _UPSTREAMS[spec.kind]
    settings = config.mirror.upstreams[hub]
    token = settings.token
    if token is None and hub == hubs.KAGGLE:
        token = stored_credentials()  # ~/.kaggle, as kagglehub reads it
    return cls(settings.endpoint, token=token, requests_per_5min=settings.requests_per_5min,
               bandwidth=settings.bandwidth, retries=settings.retries)


@dataclass
class Outcome:
    results: list[SyncResult]
    failures: list[tuple[SyncSpec, WeightswarmError]]


async def run_specs(config: Config, specs: list[SyncSpec], *, parallel: int = 4,
                    progress: bool = False) -> Outcome:
    catalog, store = Catalog(config.catalog_path), BlobStore(config.store_dir)
    outcome = Outcome([], [])
    network = network_for(config)
    try:
        for spec in specs:
            run_id = catalog.start_run(str(spec), os.getpid(), time.time())
            upstream = upstream_for(config, spec)
            try:
                syncer = Syncer(catalog, store, upstream, parallel=parallel,
                                min_free=config.mirror.min_free, progress=progress,
                                archive=config.mirror.archive, network=network,
                                scan_policy=config.mirror.scan_policy)
                results = await syncer.sync(spec)
            except WeightswarmError as e:
                # Recorded even on a full disk (the catalog gives up its reserve for it).
                catalog.recording(catalog.finish_run, run_id, time.time(), status="failed",
                                  error=str(e))
                outcome.failures.append((spec, e))
                log.error("sync %s failed: %s", spec, e)
                continue
            except BaseException:
                with contextlib.suppress(WeightswarmError):  # what interrupted us goes on
                    catalog.recording(catalog.finish_run, run_id, time.time(),
                                      status="failed", error="interrupted")
                raise
            finally:
                await upstream.close()
            last = results[-1] if results else None
            catalog.finish_run(
                run_id, time.time(), status="ok",
                repo_id=", ".join(r.repo_id for r in results)[:1000] or None,
                commit=last.commit if last and len(results) == 1 else None,
                files=sum(r.files for r in results), fetched=sum(r.fetched for r in results),
                nbytes=sum(r.bytes_fetched for r in results), sources=sources_record(results),
            )
            outcome.results.extend(results)
    finally:
        catalog.close()
    return outcome


def refetch_blob(config: Config, sha256: str) -> bool:
    """Fetch one blob again from the upstream a sync brought it from: the way to mend a
    corrupt blob that no peer in the swarm holds. Runs in a thread with its own event loop and
    catalog connection; True once the store holds verified bytes again."""
    return asyncio.run(_refetch(config, sha256))


async def _refetch(config: Config, sha256: str) -> bool:
    catalog, store = Catalog(config.catalog_path), BlobStore(config.store_dir)
    try:
        for hub, repo_type, repo_id, commit, path in catalog.holders(sha256):
            text = catalog.sync_spec_for(repo_id)
            if text is None:
                continue
            spec = dataclasses.replace(parse_spec(text), hub=hub, repo_type=repo_type,
                                       repo_id=repo_id, revision=commit)
            upstream = upstream_for(config, spec)
            try:
                if await _refetch_one(catalog, store, config, upstream, spec, path, sha256):
                    log.info("blob %s fetched again from %s (%s@%s %s)", sha256,
                             upstream.name, repo_id, commit[:12], path)
                    return True
            except WeightswarmError as e:
                log.warning("blob %s: %s could not give it again: %s", sha256, spec, e)
            finally:
                await upstream.close()
        return False
    finally:
        catalog.close()


async def _refetch_one(catalog: Catalog, store: BlobStore, config: Config, upstream: Upstream,
                       spec: SyncSpec, path: str, sha256: str) -> bool:
    """One file of one snapshot (`spec.revision` is its commit) from the upstream again."""
    key = spec.revision
    if upstream.derives_commit:
        # No commits upstream (Kaggle): the version is the tag that names this snapshot.
        repo = catalog.repo(spec.hub, spec.repo_type, spec.repo_id)
        tags = [r.name for r in catalog.refs(repo) if r.kind == "tag" and r.commit == key]
        if not tags:
            return False
        key = await upstream.resolve(spec.repo_type, spec.repo_id, tags[0])
    listed = {f.path: f for f in await upstream.list_files(spec.repo_type, spec.repo_id, key)}
    remote = listed.get(path)
    if remote is None or (remote.sha256 is not None and remote.sha256 != sha256):
        return False
    syncer = Syncer(catalog, store, upstream, min_free=config.mirror.min_free)
    digests, _ = await syncer._fetch(spec, key, remote, lambda n: None)
    if digests.sha256 != sha256:
        return False
    catalog.put_blob(digests)
    return True


@dataclass(frozen=True)
class SyncJob:
    spec: SyncSpec
    interval: float


class Scheduler:
    """Runs each `[[mirror.sync]]` job at start and then every `interval` seconds, one at a
    time, each in a thread with its own event loop and catalog connection: a sync's hashing
    and sqlite work never stall the HTTP server's loop."""

    def __init__(self, config: Config, jobs: list[SyncJob]):
        self.config = config
        self.jobs = jobs

    async def run(self) -> None:
        due = {i: 0.0 for i in range(len(self.jobs))}
        while True:
            now = time.monotonic()
            for i, job in enumerate(self.jobs):
                if due[i] <= now:
                    try:
                        await asyncio.to_thread(self._run_one, job)
                    except Exception:
                        # Recorded as failed (run_specs); the mirror serves on, and the job
                        # is tried again at its next time.
                        log.exception("scheduled sync %s failed", job.spec)
                    due[i] = time.monotonic() + job.interval
            await asyncio.sleep(max(1.0, min(due.values()) - time.monotonic()))

    def _run_one(self, job: SyncJob) -> None:
        outcome = asyncio.run(run_specs(self.config, [job.spec]))
        for r in outcome.results:
            log.info("scheduled sync %s: %s@%s%s", job.spec, r.repo_id, r.commit[:12],
                     " (up to date)" if r.unchanged else f", {r.fetched} files fetched")
