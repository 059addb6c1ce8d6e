"""Syncing Kaggle Models (issue 17) from the fake of tests/fakekaggle.py, which the real
kagglehub downloads from (tests/test_fakekaggle.py): each version a tag `v{N}` of the repo
`owner/model.framework.variation`, the latest also `main`; verified by the MD5 storage sends,
recorded per file; refused whole when an MD5, a size or a listing lies; resumed after a cut;
polite under 429s; a wrong token said in one line. Then the stock `huggingface_hub` and
`transformers` through `/hubs/kaggle`, and `weightswarm pull --hub kaggle`."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from fakehub import tiny_repo_files
from fakekaggle import BASIC, TOKEN, FakeKaggle
from huggingface_hub import HfApi, snapshot_download

from helpers import pull_by_hub, run_sync, sample_model_files
from mirror.catalog import Catalog
from mirror.sync import HostileListing, SyncFailed, parse_spec
from mirror.upstreams.kaggle import Kaggle
from peer import hubs
from peer.errors import Refused, RepoNotFound, Unavailable
from peer.hfformat import FileEntry, derived_commit
from peer.store import BlobStore

MiB = 1024 * 1024
HANDLE = "google/gemma/transformers/2b"
REPO = "google/gemma.transformers.2b"
WEIGHTSWARM = str(Path(os.environ.get("VIRTUAL_ENV", ".venv")) / "bin" / "weightswarm")


def sync(config, kaggle: FakeKaggle, spec: str, *, token: str | None = TOKEN, **kwargs):
    return run_sync(config, Kaggle(kaggle.endpoint, token=token, retries=3), spec, **kwargs)


@pytest.fixture
def kaggle():
    with FakeKaggle(token=TOKEN, rate_limit_every=5, retry_after=0, cut_large_files=True,
                    large_file=1 * MiB, files_page_size=3) as running:
        yield running


def held(config, repo_id: str = REPO) -> dict:
    catalog = Catalog(config.catalog_path)
    try:
        repo = catalog.repo(hubs.KAGGLE, "model", repo_id)
        return {(r.kind, r.name): r.commit for r in catalog.refs(repo)}
    finally:
        catalog.close()


def test_versions_become_tags_the_latest_main_and_files_are_checked_by_md5(kaggle, config,
                                                                           serve, tmp_path):
    one = tiny_repo_files(seed=1, shards=2, shard_size=2 * MiB)
    two = tiny_repo_files(seed=2, shards=2, shard_size=2 * MiB,
                          extra={"sub/notes with space.txt": b"notes\n"})
    kaggle.add_version("google", "gemma", "transformers", "2b", one)
    kaggle.add_version("google", "gemma", "transformers", "2b", two)

    [first] = sync(config, kaggle, f"kaggle:{HANDLE}/1")
    assert held(config) == {("tag", "v1"): first.commit}, "v1 is not the latest: no main"
    [latest] = sync(config, kaggle, f"kaggle:{HANDLE}")
    assert held(config) == {("tag", "v1"): first.commit, ("tag", "v2"): latest.commit,
                            ("branch", "main"): latest.commit}
    assert latest.fetched == len(two) and latest.commit != first.commit
    assert any(r[2] for r in kaggle.gcs_requests), "a cut file was resumed with Range"
    assert all(a is None for a in kaggle.gcs_auth_headers), "credentials stay with the API"

    mirror = serve(config)
    api = HfApi(endpoint=f"{mirror.url}/hubs/kaggle")
    info = api.model_info(REPO, revision="v2", files_metadata=True)
    assert info.sha == latest.commit
    listed = {s.rfilename: s.size for s in info.siblings}
    assert listed == {p: len(d) for p, d in two.items()}
    assert derived_commit(FileEntry(p, len(d), hashlib.sha256(d).hexdigest(), "", False)
                          for p, d in two.items()) == latest.commit, \
        "the commit is the content commit of DESIGN.md section 2"
    raw = json.loads(_get(f"{mirror.url}/hubs/kaggle/api/models/{REPO}/revision/v2"))
    assert raw["weightswarm"]["verifiedBy"] == dict.fromkeys(two, "md5")
    for revision, files in (("v1", one), ("main", two)):
        local = Path(snapshot_download(REPO, revision=revision, endpoint=f"{mirror.url}/hubs/kaggle",
                                       cache_dir=tmp_path / revision))
        for path, data in files.items():
            assert (local / path).read_bytes() == data, (revision, path)


def _get(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()


def test_resyncing_costs_two_requests_and_a_new_version_moves_main(kaggle, config):
    kaggle.add_version("google", "gemma", "transformers", "2b", {"config.json": b"{}"})
    sync(config, kaggle, f"kaggle:{HANDLE}")
    kaggle.reset_counts()
    [again] = sync(config, kaggle, f"kaggle:{HANDLE}")
    assert again.unchanged and kaggle.rpc_methods() == ["GetModelInstance"]
    assert kaggle.gcs_requests == []
    kaggle.add_version("google", "gemma", "transformers", "2b", {"config.json": b'{"a": 1}'})
    [moved] = sync(config, kaggle, f"kaggle:{HANDLE}")
    assert held(config)[("branch", "main")] == moved.commit == held(config)[("tag", "v2")]
    # v1 synced again by name: nothing fetched, main stays on v2
    [pinned] = sync(config, kaggle, f"kaggle:{HANDLE}/1")
    assert pinned.unchanged and held(config)[("branch", "main")] == moved.commit


@pytest.mark.parametrize("lie", ["corrupt", "wrong_md5"])
def test_an_md5_that_does_not_match_publishes_nothing(kaggle, config, lie):
    files = {"config.json": b'{"x": 1}', "model.safetensors": os.urandom(300_000)}
    kaggle.add_version("google", "gemma", "transformers", "2b", files)
    getattr(kaggle, lie)(HANDLE, 1, "model.safetensors")
    with pytest.raises(SyncFailed, match="md5"):
        sync(config, kaggle, f"kaggle:{HANDLE}")
    with pytest.raises(RepoNotFound):
        held(config)
    stored = [p for p in (config.store_dir / "blobs").rglob("*") if p.is_file()]
    assert len(stored) <= 1, "at most the good file's verified blob is kept, unpublished"


def test_without_x_goog_hash_a_file_is_published_and_says_it_was_checked_by_nothing(
        kaggle, config, serve):
    kaggle.no_hash = True
    kaggle.add_version("google", "gemma", "transformers", "2b", {"config.json": b"{}"})
    sync(config, kaggle, f"kaggle:{HANDLE}")
    mirror = serve(config)
    raw = json.loads(_get(f"{mirror.url}/hubs/kaggle/api/models/{REPO}"))
    assert raw["weightswarm"]["verifiedBy"] == {"config.json": "none"}


@pytest.mark.parametrize("entry", [
    {"name": "../escape.txt", "size": "3"}, {"name": "/etc/passwd", "size": "3"},
    {"name": "a\u0000b", "size": "3"}, {"name": "config.json", "size": "-1"},
])
def test_hostile_listings_are_refused_whole(kaggle, config, entry):
    kaggle.add_version("google", "gemma", "transformers", "2b", {"config.json": b"{}"})
    kaggle.set_raw_files(HANDLE, 1, [{"name": "ok.json", "size": "2"}, entry])
    with pytest.raises(HostileListing):
        sync(config, kaggle, f"kaggle:{HANDLE}")
    kaggle.set_raw_files(HANDLE, 1, [{"name": "a.json", "size": "2"},
                                     {"name": "a.json", "size": "2"}])
    with pytest.raises(HostileListing, match="twice"):
        sync(config, kaggle, f"kaggle:{HANDLE}")


def test_a_size_that_lies_and_a_redirect_off_http_are_refused(kaggle, config):
    kaggle.add_version("google", "gemma", "transformers", "2b", {"config.json": b"{}" * 50})
    kaggle.lie_size(HANDLE, 1, "config.json", 10)
    with pytest.raises(SyncFailed, match="config.json"):
        sync(config, kaggle, f"kaggle:{HANDLE}")
    kaggle.lie_size(HANDLE, 1, "config.json", 100)
    for scheme in ("ftp://", "file:///etc/passwd"):
        kaggle.redirect_scheme = scheme
        with pytest.raises(SyncFailed, match="only http and https"):
            sync(config, kaggle, f"kaggle:{HANDLE}")
    with pytest.raises(RepoNotFound):
        held(config)


def test_429_bursts_are_waited_out(kaggle, config):
    kaggle.rate_limit_every = 2
    kaggle.add_version("google", "gemma", "transformers", "2b",
                       {f"f{i}.json": b"%d" % i for i in range(7)})
    [result] = sync(config, kaggle, f"kaggle:{HANDLE}")
    assert result.fetched == 7


@pytest.mark.parametrize(("token", "says"), [
    ("KGAT_wrong", "refused the token"), (None, "asks for a token"),
    ("someone:wrong", "refused the token"),
])
def test_a_wrong_token_is_one_line_naming_the_setting(kaggle, config, token, says):
    kaggle.add_version("google", "gemma", "transformers", "2b", {"config.json": b"{}"})
    with pytest.raises(Refused) as refused:
        sync(config, kaggle, f"kaggle:{HANDLE}", token=token)
    text = str(refused.value)
    assert says in text and "mirror.upstreams.kaggle.token" in text and "\n" not in text


def test_basic_credentials_and_an_unknown_instance(config):
    with FakeKaggle(basic=BASIC) as kaggle:
        kaggle.add_version("google", "gemma", "transformers", "2b", {"config.json": b"{}"})
        [result] = sync(config, kaggle, f"kaggle:{HANDLE}", token=":".join(BASIC))
        assert result.fetched == 1
        with pytest.raises(RepoNotFound):
            sync(config, kaggle, "kaggle:google/nothing/jax/2b", token=":".join(BASIC))


def test_an_unreachable_kaggle_names_the_endpoint_setting(config):
    kaggle = FakeKaggle().start()
    url = kaggle.endpoint
    kaggle.stop()

    async def run():
        upstream = Kaggle(url, retries=0)
        try:
            await upstream.resolve("model", REPO, "main")
        finally:
            await upstream.close()

    with pytest.raises(Unavailable, match="mirror.upstreams.kaggle.endpoint"):
        asyncio.run(run())


def test_a_model_from_tensorflow_hub_syncs_like_any_other(kaggle, config, serve, tmp_path):
    """TF Hub's models live on as Kaggle tensorFlow2 instances: a SavedModel's folders."""
    files = {"saved_model.pb": os.urandom(200_000),
             "variables/variables.data-00000-of-00001": os.urandom(3 * MiB),
             "variables/variables.index": os.urandom(900)}
    kaggle.add_version("google", "mobilenet-v2", "tensorFlow2",
                       "100-224-classification", files)
    [result] = sync(config, kaggle, "kaggle:google/mobilenet-v2/tensorFlow2/"
                                    "100-224-classification/1")
    repo = "google/mobilenet-v2.tensorFlow2.100-224-classification"
    mirror = serve(config)
    local = Path(snapshot_download(repo, revision="v1", endpoint=f"{mirror.url}/hubs/kaggle",
                                   cache_dir=tmp_path / "c"))
    for path, data in files.items():
        assert (local / path).read_bytes() == data
    assert result.files == 3


def test_the_stock_clients_and_pull_get_a_kaggle_model(kaggle, config, serve, tmp_path):
    files = {**sample_model_files(), **{k: v for k, v in tiny_repo_files(
        seed=5, shards=1, shard_size=5 * MiB).items() if k.endswith(".safetensors")}}
    kaggle.add_version("google", "gemma", "transformers", "2b", files)
    sync(config, kaggle, f"kaggle:{HANDLE}")
    mirror = serve(config)
    endpoint = f"{mirror.url}/hubs/kaggle"
    cache = tmp_path / "hf"
    snapshot_download(REPO, endpoint=endpoint, cache_dir=cache)
    code = ("from transformers import AutoConfig, AutoTokenizer\n"
            f"c = AutoConfig.from_pretrained({REPO!r}, cache_dir={str(cache)!r})\n"
            f"t = AutoTokenizer.from_pretrained({REPO!r}, cache_dir={str(cache)!r})\n"
            "print(c.model_type, t('hello world')['input_ids'])\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_DISABLE_UPDATE_CHECK="1")
    done = subprocess.run([str(Path(WEIGHTSWARM).with_name("python")), "-c", code], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "bert [101, 7592, 2088, 102]", done.stdout

    folder, _ = pull_by_hub(mirror.url, "kaggle", REPO, tmp_path)
    for path, data in files.items():
        assert (folder / path).read_bytes() == data, path


def test_a_corrupt_blob_is_fetched_again_from_kaggle(kaggle, tmp_path):
    """Scrub's last resort (syncjobs.refetch_blob) works for a hub without commits: the
    version is found by the tag that names the snapshot, and the bytes are checked again."""
    from mirror.config import load_config
    from mirror.syncjobs import refetch_blob, run_specs

    weights = os.urandom(300_000)
    kaggle.add_version("google", "gemma", "transformers", "2b",
                       {"config.json": b"{}", "model.safetensors": weights})
    section = "mirror.upstreams.kaggle"
    config = load_config(home=tmp_path / "home", env={}, overrides={
        (section, "endpoint"): kaggle.endpoint, (section, "token"): TOKEN})
    outcome = asyncio.run(run_specs(config, [parse_spec(f"kaggle:{HANDLE}")]))
    assert not outcome.failures
    sha256 = hashlib.sha256(weights).hexdigest()
    stored = BlobStore(config.store_dir).path_for(sha256)
    stored.chmod(0o644)
    stored.unlink()
    assert refetch_blob(config, sha256)
    assert stored.read_bytes() == weights


def test_every_version_of_an_instance_for_an_archive(kaggle, config):
    """`.../variation/*`: every version a tag, oldest first, the latest also main; what is
    here already is not fetched again."""
    for i in range(3):
        kaggle.add_version("google", "gemma", "transformers", "2b", {"config.json": b"%d" % i})
    sync(config, kaggle, f"kaggle:{HANDLE}/2")
    spec = parse_spec(f"kaggle:{HANDLE}/*")
    assert spec.every_version and str(spec) == f"kaggle:{HANDLE}/*"
    results = sync(config, kaggle, f"kaggle:{HANDLE}/*")
    assert [r.unchanged for r in results] == [False, True, False]
    refs = held(config)
    assert {name for _, name in refs} == {"v1", "v2", "v3", "main"}
    assert refs[("branch", "main")] == refs[("tag", "v3")] == results[-1].commit
