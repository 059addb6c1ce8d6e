"""The mirror's web pages (issue 21), at the paths people know from huggingface.co: `/`,
`/models?search=`, `/datasets`, `/{org}/{name}`, `/datasets/{org}/{name}`,
`/{org}/{name}/tree/{rev}[/{path}]`, and the same under `/hubs/<hub>/`. Only a browser (an
Accept that names text/html, peer/pages) gets one; the HTML is rendered from the same lookups
as the API (mirror/hfapi.py), on the catalog's thread, and kept with the other answers until
the catalog changes.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import posixpath
import sqlite3
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from multidict import MultiDict

from peer import hubs, pages
from peer.errors import BadRequest, NotFound, WeightswarmError
from peer.hfformat import TYPE_URL_PREFIX
from peer.listing import parse_list_query
from peer.paths import check_repo_id, check_repo_path, check_revision

from .hfapi import HubService, tree_json
from .routes import HubCall

log = logging.getLogger(__name__)

#: results on a search page
PAGE = 30
SORTS = (("downloads", "most downloaded"), ("lastModified", "recently updated"),
         ("id", "name"), ("size", "largest"), ("likes", "most liked"))
#: the query parameters a search page takes (others are ignored)
SEARCH_PARAMS = ("search", "tag", "library", "license", "sort", "p")
_MAX_PAGE = 10_000


@dataclass(frozen=True)
class Page:
    kind: str  # home, search, repo, operator
    call: HubCall


def parse_page(raw_path: str) -> Page | None:
    """The page a path names, or None when it names none (then it is an API path, or
    nothing). BadRequest for a hostile one."""
    path = raw_path.split("?", 1)[0]
    segments = [unquote(s, errors="strict") for s in path.split("/")[1:]]
    hub, prefix = hubs.DEFAULT, ""
    if len(segments) >= 2 and segments[0] == "hubs" and segments[1] in hubs.PREFIXED:
        hub, prefix, segments = segments[1], hubs.prefix(segments[1]), segments[2:]
    if segments in ([], [""]):
        return Page("home", HubCall(hub, prefix, "page", "model"))
    if segments == ["-", "status"] and not prefix:  # no repo id starts with "-"
        return Page("operator", HubCall(hub, prefix, "page", "model"))
    if segments in (["models"], ["datasets"]):
        repo_type = "dataset" if segments[0] == "datasets" else "model"
        return Page("search", HubCall(hub, prefix, "page", repo_type))
    repo_type = "model"
    if segments[0] == "datasets":
        repo_type, segments = "dataset", segments[1:]
    if len(segments) not in (1, 2) and (len(segments) < 4 or segments[2] != "tree"):
        return None
    if segments and segments[0] in ("api", "static", "blobs", "metrics", "hubs"):
        return None
    repo_id = check_repo_id("/".join(segments[:2]))
    revision, sub = None, ""
    if len(segments) >= 4:
        revision = check_revision(segments[3])
        sub = "/".join(segments[4:]).strip("/")
        sub = check_repo_path(sub) if sub else ""
    return Page("repo", HubCall(hub, prefix, "page", repo_type, repo_id, revision, sub))


def _site(base: str) -> dict:
    return {"site": "weightswarm mirror", "base": base}


def _repo_href(call: HubCall, repo_id: str, revision: str | None = None,
               path: str = "") -> str:
    href = f"{call.prefix}/{TYPE_URL_PREFIX[call.repo_type]}{repo_id}"
    if revision:
        href += f"/tree/{quote(revision, safe='')}" + (f"/{quote(path)}" if path else "")
    return href


# -- search ----------------------------------------------------------------------------------


def search_params(query) -> dict[str, str]:
    """The search page's parameters, checked: BadRequest for a malformed one."""
    params = {k: str(query.get(k))[:200] for k in SEARCH_PARAMS if query.get(k)}
    if params.get("sort", "downloads") not in dict(SORTS):
        raise BadRequest(f"sort is one of {', '.join(dict(SORTS))}")
    page = params.get("p", "0")
    if not (page.isascii() and page.isdigit()) or int(page) > _MAX_PAGE:
        raise BadRequest(f"p is a page number, 0 to {_MAX_PAGE}")
    return params


