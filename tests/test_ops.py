"""ops/: the systemd units and the example settings file (issue 14). The units are checked by
what they say (one sandbox, one writable path, a real command of the installed program) and,
where systemd is installed, by `systemd-analyze verify` and `systemd-sysusers`; the example file
is what the settings' declarations render, and loads as their defaults."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from helpers import ROOT, VENV_BIN
from mirror.config import SECTIONS, SYNCS, load_config
from peer.config import Setting, Subsections, Tables, parse_tables, walk
from tracker.config import SITES, parse_sites

UNITS = ROOT / "ops" / "systemd"
EXAMPLE = ROOT / "ops" / "weightswarm.example.toml"
#: where the units expect the program (README.md, "Running as a service")
INSTALLED = "/opt/weightswarm/bin/weightswarm"
#: each unit's command, after the program and its group options
SYSTEM_UNITS = {"weightswarm-mirror.service": ["mirror", "serve"],
                "weightswarm-tracker.service": ["tracker", "serve"],
                "weightswarm.service": ["serve"]}
USER_UNITS = {"weightswarm-peer.service": ["peer", "serve"]}
#: what may differ between the system units' [Service] sections: the rest is one sandbox
OWN_KEYS = {"ExecStart", "RestrictAddressFamilies"}


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file's values by section and key, in order (a key may be given more than once)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), f"{path.name}:{number}: no continued lines here"
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{path.name}:{number}: not key=value: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def weightswarm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "weightswarm"), *args], capture_output=True,
                          text=True, timeout=60)


def exec_start(path: Path) -> list[str]:
    [command] = read_unit(path)["Service"]["ExecStart"]
    return shlex.split(command)


# -- the units say what the issue asks ------------------------------------------------------------


@pytest.mark.parametrize("name", [*SYSTEM_UNITS, *USER_UNITS])
def test_each_unit_runs_a_command_of_the_installed_program(name):
    program, *args = exec_start(UNITS / name)
    assert program == INSTALLED, "an installer's path, not a developer's checkout"
    command = [a for a in args if not a.startswith("-") and not a.startswith("/")]
    assert command == {**SYSTEM_UNITS, **USER_UNITS}[name]
    result = weightswarm(*args, "--help")
    assert result.returncode == 0, f"{name}: `weightswarm {' '.join(args)}`: {result.stderr}"


def test_the_system_units_share_one_sandbox_with_the_state_folder_the_only_writable_path():
    services = {name: read_unit(UNITS / name)["Service"] for name in SYSTEM_UNITS}
    sandboxes = {name: {k: v for k, v in s.items() if k not in OWN_KEYS}
                 for name, s in services.items()}
    first = sandboxes["weightswarm-mirror.service"]
    for name, sandbox in sandboxes.items():
        assert sandbox == first, f"{name} differs from weightswarm-mirror.service"
    expected = {
        "User": ["weightswarm"], "Group": ["weightswarm"],
        "StateDirectory": ["weightswarm"], "Environment": ["WEIGHTSWARM_HOME=%S/weightswarm"],
        "ProtectSystem": ["strict"], "ProtectHome": ["yes"], "PrivateTmp": ["yes"],
        "NoNewPrivileges": ["yes"], "CapabilityBoundingSet": [""], "AmbientCapabilities": [""],
        "Restart": ["on-failure"],
        "SystemCallFilter": ["@system-service", "~@privileged @resources"],
    }
    assert {k: first.get(k) for k in expected} == expected
    assert int(first["LimitNOFILE"][0]) >= 65536, "thousands of torrents and connections"
    assert first["TimeoutStopSec"], "a bound on the clean stop after SIGTERM"
    for path_key in ("ReadWritePaths", "BindPaths", "DynamicUser"):
        assert path_key not in first, f"{path_key}: the state folder is the one writable path"
    for name, service in services.items():
        [families] = service["RestrictAddressFamilies"]
        assert set(families.split()) <= {"AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"}
        # libtorrent lists interfaces and routes over rtnetlink: every unit that seeds needs it.
        assert ("AF_NETLINK" in families) == ("tracker" not in SYSTEM_UNITS[name]), name


#: what only a system unit has: its user, its state folder, its secrets, capabilities to drop
SYSTEM_ONLY = {"User", "Group", "EnvironmentFile", "StateDirectory", "StateDirectoryMode",
               "Environment", "UMask", "CapabilityBoundingSet", "AmbientCapabilities"}


def test_the_peer_daemon_is_a_user_unit_with_the_same_sandbox_and_nothing_writable():
    unit = read_unit(UNITS / "weightswarm-peer.service")
    assert unit["Install"]["WantedBy"] == ["default.target"], "a unit of `systemctl --user`"
    peer = {k: v for k, v in unit["Service"].items() if k != "ExecStart"}
    mirror = read_unit(UNITS / "weightswarm-mirror.service")["Service"]
    expected = {k: v for k, v in mirror.items() if k not in SYSTEM_ONLY | {"ExecStart"}}
    # It reads the user's cache and home, and writes neither: the home is read-only too.
    assert peer == {**expected, "ProtectHome": ["read-only"]}
    assert peer["PrivateUsers"] == ["yes"], "a user manager sandboxes only in a user namespace"


# -- and systemd agrees ---------------------------------------------------------------------------

needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="systemd-analyze (systemd) not installed")


def runnable_copies(names, folder: Path) -> list[Path]:
    """The units with the program where this checkout has it: verify checks that it exists."""
    folder.mkdir()
    for name in names:
        text = (UNITS / name).read_text()
        (folder / name).write_text(text.replace(INSTALLED, str(VENV_BIN / "weightswarm")))
    return [folder / name for name in names]


def verify(units: list[Path], *, user: bool, env: dict | None = None) -> None:
    command = ["systemd-analyze", *(["--user"] if user else []), "verify", "--man=no",
               *map(str, units)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    output = result.stdout + result.stderr
    # A warning (an unknown key, a bad value) leaves the exit code 0: any line naming a unit of
    # ours fails the test.
    ours = [line for line in output.splitlines()
            if any(unit.name in line or str(unit.parent) in line for unit in units)]
    assert result.returncode == 0 and not ours, output


@needs_systemd_analyze
def test_systemd_analyze_verifies_the_system_units(tmp_path):
    verify(runnable_copies(SYSTEM_UNITS, tmp_path / "system"), user=False)


@needs_systemd_analyze
def test_systemd_analyze_verifies_the_user_unit(tmp_path):
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)  # a user manager's $XDG_RUNTIME_DIR, which --user needs
    verify(runnable_copies(USER_UNITS, tmp_path / "user"), user=True,
           env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None,
                    reason="systemd-sysusers (systemd) not installed")
def test_the_sysusers_file_creates_the_unprivileged_user_the_units_run_as(tmp_path):
    (tmp_path / "etc").mkdir()
    result = subprocess.run(["systemd-sysusers", f"--root={tmp_path}",
                             str(UNITS / "weightswarm.sysusers")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    [entry] = [line.split(":") for line in (tmp_path / "etc" / "passwd").read_text().splitlines()
               if line.startswith("weightswarm:")]
    assert int(entry[2]) < 1000, "a system user"
    assert entry[5] == "/var/lib/weightswarm" and entry[6].endswith("nologin"), entry


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
