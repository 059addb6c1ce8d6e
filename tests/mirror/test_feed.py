"""The signed, incremental catalog feed a mirror serves the index (issue 18, item 2)."""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from helpers import make_config, make_tiny_model
from mirror.catalog import Catalog, NewSnapshot
from mirror.distribution import Distribution
from mirror.feed import build_feed
from mirror.importer import Importer
from peer.errors import BadRequest
from peer.feed import MAX_ENTRIES, MAX_FEED_BYTES, MAX_REFS, apply, read_feed
from peer.hfformat import FileEntry
from peer.keys import public_key_text
from peer.manifest import BadSignature, ManifestError, StaleRef, UnknownKey, sign
from peer.store import BlobStore

HF = "huggingface"


@pytest.fixture
def key():
    return Ed25519PrivateKey.generate()


@pytest.fixture
def importer(catalog, store):
    return Importer(catalog, store)


def _tiny(tmp_path, name: str, seed: int = 0):
    return make_tiny_model(tmp_path / name, seed=seed, big_size=4096)


def _catalog_state(catalog: Catalog) -> dict:
    """What a reader must hold: every repo that is not private, as the catalog has it."""
    return {(r.hub, r.type, r.repo_id): (
        r.access == "gated",
        frozenset((f.kind, f.name, f.commit, f.seq) for f in catalog.refs(r)),
        frozenset(catalog.snapshots(r)),
    ) for r in catalog.repos() if r.access != "private"}


def _held(state: dict) -> dict:
    return {k: (v.gated, frozenset((f.kind, f.name, f.commit, f.seq) for f in v.refs),
                frozenset(s.commit for s in v.snapshots)) for k, v in state.items()}


class Reader:
    """An index's view of one mirror: polls until `more` is off, applying each feed."""

    def __init__(self, catalog: Catalog, key: Ed25519PrivateKey, limit: int = 1000):
        self.catalog, self.key, self.limit = catalog, key, limit
        self.after, self.state = 0, {}

    def poll(self) -> list:
        feeds = []
        while True:
            data = build_feed(self.catalog, self.key, self.after, limit=self.limit)
            feed = read_feed(data, public_key_text(self.key), after=self.after)
            self.state = apply(self.state, feed)
            self.after = feed.upto
            feeds.append(feed)
            if not feed.more:
                return feeds

    def changed(self) -> tuple[set, set]:
        """(repo ids sent, repo ids removed) by one round of polls."""
        feeds = self.poll()
        return ({r.repo_id for f in feeds for r in f.repos},
                {t.repo_id for f in feeds for t in f.removed})


def test_a_full_feed_lists_every_public_repo_with_its_refs_and_snapshots_and_verifies(
        catalog, importer, key, tmp_path):
    tiny = _tiny(tmp_path, "tiny")
    importer.import_path(tiny, repo_id="org/open", tags=["v1"])
    importer.import_path(tiny, repo_id="org/gated", access="gated")
    importer.import_path(tiny, repo_id="org/secret", access="private")
    data = build_feed(catalog, key, 0)
    feed = read_feed(data, public_key_text(key), after=0)
    assert feed.full and not feed.more and feed.since == 0
    assert feed.upto == catalog.sequence() and feed.key == public_key_text(key)
    repos = {r.repo_id: r for r in feed.repos}
    assert set(repos) == {"org/open", "org/gated"}, "the private repo is left out"
    assert b"secret" not in data, "not even the private repo's name travels"
    assert repos["org/gated"].gated and not repos["org/open"].gated
    assert feed.removed == ()

    open_ = repos["org/open"]
    repo = catalog.repo(HF, "model", "org/open")
    assert {(r.kind, r.name, r.commit, r.seq) for r in open_.refs} == \
        {(r.kind, r.name, r.commit, r.seq) for r in catalog.refs(repo)}
    [snap] = open_.snapshots
    files = catalog.files(catalog.snapshot(repo, snap.commit))
    served = Distribution(catalog, key).manifest(HF, "model", "org/open", snap.commit)
    assert snap.manifest_sha256 == hashlib.sha256(served).hexdigest()
    assert (snap.size, snap.files) == (sum(f.size for f in files), len(files))
    assert open_.license == "mit" and open_.pipeline_tag == "feature-extraction"
    assert open_.library_name == "transformers" and "tiny" in open_.tags
    assert _held(apply({}, feed)) == _catalog_state(catalog)


