"""The bundle commands of `weightswarm mirror` (mounted by mirror/cli.py): export,
export-state, import-bundle, verify-bundle. Each translates its flags, calls the bundle
modules and prints a summary line; errors become one line in mirror/cli.py's `main`."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

from peer.errors import BadRequest
from peer.keys import load_or_create, parse_public_key, public_key_text

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    """`4G`, `700M`, `4.7GB`, `1MiB`, `1048576`: bytes (K, M, G, T are powers of 1024)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.I)
    if not match:
        raise click.BadParameter(f"{text!r} is not a size like 4G, 700M or 1048576")
    size = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if size < 64 * 1024:
        raise click.BadParameter(f"{text!r}: a volume holds 64 KiB at least")
    return size


def parse_percent(text: str) -> float:
    """`5%`, `5`, `0.5%`: a share of a volume, in percent (above 0, at most 100)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*%?\s*", text)
    if not match or not 0 < float(match.group(1)) <= 100:
        raise click.BadParameter(f"{text!r} is not a share like 5% (above 0, at most 100)")
    return float(match.group(1))


def _parity(percent: float, show: bool) -> dict:
    """The Exporter's parity hook: par2 recovery data for `percent` % of each volume."""
    from tqdm import tqdm

    from .. import parity

    def protect(volume: Path, files: list[str]) -> list[str]:
        total = sum((volume / f).stat().st_size for f in files)
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                  desc=f"parity {volume.name}", disable=not show, leave=False) as bar:
            written = parity.protect(volume, files, percent, progress=bar.update)
        return [p.name for p in written]  # at the volume's top

    return {"protect": protect, "parity_scheme": "par2", "parity_share": percent / 100}


def _open(config):
    from peer.store import BlobStore

    from ..catalog import Catalog

    return Catalog(config.catalog_path), BlobStore(config.store_dir)