def search_page(service: HubService, call: HubCall, params: dict[str, str], base: str,
                readable=None) -> bytes:
    page = int(params.get("p", "0"))
    tags = [f"{k}:{params[k]}" if k == "license" else params[k]
            for k in ("tag", "library", "license") if params.get(k)]
    asked = MultiDict([("search", params.get("search", "")), ("limit", str(PAGE)),
                       *(("filter", t) for t in tags)])
    # `size` is a sort of ours, not the API's: given after the API's checks
    query = dataclasses.replace(parse_list_query(asked), offset=page * PAGE,
                                sort=params.get("sort", "downloads"))
    found = service.listing(call, query, readable)
    items = [{"id": r["id"], "href": _repo_href(call, r["id"]),
              "updated": (r.get("lastModified") or "")[:10], "downloads": r.get("downloads", 0),
              "tags": r.get("tags", []), "gated": bool(r.get("gated")),
              "private": bool(r.get("private"))} for r in found[:PAGE]]
    return pages.render(
        "search.html", **_site(base), prefix=call.prefix, repo_type=call.repo_type,
        hub_name=pages.HUB_NAMES[call.hub] if call.hub != hubs.DEFAULT else "",
        search=params.get("search", ""), params=params, sort=params.get("sort", "downloads"),
        sorts=SORTS, facets=_facets(service, call), items=items, page=page,
        previous=page - 1 if page else None, more=len(found) > PAGE,
        hubs=[(h, pages.HUB_NAMES[h], f"{hubs.prefix(h)}/{_plural(call)}") for h in hubs.HUBS])


def _plural(call: HubCall) -> str:
    return "datasets" if call.repo_type == "dataset" else "models"


def _facets(service: HubService, call: HubCall) -> list[tuple[str, str, list[str]]]:
    """The values the filters offer: the catalog's most common libraries, licences and tags."""
    counts = service.catalog.facets(call.hub, call.repo_type)
    return [("library", "library", counts["library"]), ("license", "licence", counts["license"]),
            ("tag", "tag", counts["tag"])]


# -- a repo -----------------------------------------------------------------------------------


def repo_page(service: HubService, call: HubCall, base: str,
              remote_images: bool = False, swarm=None) -> bytes:
    """A repo at a revision (main by default), its files at a folder, card, refs, commits."""
    revision = call.revision or "main"
    lookup = HubCall(call.hub, call.prefix, "repo_info", call.repo_type, call.repo_id, revision)
    info = service.repo_info(lookup, blobs=True)
    repo, snapshot = service.snapshot(lookup)
    files = service.catalog.files(snapshot)
    try:
        entries = tree_json(files, call.path, recursive=False, last_commit=None)
    except LookupError:
        raise NotFound(f"no folder {call.path!r} in {call.repo_id} at {revision}") from None
    ours, by_path = info.get("weightswarm", {}), {f.path: f for f in files}
    rows = [_file_row(call, revision, e, by_path, ours, swarm)
            for e in sorted(entries, key=lambda e: (e["type"] != "directory", e["path"]))]
    card_fields, card_html = _card(service, snapshot, files, remote_images, f"{call.prefix}/"
                                   f"{TYPE_URL_PREFIX[call.repo_type]}{call.repo_id}/resolve/"
                                   f"{snapshot.commit}/")
    commits = [{"id": c["id"], "title": c.get("title", ""), "date": (c.get("date") or "")[:16]}
               for c in service.commits(lookup)[:20]]
    return pages.render(
        "repo.html", **_site(base), prefix=call.prefix, repo_type=call.repo_type,
        search="", repo_id=call.repo_id, hub_name=pages.HUB_NAMES[call.hub],
        gated=repo.access == "gated", private=repo.access == "private",
        commit=snapshot.commit, updated=(info.get("lastModified") or "")[:16],
        tags=info.get("tags", []), refs=_refs(service, call, lookup), path=call.path,
        up=_repo_href(call, call.repo_id, revision, posixpath.dirname(call.path)),
        files=rows, total=sum(f.size for f in files),
        commands=commands(call, base, None if revision == "main" else revision),
        commits=commits, card_fields=card_fields, card_html=card_html)


