"""Disk labels on image files, checked against util-linux, and the cylinder-0 findings."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from labelkit import (
    BSD_FS_BSDFFS,
    BSD_FS_SWAP,
    BSD_FS_UNUSED,
    LINUX_FS_GUID,
    SUN_TAG_BACKUP,
    SUN_TAG_ROOT,
    SUN_TAG_SWAP,
    SUN_TAG_USR,
    fdisk_list,
    fdisk_rows,
    image_bytes,
    make_bsd_label,
    make_gpt,
    make_mbr,
    make_sun_label,
    sfdisk_image,
    sfdisk_json,
    write_image,
)

from core.bytesource import BytesSource, FileSource
from core.findings import Severity
from core.labels import (
    LABEL_CYLINDER0,
    LABEL_GPT_BACKUP,
    LABEL_PARTITION,
    LABEL_SECTOR0,
    VOLUME_HOLDS_LABEL,
    ByteRange,
    DiskLabel,
    LabelKind,
    extent_findings,
    read_label,
    volume_label_findings,
)

MiB = 1 << 20

# A Sun disk of 16 heads x 63 sectors x 100 cylinders: one cylinder is 1008 blocks.
SUN_HEADS, SUN_SPT, SUN_CYLINDERS = 16, 63, 100
CYLINDER = SUN_HEADS * SUN_SPT
SUN_SLICES = [
    (SUN_TAG_ROOT, 0, 0, 10 * CYLINDER),  # slice 0: root, from cylinder 0
    (SUN_TAG_SWAP, 0, 10, 20 * CYLINDER),  # slice 1: swap, cylinders 10-29
    (SUN_TAG_BACKUP, 1, 0, SUN_CYLINDERS * CYLINDER),  # slice 2: the whole disk
    (0, 0, 0, 0),
    (SUN_TAG_USR, 0, 30, 70 * CYLINDER),  # slice 4: usr, cylinders 30-99
]


def read_file_label(path: Path, sector_size: int = 512) -> DiskLabel | None:
    with FileSource(path) as source:
        return read_label(source, sector_size)


def codes(findings) -> list[str]:
    return [f.code for f in findings]


@pytest.fixture
def dos_image(tmp_path: Path) -> Path:
    """A 64 MiB image: two primaries, an extended partition with two logical ones."""
    return sfdisk_image(
        tmp_path / "dos.img",
        "label: dos\nsize=16M, type=83\nsize=8M, type=82\ntype=5\nsize=10M, type=83\ntype=83\n",
    )


@pytest.fixture
def gpt_image(tmp_path: Path) -> Path:
    """A 64 MiB GPT image with three partitions, the second in the middle of the disk."""
    return sfdisk_image(
        tmp_path / "gpt.img",
        'label: gpt\nsize=16M, type=L, name="root fs"\nsize=8M, type=S\nsize=8M, type=L\n',
    )


@pytest.fixture
def sun_image(tmp_path: Path) -> Path:
    label = make_sun_label(SUN_HEADS, SUN_SPT, SUN_CYLINDERS, SUN_SLICES)
    return write_image(tmp_path / "sun.img", (SUN_CYLINDERS + 2) * CYLINDER * 512, {0: label})


# --- DOS / MBR ---------------------------------------------------------------


def test_mbr_extended_and_logical_partitions_match_sfdisk(dos_image: Path) -> None:
    label = read_file_label(dos_image)
    expected = sfdisk_json(dos_image)

    assert label is not None and label.kind is LabelKind.MBR
    assert label.kind.value == expected["label"]
    got = [(p.number, p.start // 512, p.size // 512, p.type) for p in label.partitions]
    want = [
        (
            int(p["node"].removeprefix(str(dos_image))),
            p["start"],
            p["size"],
            f"0x{int(p['type'], 16):02x}",
        )
        for p in expected["partitions"]
    ]
    assert got == want
    assert [p.number for p in label.partitions if p.logical] == [5, 6]
    assert [p.number for p in label.partitions if p.extended] == [3]
    assert label.notes == ()


def test_mbr_label_ranges_are_sector_0_and_each_ebr(dos_image: Path) -> None:
    label = read_file_label(dos_image)
    assert label is not None
    extended = next(p for p in label.partitions if p.extended)
    # Each logical partition's EBR is the sector its data is offset from; sfdisk
    # leaves the first EBR at the start of the extended partition.
    with open(dos_image, "rb") as image:
        for ebr in label.label_ranges[1:]:
            image.seek(ebr.start)
            assert image.read(512)[510:] == b"\x55\xaa"
    assert label.label_ranges[0] == ByteRange(0, 512)
    assert label.label_ranges[1].start == extended.start
    assert len(label.label_ranges) == 3


def test_restoring_the_extended_partition_would_overwrite_its_ebrs(dos_image: Path) -> None:
    label = read_file_label(dos_image)
    assert label is not None
    extended = next(p for p in label.partitions if p.extended)

    findings = extent_findings(
        label, extended.start, extended.size, disk="/dev/loop3", volume="/dev/loop4"
    )

    assert codes(findings) == [LABEL_SECTOR0, LABEL_PARTITION]
    assert findings[0].severity is Severity.WARNING
    assert len(findings[0].details["ranges"]) == 2
    assert "--preserve-label" in findings[0].message
    assert findings[1].details["partition"] == 3


def test_logical_partition_matches_without_label_warnings(dos_image: Path) -> None:
    label = read_file_label(dos_image)
    assert label is not None
    sixth = next(p for p in label.partitions if p.number == 6)

    findings = extent_findings(label, sixth.start, sixth.size, disk="d", volume="v")

    assert codes(findings) == [LABEL_PARTITION]
    assert findings[0].message == "v is logical partition 6 of the DOS partition table on d"


def test_empty_dos_label_written_by_sfdisk_is_still_a_label(tmp_path: Path) -> None:
    image = sfdisk_image(tmp_path / "empty.img", "label: dos\n", size=8 * MiB)

    label = read_file_label(image)

    assert label is not None and label.kind is LabelKind.MBR
    assert label.partitions == ()
    assert label.label_ranges == (ByteRange(0, 512),)


def test_mbr_extended_chain_that_loops_is_cut_with_a_note() -> None:
    # Extended partition at LBA 100; its EBR links to itself (relative offset 0).
    mbr = make_mbr([(0, 0x83, 1, 50), (0, 0x05, 100, 400)])
    ebr = make_mbr([(0, 0x83, 10, 20), (0, 0x05, 0, 400)])
    source = BytesSource(image_bytes(512 * 512, {0: mbr, 100 * 512: ebr}))

    label = read_label(source)

    assert label is not None
    assert [p.number for p in label.partitions] == [1, 2, 5]
    assert any("loops back to LBA 100" in note for note in label.notes)


def test_mbr_extended_chain_stops_at_an_ebr_without_signature() -> None:
    mbr = make_mbr([(0, 0x0F, 100, 400)])
    ebr1 = make_mbr([(0, 0x83, 1, 20), (0, 0x05, 50, 100)])
    ebr2 = make_mbr([(0, 0x83, 1, 20)], signature=False)
    source = BytesSource(image_bytes(512 * 512, {0: mbr, 100 * 512: ebr1, 150 * 512: ebr2}))

    label = read_label(source)

    assert label is not None
    assert [(p.number, p.start // 512) for p in label.partitions] == [(1, 100), (5, 101)]
    assert any("LBA 150 has no 0x55AA signature" in note for note in label.notes)


def test_mbr_extended_chain_walk_is_bounded() -> None:
    # 300 EBRs, each linking to the next sector: longer than any real chain.
    chunks = {0: make_mbr([(0, 0x05, 1, 1000)])}
    for index in range(300):
        chunks[(1 + index) * 512] = make_mbr([(0, 0x83, 0, 1), (0, 0x05, index + 1, 1)])
    source = BytesSource(image_bytes(1024 * 512, chunks))

    label = read_label(source)

    assert label is not None
    assert sum(p.logical for p in label.partitions) == 256
    assert len(label.label_ranges) == 1 + 256
    assert any("longer than 256 EBRs" in note for note in label.notes)


def test_second_extended_partition_is_listed_but_not_walked() -> None:
    mbr = make_mbr([(0, 0x05, 10, 40), (0, 0x0F, 60, 40)])
    ebr = make_mbr([(0, 0x83, 1, 9)])
    source = BytesSource(image_bytes(128 * 512, {0: mbr, 10 * 512: ebr, 60 * 512: ebr}))

    label = read_label(source)

    assert label is not None
    assert [(p.number, p.extended, p.logical) for p in label.partitions] == [
        (1, True, False),
        (2, True, False),
        (5, False, True),
    ]
    assert any("second extended partition" in note for note in label.notes)


@pytest.mark.skipif(shutil.which("mkfs.vfat") is None, reason="needs mkfs.vfat (dosfstools)")
def test_fat_file_system_boot_sector_is_not_a_partition_table(tmp_path: Path) -> None:
    image = tmp_path / "fat.img"
    subprocess.run(["mkfs.vfat", "-C", str(image), "8192"], check=True, capture_output=True)
    with open(image, "rb") as fat:
        assert fat.read(512)[510:] == b"\x55\xaa"  # the trap: FAT ends sector 0 like an MBR

    assert read_file_label(image) is None
    with FileSource(image) as source:
        assert volume_label_findings(source, volume="/dev/loop5") == []


def test_sector_with_signature_but_bad_boot_flags_is_not_a_partition_table() -> None:
    sector = bytearray(make_mbr([(0, 0x83, 2048, 4096)]))
    sector[446] = 0x41  # boot indicator must be 0x00 or 0x80
    assert read_label(BytesSource(bytes(sector) + bytes(512))) is None


def test_signature_with_zero_entries_but_table_garbage_is_not_a_label() -> None:
    sector = bytearray(make_mbr([]))
    sector[450] = 0  # type 0: unused, but the table bytes are not all zero
    sector[454:458] = b"\x01\x02\x03\x04"
    assert read_label(BytesSource(bytes(sector))) is None


# --- GPT ---------------------------------------------------------------------


def test_gpt_partitions_match_sfdisk(gpt_image: Path) -> None:
    label = read_file_label(gpt_image)
    expected = sfdisk_json(gpt_image)

    assert label is not None and label.kind is LabelKind.GPT
    assert label.kind.value == expected["label"]
    assert label.disk_guid == expected["id"].lower()
    got = [(p.number, p.start // 512, p.size // 512, p.type, p.name) for p in label.partitions]
    want = [
        (
            int(p["node"].removeprefix(str(gpt_image))),
            p["start"],
            p["size"],
            p["type"].lower(),
            p.get("name", ""),
        )
        for p in expected["partitions"]
    ]
    assert got == want
    assert label.notes == ()


def test_gpt_label_ranges_cover_both_headers_and_entry_arrays(gpt_image: Path) -> None:
    label = read_file_label(gpt_image)
    assert label is not None
    size = gpt_image.stat().st_size
    entries = 128 * 128

    assert label.front_ranges == (
        ByteRange(0, 512),
        ByteRange(512, 1024),
        ByteRange(1024, 1024 + entries),
    )
    assert label.backup_ranges == (
        ByteRange(size - 512 - entries, size - 512),
        ByteRange(size - 512, size),
    )


def test_gpt_falls_back_to_backup_header_when_primary_is_corrupt(gpt_image: Path) -> None:
    healthy = read_file_label(gpt_image)
    with open(gpt_image, "r+b") as image:
        image.seek(512 + 60)  # inside the disk GUID of the primary header
        byte = image.read(1)
        image.seek(512 + 60)
        image.write(bytes([byte[0] ^ 0xFF]))
    last_lba = gpt_image.stat().st_size // 512 - 1

    label = read_file_label(gpt_image)

    assert label is not None and healthy is not None
    assert label.kind is LabelKind.GPT
    assert label.partitions == healthy.partitions
    assert label.label_ranges == healthy.label_ranges
    assert any(
        "primary GPT header is corrupt (CRC mismatch)" in note
        and f"backup header at LBA {last_lba}" in note
        for note in label.notes
    )
    # fdisk agrees that the table is still there, read from the backup.
    assert "Disklabel type: gpt" in fdisk_list(gpt_image)


def test_gpt_falls_back_to_backup_when_primary_entries_are_corrupt(gpt_image: Path) -> None:
    with open(gpt_image, "r+b") as image:
        image.seek(1024 + 40)  # the first entry's first LBA, covered by the entries CRC
        image.write(b"\x07")

    label = read_file_label(gpt_image)

    assert label is not None and label.kind is LabelKind.GPT
    assert label.partitions[0].start == 2048 * 512
    assert any("partition entries CRC mismatch" in note for note in label.notes)


def test_gpt_with_both_headers_corrupt_is_reported_as_its_protective_mbr(
    gpt_image: Path,
) -> None:
    last = gpt_image.stat().st_size - 512
    with open(gpt_image, "r+b") as image:
        for header in (512, last):
            image.seek(header + 60)
            image.write(b"\xa5\x5a")

    label = read_file_label(gpt_image)

    # Sector 0 is still a partition table a restore would overwrite, so it is not
    # dropped: the protective MBR is reported as what it is, with the reason.
    assert label is not None and label.kind is LabelKind.MBR
    assert [(p.number, p.type) for p in label.partitions] == [(1, "0xee")]
    assert label.label_ranges == (ByteRange(0, 512),)
    assert any("neither GPT header is valid" in note for note in label.notes)


def test_gpt_behind_a_hybrid_mbr_is_still_a_gpt_with_a_note(gpt_image: Path) -> None:
    with open(gpt_image, "r+b") as image:
        image.seek(446 + 16)  # entry 2 of the protective MBR mirrors GPT partition 1
        image.write(make_mbr([(0, 0x83, 2048, 32768)])[446:462])

    label = read_file_label(gpt_image)

    assert label is not None and label.kind is LabelKind.GPT
    assert any("hybrid MBR" in note for note in label.notes)


def test_gpt_with_missing_backup_is_read_from_primary_with_a_note(gpt_image: Path) -> None:
    with open(gpt_image, "rb") as image:
        head = image.read(4 * MiB)  # a truncated copy: the backup is gone

    label = read_label(BytesSource(head))

    assert label is not None and label.kind is LabelKind.GPT
    assert len(label.partitions) == 3
    assert any("backup GPT header" in n and "missing or corrupt" in n for n in label.notes)


def test_gpt_with_4096_byte_sectors_is_found_and_matches_fdisk(tmp_path: Path) -> None:
    sectors = 16384  # 64 MiB in 4 KiB sectors
    chunks = make_gpt(
        sectors,
        [(256, 2303, LINUX_FS_GUID, "data"), (2304, 4351, LINUX_FS_GUID, "")],
        sector_size=4096,
    )
    image = write_image(tmp_path / "gpt4k.img", sectors * 4096, chunks)

    label = read_file_label(image)

    assert label is not None and label.kind is LabelKind.GPT
    assert label.sector_size == 4096
    assert [(p.start, p.size, p.name) for p in label.partitions] == [
        (256 * 4096, 2048 * 4096, "data"),
        (2304 * 4096, 2048 * 4096, ""),
    ]
    assert any("4096-byte sectors" in note for note in label.notes)
    listing = fdisk_list(image, sector_size=4096)
    assert "Disklabel type: gpt" in listing
    assert [row[1:3] for row in fdisk_rows(listing)] == [["256", "2303"], ["2304", "4351"]]


def test_extent_of_a_gpt_partition_in_the_middle_only_names_the_partition(
    gpt_image: Path,
) -> None:
    label = read_file_label(gpt_image)
    assert label is not None
    middle = label.partitions[1]

    findings = extent_findings(
        label, middle.start, middle.size, disk="/dev/loop3", volume="/dev/loop4"
    )

    assert codes(findings) == [LABEL_PARTITION]
    assert findings[0].severity is Severity.INFO
    assert findings[0].message == "/dev/loop4 is partition 2 of the GPT on /dev/loop3"
    assert findings[0].details["partition"] == 2
    assert findings[0].details["start"] == middle.start


def test_extent_of_the_whole_gpt_disk_warns_about_both_ends(gpt_image: Path) -> None:
    label = read_file_label(gpt_image)
    assert label is not None
    size = gpt_image.stat().st_size

    findings = extent_findings(label, 0, size, disk="/dev/loop3", volume="/dev/loop3")

    assert codes(findings) == [LABEL_SECTOR0, LABEL_GPT_BACKUP, LABEL_PARTITION]
    assert [f.severity for f in findings] == [Severity.WARNING, Severity.WARNING, Severity.INFO]
    assert "protective MBR, primary GPT header and primary GPT entries" in findings[0].message
    assert findings[1].details["ranges"][-1] == [size - 512, size]
    assert findings[2].details["whole_disk"] is True


def test_extent_inside_a_partition_says_it_matches_none(gpt_image: Path) -> None:
    label = read_file_label(gpt_image)
    assert label is not None
    first = label.partitions[0]

    findings = extent_findings(label, first.start + MiB, MiB, disk="d", volume="v")

    assert codes(findings) == [LABEL_PARTITION]
    assert findings[0].message == (
        'v does not match any partition of the GPT on d; it lies inside partition 1 ("root fs")'
    )


# --- Sun VTOC ----------------------------------------------------------------


def test_sun_label_matches_fdisk(sun_image: Path) -> None:
    label = read_file_label(sun_image)
    listing = fdisk_list(sun_image)

    assert label is not None and label.kind is LabelKind.SUN
    assert f"Disklabel type: {label.kind.value}" in listing
    assert (label.heads, label.sectors_per_track, label.cylinders) == (16, 63, 100)
    assert f"Geometry: {label.heads} heads, {label.sectors_per_track} sectors/track" in listing
    # fdisk names slice N as IMAGE<N+1> and prints start and end sectors.
    fdisk_slices = {
        int(row[0].removeprefix(str(sun_image))) - 1: (int(row[1]), int(row[2]))
        for row in fdisk_rows(listing)
    }
    ours = {p.number: (p.start // 512, (p.end - 1) // 512) for p in label.partitions}
    assert ours == fdisk_slices
    assert [(p.number, p.type, p.start_cylinder) for p in label.partitions] == [
        (0, "root", 0),
        (1, "swap", 10),
        (2, "backup", 0),
        (4, "usr", 30),
    ]
    assert label.cylinder0 == ByteRange(0, CYLINDER * 512)
    assert label.label_ranges == (ByteRange(0, 512),)
    assert label.notes == ()


def test_cylinder0_warning_only_for_the_slice_that_starts_at_cylinder_0(sun_image: Path) -> None:
    label = read_file_label(sun_image)
    assert label is not None
    root, swap = label.partitions[0], label.partitions[1]

    at_zero = extent_findings(label, root.start, root.size, disk="/dev/loop3", volume="/dev/loop4")
    elsewhere = extent_findings(
        label, swap.start, swap.size, disk="/dev/loop3", volume="/dev/loop5"
    )

    assert codes(at_zero) == [LABEL_CYLINDER0, LABEL_PARTITION]
    assert at_zero[0].severity is Severity.WARNING
    assert at_zero[0].message == (
        "/dev/loop4 is slice 0 (root) of the Sun VTOC on /dev/loop3 and starts at cylinder 0: "
        "backing it up is allowed, but restoring it overwrites the disk's VTOC "
        "(restore with --preserve-label)"
    )
    assert at_zero[0].details["partition"] == 0
    assert codes(elsewhere) == [LABEL_PARTITION]
    assert elsewhere[0].message == "/dev/loop5 is slice 1 (swap) of the Sun VTOC on /dev/loop3"


def test_sun_backup_slice_covers_cylinder_0(sun_image: Path) -> None:
    label = read_file_label(sun_image)
    assert label is not None
    backup = next(p for p in label.partitions if p.type == "backup")

    findings = extent_findings(label, backup.start, backup.size, disk="d", volume="v")

    assert codes(findings) == [LABEL_CYLINDER0, LABEL_PARTITION]
    assert "v is slice 2 (backup) of the Sun VTOC on d and starts at cylinder 0" in (
        findings[0].message
    )


def test_sun_label_with_bad_checksum_is_still_a_label_with_a_note() -> None:
    sector = make_sun_label(SUN_HEADS, SUN_SPT, SUN_CYLINDERS, SUN_SLICES, checksum=False)

    label = read_label(BytesSource(sector + bytes(4096)))

    assert label is not None and label.kind is LabelKind.SUN
    assert len(label.partitions) == 4
    assert any("checksum is wrong" in note for note in label.notes)


def test_mbr_whose_fourth_entry_ends_in_the_sun_magic_is_an_mbr() -> None:
    # Entry 4's sector count 0xDABE0000 puts the bytes 0xDA 0xBE at offset 508.
    sector = make_mbr(
        [(0, 0x83, 2048, 4096), (0, 0, 0, 0), (0, 0, 0, 0), (0, 0x83, 8192, 0xBEDA0000)]
    )
    assert sector[508:510] == b"\xda\xbe"

    label = read_label(BytesSource(sector))

    assert label is not None and label.kind is LabelKind.MBR


def test_sun_label_with_zero_geometry_keeps_only_cylinder_0_slices() -> None:
    sector = make_sun_label(0, SUN_SPT, SUN_CYLINDERS, SUN_SLICES)

    label = read_label(BytesSource(sector))

    assert label is not None and label.cylinder0 is None
    assert [p.number for p in label.partitions] == [0, 2]
    assert any("cannot be placed" in note for note in label.notes)


# --- BSD disklabel -----------------------------------------------------------

BSD_PARTITIONS = [
    (63, 16000, BSD_FS_BSDFFS),  # a
    (16063, 8000, BSD_FS_SWAP),  # b
    (0, 100000, BSD_FS_UNUSED),  # c: the raw partition, the whole disk
    (24063, 20000, BSD_FS_BSDFFS),  # d
]


def test_bsd_label_in_sector_1_is_parsed_and_matches_fdisk(tmp_path: Path) -> None:
    image = write_image(tmp_path / "bsd.img", 100000 * 512, {512: make_bsd_label(BSD_PARTITIONS)})

    label = read_file_label(image)
    listing = fdisk_list(image)

    assert label is not None and label.kind is LabelKind.BSD
    assert f"Disklabel type: {label.kind.value}" in listing
    ours = [
        (chr(ord("a") + p.number), p.start // 512, (p.end - 1) // 512, p.type)
        for p in label.partitions
    ]
    theirs = [(row[0], int(row[1]), int(row[2]), row[5]) for row in fdisk_rows(listing)]
    assert ours == theirs
    assert label.label_ranges == (ByteRange(512, 1024),)
    assert label.notes == ()


def test_bsd_label_at_byte_64_is_found() -> None:
    source = BytesSource(image_bytes(8192, {64: make_bsd_label(BSD_PARTITIONS)}))

    label = read_label(source)

    assert label is not None and label.kind is LabelKind.BSD
    assert label.label_ranges == (ByteRange(0, 512),)
    assert len(label.partitions) == 4


def test_bsd_label_claiming_too_many_partitions_is_capped_with_a_note() -> None:
    sector = make_bsd_label(BSD_PARTITIONS, npartitions=0xFFFF)

    label = read_label(BytesSource(bytes(512) + sector))

    assert label is not None
    assert len(label.partitions) == 4
    assert any("claims 65535 partitions" in note for note in label.notes)


def test_extent_over_the_bsd_label_sector_warns(tmp_path: Path) -> None:
    source = BytesSource(image_bytes(100000 * 512, {512: make_bsd_label(BSD_PARTITIONS)}))
    label = read_label(source)
    assert label is not None

    raw = extent_findings(label, 0, 100000 * 512, disk="/dev/loop3", volume="/dev/loop4")
    first = extent_findings(label, 63 * 512, 16000 * 512, disk="/dev/loop3", volume="/dev/loop5")

    assert codes(raw) == [LABEL_SECTOR0, LABEL_PARTITION]
    assert raw[1].message == "/dev/loop4 is partition c (unused) of the BSD disklabel on /dev/loop3"
    assert codes(first) == [LABEL_PARTITION]


# --- volumes that carry a label ----------------------------------------------


def test_volume_that_begins_with_a_label_is_flagged(sun_image: Path) -> None:
    with FileSource(sun_image) as source:
        findings = volume_label_findings(source, volume="/dev/loop4")

    assert codes(findings) == [VOLUME_HOLDS_LABEL]
    assert findings[0].severity is Severity.WARNING
    assert findings[0].message == (
        "/dev/loop4 begins with a disk label (Sun VTOC): restoring its image writes that label "
        "to the destination (use --preserve-label to keep the destination's)"
    )
    assert findings[0].details["label"] == "sun"


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="needs mkfs.ext4")
def test_volume_holding_a_file_system_is_not_flagged(tmp_path: Path) -> None:
    image = tmp_path / "ext4.img"
    with open(image, "wb") as volume:
        volume.truncate(16 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)

    with FileSource(image) as source:
        assert volume_label_findings(source, volume="/dev/loop5") == []


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="needs mkfs.ext4")
def test_boot_sector_on_an_ext4_volume_is_not_an_empty_partition_table(tmp_path: Path) -> None:
    image = tmp_path / "ext4-vbr.img"
    with open(image, "wb") as volume:
        volume.truncate(16 * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    # A boot loader installed into the volume (extlinux, GRUB with --force) leaves a
    # signed sector 0 with an all-zero table: an empty MBR to a naive reader.
    with open(image, "r+b") as volume:
        volume.seek(510)
        volume.write(b"\x55\xaa")

    assert read_file_label(image) is None


def test_gpt_partition_volume_is_not_flagged(gpt_image: Path) -> None:
    label = read_file_label(gpt_image)
    assert label is not None
    middle = label.partitions[1]
    with open(gpt_image, "rb") as image:
        image.seek(middle.start)
        volume = image.read(middle.size)

    assert volume_label_findings(BytesSource(volume), volume="/dev/loop4") == []


# --- edges -------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 511, 512, 4096])
def test_zeros_are_not_a_label(size: int) -> None:
    assert read_label(BytesSource(bytes(size))) is None


def test_read_label_refuses_a_sector_size_that_is_not_a_power_of_two() -> None:
    with pytest.raises(ValueError, match="sector size 520"):
        read_label(BytesSource(bytes(1024)), 520)


def test_byte_range_overlap_is_half_open() -> None:
    sector0 = ByteRange(0, 512)
    assert sector0.overlaps(511, 1024)
    assert not sector0.overlaps(512, 1024)
    assert not sector0.overlaps(0, 0)
    assert ByteRange(0, 512, "MBR") == ByteRange(0, 512, "protective MBR")


def test_partition_start_fields_are_little_endian_as_sfdisk_wrote_them(dos_image: Path) -> None:
    # Guards the struct layout against sfdisk's own bytes, not against labelkit's.
    with open(dos_image, "rb") as image:
        sector = image.read(512)
    first_lba = struct.unpack_from("<I", sector, 446 + 8)[0]
    label = read_file_label(dos_image)
    assert label is not None
    assert label.partitions[0].start == first_lba * 512
