"""The index's web pages (issue 21): the same search as `/api/models` across every mirror, with
how many mirrors hold each repo, its seeders and who holds it, and a page per mirror (site,
region, when the index last verified it, what it holds). Browsers only (an Accept that names
text/html, peer/pages); any other client gets the 404 it got before these paths existed.
"""

from __future__ import annotations

import time
from urllib.parse import quote

from aiohttp import web
from multidict import MultiDict

from peer import hubs, pages
from peer.errors import BadRequest, NotFound, WeightswarmError
from peer.hfformat import TYPE_URL_PREFIX
from peer.listing import parse_list_query

from . import search
from .indexhttp import INDEX, STALE_ROUNDS

PAGE = 30
SITE = {"site": "weightswarm index"}
#: the most repos a mirror's page lists
HOLDS = 500


def _browser_only(handler):
    """Pages for browsers; others get the 404 these paths always gave; errors as pages."""
    async def page(request: web.Request) -> web.StreamResponse:
        if not pages.wants_html(request.headers.get("Accept")):
            raise web.HTTPNotFound()
        index = request.app.get(INDEX)
        try:
            if index is None:
                raise NotFound("this tracker runs no index")
            return pages.html_response(await handler(request, index))
        except WeightswarmError as e:
            status = e.status if e.status in (400, 404) else 503
            title = "Not found" if status == 404 else "Bad request"
            return pages.html_response(pages.render(
                "error.html", **SITE, prefix="", repo_type="model", search="", status=status,
                title=title, message=str(e)[:300]), status)
    return page


def _params(request: web.Request) -> dict[str, str]:
    params = {k: request.query[k][:256] for k in ("search", "p") if request.query.get(k)}
    page = params.get("p", "0")
    if not (page.isascii() and page.isdigit()) or int(page) > 10_000:
        raise BadRequest("p is a page number, 0 to 10000")
    return params


async def search_page(request: web.Request, index) -> bytes:
    hub = request.match_info.get("hub", hubs.DEFAULT)
    if hub not in hubs.HUBS:
        raise NotFound(f"no hub {hub[:40]!r}")
    repo_type = "dataset" if request.path.endswith("/datasets") else "model"
    params = _params(request)
    page = int(params.get("p", "0"))
    query = parse_list_query(MultiDict([("search", params.get("search", "")),
                                        ("limit", str(PAGE + 1)),
                                        ("cursor", str(page * PAGE))]))
    rows = await index.read(search.search, hub, repo_type, query)
    mirrors = await index.view()
    plural = "datasets" if repo_type == "dataset" else "models"
    names = {m["key"]: (m["name"] or m["base_url"], m["base_url"]) for m in mirrors}
    items = []
    for row in rows[:PAGE]:
        holders = await index.read(search.holders, hub, repo_type, row.repo_id, "main",
                                   time.time() - STALE_ROUNDS * index.config.poll_interval)
        items.append({
            "id": row.repo_id, "hub": pages.HUB_NAMES[row.hub], "size": row.size,
            "mirrors": row.mirrors, "behind": row.behind, "gated": row.gated,
            "seeders": index.seeders(row.torrents), "updated": pages.when(row.updated_at),
            "holders": [(names.get(h.key, (h.base_url,))[0],
                         f"{h.base_url}{hubs.prefix(hub)}/{TYPE_URL_PREFIX[repo_type]}"
                         f"{quote(row.repo_id)}") for h in holders[:5]]})
    return pages.render(
        "index_search.html", **SITE, prefix=hubs.prefix(hub), repo_type=repo_type,
        search=params.get("search", ""), params=params, items=items, page=page,
        previous=page - 1 if page else None, more=len(rows) > PAGE,
        mirror_count=len(mirrors),
        hubs=[(h, pages.HUB_NAMES[h], f"{hubs.prefix(h)}/{plural}") for h in hubs.HUBS])


def _slug(m: dict) -> str:
    return quote(m["name"] or m["key"], safe="")


async def mirrors_page(request: web.Request, index) -> bytes:
    mirrors = [{**m, "slug": _slug(m)} for m in await index.view()]
    wanted = request.match_info.get("name")
    one, holds = None, []
    if wanted is not None:
        one = next((m for m in mirrors if wanted in (m["name"], m["key"])), None)
        if one is None:
            raise NotFound(f"no mirror {wanted[:80]!r}")
        mirrors = [one]
        rows = await index.read(_holds, one["key"])
        holds = [{"repo_id": r, "hub": hub, "type": t, "updated": u,
                  "href": f"{one['base_url']}{hubs.prefix(hub)}/{TYPE_URL_PREFIX[t]}{quote(r)}"}
                 for hub, t, r, u in rows]
    return pages.render("index_mirrors.html", **SITE, prefix="", repo_type="model", search="",
                        mirrors=mirrors, one=one, holds=holds)


def _holds(conn, key: str) -> list[tuple]:
    return conn.execute("SELECT hub, type, repo_id, updated_at FROM repos WHERE mirror = ? "
                        "ORDER BY hub, type, repo_id LIMIT ?", (key, HOLDS)).fetchall()


def add_pages(app: web.Application) -> None:
    app.router.add_get("/", _browser_only(search_page))
    for prefix in ("", "/hubs/{hub}"):
        app.router.add_get(f"{prefix}/models", _browser_only(search_page))
        app.router.add_get(f"{prefix}/datasets", _browser_only(search_page))
    app.router.add_get("/mirrors", _browser_only(mirrors_page))
    app.router.add_get("/mirrors/{name}", _browser_only(mirrors_page))
    app.router.add_get("/static/weightswarm.css", _stylesheet)


async def _stylesheet(request: web.Request) -> web.Response:
    return pages.stylesheet_response()
