"""Access over the HF API (issue 20, items 1, 2 and 6), with the stock huggingface_hub against
a real mirror: without a token a gated repo is GatedRepoError and a private one
RepositoryNotFoundError (answered as a missing repo is); a read token downloads both,
byte-identical; a token revoked from the command line fails at its next request; listings hide
private repos from those who may not read them; `whoami` names the token's user; the web seed
route keeps a private blob from anyone without the right; a broken access file refuses every
token while public repos are still served; each refusal is one audit line and a count."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

from helpers import import_repo, make_config, make_tiny_model, start_mirror
from mirror.access import AccessFile
from mirror.accounts import add_token
from mirror.catalog import Catalog

OPEN, GATED, SECRET, OTHER_SECRET = "org/open", "org/gated", "team/secret", "else/hidden"


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mirror.cli", "--home", str(home), "mirror",
                           *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A mirror with a public, a gated and two private repos, and an access file: alice may
    read org/* and team/*, bob only x/*."""
    root = tmp_path_factory.mktemp("access")
    home = root / "home"
    # Each repo its own bytes (bytes a public repo also holds are public ones).
    folders = {}
    for seed, (repo, access) in enumerate(((OPEN, "public"), (GATED, "gated"),
                                           (SECRET, "private"), (OTHER_SECRET, "private"))):
        folders[repo] = make_tiny_model(root / f"tiny{seed}", seed=seed, big_size=5 << 20)
        import_repo(home, folders[repo], repo, access=access)
    (home / "weightswarm.toml").write_text('[mirror]\naccess_file = "access.toml"\n')
    access = home / "access.toml"
    tokens = {
        "alice": add_token(access, "alice", read=["org/*", "team/*"], admin=[], expires=None,
                           name="laptop"),
        "bob": add_token(access, "bob", read=["x/*"], admin=[], expires=None),
    }
    config = make_config(home, access_file="access.toml")
    mirror = start_mirror(config)
    yield mirror, home, folders, tokens
    mirror.stop()


def _download(url: str, repo: str, cache: Path, token) -> Path:
    return Path(snapshot_download(repo, endpoint=url, cache_dir=cache, token=token))


def test_without_a_token_gated_and_private_are_the_clients_errors(site, tmp_path):
    mirror, _, folders, _ = site
    got = _download(mirror.url, OPEN, tmp_path / "c", token=False)
    assert (got / "model.safetensors").read_bytes() == \
        (folders[OPEN] / "model.safetensors").read_bytes()
    with pytest.raises(GatedRepoError):
        hf_hub_download(GATED, "config.json", endpoint=mirror.url, cache_dir=tmp_path / "c",
                        token=False)
    with pytest.raises(RepositoryNotFoundError) as private:
        hf_hub_download(SECRET, "config.json", endpoint=mirror.url, cache_dir=tmp_path / "c",
                        token=False)
    assert not isinstance(private.value, GatedRepoError)
    # Private and missing answer alike: nothing tells that team/secret exists.
    for repo in (SECRET, "team/never-was"):
        answer = httpx.get(f"{mirror.url}/api/models/{repo}")
        assert (answer.status_code, answer.headers["X-Error-Code"]) == (401, "RepoNotFound")
        assert SECRET not in answer.text or repo == SECRET


def test_a_read_token_downloads_gated_and_private_byte_identical(site, tmp_path):
    mirror, _, folders, tokens = site
    for repo in (GATED, SECRET):
        got = _download(mirror.url, repo, tmp_path / repo, token=tokens["alice"])
        for name in ("config.json", "model.safetensors"):
            assert (got / name).read_bytes() == (folders[repo] / name).read_bytes(), (repo, name)
    info = HfApi(endpoint=mirror.url, token=tokens["alice"]).model_info(SECRET)
    assert info.private is True and info.id == SECRET


def test_a_token_without_the_right_is_refused_as_the_hub_refuses(site, tmp_path):
    mirror, _, _, tokens = site
    with pytest.raises(GatedRepoError) as gated:
        hf_hub_download(GATED, "config.json", endpoint=mirror.url, cache_dir=tmp_path / "c",
                        token=tokens["bob"])
    assert gated.value.response.status_code == 403
    with pytest.raises(RepositoryNotFoundError) as private:
        hf_hub_download(SECRET, "config.json", endpoint=mirror.url, cache_dir=tmp_path / "c",
                        token=tokens["bob"])
    assert private.value.response.status_code == 404, "with a token: as a missing repo"
    # alice may read team/*, not else/*
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=mirror.url, token=tokens["alice"]).model_info(OTHER_SECRET)