def test_incremental_feeds_bring_exactly_the_changes_and_rebuild_the_public_state(
        catalog, importer, key, tmp_path):
    a, b = _tiny(tmp_path, "a"), _tiny(tmp_path, "b", seed=1)
    importer.import_path(a, repo_id="org/a", tags=["v1"])
    reader = Reader(catalog, key)
    assert reader.changed() == ({"org/a"}, set())

    steps = [
        ("another repo imported", lambda: importer.import_path(b, repo_id="org/b"),
         {"org/b"}, set()),
        ("a ref moved", lambda: _edit_and_import(importer, a, "org/a"), {"org/a"}, set()),
        ("a tag removed", lambda: catalog.remove(_repo(catalog, "org/a"), "v1"),
         {"org/a"}, set()),
        ("made gated", lambda: importer.import_path(a, repo_id="org/a", access="gated"),
         {"org/a"}, set()),
        ("made private", lambda: importer.import_path(a, repo_id="org/a", access="private"),
         set(), {"org/a"}),
        ("public again", lambda: importer.import_path(a, repo_id="org/a"), {"org/a"}, set()),
        ("a repo removed", lambda: catalog.remove(_repo(catalog, "org/b")), set(), {"org/b"}),
        ("the same commit again", lambda: importer.import_path(a, repo_id="org/a"),
         set(), set()),
    ]
    for what, change, sent, removed in steps:
        change()
        assert reader.changed() == (sent, removed), what
        assert _held(reader.state) == _catalog_state(catalog), what
    held = reader.state[(HF, "model", "org/a")]
    assert {r.name for r in held.refs} == {"main"}, "the removed tag is gone from the reader"

    # A reader that starts over, and one that catches up from far behind, agree.
    again = Reader(catalog, key)
    again.poll()
    assert _held(again.state) == _catalog_state(catalog)


def _edit_and_import(importer: Importer, folder, repo_id: str, access: str = "public") -> None:
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "edited": True}))
    importer.import_path(folder, repo_id=repo_id, access=access)


def _repo(catalog: Catalog, repo_id: str):
    return catalog.repo(HF, "model", repo_id)


def test_private_repos_never_appear_in_any_feed(catalog, importer, key, tmp_path):
    tiny = _tiny(tmp_path, "tiny")
    importer.import_path(tiny, repo_id="org/hidden-one", access="private", tags=["v1"])
    importer.import_path(tiny, repo_id="org/public")
    _edit_and_import(importer, tiny, "org/hidden-one", access="private")
    catalog.remove(_repo(catalog, "org/hidden-one"), "v1")
    catalog.remove(_repo(catalog, "org/hidden-one"))
    for since in range(catalog.sequence() + 1):
        data = build_feed(catalog, key, since)
        assert b"hidden-one" not in data, f"a feed since {since} names the private repo"
        feed = read_feed(data, public_key_text(key), after=since)
        assert all(r.repo_id == "org/public" for r in feed.repos)


def _publish_many(catalog: Catalog, count: int) -> None:
    for n in range(count):
        commit = hashlib.sha1(str(n).encode()).hexdigest()
        catalog.publish(NewSnapshot(
            hub=HF, type="model", repo_id=f"org/r{n:03}", commit=commit,
            files=[FileEntry("a.txt", n, hashlib.sha256(b"%d" % n).hexdigest(), commit, False)],
            refs=[("branch", "main")], access="gated" if n % 5 == 0 else "public"))


