"""The Hugging Face Hub API the download clients use (PROTOCOLS.md section 1): the lookups
behind each call, and the JSON and headers each answer carries, as plain functions.

`HubService` runs on the catalog's thread; everything else here is pure.
"""

from __future__ import annotations

import mimetypes
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from peer.errors import (
    BlobMissing,
    EntryNotFound,
    NotFound,
)
from peer.hfformat import (
    TYPE_URL_PREFIX,
    FileEntry,
    derive_tags,
    directory_oids,
    file_json,
    iso_z,
    sibling_json,
)
from peer.listing import ListQuery
from peer.paths import is_commit
from peer.store import BlobStore

from .catalog import Catalog, Ref, Repo, Snapshot
from .routes import HubCall

TREE_PAGE = 1000


@dataclass(frozen=True)
class Located:
    """A resolve request answered: the commit, the file, and where its bytes are."""

    commit: str
    entry: FileEntry
    blob: Path
    pinned: bool  # the request named the commit itself
    #: `scan_policy = "quarantine"` and the scanner flagged it: for admins only
    quarantined: bool = False
    #: the answer's headers by base URL, made once (it is cached with this object)
    headers: dict = field(default_factory=dict, compare=False, hash=False)


def repo_info_json(repo: Repo, snapshot: Snapshot, files: list[FileEntry], *, blobs: bool,
                   verified_by: dict | None = None, scans: dict | None = None) -> dict:
    card = snapshot.card_data or {}
    info = {
        "id": repo.repo_id,
        "author": repo.author,
        "sha": snapshot.commit,
        "lastModified": iso_z(snapshot.created_at),
        "createdAt": iso_z(repo.created_at),
        "private": repo.access == "private",
        "gated": "manual" if repo.access == "gated" else False,
        "disabled": False,
        "downloads": repo.downloads,
        "likes": repo.likes,
        "tags": derive_tags(card, snapshot.safetensors is not None),
        "cardData": card,
        "siblings": [sibling_json(f, blobs=blobs) for f in files],
        "usedStorage": sum(f.size for f in files),
    }
    if repo.type == "model":
        info["modelId"] = repo.repo_id
        info["library_name"] = card.get("library_name")
        info["pipeline_tag"] = card.get("pipeline_tag")
        info["spaces"] = []
        if snapshot.safetensors:
            info["safetensors"] = snapshot.safetensors
    ours = {}
    if repo.gone_upstream_at is not None:
        # Ours (the client keeps unknown keys): an archive serves what its upstream lost.
        ours.update(goneUpstream=True, goneUpstreamAt=iso_z(repo.gone_upstream_at))
    if verified_by:
        # What each file's bytes were checked against before they were published: the
        # upstream's sha256 or git sha1, an MD5 from storage (Kaggle), or none.
        ours["verifiedBy"] = verified_by
    if scans:
        # What the pickle scanner said of each file of a pickle-based format (mirror/scan.py).
        ours["scan"] = {path: v.json() for path, v in scans.items()}
    if ours:
        info["weightswarm"] = ours
    if snapshot.invalid_safetensors:
        # Ours, not HF's (the client keeps unknown keys): files served as they are, whose
        # safetensors header did not validate, with the reason.
        info["invalidSafetensors"] = snapshot.invalid_safetensors
    return {k: v for k, v in info.items() if v is not None}


def list_item_json(repo: Repo, *, main: Snapshot | None, files: list[FileEntry] | None,
                   card: bool) -> dict:
    """One item of /api/models or /api/datasets; `files` given means `full=true`."""
    card_data = repo.card.get("card_data") or {}
    item: dict = {
        "id": repo.repo_id,
        "author": repo.author,
        "likes": repo.likes,
        "trendingScore": 0,
        "private": repo.access == "private",
        "downloads": repo.downloads,
        "tags": repo.card.get("tags") or [],
        "createdAt": iso_z(repo.created_at),
    }
    if repo.type == "model":
        item["modelId"] = repo.repo_id
        item["pipeline_tag"] = repo.card.get("pipeline_tag")
        item["library_name"] = repo.card.get("library_name")
    if files is not None:
        item["lastModified"] = iso_z(repo.updated_at)
        item["gated"] = "manual" if repo.access == "gated" else False
        item["disabled"] = False
        if main is not None:
            item["sha"] = main.commit
            item["lastModified"] = iso_z(main.created_at)
        item["siblings"] = [{"rfilename": f.path} for f in files]
    if card:
        item["cardData"] = card_data
    return {k: v for k, v in item.items() if v is not None}


def last_commit_json(snapshot: Snapshot) -> dict:
    return {"id": snapshot.commit, "title": snapshot.title, "date": iso_z(snapshot.created_at)}


def paths_info_json(files: list[FileEntry], paths: list[str], last: dict | None) -> list[dict]:
    """The paths-info answer: each asked path that is a file or a folder, once."""
    by_path = {f.path: f for f in files}
    oids = directory_oids(files)
    out = []
    for p in dict.fromkeys(p.strip("/") for p in paths):
        if p in by_path:
            out.append(file_json(by_path[p], last_commit=last))
        elif p in oids:
            out.append({"type": "directory", "path": p, "oid": oids[p], "size": 0})
    return out


