"""A lying mirror against the real index (issue 18, "Lies"): it registers with an accepted key,
serves one good feed, then a feed signed by a key nobody accepted, a replay of an older feed, a
feed with a gap, and feeds with hostile repo ids and paths. Each is refused with the reason in
the mirror's `last_error`, and the index goes on answering search and locate with what it
verified."""

from __future__ import annotations

import json
import time
import urllib.request

import msgpack
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from huggingface_hub import HfApi

from helpers import start_service, wait_for
from mirror.config import load_config
from peer.keys import public_key_text
from peer.manifest import sign
from tracker import app as tracker_app
from tracker.index import build_registration

WAIT = 30
HF = "huggingface"
COMMIT = "c" * 40


def _entry(repo_id: str, seq: int, **changes) -> dict:
    entry = {"hub": HF, "type": "model", "id": repo_id, "seq": seq, "gated": False,
             "updated_at": 1.0, "tags": ["x"], "license": None, "pipeline_tag": None,
             "library_name": None, "refs": [["branch", "main", COMMIT, seq]],
             "snapshots": [[COMMIT, "d" * 64, 10, 1, 1.0]]}
    entry.update(changes)
    return entry


def _feed(signer, since: int, upto: int, repos: list, *, key_text: str | None = None) -> bytes:
    payload = {"format": 1, "kind": "catalog", "key": key_text or public_key_text(signer),
               "since": since, "upto": upto, "full": since == 0, "more": False,
               "repos": repos, "removed": []}
    return sign("catalog", msgpack.packb(payload, use_bin_type=True), signer)


class Liar:
    """A mirror's catalog route whose answer the test sets; it serves nothing else, so its
    spot-checks fail too (it is demoted, and its rows stay listed as verified feeds)."""

    def __init__(self):
        self.answer: bytes = b""
        self.asked: list[int] = []

    async def catalog(self, request: web.Request) -> web.Response:
        self.asked.append(int(request.query.get("since", "0")))
        return web.Response(body=self.answer, content_type="application/msgpack")

    async def start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/api/weightswarm/catalog", self.catalog)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = runner.addresses[0][1]
        return runner


@pytest.fixture
def liar_and_index(tmp_path):
    key = Ed25519PrivateKey.generate()
    key_file = tmp_path / "mirror_keys"
    key_file.write_text(f"{public_key_text(key)} liar\n")
    config = load_config(home=tmp_path / "index", env={}, overrides={
        ("tracker", "host"): "127.0.0.1", ("tracker", "port"): 0,
        ("tracker", "mirror_keys"): str(key_file), ("tracker", "poll_interval"): 0.2}).tracker
    tracker = start_service(tracker_app.start, config)
    liar = Liar()
    runner = tracker.call(liar.start())
    base = f"http://127.0.0.1:{liar.port}"
    request = urllib.request.Request(f"{tracker.url}/api/weightswarm/register", method="POST",
                                     data=build_registration(key, base, now=time.time()))
    assert urllib.request.urlopen(request, timeout=10).status == 200
    yield tracker, liar, key
    tracker.call(runner.cleanup())
    tracker.stop()


def _liar_row(tracker) -> dict:
    body = json.loads(urllib.request.urlopen(f"{tracker.url}/api/weightswarm/mirrors",
                                             timeout=10).read())
    return body["mirrors"][0]


def _found(tracker) -> set[str]:
    return {m.id for m in HfApi(endpoint=tracker.url).list_models(search="org")}


def test_every_lie_is_refused_and_what_was_verified_is_kept(liar_and_index):
    tracker, liar, key = liar_and_index
    liar.answer = _feed(key, 0, 3, [_entry("org/kept", 3)])
    wait_for(lambda: _liar_row(tracker)["upto"] == 3, WAIT, "the good feed applied")
    assert _found(tracker) == {"org/kept"}

    stranger = Ed25519PrivateKey.generate()
    lies = [
        (_feed(stranger, 3, 4, [_entry("org/forged", 4)]), "does not trust"),
        (_feed(stranger, 3, 4, [_entry("org/forged", 4)], key_text=public_key_text(key)),
         "does not trust"),  # names the mirror's key, signed by another
        (_feed(key, 0, 2, [_entry("org/older", 2)]), "starts at sequence 0"),  # a replay
        (_feed(key, 5, 6, [_entry("org/after-gap", 6)]), "gap"),
        (_feed(key, 3, 4, [_entry("../../etc/passwd", 4)]), "hostile repo id"),
        (_feed(key, 3, 4, [_entry("org/x", 4, refs=[["branch", "../main", COMMIT, 4]])]),
         "hostile ref name"),
        (b"\x93not a feed", "envelope"),
    ]
    for answer, reason in lies:
        liar.answer = answer
        asked = len(liar.asked)
        row = wait_for(lambda n=asked: len(liar.asked) > n + 1 and _liar_row(tracker), WAIT,
                       f"a poll after the lie ({reason})")
        assert reason in (row["last_error"] or ""), (reason, row["last_error"])
        assert row["upto"] == 3, "the cursor stays where the verified feed left it"
        assert _found(tracker) == {"org/kept"}, "search answers with what was verified"
    status = urllib.request.urlopen(
        f"{tracker.url}/api/weightswarm/locate/{HF}/model/org/kept?revision=main",
        timeout=10).status
    assert status == 200
    assert _liar_row(tracker)["demoted"], "its spot-check found no manifest: demoted"
