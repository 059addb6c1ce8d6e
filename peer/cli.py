"""`weightswarm pull`, `weightswarm search` and `weightswarm peer serve`, mounted by the root
command (mirror/cli.py), which owns the settings; the context object gives them the built
configuration."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from pathlib import Path

import click

from . import hubs


@click.command()
@click.argument("repo")
@click.option("--hub", default=hubs.DEFAULT, show_default=True, type=click.Choice(hubs.HUBS))
@click.option("--type", "repo_type", default="model", show_default=True,
              type=click.Choice(["model", "dataset"]))
@click.option("--include", multiple=True, help="only paths matching this glob (repeatable)")
@click.option("--exclude", multiple=True, help="not paths matching this glob (repeatable)")
@click.option("--local-dir", type=click.Path(file_okay=False, path_type=Path),
              help="a plain folder instead of the Hugging Face cache")
@click.option("--dry-run", is_flag=True, help="print the files and the total size, fetch nothing")
@click.option("--mirror", "mirrors", multiple=True,
              help="mirror to ask, nearest first (repeatable) [default: peer.mirrors, else "
              "the mirrors peer.index locates]")
@click.option("--token", help="a mirror token, for gated and private repos [default: "
              "peer.token]; sent only to the mirrors given")
@click.option("--json", "as_json", is_flag=True, help="print the outcome as JSON")
@click.option("--progress/--no-progress", default=None, help="progress bar [default: on a tty]")
@click.pass_obj
def pull(state, repo: str, hub: str, repo_type: str, include: tuple, exclude: tuple,
         local_dir: Path | None, dry_run: bool, mirrors: tuple, token: str | None,
         as_json: bool, progress: bool | None) -> None:
    """Fetch REPO[@REVISION] from nearby peers and the mirrors into the Hugging Face cache.

    Small files come over HTTP from the nearest mirror, large ones over BitTorrent; everything is
    checked against a manifest signed by a trusted mirror key before it is used. With no mirror
    given, the index (peer.index) says which mirrors hold it, nearest first."""
    from .pull import Pull, PullSpec

    config = state.load({("peer", "token"): token})
    spec = PullSpec.parse(repo, hub=hub, repo_type=repo_type, include=include, exclude=exclude,
                          local_dir=local_dir, dry_run=dry_run)
    show = sys.stderr.isatty() if progress is None else progress
    echo = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    job = Pull(config.peer, config.home, spec, mirrors=mirrors, progress=show, echo=echo)
    result = asyncio.run(job.run())
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(result)))
    elif not dry_run:
        click.echo(f"{spec.repo_id}@{result.commit}: {len(result.files)} files, "
                   f"{result.total_bytes} bytes in {result.seconds:.1f}s "
                   f"({result.present_bytes} already here, {result.http_bytes} over HTTP, "
                   f"{result.bittorrent_bytes} over BitTorrent: {result.from_peers} from peers, "
                   f"{result.from_mirrors} from mirrors, {result.from_web_seeds} from web seeds)")
        click.echo(f"path: {result.path}")


@click.command()
@click.argument("text")
@click.option("--hub", default=hubs.DEFAULT, show_default=True, type=click.Choice(hubs.HUBS))
@click.option("--type", "repo_type", default="model", show_default=True,
              type=click.Choice(["model", "dataset"]))
@click.option("--endpoint", help="the index or mirror to ask [default: peer.index, else the "
              "first of peer.mirrors]")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000),
              help="the most results shown")
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON")
@click.pass_obj
def search(state, text: str, hub: str, repo_type: str, endpoint: str | None, limit: int,
           as_json: bool) -> None:
    """Search the index (or a mirror) for repos whose id holds TEXT: repo, hub, size, how many
    mirrors hold it (and how many of those are behind), seeders, last updated."""
    from .errors import BadRequest
    from .search import search as ask
    from .search import table

    config = state.load({}).peer
    endpoint = endpoint or config.index or (config.mirrors[0] if config.mirrors else None)
    if not endpoint:
        raise BadRequest("nothing to search: set [peer] index or [peer] mirrors, or pass "
                         "--endpoint URL")
    results = asyncio.run(ask(endpoint, text, hub=hub, repo_type=repo_type, limit=limit))
    if as_json:
        click.echo(json.dumps([r.as_json() for r in results]))
    elif not results:
        click.echo(f"no {repo_type} matches {text!r} at {endpoint}")
    else:
        for line in table(results):
            click.echo(line)


@click.group()
def peer() -> None:
    """The peer daemon: keep seeding what this machine pulled."""


@peer.command("serve")
@click.option("--host", help="address of /metrics [default: peer.host, 127.0.0.1]")
@click.option("--port", type=int, help="port of /metrics, 0 for any [default: 8471]")
@click.pass_obj
def peer_serve(state, host: str | None, port: int | None) -> None:
    """Seed every blob of the local Hugging Face cache that a trusted manifest names."""
    from .daemon import serve
    from .service import run

    config = state.load({("peer", "host"): host, ("peer", "port"): port})
    run(serve(config.peer))
