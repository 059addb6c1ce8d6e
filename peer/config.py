"""Settings declared once, beside the frozen dataclass of the role that reads them (DESIGN.md
section 8).

A role declares its section: each setting's key, type, default and help, a check where the type
says too little, and how the checked values become the role's dataclass (derived values
included). The file's keys, the `WEIGHTSWARM_<SECTION>_<KEY>` variables, the keys of the flags'
overrides, the CLI's help and the example file (`render_example`) all come from these
declarations. `read_settings` merges defaults < file < environment < flags, checks every value
with the same code whatever its source, and reports every bad one at once, each with where it
came from: a line of the file, a variable, the command line.

Nothing here knows a role: the peer, the tracker and the mirror each declare theirs with it
(peer/ imports nothing of the others).
"""

from __future__ import annotations

import json
import logging
import math
import re
import textwrap
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from .errors import ConfigError
from .paths import ascii_digits

log = logging.getLogger(__name__)
T = TypeVar("T")


class _Required:
    def __repr__(self) -> str:
        return "required"


#: the default of a key that a table must give (`[[mirror.sync]] spec`)
REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Setting:
    key: str
    #: str, int, float, bool or list (from the environment: comma-separated); object: no
    #: conversion, the check takes the value as the file gives it
    type: type
    default: Any
    help: str
    #: the converted value -> the value kept; raises ValueError(why), `why` reading on from the
    #: setting's name: "must be 0-65535, got 70000"
    check: Callable[[Any], Any] | None = None
    #: variables read, in order, when neither the file, nor the setting's own variable, nor a
    #: flag gives a value (a hub's usual token variables); a tuple of names joins their values
    #: with ":" (a user name and a key)
    fallback_env: tuple[str | tuple[str, ...], ...] = ()
    #: what no value means, for the help ("unlimited"); default: "none"
    unset: str = "none"


@dataclass(frozen=True)
class Tables:
    """`[[<section>.<key>]]`: an array of tables, from the file only, each table checked by its
    own settings and built into one item of a tuple."""

    key: str
    settings: tuple[Setting, ...]
    build: Callable[[Mapping[str, Any]], Any]
    #: one table as the example file shows it (`render_example`): a value for every REQUIRED
    #: key, the defaults for the keys it leaves out
    example: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Section(Generic[T]):
    #: dotted, as in the file: "mirror", "mirror.upstreams.huggingface"
    name: str
    entries: tuple[Setting | Tables | Subsections, ...]
    #: the checked values by key (a Tables' key: its tuple of items; a Subsections' key: the
    #: built dataclasses by name) -> the role's dataclass
    build: Callable[[Mapping[str, Any]], T]

    def env(self, setting: Setting) -> str:
        return f"WEIGHTSWARM_{self.name.upper().replace('.', '_')}_{setting.key.upper()}"

    @property
    def settings(self) -> tuple[Setting, ...]:
        """Its own keys (not its arrays of tables, nor the sections nested in it)."""
        return tuple(e for e in self.entries if isinstance(e, Setting))


@dataclass(frozen=True)
class Subsections:
    """`[<section>.<key>.<name>]` for each name, each a section of its own (one upstream a
    hub)."""

    key: str
    sections: Mapping[str, Section]


class BadSettings(ConfigError, ValueError):
    """Every bad value at once, each with where it came from."""

    def __init__(self, problems: Sequence[str]):
        self.problems = tuple(problems)
        super().__init__(self.problems[0] if len(self.problems) == 1 else
                         f"{len(self.problems)} bad settings:\n  " + "\n  ".join(self.problems))


# -- checks: the converted value -> the value kept, or ValueError(why) ---------------------------


def port(value: int) -> int:
    if not 0 <= value <= 65535:
        raise ValueError(f"must be 0-65535, got {value}")
    return value


def listen(value: str) -> str:
    host, sep, number = value.rpartition(":")
    given = ascii_digits(number)
    if not sep or not host or given is None or given > 65535:
        raise ValueError(f"must be host:port, got {value!r}")
    return value


def http_url(value: str) -> str:
    """A base URL, without its trailing slash."""
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"must start with http:// or https://, got {value!r}")
    return value.rstrip("/")


def positive(unit: str) -> Callable[[float], float]:
    def check(value: float) -> float:
        if value <= 0:
            raise ValueError(f"must be a positive number of {unit}, got {value}")
        return value

    return check


