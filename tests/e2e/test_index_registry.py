"""Real mirrors register with a real index, which polls their signed feeds, spot-checks their
blobs and forgets a revoked one (issue 18, items 1, 2 and 7)."""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.error
import urllib.request

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from helpers import (
    import_repo,
    index_mirrors,
    make_config,
    make_tiny_model,
    start_mirror,
    start_service,
    wait_for,
)
from mirror.config import load_config
from peer.keys import load_or_create, public_key_text
from tracker import app as tracker_app
from tracker.index import build_registration

WAIT = 30


def _post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture
def network(tmp_path):
    tiny = make_tiny_model(tmp_path / "tiny", big_size=4096)
    homes = {name: tmp_path / name for name in ("alpha", "beta", "gamma")}
    keys = {name: public_key_text(load_or_create(make_config(home).key_path))
            for name, home in homes.items()}
    import_repo(homes["alpha"], tiny, "org/a1")
    import_repo(homes["alpha"], tiny, "org/secret", access="private")
    import_repo(homes["beta"], tiny, "org/b1")
    import_repo(homes["beta"], tiny, "org/b2")
    import_repo(homes["gamma"], tiny, "org/g1")
    key_file = tmp_path / "mirror_keys"
    key_file.write_text("".join(f"{keys[n]} {n}\n" for n in homes))
    tracker_config = load_config(home=tmp_path / "index", env={}, overrides={
        ("tracker", "host"): "127.0.0.1", ("tracker", "port"): 0,
        ("tracker", "mirror_keys"): str(key_file), ("tracker", "poll_interval"): 0.2}).tracker
    tracker = start_service(tracker_app.start,
                            tracker_config)
    mirrors = {name: start_mirror(make_config(home, index=tracker.url, seed=False))
               for name, home in homes.items()}
    yield tracker, mirrors, homes, key_file, tiny
    for m in mirrors.values():
        m.stop()
    tracker.stop()


def test_mirrors_register_are_polled_checked_and_revoked(network, tmp_path):
    tracker, mirrors, homes, key_file, tiny = network
    listed = wait_for(lambda: (v := index_mirrors(tracker.url)) and len(v) == 3
                      and all(m["last_verified"] for m in v.values()) and v,
                      WAIT, "three mirrors registered, polled and verified")
    assert {n: m["repos"] for n, m in listed.items()} == {"alpha": 1, "beta": 2, "gamma": 1}
    assert listed["alpha"]["base_url"] == mirrors["alpha"].url
    assert not any(m["demoted"] for m in listed.values())

    import_repo(homes["gamma"], tiny, "org/g2")  # published later: there after a poll
    wait_for(lambda: index_mirrors(tracker.url)["gamma"]["repos"] == 2, WAIT, "a new repo indexed")

    key_file.write_text("".join(line + "\n" for line in key_file.read_text().splitlines()
                                if not line.endswith(" gamma")))
    wait_for(lambda: "gamma" not in index_mirrors(tracker.url), WAIT, "a revoked mirror forgotten")

    stranger = Ed25519PrivateKey.generate()
    status, body = _post(f"{tracker.url}/api/weightswarm/register",
                         build_registration(stranger, "http://127.0.0.1:1", now=time.time()))
    assert status == 403 and "does not trust" in body["error"], body

    intruder = Ed25519PrivateKey.generate()
    with key_file.open("a") as f:
        f.write(f"{public_key_text(intruder)} intruder\n")
    status, body = _post(f"{tracker.url}/api/weightswarm/register",
                         build_registration(intruder, mirrors["alpha"].url, now=time.time()))
    assert status == 409 and "another mirror" in body["error"], body

    for blob in (homes["beta"] / "store" / "blobs").rglob("*"):
        if blob.is_file():
            blob.unlink()  # beta still lists what it no longer serves
    wait_for(lambda: index_mirrors(tracker.url)["beta"]["demoted"], WAIT, "beta demoted")
    now = index_mirrors(tracker.url)
    assert "blob" in now["beta"]["demoted_reason"] or "manifest" in now["beta"]["demoted_reason"]
    assert not now["alpha"]["demoted"] and now["alpha"]["repos"] == 1, "the rest still answer"

    db = sqlite3.connect(tmp_path / "index" / "index.sqlite")
    held = {r[0] for r in db.execute("SELECT repo_id FROM repos")}
    db.close()
    assert "org/secret" not in held and "org/a1" in held, "private repos never reach the index"
    assert urllib.request.urlopen(f"{tracker.url}/api/weightswarm/key", timeout=10).status == 200
