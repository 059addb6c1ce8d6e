"""peer.bencode and peer.torrent: canonical bencoding and the deterministic per-blob torrent."""

from __future__ import annotations

import hashlib
import random

import pytest

from peer.bencode import BencodeError, bdecode, bencode
from peer.hashing import Hasher, MiB
from peer.torrent import info_dict, info_hash

#: DESIGN.md section 3: "A test pins the info-hash of a fixed blob". Computed once, pasted here.
PINNED_SHA256 = "93f6a9f6250488879a67c6ec867b5710f70a2ef027cba1163870c16d948a1c27"
PINNED_INFO_HASH = "4915177524942dbc681801dc83f4cbb9fced59cf"
PINNED_PRIVATE_INFO_HASH = "9cf61272b0cd0946b43707c5e811d42b307f7358"


# --- bencode -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, encoded",
    [
        (0, b"i0e"),
        (-42, b"i-42e"),
        (2**70, b"i1180591620717411303424e"),
        (b"", b"0:"),
        (b"spam", b"4:spam"),
        ("é", b"2:\xc3\xa9"),
        ([], b"le"),
        ([1, b"a", [b"b"]], b"li1e1:al1:bee"),
        ({}, b"de"),
        ({"cow": b"moo", "spam": b"eggs"}, b"d3:cow3:moo4:spam4:eggse"),
    ],
)
def test_bencode_encodes_bep3_examples(value, encoded):
    assert bencode(value) == encoded


@pytest.mark.parametrize(
    "value",
    [
        0,
        -1,
        10**30,
        b"",
        b"\x00\xff" * 100,
        [],
        [[[]]],
        {b"a": [1, 2, {b"b": b"c"}], b"z": {}},
        {b"info": {b"length": 5, b"name": b"x", b"pieces": bytes(20)}},
    ],
)
def test_bdecode_of_bencode_roundtrips(value):
    assert bdecode(bencode(value)) == value


def test_bencode_sorts_keys_as_raw_bytes_whatever_the_insertion_order():
    a = bencode({"b": 1, "a": 2, "Z": 3, "é": 4, "aa": 5})
    b = bencode({"é": 4, "aa": 5, "Z": 3, "a": 2, "b": 1})
    assert a == b, "equal dicts must encode to equal bytes"
    assert a == b"d1:Zi3e1:ai2e2:aai5e1:bi1e2:\xc3\xa9i4ee", "keys sorted by their raw bytes"


@pytest.mark.parametrize("value", [True, False, 1.5, None, object(), [1, None], {"a": True}])
def test_bencode_refuses_what_bencoding_has_no_form_for(value):
    with pytest.raises(TypeError):
        bencode(value)


@pytest.mark.parametrize("value", [{1: 2}, {3: b"x"}])
def test_bencode_refuses_a_dict_key_that_is_not_a_string(value):
    with pytest.raises(TypeError):
        bencode(value)


def test_bencode_refuses_keys_that_collide_once_encoded():
    with pytest.raises((TypeError, ValueError)):
        bencode({"a": 1, b"a": 2})


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"i1ex",  # trailing bytes
        b"4:spamx",
        b"lee",
        b"d1:bi1e1:ai2ee",  # keys out of order
        b"d1:ai1e1:ai2ee",  # duplicate keys
        b"di1ei2ee",  # non-string key
        b"i03e",  # leading zero
        b"i-03e",
        b"i-0e",  # negative zero
        b"i-e",
        b"ie",
        b"i12",  # unterminated
        b"i1.5e",
        b"5:abc",  # truncated string
        b"999999999999:x",
        b"9999999999999:x",  # length field too long
        b"l",  # truncated list
        b"li1e",
        b"d",
        b"d1:a",
        b"x",
        b"-1:a",
    ],
)
def test_bdecode_refuses_malformed_or_non_canonical_input(data):
    with pytest.raises(BencodeError):
        bdecode(data)


def test_bdecode_refuses_deep_nesting():
    with pytest.raises(BencodeError, match="nested too deeply"):
        bdecode(b"l" * 1000 + b"e" * 1000)
    with pytest.raises(BencodeError, match="nested too deeply"):
        bdecode(b"d1:a" * 100 + b"i1e" + b"e" * 100)


def test_bdecode_accepts_nesting_within_the_limit():
    expected: list = []
    for _ in range(9):
        expected = [expected]
    assert bdecode(b"l" * 10 + b"e" * 10) == expected, "ten nested lists are well within 64"
    with pytest.raises(BencodeError):
        bdecode(b"l" * 10 + b"e" * 10, max_depth=3)


@pytest.mark.parametrize("data", [b"i+3e", b"i 3e", b"i1_0e", b"03:abc", b"1 :a"])
def test_bdecode_refuses_integers_and_lengths_that_int_would_tolerate(data):
    with pytest.raises(BencodeError):
        bdecode(data)


