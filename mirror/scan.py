"""Scanning what a mirror takes in for code that runs when it is loaded (issue 20).

Pickle-based formats (`torch.load`'s `.bin .pt .pth .ckpt`, `.pkl`, joblib, pickles inside
zips, `.npy`/`.npz` with object arrays) can call any Python function as they are loaded. A
file of one of these formats is scanned with picklescan, which lists the globals each pickle
imports, without executing it, and knows which are dangerous (`os.system`, `subprocess.*`,
`builtins.eval`, `__import__`, `getattr`...). picklescan was chosen over fickling and modelscan
by their detection on tests/scancorpus.py (`ops/bench/scanners.py`): it flagged every malicious
sample and no benign one, in about a millisecond a file; fickling missed the torch.save zips
and a protocol-0 pickle and flagged benign OrderedDicts and numpy arrays; modelscan left raw
pickles named `.bin`, `.pt`, `.pth` or `.ckpt` and object `.npy` files unscanned.

The verdict is data: `safe`, `suspicious` (with the dangerous globals), or `unscanned` (with
why: a format that cannot hold code is not scanned at all, `needs_scan` says which are).
Safetensors headers are validated elsewhere (peer/weights.py).
"""

from __future__ import annotations

import importlib.metadata
import logging
import posixpath
from dataclasses import dataclass
from pathlib import Path

from peer.errors import Refused

log = logging.getLogger(__name__)
# picklescan's own lines (one per odd file, at WARNING) stay out of the mirror's log: the
# verdict says what it found, in one line of ours (`snapshots.scan_files`).
logging.getLogger("picklescan").propagate = False

#: file names whose format can carry a pickle (what torch, joblib, numpy and Keras load)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib", ".dill",
                   ".npy", ".npz", ".zip", ".mar", ".tar", ".7z", ".h5", ".keras")
#: what a verdict can say
SAFE, SUSPICIOUS, UNSCANNED = "safe", "suspicious", "unscanned"
#: `[mirror] scan_policy`: what a suspicious file does to its snapshot
POLICIES = ("flag", "quarantine", "refuse")
SCANNER = "picklescan " + importlib.metadata.version("picklescan")


@dataclass(frozen=True)
class Verdict:
    status: str
    #: the dangerous globals found (module.name), for `suspicious`
    found: tuple[str, ...] = ()
    #: why, for `unscanned`; what else was seen, for the others
    reason: str = ""
    scanner: str = SCANNER

    def json(self) -> dict:
        out: dict = {"status": self.status, "scanner": self.scanner}
        if self.found:
            out["globals"] = list(self.found)
        if self.reason:
            out["reason"] = self.reason
        return out


#: a read larger than this (a tensor's bytes inside a raw pickle) is skipped, not read
SKIP_OVER = 1 << 20


class _Skipped:
    """What a skipped read returns: as long as the bytes were, holding none of them. The
    scanner looks only at the opcodes that import, whose arguments are short strings."""

    __slots__ = ("n",)

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


class _Skimming:
    """A file whose large reads are skipped over (seek), so that scanning a raw pickle of
    many GiB costs neither their memory nor reading them."""

    def __init__(self, f):
        self._f = f

    def read(self, n: int = -1):
        if n is not None and n > SKIP_OVER:
            start = self._f.tell()
            end = self._f.seek(n, 1)
            size = self._f.seek(0, 2)
            self._f.seek(min(end, size))
            return _Skipped(min(n, size - start))
        return self._f.read(n)

    def __getattr__(self, name):
        return getattr(self._f, name)


class _Unparsed(logging.Handler):
    """Sees picklescan say it could not parse a file (it then reports it clean)."""

    def __init__(self, file_id: str) -> None:
        super().__init__(logging.WARNING)
        self.file_id = file_id
        self.seen = False

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "could not parse" in message and self.file_id in message:
            self.seen = True


def needs_scan(path: str) -> bool:
    """Whether a repo file of this name may hold a pickle."""
    return posixpath.basename(path).lower().endswith(PICKLE_SUFFIXES)


def scan(blob: Path, path: str) -> Verdict:
    """The verdict on the bytes at `blob` (a stored blob, named by its hash), read as the repo
    file `path` (its name says its format)."""
    from picklescan.scanner import SafetyLevel, scan_bytes

    extension = posixpath.splitext(path.lower())[1]
    if extension in (".h5", ".keras"):
        return Verdict(UNSCANNED, reason=f"{extension} (Keras) is not covered by {SCANNER}")
    file_id = f"{path} ({blob.name})"  # unique: scans may run at once in threads
    unparsed = _Unparsed(file_id)
    scanner_log = logging.getLogger("picklescan")
    scanner_log.addHandler(unparsed)
    try:
        with open(blob, "rb") as f:
            result = scan_bytes(_Skimming(f), file_id, extension)
    except Exception as e:  # a scanner's bug or a file it chokes on is a verdict, not a crash
        log.warning("scan: %s: %s could not scan it: %s", path, SCANNER, e)
        return Verdict(UNSCANNED, reason=f"{SCANNER} failed on it: {type(e).__name__}: {e}"[:300])
    finally:
        scanner_log.removeHandler(unparsed)
    found = tuple(sorted({f"{g.module}.{g.name}" for g in result.globals
                          if g.safety == SafetyLevel.Dangerous}))
    unknown = sorted({f"{g.module}.{g.name}" for g in result.globals
                      if g.safety == SafetyLevel.Suspicious})
    if found:
        return Verdict(SUSPICIOUS, found, reason="imports what can run code when loaded")
    if not result.globals and (result.scan_err or unparsed.seen):
        # picklescan counts these as clean; a loader may read further than it did
        return Verdict(UNSCANNED, reason="not a pickle the scanner could parse")
    note = f"globals the scanner does not know: {', '.join(unknown[:20])}" if unknown else ""
    return Verdict(SAFE, reason=note)


class Quarantined(Refused):
    """`scan_policy = "quarantine"`: a file the scanner flagged is kept, and served to no
    one (admins, once access rules exist: issue 20)."""

    def __init__(self, what: str):
        super().__init__(f"{what} is quarantined: the pickle scanner flagged it (it imports "
                         f"what can run code when loaded); see weightswarm.scan in repo info")


class ScanRefused(Refused):
    """`scan_policy = "refuse"`: a snapshot with a file the scanner flagged is not published."""

    def __init__(self, repo_id: str, commit: str, flagged: dict[str, Verdict]):
        listed = "; ".join(f"{path}: {', '.join(v.found)}" for path, v in list(flagged.items())[:5])
        super().__init__(f"{repo_id}@{commit[:12]}: not published: {len(flagged)} file(s) the "
                         f"pickle scanner flagged ({listed}); [mirror] scan_policy is "
                         f"\"refuse\"")
        self.flagged = flagged


def scan_policy(value: object) -> str:
    """The setting's check."""
    if value not in POLICIES:
        raise ValueError(f"must be one of {', '.join(POLICIES)}, got {value!r}")
    return str(value)
