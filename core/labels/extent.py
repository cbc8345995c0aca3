"""The cylinder-0 checks: does a volume's extent, or its own first bytes, hold a disk label.

Backing up such a volume is fine; restoring its image writes the bytes back, label
and all. So these checks warn and name the way out (``--preserve-label``); they
never block.
"""

from __future__ import annotations

from core.bytesource import ByteSource
from core.findings import Finding, info, warning
from core.labels.detect import read_label
from core.labels.model import ByteRange, DiskLabel, LabelKind, LabelPartition

LABEL_CYLINDER0 = "LABEL_CYLINDER0"
LABEL_SECTOR0 = "LABEL_SECTOR0"
LABEL_GPT_BACKUP = "LABEL_GPT_BACKUP"
LABEL_PARTITION = "LABEL_PARTITION"
VOLUME_HOLDS_LABEL = "VOLUME_HOLDS_LABEL"

_PRESERVE = "restore with --preserve-label"
_NAMED_RANGES = 3
"""How many overlapped ranges a message names before it says "and N more"."""


def partition_name(label: DiskLabel, partition: LabelPartition) -> str:
    """Return how a person names ``partition`` of ``label`` ("slice 2 (backup)")."""
    number = partition.number
    if label.kind is LabelKind.SUN:
        return f"slice {number} ({partition.type})"
    if label.kind is LabelKind.BSD:
        letter = chr(ord("a") + number) if 0 <= number < 26 else str(number)
        return f"partition {letter} ({partition.type})"
    if label.kind is LabelKind.GPT and partition.name:
        return f'partition {number} ("{partition.name}")'
    if partition.extended:
        return f"extended partition {number}"
    if partition.logical:
        return f"logical partition {number}"
    return f"partition {number}"


def _spans(ranges: list[ByteRange]) -> list[list[int]]:
    return [[r.start, r.end] for r in ranges]


def _describe(ranges: list[ByteRange]) -> str:
    names = [r.what or f"bytes {r.start}-{r.end}" for r in ranges]
    if len(names) > _NAMED_RANGES:
        hidden = len(names) - _NAMED_RANGES
        names = [*names[:_NAMED_RANGES], f"{hidden} more"]
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " and " + names[-1]


def _matches(label: DiskLabel, start: int, size: int) -> list[LabelPartition]:
    """Return the partitions whose extent is exactly ``[start, start+size)``, best first."""
    exact = [p for p in label.partitions if p.start == start and p.size == size]
    # An extended container with the same extent as a logical partition is the less
    # useful answer; otherwise fdisk's order.
    return sorted(exact, key=lambda p: (p.extended, p.number))


def _containers(label: DiskLabel, start: int, end: int) -> list[LabelPartition]:
    """Return the partitions that contain ``[start, end)`` without matching it, smallest first."""
    inside = [p for p in label.partitions if p.start <= start and end <= p.end]
    return sorted(inside, key=lambda p: (p.size, p.extended, p.number))


def extent_findings(
    label: DiskLabel, start: int, size: int, *, disk: str, volume: str
) -> list[Finding]:
    """Return what restoring over bytes ``[start, start+size)`` of a labelled disk would hit.

    Warnings come first: ``LABEL_CYLINDER0`` (Sun: the extent touches cylinder 0,
    where the VTOC lives), ``LABEL_SECTOR0`` (it covers sector 0, an EBR, the primary
    GPT or the BSD label) and ``LABEL_GPT_BACKUP`` (it covers the GPT's backup at the
    end of the disk). Then one ``LABEL_PARTITION`` info finding says which partition
    the extent is, or that it is none. On a Sun disk ``LABEL_CYLINDER0`` replaces
    ``LABEL_SECTOR0``, because cylinder 0 contains the VTOC sector.

    Args:
        label: the label of the disk the volume lies on.
        start: the volume's first byte on that disk.
        size: the volume's size in bytes.
        disk: the disk's name for messages ("/dev/loop3").
        volume: the volume's name for messages ("/dev/loop4").
    """
    end = start + size
    base = {
        "disk": disk,
        "volume": volume,
        "label": label.kind.value,
        "start": start,
        "size": size,
    }
    matches = _matches(label, start, size)
    findings: list[Finding] = []

    cylinder0 = label.cylinder0
    front = [r for r in label.front_ranges if r.overlaps(start, end)]
    if label.kind is LabelKind.SUN and cylinder0 is not None and cylinder0.overlaps(start, end):
        findings.append(_cylinder0_finding(label, cylinder0, matches, bool(front), base))
    elif front:
        findings.append(
            warning(
                LABEL_SECTOR0,
                f"{volume} covers the {_describe(front)} on {disk}: backing it up is allowed, "
                f"but restoring it overwrites the disk's {label.kind.spoken} ({_PRESERVE})",
                **base,
                ranges=_spans(front),
            )
        )
    tail = [r for r in label.backup_ranges if r.overlaps(start, end)]
    if tail:
        findings.append(
            warning(
                LABEL_GPT_BACKUP,
                f"{volume} covers the {_describe(tail)} at the end of {disk}: backing it up "
                f"is allowed, but restoring it overwrites the GPT's backup copy ({_PRESERVE})",
                **base,
                ranges=_spans(tail),
            )
        )
    findings.append(_partition_finding(label, matches, base))
    return findings


