"""The `weightswarm` command: the composition root (DESIGN.md section 1).

It builds the one frozen `Config` (file, environment, flags) and calls into the packages; a
known error becomes one line with a hint and a non-zero exit (`WEIGHTSWARM_DEBUG=1` shows the
traceback).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
from pathlib import Path

import click

from peer import hubs
from peer.cli import peer as peer_group
from peer.cli import pull as pull_command
from peer.cli import search as search_command
from peer.config import describe
from peer.errors import WeightswarmError, out_of_space
from peer.store import BlobStore
from tracker.cli import tracker as tracker_group

from .accounts import COMMANDS as ACCESS_COMMANDS
from .bundle.commands import COMMANDS as BUNDLE_COMMANDS
from .config import SECTIONS, Config, example_config, load_config

log = logging.getLogger(__name__)


class State:
    def __init__(self, config_file: Path | None, home: Path | None):
        self.config_file = config_file
        self.home = home

    def config(self, **overrides) -> Config:
        return self.load({("mirror", k): v for k, v in overrides.items()})

    def load(self, overrides: dict) -> Config:
        return load_config(home=self.home, config_file=self.config_file, overrides=overrides)


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(
        level=level, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if verbose < 2:
        logging.getLogger("asyncio").setLevel(logging.WARNING)
    # The logging HOWTO's optimisations for what our format never shows: no caller lookup,
    # no thread or process names gathered for each record (a record per request adds up).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # One access-log line per request, written in batches of 64: a write and flush per line
    # cost a tenth of a small request's time, and larger batches showed as the p99 of request
    # latency (formatting hundreds of lines at once). The server also flushes every second.
    access = logging.getLogger("mirror.access")
    access.propagate = False
    access.addHandler(logging.handlers.MemoryHandler(
        capacity=64, flushLevel=logging.WARNING, target=logging.getLogger().handlers[0]))


def _settings_help() -> str:
    lines = ["\b", "Settings (weightswarm.toml section.key, environment variable, default):"]
    for name, variable, default, text in describe(SECTIONS):
        lines.append(f"  {name}  {variable}  [{default}]  {text}")
    return "\n".join(lines)


@click.group(epilog=_settings_help())
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="settings file [default: $WEIGHTSWARM_HOME/weightswarm.toml]")
@click.option("--home", type=click.Path(file_okay=False, path_type=Path),
              help="state folder [default: $WEIGHTSWARM_HOME or ~/.local/share/weightswarm]")
@click.option("-v", "--verbose", count=True, help="more logging (-vv for debug)")
@click.version_option(package_name="weightswarm")
@click.pass_context
def cli(ctx: click.Context, config_file: Path | None, home: Path | None, verbose: int) -> None:
    """weightswarm: a federated mirror and peer-to-peer network for model weights."""
    _setup_logging(verbose)
    ctx.obj = State(config_file, home)


def _serve(state: State, host: str | None, port: int | None,
           tracker_port: int | None = None, *, with_tracker: bool = False) -> None:
    from peer.service import run

    from .app import serve

    config = state.load({("mirror", "host"): host, ("mirror", "port"): port,
                         ("tracker", "host"): host, ("tracker", "port"): tracker_port})
    run(serve(config, with_tracker=with_tracker))


_host = click.option("--host", help="address to bind [default: mirror.host, 127.0.0.1]")
_port = click.option("--port", type=int, help="port to bind, 0 for any [default: 8470]")


@cli.command()
@_host
@_port
@click.option("--tracker-port", type=int,
              help="tracker port, HTTP and UDP, 0 for any [default: 6969]")
@click.pass_obj
def serve(state: State, host: str | None, port: int | None, tracker_port: int | None) -> None:
    """Run the all-in-one node: the mirror's HTTP API and the tracker, in one process."""
    _serve(state, host, port, tracker_port, with_tracker=True)


cli.add_command(tracker_group)
cli.add_command(pull_command)
cli.add_command(search_command)
cli.add_command(peer_group)


@cli.group("config")
def config_group() -> None:
    """Settings files."""