def test_listings_show_a_private_repo_only_to_its_readers(site):
    mirror, _, _, tokens = site

    def listed(token) -> set[str]:
        return {m.id for m in HfApi(endpoint=mirror.url, token=token).list_models()}

    assert listed(False) == {OPEN, GATED}
    assert listed(tokens["bob"]) == {OPEN, GATED}
    assert listed(tokens["alice"]) == {OPEN, GATED, SECRET}
    found = HfApi(endpoint=mirror.url, token=tokens["alice"]).list_models(search="secret")
    assert [m.id for m in found] == [SECRET]
    assert list(HfApi(endpoint=mirror.url, token=False).list_models(search="secret")) == []


def test_whoami_names_the_tokens_user(site):
    mirror, _, _, tokens = site
    me = HfApi(endpoint=mirror.url).whoami(token=tokens["alice"])
    assert me["name"] == "alice"
    assert me["auth"]["accessToken"] == {"displayName": "laptop", "role": "read"}
    with pytest.raises(HfHubHTTPError) as refused:
        HfApi(endpoint=mirror.url).whoami(token="ws_" + "A" * 43)
    assert refused.value.response.status_code == 401


def test_the_web_seed_route_gives_a_non_public_blob_only_to_a_reader(site):
    mirror, _, folders, tokens = site
    for repo in (SECRET, GATED):
        info = HfApi(endpoint=mirror.url, token=tokens["alice"]).model_info(
            repo, files_metadata=True)
        sha256 = next(s.lfs.sha256 for s in info.siblings if s.rfilename == "model.safetensors")
        url = f"{mirror.url}/blobs/sha256/{sha256}"
        assert httpx.get(url).status_code == 401, "no token: as if there were no such blob"
        assert httpx.head(url).status_code == 401
        wrong = httpx.get(url, headers={"Authorization": f"Bearer {tokens['bob']}"})
        assert wrong.status_code == 404 and wrong.content.find(b"PK") == -1
        right = httpx.get(url, headers={"Authorization": f"Bearer {tokens['alice']}"})
        assert right.status_code == 200
        assert right.content == (folders[repo] / "model.safetensors").read_bytes()
        # HTTP Basic with the token as password: what libtorrent sends for a web seed whose
        # URL holds it (a private torrent's, peer/pull/swarm.py)
        assert httpx.get(url, auth=("token", tokens["alice"])).content == right.content
    missing = f"{mirror.url}/blobs/sha256/{'0' * 64}"
    assert httpx.get(missing).status_code == 401, "a blob that is not: answered alike"
    assert httpx.get(missing, headers={"Authorization": f"Bearer {tokens['bob']}"}
                     ).status_code == 404


def test_a_revoked_token_fails_at_its_next_request(site, tmp_path):
    mirror, home, _, _ = site
    token = add_token(home / "access.toml", "carol", read=["org/*"], admin=[], expires=None)
    time.sleep(AccessFile.CHECK_EVERY * 2)  # a new token counts within that
    got = hf_hub_download(GATED, "config.json", endpoint=mirror.url, cache_dir=tmp_path / "a",
                          token=token)
    assert Path(got).is_file()
    revoked = _cli(home, "token", "revoke", "carol")
    assert revoked.returncode == 0 and "revoked carol" in revoked.stdout, revoked.stderr
    with pytest.raises(GatedRepoError):
        hf_hub_download(GATED, "config.json", endpoint=mirror.url, cache_dir=tmp_path / "b",
                        token=token)


