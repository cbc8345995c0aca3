"""Disk labels on real loop devices: slices and partitions stood up as offset loop devices.

Partition scanning is off for loop devices here, so each slice or partition is its
own loop device (``losetup --offset --sizelimit``) and finds its disk through the
backing file, as a real partition finds it through sysfs.
"""

from __future__ import annotations

import pytest
from labelkit import make_sun_label, sfdisk_image, write_image

from core.devices import scan
from core.findings import Severity
from core.preflight import check_volume

pytestmark = pytest.mark.loop

HEADS, SPT, CYLS = 16, 64, 64
CYL = HEADS * SPT * 512  # 512 KiB per cylinder
TAG_ROOT, TAG_BACKUP, TAG_USR = 2, 5, 4


def codes(result) -> dict[str, Severity]:
    return {f.code: f.severity for f in result.findings}


@pytest.fixture
def sun_disk(loopkit):
    """A 32 MiB disk with a Sun VTOC: slice 0 at cylinder 0, slice 2 whole disk, slice 6 at 8."""
    slices = [
        (TAG_ROOT, 0, 0, 8 * HEADS * SPT),
        (0, 0, 0, 0),
        (TAG_BACKUP, 1, 0, CYLS * HEADS * SPT),
        (0, 0, 0, 0),
        (0, 0, 0, 0),
        (0, 0, 0, 0),
        (TAG_USR, 0, 8, 16 * HEADS * SPT),
    ]
    label = make_sun_label(HEADS, SPT, CYLS, slices)
    image = write_image(loopkit.workdir / "sun.img", CYLS * CYL, {0: label})
    return image


@pytest.mark.parametrize("attach_disk", [True, False], ids=["disk-attached", "file-only"])
def test_sun_slice_at_cylinder_0_gets_the_vtoc_warning_and_others_do_not(
    loopkit, sun_disk, attach_disk
):
    if attach_disk:
        loopkit.attach(sun_disk)
    slice0 = loopkit.attach(sun_disk, offset=0, size_limit=8 * CYL)
    slice6 = loopkit.attach(sun_disk, offset=8 * CYL, size_limit=16 * CYL)

    first = check_volume(slice0)
    assert codes(first)["LABEL_CYLINDER0"] is Severity.WARNING
    message = next(f.message for f in first.findings if f.code == "LABEL_CYLINDER0")
    assert "cylinder 0" in message and "VTOC" in message

    other = check_volume(slice6)
    assert "LABEL_CYLINDER0" not in codes(other)
    assert "LABEL_SECTOR0" not in codes(other)
    info = next(f for f in other.findings if f.code == "LABEL_PARTITION")
    assert info.severity is Severity.INFO and info.details["partition"] == 6


def test_whole_sun_disk_holds_its_own_label(loopkit, sun_disk):
    disk = loopkit.attach(sun_disk)
    dev = scan().by_path(disk)
    assert dev is not None and dev.label is not None and dev.label.kind.value == "sun"
    assert codes(check_volume(disk))["VOLUME_HOLDS_LABEL"] is Severity.WARNING


def test_gpt_partition_as_offset_loop_matches_its_entry_without_label_warnings(loopkit):
    image = sfdisk_image(
        loopkit.workdir / "gpt.img",
        "label: gpt\nstart=2048, size=16384, type=L\nstart=18432, size=16384, type=L\n",
        size=32 << 20,
    )
    loopkit.attach(image)
    part2 = loopkit.attach(image, offset=18432 * 512, size_limit=16384 * 512)
    result = check_volume(part2)
    found = codes(result)
    assert found.get("LABEL_PARTITION") is Severity.INFO
    assert "LABEL_SECTOR0" not in found and "LABEL_GPT_BACKUP" not in found
    assert next(f for f in result.findings if f.code == "LABEL_PARTITION").details["partition"] == 2


def test_mbr_slice_covering_sector_0_is_warned(loopkit):
    image = sfdisk_image(
        loopkit.workdir / "dos.img", "label: dos\nstart=2048, size=16384, type=83\n", size=16 << 20
    )
    loopkit.attach(image)
    head = loopkit.attach(image, offset=0, size_limit=4 << 20)
    assert codes(check_volume(head))["LABEL_SECTOR0"] is Severity.WARNING
