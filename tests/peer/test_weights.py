"""peer.weights: safetensors headers validated against the file, and summarised."""

from __future__ import annotations

import io
import json
import os
import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

from peer.errors import InvalidSafetensors
from peer.weights import parameter_counts, read_header, summarise


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(
        {
            "embed.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
            "positions": np.arange(5, dtype=np.int64),
            "norm.scale": np.ones((2, 2, 2), dtype=np.float16),
            "scalar": np.array(1.5, dtype=np.float32),
            "empty": np.zeros((0, 7), dtype=np.float32),
        },
        str(path),
        metadata={"format": "np"},
    )
    return path


@pytest.fixture
def second_file(tmp_path):
    path = tmp_path / "model-2.safetensors"
    save_file({"head": np.zeros((4, 4), dtype=np.float16), "ids": np.zeros(3, dtype=np.int64)}, str(path))
    return path


def _read_path(path):
    with open(path, "rb") as f:
        return read_header(f, os.path.getsize(path), name=str(path))


def _build(header, data: bytes = b"") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _refusal(blob: bytes) -> InvalidSafetensors:
    with pytest.raises(InvalidSafetensors) as e:
        read_header(io.BytesIO(blob), len(blob), name="bad.safetensors")
    assert e.value.path == "bad.safetensors", "the error should name the file"
    return e.value


def test_read_header_accepts_a_file_written_by_safetensors(model_file):
    tensors = _read_path(model_file)
    assert set(tensors) == {"embed.weight", "positions", "norm.scale", "scalar", "empty"}
    assert "__metadata__" not in tensors, "metadata is not a tensor"
    assert tensors["embed.weight"]["dtype"] == "F32" and tensors["embed.weight"]["shape"] == [3, 4]
    assert tensors["positions"]["dtype"] == "I64"
    assert tensors["norm.scale"]["dtype"] == "F16"


def test_parameter_counts_add_up_elements_by_dtype(model_file):
    counts = parameter_counts(_read_path(model_file))
    assert counts == {"F32": 12 + 1 + 0, "I64": 5, "F16": 8}, f"unexpected counts {counts}"


def test_summarise_totals_parameters_across_files_sorted_by_dtype(model_file, second_file):
    counts = [parameter_counts(_read_path(model_file)), parameter_counts(_read_path(second_file))]
    summary = summarise(counts)
    assert summary == {"parameters": {"F16": 8 + 16, "F32": 13, "I64": 5 + 3}, "total": 45}
    assert list(summary["parameters"]) == ["F16", "F32", "I64"], "dtypes should be sorted"


def test_summarise_of_no_files_is_none():
    assert summarise([]) is None


def test_read_header_accepts_a_sub_byte_dtype_packed_to_whole_bytes():
    blob = _build({"t": {"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}}, b"\x00\x00")
    assert read_header(io.BytesIO(blob), len(blob))["t"]["dtype"] == "F4"


@pytest.mark.parametrize("blob", [b"", b"\x01", b"\x01" * 7])
def test_refuses_a_file_under_8_bytes(blob):
    assert "too short" in _refusal(blob).reason


def test_refuses_a_header_length_past_the_end():
    blob = struct.pack("<Q", 1000) + b"{}"
    assert "runs past the end" in _refusal(blob).reason


def test_refuses_an_absurd_header_length():
    blob = struct.pack("<Q", 2**63) + b"{}"
    assert "exceeds" in _refusal(blob).reason


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe{}", b'{"a": 1'])
def test_refuses_a_header_that_is_not_json(raw):
    assert "not JSON" in _refusal(_build(raw)).reason


@pytest.mark.parametrize("raw", [b"[]", b"1", b'"x"'])
def test_refuses_a_header_that_is_not_a_json_object(raw):
    assert "not a JSON object" in _refusal(_build(raw)).reason


@pytest.mark.parametrize("offsets", [[0, 16], [4, 12], [-4, 4], [8, 4]])
def test_refuses_offsets_outside_the_data(offsets):
    header = {"t": {"dtype": "F32", "shape": [2], "data_offsets": offsets}}
    reason = _refusal(_build(header, bytes(8))).reason
    assert "outside the 8 data bytes" in reason, reason


def test_refuses_a_size_that_disagrees_with_dtype_and_shape():
    header = {"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}
    reason = _refusal(_build(header, bytes(8))).reason
    assert "its dtype and shape need 12" in reason, reason


def test_refuses_a_gap_between_tensors():
    header = {
        "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]},
    }
    reason = _refusal(_build(header, bytes(12))).reason
    assert "gap or overlap" in reason and "'b'" in reason, reason


def test_refuses_overlapping_tensors():
    header = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }
    assert "gap or overlap" in _refusal(_build(header, bytes(12))).reason


def test_refuses_trailing_bytes_no_tensor_covers():
    header = {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    assert "cover 4 of 8" in _refusal(_build(header, bytes(8))).reason


@pytest.mark.parametrize("drop", [1, 4, 100])
def test_refuses_a_truncated_real_file(model_file, drop):
    blob = model_file.read_bytes()[:-drop]
    reason = _refusal(blob).reason
    assert "outside" in reason or "cover" in reason, f"a truncated file should be refused: {reason}"


@pytest.mark.parametrize("dtype", ["F128", "float32", None, 7])
def test_refuses_an_unknown_dtype(dtype):
    header = {"t": {"dtype": dtype, "shape": [1], "data_offsets": [0, 4]}}
    assert "unknown dtype" in _refusal(_build(header, bytes(4))).reason


@pytest.mark.parametrize("shape", [[-1], [1.0], "3", [True], None])
def test_refuses_a_bad_shape(shape):
    header = {"t": {"dtype": "F32", "shape": shape, "data_offsets": [0, 4]}}
    assert "bad shape" in _refusal(_build(header, bytes(4))).reason


@pytest.mark.parametrize("offsets", [None, [0], [0, 4, 8], [0.0, 4], [False, True]])
def test_refuses_malformed_data_offsets(offsets):
    header = {"t": {"dtype": "F32", "shape": [1], "data_offsets": offsets}}
    assert "bad data_offsets" in _refusal(_build(header, bytes(4))).reason


@pytest.mark.parametrize("meta", [{"a": 1}, ["x"], "x"])
def test_refuses_metadata_that_is_not_strings_to_strings(meta):
    assert "__metadata__" in _refusal(_build({"__metadata__": meta})).reason