def test_bdecode_raises_bencode_error_for_a_garbled_string_length():
    with pytest.raises(BencodeError):
        bdecode(b"4x:abcd")


# --- the deterministic torrent -----------------------------------------------------------------


@pytest.fixture(scope="module")
def fixed_blob():
    data = random.Random(1234).randbytes(9 * MiB + 12345)
    h = Hasher(len(data), lfs=True)
    h.update(data)
    return data, h.finish()


def test_fixed_blob_digests_are_the_expected_ones(fixed_blob):
    data, d = fixed_blob
    assert d.sha256 == PINNED_SHA256, "random.Random(1234).randbytes must give the pinned blob"
    assert d.piece_length == 4 * MiB and len(d.pieces) == 60


def test_info_dict_holds_only_name_length_piece_length_and_pieces(fixed_blob):
    _, d = fixed_blob
    info = info_dict(d.sha256, d.size, d.piece_length, d.pieces)
    assert info == {
        "name": d.sha256,
        "length": d.size,
        "piece length": 4 * MiB,
        "pieces": d.pieces,
    }, "the info dict must depend on the content alone and hold no other key"


def test_info_hash_equals_an_independent_bencoding(fixed_blob):
    data, d = fixed_blob
    pieces = b"".join(hashlib.sha1(data[i : i + 4 * MiB]).digest() for i in range(0, len(data), 4 * MiB))
    by_hand = (
        b"d6:lengthi%de4:name64:%s12:piece lengthi4194304e6:pieces%d:%se"
        % (len(data), hashlib.sha256(data).hexdigest().encode(), len(pieces), pieces)
    )
    info = info_dict(d.sha256, d.size, d.piece_length, d.pieces)
    assert bencode(info) == by_hand, "the bencoded info dict should be the hand-written one"
    assert info_hash(info) == hashlib.sha1(by_hand).hexdigest()


def test_info_hash_of_the_fixed_blob_is_pinned(fixed_blob):
    _, d = fixed_blob
    got = info_hash(info_dict(d.sha256, d.size, d.piece_length, d.pieces))
    assert got == PINNED_INFO_HASH, "the info-hash changed: every mirror would join a different swarm"


def test_private_adds_private_1_and_changes_the_info_hash(fixed_blob):
    _, d = fixed_blob
    public = info_dict(d.sha256, d.size, d.piece_length, d.pieces)
    private = info_dict(d.sha256, d.size, d.piece_length, d.pieces, private=True)
    assert private == {**public, "private": 1}, "private should add exactly 'private': 1"
    assert info_hash(private) != info_hash(public)
    assert info_hash(private) == PINNED_PRIVATE_INFO_HASH
    assert bencode(private).endswith(b"7:privatei1ee"), "'private' sorts after 'pieces'"


def test_info_dict_refuses_a_blob_under_4mib():
    size = 4 * MiB - 1
    with pytest.raises(ValueError, match="over HTTP"):
        info_dict("a" * 64, size, 4 * MiB, bytes(20))


def test_info_dict_accepts_a_blob_of_exactly_4mib():
    info = info_dict("a" * 64, 4 * MiB, 4 * MiB, bytes(20))
    assert info["length"] == 4 * MiB


@pytest.mark.parametrize("piece_length", [2 * MiB, 16 * MiB, 4 * MiB + 1])
def test_info_dict_refuses_a_wrong_piece_length(fixed_blob, piece_length):
    _, d = fixed_blob
    with pytest.raises(ValueError, match="piece length"):
        info_dict(d.sha256, d.size, piece_length, d.pieces)


@pytest.mark.parametrize("delta", [-20, -1, 1, 20])
def test_info_dict_refuses_a_wrong_pieces_length(fixed_blob, delta):
    _, d = fixed_blob
    pieces = d.pieces[:delta] if delta < 0 else d.pieces + bytes(delta)
    with pytest.raises(ValueError, match="piece hashes"):
        info_dict(d.sha256, d.size, d.piece_length, pieces)


@pytest.mark.parametrize("name", ["", "A" * 64, "a" * 63, "not a hash"])
def test_info_dict_refuses_a_name_that_is_not_a_sha256(fixed_blob, name):
    _, d = fixed_blob
    with pytest.raises(ValueError, match="not a sha256"):
        info_dict(name, d.size, d.piece_length, d.pieces)


def test_libtorrent_computes_the_same_info_hash(fixed_blob):
    lt = pytest.importorskip("libtorrent")
    _, d = fixed_blob
    info = info_dict(d.sha256, d.size, d.piece_length, d.pieces)
    ti = lt.torrent_info(bencode({"info": info}))
    if hasattr(ti, "info_hashes"):
        got = str(ti.info_hashes().v1)
    else:
        got = str(ti.info_hash())
    assert got == info_hash(info) == PINNED_INFO_HASH, "libtorrent should see the same v1 info-hash"