def tree_json(
    files: list[FileEntry], path: str, *, recursive: bool, last_commit: dict | None = None
) -> list[dict]:
    """The entries under `path` ('' for the root), folders included, in path order.

    A path that names a file, or nothing, is EntryNotFound (HfFileSystem relies on that)."""
    prefix = f"{path}/" if path else ""
    oids = directory_oids(files)
    if path and path not in oids:
        raise LookupError(path)
    entries: dict[str, dict] = {}
    for f in files:
        if not f.path.startswith(prefix):
            continue
        rest = f.path[len(prefix):]
        if "/" in rest and not recursive:
            folder = prefix + rest.split("/", 1)[0]
            entries[folder] = {"type": "directory", "path": folder, "oid": oids[folder], "size": 0}
            continue
        if recursive:
            parts = rest.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                folder = prefix + "/".join(parts[:i])
                entries[folder] = {"type": "directory", "path": folder, "oid": oids[folder],
                                   "size": 0}
        entries[f.path] = file_json(f, last_commit=last_commit)
    return [entries[k] for k in sorted(entries)]


def refs_json(refs: list[Ref], *, include_prs: bool) -> dict:
    def item(ref: Ref, full: str) -> dict:
        return {"name": ref.name, "ref": full, "targetCommit": ref.commit}

    out: dict = {
        "branches": [item(r, f"refs/heads/{r.name}") for r in refs if r.kind == "branch"],
        "tags": [item(r, f"refs/tags/{r.name}") for r in refs if r.kind == "tag"],
        "converts": [item(r, f"refs/convert/{r.name}") for r in refs if r.kind == "convert"],
    }
    if include_prs:
        out["pullRequests"] = [item(r, f"refs/pr/{r.name}") for r in refs if r.kind == "pr"]
    return out


def commit_json(snapshot: Snapshot) -> dict:
    return {
        "id": snapshot.commit,
        "authors": [{"user": "weightswarm"}],
        "date": iso_z(snapshot.created_at),
        "title": snapshot.title or "",
        "message": snapshot.message or "",
    }


def security_status_json(scans: dict) -> dict:
    """HF's `securityRepoStatus` (repo info with `securityStatus=true`, which
    `model_info(securityStatus=True)` reads into `security_repo_status`): the files the pickle
    scanner did not call safe, with the imports it found. `unscanned` files are "caution"."""
    issues = []
    for path, verdict in sorted(scans.items()):
        if verdict.status == "safe":
            continue
        imports = [{"module": g.rpartition(".")[0] or g, "name": g.rpartition(".")[2],
                    "safety": "dangerous"} for g in verdict.found]
        issues.append({
            "path": path, "level": "unsafe" if verdict.status == "suspicious" else "caution",
            "pickleImportScan": {
                "highestSafetyLevel": "dangerous" if imports else "innocuous",
                "imports": imports},
        })
    return {"scansDone": True, "filesWithIssues": issues}


def resolve_url(base: str, call: HubCall, commit: str, path: str) -> str:
    """The commit-pinned resolve URL: the base clients see, the hub prefix, the repo."""
    return (
        f"{base}{call.prefix}/{TYPE_URL_PREFIX[call.repo_type]}{call.repo_id}/resolve/"
        f"{commit}/{quote(path)}"
    )


def resolve_headers(call: HubCall, located: Located, base: str) -> dict:
    """Headers every resolve answer carries (PROTOCOLS.md section 6, item 1)."""
    entry = located.entry
    name = posixpath.basename(entry.path)
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    headers = {
        "X-Repo-Commit": located.commit,
        "Content-Type": content_type,
        "Content-Disposition": f"inline; filename*=UTF-8''{quote(name)}",
        # A repo's file shown in a browser (an .html, an .svg) runs nothing on the origin of
        # the mirror's pages
        "Content-Security-Policy": "sandbox",
        "X-Content-Type-Options": "nosniff",
    }
    if located.pinned:
        headers["Cache-Control"] = "public, max-age=31536000, immutable"
    else:
        headers["Cache-Control"] = "no-cache"
        headers["Location"] = resolve_url(base, call, located.commit, entry.path)
        headers["ETag"] = f'"{entry.etag}"'
        # If `public_url` is another origin than the one the client used, the client takes
        # this 3xx itself as the file's metadata (PROTOCOLS.md section 1.7): give it all.
        headers["X-Linked-Etag"] = f'"{entry.etag}"'
        headers["X-Linked-Size"] = str(entry.size)
    return headers


