"""The stock `kagglehub` client in a subprocess, for tests against a FakeKaggle (or a mirror
that plays Kaggle).

kagglehub reads its settings at import time and has no endpoint variable: only
`KAGGLE_API_ENVIRONMENT=TEST`, which sends it to `http://localhost:7777/api` (PROTOCOLS.md 3.1).
So each call runs in a fresh interpreter whose environment names nothing of the host's Kaggle,
Colab or proxy settings, with its own HOME (kagglesdk reads `~/.kaggle/access_token` whatever
KAGGLE_CONFIG_DIR says, and requests reads `~/.netrc`), under a bounded timeout. The result
comes back as JSON in a file, because TEST also makes kagglesdk print every request and
response body to stdout.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fakekaggle import TEST_PORT, FakeKaggle

#: the variables of the host that could steer the client elsewhere: its Kaggle account and
#: environment, Kaggle and Colab notebook detection, proxies
_STRIPPED_PREFIXES = ("KAGGLE", "COLAB", "TBE_", "DISABLE_KAGGLE", "DISABLE_COLAB")
_PROXIES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy"}

_SCRIPT = """
import json, sys
args = json.loads(sys.argv[1])
try:
    import kagglehub
    path = kagglehub.model_download(args["handle"], path=args["path"],
                                    force_download=args["force_download"])
    result = {"path": path}
except Exception as e:
    result = {"error": type(e).__name__, "message": str(e)}
with open(args["out"], "w") as f:
    json.dump(result, f)
"""


def kaggle_env(home: Path, *, token: str | None = None,
               basic: tuple[str, str] | None = None, **extra: str) -> dict[str, str]:
    """Environment for a kagglehub subprocess: TEST endpoint, cache and HOME under `home`,
    credentials only as given (a bearer `token`, or `basic` as KAGGLE_USERNAME/KAGGLE_KEY)."""
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith(_STRIPPED_PREFIXES) and k.lower() not in _PROXIES}
    env.update(KAGGLE_API_ENVIRONMENT="TEST", HOME=str(home),
               KAGGLEHUB_CACHE=str(home / "kagglehub-cache"),
               KAGGLE_CONFIG_DIR=str(home / ".kaggle"))
    if token is not None:
        env["KAGGLE_API_TOKEN"] = token
    if basic is not None:
        env["KAGGLE_USERNAME"], env["KAGGLE_KEY"] = basic
    env.update(extra)
    return env


@dataclass
class KaggleRun:
    """What one `kagglehub.model_download` call gave: the folder or file, or the name and
    message of the exception it raised."""

    path: Path | None
    error: str | None
    message: str
    stdout: str
    stderr: str

    def __str__(self) -> str:
        told = f"path {self.path}" if self.path else f"{self.error}: {self.message}"
        return f"{told}\n--- stderr (tail) ---\n{self.stderr[-3000:]}"


def model_download(handle: str, env: dict[str, str], *, path: str | None = None,
                   force_download: bool = False, timeout: float = 120) -> KaggleRun:
    """`kagglehub.model_download(handle, path=..., force_download=...)` in a subprocess."""
    out = Path(env["HOME"]) / "kagglehub-result.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    args = {"handle": handle, "path": path, "force_download": force_download, "out": str(out)}
    done = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(args)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    if not out.exists():
        raise AssertionError(f"kagglehub died (exit {done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(out.read_text())
    found = Path(result["path"]) if "path" in result else None
    return KaggleRun(found, result.get("error"), result.get("message", ""), done.stdout,
                     done.stderr)


def files_under(folder: Path) -> dict[str, bytes]:
    """Every file below `folder`, by its slash-separated relative path."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@contextlib.contextmanager
def kaggle_on_test_port(**options) -> Iterator[FakeKaggle]:
    """A FakeKaggle where KAGGLE_API_ENVIRONMENT=TEST sends kagglehub; the test is skipped,
    with the reason, when something else holds that port."""
    fake = FakeKaggle(port=TEST_PORT, **options)
    try:
        fake.start()
    except OSError as e:
        pytest.skip(f"port {TEST_PORT}, where KAGGLE_API_ENVIRONMENT=TEST sends kagglehub, is "
                    f"taken ({e})")
    try:
        yield fake
    finally:
        fake.stop()
