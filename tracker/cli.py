"""`weightswarm tracker ...`: the tracker's commands, mounted by the root command (mirror/cli.py)
which owns the settings; the context object gives them the built configuration."""

from __future__ import annotations

import click


@click.group()
def tracker() -> None:
    """The BitTorrent tracker that hands out nearby peers."""


@tracker.command("serve")
@click.option("--host", help="address to bind, HTTP and UDP [default: tracker.host, 127.0.0.1]")
@click.option("--port", type=int, help="port for HTTP and UDP, 0 for any [default: 6969]")
@click.pass_obj
def tracker_serve(state, host: str | None, port: int | None) -> None:
    """Serve /announce and /scrape over HTTP, and BEP 15 over UDP, on one port number."""
    from peer.service import run

    from .app import serve

    config = state.load({("tracker", "host"): host, ("tracker", "port"): port})
    run(serve(config.tracker))
