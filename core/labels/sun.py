"""Sun SMI/VTOC disk labels (the SPARC layout: big-endian, in sector 0).

A label is recognised by the magic 0xDABE at byte 508. A bad checksum or a missing
VTOC sanity word still gives a Sun label, with a note, because the sector is still
the disk's label and a restore over it still overwrites it (fdisk reads it too).
Slices count 512-byte blocks and start on a cylinder boundary, so the label's
geometry (heads x sectors per track) turns a start cylinder into a byte offset.

The x86 Solaris VTOC (little-endian, inside an fdisk partition) is not read here.
"""

from __future__ import annotations

import struct

from core.bytesource import ByteSource
from core.labels.model import ByteRange, DiskLabel, LabelKind, LabelPartition
from core.labels.sectors import read_bytes

MAGIC = 0xDABE
VTOC_SANITY = 0x600DDEEE
BLOCK = 512
"""Sun labels count in 512-byte blocks whatever the device's sector size."""
SLICES = 8

TAG_NAMES = {
    0x00: "unassigned",
    0x01: "boot",
    0x02: "root",
    0x03: "swap",
    0x04: "usr",
    0x05: "backup",
    0x06: "stand",
    0x07: "var",
    0x08: "home",
    0x09: "alternates",
    0x0A: "cache",
    0x0B: "reserved",
    0x0C: "system",
    0x82: "linux-swap",
    0x83: "linux",
    0x8E: "linux-lvm",
    0xFD: "linux-raid",
}
"""Solaris format(1M) tag names, plus the tags Linux's fdisk writes."""


def tag_name(tag: int) -> str:
    """Return the name of a slice tag ("backup"), or its hex value when it has none."""
    return TAG_NAMES.get(tag, f"0x{tag:02x}")


def checksum_ok(sector: bytes) -> bool:
    """Return True when the XOR of the 256 big-endian 16-bit words of ``sector`` is zero."""
    value = 0
    for (word,) in struct.iter_unpack(">H", sector[:BLOCK]):
        value ^= word
    return value == 0


def parse_sun(source: ByteSource) -> DiskLabel | None:
    """Return the Sun label in sector 0 of ``source``, or None when there is none."""
    sector = read_bytes(source, 0, BLOCK)
    if len(sector) < BLOCK or struct.unpack_from(">H", sector, 508)[0] != MAGIC:
        return None
    notes: list[str] = []
    if not checksum_ok(sector):
        if sector[510:512] == b"\x55\xaa":
            # Bytes 508-509 are also the end of an MBR's fourth entry; with a wrong
            # checksum and a boot signature where the checksum goes, it is an MBR.
            return None
        notes.append("the Sun label's checksum is wrong; its fields are used as they are")
    if struct.unpack_from(">I", sector, 188)[0] != VTOC_SANITY:
        notes.append("the VTOC sanity word is missing (an old SunOS label?); slice tags may be 0")
    data_cylinders, _alt, heads, sectors_per_track = struct.unpack_from(">4H", sector, 432)
    cylinder_bytes = heads * sectors_per_track * BLOCK
    if not cylinder_bytes:
        notes.append(
            f"the label's geometry has {heads} heads and {sectors_per_track} sectors per "
            "track; slices that do not start at cylinder 0 cannot be placed and are left out"
        )

    partitions: list[LabelPartition] = []
    for slice_number in range(SLICES):
        tag, _flag = struct.unpack_from(">HH", sector, 142 + 4 * slice_number)
        start_cylinder, blocks = struct.unpack_from(">II", sector, 444 + 8 * slice_number)
        if not blocks or (start_cylinder and not cylinder_bytes):
            continue
        partitions.append(
            LabelPartition(
                number=slice_number,
                start=start_cylinder * cylinder_bytes,
                size=blocks * BLOCK,
                type=tag_name(tag),
                start_cylinder=start_cylinder,
            )
        )
    return DiskLabel(
        kind=LabelKind.SUN,
        sector_size=BLOCK,
        disk_size=source.size,
        partitions=tuple(partitions),
        label_ranges=(ByteRange(0, BLOCK, "Sun VTOC in sector 0"),),
        cylinder0=ByteRange(0, cylinder_bytes, "cylinder 0") if cylinder_bytes else None,
        notes=tuple(notes),
        heads=heads,
        sectors_per_track=sectors_per_track,
        cylinders=data_cylinders,
    )
