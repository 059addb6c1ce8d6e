"""The pure parser from a raw request path to the HF API call it names."""

import pytest

from mirror.routes import parse
from peer.errors import BadRequest, NotFound


@pytest.mark.parametrize(
    "raw, kind, repo_type, repo_id, revision, path",
    [
        ("/api/models/gpt2", "repo_info", "model", "gpt2", None, ""),
        ("/api/models/org/name", "repo_info", "model", "org/name", None, ""),
        ("/api/models/org/name/revision/main", "repo_info", "model", "org/name", "main", ""),
        ("/api/models/gpt2/revision/refs%2Fpr%2F1", "repo_info", "model", "gpt2", "refs/pr/1", ""),
        ("/api/models/org/name/tree/main?recursive=true", "tree", "model", "org/name", "main", ""),
        ("/api/models/org/name/tree/main/sub%2Fdir", "tree", "model", "org/name", "main",
         "sub/dir"),
        ("/api/models/gpt2/tree/v1.0/sub", "tree", "model", "gpt2", "v1.0", "sub"),
        ("/api/models/org/tree/tree/main", "tree", "model", "org/tree", "main", ""),
        ("/api/datasets/org/data/refs", "refs", "dataset", "org/data", None, ""),
        ("/api/models/org/name/paths-info/main", "paths_info", "model", "org/name", "main", ""),
        ("/api/models/org/name/commits/main", "commits", "model", "org/name", "main", ""),
        ("/org/name/resolve/main/config.json", "resolve", "model", "org/name", "main",
         "config.json"),
        ("/gpt2/resolve/main/sub/a%20b.json", "resolve", "model", "gpt2", "main", "sub/a b.json"),
        ("/datasets/org/data/resolve/refs%2Fconvert%2Fparquet/x.parquet", "resolve", "dataset",
         "org/data", "refs/convert/parquet", "x.parquet"),
        ("/api/models", "list", "model", "", None, ""),
    ],
)
def test_hf_paths_parse_to_their_call(raw, kind, repo_type, repo_id, revision, path):
    call = parse(raw)
    assert (call.kind, call.repo_type, call.repo_id, call.revision, call.path) == (
        kind, repo_type, repo_id, revision, path)
    assert call.hub == "huggingface" and call.prefix == ""


def test_hub_prefixes_are_stripped_and_remembered():
    call = parse("/hubs/modelscope/api/models/Qwen/Qwen2-7B/revision/master")
    assert (call.hub, call.prefix, call.repo_id, call.revision) == (
        "modelscope", "/hubs/modelscope", "Qwen/Qwen2-7B", "master")
    with pytest.raises(NotFound):
        parse("/hubs/nowhere/api/models/a/b")


@pytest.mark.parametrize(
    "raw",
    [
        "/org/name/resolve/main/../../etc/passwd",
        "/org/name/resolve/main/%2e%2e/%2e%2e/etc/passwd",
        "/org/name/resolve/main/a%2F..%2F..%2Fsecret",
        "/org/name/resolve/main/%2Fetc%2Fpasswd",
        "/org/name/resolve/main/a%00b",
        "/org/name/resolve/..%2F..%2Fx/config.json",
        "/api/models/%2e%2e/x",
        "/api/models/org/na--me",
        "/api/models/" + "a" * 300,
        "/org/name/resolve/main/" + "x/" * 3000 + "y",
        "/org/name/resolve/main/%ff%fe",
        "/api/models/org/name/tree/main/..%2F..",
    ],
)
def test_hostile_paths_are_refused_precisely(raw):
    with pytest.raises(BadRequest):
        parse(raw)


@pytest.mark.parametrize("raw", ["/", "/favicon.ico", "/api/spaces/a/b", "/a/b/c/d",
                                 "/api/models/a/b/refs/extra"])
def test_other_paths_are_not_found(raw):
    with pytest.raises(NotFound):
        parse(raw)
