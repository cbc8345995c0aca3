"""Volumes that share bytes: a disk and its slices, on real loop devices.

A loop slice is a loop device over part of the file a loop disk maps whole (these
machines scan no partitions on loop devices). A disk whose slice is mounted
read-write, or a slice of a disk that is, changes under a copy however still its
own file system is: check-volume says so, static is refused naming the mounted
device, and a snapshot or dynamic image is marked fuzzy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from cliutil import blockvault
from loopkit import MKFS, LoopKit, run

from core.devices import scan
from core.mounts import Mount, read_mounts
from core.snapshots import ImageType, StaticRefused, consistent_view
from core.targets import Volume, resolve

pytestmark = pytest.mark.loop

MiB = 1 << 20
DISK_FS_SIZE = "24M"
"""The disk's own file system ends before the slice, so both mount cleanly."""
SLICE_AT, SLICE_SIZE = 32 * MiB, 16 * MiB


@dataclass
class Layout:
    """A 64 MiB file mapped whole (the disk) and in part (the slice), each with ext4."""

    disk: str
    slice: str
    image: Path

    def backed_up_and_other(self, backed_up: str) -> tuple[str, str]:
        """Return (the device backed up, the device that shares its bytes)."""
        return (self.disk, self.slice) if backed_up == "disk" else (self.slice, self.disk)


def disk_with_slice(kit: LoopKit, *, on_reflink: bool = False) -> Layout:
    """Make the layout; with ``on_reflink`` its file lies on XFS (reflink=1) for snapshots."""
    if on_reflink:
        host = kit.volume("320M", None)
        run(*MKFS["xfs"], host.device)
        image = kit.mount(host.device) / "disk.img"
        with open(image, "wb") as f:
            f.truncate(64 * MiB)
    else:
        image = kit.image("64M")
    disk = kit.attach(image)
    part = kit.attach(image, offset=SLICE_AT, size_limit=SLICE_SIZE)
    run(*MKFS["ext4"], disk, DISK_FS_SIZE)
    kit.mkfs(part, "ext4")
    return Layout(disk, part, image)


def volume_of(target: str | Path) -> Volume:
    return resolve(str(target), scan())


def mount_at(mount_point: Path) -> Mount:
    return next(m for m in reversed(read_mounts()) if m.mount_point == str(mount_point))


BACKED_UP = pytest.mark.parametrize("backed_up", ["disk", "slice"])
"""Both ways: the disk whose slice is mounted, and the slice whose disk is mounted."""


@BACKED_UP
def test_check_volume_names_the_mounted_device_that_shares_its_bytes(loopkit, backed_up):
    layout = disk_with_slice(loopkit)
    target, other = layout.backed_up_and_other(backed_up)
    mp = loopkit.mount(other)
    res = blockvault("check-volume", target, "--json")
    assert res.rc == 8, res.out + res.err
    shared = [f for f in res.json()["findings"] if f["code"] == "OVERLAP_MOUNTED"]
    assert len(shared) == 1, res.out
    finding = shared[0]
    assert finding["severity"] == "warning"
    assert other in finding["message"] and str(mp) in finding["message"]
    assert "static image is refused" in finding["message"]
    assert finding["details"]["device"] == other
    assert finding["details"]["mount_points"] == [str(mp)]
    assert finding["details"]["relation"] == ("contains" if backed_up == "disk" else "inside")


@BACKED_UP
def test_static_is_refused_naming_the_mounted_device_and_nothing_changes(loopkit, backed_up):
    layout = disk_with_slice(loopkit)
    target, other = layout.backed_up_and_other(backed_up)
    mp = loopkit.mount(other)
    before = mount_at(mp)
    with (
        pytest.raises(StaticRefused) as refused,
        consistent_view(volume_of(target), ImageType.STATIC),
    ):
        pytest.fail("the copy must not start")
    message = refused.value.message
    assert f"{other} (" in message and f"mounted read-write at {mp}" in message
    assert f"unmount {mp}" in message
    assert refused.value.alternatives == (ImageType.DYNAMIC,)  # its file is on ext4: no reflink
    assert mount_at(mp) == before
    (mp / "still-writable.txt").write_text("x")


