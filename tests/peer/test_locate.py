"""The index's signed answers (peer/locate.py): a `locate` answer and the list of accepted
mirror keys read back exactly, and everything a reader must not believe refused."""

from __future__ import annotations

import dataclasses
import math

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from peer.errors import BadRequest
from peer.keys import public_key_text
from peer.locate import (
    CLOCK_SKEW,
    MAX_AGE,
    MAX_KEYS,
    MAX_LOCATED,
    AcceptedKey,
    Located,
    LocatedMirror,
    check_locate_target,
    mirror_entry,
    read_key_list,
    read_located,
    sign_key_list,
    sign_located,
)
from peer.manifest import FORMAT, BadSignature, ManifestError, UnknownKey, sign

INDEX = Ed25519PrivateKey.generate()
INDEX_KEY = public_key_text(INDEX)
MIRROR_KEYS = [public_key_text(Ed25519PrivateKey.generate()) for _ in range(3)]
NOW = 1_700_000_000.0
NEW, OLD = "a" * 40, "b" * 40
ASKED = {"hub": "huggingface", "type": "model", "repo": "org/name", "revision": "main"}


def located_mirror(i: int = 0, **changes) -> LocatedMirror:
    m = LocatedMirror(key=MIRROR_KEYS[i], name=f"m{i}", base_url=f"http://127.0.0.{i + 1}:8470",
                      bittorrent=f"127.0.0.{i + 1}:6881", site="lab", region="eu",
                      commit=NEW, manifest_sha256="c" * 64, behind=False, near="site",
                      demoted=False, stale=False, last_verified=NOW - 10)
    return dataclasses.replace(m, **changes)


def located(*mirrors: LocatedMirror, **changes) -> Located:
    answer = Located(key=INDEX_KEY, hub="huggingface", type="model", repo="org/name",
                     revision="main", commit=NEW, address="127.0.0.9", timestamp=NOW,
                     mirrors=mirrors or (located_mirror(0),
                                         located_mirror(1, commit=OLD, behind=True,
                                                        near="other", name=None, site=None,
                                                        region=None, bittorrent=None,
                                                        last_verified=None)))
    return dataclasses.replace(answer, **changes)


def read(data: bytes, **asked) -> Located:
    return read_located(data, INDEX_KEY, now=NOW, **{**ASKED, **asked})


def signed_payload(kind: str, payload: dict, key: Ed25519PrivateKey = INDEX) -> bytes:
    """An envelope over any payload at all, signed: what a hostile index could send."""
    return sign(kind, msgpack.packb(payload, use_bin_type=True), key)


def locate_payload(answer: Located | None = None, **changes) -> dict:
    answer = answer or located()
    body = {"format": FORMAT, "kind": "locate", "key": INDEX_KEY, "hub": answer.hub,
            "type": answer.type, "repo": answer.repo, "revision": answer.revision,
            "commit": answer.commit, "address": answer.address, "timestamp": answer.timestamp,
            "mirrors": [mirror_entry(m) for m in answer.mirrors]}
    return {**body, **changes}


def keys_payload(**changes) -> dict:
    body = {"format": FORMAT, "kind": "keys", "key": INDEX_KEY, "timestamp": NOW,
            "mirrors": [{"key": k, "name": None, "base_url": None} for k in MIRROR_KEYS]}
    return {**body, **changes}


# -- locate ---------------------------------------------------------------------------------


def test_a_locate_answer_reads_back_exactly_in_the_indexs_order():
    answer = located()
    assert read(sign_located(answer, INDEX)) == answer


def test_a_locate_answer_that_nobody_holds_reads_back_empty():
    answer = located(commit=None, mirrors=())
    assert read(sign_located(answer, INDEX)).mirrors == ()


def test_a_locate_answer_for_a_commit_reads_back():
    answer = located(located_mirror(0), revision=NEW)
    assert read(sign_located(answer, INDEX), revision=NEW) == answer


def test_a_trailing_slash_of_a_mirrors_base_url_is_dropped():
    answer = located(located_mirror(0, base_url="https://mirror.example/hf/"))
    assert read(sign_located(answer, INDEX)).mirrors[0].base_url == "https://mirror.example/hf"


def test_a_locate_answer_signed_by_another_key_is_refused():
    other = Ed25519PrivateKey.generate()
    with pytest.raises(UnknownKey):
        read(sign_located(dataclasses.replace(located(), key=public_key_text(other)), other))


def test_a_locate_answer_whose_signature_does_not_verify_is_refused():
    envelope = msgpack.unpackb(sign_located(located(), INDEX), raw=False)
    envelope["sig"] = bytes(64)
    with pytest.raises(BadSignature):
        read(msgpack.packb(envelope, use_bin_type=True))


def test_an_answer_naming_another_key_than_its_signers_is_refused():
    with pytest.raises(ManifestError, match="another key"):
        read(signed_payload("locate", locate_payload(key=MIRROR_KEYS[0])))


