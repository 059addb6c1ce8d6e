"""The project's errors: one base, a few subclasses with exact meanings.

Each carries the context a reader needs (repo id, revision, path) and, where it helps, a
standard base too (`EntryNotFound` is a `FileNotFoundError`). Every constructor also takes a
`message` of its own, for an error another server reported. The HTTP shells map them to status
codes in one middleware (peer/http.py); the CLI prints one line.

The same classes go the other way: when another server (a mirror, an upstream hub, a peer
daemon) answers with an error, `peer.http.raise_for_status` raises the class its `X-Error-Code`
and status name, mixed with `RemoteError`, which keeps the URL and the status. So a 404
`RepoNotFound` from a hub and one of our own are both a `RepoNotFound`, and `except
RemoteError` is "that server said no", whatever it said.

Errors that belong to one concept live beside it (the manifest's, the sync's, the tracker's),
subclassing the base here.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path


class WeightswarmError(Exception):
    """Base of every error this project raises on purpose."""

    #: HTTP status the API answers with, and the Hugging Face `X-Error-Code` (if any).
    status = 500
    error_code: str | None = None

    def __init__(self, message: str = ""):
        super().__init__(message)


class BadRequest(WeightswarmError, ValueError):
    """The request (or command-line input) is malformed or hostile."""

    status = 400


class UnsafePath(BadRequest):
    """A path from outside is absolute, escapes its root, or holds forbidden characters."""

    def __init__(self, path: str = "", reason: str = "", *, message: str | None = None):
        super().__init__(message or f"unsafe path {path!r}: {reason}")
        self.path = path
        self.reason = reason


class InvalidRepoId(BadRequest):
    def __init__(self, repo_id: str = "", reason: str = "", *, message: str | None = None):
        super().__init__(message or f"invalid repo id {repo_id!r}: {reason}")
        self.repo_id = repo_id


class NotFound(WeightswarmError, LookupError):
    status = 404


class RepoNotFound(NotFound):
    error_code = "RepoNotFound"

    def __init__(self, repo_id: str = "", repo_type: str = "model", *,
                 message: str | None = None):
        super().__init__(message or f"{repo_type} repository {repo_id!r} not found")
        self.repo_id = repo_id
        self.repo_type = repo_type


class RevisionNotFound(NotFound):
    error_code = "RevisionNotFound"

    def __init__(self, repo_id: str = "", revision: str = "", *, message: str | None = None):
        super().__init__(message or f"revision {revision!r} not found in {repo_id!r}")
        self.repo_id = repo_id
        self.revision = revision


class EntryNotFound(NotFound, FileNotFoundError):
    error_code = "EntryNotFound"

    def __init__(self, repo_id: str = "", commit: str = "", path: str = "", *,
                 message: str | None = None):
        super().__init__(message or f"{path!r} not found in {repo_id!r} at {commit}")
        self.repo_id = repo_id
        self.commit = commit
        self.path = path


class GatedRepo(WeightswarmError):
    """A repo whose files are given only to users who accepted its terms."""

    status = 403
    error_code = "GatedRepo"

    def __init__(self, repo_id: str = "", *, message: str | None = None):
        super().__init__(message or f"access to {repo_id!r} is restricted: it is a gated repo")
        self.repo_id = repo_id


class GatedNeedsToken(GatedRepo):
    """A gated repo asked for with no token (or none that is live): HF's 401."""

    status = 401


class Hidden(RepoNotFound):
    """A repo this request may not know of: private, or missing, answered alike so that the
    answer does not tell which. 401 without a token, as the Hub answers; 404 with one."""

    status = 401


class Refused(WeightswarmError):
    """An operation that is not allowed: by the configuration (archive mode refuses
    removals), or by another server (401 or 403 without a code)."""

    status = 403


class BlobMissing(WeightswarmError):
    """The catalog names a blob that the store does not hold: our fault, never a client's
    "not found" (that would make the HF client cache the file's absence)."""

    status = 503

    def __init__(self, sha256: str = "", *, message: str | None = None):
        super().__init__(message or f"blob {sha256} is not in the store")
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

    def __init__(self, header: str = "", size: int = 0, *, message: str | None = None):
        super().__init__(message or f"range {header!r} not satisfiable for {size} bytes")
        self.size = size


class InsufficientSpace(WeightswarmError):
    """Out of disk space: refused up front (what is needed is known), or met while writing
    (`needed` None: the disk filled up meanwhile). An expected condition, not a crash."""

    status = 507

    def __init__(self, needed: int | None, free: int, where: str, *, reserve: str = "",
                 writing: str = ""):
        """`reserve`: the setting whose reserve `free` already leaves out, if any; `writing`:
        what was being written when the disk filled."""
        after = f" (after the reserve {reserve})" if reserve else ""
        if needed is None:
            what = f" while writing {writing}" if writing else ""
            text = f"no space left in {where}{what}: {free} bytes free{after}"
        else:
            text = f"not enough space in {where}: {needed} bytes needed, {free} bytes free{after}"
        super().__init__(text)
        self.needed = needed
        self.free = free
        self.where = where


#: the errnos of a full disk (and of a full quota, which is the same to us)
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def out_of_space(error: OSError, where, *, writing: str = "", needed: int | None = None,
                 ) -> InsufficientSpace | None:
    """The `InsufficientSpace` an OSError of a full disk stands for, else None (the caller
    re-raises what it caught)."""
    if error.errno not in NO_SPACE_ERRNOS:
        return None
    folder = Path(where)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # what was to be made is not there: measure its disk
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = 0
    return InsufficientSpace(needed, free, str(where), writing=writing)


class RequestTimeout(WeightswarmError):
    """A client took too long to send what it started to (a request's body)."""

    status = 408


class Busy(WeightswarmError):
    """Someone else holds the thing right now (another process fetching the same blob)."""

    status = 409


class ConfigError(WeightswarmError):
    """A setting is missing, malformed, or contradicts another."""


# -- what other servers answer ----------------------------------------------------------------


class RemoteError(WeightswarmError):
    """Another server answered with an error, or could not be reached. `url` is what was
    asked, `http_status` what it answered (0: no answer); `status` stays the class's own,
    what we answer should the error pass on to a client of ours."""

    status = 502
    url: str = ""
    http_status: int = 0


class Unavailable(RemoteError):
    """The other server failed (5xx), timed out or could not be reached: trying again later
    may work. Never a "not found": a client would cache the absence."""


class UpstreamTimeout(Unavailable):
    """The upstream gave no answer in time (unreachable, or slower than the client waits): a
    mirror fetching on demand answers 504, never a "not found" (issue 19)."""

    status = 504


class RateLimited(Unavailable):
    """The other server asks us to slow down (429), and waiting as asked did not help."""

    status = 503


class RemoteBadRequest(BadRequest, RemoteError):
    pass


class RemoteNotFound(NotFound, RemoteError):
    pass


class RemoteRepoNotFound(RepoNotFound, RemoteError):
    pass


class RemoteRevisionNotFound(RevisionNotFound, RemoteError):
    pass


class RemoteEntryNotFound(EntryNotFound, RemoteError):
    pass


class RemoteGatedRepo(GatedRepo, RemoteError):
    pass


class RemoteRefused(Refused, RemoteError):
    pass


class RemoteRangeNotSatisfiable(RangeNotSatisfiable, RemoteError):
    pass
