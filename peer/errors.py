"""The project's errors: one base, a few subclasses with exact meanings.

Each carries the context a reader needs (repo id, revision, path) and, where it helps, a
standard base too (`EntryNotFound` is a `FileNotFoundError`). The HTTP shells map them to
status codes in one middleware; the CLI prints one line.
"""

from __future__ import annotations


class WeightswarmError(Exception):
    """Base of every error this project raises on purpose."""

    #: HTTP status the API answers with, and the Hugging Face `X-Error-Code` (if any).
    status = 500
    error_code: str | None = None


class BadRequest(WeightswarmError, ValueError):
    """The request (or command-line input) is malformed or hostile."""

    status = 400


class UnsafePath(BadRequest):
    """A path from outside is absolute, escapes its root, or holds forbidden characters."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"unsafe path {path!r}: {reason}")
        self.path = path
        self.reason = reason


class InvalidRepoId(BadRequest):
    def __init__(self, repo_id: str, reason: str):
        super().__init__(f"invalid repo id {repo_id!r}: {reason}")
        self.repo_id = repo_id


class NotFound(WeightswarmError, LookupError):
    status = 404


class RepoNotFound(NotFound):
    error_code = "RepoNotFound"

    def __init__(self, repo_id: str, repo_type: str = "model"):
        super().__init__(f"{repo_type} repository {repo_id!r} not found")
        self.repo_id = repo_id
        self.repo_type = repo_type


class RevisionNotFound(NotFound):
    error_code = "RevisionNotFound"

    def __init__(self, repo_id: str, revision: str):
        super().__init__(f"revision {revision!r} not found in {repo_id!r}")
        self.repo_id = repo_id
        self.revision = revision


class EntryNotFound(NotFound, FileNotFoundError):
    error_code = "EntryNotFound"

    def __init__(self, repo_id: str, commit: str, path: str):
        super().__init__(f"{path!r} not found in {repo_id!r} at {commit}")
        self.repo_id = repo_id
        self.commit = commit
        self.path = path


class BlobMissing(WeightswarmError):
    """The catalog names a blob that the store does not hold: our fault, never a client's
    "not found" (that would make the HF client cache the file's absence)."""

    status = 503

    def __init__(self, sha256: str):
        super().__init__(f"blob {sha256} is not in the store")
        self.sha256 = sha256


class IntegrityError(WeightswarmError):
    """Bytes do not match the hash or size they were promised to have."""

    def __init__(self, what: str, expected: str, actual: str):
        super().__init__(f"{what}: expected {expected}, got {actual}")
        self.what = what
        self.expected = expected
        self.actual = actual


class InvalidSafetensors(BadRequest):
    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: not a valid safetensors file: {reason}")
        self.path = path
        self.reason = reason


class RangeNotSatisfiable(WeightswarmError):
    status = 416

    def __init__(self, header: str, size: int):
        super().__init__(f"range {header!r} not satisfiable for {size} bytes")
        self.size = size


class InsufficientSpace(WeightswarmError):
    status = 507

    def __init__(self, needed: int, free: int, where: str, *, reserve: str = ""):
        """`reserve`: the setting whose reserve `free` already leaves out, if any."""
        after = f" (after the reserve {reserve})" if reserve else ""
        super().__init__(
            f"not enough space in {where}: {needed} bytes needed, {free} bytes free{after}"
        )
        self.needed = needed
        self.free = free


class Busy(WeightswarmError):
    """Someone else holds the thing right now (another process fetching the same blob)."""

    status = 409


class Refused(WeightswarmError):
    """An operation that the configuration forbids (archive mode refuses removals)."""

    status = 403


class ConfigError(WeightswarmError):
    """A setting is missing, malformed, or contradicts another."""
