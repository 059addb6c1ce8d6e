"""Safetensors headers: validated against the file's size, and summarised for repo info.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON, then the data.
Every tensor's `data_offsets` must lie inside the data, agree with its dtype and shape, and the
tensors must cover the data exactly once (the rules the safetensors library enforces on load).
"""

from __future__ import annotations

import json
import math
import struct
from typing import BinaryIO

from .errors import InvalidSafetensors

MAX_HEADER = 100_000_000

# Bits per element; sub-byte types pack, so a tensor's byte size is ceil(numel * bits / 8).
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "C64": 64,
    "F64": 64, "I64": 64, "U64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}


def read_header(f: BinaryIO, size: int, name: str = "file") -> dict:
    """Parse and validate the header; returns {tensor name: {dtype, shape, data_offsets}}."""
    header, data_len = _read_json(f, size, name)
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    meta = header.get("__metadata__")
    if meta is not None and not (
        isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())
    ):
        raise InvalidSafetensors(name, "__metadata__ must map strings to strings")
    spans = sorted((*_span(key, t, data_len, name), key) for key, t in tensors.items())
    _check_coverage(spans, data_len, name)
    return tensors


def _read_json(f: BinaryIO, size: int, name: str) -> tuple[dict, int]:
    """The header's JSON object, and how many data bytes follow it."""
    if size < 8:
        raise InvalidSafetensors(name, f"{size} bytes is too short for a header length")
    f.seek(0)
    (n,) = struct.unpack("<Q", f.read(8))
    if n > MAX_HEADER:
        raise InvalidSafetensors(name, f"header length {n} exceeds {MAX_HEADER}")
    if 8 + n > size:
        raise InvalidSafetensors(name, f"header length {n} runs past the end ({size} bytes)")
    raw = f.read(n)
    if len(raw) != n:
        raise InvalidSafetensors(name, "truncated header")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidSafetensors(name, f"header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise InvalidSafetensors(name, "header is not a JSON object")
    return header, size - 8 - n


def _span(key: str, t, data_len: int, name: str) -> tuple[int, int]:
    """The (begin, end) of one tensor's bytes in the data, checked against its dtype and shape."""
    if not isinstance(t, dict):
        raise InvalidSafetensors(name, f"tensor {key!r} is not an object")
    dtype, shape, offsets = t.get("dtype"), t.get("shape"), t.get("data_offsets")
    if dtype not in DTYPE_BITS:
        raise InvalidSafetensors(name, f"tensor {key!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidSafetensors(name, f"tensor {key!r} has a bad shape {shape!r}")
    if not (
        isinstance(offsets, list) and len(offsets) == 2
        and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    ):
        raise InvalidSafetensors(name, f"tensor {key!r} has bad data_offsets {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_len:
        raise InvalidSafetensors(
            name, f"tensor {key!r} spans {begin}..{end}, outside the {data_len} data bytes"
        )
    expected = math.ceil(math.prod(shape) * DTYPE_BITS[dtype] / 8)
    if end - begin != expected:
        raise InvalidSafetensors(
            name, f"tensor {key!r} is {end - begin} bytes, its dtype and shape need {expected}"
        )
    return begin, end


def _check_coverage(spans: list[tuple[int, int, str]], data_len: int, name: str) -> None:
    """The tensors, sorted by offset, cover the data exactly once."""
    position = 0
    for begin, end, key in spans:
        if begin != position:
            raise InvalidSafetensors(
                name, f"tensor {key!r} starts at {begin}, expected {position} (gap or overlap)"
            )
        position = end
    if position != data_len:
        raise InvalidSafetensors(
            name, f"tensors cover {position} of {data_len} data bytes (truncated or padded file)"
        )


def parameter_counts(tensors: dict) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in tensors.values():
        counts[t["dtype"]] = counts.get(t["dtype"], 0) + math.prod(t["shape"])
    return counts


def summarise(counts: list[dict[str, int]]) -> dict | None:
    """The repo info `safetensors` field over a snapshot's files: `parameters` by dtype, `total`."""
    total: dict[str, int] = {}
    for c in counts:
        for dtype, n in c.items():
            total[dtype] = total.get(dtype, 0) + n
    if not counts:
        return None
    return {"parameters": dict(sorted(total.items())), "total": sum(total.values())}
