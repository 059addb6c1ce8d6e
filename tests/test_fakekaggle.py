"""The fake Kaggle speaks PROTOCOLS.md section 3.1: checked with plain http.client for the wire
(RPC bodies, pages, redirects, storage headers, the knobs), and with the stock kagglehub client
in a subprocess (KAGGLE_API_ENVIRONMENT=TEST, so on localhost:7777) for what a real client makes
of it."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import os
import socket
import tarfile
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import pytest
from fakekaggle import (
    BASIC,
    FRAMEWORKS,
    SERVICE,
    TOKEN,
    FakeKaggle,
    _crc_register,
    crc32c,
    framework_enum,
)
from kaggleclient import files_under, kaggle_env, kaggle_on_test_port, model_download

HANDLE = "acme/tiny/pyTorch/1b"
INSTANCE = {"ownerSlug": "acme", "modelSlug": "tiny", "framework": "MODEL_FRAMEWORK_PY_TORCH",
            "instanceSlug": "1b"}
WEIGHTS = "sub/deeper/weights.bin"
V1 = {"config.json": b'{"hidden_size": 8}\n', "tokenizer.json": b'{"version": "1.0"}\n',
      WEIGHTS: os.urandom(200 * 1024), "empty.txt": b""}
V2 = {**V1, "config.json": b'{"hidden_size": 16}\n', "README.md": b"# tiny\n"}
#: more than kagglehub's 25, so it takes the archive
MANY = {f"shard-{i:02d}/part.bin": os.urandom(1000 + i) for i in range(30)}


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    complete: bool

    def json(self):
        return json.loads(self.body)


def fetch(url: str, method: str = "GET", body: bytes | None = None,
          headers: dict[str, str] | None = None) -> Answer:
    """One request, redirects not followed; a body cut short comes back with complete=False."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request(method, url[len(f"{parts.scheme}://{parts.netloc}"):], body=body,
                     headers=headers or {})
        response = conn.getresponse()
        try:
            return Answer(response.status, response.headers, response.read(), True)
        except http.client.IncompleteRead as e:
            return Answer(response.status, response.headers, e.partial, False)
    finally:
        conn.close()


def rpc(fake: FakeKaggle, method: str, body: dict, **headers: str) -> Answer:
    return fetch(f"{fake.endpoint}/v1/{SERVICE}/{method}", "POST", json.dumps(body).encode(),
                 {"Content-Type": "application/json", **headers})


def all_pages(fake: FakeKaggle, method: str, body: dict, key) -> tuple[list, int]:
    """Every item of a paged RPC, following nextPageToken, and the number of pages."""
    items, pages, body = [], 0, dict(body)
    while True:
        answer = rpc(fake, method, body)
        assert answer.status == 200, answer.body
        items += key(answer.json())
        pages += 1
        token = answer.json().get("nextPageToken")
        if not token:
            return items, pages
        body["pageToken"] = token


def goog_hash(headers) -> dict[str, str]:
    return dict(part.split("=", 1) for part in headers["x-goog-hash"].split(","))


def b64_md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def signed_url(fake: FakeKaggle, version: int, path: str | None = None) -> str:
    body = {**INSTANCE, "versionNumber": version, **({"path": path} if path else {})}
    answer = rpc(fake, "DownloadModelInstanceVersion", body)
    assert answer.status == 302, answer.body
    return answer.headers["Location"]


@pytest.fixture
def start():
    """start(**options) runs a FakeKaggle on 127.0.0.1:0 holding HANDLE v1 and v2; all are
    stopped after the test."""
    fakes: list[FakeKaggle] = []

    def _start(**options) -> FakeKaggle:
        fake = FakeKaggle(**options).start()
        fakes.append(fake)
        fake.add_version("acme", "tiny", "pyTorch", "1b", V1, title="Tiny")
        fake.add_version("acme", "tiny", "pyTorch", "1b", V2)
        return fake

    yield _start
    for fake in fakes:
        fake.stop()


# -- the core -------------------------------------------------------------------------------


def test_frameworks_are_kagglesdks_enum_and_named_as_kagglehub_names_them():
    from kagglehub.enum import to_enum
    from kagglesdk.models.types.model_enums import ModelFramework

    assert FRAMEWORKS == {f.name: f.value for f in ModelFramework}
    texts = ["transformers", "pyTorch", "PyTorch", "pytorch", "tensorFlow1", "tensorFlow2",
             "tfLite", "tfJs", "jax", "flax", "keras", "other", "scikitLearn", "gemmaCpp",
             "maxText", "tensorRtLlm", "ggml", "gguf", "onnx", "vllm", "MODEL_FRAMEWORK_JAX"]
    for text in texts:
        assert framework_enum(text) == to_enum(ModelFramework, text).name, text
    with pytest.raises(ValueError):
        framework_enum("caffe")


