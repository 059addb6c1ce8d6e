"""Putting a file in place, so that a reader sees the old file or the new one, never a part.

Every file that others may read (the store's blobs, the Hugging Face cache, the trust files, a
pull's state, the seeder's mended blobs) is written the one way of STYLE.md: to a temp file with
a unique name next to its destination (the same file system, so the rename is atomic), flushed
and fsynced, renamed over the destination with `os.replace`, and the folder fsynced so that the
rename itself survives a power cut. An exception removes the temp file.

A process killed between the write and the rename leaves its temp file behind, under a name no
later writer uses (it carries the pid and random bytes), and the first write into that folder
by a later process removes the temp files of writers that are gone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import out_of_space

log = logging.getLogger(__name__)

#: every temp file this module makes ends so: `.{name}.{pid}.{hex}.wstmp`
SUFFIX = ".wstmp"
_TEMP = re.compile(r"\..+\.([0-9]{1,10})\.[0-9a-f]{8}" + re.escape(SUFFIX))
#: folders swept of dead writers' temp files by this process (once each)
_swept: set[str] = set()


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (0 and negatives never do, for our purposes)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temp_path(dest: Path) -> Path:
    """A name next to `dest` that no other writer, here or in another process, will use."""
    return dest.with_name(f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}{SUFFIX}")


def fsync_dir(path: Path) -> None:
    """Make a rename (or a new file) in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sweep(folder: Path) -> int:
    """Remove the temp files in `folder` whose writer is gone; returns how many."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        match = _TEMP.fullmatch(entry.name)
        if match is None or pid_alive(int(match.group(1))):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
            removed += 1
            log.info("removed %s, left by a writer that is gone", entry.path)
    return removed


def _prepare(dest: Path) -> None:
    folder = dest.parent
    folder.mkdir(parents=True, exist_ok=True)
    key = os.fspath(folder)
    if key not in _swept:
        _swept.add(key)
        sweep(folder)


def place(src: Path, dest: Path, *, mode: int | None = None, sync: bool = True) -> None:
    """Rename a complete, fsynced file (or a symlink) over `dest`, then make that durable.
    `mode`: set on the file first (the store publishes blobs read-only)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if mode is not None:
        os.chmod(src, mode)
    os.replace(src, dest)
    if sync:
        fsync_dir(dest.parent)


@contextlib.contextmanager
def _space(dest: Path) -> Iterator[None]:
    """A full disk met while writing `dest` is `InsufficientSpace`, an expected condition
    said in one line, not an OSError's traceback."""
    try:
        yield
    except OSError as e:
        full = out_of_space(e, dest.parent, writing=str(dest))
        if full is None:
            raise
        raise full from e


@contextlib.contextmanager
def _new_temp(dest: Path, mode: int) -> Iterator[tuple[Path, BinaryIO]]:
    """A new temp file beside `dest`, for the caller to write and put in place; whatever is
    still at its name afterwards (after an error, say) is removed."""
    with _space(dest):
        _prepare(dest)
        tmp = temp_path(dest)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            with os.fdopen(fd, "wb") as f:
                yield tmp, f
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def _durable(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())


@contextlib.contextmanager
def replacing(dest: Path, *, mode: int = 0o644) -> Iterator[BinaryIO]:
    """A file to write `dest`'s new content into: on a clean exit it is fsynced and replaces
    `dest`; on an exception it is removed and `dest` is as it was."""
    with replacing_path(dest, mode=mode) as (_, f):
        yield f


@contextlib.contextmanager
def replacing_path(dest: Path, *, mode: int = 0o644) -> Iterator[tuple[Path, BinaryIO]]:
    """`replacing`, with the temp file's path too: to open it a second way (O_DIRECT)."""
    dest = Path(dest)
    with _new_temp(dest, mode) as (tmp, f):
        yield tmp, f
        _durable(f)
        place(tmp, dest)


def write_file(dest: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace `dest` with `data`, all at once."""
    with replacing(dest, mode=mode) as f:
        f.write(data)


def write_new(dest: Path, data: bytes, *, mode: int = 0o644) -> bool:
    """Write `dest` only if it does not exist yet, all at once: if another process made it
    meanwhile, theirs is kept (a key must never change under a reader). True if ours is it."""
    dest = Path(dest)
    with _new_temp(dest, mode) as (tmp, f):
        f.write(data)
        _durable(f)
        try:
            os.link(tmp, dest)  # link, not replace: fails if dest exists
        except FileExistsError:
            return False
    fsync_dir(dest.parent)
    return True


def copy_file(src: Path, dest: Path) -> None:
    """Replace `dest` with a copy of `src`."""
    with open(src, "rb") as source, replacing(dest) as out:
        shutil.copyfileobj(source, out, 1 << 20)


def link(target: str, dest: Path) -> None:
    """Replace `dest` with a symlink to `target`. The folder is not fsynced here: a snapshot
    of many links syncs its folders once (`sync_dirs`)."""
    dest = Path(dest)
    with _space(dest):
        _prepare(dest)
        tmp = temp_path(dest)
        os.symlink(target, tmp)
        try:
            place(tmp, dest, sync=False)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise


def sync_dirs(folders: Iterable[Path]) -> None:
    """fsync each folder once (after many renames or links into them)."""
    for folder in dict.fromkeys(folders):
        try:
            fsync_dir(folder)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (made if missing) while a file it guards is
    read, merged and written again by `replacing`: two processes then never lose each other's
    lines. The rename keeps readers safe without it; the lock only orders the writers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
