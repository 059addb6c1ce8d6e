"""peer.hfformat: git hashes, LFS pointers, derived commits, dates, tree oids, card data."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from datetime import UTC, datetime

import pytest

from peer.hfformat import (
    LFS_MIN_SIZE,
    FileEntry,
    card_data,
    derived_commit,
    directory_oids,
    git_blob_sha1,
    is_lfs_by_rule,
    iso_z,
    lfs_pointer,
    lfs_pointer_sha1,
    pointer_size,
)

HELLO = b"hello\n"
HELLO_SHA256 = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
HELLO_GIT_SHA1 = "ce013625030ba8dba906f756967f9e9ca394464a"
HELLO_POINTER_SHA1 = "fa61e1ef71c9908c0926776a4aa3504b3a27f159"
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"

#: DESIGN.md section 2 asks for a pinned vector; computed once from the rule and pasted here.
PINNED_DERIVED_COMMIT = "1f1b288825068de8f226ff7664430b2c8384171c"


def _entry(path: str, data: bytes, *, lfs: bool = False) -> FileEntry:
    sha = hashlib.sha256(data).hexdigest()
    git = lfs_pointer_sha1(sha, len(data)) if lfs else git_blob_sha1(data)
    return FileEntry(path=path, size=len(data), sha256=sha, git_sha1=git, lfs=lfs)


# --- git blob sha1 and LFS pointers ------------------------------------------------------------


def test_git_blob_sha1_of_hello_is_the_protocols_vector():
    assert git_blob_sha1(HELLO) == HELLO_GIT_SHA1
    assert hashlib.sha256(HELLO).hexdigest() == HELLO_SHA256, "sanity: PROTOCOLS.md sha256 vector"


def test_lfs_pointer_text_is_exactly_the_git_lfs_spec():
    expected = (
        b"version https://git-lfs.github.com/spec/v1\n"
        b"oid sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03\n"
        b"size 6\n"
    )
    assert lfs_pointer(HELLO_SHA256, 6) == expected, "pointer text must match PROTOCOLS.md section 4"


def test_lfs_pointer_of_hello_hashes_to_the_protocols_vector():
    assert git_blob_sha1(lfs_pointer(HELLO_SHA256, 6)) == HELLO_POINTER_SHA1
    assert lfs_pointer_sha1(HELLO_SHA256, 6) == HELLO_POINTER_SHA1


def test_pointer_size_of_6_bytes_is_126_and_the_length_of_the_pointer():
    assert pointer_size(6) == 126
    assert len(lfs_pointer(HELLO_SHA256, 6)) == 126


@pytest.mark.parametrize("size", [1, 9, 10, 999, 123_456_789, 10**12, 50 * 2**30])
def test_pointer_size_equals_the_pointer_length_for_any_size(size):
    assert pointer_size(size) == len(lfs_pointer(HELLO_SHA256, size))


def test_pointer_size_of_a_nine_digit_size_is_134():
    assert pointer_size(123_456_789) == 134, "PROTOCOLS.md: 134 for a 9-digit size"


# --- is_lfs_by_rule ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, size, expected",
    [
        ("config.json", LFS_MIN_SIZE - 1, False),
        ("config.json", LFS_MIN_SIZE, True),
        ("data/big.txt", LFS_MIN_SIZE + 1, True),
        ("tokenizer.json", 5 * 2**20, False),
        ("README.md", 0, False),
        ("model.safetensors", 1, True),
        ("a/pytorch_model.bin", 100, True),
        ("MODEL.SAFETENSORS", 100, True),
        ("w.pt", 1, True),
        ("w.pth", 1, True),
        ("w.ckpt", 1, True),
        ("w.gguf", 1, True),
        ("w.onnx", 1, True),
        ("w.h5", 1, True),
        ("flax_model.msgpack", 1, True),
        ("w.npz", 1, True),
        ("w.pkl", 1, True),
        ("model.safetensors", 0, False),
        ("empty.bin", 0, False),
        ("safetensors", 5, False),
        ("model.safetensors.index.json", 5, False),
    ],
)
def test_is_lfs_by_rule_uses_the_10mib_boundary_and_weight_extensions(path, size, expected):
    assert is_lfs_by_rule(path, size) is expected, f"{path} of {size} bytes: LFS should be {expected}"


# --- iso_z -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ts, text",
    [(0, "1970-01-01T00:00:00.000Z"), (1700000000.5, "2023-11-14T22:13:20.500Z")],
)
def test_iso_z_has_milliseconds_and_a_z_suffix(ts, text):
    assert iso_z(ts) == text


@pytest.mark.parametrize("ts", [0, 1.999, 1700000000.123456, 1234567890.001])
def test_iso_z_parses_with_huggingface_hub(ts):
    utils = pytest.importorskip("huggingface_hub.utils")
    text = iso_z(ts)
    assert text.endswith("Z")
    parsed = utils.parse_datetime(text)
    expected = datetime.fromtimestamp(ts, tz=UTC)
    expected = expected.replace(microsecond=expected.microsecond // 1000 * 1000)
    assert parsed == expected, f"parse_datetime({text!r}) should give {expected}"


# --- derived_commit ----------------------------------------------------------------------------


def _vector_files() -> list[FileEntry]:
    return [
        _entry("b.txt", b"abc"),
        _entry("a/x.bin", bytes(range(8)), lfs=True),
        _entry("é.txt", "é\n".encode()),
    ]


def _derived_commit_by_hand(files: list[FileEntry]) -> str:
    lines = sorted(
        (f.path.encode("utf-8"), b"%s\0%d\0%s\n" % (f.path.encode("utf-8"), f.size, f.sha256.encode()))
        for f in files
    )
    return hashlib.sha1(b"".join(line for _, line in lines)).hexdigest()


def test_derived_commit_follows_the_documented_rule():
    files = _vector_files()
    assert files[0].sha256 == hashlib.sha256(b"abc").hexdigest() and files[0].size == 3
    assert derived_commit(files) == _derived_commit_by_hand(files), (
        "derived_commit should be sha1 over 'path\\0size\\0sha256\\n' sorted by UTF-8 path bytes"
    )


def test_derived_commit_pinned_vector():
    assert derived_commit(_vector_files()) == PINNED_DERIVED_COMMIT, (
        "the derived commit of the pinned vector changed: every folder/Kaggle snapshot id would change"
    )


def test_derived_commit_does_not_depend_on_input_order():
    files = _vector_files()
    orders = [files, files[::-1], [files[1], files[2], files[0]]]
    assert {derived_commit(o) for o in orders} == {PINNED_DERIVED_COMMIT}


def test_derived_commit_changes_with_any_field():
    base = derived_commit(_vector_files())
    changed = _vector_files()
    changed[0] = FileEntry("b.txt", 4, changed[0].sha256, changed[0].git_sha1, False)
    assert derived_commit(changed) != base, "a different size should give a different commit"


def test_derived_commit_is_40_lower_hex():
    c = derived_commit([])
    assert c == hashlib.sha1(b"").hexdigest() and len(c) == 40


# --- directory_oids ----------------------------------------------------------------------------

TREE_FILES = {
    "README.md": b"# model\n",
    "config.json": b'{"a": 1}\n',
    "sub.txt": b"sorts before sub/ in git\n",
    "sub-x/c.txt": b"sorts before sub.txt\n",
    "sub/a.txt": b"a\n",
    "sub/deeper/b.txt": b"b\n",
    "sub/deeper/more/c.txt": b"",
    "z/é.txt": b"unicode\n",
}


def test_directory_oids_of_nothing_is_gits_empty_tree():
    assert directory_oids([]) == {"": EMPTY_TREE}


def test_directory_oids_of_one_file_is_the_hand_built_tree():
    f = _entry("a.txt", HELLO)
    body = b"100644 a.txt\0" + bytes.fromhex(HELLO_GIT_SHA1)
    expected = hashlib.sha1(b"tree %d\0" % len(body) + body).hexdigest()
    assert directory_oids([f]) == {"": expected}


def test_directory_oids_lists_every_folder():
    oids = directory_oids([_entry(p, d) for p, d in TREE_FILES.items()])
    assert set(oids) == {"", "sub", "sub-x", "sub/deeper", "sub/deeper/more", "z"}


def test_directory_oids_do_not_depend_on_input_order():
    files = [_entry(p, d) for p, d in TREE_FILES.items()]
    assert directory_oids(files) == directory_oids(files[::-1])


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_directory_oids_match_git_write_tree(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for path, data in TREE_FILES.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_bytes(data)
        os.chmod(repo / path, 0o644)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "LC_ALL": "C",
    }

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=repo, env=env, capture_output=True, check=True, text=True
        ).stdout.strip()

    git("init", "-q")
    git("add", "-A")
    root_tree = git("write-tree")
    oids = directory_oids([_entry(p, d) for p, d in TREE_FILES.items()])
    assert oids[""] == root_tree, "the root oid should equal `git write-tree`"
    for folder in ("sub", "sub-x", "sub/deeper", "sub/deeper/more", "z"):
        assert oids[folder] == git("rev-parse", f"{root_tree}:{folder}"), (
            f"the oid of {folder!r} should equal git's tree for it"
        )
    ls = dict(
        (line.split("\t")[1], line.split()[2]) for line in git("ls-tree", "-r", root_tree).splitlines()
    )
    for path, data in TREE_FILES.items():
        if path.isascii():
            assert ls[path] == git_blob_sha1(data), f"blob oid of {path} should match git"


# --- card_data ---------------------------------------------------------------------------------


def test_card_data_parses_yaml_front_matter():
    readme = "---\nlicense: mit\ntags:\n- text\n- vision\n---\n# Title\n"
    assert card_data(readme) == {"license": "mit", "tags": ["text", "vision"]}


def test_card_data_accepts_bytes_and_a_byte_order_mark():
    readme = "\ufeff---\nlicense: apache-2.0\n---\nbody\n".encode()
    assert card_data(readme) == {"license": "apache-2.0"}


@pytest.mark.parametrize(
    "readme",
    [
        "",
        "# Just a title\n",
        "text\n---\nlicense: mit\n---\n",
        "---\nlicense: mit\n",  # never closed
        "----\nlicense: mit\n----\n",
        "---\nlicense: [mit\n---\n",  # bad YAML
        "---\n: : :\n  - x\n---\n",  # bad YAML
        "---\n- a\n- b\n---\n",  # a list, not a dict
        "---\njust a string\n---\n",
        "---\n---\n",  # empty front matter
        b"\xff\xfe---\n",
    ],
)
def test_card_data_is_empty_for_no_bad_or_non_dict_front_matter(readme):
    assert card_data(readme) == {}, f"{readme!r} should give {{}}"


def test_card_data_is_empty_for_front_matter_with_an_impossible_date():
    assert card_data("---\nreleased: 2024-13-45\n---\n") == {}