@BACKED_UP
def test_static_goes_ahead_when_the_shared_device_is_mounted_read_only(loopkit, backed_up):
    layout = disk_with_slice(loopkit)
    target, other = layout.backed_up_and_other(backed_up)
    mp = loopkit.mount(other, None, "ro")
    checked = blockvault("check-volume", target, "--json").json()
    findings = {f["code"]: f for f in checked["findings"]}
    assert findings["OVERLAP_MOUNTED"]["severity"] == "info"
    assert str(mp) in findings["OVERLAP_MOUNTED"]["message"]
    with consistent_view(volume_of(target), ImageType.STATIC) as view:
        assert (view.provider, view.fuzzy) == ("unmounted", False)


@BACKED_UP
def test_dynamic_backup_is_taken_fuzzy_and_names_the_shared_mount(loopkit, tmp_path, backed_up):
    layout = disk_with_slice(loopkit)
    target, other = layout.backed_up_and_other(backed_up)
    mp = loopkit.mount(other)
    env = {"BLOCKVAULT_REPO": str(tmp_path / "repo")}
    res = blockvault("backup", "image", target, "--imagetype", "dynamic", "--json", env=env)
    assert res.rc == 8, res.out + res.err
    report = res.json()
    assert (report["imagetype"], report["fuzzy"]) == ("dynamic", True)
    shared = next(f for f in report["findings"] if f["code"] == "OVERLAP_MOUNTED")
    assert other in shared["message"] and str(mp) in shared["message"]


@BACKED_UP
def test_snapshot_is_taken_but_marked_fuzzy_naming_the_shared_mount(loopkit, backed_up):
    layout = disk_with_slice(loopkit, on_reflink=True)
    target, other = layout.backed_up_and_other(backed_up)
    mp = loopkit.mount(other)
    with consistent_view(volume_of(target), ImageType.SNAPSHOT) as view:
        assert (view.imagetype, view.provider, view.fuzzy) == (ImageType.SNAPSHOT, "reflink", True)
        assert Path(view.path).exists()
    assert not Path(view.path).exists()
    assert [f.code for f in view.all_findings] == ["SNAPSHOT_REFLINK", "IMAGE_FUZZY"]
    fuzzy = view.all_findings[1]
    assert other in fuzzy.message and str(mp) in fuzzy.message and "fsck" in fuzzy.message
    assert fuzzy.details["shared"] == [other]
    loopkit.umount(mp)  # nothing shares its bytes in use any more: a clean snapshot
    with consistent_view(volume_of(target), ImageType.SNAPSHOT) as clean:
        assert (clean.provider, clean.fuzzy) == ("reflink", False)
    assert [f.code for f in clean.all_findings] == ["SNAPSHOT_REFLINK"]


def test_default_backup_of_a_disk_with_a_mounted_slice_is_refused_saying_what_works(
    loopkit, tmp_path
):
    """The trial's case: the disk was imaged "static, unmounted" while its slice was in use."""
    layout = disk_with_slice(loopkit)
    mp = loopkit.mount(layout.slice)
    env = {"BLOCKVAULT_REPO": str(tmp_path / "repo")}
    res = blockvault("backup", "image", layout.disk, env=env)
    assert res.rc == 12, res.out + res.err
    assert res.err.count("\n") == 1, res.err
    assert layout.slice in res.err and str(mp) in res.err
    assert "use --imagetype dynamic" in res.err
    assert "use --imagetype snapshot" not in res.err
    again = blockvault("backup", "image", layout.disk, "--imagetype", "dynamic", "--json", env=env)
    assert again.rc == 8, again.out + again.err
    assert again.json()["fuzzy"] is True