def _cylinder0_finding(
    label: DiskLabel,
    cylinder0: ByteRange,
    matches: list[LabelPartition],
    covers_vtoc: bool,
    base: dict,
) -> Finding:
    disk, volume = base["disk"], base["volume"]
    if matches:
        what = f"{volume} is {partition_name(label, matches[0])} of the Sun VTOC on {disk}"
        where = "starts at cylinder 0"
    else:
        what = f"{volume} lies on the Sun disk {disk}"
        where = "covers cylinder 0"
    if covers_vtoc:
        outcome = f"restoring it overwrites the disk's VTOC ({_PRESERVE})"
    else:
        # Inside cylinder 0 but clear of sector 0: not a slice Solaris would make,
        # and the VTOC itself survives a restore.
        outcome = "restoring it writes into cylinder 0 but leaves the VTOC in sector 0 alone"
    return warning(
        LABEL_CYLINDER0,
        f"{what} and {where}: backing it up is allowed, but {outcome}",
        **base,
        partition=matches[0].number if matches else None,
        cylinder0=[cylinder0.start, cylinder0.end],
        covers_vtoc=covers_vtoc,
    )


def _partition_finding(label: DiskLabel, matches: list[LabelPartition], base: dict) -> Finding:
    disk, volume = base["disk"], base["volume"]
    where = f"the {label.kind.spoken} on {disk}"
    if matches:
        best = matches[0]
        return info(
            LABEL_PARTITION,
            f"{volume} is {partition_name(label, best)} of {where}",
            **base,
            partition=best.number,
            partition_type=best.type,
            partition_name=best.name,
            matches=[p.number for p in matches],
        )
    start, size = base["start"], base["size"]
    containers = _containers(label, start, start + size)
    whole_disk = start == 0 and size == label.disk_size > 0
    if whole_disk:
        context = "; it is the whole disk"
    elif containers:
        context = f"; it lies inside {partition_name(label, containers[0])}"
    else:
        context = ""
    return info(
        LABEL_PARTITION,
        f"{volume} does not match any partition of {where}{context}",
        **base,
        partition=None,
        inside=containers[0].number if containers else None,
        whole_disk=whole_disk,
    )


def volume_label_findings(
    source: ByteSource, *, volume: str, sector_size: int = 512
) -> list[Finding]:
    """Return a ``VOLUME_HOLDS_LABEL`` warning when the volume's own first bytes are a disk label.

    Such a volume is a whole disk, or a Solaris slice that starts at cylinder 0; its
    image carries the label, and restoring it writes that label over the destination's.

    Args:
        source: the volume's bytes.
        volume: the volume's name for messages.
        sector_size: the volume's logical sector size.

    Raises:
        OSError: reading ``source`` failed.
    """
    label = read_label(source, sector_size)
    if label is None:
        return []
    return [
        warning(
            VOLUME_HOLDS_LABEL,
            f"{volume} begins with a disk label ({label.kind.spoken}): restoring its image "
            "writes that label to the destination (use --preserve-label to keep the "
            "destination's)",
            volume=volume,
            label=label.kind.value,
            partitions=len(label.partitions),
            ranges=_spans(list(label.label_ranges)),
            notes=list(label.notes),
        )
    ]
