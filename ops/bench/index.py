"""Benchmark: the federated index (issue 18) holding `--repos` repos (1,000,000) across
`--mirrors` mirrors (100), against one mirror's catalog of the same repos.

The network is generated: ids like `org/name-size-variant` (orgs of Zipf-like sizes, names from
a small vocabulary, some capitalised), hub huggingface, 85 % models and 15 % datasets, card
fields and tags from a small vocabulary (the tags as a mirror derives them), 1-3 refs and 1-2
snapshots each. Each repo has one mirror; 10 % of them also have one or two more, two thirds of
those a commit behind. Every mirror's catalog reaches the index as the poller takes it: signed
feeds of FEED_LIMIT repos (the first full, the rest incremental), each checked by `read_feed`
and applied by `IndexStore.apply_feed` in turn, one page of every mirror a round. Ingest is the
time of those two calls only (making and signing the feeds is not counted). After
`--ingest-budget` seconds no further feed is applied, and the rest runs on what the index
holds (the mirror's catalog then holds the same repos): the table says so.

Then the real tracker app (with its index) serves that index.sqlite from a subprocess, and a
real mirror app (seeding off) serves a catalog.sqlite filled with the same repos: the rows
`Catalog.publish` writes (checked against it on the first 300 repos), a batch of repos a
statement, the full-text index built once. Each server is pinned to the first core; this
script and its load generators to the second. Both answer the same listings (`limit=20`, what
`weightswarm search` asks): substring (`search=`), author, filter (one tag, picked as often as
it is used), and sorted (`sort=lastModified`, one of the first ten pages); the index also
`locate`s a random repo's main (`ip=` inside some mirror's netblock), and answers its key
("constant": an answer that costs nothing to make, so what any answer costs in that server:
the floor under every other row). Each is measured at one connection (the service time, this
script's aiohttp client) and then at 64 connections by wrk (a C client: this script's own
would be the bottleneck above a few thousand answers a second), each connection sending its
next request when its answer came (a closed loop: a server answering X requests/s keeps each
one about 64/X s), the paths in turn for `--seconds`. The index keeps the answers it computed
until its database changes (peer/answers.py), so the index is also measured at 64 connections
on the queries the one-connection run did not ask, each once: a query's first time.
A 64-connection run whose first wave alone would outlast `--seconds` (64 times the
one-connection median) is not run; its figures are estimated as 64 times the one-connection
ones, marked "est.". A request still open at a time bound counts as taking at least as long as
it had waited (a p99 it decides is marked "≥"; wrk does not say how long its open ones waited,
so its p99 is marked when they are more than 1 % of the answers).

RSS is the index server's (VmRSS, and VmHWM the peak, from /proc) after every measurement.

Run: .venv/bin/python ops/bench/index.py [--quick] [--repos 1000000] [--mirrors 100]
     [--mirror-repos N] [--requests 3000] [--seconds 10] [--connections 64]
     [--feed-limit 1000] [--ingest-budget 300] [--ingest-only] [--cache DIR]
Needs two cores and wrk (Debian's wrk). --quick: 50,000 repos, a 20 s ingest budget, fewer requests and shorter
bounds. --cache DIR keeps the index and the catalog it built, and a later run of the same
sizes (and schema) takes them from there instead of building them again.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import hashlib
import itertools
import json
import os
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from bisect import bisect
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote, urlencode

ROOT = Path(__file__).resolve().parents[2]
# Before this script's folder: its tracker.py would shadow the tracker package.
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import msgpack  # noqa: E402
from benchlib import (  # noqa: E402
    BenchError,
    Server,
    await_port,
    bench_main,
    clean_env,
    find_tools,
    note,
    two_cores,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from mirror.catalog import CARD_FIELDS, Catalog, NewSnapshot, _list, _text  # noqa: E402
from peer.feed import FEED_LIMIT, MAX_ENTRIES, read_feed  # noqa: E402
from peer.hfformat import FileEntry, derive_tags  # noqa: E402
from peer.keys import public_key_text  # noqa: E402
from peer.manifest import FORMAT, sign  # noqa: E402
from tracker.index import BATCH_REPOS, IndexRefused, IndexStore, Registration  # noqa: E402

SEED = 18
HUB = "huggingface"
LIMIT = 20
#: share of repos a second (or third) mirror holds too, and of those, the share a commit behind
SHARED = 0.10
BEHIND = 2 / 3
TARGETS = {"search_p99_ms": 20.0, "locate_p99_ms": 5.0, "ingest_s": 60.0, "rss_bytes": 1 << 30}
#: the 1M rows of the target are repos (one entry each in the index)
TARGET_REPOS = 1_000_000

STEMS = [("llama", 12), ("mistral", 6), ("qwen", 6), ("bert", 8), ("whisper", 3), ("gemma", 3),
         ("phi", 2), ("t5", 3), ("roberta", 3), ("vit", 2), ("clip", 2), ("resnet", 2),
         ("deberta", 2), ("falcon", 1), ("mixtral", 1), ("stable-diffusion", 3),
         ("wav2vec2", 2), ("distilbert", 3), ("electra", 1), ("bloom", 1), ("pythia", 1),
         ("starcoder", 1), ("codellama", 1), ("yolo", 1), ("segformer", 1), ("blip", 1),
         ("llava", 1), ("zephyr", 1), ("opus-mt", 2), ("xlm-roberta", 2), ("gpt2", 3),
         ("bart", 2)]
SIZES = ["7b", "13b", "70b", "8b", "1.5b", "0.5b", "3b", "base", "large", "small", "tiny",
         "mini", "xl"]
VARIANTS = ["instruct", "chat", "gguf", "awq", "gptq", "finetuned", "lora", "v0.1", "v2", "it",
            "uncased", "sft", "dpo", "merged", "4bit", "onnx", "exl2"]
ORG_WORDS = ["deep", "open", "neural", "ai", "lab", "mind", "tensor", "vision", "speech", "data",
             "stack", "bloke", "forge", "nlp", "research"]
PIPELINES = [("text-generation", 40), ("text-classification", 12), ("feature-extraction", 8),
             ("automatic-speech-recognition", 5), ("image-classification", 6),
             ("text-to-image", 5), ("translation", 4), ("fill-mask", 6), (None, 14)]
LIBRARIES = [("transformers", 55), ("gguf", 12), ("diffusers", 6), ("peft", 8),
             ("sentence-transformers", 6), ("timm", 3), (None, 10)]
LICENSES = [("apache-2.0", 35), ("mit", 20), ("llama2", 8), ("cc-by-4.0", 8), ("other", 9),
            (None, 20)]
LANGUAGES = [("en", 50), ("zh", 8), ("fr", 5), ("multilingual", 5), (None, 32)]


def _weighted(pairs):
    values, weights = zip(*pairs, strict=True)
    return list(values), list(itertools.accumulate(weights))


_STEMS, _STEM_W = _weighted(STEMS)
_PIPES, _PIPE_W = _weighted(PIPELINES)
_LIBS, _LIB_W = _weighted(LIBRARIES)
_LICS, _LIC_W = _weighted(LICENSES)
_LANGS, _LANG_W = _weighted(LANGUAGES)


def org_name(k: int) -> str:
    """The k-th organisation: distinct for every k."""
    name = ORG_WORDS[k % 15] + ORG_WORDS[k // 15 % 15] + (str(k // 225) if k >= 225 else "")
    return name.capitalize() if k % 7 == 0 else name


# -- the generated network: pure ------------------------------------------------------------------


class Spec(NamedTuple):
    """What repo i is, whoever holds it: version v's commit is `commit(i, v)`."""

    type: str
    repo_id: str
    versions: int  # the newest is versions - 1
    two_snapshots: bool
    dev_branch: bool
    created: float  # version 0's
    step: float  # seconds between versions
    card: dict
    safetensors: bool
    size: int
    files: int


