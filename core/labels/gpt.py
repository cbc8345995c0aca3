"""GUID partition tables: protective MBR, primary and backup headers and entry arrays.

A header is valid when its signature, size, own LBA, header CRC32 and entry-array
CRC32 all check out and its entry array is at most :data:`MAX_ENTRY_BYTES`. The
primary header at LBA 1 is preferred; when it is not valid the backup header is
tried at the primary's alternate LBA (when the primary still carries its signature
and that LBA lies on the disk) and then at the last LBA of the disk, as fdisk does.

When neither header is valid, there is no GPT: :func:`parse_gpt` returns None and
the caller reports the protective MBR as a DOS label with a note, because a restore
over sector 0 still destroys it.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass

from core.bytesource import ByteSource
from core.labels import mbr
from core.labels.model import ByteRange, DiskLabel, LabelKind, LabelPartition
from core.labels.sectors import read_bytes, sector_range, sectors_for

SIGNATURE = b"EFI PART"
HEADER_MIN_SIZE = 92
MAX_ENTRY_BYTES = 1 << 20
"""Largest entry array read; the standard array is 16 KiB (128 entries of 128 bytes)."""
MAX_ENTRY_SIZE = 4096
STANDARD_ENTRY_BYTES = 128 * 128

_HEADER = struct.Struct("<8sIII4xQQQQ16sQIII")
_ENTRY = struct.Struct("<16s16sQQQ72s")
_ZERO_GUID = bytes(16)


@dataclass(frozen=True)
class GptHeader:
    """The fields of a GPT header this package uses, as read from the disk."""

    my_lba: int
    alternate_lba: int
    first_usable: int
    last_usable: int
    disk_guid: str
    entries_lba: int
    entry_count: int
    entry_size: int
    entries: bytes
    """The entry array, already checked against the header's CRC32."""

    @property
    def entry_bytes(self) -> int:
        """The size of the entry array in bytes."""
        return self.entry_count * self.entry_size


def _guid(raw: bytes) -> str:
    return str(uuid.UUID(bytes_le=raw))


def read_header(source: ByteSource, lba: int, sector_size: int) -> GptHeader | str:
    """Return the valid GPT header at ``lba`` with its entries, or why it is not valid."""
    raw = read_bytes(source, lba * sector_size, sector_size)
    if len(raw) < HEADER_MIN_SIZE or raw[:8] != SIGNATURE:
        return "no GPT signature"
    (
        _sig,
        _revision,
        header_size,
        header_crc,
        my_lba,
        alternate_lba,
        first_usable,
        last_usable,
        disk_guid,
        entries_lba,
        entry_count,
        entry_size,
        entries_crc,
    ) = _HEADER.unpack_from(raw)
    if not HEADER_MIN_SIZE <= header_size <= len(raw):
        return f"header size {header_size} is out of range"
    # The CRC covers header_size bytes with the CRC field itself zeroed.
    zeroed = raw[:16] + bytes(4) + raw[20:header_size]
    if zlib.crc32(zeroed) != header_crc:
        return "CRC mismatch"
    if my_lba != lba:
        return f"header says it is at LBA {my_lba}"
    if entry_size < 128 or entry_size % 8 or entry_size > MAX_ENTRY_SIZE:
        return f"partition entry size {entry_size} is invalid"
    if entry_count * entry_size > MAX_ENTRY_BYTES:
        return f"partition entry array of {entry_count} x {entry_size} bytes is too large"
    array = read_bytes(source, entries_lba * sector_size, entry_count * entry_size)
    if len(array) != entry_count * entry_size:
        return f"partition entries at LBA {entries_lba} lie past the end of the disk"
    if zlib.crc32(array) != entries_crc:
        return "partition entries CRC mismatch"
    return GptHeader(
        my_lba=my_lba,
        alternate_lba=alternate_lba,
        first_usable=first_usable,
        last_usable=last_usable,
        disk_guid=_guid(disk_guid),
        entries_lba=entries_lba,
        entry_count=entry_count,
        entry_size=entry_size,
        entries=array,
    )


def _alternate_from_damaged_primary(source: ByteSource, sector_size: int) -> int | None:
    """Return the alternate LBA a damaged primary header names, if it is on the disk."""
    raw = read_bytes(source, sector_size, HEADER_MIN_SIZE)
    if len(raw) < HEADER_MIN_SIZE or raw[:8] != SIGNATURE:
        return None
    alternate = _HEADER.unpack_from(raw)[5]
    last = source.size // sector_size - 1
    return alternate if 1 < alternate <= last else None