def test_limit_pages_a_large_catalog_with_more(catalog, key):
    _publish_many(catalog, 25)
    reader = Reader(catalog, key, limit=10)
    feeds = reader.poll()
    assert [len(f.repos) for f in feeds] == [10, 10, 5]
    assert [f.more for f in feeds] == [True, True, False]
    assert [f.full for f in feeds] == [True, False, False]
    assert feeds[0].upto == max(r.seq for r in feeds[0].repos), "upto stops at the last repo"
    assert feeds[1].since == feeds[0].upto and feeds[-1].upto == catalog.sequence()
    assert _held(reader.state) == _catalog_state(catalog)

    # Removals and changes page too, tombstones among repos in sequence order.
    for n in range(0, 25, 2):
        catalog.remove(_repo(catalog, f"org/r{n:03}"))
    _publish_many(catalog, 3)  # r000 and r002 back, r001 unchanged (same commit)
    feeds = reader.poll()
    assert len(feeds) == 2 and all(len(f.repos) + len(f.removed) <= 10 for f in feeds)
    assert _held(reader.state) == _catalog_state(catalog)


def _entry(**changes) -> dict:
    commit = "c" * 40
    entry = {"hub": HF, "type": "model", "id": "org/name", "seq": 3, "gated": False,
             "updated_at": 1.0, "tags": ["x"], "license": None, "pipeline_tag": None,
             "library_name": None, "refs": [["branch", "main", commit, 2]],
             "snapshots": [[commit, "d" * 64, 10, 1, 1.0]]}
    entry.update(changes)
    return entry


def _signed(signer, **changes) -> bytes:
    """A feed signed by `signer`, well formed unless `changes` say otherwise."""
    payload = {"format": 1, "kind": "catalog", "key": public_key_text(signer), "since": 0,
               "upto": 5, "full": True, "more": False, "repos": [_entry()], "removed": []}
    payload.update(changes)
    return sign("catalog", msgpack.packb(payload, use_bin_type=True), signer)


def test_the_reader_takes_a_well_formed_feed(key):
    feed = read_feed(_signed(key), public_key_text(key), after=0)
    assert [r.repo_id for r in feed.repos] == ["org/name"]


def test_the_reader_refuses_another_key_and_a_tampered_payload(catalog, key):
    _publish_many(catalog, 2)
    data = build_feed(catalog, key, 0)
    with pytest.raises(UnknownKey):
        read_feed(data, public_key_text(Ed25519PrivateKey.generate()), after=0)
    envelope = msgpack.unpackb(data)
    payload = envelope["payload"].replace(b"org/r001", b"org/r009")
    assert payload != envelope["payload"]
    tampered = msgpack.packb({**envelope, "payload": payload}, use_bin_type=True)
    with pytest.raises(BadSignature):
        read_feed(tampered, public_key_text(key), after=0)
    # A signature made for another kind of document does not pass for a feed (domain tags),
    # nor does another kind of document signed as one.
    with pytest.raises(BadSignature):
        read_feed(sign("ref", envelope["payload"], key), public_key_text(key), after=0)
    statement = msgpack.packb({**msgpack.unpackb(envelope["payload"]), "kind": "ref"})
    with pytest.raises(ManifestError, match="not a format-1 catalog"):
        read_feed(sign("catalog", statement, key), public_key_text(key), after=0)


def test_the_reader_refuses_a_replayed_older_feed_and_a_gap(catalog, key):
    _publish_many(catalog, 3)
    old = build_feed(catalog, key, 1)
    at = catalog.sequence()
    with pytest.raises(StaleRef, match=f"starts at sequence 1, this reader holds up to {at}"):
        read_feed(old, public_key_text(key), after=at)
    with pytest.raises(StaleRef, match="a gap: the feed starts at sequence 2"):
        read_feed(build_feed(catalog, key, 2), public_key_text(key), after=1)
    with pytest.raises(StaleRef, match="goes back"):
        read_feed(_signed(key, since=4, upto=3, full=False, repos=[]), public_key_text(key),
                  after=4)
    with pytest.raises(StaleRef, match="outside this feed"):
        read_feed(_signed(key, upto=2), public_key_text(key), after=0)