def test_crc32c_is_castagnoli_at_every_size():
    assert crc32c(b"123456789") == 0xE3069283  # the check value of CRC-32C
    assert crc32c(b"") == 0
    for size in (1, 1023, 64 * 16, 64 * 16 + 7, 100_003):
        data = os.urandom(size)
        assert crc32c(data, lanes=16) == _crc_register(0xFFFFFFFF, data) ^ 0xFFFFFFFF, size


def _localhost_is_also_ipv6(monkeypatch):
    """Make `localhost` resolve to ::1 as well, as it does on many hosts (not this one)."""
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host != "localhost":
            return real(host, port, *args, **kwargs)
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0)),
                *real("127.0.0.1", port, *args, **kwargs)]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_fixed_port_is_served_on_ipv6_localhost_too_when_localhost_names_it(monkeypatch):
    _localhost_is_also_ipv6(monkeypatch)
    port = free_port()
    with FakeKaggle(port=port) as fake:
        fake.add_version("acme", "tiny", "pyTorch", "1b", V1)
        for url in (fake.endpoint, f"http://[::1]:{port}/api"):
            answer = fetch(f"{url}/v1/{SERVICE}/GetModelInstance", "POST",
                           json.dumps(INSTANCE).encode())
            assert answer.status == 200 and answer.json()["versionNumber"] == 1, url
    with socket.socket(socket.AF_INET6) as stranger:
        stranger.bind(("::1", port))
        stranger.listen()
        with pytest.raises(OSError):
            FakeKaggle(port=port).start()


# -- the RPC --------------------------------------------------------------------------------


def test_get_model_instance_names_the_latest_version_and_its_size(start):
    fake = start()
    answer = rpc(fake, "GetModelInstance", INSTANCE)
    assert answer.status == 200 and "application/json" in answer.headers["Content-Type"]
    instance = answer.json()
    assert instance["versionNumber"] == 2
    assert instance["totalUncompressedBytes"] == sum(map(len, V2.values()))
    assert instance["framework"] == "MODEL_FRAMEWORK_PY_TORCH" and instance["slug"] == "1b"
    # the framework also goes as its number, as protobuf's JSON mapping allows
    assert rpc(fake, "GetModelInstance", {**INSTANCE, "framework": 5}).json() == instance
    assert fake.requests[0] == ("POST", f"/api/v1/{SERVICE}/GetModelInstance", INSTANCE)


def test_versions_and_files_come_in_pages_until_the_token_is_empty(start):
    fake = start(files_page_size=2)
    versions, pages = all_pages(fake, "ListModelInstanceVersions", {**INSTANCE, "pageSize": 1},
                                lambda a: a["versionList"]["versions"])
    assert [v["versionNumber"] for v in versions] == [2, 1] and pages == 2
    body = {**INSTANCE, "versionNumber": 1, "pageSize": 25}
    files, pages = all_pages(fake, "ListModelInstanceVersionFiles", body, lambda a: a["files"])
    assert pages == 2, "files_page_size caps what pageSize asks"
    assert [f["name"] for f in files] == sorted(V1)
    by_name = {f["name"]: f for f in files}
    assert by_name[WEIGHTS]["size"] == len(V1[WEIGHTS])
    assert "size" not in by_name["empty.txt"], "proto3 JSON leaves a zero out"
    assert all(f["creationDate"].endswith("Z") for f in files)
    latest = rpc(fake, "ListModelInstanceVersionFiles", {**INSTANCE, "pageSize": 100}).json()
    assert "README.md" in [f["name"] for f in latest["files"]], "no versionNumber: the latest"


def test_a_download_is_a_redirect_to_signed_storage_that_sends_goog_hash(start):
    fake = start()
    location = signed_url(fake, 1, WEIGHTS)
    parts = urlsplit(location)
    assert location.startswith(f"{fake.gcs_url}/kaggle-models-data/")
    assert parts.path.endswith(f"/files/{WEIGHTS}") and "X-Goog-Signature" in parse_qs(
        parts.query)
    got = fetch(location)
    data = V1[WEIGHTS]
    assert got.status == 200 and got.body == data
    assert got.headers["Accept-Ranges"] == "bytes"
    assert got.headers["Content-Length"] == str(len(data))
    crc = base64.b64encode(crc32c(data).to_bytes(4, "big")).decode()
    assert goog_hash(got.headers) == {"crc32c": crc, "md5": b64_md5(data)}
    assert fake.gcs_requests[-1][0] == "GET" and fake.bytes_served == len(data)