def commit(i: int, v: int) -> str:
    return hashlib.sha1(b"%d/%d" % (i, v)).hexdigest()


class Network:
    """Repo ids, what each is (drawn once, kept in arrays), and which mirrors hold which (rank
    0: the newest commit, rank 1: one behind)."""

    def __init__(self, repos: int, mirrors: int):
        rng = random.Random(SEED)
        r = rng.random
        orgs = max(1, repos // 50)
        org_w = list(itertools.accumulate(1 / (k + 10) for k in range(orgs)))
        self.orgs = [org_name(k) for k in range(orgs)]
        self.org_of = array("I", (bisect(org_w, r() * org_w[-1]) for _ in range(repos)))
        self.ids: list[str] = []
        seen: set[str] = set()
        for i in range(repos):
            stem = _STEMS[bisect(_STEM_W, r() * _STEM_W[-1])]
            if r() < 0.3:
                stem = stem.capitalize()
            name = f"{self.orgs[self.org_of[i]]}/{stem}-{rng.choice(SIZES)}-{rng.choice(VARIANTS)}"
            unique, n = name, 1
            while unique.lower() in seen:
                n += 1
                unique = f"{name}-{n}"
            seen.add(unique.lower())
            self.ids.append(unique)
        del seen
        self.types = bytes(r() < 0.15 for _ in range(repos))  # 1: a dataset
        self.cards = array("H")  # an index into the card fields' combinations
        self.shape = bytearray()  # versions - 3, two snapshots, a dev branch, safetensors
        self.created, self.step = array("d"), array("d")
        self.size, self.files = array("q"), bytearray()
        combos = (len(_LICS), len(_PIPES), len(_LIBS), len(_LANGS))
        for i in range(repos):
            dataset = self.types[i]
            lic = bisect(_LIC_W, r() * _LIC_W[-1])
            pipe = len(_PIPES) - 1 if dataset else bisect(_PIPE_W, r() * _PIPE_W[-1])
            lib = len(_LIBS) - 1 if dataset else bisect(_LIB_W, r() * _LIB_W[-1])
            lang = bisect(_LANG_W, r() * _LANG_W[-1])
            self.cards.append(((lic * combos[1] + pipe) * combos[2] + lib) * combos[3] + lang)
            self.shape.append(rng.randrange(3) | (r() < 0.5) << 2 | (r() < 0.2) << 3
                              | (not dataset and r() < 0.7) << 4)
            self.created.append(1.6e9 + r() * 1.2e8)
            self.step.append(3600 + r() * 30 * 86400)
            self.size.append(rng.randrange(1 << 20, 1 << 36))
            self.files.append(rng.randrange(3, 40))
        self._card_cache: dict[int, dict] = {}
        self._tag_cache: dict[tuple[int, bool], list[str]] = {}
        self.mirrors = mirrors
        self.holdings: list[list[tuple[int, int]]] = [[] for _ in range(mirrors)]
        for i in range(repos):
            first = rng.randrange(mirrors)
            self.holdings[first].append((i, 0))
            if mirrors > 1 and r() < SHARED:
                others = _distinct(rng, mirrors, first,
                                   1 if mirrors < 3 or r() < 0.8 else 2)
                for m in others:
                    self.holdings[m].append((i, 1 if r() < BEHIND else 0))

    def card(self, i: int) -> dict:
        """Repo i's card fields (shared: not to be changed)."""
        n = self.cards[i]
        card = self._card_cache.get(n)
        if card is None:
            rest, lang = divmod(n, len(_LANGS))
            rest, lib = divmod(rest, len(_LIBS))
            lic, pipe = divmod(rest, len(_PIPES))
            card = {k: v for k, v in (("license", _LICS[lic]), ("pipeline_tag", _PIPES[pipe]),
                                      ("library_name", _LIBS[lib]), ("language", _LANGS[lang]))
                    if v is not None}
            self._card_cache[n] = card
        return card

    def spec(self, i: int) -> Spec:
        shape = self.shape[i]
        return Spec("dataset" if self.types[i] else "model", self.ids[i], 3 + (shape & 3),
                    bool(shape & 4), bool(shape & 8), self.created[i], self.step[i],
                    self.card(i), bool(shape & 16), self.size[i], self.files[i])

    def tags(self, i: int) -> list[str]:
        """Repo i's tags, as a mirror derives them (shared: not to be changed)."""
        key = (self.cards[i], bool(self.shape[i] & 16))
        tags = self._tag_cache.get(key)
        if tags is None:
            tags = self._tag_cache[key] = derive_tags(self.card(i), key[1])
        return tags

    @staticmethod
    def held(spec: Spec, rank: int) -> tuple[list[int], list[tuple]]:
        """(versions held, oldest first; refs as (kind, name, version)) at a holder of `rank`."""
        top = spec.versions - 1 - rank
        versions = [top - 1, top] if spec.two_snapshots else [top]
        refs = [("branch", "main", top)]
        if spec.two_snapshots:
            refs.append(("tag", "v1.0", top - 1))
        if spec.dev_branch:
            refs.append(("branch", "dev", top))
        return versions, refs

    def entry(self, i: int, rank: int, seq: int, mirror: int) -> dict:
        """Repo i as mirror/feed.py's `_repo_entry` puts it in a feed."""
        spec = self.spec(i)
        versions, refs = self.held(spec, rank)
        snapshots = []
        for v in versions:
            torrents = [hashlib.sha1(b"t%d/%d" % (i, v)).hexdigest()] if spec.size > 1 << 28 \
                else []
            snapshots.append([commit(i, v),
                              hashlib.sha256(b"%d/%d/%d" % (i, v, mirror)).hexdigest(),
                              spec.size, spec.files, spec.created + v * spec.step, torrents])
        card = spec.card
        return {"hub": HUB, "type": spec.type, "id": spec.repo_id, "seq": seq, "gated": False,
                "updated_at": spec.created + versions[-1] * spec.step,
                "tags": self.tags(i), "license": card.get("license"),
                "pipeline_tag": card.get("pipeline_tag"),
                "library_name": card.get("library_name"),
                "refs": [[kind, name, commit(i, v), seq] for kind, name, v in refs],
                "snapshots": snapshots}


def _distinct(rng: random.Random, mirrors: int, not_this: int, count: int) -> list[int]:
    picked: list[int] = []
    while len(picked) < count:
        m = rng.randrange(mirrors)
        if m != not_this and m not in picked:
            picked.append(m)
    return picked


# -- ingest: the feeds, checked and applied -------------------------------------------------------


@dataclass
class Ingest:
    repos: int = 0  # entries in feeds (a repo for each mirror holding it)
    feeds: int = 0
    read_s: float = 0.0
    apply_s: float = 0.0
    make_s: float = 0.0
    rows: int = 0
    entries: int = 0
    #: the repos the index holds (all of them unless the budget stopped the ingest), sorted
    held: list[int] = field(default_factory=list)
    stopped: bool = False
    #: (repos, seconds) after each feed: how the rate changes as the index grows
    progress: list[tuple[int, float]] = field(default_factory=list)
    #: where the index came from, if an earlier run built it (--cache)
    cached_from: str | None = None

    @property
    def seconds(self) -> float:
        return self.read_s + self.apply_s

    def rate(self, start: float, end: float) -> float:
        """Repos/s over the feeds from share `start` to share `end` of the run."""
        first = self.progress[int(start * (len(self.progress) - 1))]
        last = self.progress[int(end * (len(self.progress) - 1))]
        if last[1] <= first[1]:
            return self.repos / self.seconds if self.seconds else 0.0
        return (last[0] - first[0]) / (last[1] - first[1])


@dataclass(frozen=True)
class MirrorId:
    key: Ed25519PrivateKey
    text: str
    base_url: str
    netblock: str


def mirror_ids(count: int, closed_port: int) -> list[MirrorId]:
    out = []
    for k in range(count):
        key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"mirror %d" % k).digest())
        out.append(MirrorId(key, public_key_text(key), f"http://127.0.0.1:{closed_port}/m{k}",
                            f"10.{k // 256}.{k % 256}.0/24"))
    return out