@pytest.mark.parametrize(("changes", "message"), [
    ({"id": "../../etc"}, "hostile repo id"),
    ({"id": "org/na--me"}, "hostile repo id"),
    ({"hub": "github"}, "unknown hub"),
    ({"type": "space"}, "unknown repo type"),
    ({"refs": [["branch", "../main", "c" * 40, 2]]}, "hostile ref name"),
    ({"refs": [["branch", "ma\x00in", "c" * 40, 2]]}, "hostile ref name"),
    ({"refs": [["remote", "main", "c" * 40, 2]]}, "ref kind"),
    ({"refs": [["branch", "main", "C" * 40, 2]]}, "not 40 hex"),
    ({"refs": [["branch", "main", "e" * 40, 2]]}, "a snapshot the feed lacks"),
    ({"refs": [["branch", "main", "c" * 40, 4]]}, "not within the repo's"),
    ({"refs": [["branch", "main", "c" * 40, 2]] * 2}, "listed twice"),
    ({"snapshots": [["c" * 40, "d" * 63, 10, 1, 1.0]]}, "not 64 hex"),
    ({"snapshots": [["c" * 40, "d" * 64, -1, 1, 1.0]]}, "size must be a non-negative"),
    ({"snapshots": [["c" * 40, "d" * 64, True, 1, 1.0]]}, "size must be a non-negative"),
    ({"snapshots": [["c" * 40, "d" * 64, 10, 1, float("nan")]]}, "seconds since the epoch"),
    ({"gated": "yes"}, "gated must be true or false"),
    ({"tags": ["x" * 5000]}, "at most 1024 characters"),
    ({"extra": 1}, "a repo holds exactly"),
])
def test_the_reader_refuses_hostile_content(key, changes, message):
    with pytest.raises(ManifestError, match=message):
        read_feed(_signed(key, repos=[_entry(**changes)]), public_key_text(key), after=0)


def test_the_reader_refuses_oversize_feeds(key):
    with pytest.raises(ManifestError, match="larger than"):
        read_feed(b"\0" * (MAX_FEED_BYTES + 1), public_key_text(key), after=0)
    with pytest.raises(ManifestError, match=f"more than {MAX_ENTRIES}"):
        read_feed(_signed(key, repos=[{}] * (MAX_ENTRIES + 1)), public_key_text(key), after=0)
    refs = [["tag", f"t{n}", "c" * 40, 2] for n in range(MAX_REFS + 1)]
    with pytest.raises(ManifestError, match=f"more than {MAX_REFS}"):
        read_feed(_signed(key, repos=[_entry(refs=refs)]), public_key_text(key), after=0)


def test_the_reader_refuses_inconsistent_windows_and_duplicates(key):
    with pytest.raises(ManifestError, match="full is False"):
        read_feed(_signed(key, full=False), public_key_text(key), after=0)
    with pytest.raises(ManifestError, match="no further"):
        read_feed(_signed(key, since=5, full=False, more=True, repos=[]), public_key_text(key),
                  after=5)
    with pytest.raises(ManifestError, match="named twice"):
        read_feed(_signed(key, since=1, full=False, removed=[[HF, "model", "org/name", 4]]),
                  public_key_text(key), after=1)
    with pytest.raises(ManifestError, match="names the key"):
        other = public_key_text(Ed25519PrivateKey.generate())
        read_feed(_signed(key, key=other), public_key_text(key), after=0)


