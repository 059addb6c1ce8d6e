"""Syncing from ModelScope (issue 17) out of the fake of tests/fakems.py, which the real
`modelscope` client downloads from (tests/test_fakems.py): branches and tags by RevisionMap,
every file checked against its listed `Sha256`, the upstream's commit ids and dates kept;
refused whole when a hash, a size or a listing lies; resumed after a cut; polite under 429s; a
wrong token said in one line. A file synced from Hugging Face and from ModelScope is one blob
and one torrent. Then the stock clients on the result: `huggingface_hub` through
/hubs/modelscope, `modelscope` through the mirror's ModelScope API, `weightswarm pull`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from fakehub import FakeHub, tiny_repo_files
from fakems import FakeModelScope
from huggingface_hub import HfApi, snapshot_download

from helpers import pull_by_hub, run_sync, sample_model_files
from mirror.catalog import Catalog
from mirror.sync import HostileListing, SyncFailed
from mirror.upstreams import modelscope
from mirror.upstreams.huggingface import HuggingFace
from mirror.upstreams.modelscope import ModelScope
from peer import hubs
from peer.errors import Refused, RepoNotFound

MiB = 1024 * 1024
REPO = "qwen/tiny"
TOKEN = "ms-token"
WEIGHTSWARM = str(Path(os.environ.get("VIRTUAL_ENV", ".venv")) / "bin" / "weightswarm")
#: a date before the SDK's release (2026-10-09): an unpinned single-file download picks the
#: newest tag made before it (PROTOCOLS.md section 2.2)
LAST_YEAR = time.mktime((2025, 11, 1, 0, 0, 0, 0, 0, 0))


def sync(config, ms: FakeModelScope, spec: str, *, token: str | None = TOKEN, **kwargs):
    return run_sync(config, ModelScope(ms.url, token=token, retries=3), spec, **kwargs)


@pytest.fixture
def ms():
    with FakeModelScope(token=TOKEN, rate_limit_every=4, retry_after=0, cut_large_files=True,
                        large_file=1 * MiB) as running:
        yield running


def files_of(seed: int) -> dict[str, bytes]:
    return tiny_repo_files(seed=seed, shards=2, shard_size=2 * MiB,
                           extra={"sub/notes with space.txt": b"notes %d\n" % seed})


def refs(config, repo_id: str = REPO, repo_type: str = "model") -> dict:
    catalog = Catalog(config.catalog_path)
    try:
        repo = catalog.repo(hubs.MODELSCOPE, repo_type, repo_id)
        return {(r.kind, r.name): r.commit for r in catalog.refs(repo)}
    finally:
        catalog.close()


def _json(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def test_branches_and_tags_sync_with_their_commits_and_every_file_checked(ms, config, serve,
                                                                          tmp_path):
    old, new = files_of(1), files_of(2)
    tagged = ms.add_repo(REPO, old, tags=("v1.0",), created_at=LAST_YEAR)
    head = ms.add_repo(REPO, new)
    [master] = sync(config, ms, f"ms:{REPO}")
    [tag] = sync(config, ms, f"ms:{REPO}@v1.0")
    assert (master.commit, tag.commit) == (head, tagged), "ModelScope's commit ids are kept"
    assert refs(config) == {("branch", "master"): head, ("tag", "v1.0"): tagged}
    assert any(r[2] for r in ms.oss_requests), "a cut file was resumed with Range"
    assert all(c == (None, None) for c in ms.oss_credentials), "no token to object storage"

    mirror = serve(config)
    endpoint = f"{mirror.url}/hubs/modelscope"
    info = _json(f"{endpoint}/api/models/{REPO}/revision/v1.0")
    assert info["weightswarm"]["verifiedBy"] == dict.fromkeys(old, "sha256")
    assert info["lastModified"].startswith("2025-11-01"), "the upstream's date is the snapshot's"
    # the HF client asks for main; ModelScope's default branch is master
    assert HfApi(endpoint=endpoint).model_info(REPO).sha == head
    for revision, files in (("main", new), ("v1.0", old)):
        local = Path(snapshot_download(REPO, revision=revision, endpoint=endpoint,
                                       cache_dir=tmp_path / revision))
        for path, data in files.items():
            assert (local / path).read_bytes() == data, (revision, path)


def test_resyncing_an_unchanged_repo_asks_only_for_its_revisions(ms, config):
    ms.add_repo(REPO, files_of(3))
    sync(config, ms, f"ms:{REPO}")
    ms.reset_counts()
    [again] = sync(config, ms, f"ms:{REPO}")
    assert again.unchanged
    assert [p.split("?")[0] for _, p in ms.requests] == [f"/api/v1/models/{REPO}/revisions"]


def test_a_sha256_that_does_not_match_publishes_nothing(ms, config):
    ms.add_repo(REPO, files_of(4))
    ms.corrupt(REPO, "model-00001-of-00002.safetensors")
    with pytest.raises(SyncFailed, match="sha256"):
        sync(config, ms, f"ms:{REPO}")
    with pytest.raises(RepoNotFound):
        refs(config)


@pytest.mark.parametrize("entry", [
    {"Type": "blob", "Path": "../x", "Name": "x", "Size": 1, "Sha256": "a" * 64},
    {"Type": "blob", "Path": "/abs", "Name": "abs", "Size": 1, "Sha256": "a" * 64},
    {"Type": "blob", "Path": "a\u0000b", "Name": "a", "Size": 1, "Sha256": "a" * 64},
    {"Type": "blob", "Path": "config.json", "Name": "config.json", "Size": 1, "Sha256": "a" * 64},
    {"Type": "blob", "Path": "nohash.json", "Name": "nohash.json", "Size": 1},
])
def test_hostile_listings_are_refused_whole(ms, config, entry):
    ms.add_repo(REPO, {"config.json": b"{}"})
    good = {"Type": "blob", "Path": "config.json", "Name": "config.json", "Size": 2,
            "Sha256": "b" * 64}
    ms.set_raw_files(REPO, [good, entry])
    with pytest.raises(HostileListing):
        sync(config, ms, f"ms:{REPO}")


def test_a_size_that_lies_and_a_redirect_off_http_are_refused(ms, config):
    ms.add_repo(REPO, {"config.json": b"{}", "model.safetensors": os.urandom(200_000)})
    ms.lie_size(REPO, "model.safetensors", 100)
    with pytest.raises(SyncFailed, match="model.safetensors"):
        sync(config, ms, f"ms:{REPO}")
    ms.lie_size(REPO, "model.safetensors", 200_000)
    for scheme in ("ftp", "file:///etc/passwd"):
        ms.redirect_scheme = scheme
        with pytest.raises(SyncFailed, match="only http and https"):
            sync(config, ms, f"ms:{REPO}")
    with pytest.raises(RepoNotFound):
        refs(config)


def test_429_bursts_are_waited_out_and_a_wrong_token_is_one_line(ms, config):
    ms.rate_limit_every = 2
    ms.add_repo(REPO, {f"f{i}.json": b"%d" % i for i in range(6)})
    [result] = sync(config, ms, f"ms:{REPO}")
    assert result.fetched == 6
    for token, says in (("wrong", "refused the token"), (None, "asks for a token")):
        with pytest.raises(Refused) as refused:
            sync(config, ms, f"ms:{REPO}", token=token)
        assert says in str(refused.value) and "MODELSCOPE_API_TOKEN" in str(refused.value)
        assert "\n" not in str(refused.value)


def test_a_listing_of_exactly_the_truncation_limit_is_walked_by_folder(ms, config,
                                                                       monkeypatch):
    monkeypatch.setattr(modelscope, "TRUNCATION", 5)
    ms.truncate_at = 5
    files = {f"{d}/f{i}.txt": b"%s%d" % (d.encode(), i) for d in "abc" for i in range(3)}
    ms.add_repo(REPO, files)
    [result] = sync(config, ms, f"ms:{REPO}")
    assert result.files == len(files) == 9
    assert any("Root=" in p for _, p in ms.requests)


def test_datasets_and_every_model_of_an_owner(ms, config):
    data = {"train.jsonl": b'{"x": 1}\n', "sub/test.jsonl": b'{"x": 2}\n'}
    ms.add_repo("org/data", data, repo_type="dataset")
    ms.add_repo("org/one", {"config.json": b"{}"})
    ms.add_repo("org/two", {"config.json": b"{}"})
    [dataset] = sync(config, ms, "ms-datasets:org/data")
    assert dataset.files == 2 and ("branch", "master") in refs(config, "org/data", "dataset")
    synced = sync(config, ms, "ms:org/*")
    assert sorted(r.repo_id for r in synced) == ["org/one", "org/two"]


def test_one_file_from_two_hubs_is_one_blob_and_one_torrent(ms, config, serve):
    weights = tiny_repo_files(seed=9, shards=1, shard_size=6 * MiB)
    ms.add_repo(REPO, weights)
    with FakeHub(page_size=100, rate_limit_every=0) as hf:
        hf.add_repo(REPO, weights)

        run_sync(config, HuggingFace(hf.url), f"hf:{REPO}")
    [result] = sync(config, ms, f"ms:{REPO}")
    assert result.fetched == 0, "every byte was in the store already"
    catalog = Catalog(config.catalog_path)
    try:
        shard = "model-00001-of-00001.safetensors"
        ours = {hub: catalog.file(catalog.snapshot(repo, catalog.resolve(repo, "main")), shard)
                for hub in (hubs.HUGGINGFACE, hubs.MODELSCOPE)
                for repo in [catalog.repo(hub, "model", REPO)]}
        assert ours[hubs.HUGGINGFACE].sha256 == ours[hubs.MODELSCOPE].sha256
        record = catalog.blob(ours[hubs.MODELSCOPE].sha256)
    finally:
        catalog.close()
    stored = [p for p in (config.store_dir / "blobs").rglob("*") if p.is_file()]
    assert len(stored) == len({hashlib.sha256(d).hexdigest() for d in weights.values()})
    mirror = serve(config)
    torrents = _json(f"{mirror.url}/api/weightswarm/torrents")["torrents"]
    mine = [t for t in torrents if t["sha256"] == record.sha256]
    assert len(mine) == 1, "one torrent, one swarm, whichever hub the bytes came from"


def test_pull_gets_a_synced_modelscope_repo_and_transformers_loads_it(ms, config, serve,
                                                                      tmp_path):
    """`weightswarm pull --hub modelscope` of a synced repo by its default branch, which the
    pull asks for as main (the catalog finds master); transformers then loads its config and
    tokenizer (the package's real ones) offline from the pull's cache. The stock modelscope
    client on synced repos: tests/mirror/test_msapi.py."""
    files = {**sample_model_files(), **{k: v for k, v in files_of(7).items()
                                        if k.endswith(".safetensors")}}
    ms.add_repo(REPO, files)
    sync(config, ms, f"ms:{REPO}")
    mirror = serve(config)
    folder, env = pull_by_hub(mirror.url, "modelscope", REPO, tmp_path)
    for path, data in files.items():
        assert (folder / path).read_bytes() == data, path
    code = ("from transformers import AutoConfig, AutoTokenizer\n"
            f"c = AutoConfig.from_pretrained({REPO!r})\n"
            f"t = AutoTokenizer.from_pretrained({REPO!r})\n"
            "print(c.model_type, t('hello world')['input_ids'])\n")
    env.update(HF_HUB_OFFLINE="1", HF_HUB_DISABLE_UPDATE_CHECK="1")
    loaded = subprocess.run([str(Path(WEIGHTSWARM).with_name("python")), "-c", code], env=env,
                            capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.strip().splitlines()[-1] == "bert [101, 7592, 2088, 102]"


def test_without_commit_ids_the_commit_is_the_content_commit(ms, config):
    """A RevisionMap without CommitId: the snapshot's commit is derived from the listed
    files' Sha256 before a byte is fetched (DESIGN.md section 2), so a re-sync of the same
    files is up to date and a change makes a new commit."""
    from peer.hfformat import FileEntry, derived_commit

    ms.commit_ids = False
    files = {"config.json": b"{}", "sub/a.txt": b"a\n"}
    ms.add_repo(REPO, files)
    [first] = sync(config, ms, f"ms:{REPO}")
    assert first.commit == derived_commit(
        FileEntry(p, len(d), hashlib.sha256(d).hexdigest(), "", False) for p, d in files.items())
    [again] = sync(config, ms, f"ms:{REPO}")
    assert again.unchanged and again.commit == first.commit
    ms.add_repo(REPO, {**files, "sub/a.txt": b"b\n"})
    [changed] = sync(config, ms, f"ms:{REPO}")
    assert changed.commit != first.commit and changed.fetched == 1
