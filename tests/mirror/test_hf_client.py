"""The stock huggingface_hub client against a real mirror on 127.0.0.1 (issue 2)."""

from __future__ import annotations

import hashlib
import http.client
import subprocess
from pathlib import Path

import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from helpers import (
    SAMPLE_REPO,
    VENV_BIN,
    hf_cli_path,
    hf_env,
    make_config,
    make_tiny_model,
    sample_model_dir,
    start_mirror,
)
from mirror.catalog import Catalog
from mirror.importer import Importer
from peer.hfformat import git_blob_sha1
from peer.store import BlobStore

TINY = "tests/tiny-model"


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    home = tmp_path_factory.mktemp("mirror-home")
    config = make_config(home)
    catalog, store = Catalog(config.catalog_path), BlobStore(config.store_dir)
    importer = Importer(catalog, store)
    importer.import_path(sample_model_dir(), repo_id=SAMPLE_REPO, tags=["v1"])
    tiny = make_tiny_model(tmp_path_factory.mktemp("tiny"))
    importer.import_path(tiny, repo_id=TINY, tags=["v1.0"])
    importer.import_path(tiny, repo_id="tiny-one")
    importer.import_path(tiny, repo_id="tests/tiny-data", repo_type="dataset")
    catalog.close()
    running = start_mirror(config)
    running.tiny_dir = tiny
    running.api = HfApi(endpoint=running.url)
    yield running
    running.stop()


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "hub-cache"


def _packaged_files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file()
    }


def test_snapshot_download_gets_every_file_byte_identical(mirror, cache):
    local = Path(snapshot_download(SAMPLE_REPO, endpoint=mirror.url, cache_dir=cache))
    expected = _packaged_files(sample_model_dir())
    got = _packaged_files(local)
    assert set(got) == set(expected), "the snapshot should hold exactly the packaged files"
    for path, data in expected.items():
        assert got[path] == data, f"{path} differs from the packaged copy"


def test_snapshot_download_with_allow_patterns_fetches_only_matching_files(mirror, cache):
    local = Path(snapshot_download(SAMPLE_REPO, endpoint=mirror.url, cache_dir=cache,
                                   allow_patterns=["*.json"]))
    names = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert names and all(n.endswith(".json") for n in names), names
    assert "model.safetensors" not in names


def test_hf_hub_download_by_branch_tag_and_commit(mirror, cache):
    info = mirror.api.model_info(SAMPLE_REPO)
    expected = (sample_model_dir() / "config.json").read_bytes()
    for revision in ("main", "v1", info.sha):
        path = hf_hub_download(SAMPLE_REPO, "config.json", revision=revision,
                               endpoint=mirror.url, cache_dir=cache)
        assert Path(path).read_bytes() == expected, f"config.json at {revision}"
        assert f"/snapshots/{info.sha}/" in path, "the file lives under the resolved commit"


def test_model_info_carries_commit_siblings_card_and_safetensors(mirror):
    info = mirror.api.model_info(SAMPLE_REPO, files_metadata=True)
    assert len(info.sha) == 40
    siblings = {s.rfilename: s for s in info.siblings}
    assert set(siblings) == set(_packaged_files(sample_model_dir()))
    weights = siblings["model.safetensors"]
    data = (sample_model_dir() / "model.safetensors").read_bytes()
    assert weights.lfs is not None and weights.lfs.sha256 == hashlib.sha256(data).hexdigest()
    assert weights.size == len(data)
    config = siblings["config.json"]
    assert config.lfs is None
    assert config.blob_id == git_blob_sha1((sample_model_dir() / "config.json").read_bytes())
    assert info.safetensors.total == 22713728, "all-MiniLM-L6-v2 has 22.7M parameters"
    assert info.card_data.license == "apache-2.0"
    assert info.library_name == "sentence-transformers"
    assert "safetensors" in info.tags
    assert mirror.api.model_info(SAMPLE_REPO, revision="v1").sha == info.sha


