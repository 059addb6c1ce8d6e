"""The sqlite catalog: schema versions, atomic publication, concurrent writers."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading

import pytest
from huggingface_hub import HfApi

from helpers import make_tiny_model
from mirror.catalog import SCHEMA_VERSION, Catalog, NewSnapshot
from peer.errors import RepoNotFound, RevisionNotFound
from peer.hfformat import FileEntry

FILE = FileEntry("a.txt", 1, "a" * 64, "b" * 40, False)


def _new(commit: str, refs=(("branch", "main"),), repo_id="org/name") -> NewSnapshot:
    return NewSnapshot(hub="huggingface", type="model", repo_id=repo_id, commit=commit,
                       files=[FILE], refs=list(refs))


def test_a_new_catalog_is_at_the_current_schema_in_wal_mode(catalog):
    assert catalog.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert catalog.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert catalog.conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 10000


def test_reopening_does_not_migrate_again_and_a_newer_schema_is_refused(config, catalog):
    catalog.publish(_new("1" * 40))
    again = Catalog(config.catalog_path)
    assert again.repo("huggingface", "model", "org/name").repo_id == "org/name"
    again.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    again.close()
    with pytest.raises(RuntimeError, match="newer"):
        Catalog(config.catalog_path)


def test_publish_moves_refs_with_increasing_sequence_numbers(catalog):
    catalog.publish(_new("1" * 40, refs=[("branch", "main"), ("tag", "v1")]))
    catalog.publish(_new("2" * 40))
    repo = catalog.repo("huggingface", "model", "org/name")
    refs = {(r.kind, r.name): r for r in catalog.refs(repo)}
    assert refs[("branch", "main")].commit == "2" * 40
    assert refs[("tag", "v1")].commit == "1" * 40
    assert refs[("branch", "main")].seq == 3 and catalog.sequence() == 3
    assert catalog.resolve(repo, "refs/tags/v1") == "1" * 40
    assert catalog.resolve(repo, "1" * 40) == "1" * 40
    with pytest.raises(RevisionNotFound):
        catalog.resolve(repo, "3" * 40)
    # Publishing the same commit again moves nothing and burns no sequence number.
    catalog.publish(_new("2" * 40))
    assert catalog.sequence() == 3


def test_a_failed_publish_leaves_nothing_behind(catalog):
    with pytest.raises(ValueError):
        catalog.publish(_new("1" * 40, refs=[("branch", "main"), ("nonsense", "x")]))
    with pytest.raises(RepoNotFound):
        catalog.repo("huggingface", "model", "org/name")
    assert catalog.conn.execute("SELECT count(*) FROM files").fetchone()[0] == 0


def test_two_connections_write_concurrently_without_busy_errors(config):
    errors = []

    def writer(n: int) -> None:
        c = Catalog(config.catalog_path)
        try:
            for i in range(25):
                c.publish(_new(f"{n}{i:039x}"[:40], repo_id=f"org/r{n}"))
        except sqlite3.Error as e:
            errors.append(e)
        finally:
            c.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(1, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    c = Catalog(config.catalog_path)
    assert c.sequence() == 75
    c.close()


def test_a_cli_import_while_the_server_runs_is_served_at_once(config, serve, tmp_path):
    running = serve(config)
    api = HfApi(endpoint=running.url)
    tiny = make_tiny_model(tmp_path / "tiny")
    done = subprocess.run(
        [sys.executable, "-m", "mirror.cli", "--home", str(config.home), "mirror", "import",
         str(tiny), "--repo", "org/live", "--no-progress"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert api.model_info("org/live").sha in done.stdout


def test_the_search_pages_facets_are_kept_until_the_catalog_changes(config, catalog):
    """Every search page asks for the filters' values: counted once per change of the
    catalog, whichever connection made it (another process's import too)."""
    def new(repo_id: str, library: str) -> NewSnapshot:
        snapshot = _new(("%x" % (hash(repo_id) & 0xFFFF)).rjust(40, "0"), repo_id=repo_id)
        snapshot.card_data = {"library_name": library}
        return snapshot

    catalog.publish(new("org/a", "transformers"))
    assert catalog.facets("huggingface", "model")["library"] == ["transformers"]
    assert catalog.facets("huggingface", "model") is catalog.facets("huggingface", "model")
    other = Catalog(config.catalog_path)
    try:
        other.publish(new("org/b", "diffusers"))
    finally:
        other.close()
    assert sorted(catalog.facets("huggingface", "model")["library"]) == [
        "diffusers", "transformers"]
    catalog.set_access("org/b", "private")
    assert catalog.facets("huggingface", "model")["library"] == ["transformers"]
