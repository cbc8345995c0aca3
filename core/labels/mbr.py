"""DOS/MBR partition tables: the four primary entries and the extended partition's EBR chain.

Sector 0 ending in 0x55 0xAA is not enough to call it a partition table: the boot
sector of a FAT, exFAT or NTFS file system ends the same way. The rules, in order:

1. The sector must end in 0x55 0xAA.
2. A file-system boot sector (an NTFS or exFAT OEM name, a FAT type string, or a
   plausible FAT BIOS parameter block) is not a partition table, whatever its last
   64 bytes say. libblkid applies the same rule ("probably FAT -- ignore").
3. Every entry's boot indicator must be 0x00 or 0x80. Boot code or text where the
   table should be almost never passes this, so a non-table is refused here.
4. An entry is in use when its type and its sector count are both non-zero.
5. With no entry in use, the sector is a partition table only if all 64 table bytes
   are zero, which is what fdisk and sfdisk write for an empty "dos" label, and no
   ext2/3/4 superblock, btrfs superblock or LVM PV label follows it: then it is that
   volume's boot sector (libblkid makes the same exception for LVM).

Only the first extended partition (type 0x05, 0x0F or 0x85) is walked, as fdisk
does; each EBR's link is relative to the start of that extended partition and each
logical partition's start to its own EBR. The walk stops at a missing signature,
at an EBR it has already visited, or after :data:`MAX_EBRS` EBRs, with a note.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from core.bytesource import ByteSource
from core.labels.model import ByteRange, DiskLabel, LabelKind, LabelPartition
from core.labels.sectors import read_bytes, sector_range

BOOT_SIGNATURE = b"\x55\xaa"
TABLE_OFFSET = 446
ENTRY_SIZE = 16
EXTENDED_TYPES = frozenset({0x05, 0x0F, 0x85})
PROTECTIVE_TYPE = 0xEE
MAX_EBRS = 256
"""How many EBRs the chain walk follows; Linux numbers at most 256 partitions per disk."""

_ENTRY = struct.Struct("<B3sB3sII")


class MbrEntry(NamedTuple):
    """One 16-byte partition entry as stored: boot flag, type, LBA start and count."""

    boot: int
    type: int
    lba: int
    sectors: int

    @property
    def used(self) -> bool:
        """True when the entry describes a partition (non-zero type and size)."""
        return self.type != 0 and self.sectors != 0


def entries(sector: bytes) -> list[MbrEntry]:
    """Return the four entries of an MBR or EBR sector (at least 512 bytes long)."""
    result = []
    for i in range(4):
        boot, _chs, ptype, _chs_end, lba, count = _ENTRY.unpack_from(
            sector, TABLE_OFFSET + i * ENTRY_SIZE
        )
        result.append(MbrEntry(boot, ptype, lba, count))
    return result


def has_boot_signature(sector: bytes) -> bool:
    """Return True when ``sector`` is at least 512 bytes and ends its first 512 in 0x55AA."""
    return len(sector) >= 512 and sector[510:512] == BOOT_SIGNATURE


def protective_entry(sector: bytes) -> MbrEntry | None:
    """Return the first 0xEE entry of a signed MBR sector (a GPT protective MBR), or None."""
    if not has_boot_signature(sector):
        return None
    return next((e for e in entries(sector) if e.type == PROTECTIVE_TYPE), None)


def is_filesystem_boot_sector(sector: bytes) -> bool:
    """Return True when ``sector`` looks like the boot sector of FAT, exFAT or NTFS."""
    if sector[3:11] in (b"NTFS    ", b"EXFAT   "):
        return True
    if sector[54:57] == b"FAT" or sector[82:87] == b"FAT32":
        return True
    return _has_fat_bpb(sector)


def _has_fat_bpb(sector: bytes) -> bool:
    # Old FAT boot sectors may lack the type strings; their BIOS parameter block is
    # still recognisable, and a real MBR's boot code does not satisfy all of it.
    jump = sector[0] == 0xE9 or (sector[0] == 0xEB and sector[2] == 0x90)
    bytes_per_sector = int.from_bytes(sector[11:13], "little")
    sectors_per_cluster = sector[13]
    reserved = int.from_bytes(sector[14:16], "little")
    fats = sector[16]
    media = sector[21]
    return (
        jump
        and bytes_per_sector in (512, 1024, 2048, 4096)
        and sectors_per_cluster in (1, 2, 4, 8, 16, 32, 64, 128)
        and reserved > 0
        and fats in (1, 2)
        and (media == 0xF0 or media >= 0xF8)
    )


def looks_like_partition_table(sector: bytes) -> bool:
    """Return True when a sector passes the module's rules 1-4 for a DOS partition table,
    or is an empty table (rule 5 without the look at what follows it)."""
    if not has_boot_signature(sector) or is_filesystem_boot_sector(sector):
        return False
    table = entries(sector)
    if any(e.boot not in (0x00, 0x80) for e in table):
        return False
    if any(e.used for e in table):
        return True
    return not any(sector[TABLE_OFFSET : TABLE_OFFSET + 4 * ENTRY_SIZE])


def _volume_header_follows(source: ByteSource) -> bool:
    """Return True when an ext2/3/4 or btrfs superblock or an LVM PV label follows sector 0."""
    head = read_bytes(source, 0, 2048)
    if head[1080:1082] == b"\x53\xef":  # ext2/3/4 s_magic, superblock at byte 1024
        return True
    if any(head[at : at + 8] == b"LABELONE" for at in (512, 1024, 1536)):
        return True
    return read_bytes(source, 0x10040, 8) == b"_BHRfS_M"


def parse_mbr(
    source: ByteSource,
    sector_size: int,
    *,
    notes: tuple[str, ...] = (),
    accept_protective: bool = False,
) -> DiskLabel | None:
    """Return the DOS partition table at the start of ``source``, or None when there is none.

    Args:
        source: the disk (or volume) to read.
        sector_size: the logical sector size the table's LBAs count in.
        notes: notes to put first, from a caller that already looked at the disk.
        accept_protective: also return a table holding a 0xEE (GPT protective) entry;
            without it such a table is left to the GPT parser and None is returned.
    """
    sector0 = read_bytes(source, 0, 512)
    if not looks_like_partition_table(sector0):
        return None
    table = entries(sector0)
    if not accept_protective and any(e.type == PROTECTIVE_TYPE for e in table):
        return None
    if not any(e.used for e in table) and _volume_header_follows(source):
        return None

    found_notes = list(notes)
    partitions: list[LabelPartition] = []
    ranges = [sector_range(0, 1, sector_size, "MBR in sector 0")]
    extended: MbrEntry | None = None
    for number, entry in enumerate(table, start=1):
        if not entry.used:
            continue
        is_extended = entry.type in EXTENDED_TYPES
        partitions.append(_partition(number, entry.lba, entry, sector_size, extended=is_extended))
        if is_extended:
            if extended is None:
                extended = entry
            else:
                found_notes.append(
                    f"partition {number} is a second extended partition; "
                    "its logical partitions are not read (fdisk ignores it too)"
                )
    if extended is not None:
        logical, ebr_ranges, chain_notes = _walk_extended(source, extended, sector_size)
        partitions.extend(logical)
        ranges.extend(ebr_ranges)
        found_notes.extend(chain_notes)

    beyond = [p.number for p in partitions if p.end > source.size]
    if beyond:
        found_notes.append(
            f"partition(s) {', '.join(map(str, beyond))} extend past the end of the disk "
            f"({source.size} bytes)"
        )
    return DiskLabel(
        kind=LabelKind.MBR,
        sector_size=sector_size,
        disk_size=source.size,
        partitions=tuple(partitions),
        label_ranges=tuple(ranges),
        notes=tuple(found_notes),
    )


def _partition(
    number: int,
    lba: int,
    entry: MbrEntry,
    sector_size: int,
    *,
    extended: bool = False,
    logical: bool = False,
) -> LabelPartition:
    return LabelPartition(
        number=number,
        start=lba * sector_size,
        size=entry.sectors * sector_size,
        type=f"0x{entry.type:02x}",
        logical=logical,
        extended=extended,
    )


def _walk_extended(
    source: ByteSource, extended: MbrEntry, sector_size: int
) -> tuple[list[LabelPartition], list[ByteRange], list[str]]:
    """Return the logical partitions, the EBR ranges and notes from the EBR chain."""
    logical: list[LabelPartition] = []
    ranges: list[ByteRange] = []
    notes: list[str] = []
    visited: set[int] = set()
    ebr_lba = extended.lba
    while True:
        if ebr_lba in visited:
            notes.append(
                f"the EBR chain loops back to LBA {ebr_lba}; logical partitions after it "
                "are not read"
            )
            break
        if len(visited) >= MAX_EBRS:
            notes.append(f"the EBR chain is longer than {MAX_EBRS} EBRs; the rest is not read")
            break
        visited.add(ebr_lba)
        sector = read_bytes(source, ebr_lba * sector_size, 512)
        if not has_boot_signature(sector):
            notes.append(
                f"the EBR at LBA {ebr_lba} has no 0x55AA signature; logical partitions "
                "from there on are not read"
            )
            break
        ranges.append(sector_range(ebr_lba, 1, sector_size, f"EBR at LBA {ebr_lba}"))
        # As fdisk: in an EBR the entry of an extended type is the link to the next
        # EBR and the first other used entry is the logical partition.
        link: MbrEntry | None = None
        data: MbrEntry | None = None
        for entry in entries(sector):
            if entry.type in EXTENDED_TYPES and entry.sectors:
                link = link or entry
            elif entry.used:
                data = data or entry
        if data is not None:
            logical.append(
                _partition(5 + len(logical), ebr_lba + data.lba, data, sector_size, logical=True)
            )
        if link is None:
            break
        ebr_lba = extended.lba + link.lba
    return logical, ranges, notes
