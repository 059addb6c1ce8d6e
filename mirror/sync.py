"""`weightswarm mirror sync`: fetch a repo revision from an upstream, verify every byte, and
publish the snapshot and its ref only when all of it is in the store.

The planner is pure: which files a spec selects, whether their names and hashes are sane, and
which the store lacks. The executor fetches those with bounded concurrency into resumable
partial files (store/partial/<hash>.part: a cut connection continues with Range, a killed
process continues where it stopped), hashing as it writes, and checks each file against the
upstream's published hash (sha256 for LFS, git sha1 otherwise); a mismatch is retried once
from zero before the file, and so the sync, fails. Nothing is visible until the publish.
With an index (mirror/network.py), the bytes come first from mirrors that already hold the
upstream's commit, through the same partial files and the same checks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import mmap
import re
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from tqdm import tqdm

from peer import hubs
from peer.errors import (
    BadRequest,
    GatedRepo,
    InsufficientSpace,
    IntegrityError,
    RepoNotFound,
    RevisionNotFound,
    Unavailable,
    WeightswarmError,
)
from peer.hashing import Digests
from peer.hfformat import FileEntry, derived_commit, lfs_pointer_sha1
from peer.paths import check_repo_id, check_repo_path, check_revision, is_commit, is_sha256
from peer.patterns import select
from peer.store import BlobStore, Expected

from .catalog import BlobRecord, Catalog, ref_of
from .network import MIRROR_STALLS, MirrorSource, Network, Sources
from .snapshots import publish
from .upstreams import Answered, RemoteFile, Upstream, UpstreamError
from .upstreams.kaggle import EVERY_VERSION as KAGGLE_EVERY_VERSION
from .upstreams.kaggle import handle_of as kaggle_handle_of
from .upstreams.kaggle import parse_handle as parse_kaggle_handle

log = logging.getLogger(__name__)

MAX_FILE_SIZE = 1 << 50
#: transfer attempts for one file that make no progress before it fails
STALLS = 5
#: bytes gathered before a write (in a thread); also what a kill can lose of a transfer
WRITE_BATCH = 4 * 1024 * 1024


# -- specs ---------------------------------------------------------------------------------------


#: the short forms of a spec (DESIGN.md section 8): prefix → (kind, repo type, hub)
PREFIXES = {
    "hf": ("hf", "model", hubs.HUGGINGFACE), "hf-datasets": ("hf", "dataset", hubs.HUGGINGFACE),
    "ms": ("ms", "model", hubs.MODELSCOPE), "ms-datasets": ("ms", "dataset", hubs.MODELSCOPE),
    "kaggle": ("kaggle", "model", hubs.KAGGLE),
}
#: an upstream's default branch, synced when a spec names no revision
DEFAULT_REVISION = {"hf": "main", "ms": "master", "kaggle": "main"}


@dataclass(frozen=True)
class SyncSpec:
    """What to keep synced: `hf:org/name@rev`, `hf:org/*`, `hf-datasets:org/name`,
    `ms:org/name@rev`, `ms-datasets:org/name`, `kaggle:owner/model/framework/variation[/N]`,
    or `mirror:<base-url>#org/name@rev` (another HF-compatible endpoint, prefix allowed)."""

    kind: str  # "hf", "ms", "kaggle", "mirror" or "local"
    repo_type: str
    repo_id: str  # may be "org/*": every repo of that author
    revision: str = "main"
    endpoint: str | None = None  # the base URL of mirror: specs, the folder of local: ones
    hub: str = hubs.DEFAULT  # the catalog namespace the repos land in
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    @property
    def is_author(self) -> bool:
        return self.repo_id.endswith("/*")

    @property
    def every_version(self) -> bool:
        """`kaggle:owner/model/framework/variation/*`: each version, a tag of its own."""
        return self.kind == "kaggle" and self.revision == KAGGLE_EVERY_VERSION

    def __str__(self) -> str:
        if self.kind in ("mirror", "local"):
            return f"{self.kind}:{self.endpoint}#{self.repo_id}@{self.revision}"
        if self.kind == "kaggle":
            return f"kaggle:{kaggle_handle_of(self.repo_id, self.revision)}"
        prefix = self.kind + ("-datasets" if self.repo_type == "dataset" else "")
        return f"{prefix}:{self.repo_id}@{self.revision}"


def parse_spec(text: str, include: Iterable[str] = (), exclude: Iterable[str] = ()) -> SyncSpec:
    text = text.strip()
    kind, sep, rest = text.partition(":")
    if not sep or kind not in (*PREFIXES, "mirror", "local"):
        raise BadRequest(f"{text!r}: a sync spec starts with hf:, hf-datasets:, ms:, "
                         f"ms-datasets:, kaggle:, mirror: or local:")
    if kind == "kaggle":
        repo_id, revision = parse_kaggle_handle(rest)
        return SyncSpec("kaggle", "model", repo_id, revision, None, hubs.KAGGLE,
                        tuple(include), tuple(exclude))
    endpoint, hub = None, hubs.DEFAULT
    if kind in ("local", "mirror"):
        endpoint, rest = _where(text, kind, rest)
        prefix = re.search(r"/hubs/([a-z0-9_-]+)$", endpoint) if kind == "mirror" else None
        if prefix:
            hub = hubs.check_hub(prefix.group(1))
    repo_id, at, revision = rest.partition("@")
    name, repo_type, hub = PREFIXES.get(kind, (kind, "model", hub))
    revision = check_revision(revision) if at else DEFAULT_REVISION.get(name, "main")
    if repo_id.endswith("/*"):
        check_repo_id(repo_id[:-2])
        if at:
            raise BadRequest(f"{text!r}: an author spec (org/*) follows each repo's main")
        if kind == "local":
            raise BadRequest(f"{text!r}: a folder is one repo")
    else:
        check_repo_id(repo_id)
    return SyncSpec(kind=name, repo_type=repo_type, repo_id=repo_id, revision=revision,
                    endpoint=endpoint, hub=hub, include=tuple(include), exclude=tuple(exclude))


def _where(text: str, kind: str, rest: str) -> tuple[str, str]:
    """(the folder or base URL, the rest) of a local: or mirror: spec."""
    endpoint, sharp, rest = rest.partition("#")
    if kind == "local" and (not sharp or not endpoint.startswith("/")):
        raise BadRequest(f"{text!r}: local specs are local:<absolute folder>#<repo id>")
    if kind == "mirror" and (not sharp or not endpoint.startswith(("http://", "https://"))):
        raise BadRequest(f"{text!r}: mirror specs are mirror:<http(s) base URL>#<repo id>")
    return (endpoint.rstrip("/") if kind == "mirror" else endpoint), rest


# -- the plan (pure) -----------------------------------------------------------------------------


class HostileListing(BadRequest):
    """The upstream's file list is unusable: a path, size or hash no honest hub would send."""


