"""A bundle volume repaired from its recovery data (mirror/parity.py), where an import or a
`verify-bundle --repair` found one of its files damaged or missing: each volume at most once a
run, and only a volume whose signed index says it carries par2 recovery files. The repair
writes into the volume (par2 rebuilds files in place): a read-only disc is copied to a disk
first. What it rebuilt is checked again against the index like any other file."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .. import parity
from .reading import Bundle, volume_label

log = logging.getLogger(__name__)


@dataclass
class Repairs:
    #: the files rebuilt, as `vol-NNN/path`
    repaired: list[str] = field(default_factory=list)
    #: volume → why it could not be repaired
    failures: dict[int, str] = field(default_factory=dict)
    _tried: set[int] = field(default_factory=set)

    def attempt(self, bundle: Bundle, volume: int) -> bool:
        """Repair `volume` of `bundle`, the first time it is asked for: whether par2 rebuilt
        anything (the caller reads the volume's files again)."""
        if volume in self._tried or volume not in bundle.volumes:
            return False
        self._tried.add(volume)
        if bundle.index.parity != "par2" or not bundle.index.volumes[volume - 1].parity:
            return False  # exported without --parity
        try:
            report = parity.repair(bundle.volumes[volume])
        except parity.ParityError as e:
            log.warning("%s: %s", volume_label(volume), e)
            self.failures[volume] = str(e)
            return False
        self.repaired += [f"{volume_label(volume)}/{name}" for name in report.repaired]
        return bool(report.repaired)

    def why(self, volume: int) -> str:
        """What a failure's report adds: why parity did not save it."""
        reason = self.failures.get(volume)
        return f"; parity could not repair it: {reason}" if reason else ""

    def check(self, bundle: Bundle, volume: int) -> str:
        """Whether `volume`'s recovery data could rebuild what is wrong with it, changing
        nothing: a line for `verify-bundle`."""
        if bundle.index.parity != "par2" or not bundle.index.volumes[volume - 1].parity:
            return f"{volume_label(volume)}: no recovery data"
        try:
            return parity.check(bundle.volumes[volume]).summary()
        except parity.ParityError as e:
            return f"{volume_label(volume)}: {e}"
