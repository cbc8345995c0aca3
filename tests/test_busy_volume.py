"""A busy volume: every refusal names its holders and suggests only what would be accepted.

The trial went in circles (static: "busy, use snapshot"; snapshot: "no snapshot
possible, use static"). Here every combination of real busy causes — a process
writing a file, a loop device attached to a file on the volume, a slice of it mounted
read-write — on a volume that can or cannot be snapshot is tried with each image type;
each refusal must name every holder, and each type it suggests must then be accepted,
as must static once the remedies it names are carried out.
"""

from __future__ import annotations

import itertools
import re
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from children import holder
from cliutil import blockvault
from loopkit import run
from test_nested_volumes import disk_with_slice, mount_at, volume_of

from core.snapshots import ImageType, SnapshotUnavailable, StaticRefused, consistent_view

pytestmark = pytest.mark.loop

CAUSES = ("writer", "loop", "shared")
"""A process writing a file on it; a loop device over a file on it; its slice mounted rw."""
COMBINATIONS = [
    (set(causes), reflink)
    for n in range(1, len(CAUSES) + 1)
    for causes in itertools.combinations(CAUSES, n)
    for reflink in (False, True)
]
SUGGESTED = re.compile(r"use --imagetype ((?:static|snapshot|dynamic)(?: or [a-z]+)*)")


def suggested(message: str) -> set[ImageType]:
    """Return every image type a message tells the user to use."""
    found = SUGGESTED.findall(message)
    assert found, f"no image type suggested: {message}"
    return {ImageType(t) for phrase in found for t in phrase.split(" or ")}


@contextmanager
def attached(backing: Path) -> Iterator[str]:
    """Attach ``backing`` to a loop device for the block; the test may detach it earlier."""
    dev = run("losetup", "--find", "--show", str(backing)).strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "--detach", dev], capture_output=True, check=False)


def accepted(target: str, imagetype: ImageType, **options: bool) -> bool:
    """Open and close a view of ``target`` of ``imagetype``; return whether it was fuzzy."""
    with consistent_view(volume_of(target), imagetype, **options) as view:
        return view.fuzzy


@pytest.mark.parametrize(
    ("causes", "reflink"),
    COMBINATIONS,
    ids=["+".join(sorted(c)) + ("-reflink" if r else "-no-snapshot") for c, r in COMBINATIONS],
)
def test_each_refusal_names_the_holders_and_suggests_only_what_is_accepted(
    loopkit, causes, reflink
):
    layout = disk_with_slice(loopkit, on_reflink=reflink)
    mp = loopkit.mount(layout.disk)
    with ExitStack() as busy:
        holders: list[str] = []
        if "writer" in causes:
            log = mp / "busy.log"
            writer = busy.enter_context(holder(f"f = open({str(log)!r}, 'w')"))
            holders += [f"pid {writer.pid}", str(log)]
        if "loop" in causes:
            backing = mp / "inner.img"
            with open(backing, "wb") as f:
                f.truncate(8 << 20)
            loop = busy.enter_context(attached(backing))
            holders += [loop, str(backing)]
        if "shared" in causes:
            slice_mp = loopkit.mount(layout.slice)
            holders += [layout.slice, str(slice_mp)]

        refusals: dict[ImageType, StaticRefused | SnapshotUnavailable] = {}
        for imagetype in (ImageType.STATIC, ImageType.SNAPSHOT):
            try:
                fuzzy = accepted(layout.disk, imagetype)
            except (StaticRefused, SnapshotUnavailable) as e:
                refusals[imagetype] = e
            else:
                assert fuzzy is ("shared" in causes), imagetype
        assert set(refusals) == (
            {ImageType.STATIC} if reflink else {ImageType.STATIC, ImageType.SNAPSHOT}
        )
        assert not mount_at(mp).read_only

        for refused, e in refusals.items():
            for name in holders:
                assert name in e.message, f"{refused} refusal does not name {name}: {e.message}"
            assert suggested(e.message) == set(e.alternatives)
            assert refused not in e.alternatives and ImageType.DYNAMIC in e.alternatives
            assert not set(e.alternatives) & set(refusals), e.message
            for alternative in e.alternatives:
                assert accepted(layout.disk, alternative) is (
                    alternative is ImageType.DYNAMIC or "shared" in causes
                )
            if isinstance(e, SnapshotUnavailable):
                assert accepted(layout.disk, ImageType.SNAPSHOT, fallback_dynamic=True)

        # The remedies the static refusal named (stop, detach, unmount) make static work.
        busy.close()
        if "shared" in causes:
            loopkit.umount(slice_mp)
    with consistent_view(volume_of(layout.disk), ImageType.STATIC) as view:
        assert (view.provider, view.fuzzy) == ("remount-ro", False)
        assert mount_at(mp).read_only
    assert not mount_at(mp).read_only