def validate(files: Iterable[RemoteFile], *, hashed: bool = True) -> list[RemoteFile]:
    """Refuse the whole listing if any entry is hostile or malformed: an upstream that lies
    about one file is not trusted for the others. `hashed`: the upstream publishes a hash of
    every file (sha256 for LFS files; sha256 or git sha1 for the rest); Kaggle does not."""
    seen: set[str] = set()
    good = []
    for f in files:
        if not isinstance(f.path, str):
            raise HostileListing(f"a file without a path: {f!r}")
        try:
            check_repo_path(f.path)
        except BadRequest as e:
            raise HostileListing(f"unusable path from upstream: {e}") from None
        if f.path in seen:
            raise HostileListing(f"{f.path!r} is listed twice")
        seen.add(f.path)
        if not isinstance(f.size, int) or isinstance(f.size, bool) or not 0 <= f.size <= MAX_FILE_SIZE:
            raise HostileListing(f"{f.path}: size {f.size!r} is not a sane byte count")
        _check_hashes(f, hashed)
        good.append(f)
    return good


def _check_hashes(f: RemoteFile, hashed: bool) -> None:
    if f.sha256 is not None and not is_sha256(f.sha256):
        raise HostileListing(f"{f.path}: {f.sha256!r} is not a sha256")
    if f.git_sha1 is not None and not is_commit(f.git_sha1):
        raise HostileListing(f"{f.path}: {f.git_sha1!r} is not a git sha1")
    if not hashed:
        return
    if f.lfs and f.sha256 is None:
        raise HostileListing(f"{f.path}: LFS file without a sha256 (lfs.oid)")
    if not f.lfs and f.sha256 is None and f.git_sha1 is None:
        raise HostileListing(f"{f.path}: no hash (oid or sha256) to verify it against")