def test_refusals_are_audited_one_line_and_a_count_each(site, caplog):
    mirror, _, _, tokens = site
    with caplog.at_level(logging.INFO, logger="mirror.audit"):
        httpx.get(f"{mirror.url}/{GATED}/resolve/main/config.json")
        httpx.get(f"{mirror.url}/{GATED}/resolve/main/config.json",
                  headers={"Authorization": f"Bearer {tokens['alice']}"})
    lines = [r.getMessage() for r in caplog.records if r.name == "mirror.audit"]
    assert any(line.startswith("refused 127.0.0.1 anonymous GET") and GATED in line
               for line in lines), lines
    assert any(line.startswith("gated read 127.0.0.1 alice/") for line in lines), lines
    assert tokens["alice"] not in "".join(lines), "a token is never logged"
    metrics = httpx.get(f"{mirror.url}/metrics").text
    for event in ("refused_anonymous", "gated_read"):
        line = next(x for x in metrics.splitlines()
                    if x.startswith(f'weightswarm_mirror_audit_events_total{{event="{event}"'))
        assert float(line.split()[-1]) >= 1, line


@pytest.mark.parametrize("flaw", [
    "[users\nalice = 1",                                         # not TOML
    '[users.alice]\n[[tokens]]\nuser = "alice"\nsha256 = "ws_not_a_hash"\n',  # a token, not a hash
    '[users.alice]\n[[tokens]]\nuser = "alice"\nsha256 = "' + "a" * 64 + '"\nexpires = "soon"\n',
    "# " + "x" * (2 << 20),                                     # huge
])
def test_a_hostile_access_file_refuses_every_token_and_public_repos_stay_served(
        home, serve, tmp_path, flaw, caplog):
    tiny = make_tiny_model(tmp_path / "tiny", big_size=1 << 16)
    import_repo(home, tiny, OPEN)
    import_repo(home, make_tiny_model(tmp_path / "g", seed=1, big_size=1 << 16), GATED,
                access="gated")
    access = home / "access.toml"
    good = access.with_name("good.toml")
    token = add_token(good, "alice", read=["org/*"], admin=[], expires=None)
    access.write_text(flaw)
    mirror = serve(make_config(home, access_file="access.toml"))
    assert any("access file refused" in r.getMessage() for r in caplog.records
               if r.name == "mirror.audit")
    got = hf_hub_download(OPEN, "config.json", endpoint=mirror.url, cache_dir=tmp_path / "c",
                          token=token)
    assert Path(got).read_bytes() == (tiny / "config.json").read_bytes()
    with pytest.raises(GatedRepoError):
        hf_hub_download(GATED, "config.json", endpoint=mirror.url, cache_dir=tmp_path / "c",
                        token=token)
    good.replace(access)  # mended: read again within AccessFile.CHECK_EVERY, no restart
    time.sleep(AccessFile.CHECK_EVERY * 2)
    got = hf_hub_download(GATED, "config.json", endpoint=mirror.url, cache_dir=tmp_path / "d",
                          token=token)
    assert Path(got).is_file()


def test_mirror_access_sets_a_glob_now_and_for_repos_published_later(home, serve, tmp_path):
    tiny = make_tiny_model(tmp_path / "tiny", big_size=1 << 16)
    import_repo(home, tiny, "lab/one")
    done = _cli(home, "access", "lab/*", "private")
    assert done.returncode == 0, done.stderr
    assert "lab/one: public -> private" in done.stdout
    import_repo(home, make_tiny_model(tmp_path / "two", seed=1, big_size=1 << 16), "lab/two")
    import_repo(home, tiny, "elsewhere/three")
    catalog = Catalog(make_config(home).catalog_path)
    try:
        access = {r.repo_id: r.access for r in catalog.repos()}
    finally:
        catalog.close()
    assert access == {"lab/one": "private", "lab/two": "private", "elsewhere/three": "public"}
    mirror = serve(make_config(home))
    assert {m.id for m in HfApi(endpoint=mirror.url, token=False).list_models()} == \
        {"elsewhere/three"}
    assert httpx.get(f"{mirror.url}/api/models/lab/two").status_code == 404, \
        "no access file: no tokens, and a missing repo's answer"
    # The latest rule wins: one repo of the glob made gated again.
    assert _cli(home, "access", "lab/two", "gated").returncode == 0
    shown = _cli(home, "access")
    assert shown.stdout.splitlines()[0].split()[:2] == ["lab/*", "private"], shown.stdout
    with pytest.raises(GatedRepoError):
        hf_hub_download("lab/two", "config.json", endpoint=mirror.url, cache_dir=tmp_path / "c",
                        token=False)