def feed_bytes(net: Network, m: int, ident: MirrorId, page: int, limit: int
               ) -> tuple[bytes, int, int]:
    """Mirror m's feed `page` (`limit` repos each) as its mirror signs it: (bytes, since,
    upto). Each repo's sequence number is its place in the mirror's catalog."""
    holding = net.holdings[m]
    since = page * limit
    upto = min(len(holding), since + limit)
    repos = [net.entry(i, rank, seq, m)
             for seq, (i, rank) in enumerate(holding[since:upto], since + 1)]
    payload = {"format": FORMAT, "kind": "catalog", "key": ident.text, "since": since,
               "upto": upto, "full": since == 0, "more": upto < len(holding), "repos": repos,
               "removed": []}
    return sign("catalog", msgpack.packb(payload, use_bin_type=True), ident.key), since, upto


def ingest(net: Network, idents: list[MirrorId], path: Path, limit: int,
           budget: float) -> Ingest:
    """Every mirror's feeds, one page of each a round, as the poller applies them; after
    `budget` seconds of ingest, no further feed."""
    store = IndexStore(path)
    result = Ingest(progress=[(0, 0.0)])
    now = time.time()
    cursors = [0] * len(idents)
    try:
        for k, ident in enumerate(idents):
            store.register(Registration(ident.text, ident.base_url, None, f"site{k % 10}",
                                        f"region{k % 3}", (ident.netblock,), now), f"m{k}", now)
        pages = max(-(-len(h) // limit) for h in net.holdings)
        per_batch = max(1, BATCH_REPOS // limit)
        batches = -(-pages // per_batch)
        for batch in range(batches):
            for m, ident in enumerate(idents):
                first = batch * per_batch
                if first * limit >= len(net.holdings[m]):
                    continue
                if result.seconds > budget:
                    result.stopped = True
                    break
                cursors[m] = _poll(net, store, m, ident, range(first, first + per_batch),
                                   limit, result)
            note(f"  ingest: round {batch + 1}/{batches}, {result.repos:,} repos in "
                 f"{result.seconds:.1f} s (making the feeds: {result.make_s:.1f} s more)")
            if result.stopped:
                note(f"  ingest stopped: past the budget of {budget:g} s")
                break
        result.rows = sum(store.rows_of(i.text) for i in idents)
        result.entries = store.conn.execute("SELECT count(*) FROM entries").fetchone()[0]
    except IndexRefused as e:
        raise BenchError(f"the index refused a feed: {e} (fewer repos per mirror: more "
                         f"--mirrors)") from None
    finally:
        store.close()
    result.held = sorted({i for m, upto in enumerate(cursors) for i, _ in net.holdings[m][:upto]})
    return result


def _poll(net: Network, store: IndexStore, m: int, ident: MirrorId, pages: range, limit: int,
          result: Ingest) -> int:
    """One poll of mirror m, as the poller makes it: its pages read and checked, then applied
    in one transaction (`IndexStore.apply_feeds`). Returns its cursor after."""
    feeds, upto = [], 0
    for page in pages:
        if page * limit >= len(net.holdings[m]):
            break
        started = time.perf_counter()
        data, since, upto = feed_bytes(net, m, ident, page, limit)
        made = time.perf_counter()
        feeds.append(read_feed(data, ident.text, after=since))
        result.make_s += made - started
        result.read_s += time.perf_counter() - made
    started = time.perf_counter()
    done, refused = store.apply_feeds(ident.text, feeds, time.time())
    if refused is not None:
        raise refused
    result.apply_s += time.perf_counter() - started
    for feed in feeds:
        result.feeds += 1
        result.repos += feed.upto - feed.since
        result.progress.append((result.repos, result.seconds))
    return upto


# -- the mirror's catalog: the same repos ---------------------------------------------------------


def _snapshots(net: Network, i: int) -> tuple[Spec, list[NewSnapshot]]:
    """Repo i at its newest as `Catalog.publish` takes it: one NewSnapshot a version, oldest
    first, each moving the refs that name it."""
    spec = net.spec(i)
    versions, refs = net.held(spec, 0)
    out = []
    for v in versions:
        weights = hashlib.sha256(b"w%d/%d" % (i, v)).hexdigest()
        files = [FileEntry("config.json", 512, hashlib.sha256(b"c%d" % i).hexdigest(),
                           hashlib.sha1(b"c%d" % i).hexdigest(), False),
                 FileEntry("model.safetensors", spec.size, weights, weights[:40], True)]
        out.append(NewSnapshot(HUB, spec.type, spec.repo_id, commit(i, v), files,
                               [(kind, name) for kind, name, at in refs if at == v],
                               created_at=spec.created + v * spec.step, card_data=spec.card,
                               safetensors={"total": spec.size} if spec.safetensors else None))
    return spec, out


def _card_columns(net: Network, i: int, cache: dict) -> tuple:
    """license, pipeline_tag, library_name, tags, base_model, datasets, language, card_data
    of repo i's row, as `Catalog._put_repo` writes them."""
    key = (net.cards[i], bool(net.shape[i] & 16))
    columns = cache.get(key)
    if columns is None:
        data = net.card(i)
        card = {k: data.get(k) for k in CARD_FIELDS if data.get(k) is not None}
        columns = cache[key] = (
            _text(card.get("license")), _text(card.get("pipeline_tag")),
            _text(card.get("library_name")), json.dumps(derive_tags(card, key[1])),
            json.dumps(_list(card.get("base_model"))), json.dumps(_list(card.get("datasets"))),
            json.dumps(_list(card.get("language"))), json.dumps(data, default=str))
    return columns


def fill_catalog(net: Network, path: Path, repos: list[int], batch: int = 50_000) -> float:
    """The network's `repos` (indices) (each at its newest) in a mirror's catalog: the rows
    `Catalog.publish` writes (`same_as_publish` checks that), but a batch of repos a
    statement and a transaction, and the full-text index built once at the end. Publishing
    them one by one costs about 0.6 ms a repo: ten minutes for 1M. The seconds it took."""
    started = time.perf_counter()
    catalog = Catalog(path)
    seq = repo_pk = snapshot_pk = 0
    cards: dict = {}
    try:
        # This connection only: the indexes' random inserts stay in memory until each commit.
        catalog.conn.execute("PRAGMA cache_size = -262144")
        with catalog.transaction() as c:
            # The trigger's work, done once by 'rebuild' below (its own statement, as _m2 made it).
            trigger = c.execute("SELECT sql FROM sqlite_master WHERE name = 'repos_fts_insert'"
                                ).fetchone()[0]
            c.execute("DROP TRIGGER repos_fts_insert")
        for start in range(0, len(repos), batch):
            repo_rows, snapshot_rows, file_rows, ref_rows = [], [], [], []
            for i in repos[start:start + batch]:
                spec = net.spec(i)
                versions, refs = net.held(spec, 0)
                columns = _card_columns(net, i, cards)
                repo_pk += 1
                config = (b"c%d" % i)
                config_file = ("config.json", 512, hashlib.sha256(config).hexdigest(),
                               hashlib.sha1(config).hexdigest(), 0)
                safetensors = json.dumps({"total": spec.size}) if spec.safetensors else None
                for v in versions:
                    snapshot_pk += 1
                    created = spec.created + v * spec.step
                    at = commit(i, v)
                    snapshot_rows.append((snapshot_pk, repo_pk, at, created, columns[7],
                                          safetensors))
                    weights = hashlib.sha256(b"w%d/%d" % (i, v)).hexdigest()
                    file_rows.append((snapshot_pk, *config_file))
                    file_rows.append((snapshot_pk, "model.safetensors", spec.size, weights,
                                      weights[:40], 1))
                    for kind, name, ref_v in refs:
                        if ref_v == v:
                            seq += 1
                            ref_rows.append((repo_pk, kind, name, at, seq, created))
                repo_rows.append((repo_pk, HUB, spec.type, spec.repo_id,
                                  spec.created + versions[0] * spec.step,
                                  spec.created + versions[-1] * spec.step, *columns, seq))
            with catalog.transaction() as c:
                c.executemany(
                    "INSERT INTO repos (id, hub, type, repo_id, access, created_at, updated_at,"
                    " license, pipeline_tag, library_name, tags, base_model, datasets, language,"
                    " card_data, seq) VALUES (?, ?, ?, ?, 'public', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
                    " ?)", repo_rows)
                c.executemany(
                    "INSERT INTO snapshots (id, repo, commit_id, title, message, created_at,"
                    " card_data, safetensors) VALUES (?, ?, ?, '', '', ?, ?, ?)", snapshot_rows)
                c.executemany("INSERT INTO files (snapshot, path, size, sha256, git_sha1, lfs)"
                              " VALUES (?, ?, ?, ?, ?, ?)", file_rows)
                c.executemany("INSERT INTO refs (repo, kind, name, commit_id, seq, updated_at)"
                              " VALUES (?, ?, ?, ?, ?, ?)", ref_rows)
                c.execute("UPDATE state SET value = ? WHERE key = 'seq'", (seq,))
            if start // batch % 4 == 3:
                note(f"  catalog: {start + batch:,} repos in {time.perf_counter() - started:.0f} s")
        with catalog.transaction() as c:
            c.execute("INSERT INTO repos_fts(repos_fts) VALUES ('rebuild')")
            c.execute(trigger)
    finally:
        catalog.close()
    return time.perf_counter() - started


#: what `same_as_publish` compares: every column `publish` writes (the sequence numbers aside:
#: publish also spends them on the feed's bookkeeping)
_COMPARED = {
    "repos": "SELECT hub, type, repo_id, access, created_at, updated_at, downloads, likes,"
             " license, pipeline_tag, library_name, tags, base_model, datasets, language,"
             " card_data, gone_upstream_at FROM repos ORDER BY repo_id",
    "snapshots": "SELECT r.repo_id, s.commit_id, s.parent, s.title, s.message, s.created_at,"
                 " s.card_data, s.safetensors, s.invalid_safetensors FROM snapshots s"
                 " JOIN repos r ON r.id = s.repo ORDER BY r.repo_id, s.commit_id",
    "files": "SELECT s.commit_id, f.path, f.size, f.sha256, f.git_sha1, f.lfs, f.verified_by"
             " FROM files f JOIN snapshots s ON s.id = f.snapshot ORDER BY s.commit_id, f.path",
    "refs": "SELECT r.repo_id, f.kind, f.name, f.commit_id, f.updated_at, f.created_at"
            " FROM refs f JOIN repos r ON r.id = f.repo ORDER BY r.repo_id, f.kind, f.name",
    "fts": "SELECT r.repo_id FROM repos_fts JOIN repos r ON r.id = repos_fts.rowid"
           " WHERE repos_fts MATCH 'lla' ORDER BY r.repo_id",
    "schema": "SELECT type, name, sql FROM sqlite_master ORDER BY name",
}


def same_as_publish(net: Network, work: Path, repos: int = 300) -> None:
    """The bulk fill writes what `Catalog.publish` writes, the first `repos` repos each way."""
    fill_catalog(net, work / "bulk.sqlite", list(range(min(repos, len(net.ids)))))
    catalog = Catalog(work / "published.sqlite")
    try:
        for i in range(min(repos, len(net.ids))):
            for new in _snapshots(net, i)[1]:
                catalog.publish(new, now=new.created_at)
    finally:
        catalog.close()
    got = {}
    for name in ("bulk", "published"):
        conn = sqlite3.connect(work / f"{name}.sqlite")
        got[name] = {table: conn.execute(sql).fetchall() for table, sql in _COMPARED.items()}
        conn.close()
    for table in _COMPARED:
        if got["bulk"][table] != got["published"][table]:
            diff = next((a, b) for a, b in itertools.zip_longest(got["bulk"][table],
                                                                 got["published"][table])
                        if a != b)
            raise BenchError(f"the bulk-filled catalog differs from a published one in {table}: "
                             f"{diff[0]} != {diff[1]}")


# -- the servers ----------------------------------------------------------------------------------

SERVER = """
import asyncio, os, signal, sys
from pathlib import Path

kind, home, cpu = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
os.sched_setaffinity(0, {cpu})

async def main():
    if kind == "index":
        from tracker import app
        from tracker.config import TrackerConfig
        config = TrackerConfig(host="127.0.0.1", port=0, home=home, mirror_keys=sys.argv[4],
                               poll_interval=86400.0)
    else:
        from mirror import app
        from mirror.config import load_config
        overrides = {("mirror", "host"): "127.0.0.1", ("mirror", "port"): 0,
                     ("mirror", "seed"): False}
        config = load_config(home=home, env={}, overrides=overrides)
    service = await app.start(config)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    print(f"listening on port {service.port}", file=sys.stderr, flush=True)
    await stop.wait()
    await service.stop()

asyncio.run(main())
"""


def start_server(name: str, home: Path, cpu: int, *extra: str) -> Server:
    log = home / f"{name}-server.log"
    with open(log, "wb") as err:
        # Its own session: a Ctrl-C reaches only us, and we stop the servers ourselves.
        process = subprocess.Popen([sys.executable, "-c", SERVER, name, str(home), str(cpu),
                                    *extra], cwd=ROOT, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=err,
                                   env=clean_env(PYTHONPATH=str(ROOT)), start_new_session=True)
    server = Server(name, process, 0, log)
    return await_port(server, rb"listening on port (\d+)", f"the {name} server", 120)


def wait_first_poll(db: Path, mirrors: int, seconds: float = 120) -> None:
    """The index polls every mirror once at start (each unreachable here: the feeds came
    before): wait for that round, so that its writes are not measured."""
    deadline = time.monotonic() + seconds
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        while time.monotonic() < deadline:
            polled = conn.execute("SELECT count(*) FROM mirrors WHERE last_polled IS NOT NULL"
                                  ).fetchone()[0]
            if polled == mirrors:
                return
            time.sleep(0.1)
    finally:
        conn.close()
    raise BenchError("the index did not finish its first poll round")


# -- the queries ----------------------------------------------------------------------------------

#: "constant": the index's key, an answer that costs nothing to make: what any answer costs
#: in this server (aiohttp, the routes, the middlewares), the floor under every other row
KINDS = ["substring", "author", "filter", "sorted", "locate", "constant"]
SEARCHES = KINDS[:4]


def queries(net: Network, held: list[int], count: int) -> dict[str, list[str]]:
    """For each kind, `count` request paths (the same for the index and the mirror); `locate`
    asks for repos the index holds."""
    rng = random.Random(SEED + 1)
    tag_counts: dict[str, int] = {}
    for i in range(0, len(net.ids), max(1, len(net.ids) // 20_000)):
        spec = net.spec(i)
        if spec.type == "model":
            for tag in net.tags(i):
                tag_counts[tag] = tag_counts.get(tag, 0) + 1
    tags, tag_w = _weighted(sorted(tag_counts.items()))
    org_w = list(itertools.accumulate(1 / (k + 10) for k in range(len(net.orgs))))

    def listing(**params) -> str:
        return "/api/models?" + urlencode({**params, "limit": LIMIT})

    def term() -> str:
        stem = _STEMS[bisect(_STEM_W, rng.random() * _STEM_W[-1])]
        shape = rng.randrange(3)
        if shape == 0:
            return stem
        if shape == 1:
            return f"{stem}-{rng.choice(SIZES)}"
        return f"{stem}-{rng.choice(SIZES)}-{rng.choice(VARIANTS)}"

    models = [i for i in held if not net.types[i]]
    out = {
        "substring": [listing(search=term()) for _ in range(count)],
        "author": [listing(author=net.orgs[bisect(org_w, rng.random() * org_w[-1])])
                   for _ in range(count)],
        "filter": [listing(filter=tags[bisect(tag_w, rng.random() * tag_w[-1])])
                   for _ in range(count)],
        "sorted": [listing(sort="lastModified", direction=-1, cursor=LIMIT * rng.randrange(10))
                   for _ in range(count)],
        "locate": [],
        "constant": ["/api/weightswarm/key"] * count,
    }
    for _ in range(count):
        i = rng.choice(models)
        m = rng.randrange(net.mirrors)
        ip = f"10.{m // 256}.{m % 256}.{rng.randrange(1, 255)}"
        out["locate"].append(f"/api/weightswarm/locate/{HUB}/model/{quote(net.ids[i])}"
                             f"?revision=main&ip={ip}")
    return out


# -- the load -------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Outcome:
    """How a closed loop ended, whoever ran it."""

    censored: int  # how many were still open at the bound (the longest waits)
    errors: int
    first_error: str
    seconds: float
    connections: int
    estimated: bool = False

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0


@dataclass(kw_only=True)
class Run(Outcome):
    latencies: list[float]  # seconds, sorted; censored ones (still open at the bound) too

    @property
    def done(self) -> int:
        return len(self.latencies) - self.censored

    def percentile(self, p: float) -> tuple[float, bool]:
        """(ms, whether it is only a lower bound)."""
        if not self.latencies:
            return float("nan"), False
        rank = min(len(self.latencies) - 1, int(len(self.latencies) * p))
        value = self.latencies[rank]
        # A censored sample waited at least its time; the ones at the top of the order may
        # be censored, and then this rank is only known from below.
        bound = self.censored and rank >= len(self.latencies) - self.censored
        return 1000 * value, bool(bound)


async def _load(base: str, paths: list[str], connections: int, requests: int,
                seconds: float) -> Run:
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    latencies: list[float] = []
    open_since: dict[int, float] = {}
    errors, first_error = 0, ""
    counter = itertools.count()
    started = time.perf_counter()
    deadline = started + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors, first_error
        while (n := next(counter)) < requests and time.perf_counter() < deadline:
            sent = time.perf_counter()
            open_since[n] = sent
            try:
                async with session.get(base + paths[n % len(paths)]) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as e:
                status, error = None, f"{type(e).__name__}: {e}"
            del open_since[n]
            if status == 200:
                latencies.append(time.perf_counter() - sent)
                continue
            errors += 1
            first_error = first_error or (error if status is None else f"HTTP {status}")

    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=None)) as session:
        tasks = [asyncio.ensure_future(worker(session)) for _ in range(connections)]
        done, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.perf_counter()))
        ended = time.perf_counter()
        if pending:  # the time bound: what is still open waited at least this long
            waits = [ended - t for t in open_since.values()]
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        else:
            waits = []
        for t in done:
            t.result()
    elapsed = (ended if pending else time.perf_counter()) - started
    return Run(latencies=sorted(latencies + waits), censored=len(waits), errors=errors,
               first_error=first_error, seconds=elapsed, connections=connections)


def load(base: str, paths: list[str], connections: int, requests: int, seconds: float) -> Run:
    return asyncio.run(_load(base, paths, connections, requests, seconds))


#: wrk's script: the request paths in turn, from the file WRK_PATHS names
WRK_SCRIPT = """
local paths = {}
for line in io.lines(os.getenv("WRK_PATHS")) do paths[#paths + 1] = line end
local turn = 0
request = function()
  turn = turn % #paths + 1
  return wrk.format("GET", paths[turn])
end
"""


@dataclass(kw_only=True)
class WrkRun(Outcome):
    """A closed loop run by wrk: its p50 and p99 (it keeps no list of latencies); the ones
    still open when the time was up are censored, one a connection."""

    p50: float  # seconds
    p99: float
    done: int

    def percentile(self, p: float) -> tuple[float, bool]:
        value = self.p50 if p <= 0.5 else self.p99
        # The open ones waited longest; when they are more than the share above p, the
        # figure at p is only known from below.
        return 1000 * value, self.censored > (1 - p) * (self.done + self.censored)


def wrk_load(base: str, paths: list[str], connections: int, seconds: float, work: Path
             ) -> WrkRun:
    """`connections` connections for `seconds`, each sending its next request when its answer
    came, the paths in turn: wrk, a C client, where this script's aiohttp client would be
    the bottleneck above a few thousand answers a second (an empty aiohttp handler on one
    core answers about 9,000)."""
    script, listed = work / "paths.lua", work / "paths.txt"
    script.write_text(WRK_SCRIPT)
    listed.write_text("".join(f"{p}\n" for p in paths))
    whole = int(seconds) + 1
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{whole}s", f"--timeout={whole}s", "--latency",
           "-s", str(script), base + "/"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=whole + 60,
                         env={**os.environ, "WRK_PATHS": str(listed)}, check=True).stdout
    found = {k: re.search(pattern, out, re.M) for k, pattern in WRK_FIELDS.items()}
    if found["requests"] is None or found["p50"] is None or found["p99"] is None:
        raise BenchError(f"wrk said something unexpected: {out[-500:]}")
    bad = int(found["bad"].group(1)) if found["bad"] else 0
    errors = found["errors"].group(1) if found["errors"] else ""
    return WrkRun(p50=_wrk_s(*found["p50"].groups()), p99=_wrk_s(*found["p99"].groups()),
                  done=int(found["requests"].group(1)) - bad, censored=connections,
                  errors=bad + (1 if errors else 0),
                  first_error=f"{bad} answers not 200" if bad else errors,
                  seconds=float(found["requests"].group(2)), connections=connections)


WRK_FIELDS = {
    "requests": r"(\d+) requests in ([\d.]+)s",
    "p50": r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$",
    "p99": r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$",
    "bad": r"Non-2xx or 3xx responses: (\d+)",
    "errors": r"Socket errors: (.*)",
}


def _wrk_s(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[unit]


def settle(server: Server, seconds: float = 600) -> None:
    """Wait until the server has finished what cut requests left queued on its one database
    thread: a cheap listing goes behind them."""
    import urllib.request

    with urllib.request.urlopen(f"{server.url}/api/models?search=zzqqzz&limit=1",
                                timeout=seconds) as answer:
        answer.read()


def estimate(one: Run, connections: int) -> Run:
    """A closed loop of `connections` on a server that answers one at a time: each waits for
    the others' turns, about `connections` times one service time."""
    return Run(latencies=[connections * v for v in one.latencies], censored=0, errors=0,
               first_error="", seconds=one.seconds / connections, connections=connections,
               estimated=True)


@dataclass
class Measured:
    one: Run
    many: Run | WrkRun
    #: the index only, at `connections`: each query the first time it is asked (no kept
    #: answer serves it), those the one-connection run did not ask
    first: Run | None = None


def measure(server: Server, kind: str, paths: list[str], plan: Plan, work: Path) -> Measured:
    load(server.url, paths[-5:], 1, 5, 60)  # warm: imports, connections, caches
    one = load(server.url, paths, 1, plan.one_requests, plan.one_seconds)
    if one.censored:
        settle(server)
    first = None
    if server.name == "index" and kind != "constant":
        asked = set(paths[:one.done + one.censored + 5]) | set(paths[-5:])
        fresh = list(dict.fromkeys(p for p in paths if p not in asked))
        if fresh:
            first = load(server.url, fresh, plan.connections, len(fresh), plan.seconds)
            if first.censored:
                settle(server)
    median_s = statistics.median(one.latencies)
    if median_s * plan.connections > plan.seconds:
        many = estimate(one, plan.connections)
    else:
        many = wrk_load(server.url, paths, plan.connections, plan.seconds, work)
        if many.censored:
            settle(server)
    runs = [(one, "1 connection"), (many, f"{plan.connections} connections")]
    if first is not None:
        runs.append((first, f"{plan.connections}, first"))
    for run, label in runs:
        if run.errors:
            raise BenchError(f"{server.name} {kind} at {label}: {run.errors} errors, the first: "
                             f"{run.first_error}")
        p50, _ = run.percentile(0.5)
        p99, bound = run.percentile(0.99)
        note(f"  {server.name:<6} {kind:<9} {label:<15} {run.done:6d} answers"
             + (" (estimated)" if run.estimated else f", {run.rate:8.1f}/s")
             + f", p50 {p50:8.2f} ms, p99 {'≥' if bound else ''}{p99:8.2f} ms")
    return Measured(one, many, first)


def same_answers(index: Server, mirror: Server, paths: dict[str, list[str]]) -> list[str]:
    """The listings' ids on both (the same repos, the same order): what differs."""
    import urllib.request

    problems = []
    for kind in SEARCHES:
        for path in paths[kind][:3]:
            got = []
            for server in (index, mirror):
                with urllib.request.urlopen(server.url + path, timeout=600) as answer:
                    got.append([item["id"] for item in json.loads(answer.read())])
            if got[0] != got[1]:
                problems.append(f"{kind} {path}: index {got[0][:3]}..., mirror {got[1][:3]}...")
    return problems


# -- the benchmark --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    repos: int
    mirrors: int
    mirror_repos: int
    requests: int
    seconds: float
    one_requests: int
    one_seconds: float
    connections: int
    feed_limit: int
    ingest_budget: float
    ingest_only: bool
    server_cpu: int
    load_cpu: int
    cache: Path | None


def bench(plan: Plan, work: Path) -> None:
    began = time.perf_counter()
    note(f"generating {plan.repos:,} repos over {plan.mirrors} mirrors")
    net = Network(plan.repos, plan.mirrors)
    gc.freeze()  # millions of strings: the collector need not walk them again
    held = sum(len(h) for h in net.holdings)
    note(f"  {held:,} repos held in all ({held - plan.repos:,} on a second or third mirror), "
         f"{time.perf_counter() - began:.0f} s")
    idents = mirror_ids(plan.mirrors, _closed_port())
    index_home, mirror_home = work / "index", work / "mirror"
    index_home.mkdir()
    mirror_home.mkdir()
    ingested = cached_ingest(plan, net, idents, index_home)
    if plan.ingest_only:
        print(f"index ingest: {plan.repos:,} repos over {plan.mirrors} mirrors")
        print()
        print(ingest_summary(plan, ingested))
        print(f"The whole run took {time.perf_counter() - began:.0f} s.")
        return
    keys = index_home / "mirror_keys"
    keys.write_text("".join(f"{i.text} m{k}\n" for k, i in enumerate(idents)))
    repos = ingested.held[:plan.mirror_repos]
    catalog_s = cached_catalog(plan, net, repos, mirror_home, work)
    paths = queries(net, ingested.held, max(plan.requests, plan.one_requests))

    results: dict[tuple[str, str], Measured] = {}
    servers: list[Server] = []
    try:
        index = start_server("index", index_home, plan.server_cpu, str(keys))
        servers.append(index)
        wait_first_poll(index_home / "index.sqlite", plan.mirrors)
        mirror = start_server("mirror", mirror_home, plan.server_cpu)
        servers.append(mirror)
        # A stopped ingest may hold a repo only from a mirror a commit behind: not comparable.
        alike = len(repos) == len(ingested.held) and not ingested.stopped
        problems = same_answers(index, mirror, paths) if alike else []
        for problem in problems:
            note(f"  the answers differ: {problem}")
        # The mirror idles on the same core while the index is measured, and the other way.
        for kind in KINDS:
            results[("index", kind)] = measure(index, kind, paths[kind], plan, work)
            if kind in SEARCHES:
                results[("mirror", kind)] = measure(mirror, kind, paths[kind], plan, work)
        memory = index.memory()
        mirror_memory = mirror.memory()
    finally:
        for server in servers:
            server.stop()
    report(plan, ingested, len(repos), catalog_s, results, memory, mirror_memory,
           problems if alike else None,
           {"index": (index_home / "index.sqlite").stat().st_size,
            "mirror": (mirror_home / "catalog.sqlite").stat().st_size},
           time.perf_counter() - began)


def cached_ingest(plan: Plan, net: Network, idents: list[MirrorId], home: Path) -> Ingest:
    """The ingest, or (with --cache) the index.sqlite and the figures of an earlier one of the
    same network."""
    meta = {"repos": plan.repos, "mirrors": plan.mirrors, "feed_limit": plan.feed_limit,
            "budget": plan.ingest_budget, "schema": _schema_version()}
    saved = plan.cache / "index" if plan.cache else None
    if saved and (saved / "meta.json").exists() and \
            json.loads((saved / "meta.json").read_text())["meta"] == meta:
        note(f"ingest: the index of an earlier run, from {saved}")
        shutil.copy(saved / "index.sqlite", home / "index.sqlite")
        figures = json.loads((saved / "meta.json").read_text())["ingest"]
        return Ingest(**{**figures, "progress": [tuple(p) for p in figures["progress"]],
                         "cached_from": str(saved)})
    note("ingest: feeds checked (read_feed) and applied (IndexStore.apply_feed)")
    ingested = ingest(net, idents, home / "index.sqlite", plan.feed_limit, plan.ingest_budget)
    if saved:
        saved.mkdir(parents=True, exist_ok=True)
        shutil.copy(home / "index.sqlite", saved / "index.sqlite")
        (saved / "meta.json").write_text(json.dumps({"meta": meta,
                                                     "ingest": dataclasses.asdict(ingested)}))
    return ingested


def cached_catalog(plan: Plan, net: Network, repos: list[int], home: Path, work: Path) -> float:
    """The mirror's catalog filled, or (with --cache) one filled earlier with the same repos."""
    meta = {"repos": plan.repos, "mirrors": plan.mirrors,
            "held": hashlib.sha256(array("I", repos).tobytes()).hexdigest()}
    saved = plan.cache / "mirror" if plan.cache else None
    if saved and (saved / "meta.json").exists() and \
            json.loads((saved / "meta.json").read_text())["meta"] == meta:
        note(f"mirror catalog: the one of an earlier run, from {saved}")
        shutil.copy(saved / "catalog.sqlite", home / "catalog.sqlite")
        return json.loads((saved / "meta.json").read_text())["seconds"]
    note(f"mirror catalog: {len(repos):,} repos")
    check = work / "check"
    check.mkdir()
    same_as_publish(net, check)
    seconds = fill_catalog(net, home / "catalog.sqlite", repos)
    note(f"  filled in {seconds:.0f} s")
    if saved:
        saved.mkdir(parents=True, exist_ok=True)
        shutil.copy(home / "catalog.sqlite", saved / "catalog.sqlite")
        (saved / "meta.json").write_text(json.dumps({"meta": meta, "seconds": seconds}))
    return seconds


def _schema_version() -> int:
    from tracker.index import SCHEMA_VERSION

    return SCHEMA_VERSION


def _closed_port() -> int:
    """A port nothing listens on: the mirrors' base URLs (the index's first poll fails fast)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ms(run: Run, p: float) -> str:
    value, bound = run.percentile(p)
    return ("≥ " if bound else "") + f"{value:,.2f}" + (" est." if run.estimated else "")


def _ratio(a: Run, b: Run, p: float) -> str:
    x, y = a.percentile(p)[0], b.percentile(p)[0]
    return f"{x / y:.3f}x" if y else "-"


def _verdict(ok: bool) -> str:
    return "met" if ok else "**MISSED**"


def report(plan: Plan, ingested: Ingest, catalog_repos: int, catalog_s: float,
           results: dict[tuple[str, str], Measured], memory: dict[str, int],
           mirror_memory: dict[str, int], problems: list[str] | None, sizes: dict[str, int],
           total_s: float) -> None:
    holds = f"{ingested.entries:,} repos" + (
        f" (of {plan.repos:,}: the ingest stopped at its budget)" if ingested.stopped else "")
    print(f"index benchmark: the index holds {holds} from {plan.mirrors} mirrors "
          f"({ingested.repos:,} repos over all mirrors, {ingested.rows:,} rows: repos, refs, "
          f"snapshots); the mirror's catalog {catalog_repos:,} repos; listings limit={LIMIT}; "
          f"servers on CPU {plan.server_cpu}, the clients on CPU {plan.load_cpu}; wrk for "
          f"{plan.seconds:g} s at {plan.connections} connections over {plan.requests} paths, "
          f"the aiohttp client for {plan.one_requests} requests or {plan.one_seconds:g} s at "
          "one")
    print()
    for connections, pick in ((plan.connections, "many"), (1, "one")):
        print(f"at {connections} connection{'s' if connections > 1 else ''}:")
        print()
        print("| query | index p50 ms | index p99 ms | index answers/s | mirror p50 ms "
              "| mirror p99 ms | mirror answers/s | p50 index/mirror | p99 index/mirror |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for kind in KINDS:
            ours = getattr(results[("index", kind)], pick)
            theirs = results.get(("mirror", kind))
            row = [kind, _ms(ours, 0.5), _ms(ours, 0.99),
                   "-" if ours.estimated else f"{ours.rate:,.0f}"]
            if theirs is None:
                row += ["-"] * 5
            else:
                theirs = getattr(theirs, pick)
                row += [_ms(theirs, 0.5), _ms(theirs, 0.99),
                        "-" if theirs.estimated else f"{theirs.rate:,.1f}",
                        _ratio(ours, theirs, 0.5), _ratio(ours, theirs, 0.99)]
            print("| " + " | ".join(row) + " |")
        print()
    first_table(plan, results)
    worst = max(SEARCHES, key=lambda k: results[("index", k)].many.percentile(0.99)[0])
    search_p99 = results[("index", worst)].many.percentile(0.99)[0]
    locate_p99 = results[("index", "locate")].many.percentile(0.99)[0]
    at = f" (at {ingested.entries:,} repos)" if ingested.entries < TARGET_REPOS else ""
    print("| target | measured | |")
    print("|---|---:|---|")
    print(f"| search p99 < {TARGETS['search_p99_ms']:g} ms at {plan.connections} connections, "
          f"the worst kind{at} | {search_p99:,.2f} ms ({worst}) | "
          f"{_verdict(search_p99 < TARGETS['search_p99_ms'])} |")
    print(f"| the same, each query the first time it is asked{at} | {first_worst(results)} | "
          f"{_verdict(first_p99(results)[0] < TARGETS['search_p99_ms'])} |")
    print(f"| locate p99 < {TARGETS['locate_p99_ms']:g} ms at {plan.connections} "
          f"connections{at} | {locate_p99:,.2f} ms (an answer that costs nothing: "
          f"{results[('index', 'constant')].many.percentile(0.99)[0]:,.2f} ms) | "
          f"{_verdict(locate_p99 < TARGETS['locate_p99_ms'])} |")
    print(f"| ingest of 1M repos < {TARGETS['ingest_s']:g} s | {ingest_cell(ingested)} | "
          f"{_verdict(ingest_met(ingested))} |")
    print(f"| index RSS < 1 GiB{at} | {memory['VmRSS'] / 2**20:,.0f} MiB (peak "
          f"{memory['VmHWM'] / 2**20:,.0f} MiB) | "
          f"{_verdict(memory['VmHWM'] < TARGETS['rss_bytes'])} |")
    print()
    print(ingest_summary(plan, ingested) + f" The mirror's catalog filled in {catalog_s:.0f} s.")
    print(f"Files: index.sqlite {sizes['index'] / 2**20:,.0f} MiB, the mirror's catalog.sqlite "
          f"{sizes['mirror'] / 2**20:,.0f} MiB. The mirror server's RSS "
          f"{mirror_memory['VmRSS'] / 2**20:,.0f} MiB (peak {mirror_memory['VmHWM'] / 2**20:,.0f}).")
    if problems:
        print(f"The index and the mirror answered {len(problems)} listings differently: "
              + "; ".join(problems[:3]))
    elif problems is not None:
        print("The index and the mirror answered the first listings of every kind alike.")
    else:
        print("Their answers were not compared: " + (
            "the stopped ingest holds some repos only from a mirror a commit behind."
            if ingested.stopped else "the mirror's catalog holds fewer repos."))
    print(f"The whole run took {total_s:.0f} s.")


def first_table(plan: Plan, results: dict[tuple[str, str], Measured]) -> None:
    print(f"the index at {plan.connections} connections, each query the first time it is asked "
          "(no kept answer serves it; the aiohttp client):")
    print()
    print("| query | distinct queries | p50 ms | p99 ms | answers/s |")
    print("|---|---:|---:|---:|---:|")
    for kind in KINDS:
        first = results[("index", kind)].first
        if first is not None:
            print(f"| {kind} | {len(first.latencies):,} | {_ms(first, 0.5)} | "
                  f"{_ms(first, 0.99)} | {first.rate:,.0f} |")
    print()


def first_p99(results: dict[tuple[str, str], Measured]) -> tuple[float, str]:
    return max((results[("index", k)].first.percentile(0.99)[0], k) for k in SEARCHES
               if results[("index", k)].first is not None)


def first_worst(results: dict[tuple[str, str], Measured]) -> str:
    value, kind = first_p99(results)
    bound = results[("index", kind)].first.percentile(0.99)[1]
    return f"{'≥ ' if bound else ''}{value:,.2f} ms ({kind})"


def ingest_met(ingested: Ingest) -> bool:
    """Within the target, measured at 1M (or more) repos; at fewer, only if even the rate of
    its slowest tenth (an index slows as it grows) would make 1M in time."""
    if ingested.entries >= TARGET_REPOS and not ingested.stopped:
        return ingested.seconds < TARGETS["ingest_s"]
    return ingested.rate(0.9, 1.0) * TARGETS["ingest_s"] >= TARGET_REPOS * (
        ingested.repos / max(1, ingested.entries))


def ingest_cell(ingested: Ingest) -> str:
    text = f"{ingested.seconds:,.1f} s for {ingested.entries:,} repos"
    if ingested.stopped:
        text += " (stopped at the budget)"
    if ingested.entries < TARGET_REPOS or ingested.stopped:
        last = ingested.rate(0.9, 1.0)
        scale = ingested.repos / max(1, ingested.entries)  # feed repos per index entry
        text += (f"; its last tenth at {last:,.0f} repos/s: 1M would take at least "
                 f"{TARGET_REPOS * scale / last:,.0f} s")
    return text


def ingest_summary(plan: Plan, ingested: Ingest) -> str:
    cached = f" (by the run that built {ingested.cached_from})" if ingested.cached_from else ""
    return (f"Ingest{cached}: {ingested.feeds:,} feeds of up to {plan.feed_limit:,} repos, "
            f"{ingested.repos:,} repos ({ingested.rows:,} rows, {ingested.entries:,} entries) "
            f"in {ingested.seconds:.1f} s: {ingested.rows / ingested.seconds:,.0f} rows/s, "
            f"{ingested.repos / ingested.seconds:,.0f} repos/s (the first tenth of the feeds "
            f"{ingested.rate(0.0, 0.1):,.0f} repos/s, the last {ingested.rate(0.9, 1.0):,.0f}); "
            f"read_feed {ingested.read_s:.1f} s, apply_feed {ingested.apply_s:.1f} s (making "
            f"and signing the feeds, not counted: {ingested.make_s:.1f} s).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="50,000 repos, fewer requests, shorter bounds")
    parser.add_argument("--repos", type=int, help="repos in the index [1000000; quick: 50000]")
    parser.add_argument("--mirrors", type=int, default=100, help="mirrors [100]")
    parser.add_argument("--mirror-repos", type=int,
                        help="repos in the single mirror's catalog [as --repos]")
    parser.add_argument("--requests", type=int,
                        help="requests at most per measurement at --connections [3000; quick: 600]")
    parser.add_argument("--seconds", type=float,
                        help="seconds at most per measurement at --connections [10; quick: 3]")
    parser.add_argument("--connections", type=int, default=64, help="connections [64]")
    parser.add_argument("--feed-limit", type=int, default=FEED_LIMIT,
                        help=f"repos per feed (a poller may ask up to {MAX_ENTRIES}) "
                             f"[{FEED_LIMIT}, as the index's poller asks]")
    parser.add_argument("--ingest-only", action="store_true",
                        help="only the ingest: no catalog, no servers")
    parser.add_argument("--ingest-budget", type=float,
                        help="seconds of ingest after which no further feed is applied (the "
                             "searches then run on what it holds) [300; quick: 20]")
    parser.add_argument("--cache", type=Path,
                        help="keep the index and the catalog built here, and take them from "
                             "here when a later run builds the same ones")
    args = parser.parse_args()
    with bench_main():
        if not args.ingest_only:
            find_tools({"wrk": "wrk"})
        cpus = two_cores("servers")
        repos = max(10, args.repos or (50_000 if args.quick else 1_000_000))
        plan = Plan(
            repos=repos,
            mirrors=max(1, args.mirrors),
            mirror_repos=min(repos, max(10, args.mirror_repos or repos)),
            requests=max(10, args.requests or (600 if args.quick else 3000)),
            seconds=args.seconds or (3 if args.quick else 10),
            one_requests=100 if args.quick else 300,
            one_seconds=2 if args.quick else 5,
            connections=max(1, args.connections),
            feed_limit=min(MAX_ENTRIES, max(1, args.feed_limit)),
            ingest_budget=args.ingest_budget or (20 if args.quick else 300),
            ingest_only=args.ingest_only,
            server_cpu=cpus[0],
            load_cpu=cpus[1],
            cache=args.cache,
        )
        # This script builds, then loads: keep it off the servers' core.
        os.sched_setaffinity(0, {cpus[1]})
        with tempfile.TemporaryDirectory(prefix="ws-bench-index-") as work:
            bench(plan, Path(work))


if __name__ == "__main__":
    main()