@pytest.mark.parametrize("kind", ["manifest", "ref", "keys", "catalog", "register"])
def test_an_envelope_of_another_kind_never_passes_for_a_locate_answer(kind):
    """The same payload signed under another domain does not verify as a locate answer."""
    data = signed_payload(kind, locate_payload())
    with pytest.raises(BadSignature):
        read(data)


def test_a_key_list_never_passes_for_a_locate_answer_nor_the_other_way():
    keys = sign_key_list([AcceptedKey(MIRROR_KEYS[0], "m0", None)], INDEX, NOW)
    with pytest.raises(BadSignature):
        read(keys)
    with pytest.raises(BadSignature):
        read_key_list(sign_located(located(), INDEX), INDEX_KEY, now=NOW)


@pytest.mark.parametrize("asked", [
    {"repo": "org/other"}, {"revision": "dev"}, {"hub": "modelscope"}, {"type": "dataset"},
])
def test_an_answer_for_another_repo_or_revision_is_refused(asked):
    with pytest.raises(ManifestError, match="not the revision asked"):
        read(sign_located(located(), INDEX), **asked)


@pytest.mark.parametrize("age", [MAX_AGE + 1, 10 * MAX_AGE])
def test_a_stale_locate_answer_is_refused(age):
    with pytest.raises(ManifestError, match="stale"):
        read(sign_located(located(timestamp=NOW - age), INDEX))


def test_a_locate_answer_from_the_future_is_refused_beyond_the_clock_skew():
    read(sign_located(located(timestamp=NOW + CLOCK_SKEW - 1), INDEX))
    with pytest.raises(ManifestError, match="future"):
        read(sign_located(located(timestamp=NOW + CLOCK_SKEW + 1), INDEX))


@pytest.mark.parametrize("stamp", [math.nan, math.inf, -math.inf, "1700000000", True, None])
def test_a_timestamp_that_is_not_a_time_is_refused(stamp):
    with pytest.raises(ManifestError):
        read(signed_payload("locate", locate_payload(timestamp=stamp)))


def entry(**changes) -> dict:
    return {**mirror_entry(located_mirror(0)), **changes}


@pytest.mark.parametrize("changes", [
    {"base_url": "ftp://mirror.example"},
    {"base_url": "javascript:alert(1)"},
    {"base_url": "http://"},
    {"base_url": "http://mirror.example/?x=1"},
    {"base_url": "http://mirror.example/#top"},
    {"base_url": "http://mirror.example\r\nX-Evil: 1"},
    {"base_url": "http://mirror example"},
    {"base_url": "http://mirror.example:99999"},
    {"base_url": "http://" + "a" * 600},
    {"base_url": 7},
    {"commit": "g" * 40},
    {"commit": None},
    {"manifest_sha256": "c" * 63},
    {"key": "ed25519:" + "0" * 63},
    {"key": ["ed25519:" + "0" * 64]},
    {"near": "moon"},
    {"near": ["site"]},
    {"behind": 1},
    {"demoted": "false"},
    {"stale": None},
    {"last_verified": True},
    {"last_verified": math.nan},
    {"last_verified": "yesterday"},
    {"name": "x" * 513},
    {"site": 3},
    {"extra": 1},
])
def test_a_located_mirror_with_a_hostile_field_is_refused(changes):
    payload = locate_payload(mirrors=[entry(**changes)])
    with pytest.raises(ManifestError):
        read(signed_payload("locate", payload))


def test_a_located_mirror_missing_a_field_is_refused():
    broken = entry()
    del broken["behind"]
    with pytest.raises(ManifestError):
        read(signed_payload("locate", locate_payload(mirrors=[broken])))


@pytest.mark.parametrize("changes", [
    {"commit": "x"},
    {"commit": 5},
    {"address": "not an address"},
    {"address": 2130706433},  # an int is an address to ipaddress, not to us
    {"address": b"\x7f\x00\x00\x01"},
    {"mirrors": {"0": entry()}},
    {"mirrors": ["http://127.0.0.1:8470"]},
    {"format": 2},
    {"kind": "keys"},
])
def test_a_locate_answer_with_a_hostile_field_is_refused(changes):
    with pytest.raises(ManifestError):
        read(signed_payload("locate", locate_payload(**changes)))


def test_a_locate_answer_with_a_field_more_or_less_is_refused():
    with pytest.raises(ManifestError):
        read(signed_payload("locate", locate_payload(extra="x")))
    short = locate_payload()
    del short["address"]
    with pytest.raises(ManifestError):
        read(signed_payload("locate", short))


def test_mirrors_without_a_newest_commit_are_refused():
    """`commit` null says nobody holds the revision: a list of mirrors beside it is a lie."""
    with pytest.raises(ManifestError, match="nobody"):
        read(signed_payload("locate", locate_payload(commit=None)))


def test_an_answer_for_a_commit_whose_mirrors_hold_another_is_refused():
    answer = located(located_mirror(0, commit=OLD), revision=NEW)
    with pytest.raises(ManifestError, match="another commit"):
        read(sign_located(answer, INDEX), revision=NEW)
    with pytest.raises(ManifestError, match="another commit"):
        read(sign_located(located(located_mirror(0), revision=NEW, commit=OLD), INDEX),
             revision=NEW)