def test_a_quarantined_file_goes_to_its_repos_admins_only(home, serve, tmp_path):
    import scancorpus

    corpus = scancorpus.build(tmp_path / "corpus")
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert"}')
    sample = corpus["torch-zip-os-system"].path
    (folder / "pytorch_model.bin").write_bytes(sample.read_bytes())
    import_repo(home, folder, "org/pickled")
    access = home / "access.toml"
    admin = add_token(access, "ops", read=[], admin=["org/*"], expires=None)
    reader = add_token(access, "alice", read=["org/*"], admin=[], expires=None)
    mirror = serve(make_config(home, access_file="access.toml", scan_policy="quarantine"))
    url = f"{mirror.url}/org/pickled/resolve/main/pytorch_model.bin"
    assert httpx.get(url, follow_redirects=True).status_code == 403
    refused = httpx.get(url, follow_redirects=True,
                        headers={"Authorization": f"Bearer {reader}"})
    assert refused.status_code == 403, "reading is not administering"
    got = hf_hub_download("org/pickled", "pytorch_model.bin", endpoint=mirror.url,
                          cache_dir=tmp_path / "c", token=admin)
    assert Path(got).read_bytes() == sample.read_bytes()


def test_a_gated_upstream_repo_synced_with_the_organisations_token_stays_gated(
        home, serve, tmp_path):
    from fakehub import TOKEN, FakeHub, tiny_repo_files

    from helpers import run_sync
    from mirror.upstreams.huggingface import HuggingFace

    files = tiny_repo_files(seed=3)
    files["README.md"] = (b"---\nlicense: other\nextra_gated_prompt: Accept the licence\n"
                          b"extra_gated_fields:\n  Company: text\n---\n# Gated\n")
    with FakeHub() as hub:
        hub.add_repo("meta/llama-tiny", files, gated=True)
        [result] = run_sync(make_config(home), HuggingFace(hub.url, token=TOKEN),
                            "hf:meta/llama-tiny")
    assert result.fetched == len(files)
    access = home / "access.toml"
    reader = add_token(access, "alice", read=["meta/*"], admin=[], expires=None)
    mirror = serve(make_config(home, access_file="access.toml"))
    with pytest.raises(GatedRepoError):
        hf_hub_download("meta/llama-tiny", "config.json", endpoint=mirror.url,
                        cache_dir=tmp_path / "c", token=False)
    got = _download(mirror.url, "meta/llama-tiny", tmp_path / "d", token=reader)
    for name, data in files.items():
        assert (got / name).read_bytes() == data, name
    info = HfApi(endpoint=mirror.url, token=False).model_info("meta/llama-tiny")
    assert info.gated == "manual"
    assert info.card_data["extra_gated_prompt"] == "Accept the licence", "gating fields kept"


def test_pull_through_of_a_gated_repo_needs_a_mirror_token(home, serve, tmp_path):
    from fakehub import TOKEN, FakeHub, tiny_repo_files

    files = tiny_repo_files(seed=4)
    access = home / "access.toml"
    reader = add_token(access, "alice", read=["meta/*"], admin=[], expires=None)
    with FakeHub() as hub:
        hub.add_repo("meta/gated-pull", files, gated=True)
        config = make_config(home, access_file="access.toml", pull_through=True)
        config = config.__class__(home=config.home, mirror=_with_upstream(config, hub.url,
                                                                          TOKEN))
        mirror = serve(config)
        with pytest.raises(GatedRepoError):
            hf_hub_download("meta/gated-pull", "config.json", endpoint=mirror.url,
                            cache_dir=tmp_path / "c", token=False)
        got = _download(mirror.url, "meta/gated-pull", tmp_path / "d", token=reader)
        for name, data in files.items():
            assert (got / name).read_bytes() == data, name


def _with_upstream(config, endpoint: str, token: str):
    import dataclasses
    from types import MappingProxyType

    upstreams = dict(config.mirror.upstreams)
    upstreams["huggingface"] = dataclasses.replace(upstreams["huggingface"], endpoint=endpoint,
                                                   token=token)
    return dataclasses.replace(config.mirror, upstreams=MappingProxyType(upstreams))


