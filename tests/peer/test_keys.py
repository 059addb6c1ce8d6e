"""peer.keys: the mirror's ed25519 key on disk and its `ed25519:<hex>` public form."""

from __future__ import annotations

import os
import re
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from peer.errors import ConfigError
from peer.keys import load_or_create, parse_public_key, public_key_text


def test_load_or_create_makes_a_0600_key_file(tmp_path):
    path = tmp_path / "keys" / "mirror.key"
    key = load_or_create(path)
    assert isinstance(key, Ed25519PrivateKey)
    assert path.is_file(), "the key file should be created, parent folder included"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600, "a new key file should be mode 0600"
    assert sorted(p.name for p in path.parent.iterdir()) == ["mirror.key"], "no temp file left behind"


def test_load_or_create_loads_the_same_key_twice(tmp_path):
    path = tmp_path / "mirror.key"
    first = load_or_create(path)
    content = path.read_bytes()
    second = load_or_create(path)
    assert public_key_text(first) == public_key_text(second), "the second call should load, not regenerate"
    assert path.read_bytes() == content, "loading should not rewrite the file"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_load_or_create_refuses_a_key_file_others_can_read(tmp_path, mode):
    path = tmp_path / "mirror.key"
    load_or_create(path)
    os.chmod(path, mode)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_or_create(path)


def test_load_or_create_refuses_a_file_that_is_not_an_ed25519_key(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = tmp_path / "mirror.key"
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, pem)
    os.close(fd)
    with pytest.raises(ConfigError, match="ed25519"):
        load_or_create(path)


def test_public_key_text_is_ed25519_prefix_and_64_lower_hex():
    key = Ed25519PrivateKey.generate()
    text = public_key_text(key)
    assert re.fullmatch(r"ed25519:[0-9a-f]{64}", text), f"unexpected public key text {text!r}"
    assert public_key_text(key.public_key()) == text, "private and public key give the same text"


def test_parse_public_key_roundtrips():
    text = public_key_text(Ed25519PrivateKey.generate())
    parsed = parse_public_key(text)
    assert isinstance(parsed, Ed25519PublicKey)
    assert public_key_text(parsed) == text


def test_parsed_public_key_verifies_a_signature_of_its_private_key():
    key = Ed25519PrivateKey.generate()
    signature = key.sign(b"manifest")
    parse_public_key(public_key_text(key)).verify(signature, b"manifest")  # raises if wrong


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ed25519:",
        "ed25519:" + "a" * 62,
        "ed25519:" + "a" * 66,
        "ed25519:" + "zz" * 32,
        "ed25519:" + "a" * 63 + " ",
        "rsa:" + "a" * 64,
        "ED25519:" + "a" * 64,
        "a" * 64,
    ],
)
def test_parse_public_key_refuses_bad_text(text):
    with pytest.raises(ValueError):
        parse_public_key(text)