def parse_gpt(source: ByteSource, sector_size: int) -> DiskLabel | None:
    """Return the GPT on ``source`` read in ``sector_size`` sectors, or None when there is none.

    None also means the protective MBR is there but neither header is valid; the
    caller decides what to report then (see the module docstring).
    """
    sector0 = read_bytes(source, 0, 512)
    if mbr.protective_entry(sector0) is None:
        return None
    notes: list[str] = []
    if any(e.used and e.type != mbr.PROTECTIVE_TYPE for e in mbr.entries(sector0)):
        notes.append("the protective MBR is a hybrid MBR: it also lists MBR partitions")

    last_lba = source.size // sector_size - 1
    primary = read_header(source, 1, sector_size)
    backup: GptHeader | str
    if isinstance(primary, GptHeader):
        header = primary
        backup = (
            read_header(source, primary.alternate_lba, sector_size)
            if primary.alternate_lba > 1
            else "it would sit on top of the primary"
        )
        if not isinstance(backup, GptHeader):
            notes.append(
                f"the backup GPT header at LBA {primary.alternate_lba} is missing or corrupt "
                f"({backup}); the primary header is used"
            )
    else:
        candidates = [_alternate_from_damaged_primary(source, sector_size), last_lba]
        tried: list[int] = []
        for lba in candidates:
            if lba is None or lba < 2 or lba in tried:
                continue
            tried.append(lba)
            backup = read_header(source, lba, sector_size)
            if isinstance(backup, GptHeader):
                break
        else:
            return None
        header = backup
        notes.append(
            f"the primary GPT header is corrupt ({primary}); "
            f"using the backup header at LBA {backup.my_lba}"
        )

    backup_lba = header.alternate_lba if header.my_lba == 1 else header.my_lba
    if backup_lba != last_lba:
        notes.append(
            f"the backup GPT header is at LBA {backup_lba}, not at the last LBA {last_lba} "
            "(was the disk resized or the image truncated?)"
        )
    partitions, entry_notes = _partitions(header, sector_size)
    notes.extend(entry_notes)
    front, tail = _ranges(header, backup, last_lba, sector_size)
    return DiskLabel(
        kind=LabelKind.GPT,
        sector_size=sector_size,
        disk_size=source.size,
        partitions=tuple(partitions),
        label_ranges=front + tail,
        backup_ranges=tail,
        notes=tuple(notes),
        disk_guid=header.disk_guid,
    )


def _ranges(
    header: GptHeader, backup: GptHeader | str, last_lba: int, sector_size: int
) -> tuple[tuple[ByteRange, ...], tuple[ByteRange, ...]]:
    """Return the front (protective MBR, primary) and tail (backup) ranges of a GPT."""
    entry_sectors = sectors_for(header.entry_bytes, sector_size)
    if header.my_lba == 1:
        primary_entries_lba = header.entries_lba
        if isinstance(backup, GptHeader):
            backup_lba, backup_entries_lba = backup.my_lba, backup.entries_lba
        else:
            # No valid backup to ask: it belongs where the primary says, unless that
            # is not after the primary or not on the disk; then at the last LBA, as
            # a partitioner would write it. Its entries sit just before it.
            alternate = header.alternate_lba
            backup_lba = alternate if 1 < alternate <= last_lba else max(last_lba, 1)
            backup_entries_lba = max(backup_lba - entry_sectors, 0)
    else:
        # Read from the backup: the primary's own fields are not trustworthy, so the
        # primary entries are taken to be where every partitioner puts them, LBA 2.
        primary_entries_lba = 2
        backup_lba = header.my_lba
        backup_entries_lba = header.entries_lba
    front = (
        sector_range(0, 1, sector_size, "protective MBR"),
        sector_range(1, 1, sector_size, "primary GPT header"),
        sector_range(primary_entries_lba, entry_sectors, sector_size, "primary GPT entries"),
    )
    tail = (
        sector_range(backup_entries_lba, entry_sectors, sector_size, "backup GPT entries"),
        sector_range(backup_lba, 1, sector_size, "backup GPT header"),
    )
    return front, tail


def _partitions(header: GptHeader, sector_size: int) -> tuple[list[LabelPartition], list[str]]:
    """Return the used entries as partitions, and a note about entries that make no sense."""
    partitions: list[LabelPartition] = []
    inverted: list[int] = []
    for index in range(header.entry_count):
        raw = header.entries[index * header.entry_size : index * header.entry_size + 128]
        type_guid, _unique, first, last, _attrs, name = _ENTRY.unpack_from(raw)
        if type_guid == _ZERO_GUID:
            continue
        if last < first:
            inverted.append(index + 1)
            continue
        partitions.append(
            LabelPartition(
                number=index + 1,
                start=first * sector_size,
                size=(last - first + 1) * sector_size,
                type=_guid(type_guid),
                name=name.decode("utf-16-le", errors="replace").split("\0", 1)[0],
            )
        )
    notes = []
    if inverted:
        shown = ", ".join(map(str, inverted[:8])) + (", ..." if len(inverted) > 8 else "")
        notes.append(f"GPT entries {shown} end before they start and are ignored")
    return partitions, notes