def test_storage_serves_ranges_and_refuses_unsigned_expired_and_head(start):
    fake = start()
    data = V1[WEIGHTS]
    url = signed_url(fake, 1, WEIGHTS)
    tail = fetch(url, headers={"Range": "bytes=10-"})
    assert tail.status == 206 and tail.body == data[10:]
    assert tail.headers["Content-Range"] == f"bytes 10-{len(data) - 1}/{len(data)}"
    assert goog_hash(tail.headers)["md5"] == b64_md5(data), "the hash is the whole object's"
    middle = fetch(url, headers={"Range": "bytes=2-4"})
    assert middle.status == 206 and middle.body == data[2:5]
    assert fetch(url, headers={"Range": f"bytes={len(data)}-"}).status == 416
    assert [r for _, _, r in fake.gcs_requests] == ["bytes=10-", "bytes=2-4",
                                                    f"bytes={len(data)}-"]
    assert b"AccessDenied" in fetch(url.split("?")[0]).body
    forged = fetch(url[:-4] + "0000")
    assert forged.status == 403 and b"SignatureDoesNotMatch" in forged.body
    assert fetch(url, "HEAD").status == 403, "a V4 signature covers only its verb"
    fake.expire_signed_urls()
    expired = fetch(url)
    assert expired.status == 400 and b"ExpiredToken" in expired.body
    assert fetch(signed_url(fake, 1, WEIGHTS)).body == data, "a new RPC signs anew"


def test_a_version_without_path_is_one_tar_gz(start):
    fake = start()
    location = signed_url(fake, 2)
    assert urlsplit(location).path.endswith("/bundle/archive.tar.gz")
    got = fetch(location)
    assert goog_hash(got.headers)["md5"] == b64_md5(got.body)
    with tarfile.open(fileobj=io.BytesIO(got.body), mode="r:gz") as tar:
        assert {m.name: tar.extractfile(m).read() for m in tar.getmembers()} == V2


def test_errors_are_json_with_the_status_as_code(start):
    fake = start()

    def error(answer: Answer) -> tuple[int, int]:
        assert "application/json" in answer.headers["Content-Type"], answer.body
        assert isinstance(answer.json()["message"], str)
        return answer.status, answer.json()["code"]

    assert error(rpc(fake, "GetModelInstance", {**INSTANCE, "instanceSlug": "2b"})) == (404, 404)
    assert error(rpc(fake, "GetModelInstance", {**INSTANCE, "framework": "CAFFE"})) == (400, 400)
    for body in ({**INSTANCE, "versionNumber": 9}, {**INSTANCE, "versionNumber": 1,
                                                   "path": "nope.txt"}):
        assert error(rpc(fake, "DownloadModelInstanceVersion", body)) == (404, 404)
    assert error(rpc(fake, "ListModelInstanceVersionFiles",
                     {**INSTANCE, "pageToken": "garbage"})) == (400, 400)
    assert error(rpc(fake, "DeleteModel", INSTANCE)) == (404, 404)
    assert error(fetch(f"{fake.endpoint}/v1/{SERVICE}/GetModelInstance")) == (405, 405)
    assert error(fetch(f"{fake.endpoint}/v1/{SERVICE}/GetModelInstance", "POST",
                       b"{not json")) == (400, 400)
    assert error(fetch(f"{fake.url}/v1/{SERVICE}/GetModelInstance", "POST", b"{}")) == (404, 404)


def test_credentials_are_required_when_set(start):
    basic = "Basic " + base64.b64encode(":".join(BASIC).encode()).decode()
    only_token = start(token=TOKEN)
    assert rpc(only_token, "GetModelInstance", INSTANCE).status == 401
    assert rpc(only_token, "GetModelInstance", INSTANCE, Authorization="Bearer wrong").json() \
        == {"code": 401, "message": "Unauthenticated"}
    assert rpc(only_token, "GetModelInstance", INSTANCE, Authorization=basic).status == 401
    assert rpc(only_token, "GetModelInstance", INSTANCE,
               Authorization=f"Bearer {TOKEN}").status == 200
    both = start(token=TOKEN, basic=BASIC)
    for header in (basic, f"Bearer {TOKEN}"):
        assert rpc(both, "GetModelInstance", INSTANCE, Authorization=header).status == 200
    assert rpc(start(), "GetModelInstance", INSTANCE).status == 200, "none set: anyone may"


