"""Checks for names (and numbers) that come from outside: repo file paths, repo ids, revisions,
the decimal numbers of headers and query strings.

Every path an upstream, a request or a bundle hands us passes `check_repo_path` before it is
used as a key, and `resolve_inside` before it touches the file system.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import InvalidRepoId, UnsafePath

MAX_PATH_BYTES = 1024
MAX_COMPONENT_BYTES = 255
MAX_REVISION_BYTES = 256

# huggingface_hub's validate_repo_id: an optional namespace and a name of [\w.-], at most one
# "/", no "--" or "..", no ".git" suffix, 96 characters at most per part. ASCII only: HF ids are.
_REPO_PART = re.compile(r"[A-Za-z0-9_.\-]{1,96}")
_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_GIT_REFUSES = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
_DIGITS = re.compile(r"[0-9]{1,19}", re.ASCII)


def ascii_digits(text: str | None) -> int | None:
    """`text` as a number if it is 1*DIGIT, as every HTTP and URL grammar has it (ASCII 0-9,
    at most 19 of them), else None: `str.isdigit` also takes "¹" and "٣", which `int` and
    `float` refuse or read as something else."""
    if text is None or _DIGITS.fullmatch(text) is None:
        return None
    return int(text)


def is_commit(value: str) -> bool:
    return isinstance(value, str) and _HEX40.fullmatch(value) is not None


def is_sha256(value: str) -> bool:
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


def check_repo_id(repo_id: str) -> str:
    if not isinstance(repo_id, str) or not repo_id:
        raise InvalidRepoId(str(repo_id), "empty")
    if len(repo_id) > 96 * 2 + 1:
        raise InvalidRepoId(repo_id[:64] + "...", "too long")
    parts = repo_id.split("/")
    if len(parts) > 2:
        raise InvalidRepoId(repo_id, "at most one '/' is allowed")
    for part in parts:
        if not _REPO_PART.fullmatch(part):
            raise InvalidRepoId(repo_id, "each part is 1-96 characters of A-Z a-z 0-9 _ . -")
        if part[0] in ".-" or part[-1] in ".-":
            raise InvalidRepoId(repo_id, "a part may not start or end with '.' or '-'")
    if "--" in repo_id or ".." in repo_id:
        raise InvalidRepoId(repo_id, "'--' and '..' are not allowed")
    if repo_id.endswith(".git"):
        raise InvalidRepoId(repo_id, "may not end with '.git'")
    return repo_id


def check_revision(revision: str) -> str:
    """A branch, tag or commit name as git would accept it (refs/pr/1 included)."""
    if not revision or len(revision.encode()) > MAX_REVISION_BYTES:
        raise UnsafePath(revision[:64], "revision is empty or too long")
    if _GIT_REFUSES.search(revision):
        raise UnsafePath(revision, "revision holds a character git refuses")
    parts = revision.split("/")
    if any(p in ("", ".", "..") or p.startswith(".") or p.endswith(".lock") for p in parts):
        raise UnsafePath(revision, "revision has an empty, '.' or '..' component")
    if "@{" in revision or ".." in revision or revision.endswith(".") or revision == "@":
        raise UnsafePath(revision, "revision holds a sequence git refuses ('..', '@{', ...)")
    return revision


def check_repo_path(path: str) -> str:
    """A file or folder path inside a repo: relative, normalised, no '..', no NUL, sane length."""
    if not isinstance(path, str) or not path:
        raise UnsafePath(str(path), "empty")
    encoded = path.encode("utf-8", "surrogateescape")
    if len(encoded) > MAX_PATH_BYTES:
        raise UnsafePath(path[:64] + "...", f"longer than {MAX_PATH_BYTES} bytes")
    if _CONTROL.search(path):
        raise UnsafePath(path, "control character or NUL")
    if "\\" in path:
        raise UnsafePath(path, "backslash")
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise UnsafePath(path, "absolute")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise UnsafePath(path, "empty, '.' or '..' component")
        if len(part.encode("utf-8", "surrogateescape")) > MAX_COMPONENT_BYTES:
            raise UnsafePath(path[:64], f"a component is longer than {MAX_COMPONENT_BYTES} bytes")
    return path


def resolve_inside(root: Path, relative: str) -> Path:
    """`root / relative` with symlinks resolved, refused unless it stays inside `root`."""
    check_repo_path(relative)
    real_root = Path(os.path.realpath(root))
    target = Path(os.path.realpath(real_root / relative))
    if target != real_root and real_root not in target.parents:
        raise UnsafePath(relative, f"resolves outside {root}")
    return target
