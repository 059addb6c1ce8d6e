"""The fake ModelScope speaks PROTOCOLS.md section 2: checked with the stock `modelscope` client
(tests/msclient.py, in subprocesses) where it can tell, and with plain http.client for the
envelopes, headers and misbehaviour knobs."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fakems import FakeModelScope
from msclient import (
    ClientFailed,
    battery,
    list_files,
    model_file_download,
    repo_info,
    run,
    snapshot_download,
    snapshot_files,
)

REPO = "org/tiny"
SHARD = "model.safetensors"
FILES = {
    "config.json": b'{"model_type": "bert", "hidden_size": 8}\n',
    "README.md": b"# tiny\n",
    "my file.txt": b"a name with a space\n",
    "sub/notes.txt": b"notes\n",
    "sub/deeper/data.json": b"[1, 2, 3]\n",
    SHARD: os.urandom(64 * 1024),
}
#: 2026-01-01 and 2026-06-01 UTC: before the release date of modelscope 1.40.2 (2026-10-09)
JANUARY, JUNE = 1767225600, 1780272000


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self):
        return json.loads(self.body)


def fetch(url: str, headers: dict[str, str] | None = None) -> Answer:
    """One GET, redirects not followed."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", url[len(f"{parts.scheme}://{parts.netloc}"):], headers=headers or {})
        response = conn.getresponse()
        return Answer(response.status, response.headers, response.read())
    finally:
        conn.close()


