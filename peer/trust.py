"""Whom a peer believes (DESIGN.md section 6): the keys in its config, and a configured mirror's
key on first use, pinned from then on in `$WEIGHTSWARM_HOME/known_mirrors` (one line: mirror
URL, key), like ssh's known_hosts. A pinned mirror that shows another key is refused: that is a
replaced key or somebody else answering. Ref statements already believed are remembered, so an
older one (a replay, a rolled-back mirror) is refused.

Trust delegated (issue 18, item 5): the index's own key is believed if it is configured, else
pinned on first use for the index's URL as a mirror's is. The mirror keys its fresh, signed
key list names are then believed too, for this run only (`delegate`): a key the index revoked
is not believed by the next pull. The list is kept in `$WEIGHTSWARM_HOME/index_keys.msgpack`
for the peer daemon, which reads it again however old (`delegated_on_disk`) only to know which
manifests of what this machine already verified and holds it may seed. A key that only a
locate answer or an unsigned answer named is never believed, nor pinned.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from . import atomic
from .errors import ConfigError, WeightswarmError
from .keys import parse_public_key
from .locate import read_key_list
from .manifest import ManifestError, RefLedger, RefStatement

log = logging.getLogger(__name__)


class KeyMismatch(WeightswarmError):
    status = 403


class Trust:
    def __init__(self, home: Path, trusted_keys: tuple[str, ...] | list[str] = ()):
        self.home = home
        for key in trusted_keys:
            try:
                parse_public_key(key)  # a malformed key in the config is an error, not ignored
            except ValueError as e:
                raise ConfigError(f"peer.trusted_keys: {key!r} is not ed25519:<64 hex>: {e}")\
                    from None
        self.configured = frozenset(trusted_keys)
        #: the mirror keys an index this peer trusts vouches for (`delegate`)
        self.delegated: frozenset[str] = frozenset()
        self.known_path = home / "known_mirrors"
        self.delegation_path = home / "index_keys.msgpack"
        self.ledger_path = home / "refs_seen.json"
        #: orders the writers of both files (two pulls at once each keep what the other added)
        self.lock_path = home / ".trust.lock"
        self.pinned = self._read_known()
        self.ledger = RefLedger()
        self._read_ledger()

    def _known_text(self) -> str:
        try:
            return self.known_path.read_text()
        except FileNotFoundError:
            return ""

    def _read_known(self) -> dict[str, str]:
        pinned = {}
        for number, line in enumerate(self._known_text().splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2:
                log.warning("%s:%d: not 'URL KEY', ignored", self.known_path, number)
                continue
            pinned[parts[0].rstrip("/")] = parts[1]
        return pinned

    def _pinned_as(self, mirror: str, key: str) -> bool:
        """True if `mirror` is pinned to `key`, False if not pinned; another key is refused."""
        known = self.pinned.get(mirror)
        if known is not None and known != key:
            raise KeyMismatch(
                f"{mirror} now shows key {key}, but {self.known_path} pins {known}: a "
                f"replaced key or another server; remove its line if you trust the change")
        return known is not None

    def pin(self, mirror: str, key: str) -> str:
        """Trust `mirror`'s key on first use; afterwards only the key pinned for it."""
        mirror = mirror.rstrip("/")
        if self._pinned_as(mirror, key):
            return key
        try:
            parse_public_key(key)
        except ValueError as e:
            raise KeyMismatch(f"{mirror} shows a malformed key: {e}") from None
        with atomic.locked(self.lock_path):
            self.pinned = self._read_known()  # another pull may have pinned it meanwhile
            if self._pinned_as(mirror, key):
                return key
            text = self._known_text()
            if text and not text.endswith("\n"):
                text += "\n"
            atomic.write_file(self.known_path, f"{text}{mirror} {key}\n".encode())
            self.pinned[mirror] = key
        log.info("trusting %s's key %s on first use (pinned in %s)", mirror, key,
                 self.known_path)
        return key

    def keys(self) -> frozenset[str]:
        return self.configured | frozenset(self.pinned.values()) | self.delegated

    # -- the index -----------------------------------------------------------------------------

    def trust_index(self, index: str, key: str) -> str:
        """The index's key: believed if configured, else pinned on first use for its URL."""
        if key in self.configured:
            return key
        return self.pin(index, key)

    def delegate(self, data: bytes, index_key: str, *, now: float) -> frozenset[str]:
        """Believe the mirror keys of the index's signed key list `data` (`ManifestError` if
        it is not signed by `index_key`, or stale), and keep the list for the peer daemon."""
        accepted = frozenset(k.key for k in read_key_list(data, index_key, now=now))
        self.delegated = accepted
        atomic.write_file(self.delegation_path, data)
        return accepted

    def delegated_on_disk(self, index: str) -> frozenset[str]:
        """The keys of the list a pull kept, if the index's key it believes signed it."""
        try:
            data = self.delegation_path.read_bytes()
        except FileNotFoundError:
            return frozenset()
        candidates = [self.pinned.get(index.rstrip("/")), *sorted(self.configured)]
        for key in filter(None, candidates):
            try:
                listed = read_key_list(data, key, now=time.time(), max_age=None)
            except ManifestError:
                continue
            return frozenset(k.key for k in listed)
        log.warning("%s is not signed by the key believed for %s: not used",
                    self.delegation_path, index)
        return frozenset()

    # -- ref statements -----------------------------------------------------------------------

    def _read_ledger(self) -> None:
        """Take in what the ledger file holds, keeping the newer sequence of each ref."""
        try:
            rows = json.loads(self.ledger_path.read_text())
        except (FileNotFoundError, ValueError):
            return
        seen = self.ledger.seen
        for row in rows if isinstance(rows, list) else []:
            try:
                key, hub, type_, repo, ref, seq, commit = row
                slot = (key, hub, type_, repo, ref)
                if slot not in seen or seen[slot][0] < int(seq):
                    seen[slot] = (int(seq), str(commit))
            except (TypeError, ValueError):
                continue

    def accept_ref(self, statement: RefStatement, key: str) -> RefStatement:
        with atomic.locked(self.lock_path):
            self._read_ledger()  # what other pulls believed since
            self.ledger.accept(statement, key)
            rows = [[*slot, seq, commit] for slot, (seq, commit) in self.ledger.seen.items()]
            atomic.write_file(self.ledger_path, json.dumps(rows).encode())
        return statement
