"""peer.gitattributes.LfsRules: which paths a repo's .gitattributes routes through LFS."""

from __future__ import annotations

import pytest

from peer.gitattributes import LfsRules

HF_GITATTRIBUTES = """\
# the stock Hugging Face .gitattributes, abridged
*.bin filter=lfs diff=lfs merge=lfs -text
saved_model/**/* filter=lfs diff=lfs merge=lfs -text
*tfevents* filter=lfs diff=lfs merge=lfs -text
model.safetensors filter=lfs diff=lfs merge=lfs -text
"""


@pytest.fixture
def rules() -> LfsRules:
    return LfsRules(HF_GITATTRIBUTES)


@pytest.mark.parametrize(
    "path",
    [
        "x.bin",
        "x/y.bin",
        "deep/er/pytorch_model.bin",
        "saved_model/a/b",
        "saved_model/variables/variables.data-00000-of-00001",
        "saved_model/a",
        "events.out.tfevents.1",
        "runs/events.out.tfevents.1700000000.host",
        "model.safetensors",
        "sub/model.safetensors",
    ],
)
def test_standard_hf_rules_route_these_paths_through_lfs(rules, path):
    assert rules.is_lfs(path) is True, f"{path} should be LFS under the stock HF .gitattributes"


@pytest.mark.parametrize(
    "path",
    ["config.json", "README.md", "model.safetensors.index.json", "other.safetensors", "x.bin.txt", "x/saved_model/a"],
)
def test_standard_hf_rules_decide_nothing_for_other_paths(rules, path):
    assert rules.is_lfs(path) is None, f"no rule should match {path}"


def test_a_later_minus_filter_line_overrides_an_earlier_lfs_line():
    r = LfsRules(HF_GITATTRIBUTES + "small.bin -filter\n")
    assert r.is_lfs("small.bin") is False, "the later '-filter' should win"
    assert r.is_lfs("a/small.bin") is False
    assert r.is_lfs("big.bin") is True, "other .bin files stay LFS"


def test_a_later_bang_filter_line_overrides_an_earlier_lfs_line():
    assert LfsRules("*.bin filter=lfs\n*.bin !filter\n").is_lfs("a.bin") is False


def test_a_later_lfs_line_overrides_an_earlier_minus_filter():
    assert LfsRules("*.bin -filter\n*.bin filter=lfs\n").is_lfs("a.bin") is True


def test_lines_without_a_filter_attribute_change_nothing():
    assert LfsRules("*.bin filter=lfs\n*.bin -text diff\n").is_lfs("a.bin") is True


def test_a_later_filter_with_another_driver_overrides_lfs():
    assert LfsRules("*.bin filter=lfs\n*.bin filter=other\n").is_lfs("a.bin") is False


def test_comments_and_blank_lines_are_ignored():
    r = LfsRules("# *.json filter=lfs\n\n   \n  # *.txt filter=lfs\n*.bin filter=lfs\n")
    assert r.is_lfs("config.json") is None, "a commented-out rule must not apply"
    assert r.is_lfs("notes.txt") is None
    assert r.is_lfs("a.bin") is True


def test_empty_rules_are_falsy_and_decide_nothing():
    r = LfsRules("# nothing\n")
    assert not r
    assert r.is_lfs("a.bin") is None
    assert LfsRules(HF_GITATTRIBUTES)


@pytest.mark.parametrize(
    "pattern, path, expected",
    [
        ("/model.bin", "model.bin", True),
        ("/model.bin", "sub/model.bin", None),
        ("data/*.bin", "data/a.bin", True),
        ("data/*.bin", "data/x/a.bin", None),
        ("data/**", "data/x/a.bin", True),
        ("**/ckpt/*", "a/b/ckpt/w", True),
        ("**/ckpt/*", "ckpt/w", True),
        ("w?.bin", "w1.bin", True),
        ("w?.bin", "w12.bin", None),
        ("w[0-9].pt", "w7.pt", True),
        ("w[!0-9].pt", "w7.pt", None),
        ("w[!0-9].pt", "wx.pt", True),
    ],
)
def test_wildmatch_subset(pattern, path, expected):
    assert LfsRules(f"{pattern} filter=lfs\n").is_lfs(path) is expected, (
        f"{pattern!r} on {path!r} should give {expected}"
    )