def test_too_many_located_mirrors_are_refused():
    many = [entry(base_url=f"http://10.0.{i // 250}.{i % 250}") for i in range(MAX_LOCATED + 1)]
    with pytest.raises(ManifestError, match="at most"):
        read(signed_payload("locate", locate_payload(mirrors=many)))
    read(signed_payload("locate", locate_payload(mirrors=many[:MAX_LOCATED])))


@pytest.mark.parametrize("target", [
    ("github", "model", "org/name", "main"),
    ("huggingface", "space", "org/name", "main"),
    ("huggingface", "model", "../etc", "main"),
    ("huggingface", "model", "org/name", "a..b"),
    ("huggingface", "model", "org/name", ""),
])
def test_a_locate_target_from_outside_is_checked(target):
    with pytest.raises(BadRequest):
        check_locate_target(*target)
    check_locate_target("modelscope", "dataset", "org/name", "refs/pr/1")


# -- the key list ---------------------------------------------------------------------------


def test_a_key_list_reads_back_exactly():
    keys = [AcceptedKey(MIRROR_KEYS[0], "alpha", "http://127.0.0.1:8470"),
            AcceptedKey(MIRROR_KEYS[1], None, None)]
    assert read_key_list(sign_key_list(keys, INDEX, NOW), INDEX_KEY, now=NOW) == keys


def test_an_empty_key_list_reads_back_empty():
    assert read_key_list(sign_key_list([], INDEX, NOW), INDEX_KEY, now=NOW) == []


def test_a_key_list_signed_by_another_key_is_refused():
    other = Ed25519PrivateKey.generate()
    with pytest.raises(UnknownKey):
        read_key_list(sign_key_list([], other, NOW), INDEX_KEY, now=NOW)


def test_a_key_list_naming_another_key_than_its_signers_is_refused():
    with pytest.raises(ManifestError, match="another key"):
        read_key_list(signed_payload("keys", keys_payload(key=MIRROR_KEYS[0])), INDEX_KEY,
                      now=NOW)


def test_a_stale_or_future_key_list_is_refused():
    with pytest.raises(ManifestError, match="stale"):
        read_key_list(sign_key_list([], INDEX, NOW - MAX_AGE - 1), INDEX_KEY, now=NOW)
    with pytest.raises(ManifestError, match="future"):
        read_key_list(sign_key_list([], INDEX, NOW + CLOCK_SKEW + 1), INDEX_KEY, now=NOW)
    with pytest.raises(ManifestError):
        read_key_list(signed_payload("keys", keys_payload(timestamp=math.nan)), INDEX_KEY,
                      now=NOW)


@pytest.mark.parametrize("item", [
    {"key": "ed25519:" + "0" * 63, "name": None, "base_url": None},
    {"key": MIRROR_KEYS[0].upper(), "name": None, "base_url": None},
    {"key": MIRROR_KEYS[0], "name": 5, "base_url": None},
    {"key": MIRROR_KEYS[0], "name": None, "base_url": "file:///etc/passwd"},
    {"key": MIRROR_KEYS[0], "name": None, "base_url": "http://a\nb"},
    {"key": MIRROR_KEYS[0], "name": None},
    {"key": MIRROR_KEYS[0], "name": None, "base_url": None, "trusted": True},
    [MIRROR_KEYS[0], None, None],
    MIRROR_KEYS[0],
])
def test_a_key_list_with_a_hostile_entry_is_refused(item):
    with pytest.raises(ManifestError):
        read_key_list(signed_payload("keys", keys_payload(mirrors=[item])), INDEX_KEY, now=NOW)


@pytest.mark.parametrize("changes", [{"mirrors": None}, {"mirrors": {}}, {"extra": 1},
                                     {"format": 0}, {"kind": "locate"}])
def test_a_key_list_with_a_hostile_field_is_refused(changes):
    with pytest.raises(ManifestError):
        read_key_list(signed_payload("keys", keys_payload(**changes)), INDEX_KEY, now=NOW)


def test_too_many_accepted_keys_are_refused():
    item = {"key": MIRROR_KEYS[0], "name": None, "base_url": None}
    with pytest.raises(ManifestError, match="at most"):
        read_key_list(signed_payload("keys", keys_payload(mirrors=[item] * (MAX_KEYS + 1))),
                      INDEX_KEY, now=NOW)


def test_a_key_list_kept_on_disk_may_be_read_however_old_but_never_from_the_future():
    old = sign_key_list([AcceptedKey(MIRROR_KEYS[0], None, None)], INDEX, NOW - 100 * MAX_AGE)
    assert read_key_list(old, INDEX_KEY, now=NOW, max_age=None)[0].key == MIRROR_KEYS[0]
    with pytest.raises(ManifestError, match="future"):
        read_key_list(sign_key_list([], INDEX, NOW + CLOCK_SKEW + 1), INDEX_KEY, now=NOW,
                      max_age=None)