def test_every_nth_rpc_is_rate_limited_with_retry_after(start):
    fake = start(rate_limit_every=3, retry_after=7.2)
    statuses = [rpc(fake, "GetModelInstance", INSTANCE) for _ in range(6)]
    assert [a.status for a in statuses] == [200, 200, 429, 200, 200, 429]
    assert statuses[2].headers["Retry-After"] == "8"
    assert statuses[2].json()["code"] == 429
    assert fetch(signed_url(fake, 1, "config.json")).status == 200  # the 7th RPC
    assert [rpc(fake, "GetModelInstance", INSTANCE).status for _ in range(2)] == [200, 429], \
        "storage requests are not counted"


def test_corrupt_wrong_md5_and_no_hash_lie_as_asked(start):
    fake = start()
    data = V1[WEIGHTS]
    fake.corrupt(HANDLE, 1, WEIGHTS)
    got = fetch(signed_url(fake, 1, WEIGHTS))
    assert len(got.body) == len(data)
    assert sum(a != b for a, b in zip(got.body, data, strict=True)) == 1
    assert goog_hash(got.headers)["md5"] == b64_md5(data), "the hash stays the true one"
    fake.repair(HANDLE, 1, WEIGHTS)
    fake.wrong_md5(HANDLE, 1, WEIGHTS)
    got = fetch(signed_url(fake, 1, WEIGHTS))
    assert got.body == data and goog_hash(got.headers)["md5"] != b64_md5(data)
    fake.corrupt(HANDLE, 2, None)
    archive = fetch(signed_url(fake, 2))
    assert goog_hash(archive.headers)["md5"] != b64_md5(archive.body)
    fake.no_hash = True
    assert "x-goog-hash" not in fetch(signed_url(fake, 1, "config.json")).headers


def test_lie_size_and_raw_files_change_only_the_listing(start):
    fake = start()
    fake.lie_size(HANDLE, 1, "config.json", 123)
    body = {**INSTANCE, "versionNumber": 1, "pageSize": 25}
    listed = {f["name"]: f.get("size") for f in
              rpc(fake, "ListModelInstanceVersionFiles", body).json()["files"]}
    assert listed["config.json"] == 123
    assert fetch(signed_url(fake, 1, "config.json")).body == V1["config.json"]
    hostile = [{"name": "../evil", "size": 1}, {"name": "/etc/passwd", "size": 2},
               {"name": "a\0b"}, {"name": "config.json", "size": 3},
               {"name": "config.json", "size": 4}]
    fake.set_raw_files(HANDLE, 1, hostile)
    entries, pages = all_pages(fake, "ListModelInstanceVersionFiles", {**body, "pageSize": 2},
                               lambda a: a["files"])
    assert entries == hostile and pages == 3
    assert fetch(signed_url(fake, 1, "config.json")).body == V1["config.json"]
    assert rpc(fake, "DownloadModelInstanceVersion", {**body, "path": "../evil"}).status == 404


