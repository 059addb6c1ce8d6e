"""The settings machinery (peer/config.py) on a toy section: merging, checking, reporting, the
line finder and the help rows. The roles' own sections are tested in tests/mirror/test_config.py."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from peer.config import (
    REQUIRED,
    BadSettings,
    Section,
    Setting,
    Subsections,
    Tables,
    convert,
    describe,
    duration,
    find_line,
    parse_tables,
    port,
    read_settings,
)
from peer.errors import ConfigError


@dataclass(frozen=True)
class Toy:
    port: int
    name: str | None
    tags: tuple[str, ...]
    jobs: tuple
    parts: dict


PART = Section("toy.parts.one", (Setting("size", int, 1, "a size"),),
               build=lambda v: v["size"])
TOY = Section("toy", (
    Setting("port", int, 80, "a port", check=port),
    Setting("name", str, None, "a name", fallback_env=("TOY_NAME", ("TOY_USER", "TOY_KEY"))),
    Setting("tags", list, [], "tags"),
    Tables("job", (Setting("spec", str, REQUIRED, "what"),
                   Setting("every", str, "1h", "how often", check=duration())),
           build=lambda v: (v["spec"], v["every"])),
    Subsections("parts", {"one": PART}),
), build=lambda v: Toy(v["port"], v["name"], tuple(v["tags"]), v["job"], v["parts"]))


def read(tmp_path, text=None, env=None, overrides=None) -> Toy:
    path = None
    if text is not None:
        path = tmp_path / "weightswarm.toml"
        path.write_text(text)
    return read_settings([TOY], path=path, env=env or {}, overrides=overrides or {})["toy"]


def test_defaults_then_file_then_environment_then_flags(tmp_path):
    assert read(tmp_path) == Toy(80, None, (), (), {"one": 1})
    text = ('[toy]\nport = 81\ntags = ["a", "b"]\n[toy.parts.one]\nsize = 2\n'
            '[[toy.job]]\nspec = "x"\n')
    assert read(tmp_path, text) == Toy(81, None, ("a", "b"), (("x", 3600.0),), {"one": 2})
    env = {"WEIGHTSWARM_TOY_PORT": "82", "WEIGHTSWARM_TOY_TAGS": "c, d",
           "WEIGHTSWARM_TOY_PARTS_ONE_SIZE": "3"}
    assert read(tmp_path, text, env) == Toy(82, None, ("c", "d"), (("x", 3600.0),), {"one": 3})
    flags = {("toy", "port"): 83, ("toy", "tags"): None}  # None: the flag was not given
    assert read(tmp_path, text, env, flags).port == 83
    assert read(tmp_path, text, env, flags).tags == ("c", "d")


def test_a_fallback_variable_counts_only_when_nothing_else_sets_the_value(tmp_path):
    assert read(tmp_path, env={"TOY_NAME": "n"}).name == "n"
    assert read(tmp_path, env={"TOY_USER": "u", "TOY_KEY": "k"}).name == "u:k", "joined pair"
    assert read(tmp_path, env={"TOY_USER": "u"}).name is None, "half a pair is nothing"
    assert read(tmp_path, '[toy]\nname = "file"\n', env={"TOY_NAME": "n"}).name == "file"
    assert read(tmp_path, env={"TOY_NAME": "n", "WEIGHTSWARM_TOY_NAME": "own"}).name == "own"


def test_every_bad_value_is_reported_at_once_with_its_source(tmp_path):
    text = ('[toy]\n'            # 1
            'port = 70000\n'     # 2
            '\n'                 # 3
            '[toy.parts.one]\n'  # 4
            'size = "big"\n'     # 5
            '[[toy.job]]\n'      # 6
            'spec = "x"\n'       # 7
            '[[toy.job]]\n'      # 8
            'every = "soon"\n')  # 9
    with pytest.raises(BadSettings) as caught:
        read(tmp_path, text, env={"WEIGHTSWARM_TOY_TAGS": "a"},
             overrides={("toy", "nope"): 1})
    path = tmp_path / "weightswarm.toml"
    assert caught.value.problems == (
        "command line: there is no setting toy.nope",
        f"{path} line 2: toy.port must be 0-65535, got 70000",
        f"{path} line 8: toy.job needs spec",
        f"{path} line 9: toy.job.every is not a duration (e.g. 3600, 90m, 6h): 'soon'",
        f"{path} line 5: toy.parts.one.size must be a int, got 'big'",
    ), "each problem once: unknown flags, then section by section"
    assert str(caught.value).startswith("5 bad settings:\n  ")
    assert isinstance(caught.value, ConfigError)


def test_a_bad_value_from_the_environment_or_a_flag_names_it(tmp_path):
    with pytest.raises(ConfigError, match=r"^WEIGHTSWARM_TOY_PORT: toy.port must be 0-65535"):
        read(tmp_path, env={"WEIGHTSWARM_TOY_PORT": "-1"})
    with pytest.raises(ConfigError, match=r"^command line: toy.port must be a int, got 'x'"):
        read(tmp_path, overrides={("toy", "port"): "x"})


def test_unknown_keys_are_warned_about_not_fatal(tmp_path, caplog):
    text = 'stray = 1\n[toy]\nprot = 81\n[toy.parts.two]\nsize = 1\n'
    assert read(tmp_path, text).port == 80
    warned = " | ".join(r.getMessage() for r in caplog.records)
    assert "line 3: unknown setting toy.prot ignored" in warned
    assert "line 5: unknown setting toy.parts.two.size ignored" in warned
    assert "top-level key 'stray'" in warned


def test_a_table_array_refuses_unknown_keys_and_a_single_table(tmp_path):
    with pytest.raises(ConfigError, match="line 3: toy.job takes spec, every, not 'evry'"):
        read(tmp_path, '[[toy.job]]\nspec = "x"\nevry = "1h"\n')
    with pytest.raises(ConfigError, match=r"line 1: toy.job must be \[\[toy.job\]\] tables"):
        read(tmp_path, '[toy.job]\nspec = "x"\n')
    with pytest.raises(ValueError, match="toy.job table 2: toy.job needs spec"):
        parse_tables("toy", TOY.entries[3], [{"spec": "x"}, {}])


def test_a_toml_syntax_error_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match="weightswarm.toml"):
        read(tmp_path, "[toy\n")


LINES = """\
# a comment: port = 1
[mirror]
port = 1
upstreams.huggingface.token = "t"   # a dotted key
description = '''
port = 2
'''

