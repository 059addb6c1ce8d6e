"""`weightswarm search TEXT` (issue 18, item 3): one search of an index (or of a mirror), the
Hugging Face listing contract (`/api/models`, `/api/datasets`, under `/hubs/<hub>/` for the
other hubs), printed as a table of repo, hub, size, mirrors, seeders and updated.

An index adds `"weightswarm": {"mirrors", "behind", "seeders", "size", "hub"}` to each item; a
mirror's own listing lacks it, so those columns show "-" (its size from `usedStorage`, where
an item has it). Every value comes from the network: a field of the wrong type counts as
missing, and text is stripped of control characters before it reaches a terminal.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from datetime import datetime
from urllib.parse import urlencode

import aiohttp

from . import hubs
from .errors import WeightswarmError
from .http import raise_for_status, unreachable

#: the longest a search may take, seconds
TIMEOUT = aiohttp.ClientTimeout(total=60, sock_connect=10)
#: the most of an answer read
MAX_ANSWER = 32 << 20
MISSING = "-"
#: the table's columns, and which of them are numbers (aligned right)
COLUMNS = ("repo", "hub", "size", "mirrors", "seeders", "updated")
NUMERIC = frozenset({"size", "mirrors", "seeders"})


class SearchError(WeightswarmError):
    """The endpoint answered something that is not a listing."""

    status = 502


@dataclass(frozen=True)
class Found:
    """One result, as the table and `--json` show it (None: the answer did not say)."""

    repo: str
    hub: str
    size: int | None
    mirrors: int | None
    behind: int | None
    seeders: int | None
    updated: str | None

    def as_json(self) -> dict:
        return asdict(self)


def search_url(endpoint: str, text: str, *, hub: str = hubs.DEFAULT, repo_type: str = "model",
               limit: int = 20) -> str:
    kind = "datasets" if repo_type == "dataset" else "models"
    query = urlencode({"search": text, "limit": limit})
    return f"{endpoint.rstrip('/')}{hubs.prefix(hubs.check_hub(hub))}/api/{kind}?{query}"


async def search(endpoint: str, text: str, *, hub: str = hubs.DEFAULT,
                 repo_type: str = "model", limit: int = 20,
                 setting: str = "--endpoint, peer.index or peer.mirrors") -> list[Found]:
    url = search_url(endpoint, text, hub=hub, repo_type=repo_type, limit=limit)
    try:
        async with aiohttp.ClientSession(timeout=TIMEOUT) as http, http.get(url) as r:
            await raise_for_status(r)
            data = await r.content.read(MAX_ANSWER + 1)
    except (TimeoutError, aiohttp.ClientError) as e:
        raise unreachable(url, e, setting=setting) from e
    return found_in(data, hub, url)


def found_in(data: bytes, hub: str, url: str = "") -> list[Found]:
    """The results of one listing answer, in its order."""
    if len(data) > MAX_ANSWER:
        raise SearchError(f"{url}: an answer larger than {MAX_ANSWER} bytes")
    try:
        items = json.loads(data)
    except ValueError:
        raise SearchError(f"{url}: the answer is not JSON") from None
    if not isinstance(items, list):
        raise SearchError(f"{url}: the answer is not a list of repos")
    return [found(item, hub) for item in items if isinstance(item, dict)]


def found(item: dict, hub: str) -> Found:
    ours = item.get("weightswarm")
    ours = ours if isinstance(ours, dict) else {}
    size = _count(ours.get("size"))
    return Found(repo=_text(item.get("id") or item.get("modelId")) or MISSING,
                 hub=_text(ours.get("hub")) or hub,
                 size=_count(item.get("usedStorage")) if size is None else size,
                 mirrors=_count(ours.get("mirrors")), behind=_count(ours.get("behind")),
                 seeders=_count(ours.get("seeders")),
                 updated=_date(item.get("lastModified")) or _date(item.get("createdAt")))


def table(results: list[Found]) -> list[str]:
    """The lines to print: a header, then one line a result."""
    rows = [dict(zip(COLUMNS, COLUMNS, strict=True))]
    rows += [_cells(f) for f in results]
    widths = {c: max(len(row[c]) for row in rows) for c in COLUMNS}
    return ["  ".join(row[c].rjust(widths[c]) if c in NUMERIC else row[c].ljust(widths[c])
                      for c in COLUMNS).rstrip() for row in rows]


def human_size(n: int) -> str:
    """1023 B, 1.5 KiB, 12.0 MiB, 1.2 GiB, 3.4 TiB."""
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        n /= 1024
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def _cells(f: Found) -> dict[str, str]:
    mirrors = MISSING if f.mirrors is None else str(f.mirrors)
    if f.mirrors is not None and f.behind:
        mirrors += f" ({f.behind} behind)"
    return {"repo": f.repo, "hub": f.hub,
            "size": MISSING if f.size is None else human_size(f.size), "mirrors": mirrors,
            "seeders": MISSING if f.seeders is None else str(f.seeders),
            "updated": f.updated or MISSING}


def _count(value) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or value < 0:
        return None
    return int(value)


def _text(value) -> str | None:
    """Printable text, at most 200 characters (no escape sequence reaches the terminal)."""
    if not isinstance(value, str):
        return None
    return "".join(c if c.isprintable() else "?" for c in value[:200]) or None


def _date(value) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value[:64]).date().isoformat()
    except ValueError:
        return None
