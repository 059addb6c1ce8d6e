"""tests/sitelab.py: the lab of sites builds what it says (shaped uplinks both ways, routes
across the WAN, counters, cut and mend) and leaves nothing behind, also when the test inside
fails and when its process is killed outright."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers import wait_for
from sitelab import LabUnavailable, namespaces, pids, site_lab, sweep

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def lab():
    for tool in ("ip", "tc", "curl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (Debian iproute2, curl)")
    try:
        with site_lab(delay_ms=30, loss=1) as made:
            yield made
    except LabUnavailable as e:
        pytest.skip(f"network namespaces are not permitted here: {e}")


def mine(token: str) -> list[str]:
    return [ns for ns in namespaces() if token in ns]


def test_sites_reach_each_other_across_shaped_uplinks_counted_by_the_router(lab, tmp_path):
    lab.add_site("a", ["hub"])
    lab.add_site("b", ["p0", "p1"], mbit=8)
    qdiscs = lab.run(lab.router_ns("b"), ["tc", "qdisc", "show", "dev", "wan0"],
                     capture_output=True, text=True, check=True).stdout
    far_end = lab.run(lab.wan, ["tc", "qdisc", "show", "dev", "u2"], capture_output=True,
                      text=True, check=True).stdout
    kind = "netem" if lab.netem else "tbf"
    assert kind in qdiscs and kind in far_end, (qdiscs, far_end)
    assert "8Mbit" in qdiscs and "8Mbit" in far_end
    if not lab.netem:
        assert any("no sch_netem" in n for n in lab.notes), lab.notes

    hub = lab.ip("a", "hub")
    server = lab.popen(lab.host_ns("a", "hub"),
                       [sys.executable, "-m", "http.server", "-b", hub, "8000",
                        "-d", str(TESTS)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://{hub}:8000/test_sitelab.py"
    before = lab.wan_bytes("b")
    body = wait_for(lambda: _get(lab, "p0", url), 20, "the hub answers across the WAN", 0.2)
    assert body == (TESTS / "test_sitelab.py").read_bytes()
    into, out_of = (now - then for now, then in zip(lab.wan_bytes("b"), before, strict=True))
    assert into >= len(body) and out_of > 0
    # Inside the site, nothing crosses the uplink.
    neighbour = lab.ip("b", "p0")
    (tmp_path / "blob").write_bytes(os.urandom(1 << 20))
    lab.popen(lab.host_ns("b", "p0"), [sys.executable, "-m", "http.server", "-b", neighbour,
                                       "8000", "-d", str(tmp_path)],
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lan = lab.wan_bytes("b")
    near = f"http://{neighbour}:8000/blob"
    got = wait_for(lambda: _get(lab, "p1", near), 20, "the neighbour answers", 0.2)
    assert got == (tmp_path / "blob").read_bytes()
    assert lab.lan_bytes("b") > len(got)
    # (a few packets may: the end of the first connection, a neighbour solicitation)
    assert sum(lab.wan_bytes("b")) - sum(lan) < 16 * 1024
    lab.cut("b")
    with pytest.raises(OSError):
        lab.fetch(lab.host_ns("b", "p0"), url, timeout=2)
    lab.mend("b")
    assert lab.fetch(lab.host_ns("b", "p0"), url) == body
    assert lab.wan_bytes("b")[0] > lan[0]
    server.terminate()


def _get(lab, host: str, url: str) -> bytes | None:
    try:
        return lab.fetch(lab.host_ns("b", host), url, timeout=5)
    except OSError:
        return None


def test_nothing_is_left_when_the_test_inside_fails():
    if shutil.which("ip") is None:
        pytest.skip("ip is not installed")
    started = []
    with pytest.raises(RuntimeError, match="inside"):
        try:
            with site_lab() as made:
                made.add_site("a", ["x"])
                started.append(made.popen(made.host_ns("a", "x"), ["sleep", "600"]))
                token = made.token
                raise RuntimeError("the test inside failed")
        except LabUnavailable as e:
            pytest.skip(f"network namespaces are not permitted here: {e}")
    assert mine(token) == []
    assert started[0].poll() is not None, "the process started in the lab is gone"


def test_a_killed_labs_namespaces_and_processes_are_swept_by_the_next():
    if shutil.which("ip") is None:
        pytest.skip("ip is not installed")
    script = textwrap.dedent(f"""
        import os, signal, subprocess, sys
        sys.path[:0] = [{str(TESTS.parent)!r}, {str(TESTS)!r}]
        from sitelab import site_lab
        with site_lab() as lab:
            lab.add_site("a", ["x"])
            lab.popen(lab.host_ns("a", "x"), ["sleep", "600"], start_new_session=True,
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            print(lab.token, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    if done.returncode != -signal.SIGKILL:
        pytest.skip(f"could not make a lab: {done.stderr[-500:]}")
    token = done.stdout.split()[0]
    left = mine(token)
    assert left, "a killed lab leaves its namespaces (what the sweep is for)"
    orphans = [pid for ns in left for pid in pids(ns)]
    assert orphans
    gone = sweep()
    assert set(left) <= set(gone)
    assert mine(token) == []
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in orphans) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in orphans)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead but not yet reaped by its parent (init, here).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