def not_negative(value: float) -> float:
    if value < 0:
        raise ValueError(f"must be 0 or more, got {value}")
    return value


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(*, a_minute_or_more: bool = False) -> Callable[[Any], float]:
    """Seconds from 3600, "3600", "90m", "6h" or "1d"."""

    def check(value: Any) -> float:
        text = str(value).strip().lower()
        try:
            seconds = (float(text[:-1]) * _UNITS[text[-1]] if text and text[-1] in _UNITS
                       else float(text))
        except ValueError:
            seconds = math.nan
        if not math.isfinite(seconds):
            raise ValueError(f"is not a duration (e.g. 3600, 90m, 6h): {value!r}")
        if seconds < 0:
            raise ValueError(f"is negative: {value!r}")
        if a_minute_or_more and seconds < 60:
            raise ValueError(f"is under a minute (the least is 60 s): {value!r}")
        return seconds

    return check


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def convert(kind: type, value: Any) -> Any:
    """A value from the file (TOML-typed) or the environment (text) as `kind`."""
    if kind is object:
        return value
    if kind is bool:
        text = str(value).strip().lower()
        if isinstance(value, bool) or text in _TRUE + _FALSE:
            return value if isinstance(value, bool) else text in _TRUE
    elif kind is list:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
    elif not isinstance(value, bool | list | dict):
        try:
            return kind(value)
        except (TypeError, ValueError):
            pass
    raise ValueError(f"must be a {kind.__name__}, got {value!r}")


# -- where a key is in the file ------------------------------------------------------------------

_PART = r"""(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
_HEADER = re.compile(r"\s*(\[\[?)([^\[\]]+)\]\]?\s*(?:#.*)?$")
_KEY = re.compile(rf"\s*({_PART}(?:\s*\.\s*{_PART})*)\s*=")


def _dotted(text: str) -> str:
    return ".".join(part.strip().strip("\"'") for part in text.split("."))


def find_line(text: str, table: str, key: str | None = None,
              index: int | None = None) -> int | None:
    """The line (from 1) of a TOML text where `table`'s `key` is set (as `key = ...`, a dotted
    key, or a `[table.key]` header), or where the table starts when `key` is None; `index`
    picks one table of an array of tables (`[[mirror.sync]]`). None when it is nowhere to be
    seen (an inline table, say): tomllib keeps no positions."""
    wanted = f"{table}.{key}" if key else table
    current, seen, in_string = "", -1, False
    for number, line in enumerate(text.splitlines(), 1):
        header = None if in_string else _HEADER.match(line)
        if header:
            current = _dotted(header.group(2))
            if current == table and header.group(1) == "[[":
                seen += 1
            if current == wanted and index in (None, seen):
                return number
            continue
        name = None if in_string else _KEY.match(line)
        if name and f"{current}.{_dotted(name.group(1))}".lstrip(".") == wanted \
                and (index is None or (current == table and seen == index)):
            return number
        if (line.count('"""') + line.count("'''")) % 2:
            in_string = not in_string
    return None


# -- merging and checking ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Raw:
    value: Any
    #: "default", a line of the file, a variable's name, "command line"
    source: str


class _File:
    def __init__(self, path: Path | None):
        self.path = path
        self.text, self.data = "", {}
        if path is not None:
            try:
                self.text = path.read_text()
                self.data = tomllib.loads(self.text)
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
                raise ConfigError(f"{path}: {e}") from None

    def where(self, table: str, key: str | None = None, index: int | None = None) -> str:
        if self.path is None:  # tables given as data (parse_tables)
            return f"{table} table {index + 1}" if index is not None else "given"
        line = find_line(self.text, table, key, index)
        return f"{self.path} line {line}" if line else str(self.path)


def walk(sections: Iterable[Section]) -> Iterator[Section]:
    """Every section, each before the ones nested in it, as a file would have them."""
    for section in sections:
        yield section
        for entry in section.entries:
            if isinstance(entry, Subsections):
                yield from walk(entry.sections.values())


def _flatten(table: dict, arrays: set[str], prefix: str = "") -> Iterator[tuple[str, str, Any]]:
    """(table, key, value) of a TOML document; an array of tables, or a table that is one
    setting's value (an `object` setting), is one value."""
    for key, value in table.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and name not in arrays:
            yield from _flatten(value, arrays, name)
        else:
            yield prefix, key, value


