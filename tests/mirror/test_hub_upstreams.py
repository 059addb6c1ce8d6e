"""The pure parts of the ModelScope and Kaggle upstreams: specs and handles, RevisionMap, file
lists, error envelopes, x-goog-hash, credentials (issue 17). The clients against the fakes are
in test_hub_sync.py."""

import base64
import hashlib
import json

import pytest

from mirror.sync import HostileListing, parse_spec, partial_key, validate
from mirror.upstreams import RemoteFile, kaggle, modelscope
from peer import hubs
from peer.errors import (
    BadRequest,
    RateLimited,
    RemoteBadRequest,
    RemoteEntryNotFound,
    RemoteRefused,
    RemoteRepoNotFound,
)
from peer.hfformat import FileEntry, derived_commit


def test_ms_specs_land_in_the_modelscope_hub_on_master():
    spec = parse_spec("ms:Qwen/Qwen2-0.5B")
    assert (spec.kind, spec.hub, spec.repo_type, spec.revision) == (
        "ms", hubs.MODELSCOPE, "model", "master")
    assert str(spec) == "ms:Qwen/Qwen2-0.5B@master"
    data = parse_spec("ms-datasets:org/data@v1.0")
    assert (data.repo_type, data.revision, str(data)) == ("dataset", "v1.0",
                                                           "ms-datasets:org/data@v1.0")
    assert parse_spec(str(data)) == data
    assert parse_spec("ms:org/*").is_author


def test_kaggle_specs_name_a_repo_per_instance_and_a_tag_per_version():
    spec = parse_spec("kaggle:google/gemma/transformers/2b")
    assert (spec.kind, spec.hub, spec.repo_id, spec.revision) == (
        "kaggle", hubs.KAGGLE, "google/gemma.transformers.2b", "main")
    assert str(spec) == "kaggle:google/gemma/transformers/2b"
    pinned = parse_spec("kaggle:metaresearch/llama-3.1/pyTorch/1.1-8b/3")
    assert (pinned.repo_id, pinned.revision) == ("metaresearch/llama-3.1.pyTorch.1.1-8b", "v3")
    assert parse_spec(str(pinned)) == pinned
    assert kaggle.instance(pinned.repo_id) == {
        "ownerSlug": "metaresearch", "modelSlug": "llama-3.1",
        "framework": "MODEL_FRAMEWORK_PY_TORCH", "instanceSlug": "1.1-8b"}


@pytest.mark.parametrize("handle", [
    "google/gemma/transformers", "google/gemma/notaframework/2b", "google/gemma/jax/2b/0",
    "google/gemma/jax/2b/x", "../gemma/jax/2b", "google/gemma/jax/2b/1/2", "google/*",
    "google/ge..mma/jax/2b",
])
def test_bad_kaggle_handles_are_refused_by_name(handle):
    with pytest.raises(BadRequest):
        parse_spec(f"kaggle:{handle}")


@pytest.mark.parametrize(("text", "enum"), [
    ("pyTorch", "MODEL_FRAMEWORK_PY_TORCH"), ("PyTorch", "MODEL_FRAMEWORK_PY_TORCH"),
    ("tensorFlow2", "MODEL_FRAMEWORK_TENSOR_FLOW_2"), ("tfLite", "MODEL_FRAMEWORK_TF_LITE"),
    ("transformers", "MODEL_FRAMEWORK_TRANSFORMERS"), ("gemmaCpp", "MODEL_FRAMEWORK_GEMMA_CPP"),
    ("tensorRtLlm", "MODEL_FRAMEWORK_TENSOR_RT_LLM"), ("keras", "MODEL_FRAMEWORK_KERAS"),
])
def test_framework_names_are_kagglesdks_enum(text, enum):
    assert kaggle.framework_enum(text) == enum


def test_x_goog_hash_gives_the_md5_and_refuses_garbage():
    md5 = hashlib.md5(b"hello\n").digest()
    header = f"crc32c=AAAAAA==,md5={base64.b64encode(md5).decode()}"
    assert kaggle.goog_md5(header) == md5.hex()
    assert kaggle.goog_md5("crc32c=AAAAAA==") is None
    assert kaggle.goog_md5(None) is None
    with pytest.raises(Exception, match="not base64"):
        kaggle.goog_md5("md5=@@@")
    with pytest.raises(Exception, match="md5 of 3 bytes"):
        kaggle.goog_md5(f"md5={base64.b64encode(b'abc').decode()}")


def test_kaggle_credentials_come_from_its_files(tmp_path):
    environ = {"KAGGLE_CONFIG_DIR": str(tmp_path)}
    assert kaggle.stored_credentials(environ) is None
    (tmp_path / "kaggle.json").write_text(json.dumps({"username": "u", "key": "k"}))
    assert kaggle.stored_credentials(environ) == "u:k"
    (tmp_path / "access_token").write_text("KGAT_abc\n")
    assert kaggle.stored_credentials(environ) == "KGAT_abc"
    assert kaggle.Kaggle("http://x", token="u:k").credentials() == {
        "Authorization": "Basic " + base64.b64encode(b"u:k").decode()}
    assert kaggle.Kaggle("http://x", token="t").credentials() == {"Authorization": "Bearer t"}


