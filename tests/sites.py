"""Two sites on a thin link, for the test and the benchmark of issue 16 (tests/sitelab.py
builds the network): site A holds the mirror and the tracker (`weightswarm serve`, the tracker
told both sites' networks by `[[tracker.sites]]`), site B holds peers behind an uplink of a
few Mbit/s. Everything runs as our real commands inside the lab's namespaces; each peer host
has its own WEIGHTSWARM_HOME and Hugging Face cache under `root`.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from helpers import SAMPLE_REPO, VENV_BIN, sample_model_dir, wait_for
from sitelab import SiteLab

WS = str(VENV_BIN / "weightswarm")
HTTP_PORT, TRACKER_PORT, BT_PORT = 8470, 6969, 6881
#: the mirror's host at site A
HUB = "hub"


@dataclass
class Outcome:
    host: str
    returncode: int
    stdout: str
    stderr: str
    #: seconds from the start of the pulls of its batch to its end
    seconds: float

    @property
    def json(self) -> dict:
        assert self.returncode == 0, (f"{self.host}: pull failed ({self.returncode}):\n"
                                      f"{self.stderr[-3000:]}")
        return json.loads(self.stdout.strip().splitlines()[-1])


@dataclass
class Host:
    """A machine of site B: its own home and cache."""

    name: str
    root: Path

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def cache(self) -> Path:
        return self.root / "hf-cache"

    def env(self, **extra: str) -> dict:
        """A machine's settings are the defaults (every interface, local discovery on), not
        the loopback ones the test suite sets for itself; no DHT: nothing to bootstrap from
        inside the lab."""
        env = real_world()
        env.update(WEIGHTSWARM_HOME=str(self.home), HF_HUB_CACHE=str(self.cache),
                   WEIGHTSWARM_PEER_BT_DHT="false", **extra)
        return env


def real_world() -> dict:
    """The environment without the suite's settings for loopback (tests/conftest.py)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("WEIGHTSWARM_PEER_", "WEIGHTSWARM_MIRROR_"))}


@dataclass
class TwoSites:
    """Site A (the mirror and tracker at `HUB`) and site B (`hosts`), B's uplink at `mbit`."""

    lab: SiteLab
    root: Path
    hosts: list[str]
    mbit: float
    repo: str = SAMPLE_REPO
    model: Path = field(default_factory=sample_model_dir)
    peers: dict[str, Host] = field(default_factory=dict)

    @property
    def mirror_url(self) -> str:
        return f"http://{self.lab.ip('a', HUB)}:{HTTP_PORT}"

    def build(self) -> None:
        self.lab.add_site("a", [HUB])
        self.lab.add_site("b", self.hosts, mbit=self.mbit)
        self.peers = {h: Host(h, self.root / h) for h in self.hosts}

    def start_mirror(self, **extra_env: str) -> Path:
        """Import the model and start `weightswarm serve` at site A; its log's path, once it
        seeds every large file and its tracker knows it."""
        home = self.root / "mirror"
        done = subprocess.run([WS, "--home", str(home), "mirror", "import", str(self.model),
                               "--repo", self.repo, "--no-progress"], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        (home / "weightswarm.toml").write_text("".join(
            f'[[tracker.sites]]\ncidr = "{s.network}"\nsite = "{s.name}"\n'
            for s in self.lab.sites.values()))
        address = self.lab.ip("a", HUB)
        env = dict(real_world(), WEIGHTSWARM_HOME=str(home),
                   WEIGHTSWARM_MIRROR_BT_LISTEN=f"{address}:{BT_PORT}",
                   WEIGHTSWARM_MIRROR_BT_DHT="false",
                   WEIGHTSWARM_MIRROR_SCRUB_INTERVAL="0",
                   WEIGHTSWARM_TRACKER_MIRRORS=f"{address}:{BT_PORT}",
                   WEIGHTSWARM_TRACKER_INTERVAL="5", WEIGHTSWARM_TRACKER_MIN_INTERVAL="1",
                   **extra_env)
        log = self.root / "mirror.log"
        with open(log, "wb") as out:
            self.lab.popen(self.lab.host_ns("a", HUB),
                           [WS, "-v", "serve", "--host", address, "--port", str(HTTP_PORT),
                            "--tracker-port", str(TRACKER_PORT)],
                           env=env, stdout=out, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL)
        wait_for(lambda: self._seeding(), 60, "the mirror seeds the model", 0.3)
        return log

    def _seeding(self) -> bool:
        try:
            body = json.loads(self.lab.fetch(self.lab.host_ns("a", HUB),
                                             f"{self.mirror_url}/api/weightswarm/torrents"))
        except OSError:
            return False
        return bool(body["torrents"]) and all(t["state"] == "seeding" for t in body["torrents"])

    def start_pull(self, host: str, *args: str, **extra_env: str) -> subprocess.Popen:
        """`weightswarm pull` at `host` of site B; its output goes to `log(host)`."""
        peer = self.peers[host]
        peer.root.mkdir(parents=True, exist_ok=True)
        with open(self.log(host, "out"), "w") as out, open(self.log(host, "err"), "w") as err:
            return self.lab.popen(
                self.lab.host_ns("b", host),
                [WS, "pull", self.repo, "--json", "--mirror", self.mirror_url, *args],
                env=peer.env(**extra_env), stdout=out, stderr=err, stdin=subprocess.DEVNULL)

    def log(self, host: str, stream: str = "err") -> Path:
        return self.peers[host].root / f"pull.{stream}"

    def finish(self, host: str, proc: subprocess.Popen, start: float,
               timeout: float) -> Outcome:
        try:
            proc.wait(timeout=max(1.0, start + timeout - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"{host}: pull not done after {timeout:.0f}s:\n"
                                 f"{self.log(host).read_text()[-3000:]}") from None
        return Outcome(host, proc.returncode, self.log(host, "out").read_text(),
                       self.log(host).read_text(), time.monotonic() - start)

    def pull_all(self, hosts: list[str], *args: str, timeout: float = 300,
                 **extra_env: str) -> list[Outcome]:
        """The pulls of `hosts`, started together, each to its end."""
        start = time.monotonic()
        procs = {h: self.start_pull(h, *args, **extra_env) for h in hosts}
        return [self.finish(h, p, start, timeout) for h, p in procs.items()]

    def snapshot(self, host: str) -> Path:
        (folder,) = (self.peers[host].cache / ("models--" + self.repo.replace("/", "--"))
                     / "snapshots").iterdir()
        return folder

