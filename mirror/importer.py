"""`weightswarm mirror import`: a local folder, or a repo in a Hugging Face cache, into the
store and the catalog.

A plain folder has no commits: its commit is derived from its files (DESIGN.md section 2), so
re-importing a changed folder makes a new commit and moves the ref, and unchanged files are
hashed but never copied again. A Hugging Face cache repo (`models--org--name`) keeps its own
commit ids and refs, and every cached blob is checked against the hash it is named by.

Nothing is visible until the end: blobs land in the store as they are verified, and the
snapshot with its refs is published in one catalog transaction once every file is in.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from peer.errors import BadRequest, InsufficientSpace, UnsafePath
from peer.gitattributes import LfsRules
from peer.hashing import Digests, hash_file
from peer.hfformat import (
    FileEntry,
    derived_commit,
    is_lfs_by_rule,
    lfs_pointer_sha1,
)
from peer.hubs import check_hub
from peer.paths import (
    check_repo_id,
    check_repo_path,
    check_revision,
    is_commit,
    is_sha256,
)
from peer.store import BlobStore, Expected

from .catalog import Catalog, ref_of
from .snapshots import publish

log = logging.getLogger(__name__)

CACHE_PREFIXES = {"models--": "model", "datasets--": "dataset"}


@dataclass(frozen=True)
class Source:
    """One file to import: where it is, and what the source says it must hash to."""

    path: str
    local: Path
    lfs: bool
    expected: Expected = field(default_factory=Expected)


@dataclass
class ImportResult:
    repo_id: str
    commit: str
    refs: list[tuple[str, str]]
    files: int
    new_blobs: int
    bytes_copied: int


def _in(root: Path, target: str) -> bool:
    real_root = os.path.realpath(root)
    return target == real_root or target.startswith(real_root + os.sep)


def walk_folder(root: Path, confine: Path | None = None) -> list[tuple[str, Path]]:
    """Every file under `root` as (repo path, local path); symlinks that leave `confine`
    (default: `root`) are refused, not followed.

    `.git/` and `.cache/huggingface/` (a local_dir download's metadata) are not repo content."""
    confine = confine or root
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/")
        keep = []
        for d in sorted(dirnames):
            full = os.path.join(dirpath, d)
            rel = f"{rel_dir}/{d}" if rel_dir else d
            if rel in (".git", ".cache/huggingface"):
                continue
            if os.path.islink(full):
                if not _in(root, os.path.realpath(full)):
                    raise UnsafePath(rel, "symlinked folder points outside the imported folder")
                log.warning("skipping symlinked folder %s (its target is imported directly)", rel)
                continue
            keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = check_repo_path(f"{rel_dir}/{name}" if rel_dir else name)
            if os.path.islink(full):
                target = os.path.realpath(full)
                if not _in(confine, target):
                    raise UnsafePath(rel, "symlink points outside the imported folder")
                full = target
            if not os.path.isfile(full):
                raise UnsafePath(rel, "not a regular file")
            found.append((rel, Path(full)))
    return found


def _cache_commits(root: Path, revision: str | None) -> tuple[list[str], dict[str, str]]:
    """The snapshots of a cache repo folder to import, and its refs (name → commit): all of
    them, or those of `revision` (a ref or a commit it holds)."""
    refs: dict[str, str] = {}
    refs_dir = root / "refs"
    for ref_file in sorted(refs_dir.rglob("*")) if refs_dir.is_dir() else []:
        if ref_file.is_file() and not ref_file.is_symlink():
            name = check_revision(ref_file.relative_to(refs_dir).as_posix())
            target = ref_file.read_text().strip()
            if is_commit(target):
                refs[name] = target
    commits = sorted(
        d.name for d in (root / "snapshots").iterdir() if d.is_dir() and is_commit(d.name)
    )
    if revision is None:
        return commits, refs
    wanted = refs.get(revision, revision if revision in commits else None)
    if wanted is None:
        raise BadRequest(f"{root} has no ref or snapshot {revision!r}")
    return [wanted], {name: c for name, c in refs.items() if name == revision}


def is_cache_repo(path: Path) -> bool:
    return (path / "snapshots").is_dir() and (path / "blobs").is_dir()


class Importer:
    def __init__(self, catalog: Catalog, store: BlobStore, *, progress: bool = False,
                 min_free: int = 0, scan_policy: str = "flag"):
        self.catalog = catalog
        self.store = store
        self.progress = progress
        self.min_free = min_free
        self.scan_policy = scan_policy

    def import_path(
        self,
        path: Path,
        *,
        repo_id: str | None,
        hub: str = "huggingface",
        repo_type: str | None = None,
        revision: str | None = None,
        tags: Iterable[str] = (),
        access: str = "public",
    ) -> list[ImportResult]:
        path = Path(path)
        check_hub(hub)
        if not path.is_dir():
            raise BadRequest(f"{path} is not a folder")
        tags = [check_revision(t) for t in tags]
        if revision is not None:
            check_revision(revision)
        if is_cache_repo(path):
            return self._import_cache(path, repo_id, hub, repo_type, revision, tags, access)
        if repo_id is None:
            raise BadRequest("--repo is required to import a plain folder")
        return [self._import_folder(path, check_repo_id(repo_id), hub, repo_type or "model",
                                    revision or "main", tags, access)]

    # -- plain folders -------------------------------------------------------------------------

    def _import_folder(self, root, repo_id, hub, repo_type, revision, tags, access) -> ImportResult:
        if is_commit(revision):
            raise BadRequest("a folder import names the branch to move, not a commit")
        parent, previous = self._current(hub, repo_type, repo_id, revision)
        rules = LfsRules()
        attributes = root / ".gitattributes"
        if attributes.is_file():
            rules = LfsRules(attributes.read_text("utf-8", "replace"))
        sources = []
        for rel, local in walk_folder(root):
            size = local.stat().st_size
            lfs = rules.is_lfs(rel)
            if lfs is None:
                lfs = is_lfs_by_rule(rel, size)
            sources.append(Source(rel, local, lfs))
        if not sources:
            raise BadRequest(f"{root} holds no files")
        files, stats = self._ingest(repo_id, sources, previous=previous)
        commit = derived_commit(files)
        refs = [ref_of(revision)] + [("tag", t) for t in tags]
        self._publish(hub, repo_type, repo_id, commit, files, refs, access,
                      title=f"Import from {root.name}", parent=parent)
        return ImportResult(repo_id, commit, refs, len(files), *stats)

    def _current(self, hub, repo_type, repo_id, revision) -> tuple[str | None, dict]:
        """The commit `revision` names now and its files by path (to hash-probe unchanged files)."""
        try:
            repo = self.catalog.repo(hub, repo_type, repo_id)
            commit = self.catalog.resolve(repo, revision)
        except LookupError:
            return None, {}
        snapshot = self.catalog.snapshot(repo, commit)
        return commit, {f.path: f for f in self.catalog.files(snapshot)}

    # -- Hugging Face cache --------------------------------------------------------------------

    def _import_cache(self, root, repo_id, hub, repo_type, revision, tags, access):
        prefix = next((p for p in CACHE_PREFIXES if root.name.startswith(p)), None)
        if prefix is None:
            raise BadRequest(f"{root.name} is not a models--… or datasets--… cache folder")
        cache_type = CACHE_PREFIXES[prefix]
        if repo_type and repo_type != cache_type:
            raise BadRequest(f"{root.name} is a {cache_type} repo, not a {repo_type}")
        repo_id = check_repo_id(repo_id or root.name[len(prefix):].replace("--", "/", 1))
        commits, refs = _cache_commits(root, revision)
        results = []
        for commit in commits:
            sources = self._cache_sources(root, commit)
            if sources is None:
                if revision is not None:
                    raise BadRequest(f"snapshot {commit} in {root} is incomplete")
                continue
            files, stats = self._ingest(repo_id, sources)
            names = [ref_of(name) for name, c in refs.items() if c == commit]
            if tags and (commit == refs.get(revision or "main") or len(commits) == 1):
                names += [("tag", t) for t in tags]
            self._publish(hub, cache_type, repo_id, commit, files, names, access,
                          title="Imported from a Hugging Face cache")
            results.append(ImportResult(repo_id, commit, names, len(files), *stats))
        if not results:
            raise BadRequest(f"{root} holds no complete snapshot to import")
        return results

    def _cache_sources(self, root: Path, commit: str) -> list[Source] | None:
        snapshot_dir = root / "snapshots" / commit
        sources = []
        # Cache snapshots are symlinks into ../../blobs: confined to the cache repo folder.
        for rel, local in walk_folder(snapshot_dir, confine=root):
            etag = local.name
            if is_sha256(etag):
                sources.append(Source(rel, local, True, Expected(sha256=etag)))
            elif is_commit(etag):
                sources.append(Source(rel, local, False, Expected(git_sha1=etag)))
            else:
                size = local.stat().st_size
                sources.append(Source(rel, local, is_lfs_by_rule(rel, size)))
        tree = root / "trees" / f"{commit}.json"
        if tree.is_file():
            try:
                listed = set(json.loads(tree.read_text()).get("files", {}))
            except (ValueError, AttributeError):
                listed = set()
            missing = listed - {s.path for s in sources}
            if missing:
                log.warning(
                    "skipping snapshot %s: %d of its files are not in the cache (e.g. %s); "
                    "a partial snapshot would answer EntryNotFound for files that exist",
                    commit, len(missing), sorted(missing)[0],
                )
                return None
        return sources or None

    # -- shared --------------------------------------------------------------------------------

    def _ingest(self, repo_id: str, sources: list[Source], previous: dict | None = None):
        previous = previous or {}
        total = sum(s.local.stat().st_size for s in sources)
        self._check_space(sources, previous)
        files: list[FileEntry] = []
        new_blobs = copied = 0
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=repo_id,
                  disable=not self.progress, leave=False) as bar:
            for s in sources:
                size = s.local.stat().st_size
                digests = self._known(s, size, previous.get(s.path))
                if digests is None:
                    digests, created = self.store.ingest_file(
                        s.local, lfs=s.lfs, expected=s.expected, progress=bar.update
                    )
                    if created:
                        new_blobs += 1
                        copied += size
                else:
                    bar.update(size)
                self.catalog.put_blob(digests)
                git_sha1 = lfs_pointer_sha1(digests.sha256, size) if s.lfs else digests.git_sha1
                files.append(FileEntry(s.path, size, digests.sha256, git_sha1, s.lfs))
        return files, (new_blobs, copied)

    def _check_space(self, sources: list[Source], previous: dict) -> None:
        """Refuse up front an import whose new bytes would not fit (what the store already
        holds, by promised hash or unchanged path and size, is not counted)."""
        needed = 0
        for s in sources:
            before = previous.get(s.path)
            size = s.local.stat().st_size
            if s.expected.sha256 and self.store.has(s.expected.sha256):
                continue
            if before is not None and before.size == size and self.store.has(before.sha256):
                continue
            needed += size
        free = shutil.disk_usage(self.store.root).free - self.min_free
        if needed > free:
            raise InsufficientSpace(needed, max(free, 0), str(self.store.root),
                                    reserve="mirror.min_free")

    def _known(self, s: Source, size: int, before: FileEntry | None) -> Digests | None:
        """Digests of a file whose bytes the store already holds, found without copying it."""
        if s.expected.sha256 and self.store.has(s.expected.sha256):
            record = self.catalog.blob(s.expected.sha256)
            if record and record.size == size and (record.piece_length or size < 4 * 2**20):
                return Digests(size, record.sha256, record.blake3, record.git_sha1,
                               record.piece_length, record.pieces)
        if before is not None and before.size == size and self.store.has(before.sha256):
            # Probably unchanged since the last import: hash in place, copy nothing if so.
            digests = hash_file(s.local, lfs=s.lfs)
            if self.store.has(digests.sha256):
                return digests
        return None

    def _publish(self, hub, repo_type, repo_id, commit, files, refs, access, *, title, parent=None):
        return publish(self.catalog, self.store, hub=hub, repo_type=repo_type, repo_id=repo_id,
                       commit=commit, files=files, refs=refs, access=access, title=title,
                       parent=parent, scan_policy=self.scan_policy)

