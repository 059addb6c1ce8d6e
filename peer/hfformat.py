"""The Hugging Face formats, as pure functions: git hashes, LFS pointers, commit ids, dates,
and the JSON shapes of tree entries (PROTOCOLS.md sections 1.4, 1.6 and 4)."""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from .hashing import git_blob_header

LFS_MIN_SIZE = 10 * 1024 * 1024
WEIGHT_EXTENSIONS = frozenset(
    ".safetensors .bin .pt .pth .ckpt .gguf .onnx .h5 .msgpack .npz .pkl".split()
)
REPO_TYPES = ("model", "dataset")
#: the kinds of git ref a repo has (a bare name is a branch)
REF_KINDS = ("branch", "tag", "pr", "convert")
#: URL segment of each repo type: /api/{plural}/..., and /{prefix}{repo}/resolve/...
TYPE_PLURAL = {"model": "models", "dataset": "datasets"}
TYPE_URL_PREFIX = {"model": "", "dataset": "datasets/"}


def is_lfs_by_rule(path: str, size: int) -> bool:
    """DESIGN.md section 2, for sources that have no notion of LFS (folders, ModelScope, Kaggle)."""
    if size >= LFS_MIN_SIZE:
        return True
    ext = posixpath.splitext(path)[1].lower()
    return ext in WEIGHT_EXTENSIONS and size > 0


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(git_blob_header(len(data)) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return (
        b"version https://git-lfs.github.com/spec/v1\n"
        b"oid sha256:%s\nsize %d\n" % (sha256.encode(), size)
    )


def lfs_pointer_sha1(sha256: str, size: int) -> str:
    """The tree `oid` of an LFS file: the git blob sha1 of its pointer text."""
    return git_blob_sha1(lfs_pointer(sha256, size))


def pointer_size(size: int) -> int:
    return 125 + len(str(size))


@dataclass(frozen=True)
class FileEntry:
    """One file of a snapshot. `git_sha1` is the tree oid: of the pointer text for LFS files."""

    path: str
    size: int
    sha256: str
    git_sha1: str
    lfs: bool

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_sha1


def derived_commit(files: Iterable[FileEntry]) -> str:
    """DESIGN.md section 2: the commit of a snapshot whose source has none (folders, Kaggle)."""
    h = hashlib.sha1()
    for f in sorted(files, key=lambda f: f.path.encode("utf-8")):
        h.update(b"%s\0%d\0%s\n" % (f.path.encode("utf-8"), f.size, f.sha256.encode()))
    return h.hexdigest()


def iso_z(ts: float) -> str:
    """A date as huggingface_hub's parse_datetime accepts it: milliseconds and a Z suffix."""
    dt = datetime.fromtimestamp(ts, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def file_json(f: FileEntry, *, last_commit: dict | None = None) -> dict:
    entry: dict = {"type": "file", "path": f.path, "size": f.size, "oid": f.git_sha1}
    if f.lfs:
        entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": pointer_size(f.size)}
    if last_commit is not None:
        entry["lastCommit"] = last_commit
    return entry


def sibling_json(f: FileEntry, *, blobs: bool) -> dict:
    """A repo info `siblings` item; note the field names differ from tree entries."""
    if not blobs:
        return {"rfilename": f.path}
    entry: dict = {"rfilename": f.path, "size": f.size, "blobId": f.git_sha1}
    if f.lfs:
        entry["lfs"] = {"size": f.size, "sha256": f.sha256, "pointerSize": pointer_size(f.size)}
    return entry


def _git_tree_sha1(entries: list[tuple[str, bool, str]]) -> str:
    """git's tree object hash; entries are (name, is_dir, hex sha1), sorted the way git does."""

    def key(e: tuple[str, bool, str]) -> bytes:
        name = e[0].encode("utf-8")
        return name + b"/" if e[1] else name

    body = b"".join(
        (b"40000 " if is_dir else b"100644 ") + name.encode("utf-8") + b"\0" + bytes.fromhex(sha)
        for name, is_dir, sha in sorted(entries, key=key)
    )
    return hashlib.sha1(b"tree %d\0" % len(body) + body).hexdigest()


def directory_oids(files: Iterable[FileEntry]) -> dict[str, str]:
    """The git tree sha1 of every folder of a snapshot ('' is the root), as git computes it."""
    children: dict[str, dict[str, tuple[bool, str]]] = {"": {}}
    for f in files:
        parent, _, name = f.path.rpartition("/")
        children.setdefault(parent, {})[name] = (False, f.git_sha1)
        while parent:
            grand, _, dname = parent.rpartition("/")
            children.setdefault(parent, {})
            siblings = children.setdefault(grand, {})
            if dname in siblings:
                break
            siblings[dname] = (True, "")
            parent = grand
    oids: dict[str, str] = {}
    # Deepest folders first, so every child's oid is known before its parent is hashed.
    for folder in sorted(children, key=lambda d: d.count("/") + (1 if d else 0), reverse=True):
        entries = []
        for name, (is_dir, sha) in children[folder].items():
            if is_dir:
                sha = oids[f"{folder}/{name}" if folder else name]
            entries.append((name, is_dir, sha))
        oids[folder] = _git_tree_sha1(entries)
    return oids


def read_card(readme: bytes | str) -> tuple[dict, str | None]:
    """The YAML front matter of a model card (README.md), as HF's `cardData`, and what was
    wrong with it if anything: ({}, None) without front matter, ({}, reason) when malformed."""
    import yaml

    text = readme.decode("utf-8", "replace") if isinstance(readme, bytes) else readme
    text = text.lstrip("\ufeff")
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return {}, None
    for i, line in enumerate(lines[1:], start=1):
        if line.strip() == "---":
            try:
                data = yaml.safe_load("\n".join(lines[1:i]))
            except (yaml.YAMLError, ValueError, TypeError, RecursionError) as e:
                # An upstream's card is untrusted text: an impossible date (2024-13-45) makes
                # the YAML loader raise ValueError, not YAMLError.
                return {}, f"front matter is not valid YAML: {str(e).splitlines()[0][:200]}"
            if data is None:
                return {}, None
            if not isinstance(data, dict):
                return {}, f"front matter is a {type(data).__name__}, not a mapping"
            return data, None
    return {}, "front matter has no closing '---'"


def card_data(readme: bytes | str) -> dict:
    """The card's front matter as `cardData`; {} if it has none or it is malformed."""
    return read_card(readme)[0]


def derive_tags(card: dict, has_safetensors: bool) -> list[str]:
    """The tags HF lists for a repo: the card's own, plus library, pipeline, format, language,
    datasets, base model and license, each once, in a stable order."""
    tags: list[str] = []

    def add(tag) -> None:
        if tag and isinstance(tag, (str, int, float)) and str(tag) not in tags:
            tags.append(str(tag))

    def many(value) -> list:
        return value if isinstance(value, list) else [value] if value else []

    for t in many(card.get("tags")):
        add(t)
    add(card.get("library_name"))
    add(card.get("pipeline_tag"))
    if has_safetensors:
        add("safetensors")
    for lang in many(card.get("language")):
        add(lang)
    for d in many(card.get("datasets")):
        add(f"dataset:{d}")
    for b in many(card.get("base_model")):
        add(f"base_model:{b}")
    for lic in many(card.get("license")):
        add(f"license:{lic}")
    return tags
