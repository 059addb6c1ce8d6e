"""Which Hugging Face API call a request path names: a pure parser over the raw path.

The HF client percent-encodes revisions and tree paths with `safe=""` (`refs/pr/1` arrives as
`refs%2Fpr%2F1`), and repo ids have one or two segments, so the path is split on the raw
string, the repo id is found by the position of the marker (`resolve`, `revision`, `tree`, ...),
and each segment is decoded only afterwards (PROTOCOLS.md section 1.1). Every decoded piece is
validated: a hostile path fails here, with a precise error, before anything is looked up.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from urllib.parse import unquote

from peer import hubs
from peer.errors import BadRequest, NotFound, UnsafePath
from peer.hfformat import TYPE_PLURAL
from peer.paths import check_repo_id, check_repo_path, check_revision

_PLURAL_TYPE = {plural: t for t, plural in TYPE_PLURAL.items()}
_API_MARKERS = ("revision", "tree", "refs", "paths-info", "commits")
MAX_RAW_PATH = 4096


@dataclass(frozen=True)
class HubCall:
    hub: str
    #: the path prefix this hub is served under: "" or "/hubs/<hub>"
    prefix: str
    #: repo_info, tree, refs, paths_info, commits, resolve, list
    kind: str
    repo_type: str
    repo_id: str = ""
    revision: str | None = None
    path: str = ""


def _decode(segment: str) -> str:
    try:
        return unquote(segment, errors="strict")
    except UnicodeDecodeError:
        raise UnsafePath(segment, "not valid UTF-8 after percent-decoding") from None


def parse(raw_path: str) -> HubCall:
    """Raises NotFound for paths that are no HF API call, BadRequest for hostile ones."""
    if len(raw_path) > MAX_RAW_PATH:
        raise BadRequest(f"request path longer than {MAX_RAW_PATH} bytes")
    return _parse(raw_path.split("?", 1)[0])


@functools.lru_cache(maxsize=8192)
def _parse(raw_path: str) -> HubCall:
    # Pure, so its answers are kept: a mirror sees the same few thousand paths again and again.
    if not raw_path.startswith("/"):
        raise BadRequest("request path must start with '/'")
    segments = raw_path[1:].split("/")
    hub, prefix = hubs.DEFAULT, ""
    if len(segments) >= 2 and segments[0] == "hubs":
        hub = _decode(segments[1])
        if hub not in hubs.PREFIXED:
            raise NotFound(f"unknown hub {hub!r}")
        prefix = hubs.prefix(hub)
        segments = segments[2:]
    if segments and segments[0] == "api":
        return _parse_api(hub, prefix, segments[1:])
    return _parse_resolve(hub, prefix, segments)


def _parse_api(hub: str, prefix: str, segs: list[str]) -> HubCall:
    if not segs or segs[0] not in _PLURAL_TYPE:
        raise NotFound("no such API route")
    repo_type = _PLURAL_TYPE[segs[0]]
    rest = segs[1:]
    if not rest or rest == [""]:
        return HubCall(hub, prefix, "list", repo_type)
    # Two-segment repo ids first: /api/models/org/name/tree/main beats org as a one-segment id.
    for n in (2, 1):
        if len(rest) > n and rest[n] in _API_MARKERS:
            repo_id = check_repo_id("/".join(_decode(s) for s in rest[:n]))
            return _api_call(hub, prefix, repo_type, repo_id, rest[n], rest[n + 1 :])
    if len(rest) in (1, 2):
        repo_id = check_repo_id("/".join(_decode(s) for s in rest))
        return HubCall(hub, prefix, "repo_info", repo_type, repo_id)
    raise NotFound("no such API route")


def _api_call(hub, prefix, repo_type, repo_id, marker, tail) -> HubCall:
    if marker == "refs":
        if tail:
            raise NotFound("no such API route")
        return HubCall(hub, prefix, "refs", repo_type, repo_id)
    if not tail or not tail[0]:
        raise NotFound(f"{marker} needs a revision")
    revision = check_revision(_decode(tail[0]))
    kind = {"revision": "repo_info", "tree": "tree", "paths-info": "paths_info",
            "commits": "commits"}[marker]
    path = ""
    if kind == "tree" and len(tail) > 1:
        path = "/".join(_decode(s) for s in tail[1:]).strip("/")
        if path:
            path = check_repo_path(path)
    elif len(tail) > 1:
        raise NotFound("no such API route")
    return HubCall(hub, prefix, kind, repo_type, repo_id, revision, path)


def _parse_resolve(hub: str, prefix: str, segs: list[str]) -> HubCall:
    repo_type = "model"
    if segs and segs[0] == "datasets":
        repo_type, segs = "dataset", segs[1:]
    # /{org}/{name}/resolve/{rev}/{path...} or /{name}/resolve/{rev}/{path...}
    for n in (2, 1):
        if len(segs) >= n + 3 and segs[n] == "resolve":
            repo_id = check_repo_id("/".join(_decode(s) for s in segs[:n]))
            revision = check_revision(_decode(segs[n + 1]))
            path = check_repo_path("/".join(_decode(s) for s in segs[n + 2 :]))
            return HubCall(hub, prefix, "resolve", repo_type, repo_id, revision, path)
    raise NotFound("no such route")
