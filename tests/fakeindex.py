"""A stand-in for the index (tracker/index.py, issue 18) that peers ask, until the real one
serves these routes: the same answers, signed with peer/locate.py as the index signs them.

- `/api/weightswarm/key`: `{"key": "ed25519:..."}`
- `/api/weightswarm/keys`: the signed list of accepted mirror keys (`accept`)
- `/api/weightswarm/locate/<hub>/<type>/<repo>?revision=R`: the signed locate answer, the
  mirrors in the order `hold` gave them (the real index orders them by nearness)
- `/api/models`, `/api/datasets` (and under `/hubs/<hub>/`): the `listing` items as given

It decides nothing: a test says what it answers. Its lies are switches: `keys_signer` signs the
key list with another key than the one it serves. A test written against it needs, to run
against the real index instead, the mirrors registered with it (their keys in its
`mirror_keys` file) and polled, which is what `accept` and `hold` stand for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fakeserver import LoopServers

from peer.keys import public_key_text
from peer.locate import AcceptedKey, Located, LocatedMirror, sign_key_list, sign_located


@dataclass
class Holding:
    commit: str
    #: (base URL, mirror key, commit it holds)
    mirrors: list[tuple[str, str, str]]


@dataclass
class FakeIndex(LoopServers):
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    #: signs the key list instead of `key` (a lie), if set
    keys_signer: Ed25519PrivateKey | None = None
    accepted: list[AcceptedKey] = field(default_factory=list)
    held: dict[tuple[str, str, str, str], Holding] = field(default_factory=dict)
    #: what /api/models (or /api/datasets) answers, by (hub, "models" or "datasets")
    listing: dict[tuple[str, str], list[dict]] = field(default_factory=dict)
    #: every path asked, in order
    asked: list[str] = field(default_factory=list)
    url: str = ""
    thread_name = "fake-index"

    @property
    def public_key(self) -> str:
        return public_key_text(self.key)

    def accept(self, key: str, name: str | None = None, base_url: str | None = None) -> None:
        self.accepted.append(AcceptedKey(key, name, base_url))

    def hold(self, repo: str, commit: str, mirrors: list[tuple[str, str, str]], *,
             revision: str = "main", hub: str = "huggingface", type_: str = "model") -> None:
        self.held[(hub, type_, repo, revision)] = Holding(commit, mirrors)

    def located(self, hub: str, type_: str, repo: str, revision: str, address: str) -> Located:
        holding = self.held.get((hub, type_, repo, revision))
        mirrors = () if holding is None else tuple(
            LocatedMirror(key, None, url, None, None, None, commit, "0" * 64,
                          commit != holding.commit, "other", False, False, time.time())
            for url, key, commit in holding.mirrors)
        return Located(self.public_key, hub, type_, repo, revision,
                       holding.commit if holding else None, address, time.time(), mirrors)

    async def _start_servers(self) -> None:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/api/weightswarm/key", self._key)
        app.router.add_get("/api/weightswarm/keys", self._keys)
        app.router.add_get("/api/weightswarm/locate/{hub}/{type}/{repo:.+}", self._locate)
        app.router.add_get("/api/{kind:models|datasets}", self._list)
        app.router.add_get("/hubs/{hub}/api/{kind:models|datasets}", self._list)
        _, port = await self._listen(app)
        self.url = f"http://127.0.0.1:{port}"

    @web.middleware
    async def _record(self, request: web.Request, handler):
        self.asked.append(request.path_qs)
        return await handler(request)

    async def _key(self, request: web.Request) -> web.Response:
        return web.json_response({"key": self.public_key})

    async def _keys(self, request: web.Request) -> web.Response:
        body = sign_key_list(self.accepted, self.keys_signer or self.key, time.time())
        return web.Response(body=body, content_type="application/msgpack")

    async def _locate(self, request: web.Request) -> web.Response:
        m = request.match_info
        answer = self.located(m["hub"], m["type"], m["repo"],
                              request.query.get("revision", "main"), request.remote)
        return web.Response(body=sign_located(answer, self.key),
                            content_type="application/msgpack")

    async def _list(self, request: web.Request) -> web.Response:
        hub = request.match_info.get("hub", "huggingface")
        return web.json_response(self.listing.get((hub, request.match_info["kind"]), []))