def test_loop_attached_after_the_scan_is_named_when_the_remount_fails(loopkit):
    vol = loopkit.volume("32M", "ext4")
    assert vol.mount_point is not None
    backing = vol.mount_point / "late.img"
    with open(backing, "wb") as f:
        f.truncate(8 << 20)
    resolved = volume_of(vol.device)  # scanned before the loop device exists
    with attached(backing) as loop:
        with (
            pytest.raises(StaticRefused) as refused,
            consistent_view(resolved, ImageType.STATIC),
        ):
            pytest.fail("the copy must not start")
        assert loop in refused.value.message and str(backing) in refused.value.message
        assert f"losetup -d {loop}" in refused.value.message
        assert suggested(refused.value.message) == {ImageType.DYNAMIC}
        assert not mount_at(vol.mount_point).read_only
    with consistent_view(volume_of(vol.device), ImageType.STATIC) as view:
        assert view.provider == "remount-ro"


def test_check_volume_names_the_loop_devices_attached_to_files_on_it(loopkit):
    vol = loopkit.volume("32M", "ext4")
    assert vol.mount_point is not None
    rw_file, ro_file = vol.mount_point / "rw.img", vol.mount_point / "ro.img"
    for path in (rw_file, ro_file):
        with open(path, "wb") as f:
            f.truncate(8 << 20)
    ro_loop = loopkit.attach(ro_file, read_only=True)
    with attached(rw_file) as rw_loop:
        res = blockvault("check-volume", vol.device, "--json")
        assert res.rc == 8, res.out + res.err
        loops = [f for f in res.json()["findings"] if f["code"] == "LOOP_BACKING_FILE"]
        assert [f["severity"] for f in loops] == ["warning", "info"]
        writing, reading = loops
        assert rw_loop in writing["message"] and str(rw_file) in writing["message"]
        assert f"losetup -d {rw_loop}" in writing["message"]
        assert writing["details"]["loops"] == [{"device": rw_loop, "backing_file": str(rw_file)}]
        assert ro_loop in reading["message"] and str(ro_file) in reading["message"]
    # A read-only loop device does not stop the remount.
    with consistent_view(volume_of(vol.device), ImageType.STATIC) as view:
        assert view.provider == "remount-ro"


def test_check_volume_of_a_busy_volume_suggests_no_image_type_it_cannot_have(loopkit):
    """No snapshot of a loop volume whose file lies on ext4: no finding may send the user there."""
    vol = loopkit.volume("32M", "ext4")
    assert vol.mount_point is not None
    with holder(f"f = open({str(vol.mount_point / 'busy.log')!r}, 'w')"):
        res = blockvault("check-volume", vol.device, "--json")
    messages = [f["message"] for f in res.json()["findings"]]
    assert any("stop them" in m for m in messages), messages
    assert not any("--imagetype snapshot" in m for m in messages), messages


def test_the_root_file_system_is_never_sent_round_in_circles():
    """ "/" cannot go offline, and only an LVM root can be snapshot: dynamic is what works."""
    try:
        root = volume_of("/")
    except Exception as e:  # "/" on overlayfs and the like has no block device
        pytest.skip(f"/ is not a block device here: {e}")
    if mount_at(Path("/")).read_only or root.device.kind.value == "lvm":
        pytest.skip("/ is read-only or on LVM here")
    refusals = []
    for imagetype in (ImageType.STATIC, ImageType.SNAPSHOT):
        with (
            pytest.raises((StaticRefused, SnapshotUnavailable)) as refused,
            consistent_view(root, imagetype),
        ):
            pytest.fail("the copy must not start")
        refusals.append(refused.value)
        assert suggested(refused.value.message) == {ImageType.DYNAMIC}, refused.value.message
        assert refused.value.alternatives == (ImageType.DYNAMIC,)
    assert "root file system" in refusals[0].message
    assert "root file system" in refusals[1].message  # the snapshot refusal says why not static
    root_finding = next(
        f
        for f in blockvault("check-volume", "/", "--json").json()["findings"]
        if f["code"] == "ROOT_FILESYSTEM"
    )
    assert suggested(root_finding["message"]) == {ImageType.DYNAMIC}
    assert accepted("/", ImageType.DYNAMIC)
