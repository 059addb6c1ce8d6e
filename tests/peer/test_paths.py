"""peer.paths: names from outside (repo paths, repo ids, revisions) are checked before use."""

from __future__ import annotations

import os

import pytest

from peer.errors import BadRequest, InvalidRepoId, UnsafePath
from peer.paths import (
    check_repo_id,
    check_repo_path,
    check_revision,
    is_commit,
    is_sha256,
    resolve_inside,
)

# --- check_repo_path ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/abs",
        "/",
        "../x",
        "..",
        ".",
        "a/../b",
        "a/..",
        "a//b",
        "a/./b",
        "./a",
        "a\x00b",
        "a\nb",
        "a\x7fb",
        "a\\b",
        "..\\x",
        "C:x",
        "c:/windows",
        "a/",
        "a/b/",
        "a/" * 512 + "b",  # 1025 bytes
        "x" * 256,
        "a/" + "x" * 256,
        "é" * 128,  # 128 characters but 256 UTF-8 bytes in one component
    ],
)
def test_check_repo_path_refuses_unsafe_paths(path):
    with pytest.raises(UnsafePath) as e:
        check_repo_path(path)
    assert isinstance(e.value, BadRequest), "UnsafePath should be a BadRequest (HTTP 400)"
    assert e.value.reason, "the refusal should say why"


@pytest.mark.parametrize(
    "path",
    [
        "a",
        "a/b.safetensors",
        "config.json",
        ".gitattributes",
        "a/.hidden/b",
        "...",
        "a..b",
        "é.txt",
        "模型/权重.safetensors",
        "emoji-🤗.md",
        "with space/and:colon.txt",
        "x" * 255,
    ],
)
def test_check_repo_path_accepts_ordinary_relative_paths(path):
    assert check_repo_path(path) == path, f"{path!r} should be accepted unchanged"


def test_check_repo_path_limit_is_1024_bytes_inclusive():
    exactly = "/".join(["d" * 204] * 5)  # 5*204 + 4 slashes = 1024 bytes
    assert len(exactly) == 1024
    assert check_repo_path(exactly) == exactly, "1024 bytes exactly should be accepted"
    with pytest.raises(UnsafePath, match="longer than 1024 bytes"):
        check_repo_path("e" + exactly)


# --- check_repo_id -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "repo_id", ["gpt2", "org/name", "a.b_c-d", "Qwen/Qwen2-7B", "a" * 96, "o" * 96 + "/" + "n" * 96]
)
def test_check_repo_id_accepts_hf_style_ids(repo_id):
    assert check_repo_id(repo_id) == repo_id


@pytest.mark.parametrize(
    "repo_id",
    [
        "",
        "a/b/c",
        "a--b",
        "org/a--b",
        "a..b",
        ".a",
        "a.",
        "-a",
        "a-",
        "org/.a",
        "x.git",
        "org/x.git",
        "/name",
        "org/",
        "a" * 97,
        "org/" + "a" * 97,
        "a" * 97 + "/name",
        "modèle",
        "org/模型",
        "a b",
        "a\x00b",
    ],
)
def test_check_repo_id_refuses_what_hf_refuses(repo_id):
    with pytest.raises(InvalidRepoId):
        check_repo_id(repo_id)


@pytest.mark.parametrize("repo_id", ["gpt2\n", "org/name\n"])
def test_check_repo_id_refuses_a_trailing_newline(repo_id):
    with pytest.raises(InvalidRepoId):
        check_repo_id(repo_id)


# --- is_commit / is_sha256 ---------------------------------------------------------------------


def test_is_commit_and_is_sha256_accept_lower_case_hex_of_the_right_length():
    assert is_commit("0123456789abcdef" * 2 + "01234567")
    assert is_sha256("0123456789abcdef" * 4)
    assert not is_commit("A" * 40), "commits are lower-case hex"
    assert not is_sha256("a" * 63) and not is_sha256("a" * 65)


@pytest.mark.parametrize("check, value", [(is_commit, "a" * 40 + "\n"), (is_sha256, "a" * 64 + "\n")])
def test_is_commit_and_is_sha256_refuse_a_trailing_newline(check, value):
    assert not check(value), f"{check.__name__} should refuse {value!r}"


# --- check_revision ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "revision", ["main", "refs/pr/1", "v1.0", "feature/x-y", "a" * 40, "release_2024.01", "a" * 256]
)
def test_check_revision_accepts_git_ref_names(revision):
    assert check_revision(revision) == revision


@pytest.mark.parametrize(
    "revision",
    [
        "",
        "a" * 257,
        # empty, '.' or '..' components, or one starting with '.'
        ".",
        "..",
        "a/../b",
        "a/./b",
        "a//b",
        "/main",
        "main/",
        ".hidden",
        "refs/.x",
        # control characters and the characters git refuses
        "a\x00b",
        "a\nb",
        "a\x7fb",
        "a b",
        "a~1",
        "a^",
        "a:b",
        "a?",
        "a*",
        "a[b",
        "a\\b",
        # sequences git refuses
        "a@{1}",
        "main@{upstream}",
        "main.",
        "refs/pr/1.",
        "main.lock",
        "refs/x.lock/y",
    ],
)
def test_check_revision_refuses_what_git_refuses(revision):
    with pytest.raises(UnsafePath):
        check_revision(revision)


@pytest.mark.parametrize("revision", ["a..b", "main..dev", "@"])
def test_check_revision_refuses_double_dot_anywhere_and_a_lone_at_sign(revision):
    with pytest.raises(UnsafePath):
        check_revision(revision)


# --- resolve_inside ----------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    (r / "sub").mkdir(parents=True)
    (r / "sub" / "file.txt").write_text("inside")
    return r


def test_resolve_inside_returns_the_real_path_inside_the_root(root):
    assert resolve_inside(root, "sub/file.txt") == (root / "sub" / "file.txt").resolve()


def test_resolve_inside_accepts_a_symlink_that_stays_inside(root):
    os.symlink(root / "sub", root / "alias")
    assert resolve_inside(root, "alias/file.txt") == (root / "sub" / "file.txt").resolve()


def test_resolve_inside_refuses_a_symlinked_folder_pointing_outside(root, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("nope")
    os.symlink(outside, root / "escape")
    with pytest.raises(UnsafePath, match="resolves outside"):
        resolve_inside(root, "escape/secret")


def test_resolve_inside_refuses_a_symlinked_file_pointing_outside(root, tmp_path):
    (tmp_path / "secret").write_text("nope")
    os.symlink(tmp_path / "secret", root / "link")
    with pytest.raises(UnsafePath, match="resolves outside"):
        resolve_inside(root, "link")


def test_resolve_inside_refuses_a_dotdot_path_before_touching_the_file_system(root):
    with pytest.raises(UnsafePath):
        resolve_inside(root, "../root/sub/file.txt")
