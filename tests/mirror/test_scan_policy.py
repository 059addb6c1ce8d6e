"""Scanning at ingest (issue 20): every file of a pickle-based format a mirror imports, syncs
or pulls through is scanned when its snapshot is published; the verdict shows in repo info,
`mirror ls` and /metrics, and `[mirror] scan_policy` acts on it: flag serves it and says so,
quarantine keeps it from everyone, refuse publishes none of its snapshot."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import httpx2 as httpx
import pytest
import scancorpus
from fakehub import FakeHub
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

from helpers import make_config
from mirror.catalog import Catalog
from mirror.config import load_config
from mirror.importer import Importer
from mirror.scan import ScanRefused
from peer.store import BlobStore

REPO = "org/pickled"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return scancorpus.build(tmp_path_factory.mktemp("corpus"))


def repo_folder(root: Path, corpus, sample: str) -> Path:
    """A repo with a config and one pickle file of the corpus."""
    root.mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "bert"}')
    shutil.copy(corpus[sample].path, root / corpus[sample].path.name)
    return root


def import_with(config, folder: Path, policy: str):
    catalog = Catalog(config.catalog_path)
    try:
        return Importer(catalog, BlobStore(config.store_dir), scan_policy=policy).import_path(
            folder, repo_id=REPO)
    finally:
        catalog.close()


def test_flag_publishes_and_says_what_it_found(home, serve, corpus, tmp_path):
    config = make_config(home)
    import_with(config, repo_folder(tmp_path / "r", corpus, "torch-zip-os-system"), "flag")
    mirror = serve(config)
    info = httpx.get(f"{mirror.url}/api/models/{REPO}").json()
    verdict = info["weightswarm"]["scan"]["pytorch_model.bin"]
    assert verdict["status"] == "suspicious" and "posix.system" in verdict["globals"], verdict
    assert verdict["scanner"].startswith("picklescan ")
    assert "config.json" not in info["weightswarm"]["scan"], "a format that holds no code"
    # HF's shape, as the stock client reads it
    status = HfApi(endpoint=mirror.url).model_info(REPO, securityStatus=True
                                                   ).security_repo_status
    [issue] = status["filesWithIssues"]
    assert status["scansDone"] and issue["path"] == "pytorch_model.bin"
    assert issue["level"] == "unsafe"
    assert {"module": "posix", "name": "system", "safety": "dangerous"} in \
        issue["pickleImportScan"]["imports"]
    assert "securityRepoStatus" not in info, "only when asked for, as on the Hub"
    path = hf_hub_download(REPO, "pytorch_model.bin", endpoint=mirror.url,
                           cache_dir=tmp_path / "c")
    assert Path(path).read_bytes() == corpus["torch-zip-os-system"].path.read_bytes()
    metrics = httpx.get(f"{mirror.url}/metrics").text
    assert 'weightswarm_mirror_scanned_blobs{verdict="suspicious"} 1.0' in metrics
    listed = subprocess.run([sys.executable, "-m", "mirror.cli", "--home", str(home), "mirror",
                             "ls", "--json"], capture_output=True, text=True, timeout=60)
    [row] = json.loads(listed.stdout)
    assert row["scan"] == {"pytorch_model.bin": "suspicious"}


def test_a_benign_pickle_is_safe(home, serve, corpus, tmp_path):
    config = make_config(home)
    import_with(config, repo_folder(tmp_path / "r", corpus, "torch-state-dict"), "refuse")
    mirror = serve(config)
    info = httpx.get(f"{mirror.url}/api/models/{REPO}").json()
    assert info["weightswarm"]["scan"]["pytorch_model.bin"]["status"] == "safe"


def test_refuse_publishes_nothing_and_says_why(home, corpus, tmp_path):
    config = make_config(home)
    with pytest.raises(ScanRefused) as refused:
        import_with(config, repo_folder(tmp_path / "r", corpus, "eval"), "refuse")
    assert "model.ckpt" in str(refused.value) and "eval" in str(refused.value)
    catalog = Catalog(config.catalog_path)
    try:
        assert catalog.repos() == [], "nothing published"
    finally:
        catalog.close()


def test_quarantine_keeps_the_file_from_everyone_and_serves_the_rest(home, serve, corpus,
                                                                     tmp_path):
    config = make_config(home, scan_policy="quarantine")
    import_with(config, repo_folder(tmp_path / "r", corpus, "os-system-p0"), "quarantine")
    mirror = serve(config)
    assert hf_hub_download(REPO, "config.json", endpoint=mirror.url, cache_dir=tmp_path / "c")
    with pytest.raises(LocalEntryNotFoundError) as refused:  # the client's word for a HEAD 403
        hf_hub_download(REPO, "model.bin", endpoint=mirror.url, cache_dir=tmp_path / "c")
    cause = refused.value.__cause__
    assert isinstance(cause, HfHubHTTPError) and cause.response.status_code == 403
    assert "quarantined" in cause.response.headers["X-Error-Message"]
    catalog = Catalog(config.catalog_path)
    try:
        sha256 = catalog.files(catalog.snapshot(
            catalog.repo("huggingface", "model", REPO),
            catalog.resolve(catalog.repo("huggingface", "model", REPO), "main")))
        blob = next(f.sha256 for f in sha256 if f.path == "model.bin")
    finally:
        catalog.close()
    with pytest.raises(urllib.error.HTTPError) as web_seed:
        urllib.request.urlopen(f"{mirror.url}/blobs/sha256/{blob}", timeout=10)
    assert web_seed.value.code == 403, "nor through the web seed"


def test_pull_through_never_hands_a_quarantined_file_to_the_client(home, serve, corpus,
                                                                   tmp_path):
    evil = corpus["subprocess"].path.read_bytes()
    with FakeHub(page_size=3) as hub:
        hub.add_repo(REPO, {"config.json": b"{}", "model.pt": evil})
        overrides = {("mirror", "port"): 0, ("mirror", "host"): "127.0.0.1",
                     ("mirror", "seed"): False, ("mirror", "pull_through"): True,
                     ("mirror", "scan_policy"): "quarantine"}
        config = load_config(home=home, overrides=overrides, env={
            "WEIGHTSWARM_MIRROR_UPSTREAMS_HUGGINGFACE_ENDPOINT": hub.url})
        mirror = serve(config)
        cache = tmp_path / "c"
        with pytest.raises(Exception):  # noqa: B017 - cut, then a 403, as the client words it
            hf_hub_download(REPO, "model.pt", endpoint=mirror.url, cache_dir=cache)
        assert not [p for p in cache.rglob("model.pt") if p.is_file()], "nothing of it kept"
        answer = httpx.get(f"{mirror.url}/{REPO}/resolve/main/model.pt", timeout=30,
                           follow_redirects=True)
        assert answer.status_code == 403 and "quarantined" in answer.headers["X-Error-Message"]


def test_mirror_scan_catches_up_on_blobs_published_before_scanning(home, corpus, tmp_path):
    config = make_config(home)
    import_with(config, repo_folder(tmp_path / "r", corpus, "getattr-import"), "flag")
    catalog = Catalog(config.catalog_path)
    catalog.conn.execute("DELETE FROM scans")  # as a catalog from before scanning holds them
    catalog.close()

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "mirror.cli", "--home", str(home),
                               "mirror", *args], capture_output=True, text=True, timeout=60)

    first = cli("scan")
    assert first.returncode == 0, first.stderr
    assert "suspicious: model.bin" in first.stdout and "getattr" in first.stdout
    assert "scanned 1 blobs" in first.stdout and "1 suspicious" in first.stdout
    assert "nothing new" in cli("scan").stdout, "a blob this scanner saw is not scanned again"
    assert "scanned 1 blobs" in cli("scan", "--all").stdout


def test_a_sync_under_refuse_fails_with_the_report_and_publishes_nothing(home, corpus):
    import asyncio

    from mirror.sync import parse_spec
    from mirror.syncjobs import run_specs

    with FakeHub(page_size=3) as hub:
        hub.add_repo(REPO, {"config.json": b"{}",
                            "model.pkl": corpus["os-system-p5"].path.read_bytes()})
        config = load_config(home=home, overrides={("mirror", "scan_policy"): "refuse"}, env={
            "WEIGHTSWARM_MIRROR_UPSTREAMS_HUGGINGFACE_ENDPOINT": hub.url})
        outcome = asyncio.run(run_specs(config, [parse_spec(f"hf:{REPO}")], parallel=1))
    [(_, error)] = outcome.failures
    assert isinstance(error, ScanRefused) and "model.pkl" in str(error)
    catalog = Catalog(config.catalog_path)
    try:
        assert catalog.repos() == []
        [run] = catalog.runs()
        assert run["status"] == "failed" and "pickle scanner flagged" in run["error"]
    finally:
        catalog.close()


def test_quarantine_keeps_a_large_flagged_blob_out_of_the_swarm(home, serve, tmp_path):
    import hashlib
    import os
    import pickle

    # Large enough to have piece hashes (a torrent); it runs a command when loaded.
    evil = pickle.dumps([scancorpus._Call(os.system, "true"), os.urandom(5 << 20)], protocol=4)
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.bin").write_bytes(evil)
    benign = pickle.dumps({"w": os.urandom(5 << 20)}, protocol=4)
    (folder / "other.bin").write_bytes(benign)
    sha256 = hashlib.sha256(evil).hexdigest()
    config = make_config(home, scan_policy="quarantine")
    import_with(config, folder, "quarantine")
    mirror = serve(config)
    torrents = httpx.get(f"{mirror.url}/api/weightswarm/torrents").json()["torrents"]
    seeded = {t["sha256"] for t in torrents}
    assert hashlib.sha256(benign).hexdigest() in seeded, "the safe one is seeded"
    assert sha256 not in seeded, "the flagged one is not"
    for query in ("", "?format=magnet"):
        answer = httpx.get(f"{mirror.url}/api/weightswarm/torrents/{sha256}.torrent{query}")
        assert answer.status_code == 403 and "quarantined" in answer.headers["X-Error-Message"]
