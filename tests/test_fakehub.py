"""The fake upstream hub speaks PROTOCOLS.md section 1: checked with the stock huggingface_hub
client where it can tell, and with plain http.client for the headers and the misbehaviour."""

from __future__ import annotations

import hashlib
import http.client
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fakehub import FakeHub, tiny_repo_files
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from peer.hfformat import card_data, git_blob_sha1, lfs_pointer_sha1, pointer_size

REPO = "org/tiny"
SHARD = "model-00001-of-00002.safetensors"
FILES = tiny_repo_files(
    shard_size=64 * 1024, extra={"sub/notes.txt": b"notes\n", "sub/deeper/data.json": b"[1]\n"}
)


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    complete: bool


def fetch(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> Answer:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request(method, url[len(f"{parts.scheme}://{parts.netloc}"):], headers=headers or {})
        response = conn.getresponse()
        try:
            return Answer(response.status, response.headers, response.read(), True)
        except http.client.IncompleteRead as e:
            return Answer(response.status, response.headers, e.partial, False)
    finally:
        conn.close()


def all_pages(url: str) -> tuple[list, int]:
    """Every item of a paginated listing, following `Link: rel="next"`, and the page count."""
    items, pages = [], 0
    while url:
        answer = fetch(url)
        assert answer.status == 200, answer.body
        items += json.loads(answer.body)
        pages += 1
        match = re.fullmatch(r'<(.+)>; rel="next"', answer.headers.get("Link", ""))
        url = match.group(1) if match else ""
    return items, pages


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def start():
    """start(**options) runs a FakeHub; all are stopped after the test."""
    hubs: list[FakeHub] = []

    def _start(**options) -> FakeHub:
        hub = FakeHub(**options).start()
        hubs.append(hub)
        return hub

    yield _start
    for hub in hubs:
        hub.stop()


@pytest.fixture
def hub(start) -> FakeHub:
    return start()


def test_model_info_gives_the_stock_client_the_commit_card_and_blob_hashes(hub):
    sha = hub.add_repo(REPO, FILES, tags=("v1",))
    api = HfApi(endpoint=hub.url)
    info = api.model_info(REPO, files_metadata=True)
    assert info.sha == sha and re.fullmatch(r"[0-9a-f]{40}", sha)
    assert info.author == "org" and info.gated is False and info.private is False
    assert info.card_data.license == "apache-2.0" and "tiny" in info.tags
    assert info.last_modified.tzinfo is not None
    siblings = {s.rfilename: s for s in info.siblings}
    assert set(siblings) == set(FILES)
    shard = siblings[SHARD]
    assert shard.lfs.sha256 == sha256(FILES[SHARD])
    assert shard.lfs.pointer_size == pointer_size(len(FILES[SHARD]))
    assert siblings["config.json"].lfs is None
    assert siblings["config.json"].blob_id == git_blob_sha1(FILES["config.json"])
    for revision in ("v1", sha, "refs/heads/main"):
        assert api.model_info(REPO, revision=revision).sha == sha, revision


def test_list_repo_tree_follows_absolute_next_links_across_pages(start):
    hub = start(page_size=3)
    hub.add_repo(REPO, FILES)
    entries = list(HfApi(endpoint=hub.url).list_repo_tree(REPO, recursive=True))
    expected = set(FILES) | {"sub", "sub/deeper"}
    assert sorted(e.path for e in entries) == sorted(expected)
    tree_calls = [path for _, path in hub.requests if "/tree/" in path]
    assert len(tree_calls) == math.ceil(len(expected) / 3) > 1
    assert all("recursive=true" in path for path in tree_calls), tree_calls
    by_path = {e.path: e for e in entries}
    shard = by_path[SHARD]
    assert shard.lfs.sha256 == sha256(FILES[SHARD])
    assert shard.blob_id == lfs_pointer_sha1(sha256(FILES[SHARD]), len(FILES[SHARD]))
    assert shard.xet_hash is not None, "xet=True advertises xetHash on LFS entries"
    assert by_path["config.json"].blob_id == git_blob_sha1(FILES["config.json"])
    assert re.fullmatch(r"[0-9a-f]{40}", by_path["sub"].tree_id)


def test_tree_of_a_folder_lists_its_children_and_anything_else_is_entry_not_found(hub):
    hub.add_repo(REPO, FILES)
    api = HfApi(endpoint=hub.url)
    assert {e.path for e in api.list_repo_tree(REPO, path_in_repo="sub")} == {
        "sub/notes.txt", "sub/deeper"}
    for missing in ("nope", "config.json"):
        with pytest.raises(EntryNotFoundError):
            list(api.list_repo_tree(REPO, path_in_repo=missing))
    with pytest.raises(RevisionNotFoundError):
        list(api.list_repo_tree(REPO, revision="no-such-branch"))


def test_refs_list_branches_tags_and_pull_requests(hub):
    main = hub.add_repo(REPO, FILES, tags=("v1",))
    dev = hub.add_repo(REPO, {**FILES, "new.txt": b"new\n"}, branch="dev")
    pr = hub.add_repo(REPO, {"pr.txt": b"pr\n"}, branch="refs/pr/1")
    api = HfApi(endpoint=hub.url)
    refs = api.list_repo_refs(REPO, include_pull_requests=True)
    assert {b.name: b.target_commit for b in refs.branches} == {"main": main, "dev": dev}
    assert [(t.name, t.ref, t.target_commit) for t in refs.tags] == [("v1", "refs/tags/v1", main)]
    assert [(p.ref, p.target_commit) for p in refs.pull_requests] == [("refs/pr/1", pr)]
    assert refs.converts == []
    # The client sends refs/pr/1 as refs%2Fpr%2F1.
    assert api.model_info(REPO, revision="refs/pr/1").sha == pr


def test_readding_makes_a_new_commit_and_older_commits_stay_resolvable(hub):
    old = hub.add_repo(REPO, FILES)
    new = hub.add_repo(REPO, {**FILES, "config.json": b"{}"})
    assert old != new and hub.add_repo(REPO, {**FILES, "config.json": b"{}"}) not in (old, new)
    assert HfApi(endpoint=hub.url).model_info(REPO, revision=old).sha == old
    answer = fetch(hub.resolve_url(REPO, old, "config.json"))
    assert answer.body == FILES["config.json"] and answer.headers["X-Repo-Commit"] == old


def test_lfs_is_chosen_by_extension_and_size_unless_given(hub):
    big = b"\0" * (10 * 1024 * 1024)
    hub.add_repo(REPO, {"w.bin": b"w", "w.gguf": b"g", "big.txt": big, "small.txt": b"s"})
    hub.add_repo("org/explicit", {"w.bin": b"w", "small.txt": b"s"}, lfs={"small.txt"})
    tree, _ = all_pages(f"{hub.url}/api/models/{REPO}/tree/main?recursive=true")
    assert {e["path"] for e in tree if "lfs" in e} == {"w.bin", "w.gguf", "big.txt"}
    tree, _ = all_pages(f"{hub.url}/api/models/org/explicit/tree/main")
    assert {e["path"] for e in tree if "lfs" in e} == {"small.txt"}


def test_stock_client_downloads_a_regular_file_straight_from_the_hub(start, tmp_path):
    hub = start(xet=False)
    sha = hub.add_repo(REPO, FILES)
    path = Path(hf_hub_download(REPO, "config.json", endpoint=hub.url, cache_dir=tmp_path))
    assert path.read_bytes() == FILES["config.json"]
    assert path.parent.name == sha, "the snapshot folder is named after X-Repo-Commit"
    assert hub.cdn_requests == []


def test_stock_client_follows_the_302_to_the_cdn_without_the_token(start, tmp_path):
    hub = start(xet=False)
    hub.add_repo(REPO, FILES)
    path = hf_hub_download(REPO, SHARD, endpoint=hub.url, cache_dir=tmp_path,
                           token="secret-token")
    assert Path(path).read_bytes() == FILES[SHARD]
    assert hub.cdn_requests == [("GET", f"/blobs/{sha256(FILES[SHARD])}", None)]
    assert hub.cdn_auth_headers == [None], "the hub's token must not reach another host"
    assert "Bearer secret-token" in hub.auth_headers


@pytest.mark.parametrize("xet", [True, False])
def test_resolve_of_an_lfs_file_redirects_to_the_cdn_and_advertises_xet_only_if_asked(start, xet):
    hub = start(xet=xet)
    sha = hub.add_repo(REPO, FILES)
    answer = fetch(hub.resolve_url(REPO, "main", SHARD), "HEAD")
    assert answer.status == 302
    assert answer.headers["Location"].startswith(f"{hub.cdn_url}/blobs/{sha256(FILES[SHARD])}?")
    assert answer.headers["X-Repo-Commit"] == sha
    assert answer.headers["X-Linked-Etag"] == f'"{sha256(FILES[SHARD])}"'
    assert answer.headers["X-Linked-Size"] == str(len(FILES[SHARD]))
    xet_signals = [answer.headers.get("X-Xet-Hash"), answer.headers.get("X-Xet-Refresh-Route"),
                   'rel="xet-auth"' in answer.headers.get("Link", "") or None]
    assert all(xet_signals) if xet else not any(xet_signals), xet_signals
    tree, _ = all_pages(f"{hub.url}/api/models/{REPO}/tree/main")
    assert any("xetHash" in e for e in tree) == xet
    plain = fetch(hub.resolve_url(REPO, "main", "config.json"), "HEAD")
    assert plain.status == 200 and "X-Xet-Hash" not in plain.headers
    assert plain.headers["ETag"] == f'"{git_blob_sha1(FILES["config.json"])}"'
    assert plain.headers["Content-Length"] == str(len(FILES["config.json"]))


def test_ranges_get_206_with_content_range_on_the_hub_and_the_cdn(hub):
    hub.add_repo(REPO, FILES)
    config, shard = FILES["config.json"], FILES[SHARD]
    cdn_url = fetch(hub.resolve_url(REPO, "main", SHARD), "HEAD").headers["Location"]
    cases = [(hub.resolve_url(REPO, "main", "config.json"), config, "bytes=2-5", 2, 6),
             (hub.resolve_url(REPO, "main", "config.json"), config, "bytes=3-", 3, len(config)),
             (cdn_url, shard, "bytes=10-19", 10, 20),
             (cdn_url, shard, "bytes=-4", len(shard) - 4, len(shard))]
    for url, data, header, start, end in cases:
        answer = fetch(url, headers={"Range": header})
        assert answer.status == 206, header
        assert answer.body == data[start:end], header
        assert answer.headers["Content-Range"] == f"bytes {start}-{end - 1}/{len(data)}"
    assert fetch(cdn_url, headers={"Range": f"bytes={len(shard)}-"}).status == 416


def test_list_models_by_author_pages_through_every_public_repo(start):
    hub = start(page_size=2)
    for name in "abcde":
        hub.add_repo(f"org/{name}", {"README.md": b"hi\n"})
    hub.add_repo("other/x", {"README.md": b"hi\n"})
    hub.add_repo("org/secret", {"README.md": b"hi\n"}, private=True)
    api = HfApi(endpoint=hub.url)
    models = list(api.list_models(author="org"))
    assert [m.id for m in models] == [f"org/{name}" for name in "abcde"]
    assert all(re.fullmatch(r"[0-9a-f]{40}", m.sha) for m in models)
    assert sum("/api/models?" in path for _, path in hub.requests) == 3
    assert [m.id for m in api.list_models(search="c")] == ["org/c"]
    assert "org/secret" in [m.id for m in HfApi(endpoint=hub.url, token="secret-token")
                            .list_models(author="org")]


def test_a_rate_limited_listing_is_retried_by_the_stock_client_and_succeeds(start):
    hub = start(rate_limit_every=2, retry_after=0, page_size=100)
    hub.add_repo(REPO, FILES)
    tree_url = f"{hub.url}/api/models/{REPO}/tree/main?recursive=true"
    assert fetch(tree_url).status == 200  # the 1st API request; the client's is the 2nd
    entries = list(HfApi(endpoint=hub.url).list_repo_tree(REPO, recursive=True))
    assert len(entries) == len(FILES) + 2
    assert sum("/tree/" in path for _, path in hub.requests) == 3, "one 429, one retry"
    limited = fetch(tree_url)  # the 4th
    assert limited.status == 429
    assert limited.headers["Retry-After"] == "0"
    assert limited.headers["RateLimit"] == '"api";r=0;t=0'
    assert limited.headers["X-Error-Message"]
    assert fetch(hub.resolve_url(REPO, "main", "config.json")).status == 200, "not under /api/"


def test_a_large_file_is_cut_halfway_once_then_served_whole(start):
    hub = start(cut_large_files=True, large_file=100 * 1024)
    files = tiny_repo_files(shards=1, shard_size=128 * 1024, extra={"small.bin": b"s" * 99})
    hub.add_repo(REPO, files)
    shard = files["model-00001-of-00001.safetensors"]
    cdn_url = fetch(hub.resolve_url(REPO, "main", "model-00001-of-00001.safetensors"),
                    "HEAD").headers["Location"]
    first = fetch(cdn_url)
    assert not first.complete and first.body == shard[: len(shard) // 2]
    assert fetch(cdn_url).body == shard
    ranged = fetch(cdn_url, headers={"Range": "bytes=100-"})
    assert ranged.status == 206 and ranged.body == shard[100:]
    small_url = fetch(hub.resolve_url(REPO, "main", "small.bin"), "HEAD").headers["Location"]
    assert fetch(small_url).complete, "files under large_file are never cut"


def test_the_stock_client_resumes_a_cut_download_with_a_range(start, tmp_path):
    # The client only resumes from what it has written, in 10 MiB chunks: a cut file must be
    # larger than that for its second GET to carry a Range.
    hub = start(cut_large_files=True, xet=False)
    big = bytes(range(256)) * (96 * 1024)  # 24 MiB
    hub.add_repo(REPO, {"big.bin": big})
    path = hf_hub_download(REPO, "big.bin", endpoint=hub.url, cache_dir=tmp_path)
    assert Path(path).read_bytes() == big
    assert [r for _, _, r in hub.cdn_requests] == [None, "bytes=10485760-"]


def test_corrupt_flips_one_byte_but_keeps_the_published_hashes_until_repaired(hub):
    hub.add_repo(REPO, FILES)
    hub.corrupt(REPO, "config.json")
    hub.corrupt(REPO, SHARD)
    config = fetch(hub.resolve_url(REPO, "main", "config.json"))
    assert config.headers["ETag"] == f'"{git_blob_sha1(FILES["config.json"])}"'
    assert len(config.body) == len(FILES["config.json"])
    assert sum(a != b for a, b in zip(config.body, FILES["config.json"], strict=True)) == 1
    head = fetch(hub.resolve_url(REPO, "main", SHARD), "HEAD")
    assert head.headers["X-Linked-Etag"] == f'"{sha256(FILES[SHARD])}"'
    assert sha256(fetch(head.headers["Location"]).body) != sha256(FILES[SHARD])
    hub.repair(REPO, "config.json")
    hub.repair(REPO, SHARD)
    assert fetch(hub.resolve_url(REPO, "main", "config.json")).body == FILES["config.json"]
    assert fetch(head.headers["Location"]).body == FILES[SHARD]


def test_set_raw_tree_lists_exactly_the_hostile_entries(start):
    hub = start(page_size=2)
    hub.add_repo(REPO, FILES)
    oid = "0" * 40
    raw = [{"type": "file", "path": path, "size": 1, "oid": oid}
           for path in ("../x", "/etc/x", "a\x00b", "a" * 10_000, "dup", "dup", "ghost.txt")]
    raw.append({"type": "file", "path": "config.json", "size": 10**12, "oid": oid})
    hub.set_raw_tree(REPO, raw)
    listed, pages = all_pages(f"{hub.url}/api/models/{REPO}/tree/main?recursive=true")
    assert listed == raw and pages == 4
    assert fetch(hub.resolve_url(REPO, "main", "config.json")).body == FILES["config.json"]
    ghost = fetch(hub.resolve_url(REPO, "main", "ghost.txt"))
    assert ghost.status == 404 and ghost.headers["X-Error-Code"] == "EntryNotFound"


def test_errors_carry_the_hf_error_codes_the_stock_client_understands(hub, tmp_path):
    sha = hub.add_repo(REPO, FILES)
    api = HfApi(endpoint=hub.url)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/missing")
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO, revision="no-such-branch")
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(REPO, "missing.txt", endpoint=hub.url, cache_dir=tmp_path)
    missing = fetch(hub.resolve_url(REPO, "main", "missing.txt"), "HEAD")
    assert missing.status == 404 and missing.headers["X-Repo-Commit"] == sha
    for answer in (missing, fetch(f"{hub.url}/api/models/org/missing")):
        assert answer.headers["X-Error-Message"]
    assert json.loads(fetch(f"{hub.url}/api/models/org/missing").body)["error"]


def test_a_private_repo_is_not_found_without_the_token(hub):
    hub.add_repo(REPO, FILES, private=True)
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.url).model_info(REPO)
    answer = fetch(hub.resolve_url(REPO, "main", "config.json"))
    assert (answer.status, answer.headers["X-Error-Code"]) == (401, "RepoNotFound")
    assert HfApi(endpoint=hub.url, token="secret-token").model_info(REPO).private is True


