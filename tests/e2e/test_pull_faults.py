"""`weightswarm pull` under faults, end to end: real mirrors (in this process, or as a command
that can be SIGKILLed), our tracker, and pulls run as the command a user types
(`weightswarm -v pull ORG/NAME --mirror URL --json`), each in its own home and HF cache.

1. Three peers pulling at once from a mirror whose egress is capped get at least half of
   their payload from each other, and what each says it got from the mirror matches what
   the mirror counted sending.
2. One of two seeding mirrors is SIGKILLed mid-pull: the pull completes from the other.
3. A mirror serves a flipped byte: the peer drops the bad piece (libtorrent's hash check) and
   completes from the good mirror; the bad source should be banned and left alone.
4. A pull killed (SIGKILL, and Ctrl-C) and started again fetches only what it lacked.

Every pulled file is compared byte for byte with the source.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import httpx2 as httpx
import pytest

from helpers import VENV_BIN, fetch, flip_a_byte, make_config, start_mirror, start_tracker, wait_for
from peer.bencode import bdecode
from peer.hfcache import repo_folder
from peer.store import BlobStore
from tracker.config import TrackerConfig

pytest.importorskip("libtorrent")
pytestmark = pytest.mark.slow

MiB = 1024 * 1024
PIECE = 4 * MiB  # DESIGN.md's piece size for blobs up to 20 GiB
REPO = "org/faults"
WS = str(VENV_BIN / "weightswarm")
T = TypeVar("T")


# -- helpers ----------------------------------------------------------------------------------






def make_repo(root: Path, size: int) -> str:
    """A model folder: .gitattributes, config.json and a random `weights.bin` of `size` bytes
    (LFS by rule, so it travels over BitTorrent); returns the blob's sha256."""
    root.mkdir(parents=True)
    (root / ".gitattributes").write_text("*.bin filter=lfs diff=lfs merge=lfs -text\n")
    (root / "config.json").write_text('{"model_type": "bert", "hidden_size": 8}')
    digest = hashlib.sha256()
    with open(root / "weights.bin", "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(16 * MiB, left))
            digest.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def import_repo(home: Path, folder: Path) -> None:
    done = subprocess.run([WS, "--home", str(home), "mirror", "import", str(folder), "--repo",
                           REPO, "--no-progress"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


_EGRESS = re.compile(r'^weightswarm_mirror_egress_bytes_total\{via="(\w+)"\}\s+(\S+)$',
                     re.MULTILINE)


def egress(url: str) -> int:
    """A mirror's blob egress so far, BitTorrent and HTTP together (its /metrics)."""
    return int(sum(float(v) for _, v in _EGRESS.findall(fetch(f"{url}/metrics").decode())))


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def settled_egress(url: str, quiet: float = 0.5) -> int:
    """`egress` once it has not moved for `quiet` seconds: a mirror counts libtorrent's sent
    bytes every 0.1 s, later on a loaded machine, and a test must not take the bytes of the
    one before it for its own."""
    last, since = egress(url), time.monotonic()
    while time.monotonic() - since < quiet:
        time.sleep(0.1)
        now = egress(url)
        if now != last:
            last, since = now, time.monotonic()
    return last


def bt_endpoint(url: str) -> str:
    """"ip:port" of a mirror's BitTorrent session, as a pull's `by_peer` names it."""
    return f"127.0.0.1:{json.loads(fetch(f'{url}/'))['bittorrent_port']}"


def seeding(url: str, sha256: str) -> str | None:
    """The blob's info-hash once the mirror seeds it."""
    for t in json.loads(fetch(f"{url}/api/weightswarm/torrents"))["torrents"]:
        if t["sha256"] == sha256 and t["state"] == "seeding":
            return t["info_hash"]
    return None


def complete_in_swarm(tracker, info_hash: str) -> int:
    """How many seeders the tracker lists for `info_hash` (its scrape)."""
    raw = bytes.fromhex(info_hash)
    body = bdecode(fetch(f"{tracker.url}/scrape?info_hash="
                         f"{quote(raw, safe='')}"))
    return body[b"files"].get(raw, {}).get(b"complete", 0)


def wait_seeded(tracker, urls: list[str], sha256: str) -> str:
    """Every mirror seeds the blob and the tracker has heard from all of them."""
    keys = {wait_for(lambda u=u: seeding(u, sha256), 15, f"{u} seeds the blob") for u in urls}
    assert len(keys) == 1
    info_hash = keys.pop()
    wait_for(lambda: complete_in_swarm(tracker, info_hash) >= len(urls), 15,
             "the tracker lists every mirror as a seeder")
    return info_hash


def piece_hashes(url: str, sha256: str) -> list[bytes]:
    info = bdecode(fetch(f"{url}/api/weightswarm/torrents/{sha256}.torrent"))[b"info"]
    assert info[b"piece length"] == PIECE
    pieces = info[b"pieces"]
    return [pieces[i:i + 20] for i in range(0, len(pieces), 20)]


def pieces_held(path: Path, hashes: list[bytes], size: int) -> int:
    """Bytes of the pieces of a partial file that match the torrent: what a pull really has."""
    held = 0
    with open(path, "rb") as f:
        for i, expected in enumerate(hashes):
            data = f.read(PIECE)
            if hashlib.sha1(data).digest() == expected:
                held += min(PIECE, size - i * PIECE)
    return held


class Pull:
    """`weightswarm -v pull REPO --mirror ... --json` in its own home and HF cache."""

    def __init__(self, root: Path, mirrors: list[str]):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.home = root / "home"
        self.cache = root / "hf"
        self.mirrors = mirrors
        self.proc: subprocess.Popen | None = None
        self.runs = 0

    def start(self) -> Pull:
        self.runs += 1
        self.stdout = self.root / f"stdout.{self.runs}"
        self.stderr = self.root / f"stderr.{self.runs}"
        env = dict(os.environ, WEIGHTSWARM_HOME=str(self.home), HF_HUB_CACHE=str(self.cache))
        args = [WS, "-v", "pull", REPO, "--json", "--no-progress"]
        for m in self.mirrors:
            args += ["--mirror", m]
        with open(self.stdout, "wb") as out, open(self.stderr, "wb") as err:
            # Ctrl-C as a terminal delivers it: a test run as a background job of a script
            # inherits SIGINT ignored, and a pull keeps what it inherits (as it should).
            self.proc = subprocess.Popen(args, env=env, stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL, preexec_fn=_default_sigint)
        return self

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")

    def result(self, timeout: float) -> dict:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"pull not done after {timeout}s: {self.log()[-3000:]}") \
                from None
        assert code == 0, f"pull exited {code}: {self.log()[-3000:]}"
        return json.loads(self.stdout.read_text().strip().splitlines()[-1])

    def signal(self, sig: int, timeout: float = 15) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def partial(self, sha256: str) -> Path:
        return repo_folder(self.cache, "model", REPO) / "blobs" / f"{sha256}.wspart"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class MirrorProcess:
    """`weightswarm --home H mirror serve --port 0` as a command, so it can be SIGKILLed."""

    def __init__(self, home: Path, announce: str, egress_limit: int):
        self.log_path = home.parent / f"{home.name}.log"
        env = dict(os.environ, WEIGHTSWARM_MIRROR_TRACKERS=announce,
                   WEIGHTSWARM_MIRROR_EGRESS_LIMIT=str(egress_limit))
        with open(self.log_path, "wb") as err:
            self.proc = subprocess.Popen(
                [WS, "--home", str(home), "mirror", "serve", "--port", "0"], env=env,
                stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
        try:
            found = wait_for(lambda: self.proc.poll() is None and re.search(
                r"mirror listening on (http://127\.0\.0\.1:\d+)", self.log_path.read_text()),
                20, "the mirror command listens")
        except AssertionError:
            self.stop()
            raise AssertionError(self.log_path.read_text()[-3000:]) from None
        self.url = found.group(1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)




@pytest.fixture
def processes():
    """Pulls and mirror commands a test starts; any still running are killed afterwards."""
    started: list = []
    yield started
    for p in started:
        p.stop()


def assert_pulled(result: dict, src: Path) -> None:
    """The pull's snapshot holds the source's bytes, file by file."""
    snapshot = Path(result["path"])
    for name in ("weights.bin", "config.json"):
        assert filecmp.cmp(snapshot / name, src / name, shallow=False), f"{name} differs"


def fmt(result: dict) -> str:
    bt = result["from_peers"] + result["from_mirrors"] + result["from_web_seeds"]
    return (f"peers {result['from_peers'] / MiB:.1f} + mirrors {result['from_mirrors'] / MiB:.1f}"
            f" + web seeds {result['from_web_seeds'] / MiB:.1f} = {bt / MiB:.1f} MiB BitTorrent"
            f", http {result['http_bytes']}, {result['seconds']:.1f}s, web seeds added "
            f"{result['web_seeds_added']}, by_peer "
            + ", ".join(f"{k} {v / MiB:.1f}" for k, v in sorted(result["by_peer"].items())))


# -- 1. peers really exchange -----------------------------------------------------------------

SWARM_SIZE = 64 * MiB  # 16 pieces
SWARM_CAP = 8 * MiB  # measured: 4 MiB/s gives the same shares, in twice the time
SWARM_PEERS = 3


def capped_mirror(tmp_path: Path, tracker, serve) -> tuple[Path, str, object]:
    """A repo with one SWARM_SIZE blob, served and seeded by a mirror capped at SWARM_CAP:
    (the repo's folder, the blob's sha256, the mirror)."""
    src = tmp_path / "repo"
    sha256 = make_repo(src, SWARM_SIZE)
    import_repo(tmp_path / "m", src)
    mirror = serve(make_config(tmp_path / "m", trackers=[f"{tracker.url}/announce"],
                               egress_limit=SWARM_CAP))
    wait_seeded(tracker, [mirror.url], sha256)
    return src, sha256, mirror


def start_pulls(tmp_path: Path, mirror_url: str, processes: list) -> list[Pull]:
    pulls = [Pull(tmp_path / f"peer{i}", [mirror_url]) for i in range(SWARM_PEERS)]
    processes.extend(pulls)
    for p in pulls:
        p.start()
    return pulls


@pytest.mark.timeout(90)
def test_three_peers_pulling_at_once_get_half_their_bytes_from_each_other_and_say_whose(
        tmp_path, tracker, serve, processes):
    src, sha256, mirror = capped_mirror(tmp_path, tracker, serve)
    sent_before = egress(mirror.url)
    pulls = start_pulls(tmp_path, mirror.url, processes)
    results = [p.result(60) for p in pulls]
    time.sleep(0.5)  # the seeder reads libtorrent's counters every 0.1 s under a cap
    mirror_sent = egress(mirror.url) - sent_before

    report = "; ".join(f"peer{i}: {fmt(r)}" for i, r in enumerate(results))
    report += (f"; mirror {bt_endpoint(mirror.url)} sent {mirror_sent / MiB:.1f} MiB of "
               f"{SWARM_PEERS * SWARM_SIZE / MiB:.0f} MiB pulled")
    print(report)
    for r in results:
        assert_pulled(r, src)
    from_mirror = sum(r["from_mirrors"] + r["from_web_seeds"] for r in results)
    assert abs(from_mirror - mirror_sent) <= 2 * PIECE, (
        f"the pulls say {from_mirror / MiB:.1f} MiB came from the mirror, which sent "
        f"{mirror_sent / MiB:.1f} MiB: {report}")
    assert_carried_shown(tracker, mirror, sum(r["from_peers"] for r in results), from_mirror)
    # Issue 7's floor: each peer gets at least half of its payload from the other peers
    # (libtorrent's block alerts, each naming its sender, as the pull reports them). The pulls split the
    # mirror's pieces between them (peer/steering.py): measured 0.57-0.69 each, the mirror
    # sending 1.02-1.16x the blob (before steering: 0.25-0.62, 1.4-1.9x).
    for i, r in enumerate(results):
        bt = r["from_peers"] + r["from_mirrors"] + r["from_web_seeds"]
        assert r["from_peers"] >= 0.5 * bt, f"peer{i} got under half from peers: {report}"
    assert mirror_sent < 1.5 * SWARM_SIZE, report


def assert_carried_shown(tracker, mirror, from_peers: int, from_mirror: int) -> None:
    """Issue 21: what the pulls sent each other, by their announces to the tracker (each
    announce's `uploaded`; the last as a pull stops), is the share the operator's page shows."""
    port = json.loads(fetch(f"{mirror.url}/"))["bittorrent_port"]
    carried = wait_for(lambda: (c := json.loads(fetch(
        f"{tracker.url}/api/weightswarm/carried?port={port}")))["peers_sent"] >= from_peers
        - 2 * PIECE and c, 15, "the pulls' last announces")
    print(f"the tracker says the peers sent {carried['peers_sent'] / MiB:.1f} MiB, the mirror "
          f"{carried['mirror_sent'] / MiB:.1f} MiB; the pulls got {from_peers / MiB:.1f} MiB "
          f"from peers")
    assert carried["peers_sent"] <= from_peers + 2 * PIECE, carried
    page = httpx.get(f"{mirror.url}/-/status", headers={"Accept": "text/html"}).text
    shown = re.search(r"Peers carried (\d+) %", page)
    assert shown, page[page.find("<h2>Egress"):][:1500]
    expected = 100 * carried["peers_sent"] / (carried["peers_sent"] + from_mirror)
    assert abs(int(shown.group(1)) - expected) <= 5, (shown.group(0), expected)


# -- 1b. a pull that owns pieces freezes --------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_frozen_pull_holds_back_its_share_only_for_a_while(tmp_path, tracker, serve, processes):
    """The pulls split the mirror's pieces (peer/steering.py), so a pull that stops (SIGSTOP:
    its connections stay open, it answers nothing) owns pieces nobody else asks the mirror for.
    The others must notice, take over its share and complete; it completes once resumed."""
    src, sha256, mirror = capped_mirror(tmp_path, tracker, serve)
    hashes = piece_hashes(mirror.url, sha256)
    frozen, *others = start_pulls(tmp_path, mirror.url, processes)
    wait_for(lambda: frozen.partial(sha256).exists()
             and pieces_held(frozen.partial(sha256), hashes, SWARM_SIZE) >= PIECE, 30,
             "the pull to freeze has its first piece", every=0.05)
    frozen.proc.send_signal(signal.SIGSTOP)
    frozen_at = time.monotonic()
    held = pieces_held(frozen.partial(sha256), hashes, SWARM_SIZE)
    try:
        results = [p.result(60) for p in others]
        took = time.monotonic() - frozen_at
    finally:
        frozen.proc.send_signal(signal.SIGCONT)
    resumed = frozen.result(60)
    print(f"frozen holding {held / MiB:.0f} MiB; the other two done {took:.1f}s later: "
          + "; ".join(fmt(r) for r in results) + f"; the frozen one, resumed: {fmt(resumed)}")
    for r in (*results, resumed):
        assert_pulled(r, src)
    for p in others:
        assert ("makes no progress: its share" in p.log()
                or "every piece from anyone" in p.log()), "the frozen pull's share came anyway?"


# -- 2. a seeding mirror dies mid-pull ----------------------------------------------------------

KILL_SIZE = 64 * MiB
KILL_CAP = 8 * MiB  # each mirror: both together about 4 s, the survivor alone 8 s


@pytest.mark.timeout(90)
def test_a_mirror_killed_mid_pull_the_pull_completes_from_the_other(
        tmp_path, tracker, serve, processes):
    src = tmp_path / "repo"
    sha256 = make_repo(src, KILL_SIZE)
    announce = f"{tracker.url}/announce"
    for name in ("doomed", "kept"):
        import_repo(tmp_path / name, src)
    doomed = MirrorProcess(tmp_path / "doomed", announce, KILL_CAP)
    processes.append(doomed)
    kept = serve(make_config(tmp_path / "kept", trackers=[announce], egress_limit=KILL_CAP))
    wait_seeded(tracker, [doomed.url, kept.url], sha256)
    endpoints = f"doomed {bt_endpoint(doomed.url)}, kept {bt_endpoint(kept.url)}"
    kept_before = egress(kept.url)

    # The doomed mirror is asked first: the pull's metadata and small files come from it.
    pull = Pull(tmp_path / "peer", [doomed.url, kept.url])
    processes.append(pull)
    pull.start()
    sent = wait_for(lambda: (n := egress(doomed.url)) >= 2 * PIECE and n, 20,
                    "the doomed mirror sends the pull its first pieces", every=0.05)
    assert pull.proc.poll() is None, "the pull finished before the kill"
    doomed.proc.kill()
    doomed.proc.wait(10)
    killed_at = time.monotonic()

    result = pull.result(60)
    kept_sent = egress(kept.url) - kept_before
    print(f"the doomed mirror sent {sent / MiB:.1f} MiB, then SIGKILL; the pull took "
          f"{time.monotonic() - killed_at:.1f}s more; the kept mirror sent "
          f"{kept_sent / MiB:.1f} MiB; {fmt(result)}; endpoints {endpoints}")
    assert_pulled(result, src)
    # Only the two mirrors hold the blob: what the doomed one did not send, the kept one did.
    assert kept_sent >= KILL_SIZE - sent - PIECE


# -- 3. a mirror serves a flipped byte ----------------------------------------------------------

FLIP_SIZE = 32 * MiB
#: The bad mirror is uncapped and sends nearly everything in a fraction of a second; the good
#: one is capped, so it has sent little by then. The flipped byte sits in the last 16 KiB block
#: of its piece, the block requested last: even a piece the good mirror started is finished by
#: the fast bad one (libtorrent prefers partial pieces), so the bad byte arrives.
GOOD_CAP = 2 * MiB
BAD_PIECE = 5
FLIP_AT = (BAD_PIECE + 1) * PIECE - 100


class BadSourceNotDropped(AssertionError):
    """The source of a bad piece was not banned, or was used again."""


@pytest.mark.timeout(90)
def test_a_mirror_serving_a_flipped_byte_is_dropped_and_the_pull_completes(
        tmp_path, tracker, serve, processes):
    src = tmp_path / "repo"
    sha256 = make_repo(src, FLIP_SIZE)
    announce = f"{tracker.url}/announce"
    for name in ("bad", "good"):
        import_repo(tmp_path / name, src)
    flip_a_byte(BlobStore(tmp_path / "bad" / "store").path_for(sha256), FLIP_AT)
    # scrub_interval 0: the bad mirror must not find and mend its own blob first.
    bad = serve(make_config(tmp_path / "bad", trackers=[announce], scrub_interval="0"))
    good = serve(make_config(tmp_path / "good", trackers=[announce], scrub_interval="0",
                             egress_limit=GOOD_CAP))
    wait_seeded(tracker, [bad.url, good.url], sha256)
    endpoints = {bt_endpoint(bad.url): "bad mirror's BitTorrent",
                 bt_endpoint(good.url): "good mirror's BitTorrent",
                 f"127.0.0.1:{bad.port}": "bad mirror's web seed",
                 f"127.0.0.1:{good.port}": "good mirror's web seed"}
    before = {m.url: egress(m.url) for m in (bad, good)}

    pull = Pull(tmp_path / "peer", [bad.url, good.url])
    processes.append(pull)
    result = pull.start().result(60)
    time.sleep(0.5)  # the mirrors' egress counters follow libtorrent's every 0.1 s
    sent = {url: egress(url) - n for url, n in before.items()}
    lines = pull.log().splitlines()
    failed = [i for i, line in enumerate(lines) if "hash for piece" in line]
    banned = [line for line in lines if "banned peer" in line]
    web = [i for i, line in enumerate(lines) if "web seeds" in line and "adding" in line]
    before_web = [i for i in failed if not web or i < web[0]]
    report = (f"{fmt(result)}; bad mirror sent {sent[bad.url] / MiB:.1f} MiB, good "
              f"{sent[good.url] / MiB:.1f} MiB; {len(failed)} hash failures, "
              f"{len(before_web)} before web seeds joined (so from a BitTorrent peer); bans: "
              f"{[(line, [v for k, v in endpoints.items() if k in line]) for line in banned]}")
    print(report)
    assert_pulled(result, src)
    assert failed, f"the bad piece never arrived (the good mirror sent it?): {report}"
    assert all(f"hash for piece {BAD_PIECE} failed" in lines[i] for i in failed), report
    assert before_web, "the first bad piece came from a BitTorrent peer: web seeds wait"
    assert sent[good.url] >= PIECE, f"the good mirror sent the bad piece again: {report}"
    # Banned: said so in the log, and not asked again (one more failure at most, the bad
    # mirror's web seed, should it join).
    if not banned or len(failed) > 2:
        raise BadSourceNotDropped(report)


# -- 4. a pull killed and started again ---------------------------------------------------------

RESUME_SIZE = 128 * MiB  # 32 pieces
RESUME_CAP = 8 * MiB  # the whole pull takes about 16 s


@pytest.fixture(scope="module")
def resume_mirror(tmp_path_factory):
    """One capped mirror (and tracker) for both ways of stopping a pull."""
    root = tmp_path_factory.mktemp("resume")
    tracker = start_tracker(TrackerConfig(port=0, interval=2, min_interval=1, peer_ttl=60))
    mirror = None
    try:
        src = root / "repo"
        sha256 = make_repo(src, RESUME_SIZE)
        import_repo(root / "m", src)
        mirror = start_mirror(make_config(root / "m", trackers=[f"{tracker.url}/announce"],
                                          egress_limit=RESUME_CAP))
        wait_seeded(tracker, [mirror.url], sha256)
        yield mirror, src, sha256, piece_hashes(mirror.url, sha256)
    finally:
        if mirror is not None:
            mirror.stop()
        tracker.stop()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["sigkill", "sigint"])
def test_a_pull_stopped_and_started_again_fetches_only_what_it_lacked(
        tmp_path, resume_mirror, processes, sig):
    mirror, src, sha256, hashes = resume_mirror
    before = settled_egress(mirror.url)
    pull = Pull(tmp_path / "peer", [mirror.url])
    processes.append(pull)
    pull.start()
    partial = pull.partial(sha256)
    # A sparse, mmap-written partial file tells nothing by its size: watch the mirror send.
    wait_for(lambda: partial.exists() and egress(mirror.url) - before >= 0.4 * RESUME_SIZE, 30,
             "the mirror sent the pull 40% of the blob", every=0.05)
    assert pull.proc.poll() is None, "the pull finished before it was stopped"
    code = pull.signal(sig)
    assert partial.exists(), f"{sig.name}: exit {code}, no partial file: {pull.log()[-3000:]}"
    held = pieces_held(partial, hashes, RESUME_SIZE)  # pieces on disk that match the torrent
    lacked = RESUME_SIZE - held
    resume = list((pull.home / "resume").glob("*.resume"))
    print(f"{sig.name}: exit {code}, {held / MiB:.0f} MiB of verified pieces kept, the mirror "
          f"sent {(egress(mirror.url) - before) / MiB:.1f} MiB, resume data "
          f"{[p.name for p in resume]}")
    assert held >= 0.25 * RESUME_SIZE, "the partial file keeps the pieces received"
    if sig == signal.SIGINT:
        assert code != 0
        assert resume, "Ctrl-C saves libtorrent's resume data"

    sent = egress(mirror.url)
    result = pull.start().result(60)
    time.sleep(0.5)  # the mirror's egress counter follows libtorrent's every 0.1 s
    sent = egress(mirror.url) - sent
    fetched = (result["from_peers"] + result["from_mirrors"] + result["from_web_seeds"]
               + result["http_bytes"])
    print(f"second run: {fmt(result)}; the mirror sent {sent / MiB:.1f} MiB; it lacked "
          f"{lacked / MiB:.1f} MiB")
    assert_pulled(result, src)
    assert not partial.exists()
    assert not list((pull.home / "resume").glob("*.resume")), "resume data left behind"
    # At most two pieces more than it lacked (a piece in flight at the stop), both as the pull
    # reports it and as the mirror counted sending it.
    assert fetched <= lacked + 2 * PIECE, f"the pull says it fetched {fetched / MiB:.1f} MiB"
    assert sent <= lacked + 2 * PIECE, f"the mirror sent {sent / MiB:.1f} MiB"
