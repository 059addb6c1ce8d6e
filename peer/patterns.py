"""Which paths `--include` and `--exclude` take: the rule of huggingface_hub's `allow_patterns`
and `ignore_patterns` (`huggingface_hub.utils.filter_repo_objects`), for `weightswarm pull` and
`weightswarm mirror sync` alike, so that a user's `hf download --include` habits carry over.

- A pattern is matched against the whole path with `fnmatch.fnmatchcase`: case-sensitive on
  every platform, and `*` crosses `/`. So `*.json` takes `sub/config.json`, and `config.json`
  takes `config.json` only (the sync used to match the base name too; it no longer does).
- A pattern ending in `/` names a folder: `onnx/` is `onnx/*`, everything under it.
- A backslash counts as `/`, in patterns and paths (a pattern built with `os.path.join` on
  Windows).
- A path is taken when it matches an include pattern, or none is given, and no exclude
  pattern.

One difference, on purpose: no include pattern at all means everything, as the CLI's empty
`--include` does; `filter_repo_objects(allow_patterns=[])` would take nothing.
tests/peer/test_patterns.py holds the two to the same answers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from fnmatch import fnmatchcase
from operator import attrgetter
from typing import TypeVar

T = TypeVar("T")


def select(items: Iterable[T], include: Iterable[str] = (), exclude: Iterable[str] = (), *,
           key: Callable[[T], str] = attrgetter("path")) -> list[T]:
    """The items whose path (`key`, by default the `path` attribute) the patterns take, in
    their order."""
    allow = [_pattern(p) for p in include]
    ignore = [_pattern(p) for p in exclude]
    chosen = []
    for item in items:
        path = key(item).replace("\\", "/")
        if allow and not any(fnmatchcase(path, p) for p in allow):
            continue
        if any(fnmatchcase(path, p) for p in ignore):
            continue
        chosen.append(item)
    return chosen


def _pattern(text: str) -> str:
    text = text.replace("\\", "/")
    return text + "*" if text.endswith("/") else text
