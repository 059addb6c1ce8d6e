"""The pure parts of `weightswarm pull`: the Hugging Face cache layout (peer/hfcache.py), whom a
peer believes (peer/trust.py), and what a pull asks for (peer/pull `PullSpec`, peer/patterns.py
`select`)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from peer.bencode import BencodeError, bencode
from peer.errors import (
    BadRequest,
    ConfigError,
    InsufficientSpace,
    IntegrityError,
    InvalidRepoId,
    UnsafePath,
)
from peer.hfcache import RepoCache, etag_of, hub_cache, repo_folder
from peer.keys import public_key_text
from peer.manifest import ManifestFile, RefStatement, StaleRef
from peer.patterns import select
from peer.pull import Pull, PullResult, PullSpec
from peer.pull.place import check_space
from peer.pull.swarm import Large, account, read_torrent, web_seeds_due
from peer.settings import PeerConfig
from peer.torrent import info_hash
from peer.trust import KeyMismatch, Trust

COMMIT = "a" * 40
OTHER_COMMIT = "b" * 40
ETAG = "c" * 64
MIRROR = "http://mirror.example:8470"

HOSTILE_PATHS = ["../escape", "/etc/passwd", "a/../../escape", "a//b", "./a", "a/./b", "",
                 "a\\b", "a\x00b", "C:/windows", "x" * 300]
HOSTILE_REPOS = ["", "../etc", "org/../etc", "a/b/c", "org/na me", "org/name.git", "org--x/y",
                 "/org/name", "org/", ".org/name", "org/name\n", "org/näme", "x" * 200]
HOSTILE_REVISIONS = ["../x", "a/../b", "main..dev", "a b", "x:y", "x~1", "x^", "x?", "x*",
                     "[x", "x\\y", "x\x00", "/main", "main/", "x.lock", "@", "x@{1}", ".hidden",
                     "r" * 300]


def key_text() -> str:
    return public_key_text(Ed25519PrivateKey.generate())


# -- hfcache: where the cache is ------------------------------------------------------------------


def test_hub_cache_follows_huggingface_hubs_precedence(tmp_path):
    env = {"HF_HUB_CACHE": str(tmp_path / "hub-cache"), "HF_HOME": str(tmp_path / "hf-home"),
           "XDG_CACHE_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path / "user")}
    assert hub_cache(env) == tmp_path / "hub-cache"
    del env["HF_HUB_CACHE"]
    assert hub_cache(env) == tmp_path / "hf-home" / "hub"
    del env["HF_HOME"]
    assert hub_cache(env) == tmp_path / "xdg" / "huggingface" / "hub"
    del env["XDG_CACHE_HOME"]
    assert hub_cache(env) == tmp_path / "user" / ".cache" / "huggingface" / "hub"


def test_hub_cache_ignores_empty_settings_and_expands_the_home_folder(tmp_path):
    env = {"HF_HUB_CACHE": "", "HF_HOME": "", "HOME": str(tmp_path)}
    assert hub_cache(env) == tmp_path / ".cache" / "huggingface" / "hub"
    assert hub_cache({"HF_HUB_CACHE": "~/c"}) == Path("~/c").expanduser()
    assert hub_cache({"HF_HOME": "~/h"}) == Path("~/h").expanduser() / "hub"


def test_hub_cache_reads_the_process_environment_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "from-env"))
    assert hub_cache() == tmp_path / "from-env"


def test_repo_folder_is_named_like_the_stock_clients(tmp_path):
    assert repo_folder(tmp_path, "model", "org/name") == tmp_path / "models--org--name"
    assert repo_folder(tmp_path, "dataset", "org/data") == tmp_path / "datasets--org--data"
    assert repo_folder(tmp_path, "model", "gpt2") == tmp_path / "models--gpt2"


@pytest.mark.parametrize("repo_id", HOSTILE_REPOS)
def test_repo_folder_refuses_hostile_repo_ids(tmp_path, repo_id):
    with pytest.raises(InvalidRepoId):
        repo_folder(tmp_path, "model", repo_id)


def test_etag_is_sha256_for_lfs_files_and_git_sha1_for_the_others():
    assert etag_of("s" * 64, "g" * 40, True) == "s" * 64
    assert etag_of("s" * 64, "g" * 40, False) == "g" * 40


# -- hfcache: blobs, links, refs ------------------------------------------------------------------


def test_a_blob_counts_only_at_its_full_size_and_stages_beside_its_final_name(tmp_path):
    cache = RepoCache(tmp_path, "model", "org/name")
    assert not cache.has_blob(ETAG, 3)
    cache.blobs.mkdir(parents=True)
    cache.staging(ETAG).write_bytes(b"abc")
    assert cache.staging(ETAG).parent == cache.blob(ETAG).parent, "same folder: atomic rename"
    assert not cache.has_blob(ETAG, 3), "a partial file is not the blob"
    os.replace(cache.staging(ETAG), cache.blob(ETAG))
    assert cache.has_blob(ETAG, 3)
    assert not cache.has_blob(ETAG, 4), "a blob of another size is not it"


@pytest.mark.parametrize("path,target", [
    ("config.json", "../../blobs/" + ETAG),
    ("1_Pooling/config.json", "../../../blobs/" + ETAG),
    ("a/b/c/d.bin", "../../../../../blobs/" + ETAG),
])
def test_link_makes_a_relative_symlink_that_resolves_to_the_blob(tmp_path, path, target):
    cache = RepoCache(tmp_path / "cache", "model", "org/name")
    cache.blobs.mkdir(parents=True)
    cache.blob(ETAG).write_bytes(b"bytes")
    cache.link(COMMIT, path, ETAG)
    link = cache.root / "snapshots" / COMMIT / path
    assert link.is_symlink()
    assert os.readlink(link) == target
    assert link.resolve() == cache.blob(ETAG).resolve()
    assert link.read_bytes() == b"bytes"
    # The folder moves and the link still resolves: it names no absolute path.
    os.rename(tmp_path / "cache", tmp_path / "moved")
    moved = tmp_path / "moved" / "models--org--name" / "snapshots" / COMMIT / path
    assert moved.read_bytes() == b"bytes"


def test_link_replaces_an_existing_link_whole_and_leaves_no_temporary(tmp_path):
    cache = RepoCache(tmp_path, "model", "org/name")
    cache.blobs.mkdir(parents=True)
    other = "d" * 40
    cache.blob(ETAG).write_bytes(b"one")
    cache.blob(other).write_bytes(b"two")
    cache.link(COMMIT, "f.txt", ETAG)
    cache.link(COMMIT, "f.txt", other)
    folder = cache.root / "snapshots" / COMMIT
    assert (folder / "f.txt").read_bytes() == b"two"
    assert sorted(p.name for p in folder.iterdir()) == ["f.txt"]


@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_link_refuses_hostile_paths(tmp_path, path):
    cache = RepoCache(tmp_path / "cache", "model", "org/name")
    cache.blobs.mkdir(parents=True)
    with pytest.raises(UnsafePath):
        cache.link(COMMIT, path, ETAG)
    made = [p for p in tmp_path.rglob("*") if p.is_symlink()]
    assert made == [], "no link made anywhere"


@pytest.mark.parametrize("commit", ["main", "A" * 40, "a" * 39, "../" + "a" * 37, "a" * 41])
def test_link_wants_a_commit(tmp_path, commit):
    cache = RepoCache(tmp_path, "model", "org/name")
    with pytest.raises(ValueError):
        cache.link(commit, "f.txt", ETAG)
    assert not (cache.root / "snapshots").exists()


def test_set_ref_writes_the_commit_and_nests_pull_request_refs(tmp_path):
    cache = RepoCache(tmp_path, "model", "org/name")
    cache.set_ref("main", COMMIT)
    assert (cache.root / "refs" / "main").read_text() == COMMIT
    cache.set_ref("main", OTHER_COMMIT)
    assert (cache.root / "refs" / "main").read_text() == OTHER_COMMIT
    cache.set_ref("refs/pr/1", COMMIT)
    assert (cache.root / "refs" / "refs" / "pr" / "1").read_text() == COMMIT
    leftovers = [p.name for p in (cache.root / "refs").rglob(".*")]
    assert leftovers == [], "no temporary ref left"


def test_set_ref_skips_commits(tmp_path):
    cache = RepoCache(tmp_path, "model", "org/name")
    cache.set_ref(COMMIT, COMMIT)
    assert not (cache.root / "refs").exists(), "a commit is its own name"


@pytest.mark.parametrize("revision", HOSTILE_REVISIONS)
def test_set_ref_refuses_hostile_revisions(tmp_path, revision):
    cache = RepoCache(tmp_path / "cache", "model", "org/name")
    with pytest.raises(UnsafePath):
        cache.set_ref(revision, COMMIT)
    assert not any(p.is_file() for p in tmp_path.rglob("*")), "nothing written"


# -- trust ----------------------------------------------------------------------------------------


def test_a_mirrors_key_is_pinned_on_first_use(tmp_path):
    key = key_text()
    trust = Trust(tmp_path / "home")
    assert trust.keys() == frozenset()
    assert trust.pin(MIRROR + "/", key) == key
    assert (tmp_path / "home" / "known_mirrors").read_text() == f"{MIRROR} {key}\n"
    assert key in trust.keys()
    again = Trust(tmp_path / "home")  # another run reads the pin
    assert again.pinned == {MIRROR: key}
    assert again.pin(MIRROR, key) == key
    assert (tmp_path / "home" / "known_mirrors").read_text() == f"{MIRROR} {key}\n", \
        "pinned once"


def test_a_pinned_mirror_showing_another_key_is_refused(tmp_path):
    home = tmp_path / "home"
    key, other = key_text(), key_text()
    Trust(home).pin(MIRROR, key)
    trust = Trust(home)
    with pytest.raises(KeyMismatch) as refused:
        trust.pin(MIRROR, other)
    assert MIRROR in str(refused.value) and other in str(refused.value)
    assert "known_mirrors" in str(refused.value)
    assert other not in trust.keys()
    assert (home / "known_mirrors").read_text() == f"{MIRROR} {key}\n", "pin unchanged"
    # Another mirror may have its own key.
    trust.pin("http://other.example", other)
    assert Trust(home).keys() == {key, other}


def test_known_mirrors_is_read_like_known_hosts(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    key = key_text()
    (home / "known_mirrors").write_text(f"# comment\n\n{MIRROR}/ {key}\nnot a line at all\n")
    assert Trust(home).pinned == {MIRROR: key}


def test_a_malformed_key_is_never_pinned(tmp_path):
    trust = Trust(tmp_path / "home")
    with pytest.raises(KeyMismatch, match="malformed"):
        trust.pin(MIRROR, "ed25519:zz")
    assert not (tmp_path / "home" / "known_mirrors").exists()
    assert trust.keys() == frozenset()


@pytest.mark.parametrize("bad", ["ed25519:zz", "ed25519:" + "A" * 64, "rsa:" + "a" * 64,
                                 "a" * 64, ""])
def test_a_malformed_configured_key_is_a_config_error(tmp_path, bad):
    with pytest.raises(ConfigError, match="peer.trusted_keys"):
        Trust(tmp_path / "home", [key_text(), bad])


def test_configured_keys_are_trusted_without_a_pin(tmp_path):
    key = key_text()
    trust = Trust(tmp_path / "home", [key])
    assert trust.keys() == {key}
    assert not (tmp_path / "home" / "known_mirrors").exists()


# -- trust delegated by an index (issue 18, item 5) -------------------------------------------


INDEX = "http://index.example:6969"


def test_an_index_key_is_pinned_on_first_use_unless_configured(tmp_path):
    key = key_text()
    trust = Trust(tmp_path / "home")
    assert trust.trust_index(INDEX + "/", key) == key
    assert (tmp_path / "home" / "known_mirrors").read_text() == f"{INDEX} {key}\n"
    with pytest.raises(KeyMismatch):
        Trust(tmp_path / "home").trust_index(INDEX, key_text())
    configured = Trust(tmp_path / "other", [key])
    assert configured.trust_index(INDEX, key) == key
    assert not (tmp_path / "other" / "known_mirrors").exists()


def test_the_keys_an_index_vouches_for_are_believed_for_this_run_only(tmp_path):
    from peer.locate import AcceptedKey, sign_key_list

    index = Ed25519PrivateKey.generate()
    vouched = [key_text(), key_text()]
    data = sign_key_list([AcceptedKey(k, None, None) for k in vouched], index, 1000.0)
    home = tmp_path / "home"
    trust = Trust(home)
    trust.trust_index(INDEX, public_key_text(index))
    assert trust.delegate(data, public_key_text(index), now=1000.0) == set(vouched)
    assert set(vouched) <= trust.keys()
    assert set(vouched).isdisjoint(Trust(home).keys()), "not pinned, not kept for later pulls"
    assert set(vouched).isdisjoint(Trust(home).pinned.values())
    # The daemon reads the kept list however old, only if the index's believed key signed it.
    assert Trust(home).delegated_on_disk(INDEX) == set(vouched)
    assert Trust(home).delegated_on_disk("http://another.example") == frozenset()
    assert Trust(home, [public_key_text(index)]).delegated_on_disk("http://x") == set(vouched)


def test_a_key_list_signed_by_another_key_delegates_nothing(tmp_path):
    from peer.locate import AcceptedKey, sign_key_list
    from peer.manifest import ManifestError

    index, liar = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    trust = Trust(tmp_path / "home")
    data = sign_key_list([AcceptedKey(key_text(), None, None)], liar, 1000.0)
    with pytest.raises(ManifestError):
        trust.delegate(data, public_key_text(index), now=1000.0)
    assert trust.delegated == frozenset()
    assert not (tmp_path / "home" / "index_keys.msgpack").exists()
    with pytest.raises(ManifestError, match="stale"):
        trust.delegate(sign_key_list([], index, 0.0), public_key_text(index), now=10_000.0)


def test_located_mirrors_are_asked_in_the_indexs_order_those_behind_last():
    from peer.locate import Located, LocatedMirror
    from peer.pull.index import mirror_order

    new, old = "a" * 40, "b" * 40

    def at(url: str, commit: str) -> LocatedMirror:
        return LocatedMirror(key_text(), None, url, None, None, None, commit, "0" * 64,
                             commit != new, "other", False, False, None)

    answer = Located(key_text(), "huggingface", "model", "org/name", "main", new, None, 0.0,
                     (at("http://behind", old), at("http://near", new), at("http://far", new),
                      at("http://near", new)))
    assert mirror_order(answer) == ["http://near", "http://far", "http://behind"]
    assert mirror_order(answer, most=1) == ["http://near"]


def test_after_the_mirror_that_answered_come_those_after_it_then_those_that_did_not():
    from peer.pull.http import nearest_first

    assert nearest_first("b", ["a", "b", "c"]) == ["b", "c", "a"]
    assert nearest_first("a", ["a", "b"]) == ["a", "b"]
    assert nearest_first("x", ["a", "b"]) == ["x", "a", "b"]


def ref(seq: int, commit: str = COMMIT, name: str = "main") -> RefStatement:
    return RefStatement("huggingface", "model", "org/name", name, commit, seq)


def test_the_ref_ledger_persists_and_an_older_ref_is_refused_across_instances(tmp_path):
    home = tmp_path / "home"
    key = key_text()
    Trust(home).accept_ref(ref(5), key)
    assert json.loads((home / "refs_seen.json").read_text()) == [
        [key, "huggingface", "model", "org/name", "main", 5, COMMIT]]

    later = Trust(home)  # another run
    with pytest.raises(StaleRef):
        later.accept_ref(ref(4, OTHER_COMMIT), key)
    with pytest.raises(StaleRef):
        later.accept_ref(ref(5, OTHER_COMMIT), key)  # one number, two commits
    later.accept_ref(ref(5), key)  # the same statement again is fine
    later.accept_ref(ref(4), key_text())  # another key has its own sequence
    later.accept_ref(ref(1, name="dev"), key)  # and another ref
    later.accept_ref(ref(6, OTHER_COMMIT), key)

    third = Trust(home)
    with pytest.raises(StaleRef):
        third.accept_ref(ref(5), key)
    third.accept_ref(ref(6, OTHER_COMMIT), key)
    assert not list(home.glob("*.tmp")), "the ledger is replaced whole"


def test_a_damaged_ledger_is_read_as_empty(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "refs_seen.json").write_text("{not json")
    Trust(home).accept_ref(ref(1), key_text())
    (home / "refs_seen.json").write_text('[["too", "short"], 7]')
    Trust(home).accept_ref(ref(1), key_text())


# -- pull: what is asked for ----------------------------------------------------------------------


def test_pull_spec_parses_repo_and_revision():
    assert PullSpec.parse("org/name") == PullSpec("org/name", "main")
    assert PullSpec.parse("gpt2") == PullSpec("gpt2", "main")
    assert PullSpec.parse("org/name@v1.0").revision == "v1.0"
    assert PullSpec.parse("org/name@refs/pr/1").revision == "refs/pr/1"
    assert PullSpec.parse(f"org/name@{COMMIT}").revision == COMMIT
    spec = PullSpec.parse("org/data@dev", repo_type="dataset", include=("*.json",))
    assert (spec.repo_id, spec.revision, spec.repo_type, spec.include) == (
        "org/data", "dev", "dataset", ("*.json",))


@pytest.mark.parametrize("repo_id", HOSTILE_REPOS)
def test_pull_spec_refuses_hostile_repo_ids(repo_id):
    with pytest.raises(BadRequest):
        PullSpec.parse(repo_id)
    with pytest.raises(BadRequest):
        PullSpec.parse(f"{repo_id}@main")


@pytest.mark.parametrize("revision", ["", *HOSTILE_REVISIONS])
def test_pull_spec_refuses_hostile_revisions(revision):
    with pytest.raises(BadRequest):
        PullSpec.parse(f"org/name@{revision}")


def files(*paths: str) -> tuple[ManifestFile, ...]:
    return tuple(ManifestFile(p, 1, "0" * 64, "0" * 40, False) for p in paths)


REPO_FILES = files(".gitattributes", "README.md", "config.json", "model.safetensors",
                   "1_Pooling/config.json", "onnx/model.onnx", "onnx/deep/x.json", "vocab.txt")


def paths(chosen) -> list[str]:
    return [f.path for f in chosen]


def test_select_without_patterns_takes_everything():
    assert paths(select(REPO_FILES, (), ())) == paths(REPO_FILES)


def test_select_include_is_an_fnmatch_on_the_whole_path():
    assert paths(select(REPO_FILES, ("*.json",), ())) == [
        "config.json", "1_Pooling/config.json", "onnx/deep/x.json"]
    assert paths(select(REPO_FILES, ("config.json",), ())) == ["config.json"]
    assert paths(select(REPO_FILES, ("*.json", "*.txt"), ())) == [
        "config.json", "1_Pooling/config.json", "onnx/deep/x.json", "vocab.txt"]
    assert paths(select(REPO_FILES, ("nothing*",), ())) == []


def test_select_a_folder_pattern_takes_everything_under_it():
    assert paths(select(REPO_FILES, ("onnx/",), ())) == ["onnx/model.onnx", "onnx/deep/x.json"]
    assert paths(select(REPO_FILES, (), ("onnx/",))) == [
        ".gitattributes", "README.md", "config.json", "model.safetensors",
        "1_Pooling/config.json", "vocab.txt"]


def test_select_exclude_wins_over_include():
    assert paths(select(REPO_FILES, ("*.json",), ("1_Pooling/*",))) == [
        "config.json", "onnx/deep/x.json"]
    assert paths(select(REPO_FILES, ("*",), ("*",))) == []


# -- pull: whose bytes ---------------------------------------------------------------------------


class Counted:
    """What a pull's session counted: (peer id, ip, port) → bytes, per info-hash, and the
    payload libtorrent says it received (by default, exactly what was counted)."""

    def __init__(self, sources: dict, received: dict | None = None, redundant: int = 0):
        self.sources = sources
        self.received = received or {k: sum(v.values()) for k, v in sources.items()}
        self.redundant = redundant

    def status(self, key: str) -> SimpleNamespace:
        return SimpleNamespace(downloaded=self.received[key], redundant=self.redundant)


def test_payload_no_block_accounted_for_is_reported_apart_not_guessed():
    item = Large(files("model.safetensors")[0], b"", [], [], 4 << 20, key="12" * 20)
    session = Counted({"12" * 20: {(b"-WP0100-" + bytes(12), "127.0.0.1", 7000): 60}},
                      received={"12" * 20: 100})
    result = PullResult("org/name", COMMIT, MIRROR, [], 100)
    account(session, [item], set(), result)
    assert (result.from_peers, result.unattributed) == (60, 40)


def test_blocks_received_twice_are_redundant_not_unattributed():
    item = Large(files("model.safetensors")[0], b"", [], [], 4 << 20, key="12" * 20)
    session = Counted({"12" * 20: {(b"-WP0100-" + bytes(12), "127.0.0.1", 7000): 60}},
                      received={"12" * 20: 100}, redundant=32)
    result = PullResult("org/name", COMMIT, MIRROR, [], 100)
    account(session, [item], set(), result)
    assert (result.from_peers, result.redundant, result.unattributed) == (60, 32, 8)


def test_bytes_are_credited_by_the_senders_peer_id_whatever_its_port():
    item = Large(files("model.safetensors")[0], b"", [], [], 4 << 20, key="ab" * 20, seeded_web=True)
    mirror, peer, aria = b"-WM0100-" + b"m" * 12, b"-WP0100-" + b"p" * 12, b"A2-1-36-0-" + b"a" * 10
    session = Counted({"ab" * 20: {
        (mirror, "127.0.0.1", 6881): 100,
        (peer, "127.0.0.1", 41234): 20,  # a peer that dialled us: an ephemeral port
        (aria, "127.0.0.2", 7000): 3,
        (bytes(20), "127.0.0.1", 8470): 5,  # a web seed has no peer id
    }})
    result = PullResult("org/name", COMMIT, MIRROR, [], 128)
    account(session, [item], set(), result)
    assert (result.from_mirrors, result.from_peers, result.from_web_seeds) == (100, 23, 5)
    assert result.by_peer == {"127.0.0.1:6881": 100, "127.0.0.1:41234": 20, "127.0.0.2:7000": 3}
    assert result.bittorrent_bytes == 128
    assert result.web_seeds_added == 1


def test_a_pull_needs_a_mirror_to_ask():
    with pytest.raises(BadRequest, match="index"):
        Pull(PeerConfig(), Path("/nonexistent"), PullSpec("org/name"))
    assert Pull(PeerConfig(index="http://i"), Path("/nonexistent"),
                PullSpec("org/name")).mirrors == [], "the index will say where"
    job = Pull(PeerConfig(mirrors=("http://a/",)), Path("/nonexistent"), PullSpec("org/name"))
    assert job.mirrors == ["http://a"]


def test_a_super_seeding_mirror_is_known_by_its_listen_endpoint():
    """A super-seeding mirror shows a random peer id; mirrors never dial out, so its bytes
    arrive on its listen endpoint, which its index names."""
    item = Large(files("model.safetensors")[0], b"", [], [], 4 << 20, key="cd" * 20)
    session = Counted({"cd" * 20: {(os.urandom(20), "127.0.0.1", 6881): 70,
                                   (os.urandom(20), "127.0.0.1", 7000): 30}})
    result = PullResult("org/name", COMMIT, MIRROR, [], 100)
    account(session, [item], {("127.0.0.1", 6881)}, result)
    assert (result.from_mirrors, result.from_peers, result.from_web_seeds) == (70, 30, 0)


def test_a_web_seed_is_known_by_its_urls_endpoint_whatever_peer_id_libtorrent_gives_it():
    item = Large(files("model.safetensors")[0], b"", [],
                  ["http://127.0.0.1:8470/blobs/sha256/" + "0" * 64], 4 << 20, key="ef" * 20)
    session = Counted({"ef" * 20: {(os.urandom(20), "127.0.0.1", 8470): 40,
                                   (b"-WP0100-" + os.urandom(12), "127.0.0.1", 8470 + 1): 60}})
    result = PullResult("org/name", COMMIT, MIRROR, [], 100)
    account(session, [item], set(), result)
    assert (result.from_mirrors, result.from_peers, result.from_web_seeds) == (0, 60, 40)
    assert result.by_peer == {"127.0.0.1:8471": 60}


def test_web_seeds_join_after_the_grace_with_no_peer_and_later_with_peers():
    item = Large(files("model.safetensors")[0], b"", [], [], 4 << 20, last_progress=100.0)
    alone = SimpleNamespace(is_seeding=False, peers=0)
    with_peers = SimpleNamespace(is_seeding=False, peers=2)
    assert not web_seeds_due(item, alone, 104.9, 5.0)
    assert web_seeds_due(item, alone, 105.0, 5.0)
    assert not web_seeds_due(item, with_peers, 119.9, 5.0), "peers get four times the grace"
    assert web_seeds_due(item, with_peers, 120.0, 5.0)
    assert not web_seeds_due(item, SimpleNamespace(is_seeding=True, peers=0), 500.0, 5.0)
    item.seeded_web = True
    assert not web_seeds_due(item, alone, 500.0, 5.0), "web seeds are added once"


def torrent_for(size: int = 5 << 20) -> tuple[ManifestFile, dict]:
    info = {b"length": size, b"name": b"ab" * 32, b"piece length": 4 << 20,
            b"pieces": bytes(40)}
    return ManifestFile("model.safetensors", size, "ab" * 32, None, True, info_hash(info)), info


def test_a_mirrors_torrent_gives_libtorrent_its_info_dict_alone_and_holds_web_seeds_apart():
    f, info = torrent_for()
    data = bencode({"announce": "http://t/announce",
                    "announce-list": [["http://t/announce"], ["http://u/announce"]],
                    "info": info, "url-list": "http://m/blobs/sha256/" + "ab" * 32})
    item = read_torrent(data, f, ["http://m", "http://n"])
    assert item.torrent == bencode({"info": info}), "no trackers, no web seeds inside"
    assert item.trackers == ["http://t/announce", "http://u/announce"]
    assert item.web_seeds == ["http://m/blobs/sha256/" + "ab" * 32,
                              "http://n/blobs/sha256/" + "ab" * 32]
    assert (item.piece_length, item.pieces) == (4 << 20, 2)


def test_a_torrent_from_a_mirror_is_refused_unless_canonical_and_the_one_the_manifest_signs():
    f, info = torrent_for()
    with pytest.raises(IntegrityError):
        read_torrent(bencode({"info": {**info, b"private": 1}}), f, [])
    canonical = bencode({"info": info})
    with pytest.raises(BencodeError):
        read_torrent(canonical + b"x", f, [])
    unsorted = (b"d4:infod4:name64:" + b"ab" * 32 + b"6:lengthi%de" % f.size
                + b"12:piece lengthi%de6:pieces40:" % (4 << 20) + bytes(40) + b"ee")
    with pytest.raises(BencodeError):  # keys out of order: libtorrent's bdecode takes it
        read_torrent(unsorted, f, [])


@pytest.mark.parametrize("extra", [
    {"announce-list": b"http://t/announce"},
    {"announce-list": [[1]]},
    {"announce": 7},
    {"url-list": [["http://m/"]]},
    {"url-list": b"\xff\xfe"},  # not UTF-8
])
def test_a_torrent_with_malformed_trackers_or_web_seeds_is_refused_with_a_value_error(extra):
    f, info = torrent_for()
    with pytest.raises(ValueError):  # the pull asks the next mirror, never a traceback
        read_torrent(bencode({**extra, "info": info}), f, [])


# -- the disk-space check, before any byte is fetched ---------------------------------------------

MiB = 1024 * 1024


def big_file(size: int) -> ManifestFile:
    return ManifestFile("model.safetensors", size, "ab" * 32, None, True)


def test_a_pull_that_would_not_fit_is_refused_up_front(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(InsufficientSpace) as refused:
        check_space(tmp_path, [big_file(free + 512 * MiB)])
    assert refused.value.needed == free + 512 * MiB
    assert str(tmp_path) in str(refused.value)
    assert "min_free" not in str(refused.value), "a pull keeps no mirror reserve"


def test_what_an_interrupted_pull_already_holds_counts_toward_the_space(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    f = big_file(free + 512 * MiB)
    partial = tmp_path / f"{etag_of(f.sha256, f.git_sha1, f.lfs)}.wspart"
    with open(partial, "wb") as out:
        out.truncate(1024 * MiB)  # sparse: it takes no space of its own
    check_space(tmp_path, [f])  # 512 MiB less than free: fits


def test_a_pull_whose_mirrors_cannot_be_reached_says_so_in_one_line_not_no_mirror_has(
        tmp_path):
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    done = subprocess.run(
        [sys.executable, "-m", "mirror.cli", "--home", str(tmp_path / "home"), "pull", "org/m",
         "--mirror", f"http://127.0.0.1:{closed}", "--mirror", "http://no-such-mirror.invalid"],
        env={**os.environ, "HF_HUB_CACHE": str(tmp_path / "cache")}, capture_output=True,
        text=True, timeout=60)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert "no mirror answered for org/m@main" in errors[0], "unreachable is not 'missing'"
    assert f"could not reach 127.0.0.1:{closed}: the connection was refused" in errors[0]
    assert "could not reach no-such-mirror.invalid: its name does not resolve (DNS)" in errors[0]
    assert "check peer.mirrors or --mirror" in errors[0]
    assert "Traceback" not in done.stderr and "ConnectionKey" not in done.stderr