class HubService:
    """The lookups behind the HF API calls. Not thread-safe: one thread (the catalog's)."""

    def __init__(self, catalog: Catalog, store: BlobStore, scan_policy: str = "flag"):
        self.catalog = catalog
        self.store = store
        self.scan_policy = scan_policy

    def quarantined(self, sha256: str) -> bool:
        """`scan_policy = "quarantine"` keeps this blob from everyone."""
        return self.scan_policy == "quarantine" and self.catalog.suspicious(sha256)

    def repo(self, call: HubCall) -> Repo:
        """The call's repo, whatever its access: the handlers ask `access` first, and the
        request's token decides (mirror/access.py)."""
        return self.catalog.repo(call.hub, call.repo_type, call.repo_id)

    def access(self, call: HubCall) -> str:
        return self.repo(call).access

    def snapshot(self, call: HubCall) -> tuple[Repo, Snapshot]:
        repo = self.repo(call)
        commit = self.catalog.resolve(repo, call.revision or "main")
        return repo, self.catalog.snapshot(repo, commit)

    def repo_info(self, call: HubCall, *, blobs: bool, security: bool = False) -> dict:
        repo, snapshot = self.snapshot(call)
        scans = self.catalog.scans(snapshot)
        info = repo_info_json(repo, snapshot, self.catalog.files(snapshot), blobs=blobs,
                              verified_by=self.catalog.verified_by(snapshot), scans=scans)
        if security:
            info["securityRepoStatus"] = security_status_json(scans)
        return info

    def tree(self, call: HubCall, *, recursive: bool, expand: bool) -> list[dict]:
        repo, snapshot = self.snapshot(call)
        files = self.catalog.files(snapshot)
        try:
            return tree_json(files, call.path, recursive=recursive,
                             last_commit=last_commit_json(snapshot) if expand else None)
        except LookupError:
            raise EntryNotFound(call.repo_id, snapshot.commit, call.path) from None

    def paths_info(self, call: HubCall, paths: list[str], *, expand: bool) -> list[dict]:
        repo, snapshot = self.snapshot(call)
        return paths_info_json(self.catalog.files(snapshot), paths,
                               last_commit_json(snapshot) if expand else None)

    def refs(self, call: HubCall, *, include_prs: bool) -> dict:
        return refs_json(self.catalog.refs(self.repo(call)), include_prs=include_prs)

    def commits(self, call: HubCall) -> list[dict]:
        repo, snapshot = self.snapshot(call)
        out = []
        seen = set()
        while snapshot is not None and snapshot.commit not in seen:
            seen.add(snapshot.commit)
            out.append(commit_json(snapshot))
            if not snapshot.parent:
                break
            try:
                snapshot = self.catalog.snapshot(repo, snapshot.parent)
            except NotFound:
                break
        return out

    def locate(self, call: HubCall) -> Located:
        repo, snapshot = self.snapshot(call)
        entry = self.catalog.file(snapshot, call.path)
        if entry is None:
            raise EntryNotFound(call.repo_id, snapshot.commit, call.path)
        blob = self.store.path_for(entry.sha256)
        if not blob.is_file():
            raise BlobMissing(entry.sha256)
        pinned = is_commit(call.revision or "") and call.revision == snapshot.commit
        return Located(snapshot.commit, entry, blob, pinned, self.quarantined(entry.sha256))

    def listing(self, call: HubCall, query: ListQuery,
                readable: Callable[[str], bool] | None = None) -> list[dict]:
        """A page of the listing; private repos only those `readable(repo_id)` allows."""
        shown = ()
        if readable is not None:
            shown = tuple(pk for pk, repo_id in self.catalog.private_repos(
                call.hub, call.repo_type) if readable(repo_id))
        repos = self.catalog.search(
            call.hub, call.repo_type, search=query.search, author=query.author,
            tags=query.tags, sort=query.sort, ascending=query.ascending,
            offset=query.offset, limit=query.limit + 1, readable=shown,
        )
        items = []
        for repo in repos:
            main = files = None
            if query.full:
                try:
                    main = self.catalog.snapshot(repo, self.catalog.resolve(repo, "main"))
                    files = self.catalog.files(main)
                except NotFound:
                    files = []
            items.append(list_item_json(repo, main=main, files=files, card=query.card))
        return items

    def blob(self, sha256: str) -> StoredBlob:
        """A blob a published snapshot references: its file, its size, and whom it may be
        served to (the request's token decides, mirror/app.py)."""
        public = self.catalog.blob_is_public(sha256)
        holders = () if public else tuple(
            (hub, repo_type, repo_id, access)
            for hub, repo_type, repo_id, access in self.catalog.blob_access(sha256))
        if not public and not holders:
            raise NotFound(f"no blob {sha256}")
        path = self.store.path_for(sha256)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise BlobMissing(sha256) from None
        return StoredBlob(path, size, public, holders, self.quarantined(sha256))


@dataclass(frozen=True)
class StoredBlob:
    path: Path
    size: int
    #: a public repo holds it: served to anyone
    public: bool
    #: else (hub, type, repo id, access) of the repos that hold it: a reader of one may have it
    holders: tuple[tuple[str, str, str, str], ...]
    quarantined: bool