def test_a_gated_repo_shows_its_info_but_refuses_downloads(hub, tmp_path):
    hub.add_repo(REPO, FILES, gated=True)
    assert HfApi(endpoint=hub.url).model_info(REPO).gated == "manual"
    with pytest.raises(GatedRepoError):
        hf_hub_download(REPO, "config.json", endpoint=hub.url, cache_dir=tmp_path)
    answer = fetch(hub.resolve_url(REPO, "main", "config.json"))
    assert (answer.status, answer.headers["X-Error-Code"]) == (403, "GatedRepo")


def test_dataset_repos_live_under_the_datasets_prefixes(start, tmp_path):
    hub = start(xet=False)
    sha = hub.add_repo("org/data", {"train.csv": b"a,b\n1,2\n"}, repo_type="dataset")
    api = HfApi(endpoint=hub.url)
    assert api.dataset_info("org/data").sha == sha
    path = hf_hub_download("org/data", "train.csv", repo_type="dataset", endpoint=hub.url,
                           cache_dir=tmp_path)
    assert Path(path).read_bytes() == b"a,b\n1,2\n"
    resolve = "/datasets/org/data/resolve/main/train.csv"
    assert hub.requests[-2:] == [("HEAD", resolve), ("GET", resolve)]
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/data")


def test_counts_record_requests_auth_and_bytes_until_reset(hub):
    hub.add_repo(REPO, FILES)
    config_url = hub.resolve_url(REPO, "main", "config.json")
    fetch(config_url, headers={"Authorization": "Bearer abc"})
    cdn_url = fetch(hub.resolve_url(REPO, "main", SHARD), "HEAD").headers["Location"]
    fetch(cdn_url, "HEAD")
    fetch(cdn_url, headers={"Range": "bytes=0-9"})
    assert hub.requests == [("GET", urlsplit(config_url).path),
                            ("HEAD", urlsplit(hub.resolve_url(REPO, "main", SHARD)).path)]
    assert hub.auth_headers == ["Bearer abc", None]
    assert [(m, r) for m, _, r in hub.cdn_requests] == [("HEAD", None), ("GET", "bytes=0-9")]
    assert hub.bytes_served == len(FILES["config.json"]) + 10, "HEADs send no content"
    hub.reset_counts()
    assert (hub.requests, hub.auth_headers, hub.cdn_requests, hub.cdn_auth_headers,
            hub.bytes_served) == ([], [], [], [], 0)


def test_tiny_repo_files_are_deterministic_valid_safetensors_shards():
    from safetensors.numpy import load

    files = tiny_repo_files(seed=3, shards=3, shard_size=32 * 1024)
    shards = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert files == tiny_repo_files(seed=3, shards=3, shard_size=32 * 1024)
    other_seed = tiny_repo_files(seed=4, shards=3, shard_size=32 * 1024)
    assert all(files[name] != other_seed[name] for name in shards)
    index = json.loads(files["model.safetensors.index.json"])
    assert sorted(set(index["weight_map"].values())) == shards
    total = 0
    for name in shards:
        assert 30 * 1024 < len(files[name]) <= 32 * 1024, len(files[name])
        tensors = load(files[name])
        assert [index["weight_map"][t] for t in tensors] == [name]
        total += sum(t.nbytes for t in tensors.values())
    assert index["metadata"]["total_size"] == total
    card = card_data(files["README.md"])
    assert card["license"] == "apache-2.0" and card["library_name"] == "transformers"
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= set(files)
