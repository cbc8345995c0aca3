"""Which disk label, if any, starts a byte source: GPT, then Sun, then BSD, then DOS/MBR."""

from __future__ import annotations

from dataclasses import replace

from core.bytesource import ByteSource
from core.labels import mbr
from core.labels.bsd import parse_bsd
from core.labels.gpt import parse_gpt
from core.labels.model import DiskLabel
from core.labels.sectors import SECTOR_SIZES, read_bytes
from core.labels.sun import parse_sun

_BOTH_GPT_HEADERS_BAD = (
    "sector 0 is a GPT protective MBR but neither GPT header is valid; "
    "the MBR is reported as it stands"
)


def read_label(source: ByteSource, sector_size: int = 512) -> DiskLabel | None:
    """Return the disk label at the start of ``source``, or None when it holds none.

    GPT is tried first (it needs a protective MBR), with ``sector_size`` and then with
    the other of 512 and 4096, because an image of a 4Kn disk is read as a file. Then
    a Sun label (magic in sector 0), a BSD disklabel (sector 1, byte 64 or byte 0),
    and last a DOS partition table, which ends in the same 0x55AA as any boot sector
    and so has the strictest rules (see :mod:`core.labels.mbr`). A protective MBR
    whose GPT headers are both invalid is reported as a DOS label with a note.

    Any bytes give a label or None; only a failing read of ``source`` raises.

    Args:
        source: the disk or volume to look at.
        sector_size: the logical sector size of the device ``source`` reads.

    Raises:
        ValueError: ``sector_size`` is not a power of two from 512 to 65536.
        OSError: reading ``source`` failed.
    """
    if sector_size not in SECTOR_SIZES:
        raise ValueError(f"sector size {sector_size} is not a power of two from 512 to 65536")
    if mbr.protective_entry(read_bytes(source, 0, 512)) is not None:
        other = 4096 if sector_size == 512 else 512
        for size in (sector_size, other):
            label = parse_gpt(source, size)
            if label is not None:
                if size != sector_size:
                    label = _with_note(label, f"the GPT was found with {size}-byte sectors")
                return label
        return mbr.parse_mbr(
            source, sector_size, notes=(_BOTH_GPT_HEADERS_BAD,), accept_protective=True
        )
    return parse_sun(source) or parse_bsd(source, sector_size) or mbr.parse_mbr(source, sector_size)


def _with_note(label: DiskLabel, note: str) -> DiskLabel:
    return replace(label, notes=(note, *label.notes))