def _from_file(file: _File, sections: list[Section]):
    """The file's values ({(section, key): _Raw}) and arrays of tables ({(section, key): value});
    unknown keys are warned about and ignored."""
    declared = {(s.name, e.key): e for s in sections for e in s.entries
                if isinstance(e, Setting | Tables)}
    arrays = {f"{s}.{k}" for (s, k), e in declared.items()
              if isinstance(e, Tables) or (isinstance(e, Setting) and e.type is object)}
    raws, tables = {}, {}
    for table, key, value in _flatten(file.data, arrays):
        entry = declared.get((table, key))
        if isinstance(entry, Tables):
            tables[(table, key)] = value
        elif entry is not None:
            raws[(table, key)] = _Raw(value, file.where(table, key))
        elif not table:
            log.warning("%s: ignoring top-level key %r (settings live in sections)",
                        file.where(key), key)
        else:
            log.warning("%s: unknown setting %s.%s ignored", file.where(table, key), table, key)
    return raws, tables


def _fallback(setting: Setting, env: Mapping[str, str]) -> _Raw | None:
    for names in setting.fallback_env:
        names = (names,) if isinstance(names, str) else names
        if all(env.get(name) for name in names):
            return _Raw(":".join(env[name] for name in names), " and ".join(names))
    return None


def _merge(sections: list[Section], file: _File, env: Mapping[str, str],
           overrides: Mapping[tuple[str, str], Any], problems: list[str]):
    """Each setting's value and source: defaults < file < environment < flags."""
    raws, tables = _from_file(file, sections)
    for section in sections:
        for setting in section.settings:
            name = (section.name, setting.key)
            if section.env(setting) in env:
                raws[name] = _Raw(env[section.env(setting)], section.env(setting))
            elif name not in raws and (fallback := _fallback(setting, env)):
                raws[name] = fallback
    known = {(s.name, setting.key) for s in sections for setting in s.settings}
    for (section_name, key), value in overrides.items():
        if (section_name, key) not in known:
            problems.append(f"command line: there is no setting {section_name}.{key}")
        elif value is not None:
            raws[(section_name, key)] = _Raw(value, "command line")
    return raws, tables


def _value(setting: Setting, value: Any) -> Any:
    """One setting's value as kept, or ValueError(why)."""
    if value is None or (value == "" and setting.default is None):
        return None  # an empty value leaves a setting that has no default unset
    value = convert(setting.type, value)
    return setting.check(value) if setting.check else value


def _check(table: str, settings: Iterable[Setting], raws: Mapping[str, _Raw], default_source: str,
           problems: list[str]) -> dict[str, Any]:
    values = {}
    for setting in settings:
        raw = raws.get(setting.key) or _Raw(setting.default, default_source)
        if raw.value is REQUIRED:
            problems.append(f"{raw.source}: {table} needs {setting.key}")
            continue
        try:
            values[setting.key] = _value(setting, raw.value)
        except ValueError as e:
            problems.append(f"{raw.source}: {table}.{setting.key} {e}")
    return values


def _tables(file: _File, section: str, tables: Tables, value: Any,
            problems: list[str]) -> tuple:
    name = f"{section}.{tables.key}"
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        problems.append(f"{file.where(section, tables.key)}: {name} must be [[{name}]] tables, "
                        f"got {value!r}")
        return ()
    keys = [s.key for s in tables.settings]
    items = []
    for index, table in enumerate(value):
        before = len(problems)
        problems.extend(f"{file.where(name, key, index)}: {name} takes {', '.join(keys)}, "
                        f"not {key!r}" for key in table if key not in keys)
        raws = {key: _Raw(v, file.where(name, key, index)) for key, v in table.items()}
        values = _check(name, tables.settings, raws, file.where(name, None, index), problems)
        if len(problems) == before:
            items.append(tables.build(values))
    return tuple(items)


def parse_tables(section: str, tables: Tables, value: Any) -> tuple:
    """An array of tables given as data (a test, a tool), checked as the file's would be."""
    problems: list[str] = []
    items = _tables(_File(None), section, tables, value, problems)
    if problems:
        raise BadSettings(problems)
    return items