def test_list_repo_files_tree_refs_and_file_exists(mirror):
    files = mirror.api.list_repo_files(TINY)
    assert set(files) == {"README.md", "config.json", "vocab.txt", "model.safetensors",
                          "big.bin", "sub/notes.txt", "sub/deeper/data.json"}
    tree = list(mirror.api.list_repo_tree(TINY, path_in_repo="sub"))
    assert {(type(e).__name__, e.path) for e in tree} == {
        ("RepoFile", "sub/notes.txt"), ("RepoFolder", "sub/deeper")
    }
    deep = list(mirror.api.list_repo_tree(TINY, path_in_repo="sub", recursive=True))
    assert {e.path for e in deep} == {"sub/notes.txt", "sub/deeper", "sub/deeper/data.json"}
    refs = mirror.api.list_repo_refs(TINY)
    assert [b.name for b in refs.branches] == ["main"]
    assert [t.name for t in refs.tags] == ["v1.0"]
    assert refs.tags[0].target_commit == refs.branches[0].target_commit
    assert mirror.api.file_exists(TINY, "sub/notes.txt")
    assert not mirror.api.file_exists(TINY, "sub/missing.txt")


def test_missing_repo_revision_and_file_raise_the_right_errors(mirror, cache):
    with pytest.raises(RepositoryNotFoundError):
        mirror.api.model_info("nobody/nothing")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("nobody/nothing", "config.json", endpoint=mirror.url, cache_dir=cache)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(TINY, "config.json", revision="no-such-branch", endpoint=mirror.url,
                        cache_dir=cache)
    with pytest.raises(RevisionNotFoundError):
        mirror.api.model_info(TINY, revision="0" * 40)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(TINY, "no-such-file.json", endpoint=mirror.url, cache_dir=cache)
    with pytest.raises(EntryNotFoundError):
        list(mirror.api.list_repo_tree(TINY, path_in_repo="no-such-folder"))


def test_entry_not_found_writes_the_no_exist_marker_under_the_commit(mirror, cache):
    sha = mirror.api.model_info(TINY).sha
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(TINY, "generation_config.json", endpoint=mirror.url, cache_dir=cache)
    marker = cache / "models--tests--tiny-model" / ".no_exist" / sha / "generation_config.json"
    assert marker.exists(), "EntryNotFound must carry X-Repo-Commit so the client caches it"


