"""ops/: the example settings file (issue 14): it is what the settings' declarations render,
and loads as their defaults."""

from __future__ import annotations

import dataclasses
import logging
import re
import subprocess
import tomllib

from helpers import ROOT, VENV_BIN
from mirror.config import SECTIONS, SYNCS, load_config
from peer.config import Setting, Subsections, Tables, parse_tables, walk
from tracker.config import SITES, parse_sites

EXAMPLE = ROOT / "ops" / "weightswarm.example.toml"


def weightswarm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "weightswarm"), *args], capture_output=True,
                          text=True, timeout=60)


# -- the example settings file --------------------------------------------------------------------


def test_the_example_file_is_what_weightswarm_config_example_prints():
    result = weightswarm("config", "example")
    assert result.returncode == 0, result.stderr
    assert EXAMPLE.read_text() == result.stdout, (
        "a setting changed: run `weightswarm config example > ops/weightswarm.example.toml`")


def test_the_example_file_as_shipped_loads_as_the_defaults(tmp_path):
    assert load_config(home=tmp_path, config_file=EXAMPLE, env={}) == load_config(
        home=tmp_path, env={})


def uncommented(text: str) -> str:
    """Every `#key = value` and `#[[table]]` line of the example, uncommented (a comment is
    `# ...`)."""
    return re.sub(r"(?m)^#(?=[^\s#])", "", text)


def test_the_example_file_uncommented_sets_every_setting(tmp_path):
    data = tomllib.loads(uncommented(EXAMPLE.read_text()))
    for section in walk(SECTIONS):
        table = data
        for part in section.name.split("."):
            table = table[part]
        for entry in section.entries:
            if isinstance(entry, Setting):
                assert entry.key in table, f"{section.name}.{entry.key} is not in the example"
            elif isinstance(entry, Tables):
                [example] = table[entry.key]
                assert set(example) == {s.key for s in entry.settings}, f"[[{section.name}]]"
            else:
                assert isinstance(entry, Subsections) and set(table[entry.key]) == set(
                    entry.sections)


def test_the_example_file_uncommented_loads_as_the_defaults_and_its_example_tables(tmp_path,
                                                                                   caplog):
    path = tmp_path / "weightswarm.toml"
    path.write_text(uncommented(EXAMPLE.read_text()))
    with caplog.at_level(logging.WARNING, logger="peer.config"):
        config = load_config(home=tmp_path, config_file=path, env={})
    assert caplog.records == [], "every key of the example is a declared setting"
    defaults = load_config(home=tmp_path, env={})
    assert config == dataclasses.replace(
        defaults,
        mirror=dataclasses.replace(defaults.mirror,
                                   syncs=parse_tables("mirror", SYNCS, [SYNCS.example])),
        tracker=dataclasses.replace(defaults.tracker, sites=parse_sites([SITES.example])))
