"""The pickle scanner's verdicts on a corpus built from scratch (tests/scancorpus.py): every
malicious file flagged with what it imports, no benign one flagged, formats that hold no code
not scanned."""

from __future__ import annotations

import pytest
import scancorpus

from mirror.scan import SAFE, SUSPICIOUS, UNSCANNED, needs_scan, scan


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return scancorpus.build(tmp_path_factory.mktemp("corpus"))


def test_every_malicious_sample_is_suspicious_with_its_globals(corpus):
    for name, sample in corpus.items():
        if not sample.malicious:
            continue
        verdict = scan(sample.path, sample.path.name)
        assert verdict.status == SUSPICIOUS, (name, sample.what, verdict)
        assert verdict.found, name


def test_no_benign_sample_is_flagged(corpus):
    for name, sample in corpus.items():
        if sample.malicious:
            continue
        verdict = scan(sample.path, sample.path.name)
        assert verdict.status == SAFE, (name, sample.what, verdict)


def test_the_file_name_decides_the_format_not_the_blobs_own(corpus, tmp_path):
    """A stored blob is named by its hash: the repo path says what it is."""
    sample = corpus["torch-zip-os-system"]
    blob = tmp_path / ("ab" * 32)
    blob.write_bytes(sample.path.read_bytes())
    assert scan(blob, "pytorch_model.bin").status == SUSPICIOUS


def test_which_files_are_scanned():
    assert all(needs_scan(p) for p in ("pytorch_model.bin", "a/model.PT", "x.ckpt", "w.pth",
                                       "o.pkl", "arr.npy", "m.h5", "bundle.zip"))
    assert not any(needs_scan(p) for p in ("model.safetensors", "config.json", "README.md",
                                           "tokenizer.model", "vocab.txt"))


def test_garbage_and_keras_are_unscanned_with_a_reason(tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x00not a pickle at all" * 100)
    verdict = scan(junk, "weights.bin")
    assert verdict.status == UNSCANNED and "parse" in verdict.reason, verdict
    assert scan(junk, "model.h5").status == UNSCANNED
    assert "Keras" in scan(junk, "model.h5").reason
