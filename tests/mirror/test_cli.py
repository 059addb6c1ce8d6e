"""The `weightswarm` command and its settings."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import urllib.request
from pathlib import Path

import pytest

from helpers import VENV_BIN, make_tiny_model
from mirror.config import load_config
from peer.errors import ConfigError


def ws(home: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VENV_BIN / "weightswarm"), "--home", str(home), *args],
        capture_output=True, text=True, timeout=120, env=env,
    )


def test_serve_on_port_0_logs_the_port_it_got_and_serves(tmp_path):
    home = tmp_path / "home"
    process = subprocess.Popen(
        [str(VENV_BIN / "weightswarm"), "--home", str(home), "serve", "--port", "0"],
        stderr=subprocess.PIPE, text=True,
    )
    found = threading.Event()
    port = []

    def read() -> None:
        for line in process.stderr:
            match = re.search(r"mirror listening on http://127\.0\.0\.1:(\d+)", line)
            if match:
                port.append(int(match.group(1)))
                found.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert found.wait(30), "serve never logged the port it listens on"
        assert port[0] != 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port[0]}/api/weightswarm/key") as r:
            key = json.loads(r.read())["key"]
        assert re.fullmatch(r"ed25519:[0-9a-f]{64}", key)
        assert (home / "mirror.key").stat().st_mode & 0o777 == 0o600
    finally:
        process.terminate()
        process.wait(30)


def test_import_ls_and_verify_find_a_corrupted_blob(tmp_path):
    home = tmp_path / "home"
    tiny = make_tiny_model(tmp_path / "tiny")
    done = ws(home, "mirror", "import", str(tiny), "--repo", "org/tiny", "--tag", "v1",
              "--no-progress")
    assert done.returncode == 0, done.stderr
    listed = json.loads(ws(home, "mirror", "ls", "--json").stdout)
    assert listed[0]["id"] == "org/tiny" and set(listed[0]["refs"]) == {"branch:main", "tag:v1"}
    assert ws(home, "mirror", "verify").returncode == 0
    again = ws(home, "mirror", "import", str(tiny), "--repo", "org/tiny", "--if-missing")
    assert again.returncode == 0 and "already has main" in again.stdout

    blob = next(p for p in (home / "store" / "blobs").rglob("*") if p.is_file()
                and p.stat().st_size == (tiny / "big.bin").stat().st_size)
    blob.chmod(0o644)
    with open(blob, "r+b") as f:
        f.seek(1000)
        f.write(b"\xff")
    for args in ((), ("--full",), ("org/tiny",)):
        result = ws(home, "mirror", "verify", *args)
        assert result.returncode == 1, f"verify {args} should fail on a flipped byte"
        assert f"BAD {blob.name}" in result.stdout


def test_known_errors_print_one_line_without_a_traceback(tmp_path):
    home = tmp_path / "home"
    result = ws(home, "mirror", "verify", "no/such-repo")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in result.stderr
    tiny = make_tiny_model(tmp_path / "tiny")
    os.symlink("/etc/passwd", tiny / "passwd")
    result = ws(home, "mirror", "import", str(tiny), "--repo", "org/tiny")
    assert result.returncode == 1 and "outside the imported folder" in result.stderr
    assert "Traceback" not in result.stderr


def test_settings_come_from_file_then_env_then_flags(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "weightswarm.toml").write_text(
        '[mirror]\nport = 9000\npublic_url = "http://mirror.example/"\nhost = "0.0.0.0"\n')
    config = load_config(home=home, env={})
    assert (config.mirror.port, config.mirror.host) == (9000, "0.0.0.0")
    assert config.mirror.public_url == "http://mirror.example"
    config = load_config(home=home, env={"WEIGHTSWARM_MIRROR_PORT": "9100"})
    assert config.mirror.port == 9100
    config = load_config(home=home, env={"WEIGHTSWARM_MIRROR_PORT": "9100"},
                         overrides={("mirror", "port"): 0})
    assert config.mirror.port == 0
    assert load_config(env={"WEIGHTSWARM_HOME": str(home)}).home == home


@pytest.mark.parametrize("text, message", [
    ("[mirror]\nport = 'many'\n", "must be a int"),
    ("[mirror]\nport = 70000\n", "0-65535"),
    ("[mirror\n", "weightswarm.toml"),
    ("[mirror]\npublic_url = 'ftp://x'\n", "http"),
    ("[mirror]\negress_limit = 0\n", "positive"),
    ("[mirror]\negress_limit = -5\n", "positive"),
    ("[mirror]\nbt_listen = '6881'\n", "host:port"),
    ("[mirror]\nbt_listen = 'host:99999'\n", "host:port"),
    ("[peer]\npull_listen = ':0'\n", "host:port"),
    ("[mirror]\nscrub_interval = 'soon'\n", "not a duration"),
    ("[mirror]\nscrub_interval = '-1'\n", "negative"),
])
def test_bad_settings_are_refused_with_a_clear_message(tmp_path, text, message):
    (tmp_path / "weightswarm.toml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(home=tmp_path, env={})


def test_the_command_lists_its_settings_in_help(tmp_path):
    result = ws(tmp_path, "--help")
    assert result.returncode == 0
    assert "WEIGHTSWARM_MIRROR_PUBLIC_URL" in result.stdout