@dataclass
class Plan:
    files: list[RemoteFile]
    #: files whose bytes the store already holds: path → the blob's record
    present: dict[str, BlobRecord] = field(default_factory=dict)
    fetch: list[RemoteFile] = field(default_factory=list)

    @property
    def fetch_bytes(self) -> int:
        return sum(f.size for f in self.fetch)


def plan(files: list[RemoteFile], known: Callable[[RemoteFile], BlobRecord | None]) -> Plan:
    result = Plan(files)
    for f in files:
        record = known(f)
        if record is not None and record.size == f.size:
            result.present[f.path] = record
        else:
            result.fetch.append(f)
    return result


def entry_for(f: RemoteFile, sha256: str, git_sha1: str | None) -> FileEntry:
    """The catalog's view of a verified file: for LFS files the git sha1 is our own
    computation of the pointer's, for the rest that of the bytes (which matched the
    upstream's oid where it published one)."""
    if f.lfs:
        git_sha1 = lfs_pointer_sha1(sha256, f.size)
    if git_sha1 is None:
        raise AssertionError(f"{f.path}: no git sha1 for a regular file")
    return FileEntry(f.path, f.size, sha256, git_sha1, f.lfs)


def partial_key(upstream: str, repo_id: str, revision: str, f: RemoteFile) -> str:
    """What a partial download is named by: the hash it must match, or for a file whose
    upstream publishes none (Kaggle), a name made of where it comes from."""
    if f.sha256 or f.git_sha1:
        return f.sha256 if (f.lfs or not f.git_sha1) else f.git_sha1
    where = "\0".join((upstream, repo_id, revision, f.path, str(f.size)))
    return hashlib.sha256(where.encode()).hexdigest()


# -- the executor --------------------------------------------------------------------------------


class FileFailed(WeightswarmError):
    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class SyncFailed(WeightswarmError):
    status = 502

    def __init__(self, repo_id: str, failures: list[FileFailed]):
        listed = "; ".join(str(f) for f in failures[:5])
        more = f" (and {len(failures) - 5} more)" if len(failures) > 5 else ""
        super().__init__(f"{repo_id}: {len(failures)} file(s) failed, nothing published: "
                         f"{listed}{more}")
        self.failures = failures


@dataclass
class SyncResult:
    spec: str
    repo_id: str
    commit: str
    files: int
    fetched: int
    bytes_fetched: int
    unchanged: bool
    #: the upstream no longer has it; an archive keeps serving what it holds
    gone: bool = False
    #: where the bytes came from (mirror/network.py): received from the upstream, from each
    #: mirror (by base URL), and the mirrors dropped during the sync with the reason
    from_upstream: int = 0
    from_mirrors: dict[str, int] = field(default_factory=dict)
    dropped_mirrors: dict[str, str] = field(default_factory=dict)


class _Batches:
    """Network chunks handed to a blob writer WRITE_BATCH bytes at a time, in a thread.

    Copied into a ring of three page-aligned buffers: no allocation per batch (fresh buffers
    cost a page fault per 4 KiB, most of the sync's system time), aligned writes can go around
    the page cache, and the hasher's threads still hold the previous buffer while the next one
    fills (see `read_chunks`). A streamed writer's (a pull-through's: through the page cache)
    wants no alignment, so it gets the chunks themselves, uncopied."""

    def __init__(self, writer, progress: Callable[[int], None]):
        self.writer, self.progress = writer, progress
        self.fill = 0  # bytes gathered, not yet written
        self._held: list[bytes] = []
        self._ring = None if getattr(writer, "streamed", False) else [
            mmap.mmap(-1, WRITE_BATCH) for _ in range(3)]
        self._turn = 0
        self._buffer = memoryview(self._ring[0]) if self._ring else None

    async def add(self, chunk: bytes) -> None:
        if self._ring is None:
            self._held.append(chunk)
            self.fill += len(chunk)
            if self.fill >= WRITE_BATCH:
                await self.flush()
            return
        position = 0
        while position < len(chunk):
            take = min(len(chunk) - position, WRITE_BATCH - self.fill)
            self._buffer[self.fill : self.fill + take] = chunk[position : position + take]
            self.fill += take
            position += take
            if self.fill == WRITE_BATCH:
                await self.flush()

    async def flush(self) -> None:
        if not self.fill:
            return
        if self._ring is None:
            held, self._held = self._held, []
            await asyncio.to_thread(lambda: [self.writer.write(chunk) for chunk in held])
        else:
            await asyncio.to_thread(self.writer.write, self._buffer[: self.fill])
            self._turn += 1
            self._buffer = memoryview(self._ring[self._turn % 3])
        self.progress(self.fill)
        self.fill = 0


