"""Who may read what (issue 20, items 1 and 2): the access file, its tokens, and the one
decision every path a byte can leave by asks.

`[mirror] access_file` (TOML, or YAML by its suffix):

    [groups.research]
    read = ["org/*"]                  # repo globs its members may read

    [users.alice]
    groups = ["research"]

    [[tokens]]
    user = "alice"
    name = "laptop"                   # optional: what `whoami` and `token list` call it
    created = 2026-12-03T10:00:00Z    # optional, for people
    sha256 = "<hex>"                  # of the token; `mirror token add` prints the token once
    expires = 2027-06-30T00:00:00Z    # optional
    read = ["team/fine-tune-*"]       # on top of the user's groups
    admin = []                        # the management routes, and quarantined files

Tokens are stored hashed and found by their hash: the file never holds one that works. The
decision is a plain function (`decide`) of the repo's access, the token and the time, so that
the HF API, the web seed, torrents, the tracker and the index all answer alike.

A repo's access (public, gated, private) is not here but in the catalog, where the feed, the
torrents and the seeder read it too: `weightswarm mirror access REPO|GLOB LEVEL` sets it
(Catalog.set_access), for the repos a glob matches now and for those published later.

The mirror reads the file again whenever it changes (`AccessFile`, a stat per look), so a token
revoked is refused at its next request. A file that cannot be read refuses every token (public
repos are still served) and says why in the log.
"""

from __future__ import annotations

import base64
import datetime
import fnmatch
import hashlib
import hmac
import logging
import os
import re
import secrets
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from peer.errors import ConfigError

#: not `mirror.access`: that is the HTTP access log (mirror/app.py)
log = logging.getLogger("mirror.audit")

