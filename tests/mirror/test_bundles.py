"""Bundles for air-gapped mirrors (issue 15): a connected mirror exports, a second mirror with
nothing between them but the folder imports, and the stock client gets the same bytes; the
next bundle carries only what changed; volumes stand alone; every refusal says why in one line
and writes nothing outside the store."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest
from click.testing import CliRunner
from huggingface_hub import snapshot_download

from helpers import VENV_BIN, flip_a_byte, make_config, start_mirror, tmpfs
from mirror.bundle.export import ExportCutOff, Exporter
from mirror.bundle.importing import BundleImporter, ImportReport
from mirror.bundle.index import (
    INDEX,
    BundleError,
    HostileIndex,
    lay_out,
    read_index,
)
from mirror.bundle.select import choose, parse_export_spec
from mirror.bundle.state import NOTHING, read_since, read_state, write_state
from mirror.catalog import Catalog
from mirror.cli import cli
from mirror.config import Config
from mirror.importer import Importer
from peer.errors import ConfigError
from peer.keys import load_or_create, public_key_text
from peer.manifest import read_manifest, sign
from peer.store import BlobStore

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

#: three repos; sizes chosen so that 1 MiB volumes give three: alpha's weights span volumes
#: 1 and 2, beta lies whole in volume 2, gamma's weights fill volume 3
REPOS = {"org/alpha": 1200 * KiB, "org/beta": 400 * KiB, "other/gamma": 600 * KiB}


@dataclass
class Site:
    """A mirror's home, as the command line sees it: no server, only its catalog and store."""

    config: Config
    catalog: Catalog
    store: BlobStore

    @property
    def key(self):
        return load_or_create(self.config.key_path)

    @property
    def public_key(self) -> str:
        return public_key_text(self.key)

    def export(self, to: Path, *specs: str, volume_size: int = 4 * GiB, holdings=NOTHING):
        chosen = choose(self.catalog, [parse_export_spec(s) for s in specs],
                        everything=not specs)
        return Exporter(self.catalog, self.store, self.key).export(
            chosen, to, volume_size=volume_size, holdings=holdings)

    def import_bundle(self, *folders: Path, trusted=None, **options) -> ImportReport:
        return BundleImporter(self.catalog, self.store, frozenset(trusted), **options
                              ).import_bundles(list(folders))

    def commit(self, repo_id: str, ref: str = "main") -> str:
        return self.catalog.resolve(self.catalog.repo("huggingface", "model", repo_id), ref)

    def files(self, repo_id: str, ref: str = "main") -> dict[str, bytes]:
        repo = self.catalog.repo("huggingface", "model", repo_id)
        snapshot = self.catalog.snapshot(repo, self.catalog.resolve(repo, ref))
        out = {}
        for f in self.catalog.files(snapshot):
            with self.store.open(f.sha256) as fh:
                out[f.path] = fh.read()
        return out


def make_site(root: Path) -> Site:
    config = make_config(root)
    return Site(config, Catalog(config.catalog_path), BlobStore(config.store_dir))


