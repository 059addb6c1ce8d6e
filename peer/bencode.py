"""Bencoding (BEP 3): the canonical form, keys sorted as raw bytes, so equal values encode
to equal bytes. Decoding is strict and bounded, for input from the network."""

from __future__ import annotations

import re

_INT = re.compile(rb"-?(?:0|[1-9][0-9]*)")
_LENGTH = re.compile(rb"0|[1-9][0-9]{0,11}")


class BencodeError(ValueError):
    pass


def bencode(value) -> bytes:
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)


def _encode(value, out: list[bytes]) -> None:
    if isinstance(value, bool):
        raise TypeError("bencode has no booleans")
    if isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        out.append(b"%d:" % len(value))
        out.append(bytes(value))
    elif isinstance(value, str):
        _encode(value.encode("utf-8"), out)
    elif isinstance(value, (list, tuple)):
        out.append(b"l")
        for item in value:
            _encode(item, out)
        out.append(b"e")
    elif isinstance(value, dict):
        out.append(b"d")
        items = []
        for k, v in value.items():
            if isinstance(k, str):
                k = k.encode("utf-8")
            elif not isinstance(k, bytes):
                raise TypeError(f"bencode keys are strings, not {type(k).__name__}")
            items.append((k, v))
        items.sort(key=lambda kv: kv[0])
        if any(a[0] == b[0] for a, b in zip(items, items[1:], strict=False)):
            raise ValueError("two keys encode to the same bytes")
        for key, item in items:
            _encode(key, out)
            _encode(item, out)
        out.append(b"e")
    else:
        raise TypeError(f"cannot bencode {type(value).__name__}")


def bdecode(data: bytes, *, max_depth: int = 64):
    """Decode one complete value; trailing bytes, bad lengths or deep nesting are errors."""
    value, end = _decode(data, 0, max_depth)
    if end != len(data):
        raise BencodeError(f"trailing bytes after offset {end}")
    return value


def _decode(data: bytes, i: int, depth: int):
    if depth < 0:
        raise BencodeError("nested too deeply")
    if i >= len(data):
        raise BencodeError("truncated")
    c = data[i : i + 1]
    if c == b"i":
        end = data.find(b"e", i)
        if end == -1:
            raise BencodeError("unterminated integer")
        text = data[i + 1 : end]
        if not _INT.fullmatch(text) or text == b"-0":
            raise BencodeError(f"bad integer {text[:32]!r}")
        return int(text), end + 1
    if c == b"l":
        items, i = [], i + 1
        while data[i : i + 1] != b"e":
            item, i = _decode(data, i, depth - 1)
            items.append(item)
        return items, i + 1
    if c == b"d":
        result, i, last = {}, i + 1, None
        while data[i : i + 1] != b"e":
            key, i = _decode(data, i, depth - 1)
            if not isinstance(key, bytes):
                raise BencodeError("dictionary key is not a string")
            if last is not None and key <= last:
                raise BencodeError("dictionary keys out of order")
            result[key], i = _decode(data, i, depth - 1)
            last = key
        return result, i + 1
    if c.isdigit():
        colon = data.find(b":", i, i + 13)
        if colon == -1 or not _LENGTH.fullmatch(data[i:colon]):
            raise BencodeError("bad string length")
        n = int(data[i:colon])
        start = colon + 1
        if start + n > len(data):
            raise BencodeError("string runs past the end")
        return data[start : start + n], start + n
    raise BencodeError(f"unexpected byte {c!r} at offset {i}")