@config_group.command("example")
def config_example() -> None:
    """Print a weightswarm.toml with every setting commented out at its default.

    ops/weightswarm.example.toml is its output; a service's file can start from it:
    `weightswarm config example > /etc/weightswarm/weightswarm.toml`."""
    click.echo(example_config(), nl=False)


@cli.group()
def mirror() -> None:
    """Mirror commands: serve, import, list and verify repos."""


@mirror.command("serve")
@_host
@_port
@click.pass_obj
def mirror_serve(state: State, host: str | None, port: int | None) -> None:
    """Serve the Hugging Face Hub API (and blobs) from this mirror's store."""
    _serve(state, host, port)


def _open(config: Config):
    from .catalog import Catalog

    return Catalog(config.catalog_path), BlobStore(config.store_dir)


@mirror.command("import")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--repo", "repo_id", help="repo id, e.g. org/name (a cache folder names its own)")
@click.option("--hub", default=hubs.DEFAULT, show_default=True, type=click.Choice(hubs.HUBS))
@click.option("--type", "repo_type", type=click.Choice(["model", "dataset"]),
              help="repo type [default: model, or what a cache folder says]")
@click.option("--revision", help="branch to move [default: main; a cache import: all its refs]")
@click.option("--tag", "tags", multiple=True, help="also tag the imported commit (repeatable)")
@click.option("--access", default="public", show_default=True,
              type=click.Choice(["public", "gated", "private"]))
@click.option("--if-missing", is_flag=True, help="do nothing if the repo already has the revision")
@click.option("--progress/--no-progress", default=None, help="progress bar [default: on a tty]")
@click.pass_obj
def mirror_import(state: State, path: Path, repo_id, hub, repo_type, revision, tags, access,
                  if_missing, progress) -> None:
    """Import a folder, or a repo from a Hugging Face cache (models--org--name), into the store."""
    from .importer import Importer

    config = state.config()
    catalog, store = _open(config)
    if if_missing and repo_id:
        try:
            repo = catalog.repo(hub, repo_type or "model", repo_id)
            commit = catalog.resolve(repo, revision or "main")
            click.echo(f"{repo_id} already has {revision or 'main'} at {commit}")
            return
        except LookupError:
            pass
    show = sys.stderr.isatty() if progress is None else progress
    results = Importer(catalog, store, progress=show, min_free=config.mirror.min_free,
                       scan_policy=config.mirror.scan_policy).import_path(
        path, repo_id=repo_id, hub=hub, repo_type=repo_type, revision=revision, tags=tags,
        access=access,
    )
    for r in results:
        refs = ", ".join(f"{k} {n}" for k, n in r.refs) or "no ref"
        click.echo(f"{r.repo_id}@{r.commit} ({refs}): {r.files} files, "
                   f"{r.new_blobs} new blobs, {r.bytes_copied} bytes copied")


for _command in (*BUNDLE_COMMANDS, *ACCESS_COMMANDS):
    mirror.add_command(_command)


@mirror.command("sync")
@click.argument("specs", nargs=-1, required=True, metavar="SPEC...")
@click.option("--include", multiple=True, help="only paths matching this glob (repeatable)")
@click.option("--exclude", multiple=True, help="skip paths matching this glob (repeatable)")
@click.option("--parallel", type=int, default=4, show_default=True, help="files fetched at once")
@click.option("--progress/--no-progress", default=None, help="progress bar [default: on a tty]")
@click.pass_obj
def mirror_sync(state: State, specs, include, exclude, parallel, progress) -> None:
    """Fetch repos from upstream, verify every byte, publish each snapshot whole.

    \b
    SPEC is one of:
      hf:org/name[@rev]        a Hugging Face repo (mirror.upstreams.huggingface.endpoint)
      hf:org/*                 every model of an author
      hf-datasets:org/name[@rev]
      ms:org/name[@rev]        a ModelScope repo, master by default
                               (mirror.upstreams.modelscope.endpoint); ms:org/* every model
      ms-datasets:org/name[@rev]
      kaggle:owner/model/framework/variation[/N|/*]   a Kaggle model instance: its
                               latest version, version N, or every version, as the repo
                               owner/model.framework.variation (tag vN; main: the latest)
      mirror:<base-url>#org/name[@rev]   any HF-compatible endpoint, e.g. another mirror,
                               its base URL with /hubs/<hub> for another hub's repos
      local:/abs/folder#org/name[@branch]   a folder, as `mirror import` reads it
    """
    import asyncio

    from .network import sources_text
    from .sync import parse_spec
    from .syncjobs import run_specs

    config = state.config()
    parsed = [parse_spec(s, include, exclude) for s in specs]
    show = sys.stderr.isatty() if progress is None else progress
    outcome = asyncio.run(run_specs(config, parsed, parallel=parallel, progress=show))
    for r in outcome.results:
        if r.gone:
            text = "gone upstream, kept (archive)"
        elif r.unchanged:
            text = "up to date"
        else:
            text = f"{r.files} files, {r.fetched} fetched, {r.bytes_fetched} bytes"
            if r.fetched:
                text += f" ({sources_text(r.from_upstream, r.from_mirrors, r.dropped_mirrors)})"
        click.echo(f"{r.spec}: {r.repo_id}@{r.commit}: {text}")
    for spec, error in outcome.failures:
        click.echo(f"error: {spec}: {error}", err=True)
    if outcome.failures:
        sys.exit(1)


