"""Hub namespaces under /hubs/<hub>, public_url, datasets through HfFileSystem, and checksum
verification of a downloaded snapshot with the stock client."""

from __future__ import annotations

import hashlib
import http.client
import subprocess
from pathlib import Path

import pytest
from huggingface_hub import HfApi, HfFileSystem, hf_hub_download, snapshot_download
from huggingface_hub.errors import RepositoryNotFoundError

from helpers import (
    VENV_BIN,
    free_port,
    hf_cli_path,
    hf_env,
    make_config,
    make_tiny_model,
    start_mirror,
)
from mirror.catalog import Catalog
from mirror.importer import Importer
from peer.store import BlobStore

MS_REPO = "tests/ms-model"
DATASET = "tests/tiny-data"


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    home = tmp_path_factory.mktemp("hubs")
    port = free_port()
    # public_url names another origin (localhost) than the one tests use (127.0.0.1).
    config = make_config(home, port=port, public_url=f"http://localhost:{port}")
    catalog = Catalog(config.catalog_path)
    importer = Importer(catalog, BlobStore(config.store_dir))
    tiny = make_tiny_model(tmp_path_factory.mktemp("tiny"))
    importer.import_path(tiny, repo_id=MS_REPO, hub="modelscope", tags=["v1"])
    importer.import_path(tiny, repo_id=DATASET, repo_type="dataset")
    catalog.close()
    running = start_mirror(config)
    running.tiny = tiny
    yield running
    running.stop()


def test_a_hub_prefix_works_as_hf_endpoint_unchanged(mirror, tmp_path):
    endpoint = f"{mirror.url}/hubs/modelscope"
    local = Path(snapshot_download(MS_REPO, endpoint=endpoint, cache_dir=tmp_path / "c"))
    assert (local / "big.bin").read_bytes() == (mirror.tiny / "big.bin").read_bytes()
    api = HfApi(endpoint=endpoint)
    assert [m.id for m in api.list_models(search="ms-model")] == [MS_REPO]
    assert api.model_info(MS_REPO, revision="v1").sha == api.model_info(MS_REPO).sha
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=mirror.url).model_info(MS_REPO)  # not a Hugging Face repo
    # The same through the environment, with the hf CLI.
    cli = subprocess.run([str(VENV_BIN / "hf"), "download", MS_REPO, "sub/notes.txt"],
                         env=hf_env(endpoint, tmp_path / "cli"), capture_output=True, text=True,
                         timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert hf_cli_path(cli.stdout).read_text() == "notes\n"


def _get(url: str, method: str, path: str) -> http.client.HTTPResponse:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request(method, path)
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def test_locations_and_links_carry_public_url_and_the_prefix(mirror):
    sha = HfApi(endpoint=f"{mirror.url}/hubs/modelscope").model_info(MS_REPO).sha
    response = _get(mirror.url, "HEAD", f"/hubs/modelscope/{MS_REPO}/resolve/main/config.json")
    assert response.status == 307
    assert response.getheader("Location") == (
        f"http://localhost:{mirror.port}/hubs/modelscope/{MS_REPO}/resolve/{sha}/config.json")
    assert response.getheader("X-Linked-Etag") and response.getheader("X-Linked-Size")
    response = _get(mirror.url, "GET", "/hubs/modelscope/api/models?limit=1&search=tests")
    link = response.getheader("Link")
    assert link is None or link.startswith(f"<http://localhost:{mirror.port}/hubs/modelscope/")
    response = _get(mirror.url, "GET", f"/api/datasets/{DATASET}/tree/main?recursive=true")
    assert response.status == 200


def test_a_client_follows_a_public_url_on_another_origin(mirror, tmp_path):
    # HEAD on 127.0.0.1 answers 307 to localhost: another origin, so the client takes the 3xx
    # as the metadata (X-Linked-Etag, X-Linked-Size, X-Repo-Commit) and GETs the Location.
    path = hf_hub_download(MS_REPO, "big.bin", endpoint=f"{mirror.url}/hubs/modelscope",
                           cache_dir=tmp_path / "c")
    assert Path(path).read_bytes() == (mirror.tiny / "big.bin").read_bytes()


def test_verify_repo_checksums_passes_on_a_downloaded_snapshot(mirror, tmp_path):
    api = HfApi(endpoint=mirror.url)
    if not hasattr(api, "verify_repo_checksums"):
        pytest.skip("this huggingface_hub has no verify_repo_checksums")
    cache = tmp_path / "c"
    snapshot_download(DATASET, repo_type="dataset", endpoint=mirror.url, cache_dir=cache)
    result = api.verify_repo_checksums(DATASET, repo_type="dataset", cache_dir=cache)
    assert result.checked_count == 7 and not result.mismatches and not result.missing_paths
    snapshot_download(MS_REPO, endpoint=f"{mirror.url}/hubs/modelscope", cache_dir=cache)
    ms = HfApi(endpoint=f"{mirror.url}/hubs/modelscope")
    result = ms.verify_repo_checksums(MS_REPO, cache_dir=cache)
    assert result.checked_count == 7 and not result.mismatches


def test_paths_info_commits_and_files_metadata_for_a_dataset(mirror):
    api = HfApi(endpoint=mirror.url)
    info = api.dataset_info(DATASET, files_metadata=True)
    sizes = {s.rfilename: s.size for s in info.siblings}
    assert sizes["big.bin"] == (mirror.tiny / "big.bin").stat().st_size
    lfs = {s.rfilename: s.lfs for s in info.siblings}
    assert lfs["big.bin"].sha256 == hashlib.sha256((mirror.tiny / "big.bin").read_bytes()).hexdigest()
    paths = api.get_paths_info(DATASET, ["sub", "vocab.txt", "nope"], repo_type="dataset")
    assert sorted(p.path for p in paths) == ["sub", "vocab.txt"]
    assert [c.commit_id for c in api.list_repo_commits(DATASET, repo_type="dataset")] == [info.sha]


def test_hffilesystem_lists_globs_and_reads_ranges_of_a_dataset(mirror):
    fs = HfFileSystem(endpoint=mirror.url, skip_instance_cache=True)
    root = f"datasets/{DATASET}"
    names = sorted(p.removeprefix(root + "/") for p in fs.ls(root, detail=False))
    assert names == ["README.md", "big.bin", "config.json", "model.safetensors", "sub",
                     "vocab.txt"]
    assert fs.glob(f"{root}/**/*.json") == [f"{root}/config.json", f"{root}/sub/deeper/data.json"]
    data = (mirror.tiny / "big.bin").read_bytes()
    with fs.open(f"{root}/big.bin", "rb", block_size=4096) as f:
        f.seek(1_000_000)
        assert f.read(5000) == data[1_000_000:1_005_000]
    assert fs.cat_file(f"{root}/big.bin", start=10, end=20) == data[10:20]
    assert fs.info(f"{root}/sub")["type"] == "directory"
    with pytest.raises(FileNotFoundError):
        fs.info(f"{root}/missing.txt")