def write_repo(folder: Path, repo_id: str, weights: int, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text(f"---\nlicense: mit\ntags:\n- bundle\n---\n# {repo_id}\n")
    (folder / "config.json").write_text(json.dumps({"repo": repo_id, "seed": seed}))
    (folder / "weights.bin").write_bytes(random.Random(seed).randbytes(weights))
    return folder


@pytest.fixture
def connected(tmp_path) -> Site:
    """The connected mirror, holding the three repos (each tagged v1)."""
    site = make_site(tmp_path / "connected")
    importer = Importer(site.catalog, site.store)
    for seed, (repo_id, size) in enumerate(REPOS.items()):
        folder = write_repo(tmp_path / "sources" / repo_id, repo_id, size, seed)
        importer.import_path(folder, repo_id=repo_id, tags=["v1"])
    yield site
    site.catalog.close()


@pytest.fixture
def gapped(tmp_path) -> Site:
    """The air-gapped mirror: nothing but folders reach it."""
    site = make_site(tmp_path / "gapped")
    yield site
    site.catalog.close()


def update_beta(connected: Site, tmp_path: Path) -> None:
    """A new commit of org/beta upstream: new config and weights, the same card."""
    folder = tmp_path / "sources" / "org/beta"
    (folder / "config.json").write_text(json.dumps({"repo": "org/beta", "seed": 99}))
    (folder / "weights.bin").write_bytes(random.Random(99).randbytes(300 * KiB))
    Importer(connected.catalog, connected.store).import_path(folder, repo_id="org/beta")


def bundle_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def outside_store(site: Site) -> set[str]:
    """What a refused import must not change: every file of its home but the store's."""
    home = site.config.home
    return {p.relative_to(home).as_posix() for p in home.rglob("*")
            if p.is_file() and "store" not in p.relative_to(home).parts
            and not p.name.startswith("catalog.sqlite")}


def snapshots_of(site: Site) -> set[tuple[str, str]]:
    return {(r.repo_id, c) for r in site.catalog.repos() for c in site.catalog.snapshots(r)}


# -- the whole path --------------------------------------------------------------------------------


def test_a_full_bundle_imported_on_a_second_mirror_serves_identical_files_to_the_stock_client(
        connected, gapped, tmp_path):
    bundle = tmp_path / "bundle"
    result = connected.export(bundle)  # --all
    assert (result.volumes, result.snapshots, result.blobs) == (1, 3, 9)

    report = gapped.import_bundle(bundle, trusted={connected.public_key})
    assert sorted(report.published) == sorted(
        f"{r}@{connected.commit(r)[:12]}" for r in REPOS), report
    assert (report.failed, report.waiting, report.blobs) == ([], {}, 9)
    assert "3 snapshots published" in report.summary()
    for repo_id in REPOS:
        assert gapped.commit(repo_id) == connected.commit(repo_id)
        assert gapped.commit(repo_id, "v1") == connected.commit(repo_id), "tags travel as tags"

    running = start_mirror(gapped.config)
    try:
        for repo_id in REPOS:
            local = Path(snapshot_download(repo_id, endpoint=running.url,
                                           cache_dir=tmp_path / "hf-cache"))
            got = {p.relative_to(local).as_posix(): p.read_bytes()
                   for p in local.rglob("*") if p.is_file()}
            source = tmp_path / "sources" / repo_id
            want = {p.relative_to(source).as_posix(): p.read_bytes()
                    for p in source.rglob("*") if p.is_file()}
            assert got == want, f"{repo_id}: the stock client's files differ from the source"
        # Peers believe what the exporting mirror signed: its manifests are served as they were.
        commit = connected.commit("org/alpha")
        with urllib.request.urlopen(
                f"{running.url}/api/weightswarm/manifests/huggingface/model/org/alpha/"
                f"{commit}") as r:
            manifest, signer = read_manifest(r.read(), {connected.public_key})
        assert (manifest.commit, signer) == (commit, connected.public_key)
    finally:
        running.stop()


def carried_back(connected: Site, gapped: Site, tmp_path: Path) -> Path:
    """A first full bundle imported on the far side, beta updated since on the connected one,
    and the far side's export-state carried back out."""
    connected.export(tmp_path / "first")
    gapped.import_bundle(tmp_path / "first", trusted={connected.public_key})
    update_beta(connected, tmp_path)
    state = tmp_path / "state.msgpack"
    assert write_state(gapped.catalog, gapped.store, gapped.key, state) == (3, 9)
    return state


def test_an_incremental_bundle_from_the_state_file_carries_only_the_new_blobs(
        connected, gapped, tmp_path):
    state = carried_back(connected, gapped, tmp_path)
    second = connected.export(tmp_path / "second", holdings=read_state(state))
    assert (second.blobs, second.held) == (2, 9), "only beta's new config and weights travel"
    index, _ = read_index((tmp_path / "second" / "vol-001" / INDEX).read_bytes(),
                          {connected.public_key})
    assert index.base is not None and index.base.kind == "state"
    assert len(bundle_files(tmp_path / "second" / "vol-001" / "blobs")) == 2

    since = connected.export(tmp_path / "since", holdings=read_since(tmp_path / "first"))
    assert since.blobs == 2, "an earlier bundle's index tells the same"

    report = gapped.import_bundle(tmp_path / "second", trusted={connected.public_key})
    assert report.published == [f"org/beta@{connected.commit('org/beta')[:12]}"], report
    assert (report.blobs, report.skipped, len(report.present)) == (2, 9, 3)
    assert gapped.commit("org/beta") == connected.commit("org/beta")
    assert gapped.files("org/beta") == connected.files("org/beta")


def test_an_incremental_bundle_on_a_mirror_without_its_base_names_exactly_the_missing_blobs(
        connected, gapped, tmp_path):
    state = carried_back(connected, gapped, tmp_path)
    connected.export(tmp_path / "second", "hf:org/beta@main", holdings=read_state(state))

    elsewhere = make_site(tmp_path / "elsewhere")
    report = elsewhere.import_bundle(tmp_path / "second", trusted={connected.public_key})
    beta = connected.catalog.repo("huggingface", "model", "org/beta")
    files = connected.catalog.files(connected.catalog.snapshot(beta, connected.commit("org/beta")))
    readme = next(f.sha256 for f in files if f.path == "README.md")
    assert [(f.snapshot, f.missing) for f in report.failed] == [
        (f"org/beta@{connected.commit('org/beta')[:12]}", [readme])]
    assert "README.md" in report.failed[0].reason and "base" in report.failed[0].reason
    assert snapshots_of(elsewhere) == set()
    elsewhere.catalog.close()


# -- volumes ---------------------------------------------------------------------------------------


def test_three_volumes_each_import_alone_what_it_completes_and_a_split_blob_arrives_intact(
        connected, gapped, tmp_path):
    bundle = tmp_path / "bundle"
    result = connected.export(bundle, volume_size=MiB)
    assert result.volumes == 3
    for volume in sorted(bundle.iterdir()):
        size = sum(p.stat().st_size for p in volume.rglob("*") if p.is_file())
        assert size <= MiB, f"{volume.name} holds {size} bytes, more than its 1 MiB"
    index, _ = read_index((bundle / "vol-002" / INDEX).read_bytes(), {connected.public_key})
    split = [b for b in index.blobs if len(b.parts) > 1]
    assert [b.size for b in split] == [REPOS["org/alpha"]]
    assert [p.volume for p in split[0].parts] == [1, 2], "alpha's weights span volumes 1 and 2"

    trusted = {connected.public_key}
    alone = gapped.import_bundle(bundle / "vol-002", trusted=trusted)
    assert alone.published == [f"org/beta@{connected.commit('org/beta')[:12]}"], alone
    assert alone.waiting == {f"org/alpha@{connected.commit('org/alpha')[:12]}": [1],
                             f"other/gamma@{connected.commit('other/gamma')[:12]}": [3]}
    assert {r for r, _ in snapshots_of(gapped)} == {"org/beta"}, "nothing half imported shows"

    rest = gapped.import_bundle(bundle / "vol-001", bundle / "vol-003", trusted=trusted)
    assert sorted(rest.published) == sorted([f"org/alpha@{connected.commit('org/alpha')[:12]}",
                                             f"other/gamma@{connected.commit('other/gamma')[:12]}"])
    assert rest.failed == [] and rest.waiting == {}
    for repo_id in REPOS:
        assert gapped.files(repo_id) == connected.files(repo_id), f"{repo_id} arrived changed"
    assert gapped.store.verify(split[0].sha256)
    assert list((gapped.store.partial_dir / "bundle-parts").iterdir()) == [], \
        "the part kept aside is gone once its blob is whole"


def test_the_layout_splits_only_what_does_not_fit_an_empty_volume_and_caps_file_sizes():
    a, b, c = "a" * 64, "b" * 64, "c" * 64
    placed = lay_out([(a, 60), (b, 50), (c, 250)], capacity=100, max_file=80)
    assert [p[:3] for p in placed[0].pieces] == [(1, 0, 60)]
    assert [p[:3] for p in placed[1].pieces] == [(2, 0, 50)], "whole, in the next volume"
    assert [p[:3] for p in placed[2].pieces] == [(2, 0, 50), (3, 50, 80), (3, 130, 20),
                                                (4, 150, 80), (4, 230, 20)]
    with pytest.raises(BundleError):
        lay_out([(a, 1)], capacity=0)


# -- refusals --------------------------------------------------------------------------------------


@pytest.fixture
def bundle(connected, tmp_path) -> Path:
    connected.export(tmp_path / "bundle")
    return tmp_path / "bundle"


def blob_file(bundle: Path, site: Site, repo_id: str, path: str) -> Path:
    repo = site.catalog.repo("huggingface", "model", repo_id)
    files = site.catalog.files(site.catalog.snapshot(repo, site.commit(repo_id)))
    sha256 = next(f.sha256 for f in files if f.path == path)
    return bundle / "vol-001" / "blobs" / sha256[:2] / sha256


def test_a_flipped_byte_fails_its_snapshot_naming_file_repo_and_volume_and_the_rest_import(
        connected, gapped, bundle):
    damaged = blob_file(bundle, connected, "org/beta", "weights.bin")
    flip_a_byte(damaged, 1000)

    verified = CliRunner().invoke(cli, ["--home", str(gapped.config.home), "mirror",
                                        "verify-bundle", str(bundle), "--trust",
                                        connected.public_key, "--no-progress"])
    assert verified.exit_code == 1
    assert f"vol-001/blobs/{damaged.name[:2]}/{damaged.name}" in verified.output
    assert "damaged" in verified.output and "org/beta" in verified.output

    report = gapped.import_bundle(bundle, trusted={connected.public_key})
    assert [f.snapshot for f in report.failed] == [f"org/beta@{connected.commit('org/beta')[:12]}"]
    reason = report.failed[0].reason
    assert "weights.bin" in reason and "vol-001" in reason and "\n" not in reason
    assert {r for r, _ in snapshots_of(gapped)} == {"org/alpha", "other/gamma"}
    assert not gapped.store.has(damaged.name), "no byte of the damaged blob is kept"
    assert list(gapped.store.tmp_dir.iterdir()) == []


def test_a_truncated_volume_and_a_cut_off_export_are_refused(connected, gapped, bundle):
    truncated = blob_file(bundle, connected, "other/gamma", "weights.bin")
    with open(truncated, "r+b") as f:
        f.truncate(1000)
    report = gapped.import_bundle(bundle, trusted={connected.public_key})
    assert [f.snapshot.split("@")[0] for f in report.failed] == ["other/gamma"]
    assert "truncated" in report.failed[0].reason

    (bundle / "vol-001" / INDEX).unlink()  # as a cut-off export leaves it
    cut = gapped.import_bundle(bundle, trusted={connected.public_key})
    assert cut.published == [] and "cut off" in cut.unusable[0]


def test_a_missing_manifest_fails_its_snapshot(connected, gapped, bundle):
    commit = connected.commit("org/alpha")
    index, _ = read_index((bundle / "vol-001" / INDEX).read_bytes(), {connected.public_key})
    entry = next(s for s in index.snapshots if s.repo == "org/alpha")
    (bundle / "vol-001" / entry.manifest_path).unlink()
    report = gapped.import_bundle(bundle, trusted={connected.public_key})
    assert [f.snapshot for f in report.failed] == [f"org/alpha@{commit[:12]}"]
    assert "manifest" in report.failed[0].reason and "missing" in report.failed[0].reason
    assert {r for r, _ in snapshots_of(gapped)} == {"org/beta", "other/gamma"}


def test_a_bundle_signed_by_an_unknown_key_is_refused_whole(connected, gapped, bundle, tmp_path):
    before = outside_store(gapped)
    stranger = public_key_text(load_or_create(tmp_path / "stranger.key"))
    with pytest.raises(BundleError) as refused:
        gapped.import_bundle(bundle, trusted={stranger})
    message = str(refused.value)
    assert "does not trust" in message and connected.public_key[:20] in message
    assert "\n" not in message
    assert snapshots_of(gapped) == set() and list(gapped.store.iter_blobs()) == []
    assert outside_store(gapped) == before


@pytest.mark.parametrize("hostile", ["../../escaped", "/etc/escaped", "blobs/a\0b"])
def test_an_index_with_a_hostile_path_is_refused_whole(connected, gapped, bundle, tmp_path,
                                                       hostile):
    volume = bundle / "vol-001"
    envelope = msgpack.unpackb((volume / INDEX).read_bytes(), raw=False)
    body = msgpack.unpackb(envelope["payload"], raw=False)
    body["blobs"][0][4][0][1] = hostile  # where the first blob's bytes are, says the index
    (volume / INDEX).write_bytes(sign("bundle", msgpack.packb(body, use_bin_type=True),
                                      connected.key))
    before = outside_store(gapped)
    with pytest.raises(HostileIndex) as refused:
        gapped.import_bundle(bundle, trusted={connected.public_key})
    assert "unsafe path" in str(refused.value) and "\n" not in str(refused.value)
    assert snapshots_of(gapped) == set() and list(gapped.store.iter_blobs()) == []
    assert outside_store(gapped) == before
    assert not (tmp_path / "escaped").exists()


def test_an_older_bundle_never_rolls_a_branch_back_unless_allowed(connected, gapped, tmp_path):
    connected.export(tmp_path / "old", "hf:org/beta")
    old_commit = connected.commit("org/beta")
    update_beta(connected, tmp_path)
    connected.export(tmp_path / "new", "hf:org/beta")
    trusted = {connected.public_key}

    gapped.import_bundle(tmp_path / "new", trusted=trusted)
    report = gapped.import_bundle(tmp_path / "old", trusted=trusted)
    assert gapped.commit("org/beta") == connected.commit("org/beta"), "main stays where it was"
    assert any("refs/heads/main kept" in line for line in report.kept), report.kept
    assert gapped.commit("org/beta", "v1") == old_commit, "the tag names the old commit still"

    gapped.import_bundle(tmp_path / "old", trusted=trusted, allow_rollback=True)
    assert gapped.commit("org/beta") == old_commit


# -- cut off and continued; the commands -----------------------------------------------------------


def test_a_cut_off_export_is_never_taken_for_a_bundle_and_running_it_again_finishes_it(
        connected, gapped, tmp_path):
    bundle = tmp_path / "bundle"
    connected.export(bundle, volume_size=MiB)
    # What a pulled cable leaves: no index yet, some files not written, a temp file.
    for volume in bundle.iterdir():
        (volume / INDEX).unlink()
    gone = [p for p in sorted((bundle / "vol-003" / "blobs").rglob("*")) if p.is_file()][-1]
    gone.unlink()
    (gone.parent / f".{gone.name}.999999.0badc0de.wstmp").write_bytes(b"half")
    verify = CliRunner().invoke(cli, ["--home", str(gapped.config.home), "mirror",
                                      "verify-bundle", str(bundle), "--no-progress"])
    assert verify.exit_code == 1 and "cut off" in verify.output

    again = connected.export(bundle, volume_size=MiB)
    assert again.volumes == 3 and again.resumed >= again.blobs - 1
    assert not list(bundle.rglob("*.wstmp")), "the dead writer's temp file is gone"
    report = gapped.import_bundle(bundle, trusted={connected.public_key})
    assert len(report.published) == 3 and report.failed == []
    with pytest.raises(BundleError, match="finished bundle"):
        connected.export(bundle, volume_size=MiB)


def test_an_export_cut_off_by_a_full_disk_says_so_in_one_line_and_finishes_once_there_is_room(
        connected, gapped, tmp_path):
    with tmpfs(tmp_path / "usb", "1m") as usb:
        with pytest.raises(ExportCutOff) as cut:
            connected.export(usb / "bundle")  # 2.2 MiB onto a 1 MiB stick
        message = str(cut.value)
        assert "no space left" in message and "run the same export again" in message
        assert "\n" not in message
        assert not list(usb.rglob(INDEX)), "a cut-off export has no index"
        subprocess.run(["mount", "-o", "remount,size=8m", str(usb)], check=True)
        done = connected.export(usb / "bundle")
        assert done.resumed >= 2, "the files written before the disk filled are kept"
        report = gapped.import_bundle(usb / "bundle", trusted={connected.public_key})
        assert len(report.published) == 3 and report.failed == []


def test_the_commands_export_verify_import_and_say_what_they_did(connected, gapped, tmp_path):
    runner = CliRunner()
    bundle = tmp_path / "bundle"
    done = runner.invoke(cli, ["--home", str(connected.config.home), "mirror", "export",
                               "hf:org/*", "--to", str(bundle), "--volume-size", "1M",
                               "--no-progress"])
    assert done.exit_code == 0, done.output
    assert "2 snapshots" in done.output
    verified = runner.invoke(cli, ["--home", str(connected.config.home), "mirror",
                                   "verify-bundle", str(bundle), "--no-progress"])
    assert verified.exit_code == 0, verified.output
    assert "2 snapshots complete" in verified.output and "0 problems" in verified.output

    imported = runner.invoke(cli, ["--home", str(gapped.config.home), "mirror",
                                   "import-bundle", str(bundle), "--no-progress"],
                             env={"WEIGHTSWARM_MIRROR_BUNDLE_KEYS": connected.public_key})
    assert imported.exit_code == 0, imported.output
    last = imported.output.strip().splitlines()[-1]
    assert last.startswith("2 snapshots published") and "blobs skipped as already present" \
        in last and "0 failed" in last
    state = tmp_path / "state"
    written = runner.invoke(cli, ["--home", str(gapped.config.home), "mirror", "export-state",
                                  "--to", str(state)])
    assert written.exit_code == 0 and "2 snapshots, 6 blobs" in written.output


def test_bundle_keys_must_be_ed25519_keys(tmp_path):
    from mirror.config import load_config

    with pytest.raises(ConfigError, match="bundle_keys"):
        load_config(home=tmp_path, env={"WEIGHTSWARM_MIRROR_BUNDLE_KEYS": "ed25519:nothex"})
    key = "ed25519:" + "ab" * 32
    config = load_config(home=tmp_path, env={"WEIGHTSWARM_MIRROR_BUNDLE_KEYS": key})
    assert config.mirror.bundle_keys == (key,)


def test_a_state_file_that_was_tampered_with_is_refused(gapped, tmp_path):
    state = tmp_path / "state"
    write_state(gapped.catalog, gapped.store, gapped.key, state)
    data = bytearray(state.read_bytes())
    data[-5] ^= 1
    state.write_bytes(bytes(data))
    with pytest.raises(BundleError):
        read_state(state)


def test_other_hubs_travel_in_their_own_namespace(connected, gapped, tmp_path):
    folder = write_repo(tmp_path / "sources" / "ms", "org/alpha", 1000, 7)
    Importer(connected.catalog, connected.store).import_path(folder, repo_id="org/alpha",
                                                              hub="modelscope")
    connected.export(tmp_path / "bundle", "ms:org/alpha")
    report = gapped.import_bundle(tmp_path / "bundle", trusted={connected.public_key})
    assert len(report.published) == 1
    assert [(r.hub, r.repo_id) for r in gapped.catalog.repos()] == [("modelscope", "org/alpha")]


def test_the_index_records_each_volumes_parity_files_and_verify_checks_them(
        connected, gapped, tmp_path):
    """The hook parity (mirror/parity.py) plugs into: `protect` writes recovery files into a
    volume folder and names them; here a stand-in that writes one file per volume."""
    def protect(folder: Path, files: list[str]) -> list[str]:
        recovery = folder / "parity" / "volume.par"
        recovery.parent.mkdir(exist_ok=True)
        recovery.write_bytes(b"".join((folder / f).read_bytes()[:64] for f in sorted(files)))
        return ["parity/volume.par"]

    bundle = tmp_path / "bundle"
    chosen = choose(connected.catalog, [], everything=True)
    Exporter(connected.catalog, connected.store, connected.key, protect=protect,
             parity_scheme="test", parity_share=0.01).export(chosen, bundle, volume_size=MiB)
    index, _ = read_index((bundle / "vol-001" / INDEX).read_bytes(), {connected.public_key})
    assert index.parity == "test"
    assert [[p.path for p in v.parity] for v in index.volumes] == [["parity/volume.par"]] * 3
    (bundle / "vol-002" / "parity" / "volume.par").write_bytes(b"damaged")
    verified = CliRunner().invoke(cli, ["--home", str(connected.config.home), "mirror",
                                        "verify-bundle", str(bundle), "--no-progress"])
    assert verified.exit_code == 1 and "vol-002/parity/volume.par" in verified.output


def test_the_command_says_a_refusal_in_one_line_and_exits_1(connected, gapped, bundle, tmp_path):
    stranger = public_key_text(load_or_create(tmp_path / "stranger.key"))
    done = subprocess.run([str(VENV_BIN / "weightswarm"), "--home", str(gapped.config.home),
                           "mirror", "import-bundle", str(bundle), "--trust", stranger],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if " INFO " not in line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "does not trust" in lines[0], \
        done.stderr


# -- parity: a damaged volume repaired from its recovery data (mirror/parity.py, real par2) ------

needs_par2 = pytest.mark.skipif(shutil.which("par2") is None,
                                reason="par2 (Debian package par2) is not installed")


def mirror_cli(site: Site, *args: str, **env: str):
    return CliRunner().invoke(cli, ["--home", str(site.config.home), "mirror", *args,
                                    "--no-progress"], env=env)


@pytest.fixture
def protected(connected, tmp_path) -> Path:
    """The three repos in one volume with 10 % recovery data, as the command writes it."""
    bundle = tmp_path / "protected"
    done = mirror_cli(connected, "export", "--all", "--to", str(bundle), "--parity", "10%")
    assert done.exit_code == 0, done.output
    return bundle


@needs_par2
def test_a_byte_flipped_within_the_parity_budget_is_reported_then_repaired_by_the_import(
        connected, gapped, protected):
    index, _ = read_index((protected / "vol-001" / INDEX).read_bytes(), {connected.public_key})
    assert index.parity == "par2"
    assert [p.path for p in index.volumes[0].parity][0] == "parity.par2"
    damaged = blob_file(protected, connected, "org/beta", "weights.bin")
    flip_a_byte(damaged, 1000)

    verified = mirror_cli(gapped, "verify-bundle", str(protected), "--trust",
                          connected.public_key)
    assert verified.exit_code == 1, verified.output
    assert f"BAD vol-001/blobs/{damaged.name[:2]}/{damaged.name}" in verified.output
    assert "repairable" in verified.output and "not repairable" not in verified.output

    imported = mirror_cli(gapped, "import-bundle", str(protected),
                          WEIGHTSWARM_MIRROR_BUNDLE_KEYS=connected.public_key)
    assert imported.exit_code == 0, imported.output
    assert f"repaired vol-001/blobs/{damaged.name[:2]}/{damaged.name}" in imported.output
    last = imported.output.strip().splitlines()[-1]
    assert last.startswith("3 snapshots published") and "1 files repaired" in last, last
    for repo_id in REPOS:
        assert gapped.files(repo_id) == connected.files(repo_id)
    assert not [p for p in protected.rglob("*.1")], "par2's backups are cleaned up"


@needs_par2
def test_verify_bundle_repair_rebuilds_a_lost_file_and_then_finds_nothing_wrong(
        connected, gapped, protected):
    lost = blob_file(protected, connected, "other/gamma", "config.json")
    original = lost.read_bytes()
    lost.unlink()
    repaired = mirror_cli(gapped, "verify-bundle", str(protected), "--trust",
                          connected.public_key, "--repair")
    assert repaired.exit_code == 0, repaired.output
    assert f"repaired vol-001/blobs/{lost.name[:2]}/{lost.name}" in repaired.output
    assert "0 problems" in repaired.output
    assert lost.read_bytes() == original


@needs_par2
def test_damage_beyond_the_parity_budget_fails_that_snapshot_with_a_clear_report(
        connected, gapped, protected):
    """alpha's 1.2 MiB of weights overwritten: more than 10 % of the volume. alpha fails,
    saying what parity lacked; beta and gamma import; nothing of alpha is kept."""
    ruined = blob_file(protected, connected, "org/alpha", "weights.bin")
    ruined.write_bytes(bytes(ruined.stat().st_size))
    imported = mirror_cli(gapped, "import-bundle", str(protected),
                          WEIGHTSWARM_MIRROR_BUNDLE_KEYS=connected.public_key)
    assert imported.exit_code == 1
    failed = [line for line in imported.output.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and "org/alpha" in failed[0] and "weights.bin" in failed[0]
    assert "parity could not repair it" in failed[0] and "blocks short" in failed[0], failed
    assert {r for r, _ in snapshots_of(gapped)} == {"org/beta", "other/gamma"}
    assert not gapped.store.has(ruined.name)
    assert ruined.read_bytes() == bytes(ruined.stat().st_size), "a failed repair changes nothing"


def test_gc_keeps_what_a_waiting_snapshot_took_in_until_its_last_volume_comes(
        connected, gapped, tmp_path):
    """Volumes may come days apart: the blobs volume 2 brought for alpha and gamma are
    referenced by nothing until those are published, and `mirror gc` must leave them."""
    from mirror.maintenance import collect_garbage

    bundle = tmp_path / "bundle"
    connected.export(bundle, volume_size=MiB)
    trusted = {connected.public_key}
    gapped.import_bundle(bundle / "vol-002", trusted=trusted)
    held = {h for h in gapped.store.iter_blobs() if not gapped.catalog.conn.execute(
        "SELECT 1 FROM files WHERE sha256 = ?", (h,)).fetchone()}
    assert held, "volume 2 brought blobs of a snapshot that waits"
    pending = gapped.catalog.pending()
    assert sorted(p.split("@")[0] for p in pending) == [
        "huggingface/model/org/alpha", "huggingface/model/other/gamma"]
    later = time.time() + 30 * 24 * 3600
    assert collect_garbage(gapped.catalog, gapped.store, grace=0, now=later).blobs == []
    assert held <= set(gapped.store.iter_blobs())

    rest = gapped.import_bundle(bundle / "vol-001", bundle / "vol-003", trusted=trusted)
    assert len(rest.published) == 2 and gapped.catalog.pending() == {}
    assert collect_garbage(gapped.catalog, gapped.store, grace=0, now=later).blobs == []
    for repo_id in REPOS:
        assert gapped.files(repo_id) == connected.files(repo_id)


def test_a_private_repo_travels_only_with_include_private(connected, tmp_path):
    """Issue 20: a bundle is media anyone may pick up: no private repo's byte or name in it
    unless asked for by --include-private."""
    secret = write_repo(tmp_path / "sources" / "org/secret", "org/secret", 300 * KiB, 9)
    Importer(connected.catalog, connected.store).import_path(secret, repo_id="org/secret",
                                                               access="private")
    weights = (secret / "weights.bin").read_bytes()
    for args in (["--all"], ["hf:org/*"]):
        bundle = tmp_path / f"b-{len(args[0])}"
        done = mirror_cli(connected, "export", *args, "--to", str(bundle))
        assert done.exit_code == 0, done.output
        for f in bundle_files(bundle):
            data = f.read_bytes()
            assert weights[:4096] not in data and b"org/secret" not in data, f
    named = mirror_cli(connected, "export", "hf:org/secret", "--to", str(tmp_path / "n"))
    assert named.exit_code != 0 and "--include-private" in str(named.exception)
    carried = tmp_path / "carried"
    done = mirror_cli(connected, "export", "hf:org/secret", "--include-private", "--to",
                      str(carried))
    assert done.exit_code == 0, done.output
    assert any(weights[:4096] in f.read_bytes() for f in bundle_files(carried))