class Syncer:
    def __init__(self, catalog: Catalog, store: BlobStore, upstream: Upstream, *,
                 parallel: int = 4, min_free: int = 0, progress: bool = False,
                 archive: bool = False, network: Network | None = None,
                 scan_policy: str = "flag"):
        self.catalog = catalog
        self.store = store
        self.upstream = upstream
        self.parallel = parallel
        self.min_free = min_free
        self.progress = progress
        self.archive = archive
        #: where to ask for mirrors that already hold a commit (None: the upstream only)
        self.network = network
        self.scan_policy = scan_policy

    async def sync(self, spec: SyncSpec) -> list[SyncResult]:
        if spec.every_version:
            numbers = await self.upstream.versions(spec.repo_id)
            return [await self.sync_repo(dataclasses.replace(spec, revision=f"v{n}"))
                    for n in numbers]
        if spec.is_author:
            author = spec.repo_id[:-2]
            ids = await self.upstream.list_author(spec.repo_type, author)
            results = []
            for repo_id in ids:
                one = SyncSpec(spec.kind, spec.repo_type, check_repo_id(repo_id),
                               DEFAULT_REVISION.get(spec.kind, "main"),
                               spec.endpoint, spec.hub, spec.include, spec.exclude)
                try:
                    results.append(await self.sync_repo(one))
                except GatedRepo as e:
                    # Gated mirroring needs a token and access rules (a later issue).
                    log.warning("%s: skipped, gated upstream: %s", one, e)
            return results
        return [await self.sync_repo(spec)]

    def _current(self, spec: SyncSpec) -> str | None:
        try:
            repo = self.catalog.repo(spec.hub, spec.repo_type, spec.repo_id)
            return self.catalog.resolve(repo, spec.revision)
        except LookupError:
            return None

    def _repo(self, spec: SyncSpec):
        try:
            return self.catalog.repo(spec.hub, spec.repo_type, spec.repo_id)
        except LookupError:
            return None

    async def sync_repo(self, spec: SyncSpec) -> SyncResult:
        try:
            key = await self.upstream.resolve(spec.repo_type, spec.repo_id, spec.revision)
        except (RepoNotFound, RevisionNotFound) as e:
            repo = self._repo(spec)
            if not (self.archive and repo is not None):
                raise
            # An archive loses nothing: keep serving, and say since when upstream lacks it.
            if repo.gone_upstream_at is None:
                self.catalog.mark_gone_upstream(repo, time.time())
            log.warning("%s: gone upstream (%s); kept, as this mirror is an archive", spec, e)
            return SyncResult(str(spec), spec.repo_id, self._current(spec) or "", 0, 0, 0,
                              unchanged=True, gone=True)
        repo = self._repo(spec)
        if repo is not None and repo.gone_upstream_at is not None:
            self.catalog.mark_gone_upstream(repo, None)  # back upstream
        if self.upstream.derives_commit:
            return await self._sync_version(spec, key)
        commit = key
        refs = [ref_of(spec.revision)] if not is_commit(spec.revision) else []
        if self._current(spec) == commit or (not refs and self._has_snapshot(spec, commit)):
            log.info("%s: up to date at %s", spec, commit[:12])
            return SyncResult(str(spec), spec.repo_id, commit, 0, 0, 0, unchanged=True)
        if refs and refs[0] == ("branch", spec.revision):
            # A plain name may be a branch or a tag upstream: ask (only when something changed,
            # so an unchanged repo still costs one request).
            kind = await self.upstream.ref_kind(spec.repo_type, spec.repo_id, spec.revision)
            refs = [(kind, spec.revision)]
        return await self._fetch_and_publish(spec, commit, commit, refs)

    async def _sync_version(self, spec: SyncSpec, key: str) -> SyncResult:
        """An upstream without commits (Kaggle): `key` names an immutable version, its refs
        come from the upstream (`v{N}`, and `main` for the latest), and the commit is derived
        from the files once they are verified (DESIGN.md section 2)."""
        refs = await self.upstream.refs_for(spec.repo_type, spec.repo_id, spec.revision, key)
        repo = self._repo(spec)
        held = next((r.commit for r in self.catalog.refs(repo) if (r.kind, r.name) == refs[0]),
                    None) if repo is not None else None
        if held is None:
            return await self._fetch_and_publish(spec, key, None, refs)
        if all(self._points(repo, kind, name, held) for kind, name in refs):
            log.info("%s: up to date at %s", spec, held[:12])
            return SyncResult(str(spec), spec.repo_id, held, 0, 0, 0, unchanged=True)
        # The version is here already; only a ref moves (a newer version became the latest).
        snapshot = self.catalog.snapshot(repo, held)
        publish(self.catalog, self.store, hub=spec.hub, repo_type=spec.repo_type,
                repo_id=spec.repo_id, commit=held, files=self.catalog.files(snapshot),
                refs=refs, access=repo.access, title=snapshot.title,
                scan_policy=self.scan_policy)
        return SyncResult(str(spec), spec.repo_id, held, 0, 0, 0, unchanged=False)

    def _points(self, repo, kind: str, name: str, commit: str) -> bool:
        return any(r.kind == kind and r.name == name and r.commit == commit
                   for r in self.catalog.refs(repo))

    async def _fetch_and_publish(self, spec: SyncSpec, key: str, commit: str | None,
                                 refs: list[tuple[str, str]]) -> SyncResult:
        """List `key`, fetch and verify what the store lacks, publish it whole. `commit` None:
        derive it from the verified files."""
        listed = await self.upstream.list_files(spec.repo_type, spec.repo_id, key)
        hashed = self.upstream.hashed
        files = select(validate(listed, hashed=hashed), spec.include, spec.exclude)
        the_plan = plan(files, self._known if hashed else lambda f: None)
        self._check_space(the_plan)
        log.info("%s: %s has %d files, %d to fetch (%d bytes)", spec, key[:12], len(files),
                 len(the_plan.fetch), the_plan.fetch_bytes)
        sources = await self._sources(spec, commit, the_plan)
        try:
            fetched, verified_by = await self._fetch_all(spec, key, the_plan, sources)
        finally:
            await sources.close()
        entries = []
        for f in files:
            got = fetched.get(f.path) or the_plan.present[f.path]
            entries.append(entry_for(f, got.sha256, got.git_sha1))
            verified_by.setdefault(f.path, f.verified_by)
        commit = commit or derived_commit(entries)
        parent = self._current(spec)
        when = self.upstream.created_at(spec.repo_type, spec.repo_id, key)
        publish(self.catalog, self.store, hub=spec.hub, repo_type=spec.repo_type,
                repo_id=spec.repo_id, commit=commit, files=entries, refs=refs,
                access=self.upstream.access(spec.repo_type, spec.repo_id),
                title=f"Synced from {self.upstream.name}", parent=parent,
                created_at=when, verified_by=verified_by,
                ref_times=dict.fromkeys(refs, when) if when else None,
                scan_policy=self.scan_policy)
        return SyncResult(str(spec), spec.repo_id, commit, len(files), len(fetched),
                          sum(d.size for d in fetched.values()), unchanged=False,
                          from_upstream=sources.from_upstream,
                          from_mirrors=sources.from_mirrors,
                          dropped_mirrors=dict(sources.dropped))

    async def _sources(self, spec: SyncSpec, commit: str | None, the_plan: Plan) -> Sources:
        """Where this sync's bytes come from: mirrors that hold `commit` already, when there
        is anything to fetch and the upstream's hashes can check their bytes."""
        if (self.network is None or not the_plan.fetch or not is_commit(commit or "")
                or not self.upstream.hashed or spec.kind == "local"):
            return Sources(self.upstream.name)
        return await self.network.sources(spec.hub, spec.repo_type, spec.repo_id, commit,
                                          self.upstream.name)

    def _has_snapshot(self, spec: SyncSpec, commit: str) -> bool:
        try:
            self.catalog.snapshot(self.catalog.repo(spec.hub, spec.repo_type, spec.repo_id),
                                  commit)
            return True
        except LookupError:
            return False

    def _known(self, f: RemoteFile) -> BlobRecord | None:
        """The store's record of a file's bytes, found by the hash the upstream published."""
        if f.sha256:
            record = self.catalog.blob(f.sha256)
        else:
            record = self.catalog.blob_by_git_sha1(f.git_sha1)
        if record is None or not self.store.has(record.sha256):
            return None
        if not f.lfs and record.git_sha1 is None:
            return None  # held as an LFS blob only: fetch again for its git sha1 (rare)
        if f.lfs and f.size >= 4 * 1024 * 1024 and not record.piece_length:
            return None  # known only as a plain git blob: fetch again for its piece hashes
        return record

    def _check_space(self, the_plan: Plan) -> None:
        free = shutil.disk_usage(self.store.root).free - self.min_free
        if the_plan.fetch_bytes > free:
            raise InsufficientSpace(the_plan.fetch_bytes, max(free, 0), str(self.store.root),
                                    reserve="mirror.min_free")

    async def _fetch_all(self, spec: SyncSpec, key: str, the_plan: Plan, sources: Sources
                         ) -> tuple[dict[str, Digests], dict[str, str]]:
        """The fetched files' digests, and what each was verified against (VERIFIED_BY)."""
        gate = asyncio.Semaphore(self.parallel)
        done: dict[str, Digests] = {}
        verified_by: dict[str, str] = {}
        failures: list[FileFailed] = []
        refusals: list[WeightswarmError] = []
        bar = tqdm(total=the_plan.fetch_bytes, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=spec.repo_id, disable=not self.progress, leave=False)

        async def one(f: RemoteFile) -> None:
            async with gate:
                try:
                    digests, verified_by[f.path] = await self._fetch(spec, key, f, bar.update,
                                                                     sources)
                    done[f.path] = digests
                    self.catalog.put_blob(digests)
                    log.info("%s: %s verified by %s (%d bytes)", spec.repo_id, f.path,
                             verified_by[f.path], f.size)
                except FileFailed as e:
                    log.warning("%s: %s", spec.repo_id, e)
                    failures.append(e)
                except WeightswarmError as e:  # gated, gone, busy: the repo stops, not a file
                    refusals.append(e)

        try:
            async with asyncio.TaskGroup() as group:
                for f in the_plan.fetch:
                    group.create_task(one(f))
        finally:
            bar.close()
        if refusals:
            raise refusals[0]
        if failures:
            raise SyncFailed(spec.repo_id, sorted(failures, key=lambda e: e.path))
        return done, verified_by

    def _writer(self, spec: SyncSpec, key: str, f: RemoteFile, *, streamed: bool = False):
        """`streamed`: read by clients as it arrives (peer/store.py's BlobWriter)."""
        expected = Expected(size=f.size, sha256=f.sha256,
                            git_sha1=None if f.lfs else f.git_sha1)
        return self.store.resumable_writer(
            partial_key(self.upstream.name, spec.repo_id, key, f), f.size, lfs=f.lfs,
            expected=expected, md5=self.upstream.md5_in_answers, streamed=streamed)

    async def _fetch(self, spec: SyncSpec, key: str, f: RemoteFile,
                     progress: Callable[[int], None], sources: Sources | None = None
                     ) -> tuple[Digests, str]:
        writer = await asyncio.to_thread(self._writer, spec, key, f)
        progress(writer.written)
        sources = sources or Sources(self.upstream.name)
        mirror = sources.pick()
        if mirror is not None:
            digests, writer = await self._from_mirror(spec, key, f, writer, progress, mirror,
                                                      sources)
            if digests is not None:
                return digests, f.verified_by
        progress = sources.counting(self.upstream.name, progress)
        for attempt in range(2):
            answered = Answered()
            try:
                await self._transfer(spec, key, f, writer, progress, answered, self.upstream)
                if answered.md5:
                    writer.expected = dataclasses.replace(writer.expected, md5=answered.md5)
                digests = await asyncio.to_thread(writer.commit)
                return digests, "md5" if answered.md5 else f.verified_by
            except IntegrityError as e:
                # The bytes are discarded (commit() already did): one more try from zero.
                if not writer.done:
                    writer.abort()
                if attempt == 1:
                    raise FileFailed(f.path, f"{e} (expected: the upstream's published value; "
                                             f"got: what its bytes hash to)") from e
                log.warning("%s: %s: %s; fetching it again from the start", spec.repo_id,
                            f.path, e)
                writer = await asyncio.to_thread(self._writer, spec, key, f)
            except Unavailable as e:
                writer.pause()
                raise FileFailed(f.path, str(e)) from e
            except BaseException:
                writer.pause()  # cancelled or killed: keep the bytes for the next run
                raise
        raise AssertionError("unreachable")

    async def _from_mirror(self, spec: SyncSpec, key: str, f: RemoteFile, writer,
                           progress: Callable[[int], None], mirror: MirrorSource,
                           sources: Sources):
        """(digests, writer) when `mirror`'s copy of `f` verified against the upstream's
        hashes; else (None, a writer to go on with from the upstream), the mirror dropped for
        the rest of the sync. Bytes that fail the check are discarded (commit() does), those
        of a cut transfer kept: the upstream goes on from there, and the whole file is checked
        again at its end (a mismatch then starts it from zero)."""
        counted = sources.counting(mirror.name, progress)
        try:
            await self._transfer(spec, key, f, writer, counted, Answered(), mirror,
                                 stalls=MIRROR_STALLS)
            digests = await asyncio.to_thread(writer.commit)
            log.info("%s: %s from %s", spec.repo_id, f.path, mirror.name)
            return digests, writer
        except IntegrityError as e:
            if not writer.done:
                writer.abort()
            sources.drop(mirror, f"its {f.path} did not verify: {e}")
        except InsufficientSpace:
            writer.pause()  # our disk, not the mirror: the sync stops as it would from upstream
            raise
        except WeightswarmError as e:  # unreachable, cut, a 404: the upstream has the file
            writer.pause()
            sources.drop(mirror, f"{f.path}: {e}")
        except BaseException:
            writer.pause()
            raise
        return None, await asyncio.to_thread(self._writer, spec, key, f)

    async def _transfer(self, spec: SyncSpec, commit: str, f: RemoteFile, writer,
                        progress: Callable[[int], None], answered: Answered, source: Upstream,
                        stalls: int = STALLS) -> None:
        """Fill the writer up to the file's size, resuming with Range after every cut; the
        network's chunks reach it in batches (`_Batches`)."""
        batches = _Batches(writer, progress)
        patience, stalls = stalls, 0
        while writer.written < f.size or (f.size == 0 and stalls == 0):
            before = writer.written
            try:
                async for chunk in source.open(spec.repo_type, spec.repo_id, commit, f.path,
                                               writer.written, expect=f, answered=answered):
                    if writer.written + batches.fill + len(chunk) > f.size:
                        raise IntegrityError("size", str(f.size),
                                             f"more than {f.size} bytes from {source.name}")
                    await batches.add(chunk)
                await batches.flush()
                if f.size == 0 or writer.written == f.size:
                    return
                raise UpstreamError(f"{f.path}: {source.name} ended the file at "
                                    f"{writer.written} of {f.size} bytes")
            except Unavailable:
                await batches.flush()
                stalls = 0 if writer.written > before else stalls + 1
                if stalls >= patience:
                    raise
                log.info("%s: %s cut at %d of %d bytes; resuming", spec.repo_id, f.path,
                         writer.written, f.size)