def listing(ms: FakeModelScope, query: str, repo: str = REPO) -> list[dict] | None:
    answer = fetch(f"{ms.url}/api/v1/models/{repo}/repo/files?{query}")
    assert answer.status == 200, answer.body
    return answer.json()["Data"]["Files"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def start():
    """start(**knobs) runs a FakeModelScope; all are stopped after the test."""
    fakes: list[FakeModelScope] = []

    def _start(**knobs) -> FakeModelScope:
        fakes.append(FakeModelScope(**knobs).start())
        return fakes[-1]

    yield _start
    for fake in fakes:
        fake.stop()


@pytest.fixture
def ms(start) -> FakeModelScope:
    return start()


# -- the stock client ------------------------------------------------------------------------


def test_the_battery_passes_and_an_unpinned_file_comes_from_the_newest_tag_before_release(
        ms, tmp_path):
    ms.add_repo(REPO, FILES, tags=("v1.0.0",), created_at=JANUARY)
    ms.add_tag(REPO, "v1.1.0", created_at=JUNE)
    ms.add_tag(REPO, "v2.0.0")  # created now, after the SDK's release: never picked
    report = battery(ms.url, REPO, FILES, tmp_path, tag="v1.1.0")
    assert [p.rsplit("/", 1)[1] for p in report["snapshots"]] == ["master", "v1.1.0"]
    assert "/snapshots/v1.1.0/" in report["files"][0]


def test_the_battery_passes_and_without_tags_an_unpinned_file_comes_from_master(ms, tmp_path):
    ms.add_repo(REPO, FILES)
    report = battery(ms.url, REPO, FILES, tmp_path)
    assert "/snapshots/master/" in report["files"][0]


def test_the_stock_client_requests_what_protocols_2_2_describes(ms, tmp_path):
    ms.add_repo(REPO, FILES, tags=("v1.0.0",), created_at=JANUARY)
    snapshot_download(ms.url, REPO, tmp_path / "a")
    paths = [p for _, p in ms.requests]
    assert paths[:2] == [f"/api/v1/models/{REPO}/repo/files?Revision=master&Recursive=True",
                         "/api/v1/repos/internalAccelerationInfo"]
    assert sorted(paths[2:]) == sorted(
        f"/api/v1/models/{REPO}/repo?Revision=master&FilePath={p}" for p in (
            "config.json", "README.md", "my+file.txt", "sub%2Fnotes.txt",
            "sub%2Fdeeper%2Fdata.json", SHARD))
    assert len(ms.oss_requests) == 1 and ms.oss_requests[0][1].startswith(
        f"/lfs/{sha256(FILES[SHARD])}?"), "only the LFS file goes to the object store"
    ms.reset_counts()
    model_file_download(ms.url, REPO, "config.json", tmp_path / "b")
    assert [p for _, p in ms.requests] == [
        f"/api/v1/models/{REPO}/revisions", "/api/v1/repos/internalAccelerationInfo",
        f"/api/v1/models/{REPO}/repo?Revision=v1.0.0&FilePath=config.json"]


def test_corrupt_bytes_are_refused_by_the_stock_client_until_repaired(ms, tmp_path):
    ms.add_repo(REPO, FILES)
    ms.corrupt(REPO, SHARD)
    outcomes, _ = run(ms.url, [
        {"op": "snapshot", "repo_id": REPO},  # checks the listing's Sha256
        {"op": "file", "repo_id": REPO, "path": SHARD, "revision": "master",  # X-Linked-ETag
         "cache": str(tmp_path / "single")},
    ], tmp_path / "cache")
    assert [o.error for o in outcomes] == ["FileDownloadError", "FileIntegrityError"], outcomes
    assert "Hash mismatch" in outcomes[1].message
    shard_gets = [r for r in ms.oss_requests if sha256(FILES[SHARD]) in r[1]]
    assert len(shard_gets) == 6, "three attempts each (modelscope_hub DOWNLOAD_HASH_RETRY_TIMES)"
    assert not list((tmp_path / "single").rglob(f"{SHARD}*")), "nothing rejected is kept"
    ms.repair(REPO, SHARD)
    assert snapshot_files(snapshot_download(ms.url, REPO, tmp_path / "again")) == FILES


@pytest.mark.parametrize("redirect", [True, False], ids=["object-store", "hub"])
def test_a_cut_download_is_resumed_by_the_stock_client_with_a_range(start, tmp_path, redirect):
    ms = start(cut_large_files=True, large_file=1024 * 1024, redirect=redirect)
    files = {**FILES, SHARD: os.urandom(3 * 1024 * 1024)}
    ms.add_repo(REPO, files)
    assert snapshot_files(snapshot_download(ms.url, REPO, tmp_path / "c")) == files
    (resume,) = ms.ranges
    offset = int(re.fullmatch(r"bytes=(\d+)-", resume).group(1))
    assert 0 < offset < len(files[SHARD])
    assert (len(ms.oss_requests) == 2) is redirect


def test_a_listing_cut_at_3000_entries_is_walked_by_the_stock_client_with_root(ms, tmp_path):
    # modelscope_hub walks when a listing has exactly REPO_FILES_TRUNCATION_LIMIT entries, a
    # constant (3000) no setting changes; 3204 entries keep this to about a second.
    files = {f"{d}/{i:04d}.txt": b"%s%d" % (d.encode(), i) for d in "ab" for i in range(1600)}
    files |= {"z/model.bin": b"weights", "z/deep/extra.bin": b"more"}
    ms.add_repo("org/huge", files)
    outcomes, _ = run(ms.url, [
        {"op": "snapshot", "repo_id": "org/huge", "allow_patterns": ["*.bin"]},
        {"op": "files", "repo_id": "org/huge"}], tmp_path / "c")
    assert all(o.ok for o in outcomes), outcomes
    # z/ sorts after the cut: only the walk finds it
    assert snapshot_files(Path(outcomes[0].value)) == {
        "z/model.bin": b"weights", "z/deep/extra.bin": b"more"}
    assert {f["Path"] for f in outcomes[1].value} == set(files) | {"a", "b", "z", "z/deep"}
    walked = [p for _, p in ms.requests if "Root=" in p]
    assert {p.rsplit("Root=", 1)[1] for p in walked} == {"a", "b", "z"}


def test_without_the_token_the_stock_client_gets_401_and_with_it_everything(start, tmp_path):
    ms = start(token="ms-token")
    ms.add_repo(REPO, FILES)
    with pytest.raises(ClientFailed) as refused:
        snapshot_download(ms.url, REPO, tmp_path / "anonymous")
    assert "AuthenticationError" in refused.value.chain
    ms.reset_counts()
    battery(ms.url, REPO, FILES, tmp_path, token="ms-token")
    assert set(ms.auth_headers) <= {"Bearer ms-token", None}
    # the region probe carries no Authorization: the m_session_id cookie at best (after a
    # listing), nothing at all before a single-file download; its 401 is ignored
    unbearer = {p for (_, p), a in zip(ms.requests, ms.auth_headers, strict=True) if a is None}
    assert unbearer == {"/api/v1/repos/internalAccelerationInfo"}
    assert all(auth is None for auth, _ in ms.oss_credentials), "no bearer token to the store"


def test_a_missing_repo_is_the_stock_clients_not_exist_error(ms, tmp_path):
    outcomes, _ = run(ms.url, [
        {"op": "snapshot", "repo_id": "org/missing"},
        {"op": "file", "repo_id": "org/missing", "path": "config.json"},
        {"op": "info", "repo_id": "org/missing"}], tmp_path / "c")
    for outcome in outcomes:
        # the compat layer wraps it in requests' HTTPError for downloads
        assert "NotExistError" in outcome.chain, outcome
    with pytest.raises(ClientFailed) as missing:
        repo_info(ms.url, "org/missing")
    assert missing.value.error == "NotExistError"


def test_4xx_statuses_are_the_stock_clients_exceptions_and_404_falls_back_to_legacy_info(
        ms, tmp_path):
    ms.add_repo(REPO, FILES)
    for status in (400, 403, 404):
        ms.fail(status, match=f"/openapi/v1/models/{REPO}")
    outcomes, _ = run(ms.url, [{"op": "info", "repo_id": REPO}] * 4, tmp_path / "c")
    assert [o.error for o in outcomes] == ["InvalidParameter", "PermissionDeniedError", None,
                                           None]
    legacy, openapi = outcomes[2].value, outcomes[3].value
    assert ms.requests[-2][1] == f"/api/v1/models/{REPO}", "the fallback after the 404"
    assert (legacy["Owner"], legacy["Name"], legacy["Visibility"]) == ("org", "tiny", 5)
    assert isinstance(legacy["Id"], int) and openapi["Id"] == REPO
    assert legacy["CreatedAt"] == openapi["CreatedAt"]


def test_a_rate_limited_hub_is_retried_through_by_the_stock_client(start, tmp_path):
    ms = start(rate_limit_every=3, retry_after=0)
    ms.add_repo(REPO, FILES)
    assert snapshot_files(snapshot_download(ms.url, REPO, tmp_path / "c")) == FILES
    ms.reset_counts()
    answers = [fetch(f"{ms.url}/api/v1/models/{REPO}/revisions") for _ in range(3)]
    assert [a.status for a in answers] == [200, 200, 429]
    assert answers[2].headers["Retry-After"] == "0"
    assert answers[2].json()["Code"] == 429 and answers[2].json()["Success"] is False


def test_a_dataset_is_listed_by_pages_of_200_and_downloaded(ms, tmp_path):
    files = {"README.md": b"# rows\n", "data/train.csv": b"a,b\n1,2\n", "data/test.csv": b"a\n"}
    rows = {f"rows/{i:03d}.txt": b"%d\n" % i for i in range(250)}
    ms.add_repo("org/rows", files | rows, repo_type="dataset")
    path = snapshot_download(ms.url, "org/rows", tmp_path / "c", repo_type="dataset",
                             allow_patterns=["*.csv", "README.md"])
    assert path.parts[-4:] == ("datasets", "org--rows", "snapshots", "master")
    assert snapshot_files(path) == files
    pages = [p for _, p in ms.requests if "/repo/tree?" in p]
    assert [re.search(r"PageNumber=(\d+)&PageSize=200", p).group(1) for p in pages] == ["1", "2"]
    one = model_file_download(ms.url, "org/rows", "data/train.csv", tmp_path / "d",
                              repo_type="dataset")
    assert one.read_bytes() == files["data/train.csv"]
    assert ms.requests[-1][1] == (
        "/api/v1/datasets/org/rows/repo?Revision=master&FilePath=data%2Ftrain.csv")


# -- the fake's answers, by hand -------------------------------------------------------------


def test_listing_entries_carry_sha256_and_the_commit_that_last_touched_each_file(ms):
    first = ms.add_repo(REPO, FILES, created_at=JANUARY)
    second = ms.add_repo(REPO, {**FILES, "config.json": b"{}"}, created_at=JUNE)
    assert re.fullmatch(r"[0-9a-f]{40}", first) and first != second
    entries = {e["Path"]: e for e in listing(ms, "Revision=master&Recursive=true")}
    assert set(entries) == set(FILES) | {"sub", "sub/deeper"}
    shard, config, folder = entries[SHARD], entries["config.json"], entries["sub"]
    assert shard.keys() == {"Name", "Path", "Type", "Size", "Sha256", "IsLFS", "Revision",
                            "CommittedDate", "CommitMessage", "CommitterName", "Mode",
                            "InCheck"}
    assert (shard["Type"], shard["Size"], shard["Sha256"], shard["IsLFS"]) == (
        "blob", len(FILES[SHARD]), sha256(FILES[SHARD]), True)
    assert (shard["Revision"], shard["CommittedDate"]) == (first, JANUARY)
    assert (config["Revision"], config["CommittedDate"], config["IsLFS"]) == (second, JUNE,
                                                                               False)
    assert config["Sha256"] == sha256(b"{}") and folder["Type"] == "tree"
    assert {e["Path"] for e in listing(ms, f"Revision={first}&Recursive=True&Root=sub")} == {
        "sub/notes.txt", "sub/deeper", "sub/deeper/data.json"}
    assert {e["Path"] for e in listing(ms, "Revision=master&Recursive=False")} == {
        "config.json", "README.md", "my file.txt", "sub", SHARD}


def test_an_unknown_revision_lists_files_null_but_its_downloads_are_404(ms):
    ms.add_repo(REPO, FILES)
    assert listing(ms, "Revision=main&Recursive=True") is None
    missing = fetch(ms.file_url(REPO, "config.json", "main"))
    assert missing.status == 404 and missing.json()["Code"] == 404
    assert missing.json().keys() == {"Code", "Message", "RequestId", "Success"}
    assert fetch(f"{ms.url}/api/v1/models/{REPO}/repo/files?Root=nope&Recursive=True"
                 ).status == 404


def test_truncate_at_cuts_every_listing_and_root_scopes_it(start):
    ms = start(truncate_at=5)
    files = {f"{d}/{i}.txt": b"x" for d in "abc" for i in range(3)}
    ms.add_repo(REPO, files)
    cut = listing(ms, "Revision=master&Recursive=True")
    assert [e["Path"] for e in cut] == ["a", "a/0.txt", "a/1.txt", "a/2.txt", "b"]
    walked = {e["Path"] for e in listing(ms, "Recursive=False")}
    for folder in ("a", "b", "c"):
        walked |= {e["Path"] for e in listing(ms, f"Recursive=True&Root={folder}")}
    assert walked == set(files) | {"a", "b", "c"}


def test_downloads_decode_plus_as_space_redirect_with_a_signature_and_honour_ranges(ms):
    ms.add_repo(REPO, FILES)
    direct = fetch(ms.file_url(REPO, "my file.txt"), {"Range": "bytes=2-5"})
    assert (direct.status, direct.body) == (206, FILES["my file.txt"][2:6])
    assert direct.headers["Content-Range"] == f"bytes 2-5/{len(FILES['my file.txt'])}"
    assert direct.headers["X-Linked-ETag"] == sha256(FILES["my file.txt"])
    moved = fetch(ms.file_url(REPO, SHARD))
    assert moved.status == 302 and moved.headers["Location"].startswith(f"{ms.oss_url}/lfs/")
    stored = fetch(moved.headers["Location"], {"Range": "bytes=100-"})
    assert (stored.status, stored.body) == (206, FILES[SHARD][100:])
    assert stored.headers["X-Linked-ETag"] == sha256(FILES[SHARD])
    forged = fetch(moved.headers["Location"].replace("Signature=", "Signature=0"))
    assert forged.status == 403 and b"SignatureDoesNotMatch" in forged.body
    assert ms.ranges == ["bytes=2-5", "bytes=100-"]


def test_knobs_lie_about_sizes_list_raw_entries_and_redirect_elsewhere(ms):
    ms.add_repo(REPO, FILES)
    ms.lie_size(REPO, "config.json", 1)
    assert {e["Path"]: e["Size"] for e in listing(ms, "Recursive=True")}["config.json"] == 1
    ms.redirect_scheme = "ftp"
    assert fetch(ms.file_url(REPO, SHARD)).headers["Location"].startswith("ftp://127.0.0.1:")
    ms.redirect_scheme = "file:///etc/passwd"
    assert fetch(ms.file_url(REPO, SHARD)).headers["Location"] == "file:///etc/passwd"
    ms.redirect = False
    assert fetch(ms.file_url(REPO, SHARD)).body == FILES[SHARD]
    hostile = [{"Path": "../x", "Type": "blob", "Size": 1, "Sha256": "0" * 64},
               {"Path": "/abs", "Type": "blob"}, {"Path": "a\0b"}, {"Path": "../x"}]
    ms.set_raw_files(REPO, hostile)
    assert listing(ms, "Recursive=True&Root=anything") == hostile


def test_revisions_are_a_revision_map_with_commit_ids_and_end_time_drops_later_tags(ms):
    commit = ms.add_repo(REPO, FILES, tags=("v1",), created_at=JANUARY)
    ms.add_tag(REPO, "v2", created_at=JUNE)
    data = fetch(f"{ms.url}/api/v1/models/{REPO}/revisions").json()["Data"]
    (master,) = data["RevisionMap"]["Branches"]
    assert (master["Revision"], master["CommitId"], master["CreatedAt"]) == (
        "master", commit, JANUARY)
    assert [(t["Revision"], t["CreatedAt"]) for t in data["RevisionMap"]["Tags"]] == [
        ("v2", JUNE), ("v1", JANUARY)]
    early = fetch(f"{ms.url}/api/v1/models/{REPO}/revisions?EndTime={JANUARY + 1}").json()
    assert [t["Revision"] for t in early["Data"]["RevisionMap"]["Tags"]] == ["v1"]
    assert listing(ms, "Revision=v1&Recursive=True") == listing(ms, f"Revision={commit}"
                                                                    "&Recursive=True")


def test_search_and_repo_info_speak_both_envelopes(ms):
    ms.add_repo(REPO, FILES)
    ms.add_repo("other/tinier", FILES)
    found = fetch(f"{ms.url}/openapi/v1/models?search=TIN&owner=org&page_number=1&page_size=5")
    assert found.json()["success"] is True
    assert [m["id"] for m in found.json()["data"]["models"]] == [REPO]
    assert found.json()["data"]["total_count"] == 1
    assert fetch(f"{ms.url}/openapi/v1/models?page_number=2&page_size=3000").status == 400
    legacy = fetch(f"{ms.url}/api/v1/models/{REPO}").json()
    assert (legacy["Code"], legacy["Success"], legacy["Message"]) == (200, True, "success")
    assert (legacy["Data"]["Path"], legacy["Data"]["Name"]) == ("org", "tiny")
    gone = fetch(f"{ms.url}/openapi/v1/models/org/gone")
    assert gone.status == 404 and gone.json()["code"] == "ResourceNotFound"
    ms.fail(503)
    assert fetch(f"{ms.url}/api/v1/models/{REPO}").status == 503
    info = repo_info(ms.url, REPO)
    assert (info["Owner"], info["Name"], info["Visibility"]) == ("org", "tiny", 5)
    assert {f["Path"] for f in list_files(ms.url, REPO)} >= set(FILES)