#: the largest access file read (a bigger one is refused, not parsed)
MAX_FILE = 1 << 20
MAX_TOKENS = 100_000
MAX_GLOBS = 1000
#: what a token looks like: a prefix (so that a leaked one is recognised) and 43 url-safe
TOKEN_PREFIX = "ws_"
_TOKEN = re.compile(r"ws_[A-Za-z0-9_-]{43}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Token:
    sha256: str
    user: str
    expires: float | None
    read: tuple[str, ...]
    admin: tuple[str, ...]
    name: str = ""


#: the most answers each of Rules' caches keeps before it starts over
CACHED = 10_000


@dataclass(frozen=True)
class Rules:
    #: user → the globs it may read through its groups
    users: dict[str, tuple[str, ...]]
    #: sha256 of the token → the token
    tokens: dict[str, Token]
    #: answers already worked out with these rules (they never change: a new file is new
    #: Rules): the token presented → its sha256 or None, (sha256, repo) → may read
    _seen: dict = field(default_factory=dict, compare=False, repr=False)
    _reads: dict = field(default_factory=dict, compare=False, repr=False)

    def token(self, presented: str | None, now: float) -> Token | None:
        """The token presented (`Authorization: Bearer ...`), if it is one of ours and live."""
        if not presented:
            return None
        digest = self._seen.get(presented, False)
        if digest is False:
            digest = None
            if _TOKEN.fullmatch(presented):
                candidate = token_sha256(presented)
                found = self.tokens.get(candidate)
                if found is not None and hmac.compare_digest(found.sha256, candidate):
                    digest = candidate
            _remember(self._seen, presented, digest)
        found = self.tokens.get(digest) if digest else None
        if found is None or (found.expires is not None and found.expires <= now):
            return None
        return found

    def may_read(self, token: Token | None, repo_id: str) -> bool:
        if token is None:
            return False
        key = (token.sha256, repo_id)
        allowed = self._reads.get(key)
        if allowed is None:
            globs = token.read + token.admin + self.users.get(token.user, ())
            allowed = any(fnmatch.fnmatchcase(repo_id, glob) for glob in globs)
            _remember(self._reads, key, allowed)
        return allowed

    def is_admin(self, token: Token | None, repo_id: str = "*") -> bool:
        return token is not None and any(fnmatch.fnmatchcase(repo_id, glob)
                                         for glob in token.admin)


def _remember(cache: dict, key, value) -> None:
    if len(cache) >= CACHED:
        cache.clear()
    cache[key] = value


#: the rules of a mirror without an access file: no tokens
NONE = Rules({}, {})


@dataclass(frozen=True)
class Decision:
    """Allowed, or the HF answer that refuses: status and X-Error-Code."""

    allowed: bool
    status: int = 200
    error_code: str | None = None
    reason: str = ""


#: the one answer that lets a request through
ALLOWED = Decision(True)


def decide(access: str, repo_id: str, token: Token | None, rules: Rules) -> Decision:
    """Whether a request with `token` (None: none, or not a live one) may read a repo of this
    access (PROTOCOLS.md's contract): public to all; gated without a token 401 GatedRepo,
    with one that lacks the right 403 GatedRepo; private without the right RepoNotFound,
    answered as a missing repo is (401 without a token, 404 with one, as the Hub does), so
    that its existence is not revealed."""
    if access == "public" or rules.may_read(token, repo_id):
        return ALLOWED
    if access == "gated":
        if token is None:
            return Decision(False, 401, "GatedRepo", f"{repo_id} is gated: a token is needed")
        return Decision(False, 403, "GatedRepo",
                        f"{repo_id} is gated: this token may not read it")
    return Decision(False, 401 if token is None else 404, "RepoNotFound", f"no repo {repo_id}")


# -- tokens ------------------------------------------------------------------------------------


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# -- private swarms: one tracker key per token (issue 20, item 4) -----------------------------

#: what the mirror's own key is derived from (it seeds every private swarm it holds)
MIRROR_SEEDER = "mirror"


def tracker_secret(private_key_bytes: bytes) -> bytes:
    """The secret the mirror derives tracker keys with, from its own ed25519 key: no file of
    its own, the same after every restart, different on every mirror."""
    return hashlib.sha256(b"weightswarm tracker keys v1\0" + private_key_bytes).digest()


def tracker_key(secret: bytes, who: str) -> str:
    """The private-swarm key of a token (`who`: its sha256) or of the mirror itself
    (MIRROR_SEEDER): 40 hex, what goes in `/announce/<key>`. A revoked token's key is no
    longer in the list the tracker is fed (`tracker_key_hashes`)."""
    return hmac.new(secret, b"tracker key\0" + who.encode(), hashlib.sha256).hexdigest()[:40]


def tracker_key_hashes(rules: Rules, secret: bytes, now: float) -> list[str]:
    """sha256 of each live tracker key (every live token's, and the mirror's own), sorted:
    what the tracker checks an announce's key against. Hashes, so the list gives no key."""
    whos = [t.sha256 for t in rules.tokens.values()
            if t.expires is None or t.expires > now] + [MIRROR_SEEDER]
    return sorted(hashlib.sha256(tracker_key(secret, w).encode()).hexdigest() for w in whos)


def private_announce(tracker: str, key: str) -> str | None:
    """An HTTP tracker's announce URL with a private-swarm key (`/announce/<key>`); None for
    one that takes none (UDP: private swarms are announced over HTTP only)."""
    if not tracker.startswith(("http://", "https://")) or not tracker.endswith("/announce"):
        return None
    return f"{tracker}/{key}"


def bearer(authorization: str | None) -> str | None:
    """The token in an `Authorization: Bearer <token>` header, as huggingface_hub sends it, or
    as the password of HTTP Basic (`user:token`), as libtorrent sends a web seed's URL
    credentials (and git does)."""
    if not authorization or len(authorization) > 256:
        return None
    scheme, _, value = authorization.partition(" ")
    scheme, value = scheme.lower(), value.strip()
    if scheme == "bearer":
        return value
    if scheme == "basic":
        try:
            pair = base64.b64decode(value, validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None
        return pair.partition(":")[2] or None
    return None


# -- the file ----------------------------------------------------------------------------------


def load(path: Path) -> Rules:
    """The rules in an access file; ConfigError saying what is wrong and where, for any
    flaw (the mirror does not start on a file it cannot trust)."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE:
            raise ConfigError(f"{path}: {size} bytes, more than an access file may be "
                              f"({MAX_FILE})")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read: {e}") from None
    try:
        body = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        kind = "YAML" if path.suffix in (".yaml", ".yml") else "TOML"
        raise ConfigError(f"{path}: not valid {kind}: "
                          f"{' '.join(str(e).split())[:300]}") from None
    try:
        return parse(body or {})
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from None


def parse(body: Any) -> Rules:
    """The rules in a parsed access file; ValueError naming the first flaw."""
    _keys(body, {"groups", "users", "tokens"}, "the file")
    groups = {name: _globs(_keys(g, {"read"}, f"group {name}").get("read", []),
                           f"group {name}: read")
              for name, g in _table(body.get("groups", {}), "groups").items()}
    users = {}
    for name, user in _table(body.get("users", {}), "users").items():
        member_of = _list(_keys(user, {"groups"}, f"user {name}").get("groups", []),
                          f"user {name}: groups")
        for group in member_of:
            if group not in groups:
                raise ValueError(f"user {name}: no group {group!r}")
        users[name] = tuple(glob for group in member_of for glob in groups[group])
    tokens = {}
    raw = _list(body.get("tokens", []), "tokens")
    if len(raw) > MAX_TOKENS:
        raise ValueError(f"{len(raw)} tokens, more than {MAX_TOKENS}")
    for k, entry in enumerate(raw, 1):
        token = _token(entry, k, users)
        if token.sha256 in tokens:
            raise ValueError(f"token {k}: the same token is listed twice")
        tokens[token.sha256] = token
    return Rules(users, tokens)


def _token(entry: Any, k: int, users: dict) -> Token:
    what = f"token {k}"
    _keys(entry, {"user", "name", "sha256", "created", "expires", "read", "admin"}, what)
    user, digest, name = entry.get("user"), entry.get("sha256"), entry.get("name", "")
    if not isinstance(user, str) or user not in users:
        raise ValueError(f"{what}: user {user!r} is not one of [users]")
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise ValueError(f"{what}: sha256 must be 64 lowercase hex (the token's hash, never "
                         f"the token)")
    if not isinstance(name, str) or len(name) > 100 or not name.isprintable():
        raise ValueError(f"{what}: name must be a line of at most 100 characters")
    return Token(digest, user, _expiry(entry.get("expires"), what),
                 _globs(entry.get("read", []), f"{what}: read"),
                 _globs(entry.get("admin", []), f"{what}: admin"), name)


def _expiry(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{what}: expires {value!r} is not a date and time") from None
    if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
        value = datetime.datetime.combine(value, datetime.time(), datetime.UTC)
    if not isinstance(value, datetime.datetime):
        raise ValueError(f"{what}: expires must be a date and time, got {value!r}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    return value.timestamp()


def _keys(value: Any, allowed: set[str], what: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a table")
    unknown = sorted(set(map(str, value)) - allowed)
    if unknown:
        raise ValueError(f"{what}: unknown key {unknown[0]!r} (known: "
                         f"{', '.join(sorted(allowed))})")
    return value


def _table(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a table")
    for name in value:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"{what}: {name!r} is not a name (letters, digits, . _ @ -)")
    return value


def _list(value: Any, what: str) -> list:
    if not isinstance(value, list):
        raise ValueError(f"{what} must be a list")
    return value


def _globs(value: Any, what: str) -> tuple[str, ...]:
    items = _list(value, what)
    if len(items) > MAX_GLOBS:
        raise ValueError(f"{what}: more than {MAX_GLOBS} globs")
    return tuple(_glob(g, what) for g in items)


def _glob(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 200 or "\0" in value:
        raise ValueError(f"{what}: {value!r} is not a repo glob")
    return value


class AccessFile:
    """The access file as the mirror reads it: looked at again whenever it changes (its stat's
    inode, size and mtime), so a token revoked or added counts at the next request, with no
    restart. A file that fails to load refuses every token (`UNREADABLE`) until it is fixed,
    and says so in the log once per change; without a file there are no tokens (`NONE`)."""

    #: under load, look at the file at most this often (seconds): a revocation counts
    #: within this
    CHECK_EVERY = 0.05

    def __init__(self, path: Path | None):
        self.path = path
        self._stamp: tuple | None = None
        self._checked = -1.0
        self._rules = NONE if path is None else UNREADABLE
        #: why the file was last refused ("" while it loads)
        self.error = ""

    def rules(self) -> Rules:
        if self.path is None:
            return NONE
        now = time.monotonic()
        if now - self._checked < self.CHECK_EVERY:
            return self._rules
        self._checked = now
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError as e:
            stamp = ("missing", str(e))
        if stamp != self._stamp:
            self._stamp = stamp
            self._load()
        return self._rules

    def _load(self) -> None:
        try:
            rules = load(self.path)
        except ConfigError as e:
            self._rules, self.error = UNREADABLE, str(e)
            log.error("access file refused, every token with it (public repos are still "
                      "served): %s", e)
        else:
            self._rules, self.error = rules, ""
            log.info("access file %s: %d users, %d tokens", self.path, len(rules.users),
                     len(rules.tokens))


#: the rules while the access file cannot be read: no token is anyone's
UNREADABLE = Rules({}, {})
