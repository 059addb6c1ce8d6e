"""The pure parts of syncing: specs, the planner's refusals and selection, politeness."""

from __future__ import annotations

import email.utils

import pytest

from mirror.catalog import BlobRecord
from mirror.sync import HostileListing, parse_spec, plan, select, validate
from mirror.upstreams import RemoteFile
from mirror.upstreams.polite import RequestBudget, backoff, retry_after
from peer.errors import BadRequest

SHA = "a" * 64
OID = "b" * 40


def rf(path="a.json", size=10, lfs=False, sha256=None, oid=OID) -> RemoteFile:
    return RemoteFile(path, size, oid, sha256 if lfs else None, lfs)


@pytest.mark.parametrize("text, kind, repo_type, repo_id, revision, endpoint, hub", [
    ("hf:org/name", "hf", "model", "org/name", "main", None, "huggingface"),
    ("hf:gpt2@v1.0", "hf", "model", "gpt2", "v1.0", None, "huggingface"),
    ("hf:org/name@refs/pr/3", "hf", "model", "org/name", "refs/pr/3", None, "huggingface"),
    ("hf-datasets:org/data", "hf", "dataset", "org/data", "main", None, "huggingface"),
    ("hf:org/*", "hf", "model", "org/*", "main", None, "huggingface"),
    ("mirror:http://a:8470#org/name@dev", "mirror", "model", "org/name", "dev", "http://a:8470",
     "huggingface"),
    ("mirror:http://a:8470/hubs/modelscope/#Qwen/Q", "mirror", "model", "Qwen/Q", "main",
     "http://a:8470/hubs/modelscope", "modelscope"),
])
def test_specs_parse(text, kind, repo_type, repo_id, revision, endpoint, hub):
    spec = parse_spec(text)
    assert (spec.kind, spec.repo_type, spec.repo_id, spec.revision, spec.endpoint, spec.hub) == (
        kind, repo_type, repo_id, revision, endpoint, hub)


@pytest.mark.parametrize("text", ["org/name", "s3:org/name", "hf:../x", "hf:a/b/c",
                                  "hf:org/name@..", "mirror:org/name", "mirror:ftp://x#a/b",
                                  "hf:org/*@v1", "hf:"])
def test_bad_specs_are_refused(text):
    with pytest.raises(BadRequest):
        parse_spec(text)


@pytest.mark.parametrize("entry, reason", [
    (rf("../x"), "path"), (rf("/etc/x"), "path"), (rf("a/../../x"), "path"),
    (rf("a\x00b"), "path"), (rf("x" * 10_000), "path"), (rf("a//b"), "path"),
    (rf(size=-1), "size"), (rf(size="12"), "size"), (rf(size=True), "size"),
    (rf(size=2**60), "size"), (rf(lfs=True, sha256="nope"), "sha256"),
    (rf(oid="xyz"), "git sha1"), (RemoteFile(None, 1, OID, None, False), "path"),
])
def test_a_hostile_listing_is_refused_whole(entry, reason):
    with pytest.raises(HostileListing, match=reason):
        validate([rf("ok.json"), entry])


def test_a_path_listed_twice_is_refused():
    with pytest.raises(HostileListing, match="twice"):
        validate([rf("a.json"), rf("b.json"), rf("a.json")])


def test_include_and_exclude_globs_match_the_whole_path():
    files = [rf("model.safetensors"), rf("sub/model-1.safetensors"), rf("README.md"),
             rf("onnx/model.onnx")]
    assert [f.path for f in select(files, ["*.safetensors"], [])] == [
        "model.safetensors", "sub/model-1.safetensors"]
    assert [f.path for f in select(files, [], ["onnx/*", "*.md"])] == [
        "model.safetensors", "sub/model-1.safetensors"]


def test_a_name_pattern_takes_the_top_level_file_only_as_hf_download_does():
    """peer/patterns.py: the rule of huggingface_hub's allow_patterns, for sync and pull alike
    (the sync once matched the base name too, and took sub/config.json for config.json)."""
    files = [rf("config.json"), rf("sub/config.json"), rf("onnx/model.onnx")]
    assert [f.path for f in select(files, ["config.json"], [])] == ["config.json"]
    assert [f.path for f in select(files, ["*config.json"], [])] == [
        "config.json", "sub/config.json"]
    assert [f.path for f in select(files, ["onnx/"], [])] == ["onnx/model.onnx"]


def test_the_plan_fetches_only_what_the_store_lacks():
    files = [rf("have.json"), rf("new.json", oid="c" * 40),
             rf("w.bin", size=5, lfs=True, sha256=SHA)]
    records = {OID: BlobRecord("1" * 64, 10, OID, "b3", 0, b""),
               SHA: BlobRecord(SHA, 4, None, "b3", 0, b"")}  # w.bin's record has another size
    the_plan = plan(files, lambda f: records.get(f.sha256 if f.lfs else f.git_sha1))
    assert set(the_plan.present) == {"have.json"}
    assert [f.path for f in the_plan.fetch] == ["new.json", "w.bin"]
    assert the_plan.fetch_bytes == 15


def test_retry_after_reads_seconds_dates_and_ratelimit_headers():
    assert retry_after({"Retry-After": "7"}) == 7
    now = 1_800_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert retry_after({"Retry-After": date}, now=now) == pytest.approx(30, abs=1)
    assert retry_after({"RateLimit": '"api";r=0;t=55'}) == 55
    assert retry_after({"RateLimit-Reset": "12"}) == 12
    assert retry_after({"Retry-After": "999999"}) == 300, "capped"
    assert retry_after({}) is None
    assert [backoff(i) for i in range(4)] == [0.5, 1, 2, 4] and backoff(20) == 30


def test_the_request_budget_waits_for_the_window():
    budget = RequestBudget(2, window=300)
    budget.sent.extend([100.0, 150.0])
    assert budget.delay(200.0) == pytest.approx(200.0), "the first of two expires at 400"
    assert budget.delay(401.0) == 0.0, "one fell out of the window"
    assert RequestBudget(0).delay(0.0) == 0.0, "0 means unlimited"


def test_local_specs_parse_and_refuse_relative_folders():
    spec = parse_spec("local:/data/models/tiny#org/tiny@dev")
    assert (spec.kind, spec.endpoint, spec.repo_id, spec.revision) == (
        "local", "/data/models/tiny", "org/tiny", "dev")
    assert str(spec) == "local:/data/models/tiny#org/tiny@dev"
    for bad in ("local:relative#org/x", "local:/abs", "local:/abs#org/*"):
        with pytest.raises(BadRequest):
            parse_spec(bad)