def test_hf_download_cli_works_against_the_mirror(mirror, tmp_path):
    cache = tmp_path / "cli-cache"
    result = subprocess.run(
        [str(VENV_BIN / "hf"), "download", TINY, "--revision", "v1.0"],
        env=hf_env(mirror.url, cache), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    local = hf_cli_path(result.stdout)
    assert (local / "big.bin").read_bytes() == (mirror.tiny_dir / "big.bin").read_bytes()
    assert (local / "sub" / "deeper" / "data.json").exists()


def _request(url: str, method: str, path: str, headers: dict | None = None):
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request(method, path, headers=headers or {})
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response, body


def test_resolve_etags_are_content_hashes_and_if_none_match_answers_304(mirror):
    sha = mirror.api.model_info(TINY).sha
    weights = (mirror.tiny_dir / "model.safetensors").read_bytes()
    config = (mirror.tiny_dir / "config.json").read_bytes()
    cases = [("model.safetensors", hashlib.sha256(weights).hexdigest(), weights),
             ("config.json", git_blob_sha1(config), config)]
    for name, etag, data in cases:
        path = f"/{TINY}/resolve/{sha}/{name}"
        for method in ("HEAD", "GET"):
            response, body = _request(mirror.url, method, path)
            assert response.status == 200
            assert response.getheader("ETag") == f'"{etag}"', f"{method} {name} ETag"
            assert response.getheader("X-Repo-Commit") == sha
            assert int(response.getheader("Content-Length")) == len(data)
            assert response.getheader("Content-Encoding") is None, "never compress weights"
            if method == "GET":
                assert body == data
        response, body = _request(mirror.url, "GET", path, {"If-None-Match": f'"{etag}"'})
        assert response.status == 304 and body == b""
        assert response.getheader("ETag") == f'"{etag}"'


def test_a_branch_redirects_to_the_commit_pinned_url(mirror):
    sha = mirror.api.model_info(TINY).sha
    for method in ("HEAD", "GET"):
        response, _ = _request(mirror.url, method, f"/{TINY}/resolve/main/sub/notes.txt")
        assert response.status == 307
        assert response.getheader("Location") == f"{mirror.url}/{TINY}/resolve/{sha}/sub/notes.txt"
        assert response.getheader("X-Repo-Commit") == sha
        assert response.getheader("ETag") == f'"{git_blob_sha1(b"notes" + bytes([10]))}"'
    for header in ("X-Xet-Hash", "X-Xet-Refresh-Route", "Link"):
        assert response.getheader(header) is None, f"{header} would switch the client to Xet"


def test_ranges_answer_206_with_exactly_the_bytes_asked(mirror):
    sha = mirror.api.model_info(TINY).sha
    data = (mirror.tiny_dir / "big.bin").read_bytes()
    path = f"/{TINY}/resolve/{sha}/big.bin"
    for header, start, end in [("bytes=100-199", 100, 199), ("bytes=5000000-", 5000000, None),
                               ("bytes=-10", len(data) - 10, None)]:
        response, body = _request(mirror.url, "GET", path, {"Range": header})
        assert response.status == 206, header
        last = len(data) - 1 if end is None else end
        assert body == data[start : last + 1], header
        assert response.getheader("Content-Range") == f"bytes {start}-{last}/{len(data)}"
    response, _ = _request(mirror.url, "GET", path, {"Range": f"bytes={len(data)}-"})
    assert response.status == 416


def test_blob_route_serves_by_sha256_with_etag_and_ranges(mirror):
    data = (mirror.tiny_dir / "big.bin").read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    response, body = _request(mirror.url, "GET", f"/blobs/sha256/{digest}", {"Range": "bytes=0-9"})
    assert response.status == 206 and body == data[:10]
    assert response.getheader("ETag") == f'"{digest}"'
    response, _ = _request(mirror.url, "HEAD", f"/blobs/sha256/{digest}",
                           {"If-None-Match": f'"{digest}"'})
    assert response.status == 304
    response, _ = _request(mirror.url, "GET", f"/blobs/sha256/{'0' * 64}")
    assert response.status == 404
    response, _ = _request(mirror.url, "GET", "/blobs/sha256/not-a-hash")
    assert response.status == 400


def test_the_mirror_key_is_served_as_ed25519_hex(mirror):
    import json
    import re

    response, body = _request(mirror.url, "GET", "/api/weightswarm/key")
    assert response.status == 200
    assert re.fullmatch(r"ed25519:[0-9a-f]{64}", json.loads(body)["key"])
    key_file = mirror.config.key_path
    assert key_file.stat().st_mode & 0o777 == 0o600


def test_metrics_count_requests_by_route_and_status(mirror):
    _request(mirror.url, "GET", f"/api/models/{TINY}")
    response, body = _request(mirror.url, "GET", "/metrics")
    assert response.status == 200
    text = body.decode()
    assert 'weightswarm_mirror_requests_total{route="repo_info",status="200"}' in text
    assert "weightswarm_mirror_store_blobs" in text


def test_list_repo_commits_and_paths_info(mirror):
    api = HfApi(endpoint=mirror.url)
    commits = api.list_repo_commits(TINY)
    assert commits[0].commit_id == mirror.api.model_info(TINY).sha
    infos = api.get_paths_info(TINY, ["config.json", "sub", "missing"])
    assert {type(i).__name__ + ":" + i.path for i in infos} == {"RepoFile:config.json",
                                                                "RepoFolder:sub"}


def test_one_segment_repo_ids_work(mirror, cache):
    path = hf_hub_download("tiny-one", "sub/deeper/data.json", endpoint=mirror.url,
                           cache_dir=cache)
    assert Path(path).read_text() == "[1, 2, 3]\n"
    assert mirror.api.model_info("tiny-one").sha == mirror.api.model_info(TINY).sha


def test_a_dataset_repo_is_served_like_a_model(mirror, cache):
    local = Path(snapshot_download("tests/tiny-data", repo_type="dataset", endpoint=mirror.url,
                                   cache_dir=cache))
    assert (local / "config.json").read_bytes() == (mirror.tiny_dir / "config.json").read_bytes()
    assert "datasets--tests--tiny-data" in str(local)
    info = mirror.api.dataset_info("tests/tiny-data")
    assert info.sha and {s.rfilename for s in info.siblings} >= {"big.bin", "sub/notes.txt"}
    with pytest.raises(RepositoryNotFoundError):
        mirror.api.model_info("tests/tiny-data")
