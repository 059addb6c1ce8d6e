"""Sync runs from the CLI and the scheduler: recorded for `mirror status`, archive mode
keeping what the upstream lost, and [[mirror.sync]] jobs run while the mirror serves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from fakehub import FakeHub, tiny_repo_files
from huggingface_hub import HfApi
from huggingface_hub.errors import RepositoryNotFoundError

from helpers import make_config


@pytest.fixture
def hub():
    with FakeHub(page_size=5) as running:
        yield running


def ws(home, hub, *args):
    env = dict(os.environ, WEIGHTSWARM_MIRROR_UPSTREAMS_HUGGINGFACE_ENDPOINT=hub.url)
    return subprocess.run([sys.executable, "-m", "mirror.cli", "--home", str(home), *args],
                          env=env, capture_output=True, text=True, timeout=180)


def test_status_lists_finished_and_failed_syncs_with_reasons(tmp_path, hub):
    home = tmp_path / "home"
    hub.add_repo("org/model", tiny_repo_files(seed=1))
    done = ws(home, hub, "mirror", "sync", "hf:org/model", "hf:org/missing", "--no-progress")
    assert done.returncode == 1, "one spec failed"
    assert "org/model@" in done.stdout and "RepoNotFound" in done.stderr
    runs = json.loads(ws(home, hub, "mirror", "status", "--json").stdout)
    by_spec = {r["spec"]: r for r in runs}
    assert by_spec["hf:org/model@main"]["status"] == "ok"
    assert by_spec["hf:org/model@main"]["fetched"] == len(tiny_repo_files(seed=1))
    failed = by_spec["hf:org/missing@main"]
    assert failed["status"] == "failed" and "RepoNotFound" in failed["error"]
    text = ws(home, hub, "mirror", "status").stdout
    assert "failed" in text and "ok" in text


def test_an_archive_keeps_serving_a_repo_gone_upstream_and_says_so(tmp_path, hub, serve):
    home = tmp_path / "home"
    home.mkdir()
    (home / "weightswarm.toml").write_text("[mirror]\narchive = true\n")
    files = tiny_repo_files(seed=2)
    commit = hub.add_repo("org/model", files)
    assert ws(home, hub, "mirror", "sync", "hf:org/model").returncode == 0
    hub.add_repo("org/model", files, private=True)  # gone for us: RepoNotFound upstream
    done = ws(home, hub, "mirror", "sync", "hf:org/model")
    assert done.returncode == 0, done.stderr
    assert "gone upstream, kept" in done.stdout
    mirror = serve(make_config(home))
    info = HfApi(endpoint=mirror.url).model_info("org/model")
    assert info.sha == commit
    assert info.weightswarm["goneUpstream"] is True and info.weightswarm["goneUpstreamAt"]


def test_without_archive_a_repo_gone_upstream_is_reported(tmp_path, hub):
    home = tmp_path / "home"
    files = tiny_repo_files(seed=3)
    hub.add_repo("org/model", files)
    assert ws(home, hub, "mirror", "sync", "hf:org/model").returncode == 0
    hub.add_repo("org/model", files, private=True)
    done = ws(home, hub, "mirror", "sync", "hf:org/model")
    assert done.returncode == 1 and "RepoNotFound" in done.stderr


def test_the_scheduler_syncs_configured_repos_while_serving(tmp_path, hub, serve):
    home = tmp_path / "home"
    home.mkdir()
    commit = hub.add_repo("org/scheduled", tiny_repo_files(seed=4))
    (home / "weightswarm.toml").write_text(
        f'[mirror.upstreams.huggingface]\nendpoint = "{hub.url}"\n\n'
        '[[mirror.sync]]\nspec = "hf:org/scheduled"\ninterval = "1h"\n'
        'exclude = ["*.md"]\n'
    )
    from mirror.config import load_config

    config = load_config(home=home, env={}, overrides={("mirror", "port"): 0})
    assert config.mirror.syncs[0].interval == 3600
    mirror = serve(config)
    api = HfApi(endpoint=mirror.url)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            info = api.model_info("org/scheduled")
            break
        except RepositoryNotFoundError:
            time.sleep(0.1)
    else:
        pytest.fail("the scheduled sync never published the repo")
    assert info.sha == commit
    assert "README.md" not in {s.rfilename for s in info.siblings}, "exclude applied"


@pytest.mark.parametrize("table, message", [
    ('[[mirror.sync]]\ninterval = "1h"\n', "needs spec"),
    ('[[mirror.sync]]\nspec = "hf:a/b"\ninterval = "5s"\n', "under a minute"),
    ('[[mirror.sync]]\nspec = "hf:a/b"\ninterval = "often"\n', "not a duration"),
    ('[[mirror.sync]]\nspec = "hf:a/b"\ninclude = 3\n', "glob"),
])
def test_bad_sync_jobs_are_refused(tmp_path, table, message):
    from mirror.config import load_config
    from peer.errors import ConfigError

    (tmp_path / "weightswarm.toml").write_text(table)
    with pytest.raises(ConfigError, match=message):
        load_config(home=tmp_path, env={})


def test_a_folder_synced_with_local_gets_the_same_commit_as_its_import(tmp_path, hub):
    from helpers import make_tiny_model

    tiny = make_tiny_model(tmp_path / "tiny")
    imported = ws(tmp_path / "a", hub, "mirror", "import", str(tiny), "--repo", "org/tiny",
                  "--no-progress")
    synced = ws(tmp_path / "b", hub, "mirror", "sync", f"local:{tiny}#org/tiny")
    assert imported.returncode == 0 and synced.returncode == 0, synced.stderr
    commit = imported.stdout.split("@", 1)[1].split()[0]
    assert f"org/tiny@{commit}" in synced.stdout
    again = ws(tmp_path / "b", hub, "mirror", "sync", f"local:{tiny}#org/tiny")
    assert "up to date" in again.stdout
    (tiny / "vocab.txt").write_text("changed\n")
    changed = ws(tmp_path / "b", hub, "mirror", "sync", f"local:{tiny}#org/tiny")
    assert "1 fetched" in changed.stdout, changed.stdout


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("endpoint,cause", [
    (f"http://127.0.0.1:{_closed_port()}", "the connection was refused"),
    ("http://no-such-hub.invalid", "its name does not resolve (DNS)"),
])
def test_an_unreachable_upstream_is_one_plain_line_with_the_setting_to_check(
        tmp_path, endpoint, cause):
    env = dict(os.environ, WEIGHTSWARM_MIRROR_UPSTREAMS_HUGGINGFACE_ENDPOINT=endpoint,
               WEIGHTSWARM_MIRROR_UPSTREAMS_HUGGINGFACE_RETRIES="0")
    home = tmp_path / "home"
    done = subprocess.run([sys.executable, "-m", "mirror.cli", "--home", str(home), "mirror",
                           "sync", "hf:gpt2", "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    host = endpoint.split("//", 1)[1]
    assert len(errors) == 1 and f"could not reach {host}: {cause}" in errors[0], done.stderr
    assert "check mirror.upstreams.huggingface.endpoint" in errors[0]
    assert "ConnectionKey" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    runs = json.loads(subprocess.run(
        [sys.executable, "-m", "mirror.cli", "--home", str(home), "mirror", "status", "--json"],
        env=env, capture_output=True, text=True, timeout=60).stdout)
    assert runs[0]["status"] == "failed" and f"could not reach {host}: {cause}" in runs[0]["error"]


def test_modelscope_and_kaggle_sync_from_the_cli_and_on_schedule(tmp_path, serve):
    """`mirror sync ms:... kaggle:...` with the tokens in the hubs' usual variables, then both
    kept synced by `[[mirror.sync]]` while the mirror serves."""
    from fakekaggle import TOKEN as KAGGLE_TOKEN
    from fakekaggle import FakeKaggle
    from fakems import FakeModelScope

    from mirror.config import load_config

    with FakeModelScope(token="ms-secret") as ms, FakeKaggle(token=KAGGLE_TOKEN) as kaggle:
        ms_commit = ms.add_repo("qwen/cli", {"config.json": b"{}"})
        kaggle.add_version("google", "gemma", "jax", "2b", {"config.json": b"{}"})
        home = tmp_path / "home"
        env = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHTSWARM_")}
        env.update(WEIGHTSWARM_HOME=str(home), MODELSCOPE_API_TOKEN="ms-secret",
                   KAGGLE_API_TOKEN=KAGGLE_TOKEN,
                   WEIGHTSWARM_MIRROR_UPSTREAMS_MODELSCOPE_ENDPOINT=ms.url,
                   WEIGHTSWARM_MIRROR_UPSTREAMS_KAGGLE_ENDPOINT=kaggle.endpoint)
        done = subprocess.run([sys.executable, "-m", "mirror.cli", "mirror", "sync", "ms:qwen/cli",
                               "kaggle:google/gemma/jax/2b", "--no-progress"], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert f"ms:qwen/cli@master: qwen/cli@{ms_commit}" in done.stdout
        assert "kaggle:google/gemma/jax/2b: google/gemma.jax.2b@" in done.stdout

        later = tmp_path / "scheduled"
        later.mkdir()
        (later / "weightswarm.toml").write_text(
            f'[mirror.upstreams.modelscope]\nendpoint = "{ms.url}"\ntoken = "ms-secret"\n\n'
            f'[mirror.upstreams.kaggle]\nendpoint = "{kaggle.endpoint}"\n'
            f'token = "{KAGGLE_TOKEN}"\n\n'
            '[[mirror.sync]]\nspec = "ms:qwen/cli"\n\n'
            '[[mirror.sync]]\nspec = "kaggle:google/gemma/jax/2b"\n')
        config = load_config(home=later, env={}, overrides={("mirror", "port"): 0})
        mirror = serve(config)
        for endpoint, repo in ((f"{mirror.url}/hubs/modelscope", "qwen/cli"),
                               (f"{mirror.url}/hubs/kaggle", "google/gemma.jax.2b")):
            api = HfApi(endpoint=endpoint)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    api.model_info(repo)
                    break
                except RepositoryNotFoundError:
                    time.sleep(0.1)
            else:
                pytest.fail(f"the scheduled sync never published {repo}")