def _refs(service: HubService, call: HubCall, lookup: HubCall) -> list[dict]:
    refs = service.refs(lookup, include_prs=False)
    out = []
    for kind, key in (("branch", "branches"), ("tag", "tags")):
        for ref in refs.get(key, []):
            out.append({"kind": kind, "name": ref["name"], "commit": ref["targetCommit"],
                        "href": _repo_href(call, call.repo_id, ref["name"])})
    return out


def _file_row(call: HubCall, revision: str, entry: dict, by_path: dict, ours: dict,
              swarm) -> dict[str, Any]:
    """One row of the file table; `swarm(sha256)`: the seeder's view of a blob's swarm."""
    name = posixpath.basename(entry["path"])
    if entry["type"] == "directory":
        return {"folder": True, "name": name,
                "href": _repo_href(call, call.repo_id, revision, entry["path"])}
    f = by_path[entry["path"]]
    scan = ours.get("scan", {}).get(f.path)
    row = {"folder": False, "name": name, "size": f.size,
           "hash": f.sha256 if f.lfs else f.git_sha1,
           "verified": ours.get("verifiedBy", {}).get(f.path, ""),
           "scan": scan["status"] if scan else "",
           "href": f"{call.prefix}/{TYPE_URL_PREFIX[call.repo_type]}{call.repo_id}/resolve/"
                   f"{quote(revision, safe='')}/{quote(f.path)}",
           "torrent": None, "magnet": None, "swarm": ""}
    if f.lfs and f.size >= 4 << 20:
        row["torrent"] = f"/api/weightswarm/torrents/{f.sha256}.torrent"
        row["magnet"] = f"/api/weightswarm/torrents/{f.sha256}.torrent?format=magnet"
        row["swarm"] = _swarm_text(swarm(f.sha256) if swarm else None)
    return row


def _swarm_text(swarm: tuple[int, int, int] | None) -> str:
    if swarm is None:
        return "not seeded here"
    seeders, leechers, connected = swarm
    said = f"{seeders} seeders, {leechers} leechers · " if seeders >= 0 else ""
    return f"{said}{connected} peers here"


def _card(service: HubService, snapshot, files, remote_images: bool,
          resolve: str) -> tuple[list[tuple[str, str]], str]:
    """The README's front matter as (field, value) rows and its body as safe HTML."""
    readme = next((f for f in files if f.path == "README.md"), None)
    if readme is None:
        return [], ""
    fields = []
    for key, value in snapshot.card_data.items():  # as read when it was published
        shown = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
        fields.append((str(key), shown[:300]))
    return fields, _card_body(service.catalog, service.store, readme.sha256, remote_images,
                              resolve)


@functools.lru_cache(maxsize=256)
def _card_body(catalog, store, sha256: str, remote_images: bool, resolve: str) -> str:
    """A card's body once per blob and place (its bytes never change), from the render kept
    when its snapshot was published: Markdown is most of a page's time (about 15 ms for a
    13 kB card), and a page is rendered again after every change of the catalog."""
    html = catalog.card(sha256, pages.RENDERER)
    if html is None:  # published before cards were kept, or by an older renderer
        with store.open(sha256) as fh:
            html = pages.readme_markdown(fh.read(1 << 20))
        try:
            catalog.put_card(sha256, pages.RENDERER, html)
        except (sqlite3.Error, WeightswarmError) as e:  # a busy or full disk: next time
            log.debug("card of %s not kept: %s", sha256[:12], e)
    return pages.clean_card(html, remote_images=remote_images, files=resolve)


def commands(call: HubCall, base: str, revision: str | None) -> list[tuple[str, str]]:
    """What to run to get the repo from this mirror, its URL filled in."""
    endpoint = f"{base}{call.prefix}"
    repo_type = " --repo-type dataset" if call.repo_type == "dataset" else ""
    rev = f" --revision {revision}" if revision else ""
    out = [("hf (huggingface_hub's command)",
            f"HF_ENDPOINT={endpoint} hf download {call.repo_id}{repo_type}{rev}"),
           ("Python", f"from huggingface_hub import snapshot_download\n"
                      f"snapshot_download({call.repo_id!r}"
                      f"{', repo_type=' + repr(call.repo_type) if repo_type else ''}"
                      f"{', revision=' + repr(revision) if revision else ''}, "
                      f"endpoint={endpoint!r})"),
           ("weightswarm, from peers nearby",
            f"weightswarm pull {call.repo_id}{'@' + revision if revision else ''} --mirror {base}"
            f"{' --hub ' + call.hub if call.hub != hubs.DEFAULT else ''}"
            f"{' --type dataset' if repo_type else ''}")]
    if call.hub == hubs.MODELSCOPE:
        out.append(("modelscope", f"MODELSCOPE_ENDPOINT={endpoint} modelscope download "
                                  f"--model {call.repo_id}"))
    return out


