"""BSD disklabels (struct disklabel, little-endian, as on i386/amd64 and alpha).

The label is looked for at sector 1 (the i386 layout), at byte 512, at byte 64 (the
alpha layout, inside sector 0) and at byte 0, in that order. Both magic words must
be 0x82564557. A bad checksum still gives a label, with a note.

Partition offsets are taken as absolute disk sectors, the FreeBSD and NetBSD
convention (the raw partition "c" starts where the slice starts), so the byte
starts are only right when ``source`` is the whole disk. A caller that reads a
label from inside an MBR slice must keep that in mind.
"""

from __future__ import annotations

import struct

from core.bytesource import ByteSource
from core.labels.model import ByteRange, DiskLabel, LabelKind, LabelPartition
from core.labels.sectors import SECTOR_SIZES, read_bytes, sectors_for

MAGIC = 0x82564557
MAX_PARTITIONS = 16
"""The most partitions read; BSD_MAXPARTITIONS in util-linux, MAXPARTITIONS in OpenBSD."""
HEADER_SIZE = 148
PARTITION_SIZE = 16
MAX_LABEL_SIZE = HEADER_SIZE + MAX_PARTITIONS * PARTITION_SIZE

FSTYPE_NAMES = {
    0: "unused",
    1: "swap",
    2: "Version 6",
    3: "Version 7",
    4: "System V",
    5: "4.1BSD",
    6: "Eighth Edition",
    7: "4.2BSD",
    8: "MS-DOS",
    9: "4.4LFS",
    10: "unknown",
    11: "HPFS",
    12: "ISO-9660",
    13: "boot",
    14: "ADOS",
    15: "HFS",
    16: "AdvFS",
}
"""File-system type names as util-linux's fdisk prints them."""


def fstype_name(fstype: int) -> str:
    """Return the name of a BSD file-system type ("4.2BSD"), or its hex value."""
    return FSTYPE_NAMES.get(fstype, f"0x{fstype:02x}")


def label_offsets(sector_size: int) -> tuple[int, ...]:
    """Return the byte offsets a BSD label is looked for at, in order."""
    return tuple(dict.fromkeys((sector_size, 512, 64, 0)))


def _checksum(raw: bytes) -> int:
    value = 0
    for (word,) in struct.iter_unpack("<H", raw[: len(raw) & ~1]):
        value ^= word
    return value


def parse_bsd(source: ByteSource, sector_size: int) -> DiskLabel | None:
    """Return the BSD disklabel near the start of ``source``, or None when there is none."""
    for offset in label_offsets(sector_size):
        raw = read_bytes(source, offset, MAX_LABEL_SIZE)
        if len(raw) < HEADER_SIZE:
            continue
        if struct.unpack_from("<I", raw, 0)[0] != MAGIC:
            continue
        if struct.unpack_from("<I", raw, 132)[0] != MAGIC:
            continue
        return _parse_at(source, raw, offset, sector_size)
    return None


def _parse_at(source: ByteSource, raw: bytes, offset: int, sector_size: int) -> DiskLabel:
    notes: list[str] = []
    secsize = struct.unpack_from("<I", raw, 40)[0]
    if secsize not in SECTOR_SIZES:
        notes.append(
            f"the label's sector size {secsize} is invalid; {sector_size}-byte sectors are used"
        )
        secsize = sector_size
    count = struct.unpack_from("<H", raw, 138)[0]
    if count > MAX_PARTITIONS:
        notes.append(
            f"the label claims {count} partitions; only the first {MAX_PARTITIONS} are read"
        )
    # What there is room for in what was read: a label cut short by the end of the
    # disk has fewer partitions, never an out-of-range read.
    count = min(count, MAX_PARTITIONS, (len(raw) - HEADER_SIZE) // PARTITION_SIZE)
    label_size = HEADER_SIZE + count * PARTITION_SIZE
    if _checksum(raw[:label_size]) != 0:
        notes.append("the BSD label's checksum is wrong; its fields are used as they are")

    partitions: list[LabelPartition] = []
    for index in range(count):
        size, start, _fsize, fstype = struct.unpack_from(
            "<IIIB", raw, HEADER_SIZE + index * PARTITION_SIZE
        )
        if not size:
            continue
        partitions.append(
            LabelPartition(
                number=index,
                start=start * secsize,
                size=size * secsize,
                type=fstype_name(fstype),
            )
        )
    first_sector = offset // sector_size
    last_sector = sectors_for(offset + label_size, sector_size)
    return DiskLabel(
        kind=LabelKind.BSD,
        sector_size=secsize,
        disk_size=source.size,
        partitions=tuple(partitions),
        label_ranges=(
            ByteRange(
                first_sector * sector_size,
                last_sector * sector_size,
                f"BSD disklabel at byte {offset}",
            ),
        ),
        notes=tuple(notes),
    )
