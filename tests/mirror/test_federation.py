"""Mirror B syncs from mirror A with a `mirror:` spec, at A's root and under a /hubs prefix;
the stock client then pulls both from B."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from huggingface_hub import HfApi, snapshot_download

from helpers import make_config, make_tiny_model
from mirror.catalog import Catalog
from mirror.importer import Importer
from peer.store import BlobStore


def _sync(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mirror.cli", "--home", str(home), "mirror", "sync",
         "--no-progress", *args], capture_output=True, text=True, timeout=180)


def test_mirror_b_syncs_from_mirror_a_at_the_root_and_under_a_hub_prefix(tmp_path, serve):
    tiny = make_tiny_model(tmp_path / "tiny", big_size=6 * 1024 * 1024)
    config_a = make_config(tmp_path / "a")
    catalog = Catalog(config_a.catalog_path)
    importer = Importer(catalog, BlobStore(config_a.store_dir))
    importer.import_path(tiny, repo_id="org/plain", tags=["v1"])
    importer.import_path(tiny, repo_id="org/ms", hub="modelscope")
    catalog.close()
    a = serve(config_a)

    home_b = tmp_path / "b"
    done = _sync(home_b, f"mirror:{a.url}#org/plain", f"mirror:{a.url}/hubs/modelscope#org/ms",
                 f"mirror:{a.url}#org/plain@v1")
    assert done.returncode == 0, done.stderr
    b = serve(make_config(home_b))
    a_api, b_api = HfApi(endpoint=a.url), HfApi(endpoint=b.url)
    assert b_api.model_info("org/plain").sha == a_api.model_info("org/plain").sha
    refs = b_api.list_repo_refs("org/plain")
    assert [r.name for r in refs.branches] == ["main"] and [r.name for r in refs.tags] == ["v1"], (
        "a revision synced by name becomes the same kind of ref it is upstream")
    for endpoint, repo in ((b.url, "org/plain"), (f"{b.url}/hubs/modelscope", "org/ms")):
        local = Path(snapshot_download(repo, endpoint=endpoint, cache_dir=tmp_path / "cache"))
        for f in tiny.rglob("*"):
            if f.is_file():
                rel = f.relative_to(tiny)
                assert (local / rel).read_bytes() == f.read_bytes(), f"{repo}: {rel}"
    assert HfApi(endpoint=f"{b.url}/hubs/modelscope").model_info("org/ms").sha == (
        HfApi(endpoint=f"{a.url}/hubs/modelscope").model_info("org/ms").sha)

    again = _sync(home_b, f"mirror:{a.url}#org/plain")
    assert again.returncode == 0 and "up to date" in again.stdout


def test_a_missing_repo_upstream_fails_with_a_clear_message(tmp_path, serve):
    a = serve(make_config(tmp_path / "a"))
    done = _sync(tmp_path / "b", f"mirror:{a.url}#org/nothing")
    assert done.returncode == 1
    assert "RepoNotFound" in done.stderr and "Traceback" not in done.stderr