def error_page(call_prefix: str, status: int, title: str, message: str, base: str) -> bytes:
    return pages.render("error.html", **_site(base), prefix=call_prefix, repo_type="model",
                        search="", status=status, title=title, message=message)


# -- the operator's page ----------------------------------------------------------------------

#: the ways blob bytes leave (Metrics.egress_totals), charted on the operator's page; and
#: what the other peers of its swarms sent each other instead (by its tracker's count)
EGRESS_WAYS = ("bittorrent", "webseed", "resolve")
PEERS = "peers"
#: seconds between samples of the egress totals, and the hours charted
EGRESS_SAMPLE = 60.0
EGRESS_HOURS = 6
_CHART_W, _CHART_H = 720, 160


def _grown(a: dict, b: dict, way: str) -> float:
    """Bytes sent that way between two samples: a running total that went back (the tracker
    restarted, a swarm emptied) counts nothing for that interval."""
    return max(0, b.get(way, 0) - a.get(way, 0))


def egress_chart(history: list[tuple[float, dict]], now: float,
                 totals: dict[str, int]) -> dict:
    """The egress history as SVG polylines, one per way: bytes/s between samples over the
    last EGRESS_HOURS hours (x: time, y: rate scaled to the highest). `peers_share`: of the
    bytes the mirror's swarms carried in these hours (its BitTorrent and web seed bytes and
    the other peers'), the peers' part; None while the tracker has not said."""
    points = [*history, (now, totals)]
    start = now - EGRESS_HOURS * 3600
    ways = (*EGRESS_WAYS, PEERS) if any(PEERS in p for _, p in points) else EGRESS_WAYS
    rates: dict[str, list[tuple[float, float]]] = {way: [] for way in ways}
    peers = swarm = 0.0
    for (t0, a), (t1, b) in zip(points, points[1:], strict=False):
        if t1 <= t0 or t1 < start:
            continue
        known = PEERS in a and PEERS in b
        for way in ways:  # a step per sample: the rate held over its interval
            rate = _grown(a, b, way) / (t1 - t0) if way != PEERS or known else 0.0
            rates[way] += [(max(t0, start), rate), (t1, rate)]
        if known:
            peers += _grown(a, b, PEERS)
            swarm += _grown(a, b, "bittorrent") + _grown(a, b, "webseed")
    peak = max((r for series in rates.values() for _, r in series), default=0.0) or 1.0
    lines = []
    for way, series in rates.items():
        xy = " ".join(f"{(t - start) / (now - start) * _CHART_W:.1f},"
                      f"{_CHART_H - r / peak * (_CHART_H - 10):.1f}" for t, r in series)
        lines.append({"way": way, "points": xy, "sent": totals.get(way, 0)})
    empty = not any(r for series in rates.values() for _, r in series)
    share = peers / (peers + swarm) if peers + swarm else None
    return {"width": _CHART_W, "height": _CHART_H, "lines": lines, "peak": peak,
            "hours": EGRESS_HOURS, "empty": empty, "peers_share": share,
            "peers_known": PEERS in totals}


def operator_page(service: HubService, base: str, *, key: str, chart: dict,
                  seeding: int) -> bytes:
    catalog = service.catalog
    runs = catalog.runs(limit=30)
    counts = {"running": 0, "ok": 0, "failed": 0}
    for run in runs:
        status = run["status"] or "running"
        counts[status if status in counts else "failed"] += 1
    return pages.render(
        "operator.html", **_site(base), prefix="", repo_type="model", search="",
        store_bytes=catalog.store_bytes(), blobs=catalog.blob_count(),
        repos=len(catalog.repos()), runs=runs, counts=counts, key=key, chart=chart,
        seeding=seeding)