def test_revision_map_gives_branches_tags_commits_and_seconds():
    found = modelscope.revisions({"RevisionMap": {
        "Branches": [{"Revision": "master", "CreatedAt": 1700000000, "CommitId": "a" * 40}],
        "Tags": [{"Revision": "v1.0", "CreatedAt": 1700000000123},
                 {"Revision": "v2", "CreatedAt": "soon", "CommitId": "nothex"}, "junk"]}})
    assert [(r.name, r.kind, r.commit, r.created_at) for r in found] == [
        ("master", "branch", "a" * 40, 1700000000.0),
        ("v1.0", "tag", None, 1700000000.123),
        ("v2", "tag", None, None),
    ]
    with pytest.raises(Exception, match="RevisionMap"):
        modelscope.revisions({"Nothing": 1})


def test_file_lists_take_sha256_for_every_file_and_lfs_by_the_rule():
    files = modelscope.remote_files([
        {"Type": "tree", "Path": "sub", "Name": "sub"},
        {"Type": "blob", "Path": "config.json", "Size": 10, "Sha256": "A" * 64, "IsLFS": True},
        {"Type": "blob", "Path": "model.safetensors", "Size": 100, "Sha256": "b" * 64},
        {"Type": "blob", "Path": "big.txt", "Size": 20 << 20, "Sha256": "c" * 64},
    ])
    assert [(f.path, f.sha256[:1], f.lfs, f.verified_by) for f in files] == [
        ("config.json", "a", False, "sha256"), ("model.safetensors", "b", True, "sha256"),
        ("big.txt", "c", True, "sha256")]
    assert validate(files) == files
    commit = modelscope.content_commit(files)
    assert commit == derived_commit(FileEntry(f.path, f.size, f.sha256, "", f.lfs)
                                    for f in files)


@pytest.mark.parametrize("entry", [
    {"Type": "blob", "Path": "../x", "Size": 1, "Sha256": "a" * 64},
    {"Type": "blob", "Path": "/etc/passwd", "Size": 1, "Sha256": "a" * 64},
    {"Type": "blob", "Path": "a\0b", "Size": 1, "Sha256": "a" * 64},
    {"Type": "blob", "Path": "ok", "Size": -1, "Sha256": "a" * 64},
    {"Type": "blob", "Path": "ok", "Size": "12", "Sha256": "a" * 64},
    {"Type": "blob", "Path": "ok", "Size": 1, "Sha256": "zz"},
    {"Type": "blob", "Path": "ok", "Size": 1},
])
def test_hostile_modelscope_listings_are_refused_whole(entry):
    good = {"Type": "blob", "Path": "fine.json", "Size": 1, "Sha256": "a" * 64}
    with pytest.raises(HostileListing):
        validate(modelscope.remote_files([good, entry]))


def test_duplicates_are_hostile_and_kaggle_files_need_no_hash():
    entry = {"Type": "blob", "Path": "a.json", "Size": 1, "Sha256": "a" * 64}
    with pytest.raises(HostileListing, match="twice"):
        validate(modelscope.remote_files([entry, entry]))
    unhashed = RemoteFile("model.bin", 5, None, None, True)
    with pytest.raises(HostileListing):
        validate([unhashed])
    assert validate([unhashed], hashed=False) == [unhashed]
    assert unhashed.verified_by == "none"


def test_partial_files_are_named_by_their_hash_or_by_where_they_come_from():
    lfs = RemoteFile("m.bin", 5, "1" * 40, "a" * 64, True)
    small = RemoteFile("c.json", 5, "1" * 40, None, False)
    listed = RemoteFile("c.json", 5, None, "b" * 64, False)
    bare = RemoteFile("c.json", 5, None, None, False)
    assert partial_key("x", "o/r", "1", lfs) == "a" * 64
    assert partial_key("x", "o/r", "1", small) == "1" * 40
    assert partial_key("x", "o/r", "1", listed) == "b" * 64
    one, two = partial_key("x", "o/r", "1", bare), partial_key("x", "o/r", "2", bare)
    assert len(one) == 64 and one != two and one == partial_key("x", "o/r", "1", bare)


@pytest.mark.parametrize(("status", "url", "cls"), [
    (400, "http://ms/api/v1/models/o/r/repo/files", RemoteBadRequest),
    (401, "http://ms/api/v1/models/o/r/revisions", RemoteRefused),
    (403, "http://ms/api/v1/models/o/r/revisions", RemoteRefused),
    (404, "http://ms/api/v1/models/o/r/revisions", RemoteRepoNotFound),
    (404, "http://ms/api/v1/models/o/r/repo?Revision=m&FilePath=a", RemoteEntryNotFound),
    (429, "http://ms/x", RateLimited),
    (500, "http://ms/x", modelscope.UpstreamError),
])
def test_envelope_errors_map_by_status_and_keep_the_request_id(status, url, cls):
    body = json.dumps({"Code": status, "Message": "nope\nreally", "RequestId": "r-1"}).encode()
    error = modelscope.envelope_error(status, body, url, "modelscope")
    assert isinstance(error, cls)
    assert "nope really" in str(error) and "RequestId r-1" in str(error)
    assert error.http_status == status
    assert "HTTP 502" in str(modelscope.envelope_error(502, b"<html>", url, "modelscope"))
