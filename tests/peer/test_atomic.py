"""peer/atomic.py: the one way a file is put in place (temp next to it, fsync, rename)."""

import os
import subprocess
import sys
import textwrap

import pytest

from peer import atomic
from peer.trust import Trust


def temps(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(atomic.SUFFIX))


def test_write_file_replaces_the_whole_file_and_leaves_no_temp(tmp_path):
    dest = tmp_path / "sub" / "state.json"
    atomic.write_file(dest, b"one")
    atomic.write_file(dest, b"two")
    assert dest.read_bytes() == b"two"
    assert temps(dest.parent) == []


def test_an_error_while_writing_keeps_the_old_file_and_removes_the_temp(tmp_path):
    dest = tmp_path / "state.json"
    atomic.write_file(dest, b"old")
    with pytest.raises(RuntimeError):
        with atomic.replacing(dest) as f:
            f.write(b"half of the new")
            raise RuntimeError("cut off")
    assert dest.read_bytes() == b"old", "a failed write never shows"
    assert temps(tmp_path) == []


def test_temp_names_are_unique_beside_the_destination(tmp_path):
    dest = tmp_path / "f"
    names = {atomic.temp_path(dest) for _ in range(100)}
    assert len(names) == 100
    assert all(n.parent == tmp_path and n.name.startswith(".f.") for n in names)
    assert all(str(os.getpid()) in n.name for n in names), "the writer's pid is in the name"


def test_a_crash_between_write_and_rename_leaves_no_target_and_nothing_to_trip_over(tmp_path):
    dest = tmp_path / "refs" / "main"
    # A real process that writes and fsyncs the new content, then dies before the rename.
    crash = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from peer import atomic
        with atomic.replacing(Path({str(dest)!r})) as f:
            f.write(b"a" * 40)
            f.flush()
            os.fsync(f.fileno())
            os._exit(9)
    """)
    done = subprocess.run([sys.executable, "-c", crash], capture_output=True, timeout=60)
    assert done.returncode == 9, done.stderr
    assert not dest.exists(), "nothing at the target: the rename never happened"
    left = temps(dest.parent)
    assert len(left) == 1, f"the dead writer's temp file: {left}"

    # A later run writes the same file: it does not trip over the leftover, and clears it.
    later = f"from pathlib import Path; from peer import atomic; " \
            f"atomic.write_file(Path({str(dest)!r}), b'b' * 40)"
    done = subprocess.run([sys.executable, "-c", later], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert dest.read_bytes() == b"b" * 40
    assert temps(dest.parent) == [], "the dead writer's temp file is gone"


def test_sweep_keeps_the_temp_files_of_writers_still_alive(tmp_path):
    mine = atomic.temp_path(tmp_path / "f")
    mine.write_bytes(b"in progress")
    dead = tmp_path / f".f.{2**22 + 7}.0123abcd{atomic.SUFFIX}"  # above the default pid_max
    dead.write_bytes(b"left over")
    unrelated = tmp_path / ".f.tmp"
    unrelated.write_bytes(b"not ours")
    assert atomic.sweep(tmp_path) == 1
    assert mine.exists() and unrelated.exists() and not dead.exists()


def test_write_new_keeps_the_file_that_is_already_there(tmp_path):
    dest = tmp_path / "mirror.key"
    assert atomic.write_new(dest, b"first", mode=0o600)
    assert not atomic.write_new(dest, b"second", mode=0o600)
    assert dest.read_bytes() == b"first"
    assert oct(dest.stat().st_mode & 0o777) == oct(0o600)
    assert temps(tmp_path) == []


def test_link_and_copy_replace_whole(tmp_path):
    (tmp_path / "a").write_bytes(b"A")
    (tmp_path / "b").write_bytes(b"B")
    atomic.link("a", tmp_path / "l")
    atomic.link("b", tmp_path / "l")
    assert os.readlink(tmp_path / "l") == "b"
    atomic.copy_file(tmp_path / "a", tmp_path / "c")
    assert (tmp_path / "c").read_bytes() == b"A"
    assert temps(tmp_path) == []


def test_two_pulls_pinning_at_once_keep_each_others_lines(tmp_path):
    keys = ["ed25519:" + c * 64 for c in "ab"]
    first, second = Trust(tmp_path), Trust(tmp_path)  # both read an empty file
    first.pin("http://one", keys[0])
    second.pin("http://two", keys[1])
    assert Trust(tmp_path).pinned == {"http://one": keys[0], "http://two": keys[1]}
