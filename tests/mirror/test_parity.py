"""Parity for a bundle volume (issue 15, item 3), with the real par2 (Debian's par2cmdline)."""

import hashlib
import os
import shutil
import struct
from pathlib import Path

import pytest

from mirror import parity
from mirror.parity import (
    BeyondRepair,
    NoParity,
    Par2NotInstalled,
    ParityError,
    check,
    protect,
    repair,
)
from peer.errors import UnsafePath

KiB = 1024
FILES = {
    "blobs/aa/first.safetensors": 1024 * KiB,
    "blobs/bb/second.safetensors": 768 * KiB,
    "meta/config.json": 6 * KiB,
    "README.md": 300,
}


@pytest.fixture
def par2():
    if shutil.which("par2") is None:
        pytest.skip("needs par2 (Debian package par2; ./ops/test installs it)")


@pytest.fixture
def volume(tmp_path) -> Path:
    root = tmp_path / "vol-001"
    for name, size in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(os.urandom(size))
    return root


@pytest.fixture
def protected(par2, volume) -> Path:
    protect(volume, [Path(n) for n in FILES], 5)
    return volume


def contents(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def flip(path: Path, *offsets: int) -> None:
    with open(path, "r+b") as f:
        for offset in offsets:
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0xFF]))


# -- the plan: block sizes and counts, without par2 ---------------------------------------