def test_hf_auth_login_against_the_mirror_then_hf_download_of_a_gated_repo(site, tmp_path):
    from helpers import VENV_BIN, hf_cli_path, hf_env

    mirror, _, folders, tokens = site
    env = hf_env(mirror.url, tmp_path / "cache")
    del env["HF_HUB_DISABLE_IMPLICIT_TOKEN"]  # as users run it: the stored token is sent
    login = subprocess.run([str(VENV_BIN / "hf"), "auth", "login", "--token", tokens["alice"]],
                           capture_output=True, text=True, timeout=120, env=env)
    assert login.returncode == 0, login.stderr[-2000:]
    got = subprocess.run([str(VENV_BIN / "hf"), "download", GATED], capture_output=True,
                         text=True, timeout=120, env=env)
    assert got.returncode == 0, got.stderr[-2000:]
    folder = hf_cli_path(got.stdout + got.stderr)
    assert (folder / "config.json").read_bytes() == (folders[GATED] / "config.json").read_bytes()


def test_the_token_commands_keep_the_file_valid_and_refuse_what_they_cannot_do(tmp_path):
    from mirror.accounts import revoke
    from peer.errors import BadRequest, ConfigError

    path = tmp_path / "access.toml"
    path.write_text("# our people, kept by hand\n[groups.research]\nread = [\"org/*\"]\n")
    token = add_token(path, "alice", read=[], admin=[], expires=None)
    assert path.read_text().startswith("# our people, kept by hand"), "comments stay"
    assert token not in path.read_text(), "only its hash is written"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    from mirror.access import load, token_sha256

    digest = token_sha256(token)
    assert load(path).token(token, time.time()).user == "alice"
    with pytest.raises(ConfigError, match="invalid"):
        add_token(path, "../bad", read=[], admin=[], expires=None)
    assert load(path).token(token, time.time()) is not None, "a refused edit changes nothing"
    with pytest.raises(BadRequest):
        revoke(path, "short")
    [gone] = revoke(path, digest[:12])
    assert gone["user"] == "alice" and load(path).tokens == {}
    yaml_file = tmp_path / "access.yaml"
    yaml_file.write_text("users: {}\n")
    with pytest.raises(ConfigError, match="YAML"):
        add_token(yaml_file, "alice", read=[], admin=[], expires=None)


def test_a_private_repos_torrents_and_manifests_go_to_its_readers_only(site):
    from peer.bencode import bdecode

    mirror, _, _, tokens = site
    info = HfApi(endpoint=mirror.url, token=tokens["alice"]).model_info(
        SECRET, files_metadata=True)
    sha256 = next(s.lfs.sha256 for s in info.siblings if s.rfilename == "big.bin")
    routes = [f"/api/weightswarm/torrents/{sha256}.torrent",
              f"/api/weightswarm/snapshots/huggingface/model/{SECRET}?revision=main",
              f"/api/weightswarm/manifests/huggingface/model/{SECRET}/{info.sha}"]
    for route in routes:
        assert httpx.get(mirror.url + route).status_code == 401, route
        bob = {"Authorization": f"Bearer {tokens['bob']}"}
        wrong = httpx.get(mirror.url + route, headers=bob)
        missing = httpx.get(mirror.url + route.replace(SECRET, "team/never-was"), headers=bob)
        assert (wrong.status_code, wrong.text.replace(SECRET, "team/never-was")) == \
            (missing.status_code, missing.text), f"{route}: answered as a missing repo"
        assert httpx.get(mirror.url + route, headers={
            "Authorization": f"Bearer {tokens['alice']}"}).status_code == 200, route
    torrent = bdecode(httpx.get(mirror.url + routes[0], headers={
        "Authorization": f"Bearer {tokens['alice']}"}).content)
    assert torrent[b"info"][b"private"] == 1


def test_the_operators_page_is_for_admins_of_every_repo(site):
    mirror, home, _, tokens = site
    admin = add_token(home / "access.toml", "ops", read=[], admin=["*"], expires=None)
    time.sleep(AccessFile.CHECK_EVERY * 2)
    html = {"Accept": "text/html"}
    refused = httpx.get(f"{mirror.url}/-/status", headers=html)
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Basic")
    assert SECRET not in refused.text
    assert httpx.get(f"{mirror.url}/-/status", headers=html,
                     auth=("me", tokens["alice"])).status_code == 401, "reading is not enough"
    page = httpx.get(f"{mirror.url}/-/status", headers=html, auth=("me", admin))
    assert page.status_code == 200 and "This mirror" in page.text
