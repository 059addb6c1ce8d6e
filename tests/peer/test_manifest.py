"""Signed manifests and ref statements: what a reader believes, and what it refuses."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from peer.keys import public_key_text
from peer.manifest import (
    BadSignature,
    Manifest,
    ManifestError,
    ManifestFile,
    RefLedger,
    RefStatement,
    StaleRef,
    UnknownKey,
    manifest_payload,
    read_manifest,
    read_ref,
    sign,
    sign_manifest,
    sign_ref,
)

KEY = Ed25519PrivateKey.generate()
TRUSTED = frozenset({public_key_text(KEY)})
COMMIT = "c" * 40


def mf(path="model.safetensors", size=10, lfs=True, info_hash="d" * 40, **kw) -> ManifestFile:
    return ManifestFile(path, size, kw.get("sha256", hashlib.sha256(path.encode()).hexdigest()),
                        kw.get("git_sha1", "e" * 40), lfs, info_hash)


def manifest(*files: ManifestFile) -> Manifest:
    return Manifest("huggingface", "model", "org/name", COMMIT,
                    files or (mf(), mf("config.json", 5, False, None)))


def test_a_signed_manifest_reads_back_exactly():
    m = manifest()
    read, key = read_manifest(sign_manifest(m, KEY), TRUSTED)
    assert key == public_key_text(KEY)
    assert read.commit == COMMIT and sorted(read.files, key=lambda f: f.path) == sorted(
        m.files, key=lambda f: f.path)


def test_the_encoding_is_canonical_whatever_the_file_order():
    a, b = mf("a.bin"), mf("b.bin")
    assert manifest_payload(manifest(a, b)) == manifest_payload(manifest(b, a))


def test_a_tampered_payload_or_signature_is_refused():
    envelope = msgpack.unpackb(sign_manifest(manifest(), KEY), raw=False)
    changed = msgpack.unpackb(envelope["payload"], raw=False)
    changed["commit"] = "f" * 40
    forged = dict(envelope, payload=msgpack.packb(changed, use_bin_type=True))
    with pytest.raises(BadSignature):
        read_manifest(msgpack.packb(forged, use_bin_type=True), TRUSTED)
    bad_sig = dict(envelope, sig=bytes(64))
    with pytest.raises(BadSignature):
        read_manifest(msgpack.packb(bad_sig, use_bin_type=True), TRUSTED)


def test_an_unknown_key_is_refused():
    other = Ed25519PrivateKey.generate()
    with pytest.raises(UnknownKey):
        read_manifest(sign_manifest(manifest(), other), TRUSTED)


def test_a_ref_signature_never_passes_for_a_manifest():
    payload = manifest_payload(manifest())
    as_ref = sign("ref", payload, KEY)
    with pytest.raises(BadSignature):
        read_manifest(as_ref, TRUSTED)


@pytest.mark.parametrize("bad, reason", [
    (mf("../x"), "hostile"), (mf("/etc/passwd"), "hostile"), (mf("a/../../x"), "hostile"),
    (mf("a\x00b"), "hostile"), (mf("x" * 10_000), "hostile"),
    (mf("o.bin", size=-1), "size"), (mf("o.bin", size=True), "size"),
    (mf("o.bin", sha256="nothex"), "sha256"), (mf("o.bin", git_sha1="0" * 39), "git sha1"),
    (mf("o.bin", info_hash="zz"), "info-hash"),
])
def test_hostile_or_malformed_entries_are_refused_by_the_reader(bad, reason):
    payload = msgpack.unpackb(manifest_payload(manifest()), raw=False)
    payload["files"].append([bad.path, bad.size, bad.sha256, bad.git_sha1, bad.lfs,
                             bad.info_hash])
    data = sign("manifest", msgpack.packb(payload, use_bin_type=True), KEY)
    with pytest.raises(ManifestError, match=reason):
        read_manifest(data, TRUSTED)


def test_repeated_paths_and_bad_heads_are_refused():
    with pytest.raises(ManifestError, match="twice"):
        sign_manifest(manifest(mf("a.bin"), mf("a.bin")), KEY)
    for field, value in (("hub", "nowhere"), ("type", "space"), ("repo", "a/b/c"),
                         ("commit", "short")):
        with pytest.raises(ManifestError):
            sign_manifest(replace(manifest(), **{field: value}), KEY)


@pytest.mark.parametrize("data", [b"", b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"a": 1}),
                                  msgpack.packb({"payload": "x", "key": 1, "sig": b""})])
def test_garbage_envelopes_are_refused(data):
    with pytest.raises(ManifestError):
        read_manifest(data, TRUSTED)


def test_ref_statements_older_than_seen_are_refused():
    ledger = RefLedger()
    new = RefStatement("huggingface", "model", "org/name", "main", COMMIT, 7)
    old = replace(new, commit="a" * 40, seq=5)
    statement, key = read_ref(sign_ref(new, KEY), TRUSTED)
    ledger.accept(statement, key)
    ledger.accept(statement, key)  # the same statement again is fine
    with pytest.raises(StaleRef, match="older"):
        ledger.accept(read_ref(sign_ref(old, KEY), TRUSTED)[0], key)
    with pytest.raises(StaleRef, match="two commits"):
        ledger.accept(replace(new, commit="b" * 40), key)
    ledger.accept(replace(new, commit="b" * 40, seq=8), key)
    with pytest.raises(ManifestError):
        sign_ref(replace(new, ref="../main"), KEY)