def test_a_volume_of_many_gib_gets_about_500_blocks_of_a_few_mib():
    sizes = [4 << 30, 3 << 30, 1 << 20, 700]
    block, count, files = parity.recovery_plan(sizes, 5)
    assert block % parity.BLOCK_ALIGN == 0
    assert 490 <= parity.source_blocks(sizes, block) <= 510, block
    assert 8 << 20 <= block <= 16 << 20
    assert count == -(-parity.source_blocks(sizes, block) * 5 // 100)
    assert 1 <= files <= parity.MAX_RECOVERY_FILES
    assert count * block / files <= parity.RECOVERY_FILE_BYTES + block, "recovery files stay small"


def test_many_small_files_get_larger_blocks_within_par2s_limit():
    sizes = [10 * KiB] * 20000 + [2 << 30]
    block = parity.choose_block_size(sizes)
    assert parity.source_blocks(sizes, block) <= parity.MAX_SOURCE_BLOCKS


def test_more_files_than_one_par2_set_holds_is_a_clear_error():
    with pytest.raises(ParityError, match="split the volume"):
        parity.choose_block_size([100] * (parity.MAX_SOURCE_BLOCKS + 1))


@pytest.mark.parametrize("percent", [0, -5, 101])
def test_a_percentage_out_of_range_is_refused(percent):
    with pytest.raises(ParityError, match="more than 0 %"):
        parity.recovery_plan([1 << 20], percent)


# -- protect, check, repair with the real par2 -----------------------------------------------

def test_protect_writes_only_its_par2_files_at_the_top_of_the_volume(par2, volume):
    before = contents(volume)
    made = protect(volume, [Path(n) for n in FILES], 5)
    assert [p.name for p in made] == ["parity.par2", "parity.vol00+23.par2"]
    assert all(p.parent == volume for p in made)
    after = contents(volume)
    assert {k: v for k, v in after.items() if not k.startswith("parity.")} == before
    assert sorted(p.name for p in volume.iterdir()) == sorted(
        ["README.md", "blobs", "meta", "parity.par2", "parity.vol00+23.par2"])


def test_an_undamaged_volume_checks_as_intact(protected):
    report = check(protected)
    assert report.intact and report.repairable, report
    assert report.blocks_needed == 0
    assert "all files are correct" in report.summary()


def test_protect_again_replaces_the_whole_set(protected):
    (protected / "meta" / "config.json").write_bytes(b"{}")
    made = protect(protected, [Path(n) for n in FILES], 10)
    assert parity.recovery_files(protected) == made
    sizes = [(protected / n).stat().st_size for n in FILES]
    count = parity.recovery_plan(sizes, 10)[1]
    assert [p.name for p in made] == ["parity.par2", f"parity.vol00+{count}.par2"], "old set gone"
    assert [p for p in protected.iterdir() if p.name.startswith(".")] == [], "no staging left"
    assert check(protected).intact


def test_flipped_bytes_within_the_budget_are_reported_then_repaired_byte_identical(protected):
    before = contents(protected)
    target = protected / "blobs/aa/first.safetensors"
    flip(target, 10, 200 * KiB, 900 * KiB)

    report = check(protected)
    assert report.damaged == ("blobs/aa/first.safetensors",) and report.missing == ()
    assert report.blocks_needed == 3 and report.repairable, report
    assert report.blocks_available >= 3

    fixed = repair(protected)
    assert fixed.repaired == ("blobs/aa/first.safetensors",)
    assert contents(protected) == before, "byte-identical, and no NAME.1 backup left behind"
    assert check(protected).intact


def test_a_deleted_small_file_within_the_budget_is_rebuilt(protected):
    before = contents(protected)
    shutil.rmtree(protected / "meta")

    report = check(protected)
    assert report.missing == ("meta/config.json",) and report.repairable, report
    assert repair(protected).repaired == ("meta/config.json",)
    assert contents(protected) == before


def test_damage_beyond_the_budget_is_refused_naming_the_files_and_changes_nothing(protected):
    (protected / "blobs/bb/second.safetensors").unlink()
    flip(protected / "blobs/aa/first.safetensors", 0)
    before = contents(protected)

    report = check(protected)
    assert not report.repairable
    assert report.missing == ("blobs/bb/second.safetensors",)
    assert report.damaged == ("blobs/aa/first.safetensors",)
    assert report.short == report.blocks_needed - report.blocks_available > 0

    with pytest.raises(BeyondRepair) as refused:
        repair(protected)
    message = str(refused.value)
    assert "blobs/bb/second.safetensors (missing)" in message
    assert "blobs/aa/first.safetensors (damaged)" in message
    assert f"{report.short} recovery blocks short" in message
    assert refused.value.report.short == report.short
    assert contents(protected) == before, "a refused repair changes nothing"


def test_a_volume_without_par2_files_is_a_clear_error(par2, volume):
    for act in (check, repair):
        with pytest.raises(NoParity, match=r"has no recovery data \(parity.par2"):
            act(volume)


def test_par2_missing_from_path_is_one_clear_error(volume, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    for act in (lambda: protect(volume, [Path("README.md")], 5), lambda: check(volume),
                lambda: repair(volume)):
        with pytest.raises(Par2NotInstalled, match="apt-get install par2"):
            act()


@pytest.mark.parametrize("name", ["../outside", "/etc/passwd", "a\0b", "blobs/../../x",
                                  "parity.par2", "parity.vol00+23.par2",
                                  "blobs/*"])
def test_protect_refuses_hostile_names(par2, volume, name):
    with pytest.raises(UnsafePath):
        protect(volume, [name], 5)
    assert parity.recovery_files(volume) == []


def test_protect_refuses_a_symlink_and_a_missing_file(par2, volume, tmp_path):
    (tmp_path / "secret").write_bytes(b"x")
    (volume / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(UnsafePath):
        protect(volume, ["link"], 5)
    with pytest.raises(ParityError, match="no such file"):
        protect(volume, ["nothing"], 5)


def rename_in_par2(folder: Path, old: str, new: str) -> None:
    """Rewrite every FileDesc packet naming `old` to name `new` (same padded length), with
    a valid packet MD5, as a hostile bundle would."""
    old_raw, new_raw = old.encode(), new.encode().ljust(len(old), b"\0")
    assert len(new_raw) == len(old_raw)
    for path in folder.glob("*.par2"):
        data = bytearray(path.read_bytes())
        at = data.find(b"PAR2\0PKT")
        while at >= 0:
            length = struct.unpack_from("<Q", data, at + 8)[0]
            name_at = at + 64 + 56
            if data[at + 48:at + 64] == b"PAR 2.0\0FileDesc" and \
                    data[name_at:at + length].rstrip(b"\0") == old_raw:
                data[name_at:name_at + len(new_raw)] = new_raw
                data[at + 16:at + 32] = hashlib.md5(data[at + 32:at + length]).digest()
            at = data.find(b"PAR2\0PKT", at + 1)
        path.write_bytes(bytes(data))


def test_a_par2_file_naming_a_path_outside_the_volume_is_refused_before_par2_runs(protected):
    rename_in_par2(protected, "blobs/bb/second.safetensors",
                   "../../outside.safetensors")
    for act in (check, repair):
        with pytest.raises(UnsafePath, match="outside.safetensors"):
            act(protected)
    assert not (protected.parent.parent / "outside.safetensors").exists()


def test_progress_reports_bytes_and_never_more_than_the_volume(par2, volume):
    made, checked = [], []
    protect(volume, [Path(n) for n in FILES], 5, progress=made.append)
    check(volume, progress=checked.append)
    for seen in (made, checked):
        assert seen and all(n > 0 for n in seen), seen
        assert sum(FILES.values()) * 0.9 <= sum(seen) <= sum(FILES.values())


def test_par2_that_takes_too_long_is_stopped_with_a_clear_error(protected):
    with pytest.raises(ParityError, match="took longer than"):
        check(protected, timeout=1e-6)


def test_unreadable_recovery_data_is_a_clear_error_with_par2s_exit_code(protected):
    for made in parity.recovery_files(protected):
        made.unlink()
    (protected / "parity.par2").write_bytes(os.urandom(4096))
    with pytest.raises(ParityError, match=r"exit 4: the .par2 files do not hold enough critical"):
        check(protected)


# par2cmdline 0.8.1's verify of a volume with one file missing and one damaged (exit 1)
VERIFY_OUTPUT = """\
Loading "parity.par2".\rLoading: 50.0%\rLoaded 8 new packets
Loading "parity.vol00+13.par2".
Loaded 13 new packets including 13 recovery blocks

There are 3 recoverable files and 0 other files.
The block size used was 4096 bytes.
There are a total of 259 data blocks.
The total size of the data files is 1055020 bytes.

Verifying source files:

Opening: "README.md"
Target: "README.md" - found.
Target: "meta/config.json" - missing.
Opening: "blobs/aa/first"
Scanning: 12.5%\rTarget: "blobs/aa/first" - damaged. Found 254 of 256 data blocks.

Scanning extra files:


Repair is required.
1 file(s) are missing.
1 file(s) exist but are damaged.
1 file(s) are ok.
You have 255 out of 259 data blocks available.
You have 13 recovery blocks available.
Repair is possible.
You have an excess of 9 recovery blocks.
4 recovery blocks will be used to repair.
"""


def test_the_report_reads_par2s_files_and_block_counts_and_takes_its_exit_code_verdict():
    report = parity.parse_verify(Path("v"), 1, VERIFY_OUTPUT)
    assert report.damaged == ("blobs/aa/first",) and report.missing == ("meta/config.json",)
    assert (report.blocks_needed, report.blocks_available, report.data_blocks) == (4, 13, 259)
    assert report.repairable and not report.intact and report.short == 0
    assert not parity.parse_verify(Path("v"), 2, VERIFY_OUTPUT).repairable


def test_after_a_failed_repair_the_damaged_files_are_put_back_and_partial_ones_removed(volume):
    before = contents(volume)
    listing = parity._listing(volume)
    files = dict.fromkeys(FILES, 1)
    # what par2 repair does before it fails: rename the damaged file to NAME.1, begin the new
    # one, and begin a missing one
    damaged = volume / "blobs/aa/first.safetensors"
    damaged.rename(damaged.with_name(damaged.name + ".1"))
    damaged.write_bytes(b"partial")
    (volume / "README.md").unlink()
    listing.discard("README.md")
    before.pop("README.md")
    (volume / "README.md").write_bytes(b"partial")

    parity._settle_backups(volume, files, listing, keep_repair=False)
    assert contents(volume) == before


def test_after_a_repair_that_worked_only_par2s_backups_are_removed(volume):
    listing = parity._listing(volume)
    damaged = volume / "blobs/aa/first.safetensors"
    backup = damaged.with_name(damaged.name + ".1")
    shutil.copy(damaged, backup)
    (volume / "unrelated.1").write_bytes(b"not ours")

    parity._settle_backups(volume, dict.fromkeys(FILES, 1), listing, keep_repair=True)
    assert not backup.exists() and damaged.exists()
    assert (volume / "unrelated.1").exists(), "only a protected file's backup is removed"


def test_a_file_named_like_a_par2_option_is_protected_as_a_file(par2, volume):
    (volume / "-n5").write_bytes(os.urandom(8 * KiB))
    protect(volume, [Path(n) for n in FILES] + [Path("-n5")], 5)
    (volume / "-n5").unlink()
    assert check(volume).missing == ("-n5",)
    assert repair(volume).repaired == ("-n5",)


def test_a_folder_of_the_volume_swapped_for_a_symlink_outside_is_refused(protected, tmp_path):
    outside = tmp_path / "elsewhere"
    shutil.move(protected / "blobs" / "bb", outside)
    (protected / "blobs" / "bb").symlink_to(outside)
    (outside / "second.safetensors").unlink()
    for act in (check, repair):
        with pytest.raises(UnsafePath, match="resolves outside"):
            act(protected)
    assert not (outside / "second.safetensors").exists(), "par2 never wrote through it"
