"""What the benchmarks under ops/bench/ share: their one-line error, progress on stderr, the
check for the tools they need, a clean environment, a free port, and the profiling handshake
with a server started under cProfile."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


class BenchError(Exception):
    """A precondition or a check failed: one line for the user, no traceback."""


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def find_tools(tools: dict[str, str]) -> None:
    """Every tool on PATH (tool → the Debian package that provides it), or one clear error."""
    missing = []
    for tool in tools:
        if shutil.which(tool):
            continue
        if shutil.which(tool, path="/usr/sbin:/sbin"):
            # nginx and friends live in /usr/sbin, which a user's PATH often lacks.
            os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
        else:
            missing.append(tool)
    if missing:
        raise BenchError("missing " + ", ".join(f"{t} (Debian package {tools[t]})"
                                                for t in missing)
                         + "; install with: apt-get install "
                         + " ".join(sorted({tools[t] for t in missing})))


def clean_env(**extra: str) -> dict:
    """Our environment without settings that would change what is measured."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "WEIGHTSWARM_", "TRANSFORMERS_"))}
    env.update(extra)
    return env


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise BenchError("found no port free for both TCP and UDP")


def signal_and_wait(process, log: Path, signum: int, line: bytes, what: str) -> None:
    """Send `signum` to a server run under our cProfile wrapper and wait for the log `line`
    that says it acted on it."""
    count = log.read_bytes().count(line)
    process.send_signal(signum)
    deadline = time.monotonic() + 30
    while log.read_bytes().count(line) == count:
        if time.monotonic() > deadline or process.poll() is not None:
            raise BenchError(f"the profiled {what} did not answer {signum}: "
                             f"{log.read_text()[-500:]}")
        time.sleep(0.05)


def stop_cleanly_on_signals() -> None:
    """Ctrl-C and SIGTERM both unwind through `finally` (servers stopped, temp dirs removed),
    even when started with SIGINT ignored (`cmd &`)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


@contextlib.contextmanager
def bench_main():
    """The body of a benchmark's main: Ctrl-C and SIGTERM unwind through `finally` (servers
    stopped, temp dirs removed); a BenchError is one line and exit 1, Ctrl-C exit 130."""
    stop_cleanly_on_signals()
    try:
        yield
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def two_cores(servers: str) -> list[int]:
    """The CPUs this process may use; one for `servers`, one for the load, or a BenchError."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise BenchError(f"needs two cores (one for the {servers}, one for the load), "
                         f"this process may use {len(cpus)}")
    return cpus


@dataclass
class Server:
    """A server a benchmark started in a process (and session) of its own."""

    name: str
    process: subprocess.Popen
    port: int
    log: Path
    #: what asks it to stop cleanly (our tracker takes SIGINT as a user's Ctrl-C)
    stop_signal: int = signal.SIGTERM

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 60) -> None:
        if self.process.poll() is None:
            self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def cpu_seconds(self) -> float:
        """The process's CPU time so far, user and system, all its threads."""
        with open(f"/proc/{self.process.pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory(self) -> dict[str, int]:
        """VmRSS and VmHWM (the peak), bytes."""
        found = {}
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    found[key] = int(value.split()[0]) * 1024
        return found


def await_port(server: Server, pattern: bytes, what: str, seconds: float = 60) -> Server:
    """`server` once its log says the port (`pattern`'s group 1); stopped, and BenchError with
    the log's end, if it exits or says nothing in time."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = re.search(pattern, server.log.read_bytes())
        if found:
            server.port = int(found.group(1))
            return server
        if server.process.poll() is not None:
            break
        time.sleep(0.05)
    server.stop()
    raise BenchError(f"{what} did not start: {server.log.read_text()[-800:]}")


def await_ready(procs: list[subprocess.Popen], what: str) -> None:
    """Each client process (text pipes) has printed "ready": its imports are done."""
    for p in procs:
        if p.stdout.readline().strip() != "ready":
            raise BenchError(f"{what} did not start")


def go_and_collect(procs: list[subprocess.Popen], what: str, timeout: float = 600) -> list[dict]:
    """Tell every ready client "go" at once; each one's last line, as JSON."""
    import json

    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        if p.returncode != 0:
            raise BenchError(f"{what} failed (exit {p.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results
