"""peer/patterns.py: `--include` and `--exclude` take what `hf download --include` takes, held
to the real `huggingface_hub.utils.filter_repo_objects` on the same file lists."""

from __future__ import annotations

import itertools

import pytest

from peer.patterns import select

filter_repo_objects = pytest.importorskip("huggingface_hub.utils").filter_repo_objects

PATHS = [
    ".gitattributes", "README.md", "config.json", "Config.JSON", "model.safetensors",
    "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
    "pytorch_model.bin", "tokenizer.json", "tokenizer_config.json", "sub/config.json",
    "1_Pooling/config.json", "onnx/model.onnx", "onnx/deep/x.json", "onnxruntime/model.onnx",
    "original/consolidated.00.pth", "a[1].txt", ".hidden/file.txt", "docs/.keep",
]

PATTERNS = [
    "*", "*.json", "config.json", "*config.json", "*/config.json", "*.JSON", "onnx/", "onnx",
    "onnx/*", "onnx*", "onnx/deep/", "*/", "sub/*.json", "**/*.json", "*.safetensors",
    "model-0000?-of-00002.safetensors", "model-*-of-*.safetensors", "[a-c]*", "[!.]*", ".*",
    "README*", "1_Pooling/", "1_Pooling\\", "sub\\config.json", "tokenizer*", "a[[]1].txt",
    "*.md", "original/*", "nothing*", "",
]


def ours(include=(), exclude=()) -> list[str]:
    return select(PATHS, include, exclude, key=lambda p: p)


def theirs(include=None, exclude=None) -> list[str]:
    return list(filter_repo_objects(PATHS, allow_patterns=include, ignore_patterns=exclude))


def test_the_table_is_big_enough_to_mean_something():
    assert len(PATTERNS) >= 20 and len(PATHS) >= 10


@pytest.mark.parametrize("pattern", PATTERNS)
def test_an_include_pattern_takes_what_huggingface_hub_takes(pattern):
    assert ours(include=[pattern]) == theirs(include=[pattern]), \
        f"--include {pattern!r} should take what hf download's allow_patterns takes"


@pytest.mark.parametrize("pattern", PATTERNS)
def test_an_exclude_pattern_drops_what_huggingface_hub_drops(pattern):
    assert ours(exclude=[pattern]) == theirs(exclude=[pattern]), \
        f"--exclude {pattern!r} should drop what hf download's ignore_patterns drops"


@pytest.mark.parametrize("include, exclude",
                         list(itertools.combinations(PATTERNS[:12], 2))
                         + [(("*.json", "*.md"), ("sub/*", "onnx/")),
                            (("*.safetensors", "config.json"), ("*00002*",))])
def test_include_and_exclude_together_agree_with_huggingface_hub(include, exclude):
    include = [include] if isinstance(include, str) else list(include)
    exclude = [exclude] if isinstance(exclude, str) else list(exclude)
    assert ours(include, exclude) == theirs(include, exclude)


def test_no_include_pattern_takes_everything_as_huggingface_hub_without_allow_patterns():
    assert ours() == theirs() == PATHS
    assert ours(include=()) == theirs(include=None), \
        "an empty --include is no filter (allow_patterns=[] would take nothing)"


def test_a_name_pattern_does_not_reach_into_folders():
    assert ours(include=["config.json"]) == ["config.json"], \
        "config.json is the top-level file only, as in hf download"
    assert ours(include=["*.json"]) == [
        "config.json", "tokenizer.json", "tokenizer_config.json", "sub/config.json",
        "1_Pooling/config.json", "onnx/deep/x.json"], "* crosses folders"
    assert ours(include=["*.json"]) != ours(include=["*.JSON"]), "case-sensitive"


def test_select_reads_the_path_attribute_by_default():
    class File:
        def __init__(self, path: str):
            self.path = path

    files = [File(p) for p in PATHS]
    assert [f.path for f in select(files, ["onnx/"], ["*/deep/*"])] == ["onnx/model.onnx"]
