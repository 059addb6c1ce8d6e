"""The mirror's ModelScope API (mirror/msapi.py, PROTOCOLS.md section 2): the stock `modelscope`
client (tests/msclient.py, the same battery that checks the fake of tests/fakems.py) downloads,
lists and searches the mirror's ModelScope repos at `/hubs/modelscope`, byte-identical; errors
and hostile requests are answered in the envelope (asked with aiohttp, raw); the HF API keeps
serving the same repos under the same prefix."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import pytest
import yarl
from fakems import FakeModelScope
from huggingface_hub import HfApi
from huggingface_hub import snapshot_download as hf_snapshot_download
from msclient import (
    ClientFailed,
    battery,
    model_file_download,
    repo_info,
    run,
    snapshot_download,
    snapshot_files,
)

from helpers import DroppingProxy, make_config, start_mirror
from mirror import msapi
from mirror.catalog import Catalog, NewSnapshot, Ref, Snapshot
from mirror.importer import Importer
from mirror.snapshots import publish
from mirror.sync import Syncer, parse_spec
from mirror.upstreams.modelscope import ModelScope
from peer.errors import BadRequest, NotFound
from peer.hfformat import FileEntry, git_blob_sha1, is_lfs_by_rule, lfs_pointer_sha1
from peer.store import BlobStore

REPO = "tests/ms-tiny"
GATED = "tests/ms-gated"
PRIVATE = "tests/ms-private"
OTHER = "other/ms-tinier"
DATASET = "tests/ms-rows"
#: exactly 3000 entries (files and folders): the client takes it as cut and walks it
HUGE = "tests/ms-huge"
#: one folder of 3100 files: the hub would hide 101 of them for good; the mirror lists them all
FLAT = "tests/ms-flat"
BIG = "big.bin"
FILES = {
    "config.json": b'{"model_type": "bert", "hidden_size": 8}\n',
    "README.md": b"---\nlicense: mit\npipeline_tag: feature-extraction\n---\n# tiny\n",
    "my file.txt": b"a name with a space\n",
    "sub/notes.txt": b"notes\n",
    "sub/deeper/data.json": b"[1, 2, 3]\n",
    "weights.bin": hashlib.sha256(b"weights").digest() * 2048,
    BIG: b"".join(hashlib.sha256(b"%d" % i).digest() for i in range(5 * 2**15)),  # 5 MiB
}
#: what the repo held at v1.0.0
OLD = {"config.json": b'{"model_type": "bert", "hidden_size": 4}\n', "README.md": b"# old\n"}
ROWS = {"README.md": b"# rows\n", "data/train.csv": b"a,b\n1,2\n", "data/test csv.csv": b"a\n",
        **{f"rows/{i:03d}.txt": b"%d\n" % i for i in range(250)}}
#: 2026-01-01 and 2026-06-01 UTC: before the release date of modelscope 1.40.2 (2026-10-09)
JANUARY, JUNE = 1767225600, 1780272000


def _folder(root: Path, files: dict[str, bytes]) -> Path:
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    return root


def _dated_tag(catalog: Catalog, store: BlobStore, repo_id: str, tag: str,
               created_at: float) -> str:
    """Tag what master holds now, as a commit of its own dated `created_at`: as a sync of
    ModelScope publishes a release (its commit ids are the hub's, its dates the hub's)."""
    repo = catalog.repo("modelscope", "model", repo_id)
    files = catalog.files(catalog.snapshot(repo, catalog.resolve(repo, "master")))
    commit = hashlib.sha1(f"{repo_id}@{tag}".encode()).hexdigest()
    publish(catalog, store, hub="modelscope", repo_type="model", repo_id=repo_id,
            commit=commit, files=files, refs=[("tag", tag)], access="public",
            title=f"release {tag}", created_at=created_at)
    return commit


def _entry(path: str, data: bytes, store: BlobStore | None = None,
           catalog: Catalog | None = None) -> FileEntry:
    """A file of a snapshot; its bytes go to the store only when one is given."""
    sha256, lfs = hashlib.sha256(data).hexdigest(), is_lfs_by_rule(path, len(data))
    if store is not None:
        with store.writer(len(data), lfs=lfs) as writer:
            writer.write(data)
            catalog.put_blob(writer.commit())
    git_sha1 = lfs_pointer_sha1(sha256, len(data)) if lfs else git_blob_sha1(data)
    return FileEntry(path, len(data), sha256, git_sha1, lfs)


def _many(catalog: Catalog, store: BlobStore, repo_id: str, folder: str, count: int,
          weights: str) -> dict[str, bytes]:
    """`count` files in `folder` and a `weights` file, published as master. Only the weights
    are in the store (the tests download only them)."""
    files = {f"{folder}/{i:04d}.txt": b"%d\n" % i for i in range(count)}
    entries = [_entry(p, d) for p, d in files.items()]
    entries.append(_entry(weights, b"weights of " + repo_id.encode(), store, catalog))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    catalog.publish(NewSnapshot("modelscope", "model", repo_id, commit, entries,
                                [("branch", "master")], title="many files"))
    return {**files, weights: b"weights of " + repo_id.encode()}


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    home = tmp_path_factory.mktemp("msapi")
    config = make_config(home / "home")
    catalog = Catalog(config.catalog_path)
    store = BlobStore(config.store_dir)
    importer = Importer(catalog, store)
    new = _folder(home / "new", FILES)
    importer.import_path(_folder(home / "old", OLD), repo_id=REPO, hub="modelscope",
                         revision="master")
    old_commit = _dated_tag(catalog, store, REPO, "v1.0.0", JANUARY)
    # v2.0.0 is tagged now, after the SDK's release: an unpinned client never picks it
    importer.import_path(new, repo_id=REPO, hub="modelscope", revision="master",
                         tags=["v2.0.0"])
    release_commit = _dated_tag(catalog, store, REPO, "v1.1.0", JUNE)
    importer.import_path(new, repo_id=OTHER, hub="modelscope", revision="master")
    importer.import_path(new, repo_id="ms-solo", hub="modelscope")  # no owner: HF API only
    importer.import_path(new, repo_id=GATED, hub="modelscope", revision="master",
                         access="gated")
    importer.import_path(new, repo_id=PRIVATE, hub="modelscope", revision="master",
                         access="private")
    importer.import_path(_folder(home / "rows", ROWS), repo_id=DATASET, hub="modelscope",
                         repo_type="dataset", revision="master")
    # flat/ (1) + 2997 files + z/ (1) + z/model.bin: 3000 entries
    huge = _many(catalog, store, HUGE, "flat", 2997, "z/model.bin")
    flat = _many(catalog, store, FLAT, "rows", 3100, "model.bin")
    master = catalog.resolve(catalog.repo("modelscope", "model", REPO), "master")
    catalog.close()
    running = start_mirror(config)
    running.endpoint = f"{running.url}/hubs/modelscope"
    running.commits = {"master": master, "v1.0.0": old_commit, "v1.1.0": release_commit}
    running.huge, running.flat = huge, flat
    yield running
    running.stop()


@pytest.fixture
def seen(caplog):
    """seen() → (method, path, status) of every request the mirror answered so far."""
    caplog.set_level(logging.INFO, logger="mirror.access")

    def requests() -> list[tuple[str, str, int]]:
        return [(r.args[1], r.args[2], r.args[3]) for r in caplog.records
                if r.name == "mirror.access" and isinstance(r.args, tuple) and len(r.args) == 6]

    return requests


@dataclass
class Answer:
    status: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)


def ask(url: str, method: str = "GET", *, headers: dict | None = None,
        data: bytes | None = None) -> Answer:
    """One request with aiohttp, the URL sent as written (no re-encoding), no redirects."""

    async def go() -> Answer:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            async with session.request(method, yarl.URL(url, encoded=True), headers=headers,
                                       data=data, allow_redirects=False) as response:
                return Answer(response.status, dict(response.headers), await response.read())

    return asyncio.run(go())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_url(mirror, path: str, revision: str = "master", repo: str = REPO,
             plural: str = "models") -> str:
    """The download URL as the client builds it (quote_plus)."""
    query = urlencode({"Revision": revision, "FilePath": path})
    return f"{mirror.endpoint}/api/v1/{plural}/{repo}/repo?{query}"


# -- the stock client --------------------------------------------------------------------------


def test_the_battery_passes_and_an_unpinned_file_comes_from_the_newest_tag_before_release(
        mirror, tmp_path, seen):
    report = battery(mirror.endpoint, REPO, FILES, tmp_path, tag="v1.1.0")
    assert [Path(p).name for p in report["snapshots"]] == ["master", "v1.1.0"]
    assert "/snapshots/v1.1.0/" in report["files"][0], "the newest tag before 2026-10-09"
    assert report["info"]["Visibility"] == 5
    assert not [r for r in seen() if r[2] >= 500], "no server error"


def test_the_stock_client_requests_what_protocols_2_2_describes(mirror, tmp_path, seen):
    snapshot_download(mirror.endpoint, REPO, tmp_path / "a")
    api = f"/hubs/modelscope/api/v1/models/{REPO}"
    paths = [p for _, p, _ in seen()]
    assert paths[:2] == [f"{api}/repo/files?Revision=master&Recursive=True",
                         "/hubs/modelscope/api/v1/repos/internalAccelerationInfo"]
    assert sorted(paths[2:]) == sorted(
        f"{api}/repo?Revision=master&FilePath={p}" for p in (
            "config.json", "README.md", "my+file.txt", "sub%2Fnotes.txt",
            "sub%2Fdeeper%2Fdata.json", "weights.bin", BIG))
    assert [s for _, _, s in seen()] == [200, 404] + [200] * len(FILES)
    before = len(seen())
    model_file_download(mirror.endpoint, REPO, "config.json", tmp_path / "b")
    assert [p for _, p, _ in seen()[before:]] == [
        f"{api}/revisions", "/hubs/modelscope/api/v1/repos/internalAccelerationInfo",
        f"{api}/repo?Revision=v1.1.0&FilePath=config.json"]


@pytest.mark.parametrize("revision", ["v1.0.0", "commit of v1.0.0", "commit of master"])
def test_a_snapshot_at_a_tag_or_a_commit_holds_its_own_files(mirror, tmp_path, revision):
    name = revision.removeprefix("commit of ")
    pinned = mirror.commits[name] if revision.startswith("commit") else revision
    path = snapshot_download(mirror.endpoint, REPO, tmp_path / "c", revision=pinned)
    assert path.name == pinned, "the client keys snapshots by the revision string"
    assert snapshot_files(path) == (OLD if name == "v1.0.0" else FILES)


def test_a_cut_download_is_resumed_with_a_range_and_answered_206(mirror, tmp_path, seen):
    proxy = DroppingProxy(mirror.port, cuts=[2 * 2**20])
    try:
        path = model_file_download(f"{proxy.url}/hubs/modelscope", REPO, BIG, tmp_path / "c",
                                   revision="master")
    finally:
        proxy.close()
    assert proxy.dropped == 1 and path.read_bytes() == FILES[BIG]
    downloads = [s for _, p, s in seen() if p.endswith(f"FilePath={BIG}")]
    assert downloads == [200, 206], "the second request resumed where the cut left it"


def test_a_listing_of_exactly_3000_entries_is_walked_with_root_and_nothing_is_lost(
        mirror, tmp_path, seen):
    whole = ask(f"{mirror.endpoint}/api/v1/models/{HUGE}/repo/files?Recursive=True").json()
    assert len(whole["Data"]["Files"]) == 3000, "the mirror never cuts a listing"
    outcomes, _ = run(mirror.endpoint, [
        {"op": "snapshot", "repo_id": HUGE, "allow_patterns": ["*.bin"]},
        {"op": "files", "repo_id": HUGE}], tmp_path / "c")
    assert all(o.ok for o in outcomes), outcomes
    assert snapshot_files(Path(outcomes[0].value)) == {"z/model.bin": mirror.huge["z/model.bin"]}
    assert {f["Path"] for f in outcomes[1].value} == set(mirror.huge) | {"flat", "z"}
    walked = {p.rsplit("Root=", 1)[1] for _, p, _ in seen() if "Root=" in p}
    assert walked == {"flat", "z"}, "the client walked folder by folder"


def test_a_folder_of_more_than_3000_files_is_listed_whole(mirror, tmp_path):
    # The client walks it, cannot split rows/ and warns that the list may be incomplete; it
    # is not: every entry was in the answers it was given.
    outcomes, stderr = run(mirror.endpoint, [
        {"op": "files", "repo_id": FLAT},
        {"op": "snapshot", "repo_id": FLAT, "allow_patterns": ["*.bin"]}], tmp_path / "c")
    assert all(o.ok for o in outcomes), outcomes
    assert {f["Path"] for f in outcomes[0].value} == set(mirror.flat) | {"rows"}
    assert snapshot_files(Path(outcomes[1].value)) == {"model.bin": mirror.flat["model.bin"]}


def test_a_dataset_is_listed_by_pages_of_200_and_downloaded(mirror, tmp_path, seen):
    path = snapshot_download(mirror.endpoint, DATASET, tmp_path / "c", repo_type="dataset")
    assert path.parts[-4:] == ("datasets", "tests--ms-rows", "snapshots", "master")
    assert snapshot_files(path) == ROWS
    pages = [re.search(r"PageNumber=(\d+)&PageSize=200", p).group(1)
             for _, p, _ in seen() if "/repo/tree?" in p]
    assert pages == ["1", "2"], "255 entries: a full page, then a short one"
    one = model_file_download(mirror.endpoint, DATASET, "data/test csv.csv", tmp_path / "d",
                              repo_type="dataset")
    assert one.read_bytes() == ROWS["data/test csv.csv"]
    assert seen()[-1][1].endswith(
        f"/api/v1/datasets/{DATASET}/repo?Revision=master&FilePath=data%2Ftest+csv.csv")
    info = repo_info(mirror.endpoint, DATASET, repo_type="dataset")
    assert (info["owner"], info["name"]) == ("tests", "ms-rows")


def test_search_lists_by_owner_and_text_in_pages_and_never_private_repos(mirror, tmp_path):
    outcomes, _ = run(mirror.endpoint, [
        {"op": "search", "owner": "tests"}, {"op": "search", "text": "MS-TIN"},
        {"op": "search", "owner": "nobody"}, {"op": "search", "text": "solo"}], tmp_path / "c")
    by_owner, by_text, nobody, solo = (o.value for o in outcomes)
    assert sorted(by_owner) == [FLAT, GATED, HUGE, REPO]
    assert sorted(by_text) == [OTHER, REPO]
    assert nobody == solo == [], "a repo without an owner is no ModelScope repo"
    page = ask(f"{mirror.endpoint}/openapi/v1/models?owner=tests&page_number=2&page_size=2")
    data = page.json()["data"]
    assert page.json()["success"] is True
    assert ([m["id"] for m in data["models"]], data["total_count"]) == ([HUGE, REPO], 4)
    assert (data["page_number"], data["page_size"]) == (2, 2)


def test_errors_are_the_stock_clients_exceptions(mirror, tmp_path):
    outcomes, _ = run(mirror.endpoint, [
        {"op": "snapshot", "repo_id": "tests/missing"},
        {"op": "file", "repo_id": REPO, "path": "missing.txt", "revision": "master"},
        {"op": "file", "repo_id": REPO, "path": "config.json", "revision": "v9"},
        {"op": "snapshot", "repo_id": REPO, "revision": "nope"},
        {"op": "info", "repo_id": PRIVATE},
        {"op": "file", "repo_id": PRIVATE, "path": "config.json", "revision": "master"},
        {"op": "file", "repo_id": GATED, "path": "config.json", "revision": "master"},
    ], tmp_path / "c")
    chains = [o.chain for o in outcomes]
    assert all("NotExistError" in c for c in chains[:6]), chains
    assert "PermissionDeniedError" in chains[6], chains[6]
    with pytest.raises(ClientFailed) as missing:
        repo_info(mirror.endpoint, "tests/missing")
    assert missing.value.error == "NotExistError"


def test_the_hf_api_still_serves_the_same_repos_at_the_same_prefix(mirror, tmp_path):
    local = Path(hf_snapshot_download(REPO, endpoint=mirror.endpoint, cache_dir=tmp_path / "hf"))
    assert snapshot_files(local) == FILES
    tagged = hf_snapshot_download(REPO, revision="v1.0.0", endpoint=mirror.endpoint,
                                  cache_dir=tmp_path / "hf")
    assert snapshot_files(Path(tagged)) == OLD
    api = HfApi(endpoint=mirror.endpoint)
    assert api.model_info(REPO).sha == mirror.commits["master"]
    assert [m.id for m in api.list_models(search="ms-tin")] == [OTHER, REPO]


# -- synced from the fake ModelScope, then served ---------------------------------------------


def _sync(config, ms: FakeModelScope, specs: list[str]) -> None:
    """In-process syncs, as `weightswarm mirror sync` runs them, one after the other."""

    async def go() -> None:
        upstream = ModelScope(ms.url)
        catalog = Catalog(config.catalog_path)
        try:
            syncer = Syncer(catalog, BlobStore(config.store_dir), upstream)
            for spec in specs:
                await syncer.sync(parse_spec(spec))
        finally:
            catalog.close()
            await upstream.close()

    asyncio.run(go())


@pytest.fixture
def synced(tmp_path):
    """sync(setup, specs) → a mirror (stopped after the test) holding what `specs` synced from a
    fake ModelScope that `setup(fake)` filled."""
    running = []

    def sync(setup, specs: list[str]):
        config = make_config(tmp_path / f"home{len(running)}")
        with FakeModelScope() as ms:
            setup(ms)
            _sync(config, ms, specs)
        running.append(start_mirror(config))
        running[-1].endpoint = f"{running[-1].url}/hubs/modelscope"
        return running[-1]

    yield sync
    for mirror in running:
        mirror.stop()


def _releases(ms: FakeModelScope) -> None:
    """Three releases of the same files, each a commit of its own: January, June, now."""
    for tag, when in (("v1.0.0", JANUARY), ("v1.1.0", JUNE), ("v2.0.0", None)):
        ms.add_repo("org/tiny", FILES, tags=(tag,), created_at=when)


def test_a_repo_synced_from_the_fake_passes_the_same_battery_as_the_fake(synced, tmp_path):
    # tags first: a snapshot takes the date of the revision that first brings it
    mirror = synced(_releases, ["ms:org/tiny@v1.0.0", "ms:org/tiny@v1.1.0",
                                "ms:org/tiny@v2.0.0", "ms:org/tiny"])
    report = battery(mirror.endpoint, "org/tiny", FILES, tmp_path, tag="v1.1.0")
    assert "/snapshots/v1.1.0/" in report["files"][0]


def test_tags_on_one_commit_keep_their_own_created_at(synced):
    def tags_on_one_commit(ms: FakeModelScope) -> None:
        ms.add_repo("org/tiny", FILES, tags=("v1.0.0",), created_at=JANUARY)
        ms.add_tag("org/tiny", "v1.1.0", created_at=JUNE)

    mirror = synced(tags_on_one_commit, ["ms:org/tiny@v1.0.0", "ms:org/tiny@v1.1.0"])
    tags = ask(f"{mirror.endpoint}/api/v1/models/org/tiny/revisions").json()["Data"][
        "RevisionMap"]["Tags"]
    assert [(t["Revision"], t["CreatedAt"]) for t in tags] == [("v1.1.0", JUNE),
                                                              ("v1.0.0", JANUARY)]


# -- by hand: what each answer carries -------------------------------------------------------


def test_downloads_decode_plus_as_space_carry_the_sha256_and_honour_ranges(mirror):
    whole = ask(file_url(mirror, "my file.txt"))
    assert (whole.status, whole.body) == (200, FILES["my file.txt"])
    assert whole.headers["X-Linked-ETag"] == sha256(FILES["my file.txt"])
    assert whole.headers["X-Linked-Size"] == str(len(FILES["my file.txt"]))
    part = ask(file_url(mirror, BIG), headers={"Range": "bytes=100-199"})
    assert (part.status, part.body) == (206, FILES[BIG][100:200])
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(FILES[BIG])}"
    assert part.headers["X-Linked-ETag"] == sha256(FILES[BIG])
    tail = ask(file_url(mirror, BIG), headers={"Range": "bytes=5000000-"})
    assert (tail.status, tail.body) == (206, FILES[BIG][5000000:])
    head = ask(file_url(mirror, "sub/notes.txt"), "HEAD")
    assert head.status == 200 and head.headers["Content-Length"] == "6"
    pinned = ask(file_url(mirror, "config.json", mirror.commits["v1.0.0"]))
    assert pinned.body == OLD["config.json"] and "immutable" in pinned.headers["Cache-Control"]
    beyond = ask(file_url(mirror, BIG), headers={"Range": f"bytes={len(FILES[BIG])}-"})
    assert beyond.status == 416 and beyond.headers["Content-Range"] == f"bytes */{len(FILES[BIG])}"
    assert beyond.json()["Code"] == 416


def test_listings_carry_sha256_lfs_and_folders_and_take_recursive_in_any_case(mirror):
    def listing(query: str) -> list[dict]:
        answer = ask(f"{mirror.endpoint}/api/v1/models/{REPO}/repo/files?{query}")
        assert answer.status == 200, answer.body
        body = answer.json()
        assert (body["Code"], body["Message"], body["Success"]) == (200, "success", True)
        assert answer.headers["X-Request-ID"] == body["RequestId"]
        return body["Data"]["Files"]

    entries = {e["Path"]: e for e in listing("Revision=master&Recursive=true")}
    assert set(entries) == set(FILES) | {"sub", "sub/deeper"}
    for path, data in FILES.items():
        assert (entries[path]["Sha256"], entries[path]["Size"], entries[path]["Type"]) == (
            sha256(data), len(data), "blob")
    assert (entries[BIG]["IsLFS"], entries["config.json"]["IsLFS"]) == (True, False)
    assert entries["sub"]["Type"] == "tree" and entries["sub"]["Name"] == "sub"
    assert entries["config.json"]["Revision"] == mirror.commits["master"]
    assert listing("Revision=master&Recursive=TRUE") == listing("Recursive=True")
    assert {e["Path"] for e in listing("Recursive=False")} == {
        "config.json", "README.md", "my file.txt", "sub", "weights.bin", BIG}
    assert {e["Path"] for e in listing("Recursive=True&Root=sub")} == {
        "sub/notes.txt", "sub/deeper", "sub/deeper/data.json"}
    assert {e["Path"] for e in listing("Recursive=False&Root=sub%2F")} == {
        "sub/notes.txt", "sub/deeper"}
    assert listing("Root=%2F&Recursive=True") == listing("Recursive=True")
    old = listing(f"Revision={mirror.commits['v1.0.0']}&Recursive=True")
    assert {e["Path"]: e["Sha256"] for e in old} == {p: sha256(d) for p, d in OLD.items()}


def test_revisions_are_a_revision_map_with_dates_and_commits_and_end_time(mirror):
    url = f"{mirror.endpoint}/api/v1/models/{REPO}/revisions"
    data = ask(url).json()["Data"]["RevisionMap"]
    (master,) = data["Branches"]
    assert (master["Revision"], master["CommitId"]) == ("master", mirror.commits["master"])
    tags = [(t["Revision"], t["CreatedAt"], t["CommitId"]) for t in data["Tags"]]
    assert tags[1:] == [("v1.1.0", JUNE, mirror.commits["v1.1.0"]),
                        ("v1.0.0", JANUARY, mirror.commits["v1.0.0"])]
    assert tags[0][0] == "v2.0.0" and tags[0][1] > JUNE, "newest first"
    early = ask(f"{url}?EndTime={JUNE - 1}").json()["Data"]["RevisionMap"]
    assert [t["Revision"] for t in early["Tags"]] == ["v1.0.0"]
    assert early["Branches"] == data["Branches"]


def test_repo_info_legacy_and_open_api(mirror):
    legacy = ask(f"{mirror.endpoint}/api/v1/models/{REPO}").json()
    assert (legacy["Code"], legacy["Success"]) == (200, True)
    assert (legacy["Data"]["Path"], legacy["Data"]["Name"]) == ("tests", "ms-tiny")
    assert legacy["Data"]["Revision"] == mirror.commits["master"]
    at_tag = ask(f"{mirror.endpoint}/api/v1/models/{REPO}?Revision=v1.0.0").json()["Data"]
    assert (at_tag["Revision"], at_tag["LastModified"]) == (mirror.commits["v1.0.0"], JANUARY)
    new = ask(f"{mirror.endpoint}/openapi/v1/models/{REPO}").json()
    assert new["success"] is True and new["data"]["id"] == REPO
    assert new["data"]["file_size"] == sum(len(d) for d in FILES.values())
    card = ask(f"{mirror.endpoint}/openapi/v1/models/{OTHER}").json()["data"]
    assert (card["license"], card["tasks"]) == ("mit", ["feature-extraction"])
    search = ask(f"{mirror.endpoint}/api/v1/models/", "PUT",
                 data=b'{"Path":"tests", "PageNumber":1, "PageSize": 2}').json()
    assert [m["Name"] for m in search["Data"]["Models"]] == ["ms-flat", "ms-gated"]
    assert search["Data"]["TotalCount"] == 4
    gone = ask(f"{mirror.endpoint}/openapi/v1/models/{PRIVATE}")
    assert gone.status == 404 and gone.json()["code"] == "ResourceNotFound"


def test_bytes_served_are_counted_in_metrics_and_egress(mirror):
    def counted() -> tuple[float, float]:
        text = ask(f"{mirror.url}/metrics").body.decode()
        egress = re.search(r'^weightswarm_mirror_egress_bytes_total\{via="resolve"\} (\S+)$',
                           text, re.M)
        served = re.search(r'^weightswarm_mirror_bytes_served_total\{route="ms_download"\} '
                           r'(\S+)$', text, re.M)
        return float(egress.group(1)), float(served.group(1)) if served else 0.0

    before = counted()
    assert ask(file_url(mirror, BIG)).body == FILES[BIG]
    assert ask(file_url(mirror, BIG), headers={"Range": "bytes=0-9"}).status == 206
    after = counted()
    assert after[0] - before[0] == len(FILES[BIG]) + 10
    assert after[1] - before[1] == len(FILES[BIG]) + 10


# -- by hand: errors and hostile requests, always the envelope -------------------------------


def _refused(answer: Answer, status: int, *, openapi: bool = False) -> None:
    assert answer.status == status, (answer.status, answer.body)
    body = answer.json()
    assert b"Traceback" not in answer.body
    if openapi:
        assert body["success"] is False and body["request_id"] and body["message"]
    else:
        assert (body["Code"], body["Success"]) == (status, False), body
        assert body["RequestId"] and body["Message"]


@pytest.mark.parametrize("path, status", [
    (f"/models/{REPO}/repo?Revision=master&FilePath=missing.txt", 404),
    (f"/models/{REPO}/repo?Revision=nope&FilePath=config.json", 404),
    (f"/models/{REPO}/repo/files?Revision=nope", 404),
    (f"/models/{REPO}/repo/files?Root=nowhere", 404),
    (f"/models/{REPO}/repo/files?Root=config.json", 404),
    (f"/models/{REPO}?Revision=nope", 404),
    ("/models/tests/missing/repo/files", 404),
    ("/models/tests/missing/revisions", 404),
    (f"/models/{PRIVATE}/repo?FilePath=config.json", 404),
    (f"/models/{PRIVATE}/repo/files", 404),
    (f"/models/{GATED}/repo?FilePath=config.json", 403),
    (f"/models/{REPO}/repo", 400),
    ("/repos/internalAccelerationInfo", 404),
    (f"/models/{REPO}/nothing", 404),
    ("/spaces/tests/x/repo/files", 404),
])
def test_errors_answer_the_right_status_in_the_envelope(mirror, path, status):
    _refused(ask(f"{mirror.endpoint}/api/v1{path}"), status)


@pytest.mark.parametrize("query", [
    "FilePath=../config.json", "FilePath=%2E%2E%2Fconfig.json", "FilePath=/etc/passwd",
    "FilePath=sub/../config.json", "FilePath=sub%5C..%5Cconfig.json", "FilePath=a%00b",
    "FilePath=%C0%AF", "FilePath=" + "a" * 1100, "FilePath=sub//notes.txt",
    "FilePath=config.json&Revision=../../x", "FilePath=config.json&Revision=master%00",
    "FilePath=config.json&Revision=a..b", "FilePath=config.json&Revision=" + "v" * 300,
    "FilePath=config.json&Revision=%2Fetc",
])
def test_hostile_file_paths_and_revisions_are_400(mirror, query):
    _refused(ask(f"{mirror.endpoint}/api/v1/models/{REPO}/repo?{query}"), 400)


@pytest.mark.parametrize("query", [
    "Root=..", "Root=/etc", "Root=sub/../..", "Root=%00", "Root=%2E%2E%2F",
    "Recursive=maybe", "Recursive=True&Revision=%FF",
    "&".join(f"k{i}=v" for i in range(100)), "Root=" + "x/" * 3000,
])
def test_hostile_listings_are_400(mirror, query):
    _refused(ask(f"{mirror.endpoint}/api/v1/models/{REPO}/repo/files?{query}"), 400)


@pytest.mark.parametrize("url, status", [
    ("/api/v1/datasets/{dataset}/repo/tree?PageSize=0", 400),
    ("/api/v1/datasets/{dataset}/repo/tree?PageNumber=-1", 400),
    ("/api/v1/datasets/{dataset}/repo/tree?PageSize=%C2%B9", 400),
    ("/api/v1/datasets/{dataset}/repo/tree?PageSize=99999999", 400),
    ("/api/v1/models/{repo}/revisions?EndTime=yesterday", 400),
    ("/api/v1/models/%2E%2E/x/repo/files", 400),
    ("/api/v1/models/tests%2Fms-tiny/x/repo/files", 400),
    ("/api/v1/models/te%00sts/ms-tiny/repo/files", 400),
    ("/api/v1/models/" + "o" * 200 + "/x/repo/files", 400),
])
def test_hostile_repo_ids_pages_and_times_are_400(mirror, url, status):
    _refused(ask(mirror.endpoint + url.format(dataset=DATASET, repo=REPO)), status)


@pytest.mark.parametrize("query", [
    "page_number=2&page_size=3000", "page_size=0", "page_number=x", "sort=bogus",
    "search=" + "s" * 300, "owner=a%00b", "search=%FF",
])
def test_hostile_searches_are_400_in_the_open_api_envelope(mirror, query):
    answer = ask(f"{mirror.endpoint}/openapi/v1/models?{query}")
    _refused(answer, 400, openapi=True)
    assert answer.json()["code"] == "InputParameterError"


@pytest.mark.parametrize("body", [b"{", b"[1]", b'{"PageSize": 0}', b'{"Path": 5}',
                                  b'{"PageNumber": true}', b" " * (msapi.MAX_LEGACY_BODY + 1)])
def test_a_hostile_legacy_search_body_is_400(mirror, body):
    _refused(ask(f"{mirror.endpoint}/api/v1/models/", "PUT", data=body), 400)


def test_a_method_the_call_does_not_take_is_405_with_allow(mirror):
    answer = ask(file_url(mirror, "config.json"), "DELETE")
    _refused(answer, 405)
    assert answer.headers["Allow"] == "GET, HEAD"
    _refused(ask(f"{mirror.endpoint}/openapi/v1/models", "POST"), 405, openapi=True)


# -- the pure parts ----------------------------------------------------------------------------


@pytest.mark.parametrize("raw, kind, repo_type, repo_id", [
    ("/hubs/modelscope/api/v1/models/org/name", "info", "model", "org/name"),
    ("/hubs/modelscope/api/v1/models/org/name?Revision=v1", "info", "model", "org/name"),
    ("/hubs/modelscope/api/v1/models/org/name/revisions", "revisions", "model", "org/name"),
    ("/hubs/modelscope/api/v1/models/org/name/repo?FilePath=a", "download", "model", "org/name"),
    ("/hubs/modelscope/api/v1/models/org/name/repo/files", "files", "model", "org/name"),
    ("/hubs/modelscope/api/v1/datasets/org/data/repo/tree", "tree", "dataset", "org/data"),
    ("/hubs/modelscope/api/v1/datasets/org/data/repo", "download", "dataset", "org/data"),
    ("/hubs/modelscope/api/v1/models/", "legacy_search", "model", ""),
    ("/hubs/modelscope/openapi/v1/models", "search", "model", ""),
    ("/hubs/modelscope/openapi/v1/datasets?search=x", "search", "dataset", ""),
    ("/hubs/modelscope/openapi/v1/models/org/name", "openapi_info", "model", "org/name"),
    ("/hubs/modelscope/api/v1/models/org/a%2Eb/repo/files", "files", "model", "org/a.b"),
])
def test_modelscope_paths_parse_to_their_call(raw, kind, repo_type, repo_id):
    assert msapi.parse(raw) == msapi.MsCall(kind, repo_type, repo_id)


@pytest.mark.parametrize("raw", [
    "/hubs/modelscope/api/v1/repos/internalAccelerationInfo",
    "/hubs/modelscope/api/v1/models/org", "/hubs/modelscope/api/v1/models/org/name/repo/x",
    "/hubs/modelscope/openapi/v1/models/org/name/revisions", "/hubs/modelscope/api/models/x",
    "/hubs/modelscope/api%2Fv1/models/org/name",
])
def test_other_paths_are_no_modelscope_call(raw):
    with pytest.raises(NotFound):
        msapi.parse(raw)


def test_the_query_takes_plus_as_space_names_in_any_case_and_the_first_value():
    params = msapi.query_params("filepath=my+file.txt&FilePath=other&REVISION=v%2B1&Root=")
    assert params == {"filepath": "my file.txt", "revision": "v+1", "root": ""}
    assert msapi.parse_listing(params) == msapi.Listing("v+1", "", False)
    assert msapi.parse_listing({"recursive": "TRUE", "root": "sub/"}) == msapi.Listing(
        "master", "sub", True)
    assert msapi.parse_tree_page({}) is None, "unpaged: the whole listing"
    assert msapi.parse_tree_page({"pagenumber": "2", "pagesize": "200"}).start == 200
    assert msapi.parse_end_time({"endtime": "1780272000000"}) == JUNE, "milliseconds"
    with pytest.raises(BadRequest):
        msapi.query_params("a=%FF")


def _ref(kind: str, name: str, commit: str) -> Ref:
    return Ref(kind, name, commit, 1, 0.0)


def test_the_revision_map_names_the_default_branch_master_and_puts_new_tags_first():
    dated = [(_ref("branch", "main", "a" * 40), JANUARY), (_ref("branch", "dev", "b" * 40), JUNE),
             (_ref("tag", "v1", "a" * 40), JANUARY), (_ref("tag", "v2", "b" * 40), JUNE)]
    data = msapi.revision_map_json(dated, None)["RevisionMap"]
    assert [(b["Revision"], b["CommitId"]) for b in data["Branches"]] == [
        ("master", "a" * 40), ("dev", "b" * 40)]
    assert [(t["Revision"], t["CreatedAt"]) for t in data["Tags"]] == [("v2", JUNE),
                                                                      ("v1", JANUARY)]
    assert [t["Revision"] for t in msapi.revision_map_json(dated, JUNE - 1)["RevisionMap"][
        "Tags"]] == ["v1"]
    both = [(_ref("branch", "main", "a" * 40), 0.0), (_ref("branch", "master", "b" * 40), 0.0)]
    assert [b["Revision"] for b in msapi.revision_map_json(both, None)["RevisionMap"][
        "Branches"]] == ["master", "main"], "a real master keeps main as it is"


def test_a_listing_has_folders_stops_at_one_level_unless_recursive_and_knows_its_roots():
    files = [_entry(p, d) for p, d in FILES.items()]
    snapshot = Snapshot(1, 1, "c" * 40, None, "t", "", float(JUNE), {}, None)

    def paths(root: str, recursive: bool) -> list[str]:
        listing = msapi.listing_json(files, snapshot, msapi.Listing("master", root, recursive))
        return [e["Path"] for e in listing]

    assert paths("", False) == sorted(["README.md", BIG, "config.json", "my file.txt", "sub",
                                       "weights.bin"])
    assert paths("sub", True) == ["sub/deeper", "sub/deeper/data.json", "sub/notes.txt"]
    assert len(paths("", True)) == len(FILES) + 2
    for root in ("nowhere", "config.json", "sub/notes.txt"):
        with pytest.raises(LookupError):
            paths(root, True)