def _show(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


_progress = click.option("--progress/--no-progress", default=None,
                         help="progress bar [default: on a tty]")


@click.command("export")
@click.argument("specs", nargs=-1, metavar="SPEC...")
@click.option("--to", "to", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="the bundle folder (volumes vol-001, vol-002, ... go in it)")
@click.option("--all", "everything", is_flag=True, help="every repo this mirror holds")
@click.option("--include-private", is_flag=True,
              help="carry private repos too (left out of --all and globs, refused by name)")
@click.option("--state", "state_file", type=click.Path(dir_okay=False, path_type=Path),
              help="the far side's export-state file: leave out what it holds")
@click.option("--since", type=click.Path(exists=True, path_type=Path),
              help="an earlier bundle (or its index) the far side imported: leave out its blobs")
@click.option("--volume-size", default="4G", show_default=True, metavar="SIZE",
              help="the most a volume holds (4G: a DVD's 4.7 GB; no file is ever over FAT32's "
                   "4 GiB)")
@click.option("--parity", default=None, metavar="PERCENT",
              help="recovery data in every volume (par2) to rebuild this share of it, e.g. 5%%: "
                   "an import repairs a volume with damaged or missing files within it")
@_progress
@click.pass_obj
def export(state, specs, to, everything, include_private, state_file, since, volume_size,
           parity, progress) -> None:
    """Write repos to a bundle for an air-gapped mirror: blobs, signed manifests and refs, and
    an index signed by this mirror, in volumes that each stand alone.

    \b
    SPEC is one of:
      hf:org/name[@rev]      a repo: every ref of it, or the revision named
      hf:org/*               every repo of an author held here
      hf-datasets:org/name[@rev], ms:..., ms-datasets:..., kaggle:...
    A cut-off export is finished by running the same command again."""
    from .export import Exporter
    from .select import choose, parse_export_spec
    from .state import NOTHING, read_since, read_state

    if state_file and since:
        raise BadRequest("--state or --since, not both")
    config = state.config()
    parsed = [parse_export_spec(s) for s in specs]
    holdings = read_state(state_file) if state_file else read_since(since) if since else NOTHING
    catalog, store = _open(config)
    chosen = choose(catalog, parsed, everything=everything, include_private=include_private)
    exporter = Exporter(catalog, store, load_or_create(config.key_path), progress=_show(progress),
                        **_parity(parse_percent(parity), _show(progress)) if parity else {})
    r = exporter.export(chosen, to, volume_size=parse_size(volume_size), holdings=holdings)
    base = f", base {r.base[:16]}" if r.base else ""
    click.echo(f"{r.to}: {r.volumes} volume(s), {r.snapshots} snapshots, {r.blobs} blobs, "
               f"{r.bytes} bytes, {r.held} blobs left out as held by the far side, "
               f"{r.resumed} already written{base}")


@click.command("export-state")
@click.option("--to", "to", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="the file to write")
@click.pass_obj
def export_state(state, to) -> None:
    """Write what this mirror holds (snapshots and blobs), signed, for the connected side's
    next `mirror export --state FILE` to leave out."""
    from .state import write_state

    config = state.config()
    catalog, store = _open(config)
    snapshots, blobs = write_state(catalog, store, load_or_create(config.key_path), to)
    click.echo(f"{to}: {snapshots} snapshots, {blobs} blobs")


def _trusted(config, trust: tuple[str, ...]) -> frozenset[str]:
    for key in trust:
        try:
            parse_public_key(key)
        except ValueError as e:
            raise BadRequest(f"--trust: {e}") from None
    return frozenset(config.mirror.bundle_keys) | frozenset(trust)


_trust = click.option("--trust", multiple=True, metavar="KEY",
                      help="also believe bundles signed by this key (ed25519:<hex>; repeatable)")


@click.command("import-bundle")
@click.argument("folders", nargs=-1, required=True, metavar="DIR...",
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@_trust
@click.option("--allow-rollback", is_flag=True,
              help="let an older bundle move refs back")
@_progress
@click.pass_obj
def import_bundle(state, folders, trust, allow_rollback, progress) -> None:
    """Import a bundle (or some of its volumes): every signature and blob checked, each
    snapshot published whole once all its files are in, refs moved only forward.

    Exits 1 when a snapshot failed or a volume given is unusable (a cut-off export); a
    snapshot that waits for volumes not given yet is not a failure."""
    from .importing import BundleImporter

    config = state.config()
    catalog, store = _open(config)
    importer = BundleImporter(catalog, store, _trusted(config, trust),
                              allow_rollback=allow_rollback, progress=_show(progress),
                              min_free=config.mirror.min_free,
                              scan_policy=config.mirror.scan_policy)
    report = importer.import_bundles(list(folders))
    for name in report.published:
        click.echo(f"published {name}")
    for line in report.moved:
        click.echo(f"moved {line}")
    for line in report.kept + report.unusable:
        click.echo(f"warning: {line}", err=True)
    for name, volumes in report.waiting.items():
        click.echo(f"waiting {name}: needs {', '.join(f'vol-{v:03d}' for v in volumes)}")
    for failure in report.failed:
        click.echo(f"FAILED {failure.snapshot}: {failure.reason}", err=True)
        for sha256 in failure.missing:
            click.echo(f"missing {sha256} ({failure.snapshot})", err=True)
    for name in report.repaired:
        click.echo(f"repaired {name}")
    click.echo(report.summary())
    if report.failed or report.unusable:
        sys.exit(1)


@click.command("verify-bundle")
@click.argument("folders", nargs=-1, required=True, metavar="DIR...",
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@_trust
@click.option("--repair", is_flag=True,
              help="rebuild damaged or missing files from the volumes' recovery data (par2); "
                   "without it, only say whether they could be")
@_progress
@click.pass_obj
def verify_bundle(state, folders, trust, repair, progress) -> None:
    """Check a bundle (or some of its volumes) without importing it: the index's signature,
    every file's size and blake3, every manifest; for a volume with damage and recovery data,
    whether it can be rebuilt (and, with --repair, rebuild it)."""
    from .reading import open_bundles

    config = state.config()
    # This mirror's own key too: verifying before the disk leaves the building.
    own = public_key_text(load_or_create(config.key_path))
    trusted = _trusted(config, trust) | {own}
    bundles, unusable = open_bundles(list(folders), trusted)
    bad = bool(unusable)
    for line in unusable:
        click.echo(f"INCOMPLETE {line}", err=True)
    for bundle in bundles:
        result = _verify_repairing(bundle, repair, _show(progress))
        bad = bad or bool(result.problems)
        missing = bundle.missing_volumes
        click.echo(f"bundle {bundle.digest[:16]} signed by {bundle.key}: "
                   f"{len(bundle.volumes)} of {len(bundle.index.volumes)} volumes given"
                   + (f" (not given: {', '.join(f'vol-{v:03d}' for v in missing)})"
                      if missing else "")
                   + f"; {len(result.complete)} snapshots complete, {len(result.waiting)} "
                   f"waiting for other volumes, {result.bytes} bytes checked, "
                   f"{len(result.problems)} problems")
    if bad:
        sys.exit(1)


def _verify_repairing(bundle, repair: bool, progress: bool):
    """`verify`, its problems printed; the damaged volumes repaired and verified again
    (`repair`), or said whether they could be."""
    from .reading import verify
    from .repair import Repairs

    result = verify(bundle, progress=progress)
    damaged = sorted({p.volume for p in result.problems})
    repairs = Repairs()
    if repair and any([repairs.attempt(bundle, v) for v in damaged]):
        for name in repairs.repaired:
            click.echo(f"repaired {name}")
        result = verify(bundle, progress=progress)
    for problem in result.problems:
        click.echo(f"BAD {problem.describe(bundle)}", err=True)
    for volume in sorted({p.volume for p in result.problems}):
        click.echo(f"parity: {repairs.failures.get(volume) or repairs.check(bundle, volume)}",
                   err=True)
    return result


COMMANDS = (export, export_state, import_bundle, verify_bundle)
