"""The all-in-one node (`weightswarm serve`) runs the index beside its tracker with its own
mirror in it: with nothing configured, what the node holds is searchable and locatable on the
tracker's port at once (issue 18; DESIGN.md section 1's all-in-one role)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request

from helpers import VENV_BIN, make_tiny_model, wait_for

WS = str(VENV_BIN / "weightswarm")


def test_serve_lists_its_own_mirror_in_its_index(tmp_path):
    env = {**os.environ, "WEIGHTSWARM_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "0"}
    tiny = make_tiny_model(tmp_path / "tiny", big_size=4096)
    subprocess.run([WS, "mirror", "import", str(tiny), "--repo", "org/tiny"], env=env,
                   check=True, capture_output=True, timeout=120)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        node = subprocess.Popen([WS, "serve", "--port", "0", "--tracker-port", "0"], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        tracker = wait_for(lambda: re.search(r"tracker listening on (http://[\d.:]+)/announce",
                                             log.read_text()), 60, "the tracker up").group(1)
        found = wait_for(lambda: _ids(f"{tracker}/api/models?search=tiny"), 30,
                         "the node's repo in its own index")
        assert found == ["org/tiny"]
        mirrors = json.loads(urllib.request.urlopen(f"{tracker}/api/weightswarm/mirrors",
                                                    timeout=10).read())["mirrors"]
        assert [m["name"] for m in mirrors] == ["this node"]
        assert "Traceback" not in log.read_text()
    finally:
        os.killpg(node.pid, signal.SIGTERM)
        node.wait(timeout=30)
    assert node.returncode == 0, log.read_text()[-2000:]


def _ids(url: str) -> list[str]:
    try:
        return [m["id"] for m in json.loads(urllib.request.urlopen(url, timeout=10).read())]
    except OSError:
        time.sleep(0.2)
        return []