def test_a_large_file_is_cut_once_and_resumes_with_range(start):
    fake = start(cut_large_files=True, large_file=100_000)
    data = V1[WEIGHTS]
    url = signed_url(fake, 1, WEIGHTS)
    first = fetch(url)
    assert not first.complete and first.body == data[: len(data) // 2]
    rest = fetch(url, headers={"Range": f"bytes={len(first.body)}-"})
    assert rest.status == 206 and first.body + rest.body == data
    again = fetch(url)
    assert again.complete and again.body == data, "only the first GET is cut"
    assert fetch(signed_url(fake, 1, "config.json")).complete, "small files are whole"


def test_redirect_scheme_puts_another_scheme_or_url_in_location(start):
    fake = start(redirect_scheme="ftp://")
    location = signed_url(fake, 1, "config.json")
    assert location.startswith("ftp://127.0.0.1:") and "X-Goog-Signature" in location
    fake.redirect_scheme = "file:///etc/passwd"
    assert signed_url(fake, 1, "config.json") == "file:///etc/passwd"


def test_list_models_searches_and_pages(start):
    fake = start()
    fake.add_version("acme", "big", "transformers", "7b", {"a.txt": b"a"}, title="Big tiny")
    fake.add_version("other", "gemma", "jax", "2b", {"b.txt": b"b"}, title="Gemma")
    models, pages = all_pages(fake, "ListModels", {"search": "tiny", "pageSize": 1},
                              lambda a: a["models"])
    assert sorted(m["ref"] for m in models) == ["acme/big", "acme/tiny"] and pages == 2
    answer = rpc(fake, "ListModels", {"owner": "other"}).json()
    assert answer["totalResults"] == 1 and "nextPageToken" not in answer
    (gemma,) = answer["models"]
    assert gemma["title"] == "Gemma" and gemma["instances"][0]["framework"] == \
        "MODEL_FRAMEWORK_JAX" and gemma["instances"][0]["versionNumber"] == 1
    assert rpc(fake, "ListModels", {"sortBy": "LIST_MODELS_ORDER_BY_UPDATE_TIME"}).status == 200
    assert rpc(fake, "ListModels", {"sortBy": "NEWEST"}).status == 400
    got = rpc(fake, "GetModel", {"ownerSlug": "acme", "modelSlug": "tiny"}).json()
    assert got["ref"] == "acme/tiny" and got["title"] == "Tiny"


def test_int64_fields_can_come_as_strings(start):
    fake = start(int64_as_string=True)
    assert rpc(fake, "GetModelInstance", INSTANCE).json()["totalUncompressedBytes"] == \
        str(sum(map(len, V2.values())))
    files = rpc(fake, "ListModelInstanceVersionFiles", {**INSTANCE, "versionNumber": 1,
                                                        "pageSize": 25}).json()["files"]
    assert {f["name"]: f.get("size") for f in files}[WEIGHTS] == str(len(V1[WEIGHTS]))


# -- the stock kagglehub client -------------------------------------------------------------


@pytest.fixture
def kaggle():
    """start(**options): a FakeKaggle on localhost:7777 holding HANDLE v1 and v2 and a
    30-file instance; skipped when the port is taken."""
    with kaggle_on_test_port(token=TOKEN) as fake:
        fake.add_version("acme", "tiny", "pyTorch", "1b", V1)
        fake.add_version("acme", "tiny", "pyTorch", "1b", V2)
        fake.add_version("acme", "many", "transformers", "base", MANY)
        yield fake


def test_kagglehub_downloads_latest_and_pinned_versions_file_by_file(kaggle, tmp_path):
    env = kaggle_env(tmp_path, token=TOKEN)
    latest = model_download(HANDLE, env)
    assert latest.path is not None, latest
    assert latest.path.parts[-2:] == ("1b", "2") and files_under(latest.path) == V2
    assert kaggle.rpc_methods() == ["GetModelInstance", "ListModelInstanceVersionFiles",
                                    *["DownloadModelInstanceVersion"] * len(V2)]
    bodies = [body for _, _, body in kaggle.requests]
    assert bodies[0] == INSTANCE
    assert bodies[1] == {**INSTANCE, "versionNumber": 2, "pageSize": 25}
    assert sorted(b["path"] for b in bodies[2:]) == sorted(V2)
    assert all(b["versionNumber"] == 2 for b in bodies[2:])
    assert set(kaggle.auth_headers) == {f"Bearer {TOKEN}"}
    assert set(kaggle.gcs_auth_headers) == {None}, "requests drops credentials on the redirect"
    kaggle.reset_counts()
    pinned = model_download(f"{HANDLE}/1", env)
    assert pinned.path is not None, pinned
    assert files_under(pinned.path) == V1
    assert kaggle.rpc_methods()[0] == "ListModelInstanceVersionFiles", "a pinned version " \
        "needs no GetModelInstance"


def test_kagglehub_downloads_more_than_25_files_as_the_archive(kaggle, tmp_path):
    run = model_download("acme/many/transformers/base", kaggle_env(tmp_path, token=TOKEN))
    assert run.path is not None, run
    assert files_under(run.path) == MANY
    assert kaggle.rpc_methods() == ["GetModelInstance", "ListModelInstanceVersionFiles",
                                    "DownloadModelInstanceVersion"]
    assert "path" not in kaggle.requests[-1][2]
    (get,) = kaggle.gcs_requests
    assert urlsplit(get[1]).path.endswith("/bundle/archive.tar.gz")
    assert not list(tmp_path.rglob("*.archive")), "kagglehub deletes the archive"


def test_kagglehub_downloads_one_path(kaggle, tmp_path):
    run = model_download(HANDLE, kaggle_env(tmp_path, token=TOKEN), path=WEIGHTS)
    assert run.path is not None, run
    assert run.path.read_bytes() == V2[WEIGHTS] and run.path.as_posix().endswith(
        f"/1b/2/{WEIGHTS}")
    assert kaggle.rpc_methods() == ["GetModelInstance", "DownloadModelInstanceVersion"]
    assert kaggle.requests[-1][2] == {**INSTANCE, "versionNumber": 2, "path": WEIGHTS}


def test_kagglehub_refuses_a_corrupt_file_or_a_wrong_md5(kaggle, tmp_path):
    kaggle.corrupt(HANDLE, 1, WEIGHTS)
    corrupt = model_download(f"{HANDLE}/1", kaggle_env(tmp_path / "a", token=TOKEN),
                             path=WEIGHTS)
    assert corrupt.error == "DataCorruptionError", corrupt
    assert b64_md5(V1[WEIGHTS]) in corrupt.message
    assert not list((tmp_path / "a").rglob("weights.bin")), "kagglehub deletes what failed"
    kaggle.wrong_md5(HANDLE, 1, "config.json")
    wrong = model_download(f"{HANDLE}/1", kaggle_env(tmp_path / "b", token=TOKEN),
                           path="config.json")
    assert wrong.error == "DataCorruptionError", wrong


def test_kagglehub_keeps_corrupt_bytes_when_storage_sends_no_hash(kaggle, tmp_path):
    kaggle.corrupt(HANDLE, 1, WEIGHTS)
    kaggle.no_hash = True
    run = model_download(f"{HANDLE}/1", kaggle_env(tmp_path, token=TOKEN), path=WEIGHTS)
    assert run.path is not None, run
    assert run.path.read_bytes() != V1[WEIGHTS], "the only check is x-goog-hash's md5"


def test_kagglehub_gets_401_with_a_wrong_token_or_none(kaggle, tmp_path):
    for i, token in enumerate(("not-the-token", None)):
        run = model_download(f"{HANDLE}/1", kaggle_env(tmp_path / str(i), token=token))
        assert run.error == "KaggleApiHTTPError" and "401 Client Error" in run.message, run
    assert kaggle.auth_headers == ["Bearer not-the-token", None]
    assert kaggle.gcs_requests == []


def test_kagglehub_sends_kaggle_username_and_key_as_basic(tmp_path):
    with kaggle_on_test_port(basic=BASIC) as fake:
        fake.add_version("acme", "tiny", "pyTorch", "1b", V1)
        run = model_download(f"{HANDLE}/1", kaggle_env(tmp_path, basic=BASIC), path="config.json")
        assert run.path is not None and run.path.read_bytes() == V1["config.json"], run
        assert fake.auth_headers == ["Basic " + base64.b64encode(b"%s:%s" % tuple(
            s.encode() for s in BASIC)).decode()]


def test_kagglehub_does_not_retry_a_429(kaggle, tmp_path):
    kaggle.rate_limit_every = 1
    run = model_download(HANDLE, kaggle_env(tmp_path, token=TOKEN))
    assert run.error == "KaggleApiHTTPError" and run.message == "Too many requests", run
    assert kaggle.rpc_methods() == ["GetModelInstance"]


def test_kagglehub_fails_on_a_cut_transfer_and_fetches_whole_the_next_time(kaggle, tmp_path):
    """In TEST, kagglesdk prints each response's body before kagglehub writes a byte, so a cut
    leaves nothing on disk and its Range resume never runs."""
    kaggle.cut_large_files, kaggle.large_file = True, 100_000
    env = kaggle_env(tmp_path, token=TOKEN)
    cut = model_download(f"{HANDLE}/1", env, path=WEIGHTS)
    assert cut.error == "ChunkedEncodingError", cut
    whole = model_download(f"{HANDLE}/1", env, path=WEIGHTS)
    assert whole.path is not None and whole.path.read_bytes() == V1[WEIGHTS], whole
    assert [r for _, _, r in kaggle.gcs_requests] == [None, None]


@pytest.mark.parametrize("scheme", ["ftp://", "file:///etc/passwd"])
def test_kagglehub_will_not_follow_a_redirect_off_http(kaggle, tmp_path, scheme):
    kaggle.redirect_scheme = scheme
    run = model_download(f"{HANDLE}/1", kaggle_env(tmp_path, token=TOKEN), path="config.json")
    assert run.error == "InvalidSchema", run
    assert kaggle.gcs_requests == []
