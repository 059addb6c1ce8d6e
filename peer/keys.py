"""ed25519 keys: a mirror's signing key on disk, and the `ed25519:<64 hex>` public form."""

from __future__ import annotations

import functools
import re
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from . import atomic
from .errors import ConfigError

PREFIX = "ed25519:"


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    if isinstance(key, Ed25519PrivateKey):
        return _private_key_text(key)
    return _public_text(key)


@functools.lru_cache(maxsize=64)
def _private_key_text(key: Ed25519PrivateKey) -> str:
    """Kept per key (keys hash by identity): a signer (an index signing each locate) asks for
    it with every signature."""
    return _public_text(key.public_key())


def _public_text(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PREFIX + raw.hex()


def parse_public_key(text: str) -> Ed25519PublicKey:
    if not re.fullmatch(r"ed25519:[0-9a-f]{64}", text):
        raise ValueError(f"not an ed25519 public key (ed25519:<64 lower-case hex>): {text[:80]!r}")
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text[len(PREFIX):]))


def load_or_create(path: Path) -> Ed25519PrivateKey:
    """The key at `path`, created (mode 0600, atomically) if there is none yet.

    Like ssh, a key file that others can read is refused rather than used."""
    path = Path(path)
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # If another process created the key meanwhile, theirs is kept.
        atomic.write_new(path, pem, mode=0o600)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(f"{path} is readable by others (mode {mode:o}); chmod 600 it")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{path} is not a readable private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} does not hold an ed25519 private key")
    return key
