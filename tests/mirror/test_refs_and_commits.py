"""Refs of every kind and paginated commit history, through the stock client."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import HfApi, hf_hub_download

from helpers import make_config, make_tiny_model
from mirror.catalog import Catalog
from mirror.importer import Importer
from peer.store import BlobStore

REPO = "tests/history"
EDITS = 60  # more than one page (50) of commits


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    from helpers import start_mirror

    home = tmp_path_factory.mktemp("history")
    config = make_config(home)
    catalog = Catalog(config.catalog_path)
    importer = Importer(catalog, BlobStore(config.store_dir))
    tiny = make_tiny_model(tmp_path_factory.mktemp("tiny"), big_size=1024)
    commits = []
    for i in range(EDITS):
        (tiny / "vocab.txt").write_text(f"edit {i}\n")
        [result] = importer.import_path(tiny, repo_id=REPO)
        commits.append(result.commit)
    (tiny / "vocab.txt").write_text("a pull request\n")
    importer.import_path(tiny, repo_id=REPO, revision="refs/pr/1")
    importer.import_path(tiny, repo_id=REPO, revision="refs/convert/parquet")
    catalog.close()
    running = start_mirror(config)
    running.commits = commits
    yield running
    running.stop()


def test_commit_history_spans_pages_newest_first(mirror):
    history = HfApi(endpoint=mirror.url).list_repo_commits(REPO)
    assert [c.commit_id for c in history] == list(reversed(mirror.commits))
    assert all(c.created_at.tzinfo is not None for c in history)


def test_refs_list_branches_tags_converts_and_pull_requests(mirror):
    api = HfApi(endpoint=mirror.url)
    refs = api.list_repo_refs(REPO, include_pull_requests=True)
    assert [b.name for b in refs.branches] == ["main"]
    assert [c.ref for c in refs.converts] == ["refs/convert/parquet"]
    assert [p.ref for p in refs.pull_requests] == ["refs/pr/1"]
    assert api.list_repo_refs(REPO).pull_requests is None


def test_a_pull_request_ref_resolves_percent_encoded(mirror, tmp_path):
    path = hf_hub_download(REPO, "vocab.txt", revision="refs/pr/1", endpoint=mirror.url,
                           cache_dir=tmp_path / "c")
    assert Path(path).read_text() == "a pull request\n"
    main = hf_hub_download(REPO, "vocab.txt", endpoint=mirror.url, cache_dir=tmp_path / "c")
    assert Path(main).read_text() == f"edit {EDITS - 1}\n"
