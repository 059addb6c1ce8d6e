"""Answers computed from an sqlite database, kept on the event loop until the database changes.

Most requests a mirror serves repeat: the same repo info, the same commit-pinned resolve; most
an index serves too: the same popular searches, the same repos located. Each costs a hop to a
database thread and a few queries, hundreds of microseconds in all; a hit here costs a
dictionary lookup and one `PRAGMA data_version`, which sqlite answers from shared memory (no
lock, no I/O) and which changes whenever any other connection commits: an import from the CLI,
a sync, a `mirror rm`, an index's poll. So a kept answer is never staler than the database.
The mirror's catalog (mirror/app.py) and the federated index (tracker/indexhttp.py) use it.
"""

from __future__ import annotations

import sqlite3
import time
from collections import OrderedDict
from collections.abc import Hashable
from pathlib import Path
from typing import Any

#: Under load, look at the database's version at most this often (seconds): an answer is at
#: most this much staler than the database.
CHECK_EVERY = 0.001


class KeptAnswers:
    def __init__(self, path: Path, max_entries: int = 4096):
        # Its own connection, used only on the event loop's thread and only for the version.
        self._conn = sqlite3.connect(str(path), isolation_level=None)
        self._version: int | None = None
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._max = max_entries
        self._checked = 0.0

    def _fresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < CHECK_EVERY and self._version is not None:
            return
        self._checked = now
        version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        if version != self._version:
            self._entries.clear()
            self._version = version

    def get(self, key: Hashable) -> Any | None:
        self._fresh()
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: Hashable, value: Any, version: int | None) -> None:
        """Keep `value` if the database is still at `version`, the one read before computing
        it."""
        self._fresh()
        if version != self._version:
            return
        self._entries[key] = value
        if len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def version(self) -> int:
        self._fresh()
        assert self._version is not None
        return self._version

    def close(self) -> None:
        self._conn.close()
