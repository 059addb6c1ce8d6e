"""Which paths a repo's `.gitattributes` routes through LFS (`filter=lfs`).

Git's wildmatch, the subset that model repos use: a pattern without `/` matches the file name
at any depth; one with `/` matches the whole path from the repo root; `*` and `?` stay inside a
folder, `**` crosses folders, `[...]` is a character class. Later lines override earlier ones
(`-filter`, `!filter` or another `filter=` driver unsets).
"""

from __future__ import annotations

import re


def _translate(pattern: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("/**", i) and i + 3 == len(pattern):
            out.append("/.*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            end = pattern.find("]", i + 2)
            if end == -1:
                out.append(re.escape(c))
                i += 1
            else:
                body = pattern[i + 1 : end].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z")


class LfsRules:
    def __init__(self, text: str = ""):
        self._rules: list[tuple[re.Pattern[str], bool, bool]] = []
        for line in text.splitlines():
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            pattern, attrs = fields[0], fields[1:]
            filters = [a for a in attrs if a in ("-filter", "!filter") or a.startswith("filter=")]
            if not filters:
                continue
            value = filters[-1] == "filter=lfs"
            anchored = "/" in pattern.rstrip("/")
            self._rules.append((_translate(pattern.lstrip("/")), anchored, value))

    def __bool__(self) -> bool:
        return bool(self._rules)

    def is_lfs(self, path: str) -> bool | None:
        """True or False when a rule decides, None when none matches."""
        name = path.rsplit("/", 1)[-1]
        decided = None
        for regex, anchored, value in self._rules:
            if regex.match(path if anchored else name):
                decided = value
        return decided