def test_apply_refuses_a_ref_that_goes_back_and_keeps_what_it_held(key):
    text = public_key_text(key)
    state = apply({}, read_feed(_signed(key), text, after=0))
    back = _entry(seq=7, refs=[["branch", "main", "c" * 40, 1]])
    feed = read_feed(_signed(key, since=5, upto=8, full=False, repos=[back]), text, after=5)
    with pytest.raises(StaleRef, match="older than 2"):
        apply(state, feed)
    assert state[(HF, "model", "org/name")].refs[0].seq == 2, "what it held is kept"


def test_build_feed_refuses_a_since_ahead_of_the_catalog(catalog, key):
    _publish_many(catalog, 1)
    with pytest.raises(BadRequest, match="ahead of this mirror's sequence"):
        build_feed(catalog, key, catalog.sequence() + 1)


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


def test_the_route_serves_the_signed_feed_over_http(tmp_path, serve):
    config = make_config(tmp_path / "home")
    catalog = Catalog(config.catalog_path)
    importer = Importer(catalog, BlobStore(config.store_dir))
    tiny = _tiny(tmp_path, "tiny")
    importer.import_path(tiny, repo_id="org/open")
    importer.import_path(tiny, repo_id="org/secret", access="private")
    sequence = catalog.sequence()
    running = serve(config)
    key = json.loads(_get(f"{running.url}/api/weightswarm/key")[2])["key"]

    status, content_type, body = _get(f"{running.url}/api/weightswarm/catalog?since=0")
    assert (status, content_type) == (200, "application/msgpack")
    feed = read_feed(body, key, after=0)
    assert [r.repo_id for r in feed.repos] == ["org/open"] and feed.upto == sequence
    status, _, again = _get(f"{running.url}/api/weightswarm/catalog?since=0")
    assert again == body, "the same poll, the same feed"

    importer.import_path(tiny, repo_id="org/second")
    catalog.close()
    status, _, body = _get(f"{running.url}/api/weightswarm/catalog?since={feed.upto}&limit=5")
    later = read_feed(body, key, after=feed.upto)
    assert [r.repo_id for r in later.repos] == ["org/second"] and not later.full

    for query in ("since=-1", "since=abc", "since=1.5", f"since={later.upto + 1}",
                  "since=0&limit=0", f"since=0&limit={MAX_ENTRIES + 1}"):
        status, _, body = _get(f"{running.url}/api/weightswarm/catalog?{query}")
        assert status == 400, f"{query}: {status} {body[:200]!r}"
    metrics = _get(f"{running.url}/metrics")[2].decode()
    assert 'weightswarm_mirror_requests_total{route="catalog",status="200"} 3.0' in metrics
    assert 'route="catalog",status="400"' in metrics


def test_a_catalog_from_before_the_feed_is_migrated_with_every_repo_in_its_first_feed(
        config, key):
    catalog = Catalog(config.catalog_path)
    _publish_many(catalog, 3)
    before = catalog.sequence()
    # The schema as it was before the feed (version 8), and what later versions added.
    for statement in ("DROP INDEX repos_seq", "ALTER TABLE repos DROP COLUMN seq",
                      "DROP TABLE feed_tombstones", "ALTER TABLE sync_runs DROP COLUMN sources",
                      "DROP TABLE scans", "DROP TABLE access_rules", "DROP TABLE cards",
                      "DROP INDEX repos_by_size",
                      "ALTER TABLE repos DROP COLUMN size",
                      "PRAGMA user_version = 8"):
        catalog.conn.execute(statement)
    catalog.close()
    catalog = Catalog(config.catalog_path)
    try:
        assert catalog.sequence() == before + 3, "each repo got a number of its own"
        feed = read_feed(build_feed(catalog, key, 0), public_key_text(key), after=0)
        assert len(feed.repos) == 3
        assert all(r.seq > max(f.seq for f in r.refs) for r in feed.repos)
        assert _held(apply({}, feed)) == _catalog_state(catalog)
    finally:
        catalog.close()
