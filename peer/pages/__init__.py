"""The web pages of a mirror and of the index (issue 21): server-rendered HTML for browsers,
from the same in-memory answers as the API, with no script and no remote resource.

- **Negotiation.** `wants_html(Accept)`: only a request that names `text/html` gets a page;
  every API client (which asks for `*/*` or JSON) keeps getting what it got before.
- **Cards are hostile input.** A model card's Markdown is rendered by markdown-it-py (raw HTML
  allowed, as the Hub renders it) and then cleaned by nh3 (Ammonia): an allow-list of tags and
  attributes, links only to http, https and mailto, no event handler, no `style`, no SVG, no
  comment; images only from this site (or anywhere, if the operator allows remote images). Every
  page also carries a Content-Security-Policy that runs no script at all: the pages need none.
- **Templates** (Jinja2, autoescape on) and the one stylesheet sit beside this module.
"""

from __future__ import annotations

import functools
import math
import posixpath
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import jinja2
import nh3
from markdown_it import MarkdownIt

HERE = Path(__file__).parent
#: the hubs by the names their users know
HUB_NAMES = {"huggingface": "Hugging Face", "modelscope": "ModelScope", "kaggle": "Kaggle"}
#: the pages run no script, load nothing from elsewhere, and may not be framed
CSP = ("default-src 'none'; style-src 'self'; img-src 'self' data:{images}; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"}
#: the largest card rendered (bytes); the rest is cut, with a note. A hostile card (a table
#: of thousands of columns) takes markdown-it-py about 0.6 s at this size, 4 s at 470 kB
MAX_CARD = 64 * 1024
_LINKS = {"http", "https", "mailto"}
_TAGS = (nh3.ALLOWED_TAGS - {"map", "area"}) | {"input"}
_ATTRIBUTES = {
    "a": {"href", "title"}, "img": {"src", "alt", "title", "width", "height"},
    "td": {"align"}, "th": {"align"}, "input": {"type", "checked", "disabled"},
    "code": {"class"}, "ol": {"start"}, "details": {"open"},
}


def wants_html(accept: str | None) -> bool:
    """Whether the client names text/html in Accept (with a q above 0): a browser. `*/*` is
    not enough: API clients send it."""
    for part in (accept or "").split(","):
        kind, _, params = part.strip().partition(";")
        if kind.strip().lower() in ("text/html", "application/xhtml+xml"):
            q = params.replace(" ", "").lower()
            return "q=0" not in q or q.startswith("q=0.") and q != "q=0.0"
    return False


def csp(remote_images: bool = False) -> str:
    return CSP.format(images=" https:" if remote_images else "")


@functools.cache
def _markdown() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": True, "linkify": False}).enable(
        ["table", "strikethrough"])


def _attribute(remote_images: bool, files: str):
    def keep(tag: str, attribute: str, value: str) -> str | None:
        if tag == "img" and attribute == "src":
            parts = urlsplit(value)
            if parts.scheme or parts.netloc:  # remote: only if the operator allows them
                return value if remote_images and parts.scheme == "https" else None
            if files and not value.startswith("/"):
                # a card's own image (`![](assets/fig.png)`): the repo's file, as on the Hub
                return files + quote(posixpath.normpath(value).lstrip("./"))
        if tag == "input" and attribute == "type" and value != "checkbox":
            return None
        return value
    return keep


def card_markdown(body: str) -> str:
    """A card's Markdown body as markdown-it-py renders it: NOT safe to serve (raw HTML kept),
    only ever passed through `clean_card`. The costly step (about 15 ms for a 13 kB card), so a
    mirror renders it when it publishes the snapshot and keeps it (RENDERER names its output)."""
    if len(body) > MAX_CARD:
        body = body[:MAX_CARD] + "\n\n*(the rest of this card is not shown: it is too long)*"
    return _markdown().render(body)


def readme_markdown(readme: bytes) -> str:
    """`card_markdown` of a README's body (after its YAML front matter)."""
    return card_markdown(split_card(readme.decode("utf-8", "replace"))[1])


#: bump when `card_markdown`'s output for the same text changes: kept renders are then redone
RENDERER = 1


def clean_card(html: str, *, remote_images: bool = False, files: str = "") -> str:
    """`card_markdown`'s HTML made safe (about 1 ms); `files`: the URL its relative image paths
    are the repo's files under (`.../resolve/<rev>/`)."""
    return nh3.clean(html, tags=_TAGS, attributes=_ATTRIBUTES, url_schemes=_LINKS,
                     attribute_filter=_attribute(remote_images, files), strip_comments=True,
                     link_rel="noopener noreferrer nofollow")


def render_card(text: str, *, remote_images: bool = False, files: str = "") -> str:
    """A model card's Markdown body as safe HTML."""
    return clean_card(card_markdown(text), remote_images=remote_images, files=files)


def split_card(readme: str) -> tuple[str, str]:
    """(YAML front matter, Markdown body) of a README; no front matter: ("", readme)."""
    text = readme.lstrip("\ufeff")
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        return "", text
    for i, line in enumerate(lines[1:], start=1):
        if line.strip() == "---":
            return "".join(lines[1:i]), "".join(lines[i + 1:])
    return "", text


def size(n: int | None) -> str:
    """Bytes as people read them: 1.4 GB, 532 kB (powers of 1000, as the Hub shows them)."""
    if n is None:
        return ""
    if n < 1000:
        return f"{n} B"
    unit = min(int(math.log(n, 1000)), 5)
    return f"{n / 1000 ** unit:.1f} {'kMGTP'[unit - 1]}B"


def when(seconds: float | None) -> str:
    if not seconds:
        return ""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(seconds))


def query(current: dict[str, str], **changes: Any) -> str:
    """`?...` with `changes` applied (None drops a key)."""
    merged = {**current, **{k: v for k, v in changes.items()}}
    return "?" + urlencode({k: v for k, v in merged.items() if v not in (None, "")})


@functools.cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.StrictUndefined)
    env.filters.update(size=size, when=when)
    env.globals.update(query=query)
    return env


def compile_templates() -> None:
    """Every template compiled now (about 30 ms in all), so that no first page pays it: a
    service calls this off its loop once it starts."""
    env = environment()
    for name in env.list_templates(extensions=["html"]):
        env.get_template(name)


def render(template: str, **context: Any) -> bytes:
    return environment().get_template(template).render(**context).encode()


def stylesheet() -> bytes:
    return (HERE / "style.css").read_bytes()


def html_response(body: bytes, status: int = 200, *, remote_images: bool = False):
    """A page as every page is answered: its policy, never cached stale, varying on Accept."""
    from aiohttp import web

    return web.Response(body=body, status=status, content_type="text/html", charset="utf-8",
                        headers={**HEADERS, "Vary": "Accept", "Cache-Control": "no-cache",
                                 "Content-Security-Policy": csp(remote_images)})


def stylesheet_response():
    from aiohttp import web

    return web.Response(body=stylesheet(), content_type="text/css",
                        headers={"Cache-Control": "public, max-age=3600"})
