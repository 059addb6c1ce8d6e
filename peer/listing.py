"""The query of a Hugging Face listing (`/api/models`, `/api/datasets`; PROTOCOLS.md section 1)
as the mirror and the index both answer it, and the `Link` that pages it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import BadRequest
from .paths import ascii_digits

#: the sorts a listing takes (each answerer maps them to what it keeps)
SORTS = ("downloads", "likes", "lastModified", "createdAt", "trendingScore", "id")
#: items in one page; a larger limit is served a page at a time
LIST_PAGE = 1000
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ListQuery:
    search: tuple[str, ...]
    author: str | None
    tags: tuple[str, ...]
    sort: str | None
    ascending: bool
    offset: int
    limit: int
    full: bool
    card: bool


def parse_list_query(params) -> ListQuery:
    """The query of /api/models or /api/datasets (a MultiDict: lists are repeated keys)."""

    def flag(name: str) -> bool:
        return params.get(name, "").lower() in ("1", "true", "yes")

    def number(name: str, default: int, low: int, high: int) -> int:
        text = params.get(name)
        if text is None or text == "":
            return default
        value = ascii_digits(text)
        if value is None or len(text) > 12 or value < low:
            raise BadRequest(f"{name} must be an integer of at least {low}")
        return min(value, high)

    sort = params.get("sort") or None
    if sort is not None and sort not in SORTS:
        raise BadRequest(f"sort must be one of {', '.join(SORTS)}")
    direction = params.get("direction", "-1")
    if direction not in ("1", "-1", "asc", "desc"):
        raise BadRequest("direction must be -1 (descending) or 1 (ascending)")
    search = tuple(t for t in params.getall("search", []) if t)
    if any(len(t) > 256 for t in search):
        raise BadRequest("search terms are at most 256 characters")
    author = params.get("author") or None
    tags = tuple(t for t in params.getall("filter", []) if t)
    # No repo id, author or tag holds a control character; sqlite's full-text index refuses
    # a NUL in its query ("unterminated string": a 500 the HTTP fuzzer found).
    if any(_CONTROL.search(t) for t in (*search, *tags, author or "")):
        raise BadRequest("search, author and filter hold no control characters")
    return ListQuery(
        search=search,
        author=author,
        tags=tags,
        sort=sort,
        ascending=direction in ("1", "asc"),
        offset=number("cursor", 0, 0, 10**12),
        # A larger limit is served a page at a time: the client follows Link until it has all.
        limit=number("limit", LIST_PAGE, 1, LIST_PAGE),
        full=flag("full"),
        card=flag("cardData") or flag("full"),
    )


def next_link(origin: str, url, cursor: int) -> str:
    """An absolute `Link: rel="next"` (httpx does not resolve relative ones) for a yarl `url`,
    keeping every query parameter but the cursor."""
    query = [(k, v) for k, v in url.query.items() if k != "cursor"]
    query.append(("cursor", str(cursor)))
    return f'<{origin}{url.with_query(query).raw_path_qs}>; rel="next"'