@mirror.command("status")
@click.option("--limit", type=int, default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def mirror_status(state: State, limit: int, as_json: bool) -> None:
    """Syncs that are running, finished or failed, newest first, with the reasons."""
    import datetime

    from peer.atomic import pid_alive

    from .network import read_sources

    catalog, _ = _open(state.config())
    runs = catalog.runs(limit)
    for run in runs:
        if run["status"] == "running" and not pid_alive(run["pid"] or 0):
            run["status"] = "interrupted"
    if as_json:
        for run in runs:
            run["sources"] = json.loads(run["sources"]) if run["sources"] else None
        click.echo(json.dumps(runs, indent=2))
        return
    for run in runs:
        when = datetime.datetime.fromtimestamp(run["started_at"]).strftime("%Y-%m-%d %H:%M:%S")
        took = (f" in {run['finished_at'] - run['started_at']:.1f}s"
                if run["finished_at"] else "")
        detail = run["error"] or (
            f"{run['repo_id'] or ''} {(run['commit_id'] or '')[:12]} {run['files'] or 0} files, "
            f"{run['fetched'] or 0} fetched, {run['bytes'] or 0} bytes")
        if run["fetched"] and read_sources(run["sources"]):
            detail += f" ({read_sources(run['sources'])})"
        via = " (pull-through)" if '"via": "pull-through"' in (run["sources"] or "") else ""
        click.echo(f"{when} {run['status']:<11} {run['spec']}{via}{took}: {detail}")


@mirror.command("scan")
@click.option("--all", "everything", is_flag=True,
              help="scan every blob again, not only those this scanner has not seen")
@click.pass_obj
def mirror_scan(state: State, everything: bool) -> None:
    """Scan the published files of pickle-based formats (after a scanner upgrade, or for blobs
    published before scanning existed) and print what is not safe."""
    from .scan import SAFE, SCANNER, needs_scan, scan

    catalog, store = _open(state.config())
    counts: dict[str, int] = {}
    for sha256, path, scanner in catalog.scannable():
        if not needs_scan(path) or (scanner == SCANNER and not everything):
            continue
        verdict = scan(store.path_for(sha256), path)
        catalog.put_scan(sha256, verdict)
        counts[verdict.status] = counts.get(verdict.status, 0) + 1
        if verdict.status != SAFE:
            detail = ", ".join(verdict.found) or verdict.reason
            click.echo(f"{verdict.status}: {path} ({sha256[:12]}): {detail}")
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    click.echo(f"scanned {sum(counts.values())} blobs with {SCANNER}: {summary or 'nothing new'}")


@mirror.command("ls")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_obj
def mirror_ls(state: State, as_json: bool) -> None:
    """List the repos this mirror holds, with their refs."""
    catalog, _ = _open(state.config())
    rows = []
    for repo in catalog.repos():
        refs = catalog.refs(repo)
        rows.append({
            "hub": repo.hub, "type": repo.type, "id": repo.repo_id, "access": repo.access,
            "refs": {f"{r.kind}:{r.name}": r.commit for r in refs},
            # files of a pickle-based format the scanner did not call safe (mirror/scan.py)
            "scan": catalog.flagged(repo),
        })
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        refs = " ".join(f"{k}={v[:12]}" for k, v in row["refs"].items())
        flags = "".join(f" [{status}: {path}]" for path, status in row["scan"].items())
        click.echo(f"{row['hub']:<12} {row['type']:<8} {row['id']:<48} {row['access']:<8} "
                   f"{refs}{flags}")


def _split_ref(spec: str) -> tuple[str, str | None]:
    repo_id, _, revision = spec.partition("@")
    return repo_id, revision or None


@mirror.command("rm")
@click.argument("spec", metavar="REPO[@REV]")
@click.option("--hub", default=hubs.DEFAULT, show_default=True, type=click.Choice(hubs.HUBS))
@click.option("--type", "repo_type", default="model", show_default=True,
              type=click.Choice(["model", "dataset"]))
@click.pass_obj
def mirror_rm(state: State, spec: str, hub: str, repo_type: str) -> None:
    """Remove a repo, or one revision of it (a commit, or a ref and the snapshot only it names).

    Blobs stay in the store until `weightswarm mirror gc`."""
    from .maintenance import refuse_in_archive_mode

    config = state.config()
    refuse_in_archive_mode(config, "rm")
    catalog, _ = _open(config)
    repo_id, revision = _split_ref(spec)
    repo = catalog.repo(hub, repo_type, repo_id)
    removed = catalog.remove(repo, revision)
    what = f"{repo_id}@{revision}" if revision else repo_id
    click.echo(f"removed {what}: {len(removed)} snapshot(s) "
               f"{' '.join(c[:12] for c in removed)}".rstrip())
    click.echo("run `weightswarm mirror gc` to free the space of blobs nothing references")


@mirror.command("gc")
@click.option("--grace", type=float, default=6 * 3600, show_default=True,
              help="keep unreferenced blobs touched this many seconds ago (imports in progress)")
@click.option("--dry-run", is_flag=True, help="list what would go, remove nothing")
@click.pass_obj
def mirror_gc(state: State, grace: float, dry_run: bool) -> None:
    """Remove blobs that no snapshot references."""
    from .maintenance import collect_garbage, refuse_in_archive_mode

    config = state.config()
    refuse_in_archive_mode(config, "gc")
    catalog, store = _open(config)
    collected = collect_garbage(catalog, store, grace=grace, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for sha256 in collected.blobs:
        click.echo(f"{verb} {sha256}")
    click.echo(f"{verb} {len(collected.blobs)} blobs, {collected.bytes} bytes")
    pending = catalog.pending()
    if pending:
        click.echo(f"kept {sum(pending.values())} blobs of {len(pending)} snapshots waiting for "
                   f"bundle volumes: {', '.join(sorted(pending))}")


@mirror.command("verify")
@click.argument("repo_id", required=False)
@click.option("--hub", default=hubs.DEFAULT, show_default=True, type=click.Choice(hubs.HUBS))
@click.option("--type", "repo_type", default="model", show_default=True)
@click.option("--full", is_flag=True, help="re-hash sha256 instead of the faster blake3 scrub")
@click.pass_obj
def mirror_verify(state: State, repo_id, hub, repo_type, full) -> None:
    """Check that the stored bytes still match their recorded hashes (all blobs, or one repo's)."""
    catalog, store = _open(state.config())
    repo = catalog.repo(hub, repo_type, repo_id) if repo_id else None
    records = list(catalog.blobs(repo))
    bad = []
    if full:
        for r in records:
            if not store.has(r.sha256) or not store.verify(r.sha256):
                bad.append((r.sha256, "missing" if not store.has(r.sha256) else "sha256 mismatch"))
    else:
        bad = list(store.scrub((r.sha256, r.blake3) for r in records))
    for sha256, problem in bad:
        click.echo(f"BAD {sha256}: {problem}")
    click.echo(f"{len(records) - len(bad)} of {len(records)} blobs intact")
    if bad:
        sys.exit(1)


@mirror.command("scrub")
@click.option("--progress/--no-progress", default=None, help="progress bar [default: on a tty]")
@click.pass_obj
def mirror_scrub(state: State, progress: bool | None) -> None:
    """Re-hash every blob (blake3) and take corrupt ones out of service.

    A corrupt blob is marked, stops being seeded and served, and is moved aside; a running
    mirror then mends it from the swarm, fetching only the pieces that are wrong."""
    from tqdm import tqdm

    from .scrub import quarantine, scrub

    config = state.config()
    catalog, store = _open(config)
    under_repair = {r.sha256 for r, _ in catalog.corrupt_blobs()}
    records = [r for r in catalog.blobs() if r.sha256 not in under_repair]
    show = sys.stderr.isatty() if progress is None else progress
    with tqdm(total=sum(r.size for r in records), unit="B", unit_scale=True,
              unit_divisor=1024, desc="scrub", disable=not show) as bar:
        findings = scrub(store, records, progress=bar.update)
    for finding in findings:
        quarantine(store, catalog, config.repair_dir, finding)
        click.echo(f"CORRUPT {finding.sha256}: {finding.problem}")
    click.echo(f"{len(records) - len(findings)} of {len(records)} blobs intact"
               + (f"; {len(under_repair)} already under repair" if under_repair else ""))
    if findings:
        click.echo("a running mirror repairs corrupt blobs from the swarm "
                   "(`weightswarm mirror torrents` shows them)")
        sys.exit(1)


def _mirror_url(config: Config) -> str:
    host = config.mirror.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return config.mirror.public_url or f"http://{host}:{config.mirror.port}"


@mirror.command("torrents")
@click.option("--url", help="the running mirror [default: mirror.public_url, else host:port]")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_obj
def mirror_torrents(state: State, url: str | None, as_json: bool) -> None:
    """List the blobs this mirror seeds: info-hash, state, peers, bytes uploaded.

    Asks the running mirror; when none answers, lists what it would seed from the catalog."""
    import urllib.error
    import urllib.request

    from .seeding import info_hash_of

    config = state.config()
    url = (url or _mirror_url(config)).rstrip("/")
    try:
        with urllib.request.urlopen(f"{url}/api/weightswarm/torrents", timeout=10) as r:
            answer = json.load(r)
    except (urllib.error.URLError, OSError, ValueError) as e:
        log.info("no mirror answered at %s (%s): listing from the catalog", url, e)
        catalog, _ = _open(config)
        rows = [{"sha256": r.sha256, "info_hash": info_hash_of(r), "state": "stopped",
                 "peers": 0, "uploaded": 0, "upload_rate": 0}
                for r in catalog.seedable_blobs()]
        rows += [{"sha256": r.sha256, "info_hash": info_hash_of(r), "state": "corrupt",
                  "peers": 0, "uploaded": 0, "upload_rate": 0, "reason": reason}
                 for r, reason in catalog.corrupt_blobs()]
        answer = {"seeding": False, "port": None, "egress_limit": config.mirror.egress_limit,
                  "torrents": rows}
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    click.echo(f"{'info-hash':40}  {'blob sha256':16}  {'state':9}  {'peers':>5}  uploaded")
    for row in answer["torrents"]:
        click.echo(f"{row['info_hash'] or '-':40}  {row['sha256'][:16]}  {row['state']:9}  "
                   f"{row['peers']:>5}  {_size(row['uploaded'])}")
    limit = answer.get("egress_limit")
    click.echo(f"{len(answer['torrents'])} torrents"
               + (f", BitTorrent port {answer['port']}" if answer.get("port") else "")
               + (f", egress limit {_size(limit)}/s" if limit else ""))


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def main() -> None:
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except WeightswarmError as e:
        if os.environ.get("WEIGHTSWARM_DEBUG") == "1":
            raise
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    except OSError as e:
        # Every writer of ours says a full disk as InsufficientSpace; this is the net for one
        # that does not yet: still one line, not a traceback.
        full = out_of_space(e, e.filename or os.getcwd())
        if full is None or os.environ.get("WEIGHTSWARM_DEBUG") == "1":
            raise
        click.echo(f"error: {full}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