[ mirror . upstreams . "huggingface" ]
endpoint = "http://x"

[[mirror.sync]]
spec = "hf:a/b"

[[mirror.sync]]  # the second
spec = "hf:c/d"
interval = "1h"

[mirror.sync_extra]
interval = 3
"""


@pytest.mark.parametrize("table, key, index, line", [
    ("mirror", "port", None, 3),
    ("mirror.upstreams.huggingface", "token", None, 4),
    ("mirror.upstreams.huggingface", "endpoint", None, 10),
    ("mirror.upstreams.huggingface", None, None, 9),
    ("mirror.sync", "spec", 0, 13),
    ("mirror.sync", "spec", 1, 16),
    ("mirror.sync", "interval", 1, 17),
    ("mirror.sync", None, 1, 15),
    ("mirror.sync", None, None, 12),
    ("mirror", "sync", None, 12),
    ("mirror.sync", "interval", 0, None),
    ("mirror", "host", None, None),
    ("tracker", None, None, None),
])
def test_the_line_finder_knows_nested_tables_dotted_keys_and_arrays(table, key, index, line):
    assert find_line(LINES, table, key, index) == line


def test_values_are_converted_from_text_and_from_toml():
    assert convert(bool, "off") is False and convert(bool, "Yes") is True
    assert convert(bool, True) is True and convert(int, "8") == 8 and convert(float, 2) == 2.0
    assert convert(list, "a, b,,") == ["a", "b"] and convert(list, ["a"]) == ["a"]
    assert convert(str, 7) == "7" and convert(object, {"a": 1}) == {"a": 1}
    for kind, value in [(bool, "maybe"), (int, True), (int, "1.5"), (list, [1]),
                        (str, ["a"]), (float, "fast")]:
        with pytest.raises(ValueError, match=f"must be a {kind.__name__}"):
            convert(kind, value)


def test_durations():
    check = duration()
    assert [check(v) for v in (3600, "90m", "6h", "1d", "0", "2s")] == [3600, 5400, 21600,
                                                                        86400, 0, 2]
    for bad, why in [("soon", "not a duration"), ("nan", "not a duration"), ("", "not a"),
                     ("-1", "negative")]:
        with pytest.raises(ValueError, match=why):
            check(bad)
    with pytest.raises(ValueError, match="under a minute"):
        duration(a_minute_or_more=True)("59s")


def test_the_help_lists_every_setting_with_its_variable_and_default():
    rows = {name: (variable, default) for name, variable, default, _ in describe([TOY])}
    assert rows == {
        "toy.port": ("WEIGHTSWARM_TOY_PORT", "80"),
        "toy.name": ("WEIGHTSWARM_TOY_NAME", "$TOY_NAME or $TOY_USER:$TOY_KEY"),
        "toy.tags": ("WEIGHTSWARM_TOY_TAGS", "none"),
        "[[toy.job]] spec": ("(file only)", "required"),
        "[[toy.job]] every": ("(file only)", "1h"),
        "toy.parts.one.size": ("WEIGHTSWARM_TOY_PARTS_ONE_SIZE", "1"),
    }
