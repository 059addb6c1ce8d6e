"""Listing and search (`/api/models`, `/api/datasets`) with the stock client."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

import pytest
from huggingface_hub import HfApi

from helpers import SAMPLE_REPO, make_config, sample_model_dir, start_mirror
from mirror.catalog import Catalog, NewSnapshot
from mirror.importer import Importer
from peer.hfformat import FileEntry
from peer.store import BlobStore

MANY = 1005  # more than one page (1000) of results


def _fake(repo_id: str, commit: str, card: dict, type_: str = "model") -> NewSnapshot:
    file = FileEntry("config.json", 2, "0" * 64, "1" * 40, False)
    return NewSnapshot(hub="huggingface", type=type_, repo_id=repo_id, commit=commit,
                       files=[file], refs=[("branch", "main")], card_data=card)


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    home = tmp_path_factory.mktemp("listing")
    config = make_config(home)
    catalog = Catalog(config.catalog_path)
    Importer(catalog, BlobStore(config.store_dir)).import_path(sample_model_dir(),
                                                               repo_id=SAMPLE_REPO)
    for i in range(MANY):
        card = {"tags": ["bulk", f"group-{i % 3}"], "license": "mit" if i % 2 else "apache-2.0"}
        catalog.publish(_fake(f"bulk/model-{i:04d}", f"{i + 1:040x}", card), now=1_700_000_000 + i)
    catalog.publish(_fake("other/Tiny-Thing", "a" * 40, {"tags": ["tiny"]}), now=1_800_000_000)
    catalog.publish(_fake("other/x1", "b" * 40, {}), now=1_800_000_001)
    catalog.publish(_fake("data/corpus", "c" * 40, {"tags": ["text"]}, "dataset"))
    private = _fake("secret/hidden", "d" * 40, {})
    private.access = "private"
    catalog.publish(private)
    catalog.close()
    running = start_mirror(config)
    running.api = HfApi(endpoint=running.url)
    yield running
    running.stop()


def test_search_is_a_case_insensitive_substring_of_the_id(mirror):
    assert [m.id for m in mirror.api.list_models(search="mini")] == [SAMPLE_REPO]
    assert [m.id for m in mirror.api.list_models(search="MiniLM-L6")] == [SAMPLE_REPO]
    assert [m.id for m in mirror.api.list_models(search="tiny-th")] == ["other/Tiny-Thing"]
    # Under three characters: LIKE instead of the trigram index.
    assert [m.id for m in mirror.api.list_models(search="x1")] == ["other/x1"]


@pytest.mark.parametrize("query", ['-', '"', '*', ':', '(', ')', 'a"b', 'NEAR(', 'x OR y', '^',
                                   '%', '_', '\\', 'model-00*', '"unbalanced', "a:b(c)-d*"])
def test_search_input_with_fts_syntax_never_raises(mirror, query):
    found = [m.id for m in mirror.api.list_models(search=query, limit=5)]
    assert all(query.lower() in m.lower() for m in found), (query, found)


def test_results_span_pages_with_absolute_links(mirror):
    found = [m.id for m in mirror.api.list_models(author="bulk")]
    assert len(found) == MANY, "the client follows Link: rel=next past the first 1000"
    assert len(set(found)) == MANY
    with urllib.request.urlopen(f"{mirror.url}/api/models?author=bulk&limit=10") as r:
        link = r.headers["Link"]
        assert len(json.loads(r.read())) == 10
    assert link.startswith(f"<{mirror.url}/api/models?") and 'rel="next"' in link
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(link[1:link.index(">")]).query)
    assert query["author"] == ["bulk"] and query["limit"] == ["10"] and query["cursor"] == ["10"]


def test_author_filter_and_sort(mirror):
    group = [m.id for m in mirror.api.list_models(filter=["group-1", "license:mit"], limit=2000)]
    assert group and all(int(i[-4:]) % 3 == 1 and int(i[-4:]) % 2 == 1 for i in group)
    assert len(group) == len([i for i in range(MANY) if i % 3 == 1 and i % 2 == 1])
    newest = [m.id for m in mirror.api.list_models(author="bulk", sort="lastModified", limit=3)]
    assert newest == ["bulk/model-1004", "bulk/model-1003", "bulk/model-1002"]
    oldest = [m.id for m in mirror.api.list_models(author="bulk", sort="createdAt", limit=1)]
    assert oldest == ["bulk/model-1004"], "descending, as HF sorts"
    for sort in ("downloads", "likes", "trendingScore"):
        assert len(list(mirror.api.list_models(author="other", sort=sort))) == 2


def test_full_and_card_data(mirror):
    [item] = list(mirror.api.list_models(search="MiniLM", full=True, cardData=True))
    assert item.sha and {s.rfilename for s in item.siblings} >= {"model.safetensors"}
    assert item.card_data["license"] == "apache-2.0"
    assert "safetensors" in item.tags and item.library_name == "sentence-transformers"


def test_datasets_are_listed_apart_and_private_repos_never(mirror):
    assert [d.id for d in mirror.api.list_datasets()] == ["data/corpus"]
    assert [d.id for d in mirror.api.list_datasets(search="corp")] == ["data/corpus"]
    assert not list(mirror.api.list_models(search="hidden"))
    assert "data/corpus" not in [m.id for m in mirror.api.list_models(search="corpus")]


@pytest.mark.parametrize("query", ["sort=nonsense", "limit=0", "limit=abc", "cursor=-1",
                                   "direction=sideways"])
def test_bad_listing_parameters_get_a_400(mirror, query):
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{mirror.url}/api/models?{query}")
    assert e.value.code == 400 and e.value.headers["X-Error-Message"]