def read_settings(sections: Sequence[Section], *, path: Path | None, env: Mapping[str, str],
                  overrides: Mapping[tuple[str, str], Any]) -> dict[str, Any]:
    """Each section's dataclass by section name (the nested ones' too), from defaults < the
    file at `path` < `env` < `overrides` (keyed (section, key); None: not given). Raises one
    BadSettings naming every bad value and its source."""
    every, file, problems = list(walk(sections)), _File(path), []
    raws, arrays = _merge(every, file, env, overrides, problems)
    values = {}
    for section in every:
        own = {key: raw for (name, key), raw in raws.items() if name == section.name}
        values[section.name] = _check(section.name, section.settings, own, "default", problems)
        for entry in section.entries:
            if isinstance(entry, Tables):
                values[section.name][entry.key] = _tables(
                    file, section.name, entry, arrays.get((section.name, entry.key), []), problems)
    if problems:
        raise BadSettings(problems)
    built: dict[str, Any] = {}
    for section in reversed(every):  # the nested sections first
        for entry in section.entries:
            if isinstance(entry, Subsections):
                values[section.name][entry.key] = {
                    name: built[sub.name] for name, sub in entry.sections.items()}
        built[section.name] = section.build(values[section.name])
    return built


# -- help ----------------------------------------------------------------------------------------


def _default_text(setting: Setting) -> str:
    if setting.fallback_env:
        return " or ".join("$" + (n if isinstance(n, str) else ":$".join(n))
                           for n in setting.fallback_env)
    if isinstance(setting.default, bool):
        return str(setting.default).lower()
    if isinstance(setting.default, list | tuple):
        return ",".join(setting.default) or setting.unset
    return setting.unset if setting.default is None else str(setting.default)


def describe(sections: Iterable[Section]) -> Iterator[tuple[str, str, str, str]]:
    """(name, variable, default, help) of every setting, in the order declared."""
    for section in sections:
        for entry in section.entries:
            if isinstance(entry, Setting):
                yield (f"{section.name}.{entry.key}", section.env(entry), _default_text(entry),
                       entry.help)
            elif isinstance(entry, Tables):
                for s in entry.settings:
                    yield (f"[[{section.name}.{entry.key}]] {s.key}", "(file only)",
                           _default_text(s), s.help)
            else:
                yield from describe(entry.sections.values())


# -- an example file -----------------------------------------------------------------------------


def toml_value(value: Any) -> str:
    """A setting's value as TOML; None (no value) as "", which reads back as unset."""
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}"
                               for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {value!r}")


def _comment(text: str) -> list[str]:
    return textwrap.wrap(text, width=100, initial_indent="# ", subsequent_indent="# ",
                         break_long_words=False, break_on_hyphens=False)


def _left_out(setting: Setting) -> str | None:
    """What leaving a setting out means, where its default line cannot say it."""
    if setting.fallback_env:
        return f'left out: {_default_text(setting)}; "": none'
    if setting.default is None:
        return f'"" or left out: {setting.unset}'
    if setting.default in ([], ()) and setting.unset != "none":
        return f"[]: {setting.unset}"
    return None


def _render_setting(setting: Setting, variable: str, lines: list[str]) -> None:
    note = "; ".join(n for n in (f"env {variable}", _left_out(setting)) if n)
    lines += ["", *_comment(setting.help), *_comment(note),
              f"#{setting.key} = {toml_value(setting.default)}"]


def _render_tables(section: str, tables: Tables, lines: list[str]) -> None:
    name = f"{section}.{tables.key}"
    lines += ["", f"# [[{name}]]: as many tables as wanted, from the file only. For example:",
              f"#[[{name}]]"]
    for setting in tables.settings:
        value = (tables.example or {}).get(setting.key, setting.default)
        if value is REQUIRED:
            raise ValueError(f"[[{name}]] {setting.key} is required: its Tables needs an example")
        note = "required" if setting.default is REQUIRED else f"default: {_default_text(setting)}"
        lines += [*_comment(f"{setting.help}; {note}"), f"#{setting.key} = {toml_value(value)}"]


def _render_section(section: Section, lines: list[str]) -> None:
    # A table's own keys before any table nested in it: TOML gives a key to the last header.
    lines += ["", f"[{section.name}]"]
    for setting in section.settings:
        _render_setting(setting, section.env(setting), lines)
    for entry in section.entries:
        if isinstance(entry, Tables):
            _render_tables(section.name, entry, lines)
    for entry in section.entries:
        if isinstance(entry, Subsections):
            for nested in entry.sections.values():
                _render_section(nested, lines)


def render_example(sections: Iterable[Section]) -> str:
    """Every setting of `sections` as TOML, each under its help and commented out at its
    default (`#key = value`), so that uncommenting a line changes nothing until its value is
    changed; an array of tables shows its `example` table, commented out too."""
    lines: list[str] = []
    for section in sections:
        _render_section(section, lines)
    return "\n".join(lines) + "\n"
