"""The values every label parser returns: a label kind, its partitions and its byte ranges."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class LabelKind(StrEnum):
    """Which kind of disk label; the values are what ``fdisk -l`` prints as "Disklabel type"."""

    MBR = "dos"
    GPT = "gpt"
    SUN = "sun"
    BSD = "bsd"

    @property
    def spoken(self) -> str:
        """The name people use for this kind of label in a sentence ("the Sun VTOC")."""
        return _TITLES[self]


_TITLES = {
    LabelKind.MBR: "DOS partition table",
    LabelKind.GPT: "GPT",
    LabelKind.SUN: "Sun VTOC",
    LabelKind.BSD: "BSD disklabel",
}


@dataclass(frozen=True)
class ByteRange:
    """A half-open range of bytes ``[start, end)`` on a disk, with what it holds."""

    start: int
    end: int
    what: str = field(default="", compare=False)
    """What these bytes hold, for messages ("primary GPT header"); not part of equality."""

    @property
    def size(self) -> int:
        """The number of bytes in the range (never negative)."""
        return max(0, self.end - self.start)

    def overlaps(self, start: int, end: int) -> bool:
        """Return True when ``[start, end)`` shares at least one byte with this range."""
        return start < self.end and self.start < end and start < end and self.start < self.end


@dataclass(frozen=True)
class LabelPartition:
    """One partition (MBR, GPT, BSD) or slice (Sun) as the label records it, in bytes."""

    number: int
    """fdisk's numbering: MBR 1-4 primary and 5+ logical, GPT entry index from 1,
    Sun slice 0-7, BSD partition index (0 is "a")."""
    start: int
    """First byte, counted from the start of the disk."""
    size: int
    """Length in bytes."""
    type: str
    """MBR: hex type ("0x83"); GPT: type GUID in lower case; Sun: tag name ("backup")
    or hex tag; BSD: file-system type name ("4.2BSD")."""
    name: str = ""
    """GPT partition name; empty for the other kinds."""
    logical: bool = False
    """MBR: a logical partition inside the extended partition."""
    extended: bool = False
    """MBR: the extended partition that contains the logical ones."""
    start_cylinder: int | None = None
    """Sun: the cylinder the slice starts at; None for the other kinds."""

    @property
    def end(self) -> int:
        """The byte just past the partition."""
        return self.start + self.size


@dataclass(frozen=True)
class DiskLabel:
    """A disk label found at the start of a byte source, with the bytes it occupies."""

    kind: LabelKind
    sector_size: int
    """The sector size the label's numbers were read in (Sun labels always count 512)."""
    partitions: tuple[LabelPartition, ...]
    label_ranges: tuple[ByteRange, ...]
    """Every range holding label structures that a restore over it would overwrite:
    MBR sector 0 and each EBR; GPT protective MBR, primary header and entries and the
    backup entries and header; the Sun VTOC sector; the BSD disklabel's sector."""
    backup_ranges: tuple[ByteRange, ...] = ()
    """The ranges at the end of the disk (GPT backup entries and header); they are also
    the last entries of ``label_ranges``."""
    cylinder0: ByteRange | None = None
    """Sun: the bytes of cylinder 0, where the VTOC lives; None elsewhere or when the
    label's geometry has zero heads or sectors per track."""
    notes: tuple[str, ...] = ()
    """What was odd about the label and what the parser did about it, one line each."""
    disk_guid: str | None = None
    """GPT: the disk GUID in lower case."""
    heads: int | None = None
    """Sun: tracks per cylinder."""
    sectors_per_track: int | None = None
    """Sun: 512-byte sectors per track."""
    cylinders: int | None = None
    """Sun: data cylinders."""
    disk_size: int = 0
    """Size in bytes of the source the label was read from (0 when not known)."""

    @property
    def front_ranges(self) -> tuple[ByteRange, ...]:
        """The label ranges that are not at the end of the disk (sector 0, EBRs, primary GPT)."""
        # By position, not by value: a damaged GPT may put both copies at the same LBAs,
        # and each copy must still be reported for what it is.
        return self.label_ranges[: len(self.label_ranges) - len(self.backup_ranges)]
