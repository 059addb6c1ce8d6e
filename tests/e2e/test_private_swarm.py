"""Private swarms (issue 20, item 4): a gated model's large blob is a private torrent
(`private: 1`), given by the torrent route only to a reader, announced to `/announce/<key>`
with the reader's own key, which the mirror feeds its tracker; the tracker refuses the open
path and a revoked token's key; `weightswarm pull --token` fetches it over BitTorrent from the
mirror and a second peer, byte-identical, and without a token is refused before any byte."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote_from_bytes, urlsplit

import httpx2 as httpx
import pytest

from helpers import (
    import_repo,
    make_config,
    make_tiny_model,
    plain_session,
    start_mirror,
    start_service,
    wait_for,
)
from mirror.accounts import add_token
from mirror.config import load_config
from peer.bencode import bdecode
from peer.keys import load_or_create, public_key_text
from peer.torrent import info_hash as compute_info_hash
from tracker import app as tracker_app

REPO = "meta/gated"
OPEN = "org/open"
BIG = "big.bin"
MiB = 1 << 20


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    root = tmp_path_factory.mktemp("private")
    home = root / "mirror"
    model = make_tiny_model(root / "model", big_size=16 * MiB)
    import_repo(home, model, REPO, access="gated")
    public = make_tiny_model(root / "public", seed=1, big_size=6 * MiB)
    import_repo(home, public, OPEN)
    key_file = root / "mirror_keys"
    key_file.write_text(f"{public_key_text(load_or_create(make_config(home).key_path))} m\n")
    tracker = start_service(tracker_app.start, load_config(home=root / "tracker", env={},
                            overrides={("tracker", "host"): "127.0.0.1",
                                       ("tracker", "port"): 0,
                                       ("tracker", "mirror_keys"): str(key_file)}).tracker)
    access = home / "access.toml"
    (home / "weightswarm.toml").write_text('[mirror]\naccess_file = "access.toml"\n')
    tokens = {user: add_token(access, user, read=["meta/*"] if user != "dave" else ["x/*"],
                              admin=[], expires=None)
              for user in ("alice", "bob", "carol", "dave")}
    mirror = start_mirror(make_config(home, access_file="access.toml", index=tracker.url,
                                      trackers=[f"{tracker.url}/announce"]))
    yield tracker, mirror, home, model, tokens, public
    mirror.stop()
    tracker.stop()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _torrent(mirror, sha256: str, token: str | None, **params) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{mirror.url}/api/weightswarm/torrents/{sha256}.torrent",
                     headers=headers, params=params)


def _announce(url: str, info_hash: bytes, port: int, left: int = 1) -> dict:
    query = (f"info_hash={quote_from_bytes(info_hash)}&peer_id=-XX0001-{port:012d}"
             f"&port={port}&left={left}&compact=1")
    return bdecode(httpx.get(f"{url}?{query}").content)


def _scrape(url: str, info_hash: bytes) -> dict:
    return bdecode(httpx.get(f"{url}?info_hash={quote_from_bytes(info_hash)}").content)


def test_every_path_keeps_the_private_swarm_to_its_readers(network):
    tracker, mirror, home, model, tokens, _ = network
    sha256 = _sha256(model / BIG)
    assert _torrent(mirror, sha256, None).status_code == 401
    assert _torrent(mirror, sha256, tokens["dave"]).status_code == 404, "no right: no torrent"
    assert _torrent(mirror, sha256, tokens["alice"], format="magnet").status_code == 400
    got = _torrent(mirror, sha256, tokens["alice"])
    assert got.status_code == 200
    torrent = bdecode(got.content)
    assert torrent[b"info"][b"private"] == 1
    announce = torrent[b"announce"].decode()
    assert announce.startswith(f"{tracker.url}/announce/") and len(urlsplit(
        announce).path.rsplit("/", 1)[1]) == 40, announce
    info_hash = bytes.fromhex(compute_info_hash(torrent[b"info"]))
    # The mirror seeds it in the private swarm, under its own key: a reader sees it there.
    wait_for(lambda: _scrape(announce.replace("/announce/", "/scrape/"), info_hash)[
        b"files"][info_hash][b"complete"] >= 1, 30, "the mirror seeding the private swarm")
    refused = _announce(f"{tracker.url}/announce", info_hash, 7001)
    assert b"private torrent" in refused[b"failure reason"], "the open path"
    assert _scrape(f"{tracker.url}/scrape", info_hash)[b"files"][info_hash][b"complete"] == 0
    # Another user's key works; revoked, it fails at once (the mirror feeds the change).
    carol = bdecode(_torrent(mirror, sha256, tokens["carol"]).content)[b"announce"].decode()
    assert carol != announce, "a key per token"
    assert b"peers" in _announce(carol, info_hash, 7002)
    done = subprocess.run([sys.executable, "-m", "mirror.cli", "--home", str(home), "mirror",
                           "token", "revoke", "carol"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    wait_for(lambda: b"unknown or revoked" in _announce(carol, info_hash, 7003).get(
        b"failure reason", b""), 15, "the revoked token's key refused by the tracker")
    assert b"peers" in _announce(announce, info_hash, 7004), "alice's key still works"


def _pull(home: Path, mirror_url: str, token: str | None, cache: Path
          ) -> subprocess.CompletedProcess:
    from helpers import hf_env

    args = [sys.executable, "-m", "mirror.cli", "--home", str(home), "pull", REPO,
            "--mirror", mirror_url, "--json", "--no-progress"]
    if token:
        args += ["--token", token]
    return subprocess.run(args, capture_output=True, text=True, timeout=180,
                          env=hf_env(None, cache))


def test_a_gated_model_pulled_with_a_token_over_bittorrent_from_the_mirror_and_a_peer(
        network, tmp_path):
    import libtorrent as lt

    tracker, mirror, _, model, tokens, _ = network
    sha256 = _sha256(model / BIG)
    # A second peer that holds the file, in the private swarm under bob's key.
    data = _torrent(mirror, sha256, tokens["bob"]).content
    held = tmp_path / "bob"
    held.mkdir()
    shutil.copy(model / BIG, held / sha256)
    bob = plain_session()
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(lt.bdecode(data))
    params.save_path = str(held)
    params.trackers = [bdecode(data)[b"announce"].decode()]
    handle = bob.add_torrent(params)
    handle.force_recheck()
    wait_for(lambda: handle.status().is_seeding, 30, "bob's peer seeding")
    handle.force_reannounce()
    try:
        refused = _pull(tmp_path / "anon-home", mirror.url, None, tmp_path / "anon-cache")
        assert refused.returncode != 0
        assert "is gated" in refused.stderr and "--token" in refused.stderr, refused.stderr
        assert not any(p.is_file() for p in (tmp_path / "anon-cache").rglob("*")), \
            "refused before any byte"
        result = _pulled(tmp_path / "alice", mirror.url, tokens["alice"], model)
        assert result["from_peers"] > 0, "bob's peer, in the private swarm"
    finally:
        bob.remove_torrent(handle)
    # bob gone: the same pull, afresh, from the mirror alone (its private seed, or its web
    # seed, which takes the token too)
    result = _pulled(tmp_path / "again", mirror.url, tokens["alice"], model)
    assert result["from_peers"] == 0 and result["from_mirrors"] + result["from_web_seeds"] > 0


def _pulled(root: Path, mirror_url: str, token: str, model: Path) -> dict:
    started = time.monotonic()
    done = _pull(root / "home", mirror_url, token, root / "cache")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    print(f"pulled in {time.monotonic() - started:.1f}s: by peer {result['by_peer']}, from "
          f"peers {result['from_peers']}, mirrors {result['from_mirrors']}, web seeds "
          f"{result['from_web_seeds']}")
    folder = Path(result["path"])
    for f in model.rglob("*"):
        if f.is_file():
            assert (folder / f.relative_to(model)).read_bytes() == f.read_bytes(), f.name
    assert not list((root / "home").glob("torrents/*")), \
        "a token's pull leaves nothing for the peer daemon to relay"
    return result


DHT = {"enable_dht": True, "enable_lsd": True, "dht_restrict_routing_ips": False,
       "dht_restrict_search_ips": False, "dht_bootstrap_nodes": "",
       "enable_upnp": False, "enable_natpmp": False, "enable_ip_notifier": False,
       "listen_interfaces": "127.0.0.1:0", "enable_outgoing_utp": False,
       "enable_incoming_utp": False, "allow_multiple_connections_per_ip": True}


def test_dht_and_local_discovery_never_find_the_private_swarm(network, tmp_path):
    """Two stock libtorrent sessions with DHT and local discovery on, on loopback: one holds
    the private torrent the mirror gave a reader and, as a control, a public one; the other,
    told of neither tracker nor peer, finds the public one by DHT and never the private one.
    (Local discovery multicasts, which loopback does not carry: it is on, with no control.)"""
    import libtorrent as lt

    tracker, mirror, _, model, tokens, public = network
    held = tmp_path / "held"
    held.mkdir()
    seeder, finder = lt.session(DHT), lt.session(DHT)
    hashes = {}
    for name, folder, token in (("private", model, tokens["alice"]), ("public", public, None)):
        sha256 = _sha256(folder / BIG)
        info = bdecode(_torrent(mirror, sha256, token).content)[b"info"]
        assert (info.get(b"private") == 1) == (name == "private")
        shutil.copy(folder / BIG, held / sha256)
        params = lt.add_torrent_params()
        params.ti = lt.torrent_info(lt.bdecode(lt.bencode({b"info": info})))
        params.save_path = str(held)
        handle = seeder.add_torrent(params)  # no tracker: DHT and LSD only
        handle.force_recheck()
        hashes[name] = compute_info_hash(info)
    wait_for(lambda: all(h.status().is_seeding for h in seeder.get_torrents()), 30, "seeding")
    finder.add_dht_node(("127.0.0.1", seeder.listen_port()))
    seeder.add_dht_node(("127.0.0.1", finder.listen_port()))
    found = {}
    for name, digest in hashes.items():
        params = lt.parse_magnet_uri(f"magnet:?xt=urn:btih:{digest}")
        params.save_path = str(tmp_path / f"found-{name}")
        found[name] = finder.add_torrent(params)
    wait_for(lambda: found["public"].status().is_seeding, 60, "the public one found by DHT")
    time.sleep(5)  # the private one had as long, and more
    private = found["private"].status()
    assert not private.has_metadata and private.num_peers == 0 and private.total_done == 0
