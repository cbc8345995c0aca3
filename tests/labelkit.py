"""Craft disk-label bytes and label-carrying image files for tests.

Sun and BSD labels are built byte by byte (no Linux tool writes them
non-interactively); DOS and GPT labels come from ``sfdisk`` on a sparse image file,
so the parser is checked against util-linux rather than against itself. The GPT
builder here exists for what sfdisk cannot make: 4096-byte sectors and fuzzing.

Tests import it as ``from labelkit import ...``: pytest's default ("prepend")
import mode puts ``tests/`` on ``sys.path`` for test modules outside a package.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import uuid
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

SFDISK = "/usr/sbin/sfdisk"
FDISK = "/usr/sbin/fdisk"

SUN_MAGIC = 0xDABE
SUN_VTOC_SANITY = 0x600DDEEE
BSD_MAGIC = 0x82564557
LINUX_FS_GUID = "0fc63daf-8483-4772-8e79-3d69d8477de4"

# Sun tags and BSD file-system types used by the tests.
SUN_TAG_ROOT = 0x02
SUN_TAG_SWAP = 0x03
SUN_TAG_USR = 0x04
SUN_TAG_BACKUP = 0x05
BSD_FS_SWAP = 1
BSD_FS_UNUSED = 0
BSD_FS_BSDFFS = 7


def _tool_env() -> dict[str, str]:
    # util-linux translates its output; the tests parse the C locale's words.
    return {**os.environ, "LC_ALL": "C", "LANG": "C"}


# --- Sun SMI / VTOC ----------------------------------------------------------


def sun_checksum(sector: bytes | bytearray) -> int:
    """Return the checksum that makes the XOR of all 256 big-endian words of ``sector`` zero."""
    value = 0
    for (word,) in struct.iter_unpack(">H", bytes(sector[:510])):
        value ^= word
    return value


def fix_sun_checksum(sector: bytes | bytearray) -> bytes:
    """Return ``sector`` (512 bytes) with its Sun checksum recomputed."""
    fixed = bytearray(sector[:512])
    struct.pack_into(">H", fixed, 510, sun_checksum(fixed))
    return bytes(fixed)


def make_sun_label(
    heads: int,
    sectors_per_track: int,
    cylinders: int,
    slices: Sequence[tuple[int, int, int, int]],
    *,
    alt_cylinders: int = 2,
    text: str | None = None,
    vtoc: bool = True,
    checksum: bool = True,
) -> bytes:
    """Return a 512-byte Sun SMI label (sector 0) in the SPARC layout.

    Args:
        heads: tracks per cylinder.
        sectors_per_track: 512-byte sectors per track.
        cylinders: data cylinders.
        slices: up to 8 ``(tag, flag, start_cylinder, nblocks)``, slice 0 first.
        alt_cylinders: alternate cylinders (physical = data + alternate).
        text: the ASCII label text; a Solaris-like default otherwise.
        vtoc: write the VTOC version, partition count and sanity word.
        checksum: write a correct checksum (False leaves it zero).
    """
    if len(slices) > 8:
        raise ValueError("a Sun label has 8 slices")
    sector = bytearray(512)
    if text is None:
        text = f"blockvault cyl {cylinders} alt {alt_cylinders} hd {heads} sec {sectors_per_track}"
    sector[: min(len(text), 127)] = text.encode("ascii")[:127]
    if vtoc:
        struct.pack_into(">I8sH", sector, 128, 1, b"bvtest", 8)
        struct.pack_into(">I", sector, 188, SUN_VTOC_SANITY)
    for index, (tag, flag, start_cylinder, nblocks) in enumerate(slices):
        struct.pack_into(">HH", sector, 142 + 4 * index, tag, flag)
        struct.pack_into(">II", sector, 444 + 8 * index, start_cylinder, nblocks)
    struct.pack_into(">H", sector, 420, 5400)  # rpm
    struct.pack_into(">H", sector, 422, cylinders + alt_cylinders)  # physical cylinders
    struct.pack_into(">4H", sector, 432, cylinders, alt_cylinders, heads, sectors_per_track)
    struct.pack_into(">H", sector, 430, 1)  # interleave
    struct.pack_into(">H", sector, 508, SUN_MAGIC)
    return fix_sun_checksum(sector) if checksum else bytes(sector)


# --- BSD disklabel -----------------------------------------------------------


def bsd_checksum(label: bytes | bytearray, npartitions: int) -> int:
    """Return the checksum that makes the XOR of the label's little-endian words zero."""
    end = 148 + 16 * npartitions
    raw = bytearray(label[:end])
    raw[136:138] = b"\0\0"
    value = 0
    for (word,) in struct.iter_unpack("<H", bytes(raw)):
        value ^= word
    return value


def fix_bsd_checksum(sector: bytes | bytearray, offset: int = 0) -> bytes:
    """Return ``sector`` with the checksum of the BSD label at ``offset`` recomputed."""
    fixed = bytearray(sector)
    npartitions = min(struct.unpack_from("<H", fixed, offset + 138)[0], 16)
    label = fixed[offset:]
    struct.pack_into("<H", fixed, offset + 136, bsd_checksum(label, npartitions))
    return bytes(fixed)


def make_bsd_label(
    partitions: Sequence[tuple[int, int, int]],
    *,
    sector_size: int = 512,
    sectors_per_track: int = 63,
    tracks: int = 16,
    sectors_per_unit: int | None = None,
    npartitions: int | None = None,
    checksum: bool = True,
) -> bytes:
    """Return a 512-byte sector holding a BSD disklabel at its byte 0.

    Place it at byte 512 of an image for the i386 layout (or at byte 64 for alpha's).

    Args:
        partitions: ``(offset, size, fstype)`` in sectors, partition "a" first;
            offsets are absolute disk sectors.
        sector_size: d_secsize.
        sectors_per_track: d_nsectors.
        tracks: d_ntracks.
        sectors_per_unit: d_secperunit; the end of the last partition otherwise.
        npartitions: d_npartitions; ``len(partitions)`` otherwise.
        checksum: write a correct checksum (False leaves it zero).
    """
    count = len(partitions) if npartitions is None else npartitions
    if sectors_per_unit is None:
        sectors_per_unit = max((o + s for o, s, _ in partitions), default=0)
    sector = bytearray(512)
    secpercyl = sectors_per_track * tracks
    struct.pack_into(
        "<IHH16s16sIIIIII",
        sector,
        0,
        BSD_MAGIC,
        4,  # d_type: DTYPE_SCSI
        0,
        b"blockvault",
        b"test",
        sector_size,
        sectors_per_track,
        tracks,
        sectors_per_unit // secpercyl if secpercyl else 0,
        secpercyl,
        sectors_per_unit,
    )
    struct.pack_into("<H", sector, 72, 3600)  # rpm
    struct.pack_into("<I", sector, 132, BSD_MAGIC)  # d_magic2
    struct.pack_into("<H", sector, 138, count)
    struct.pack_into("<II", sector, 140, 8192, 65536)  # d_bbsize, d_sbsize
    for index, (offset, size, fstype) in enumerate(partitions):
        struct.pack_into(
            "<IIIBBH", sector, 148 + 16 * index, size, offset, 2048 if fstype else 0, fstype, 8, 16
        )
    # d_checksum sits in the label, so it is computed with that field zero.
    struct.pack_into("<H", sector, 136, 0)
    if checksum:
        struct.pack_into("<H", sector, 136, bsd_checksum(sector, min(count, 16)))
    return bytes(sector)


# --- DOS / MBR ---------------------------------------------------------------


def make_mbr(entries: Sequence[tuple[int, int, int, int]], *, signature: bool = True) -> bytes:
    """Return a 512-byte MBR or EBR sector with the given ``(boot, type, lba, sectors)`` entries."""
    sector = bytearray(512)
    for index, (boot, ptype, lba, count) in enumerate(entries):
        struct.pack_into(
            "<B3sB3sII",
            sector,
            446 + 16 * index,
            boot,
            b"\xfe\xff\xff",
            ptype,
            b"\xfe\xff\xff",
            lba,
            count,
        )
    if signature:
        sector[510:512] = b"\x55\xaa"
    return bytes(sector)


# --- GPT ---------------------------------------------------------------------


def _guid_bytes(value: str) -> bytes:
    return uuid.UUID(value).bytes_le


def make_gpt(
    disk_sectors: int,
    partitions: Sequence[tuple[int, int, str, str]],
    *,
    sector_size: int = 512,
    entry_count: int = 128,
    entry_size: int = 128,
    disk_guid: str = "12345678-1234-5678-9abc-def012345678",
) -> dict[int, bytes]:
    """Return the chunks (byte offset -> bytes) of a GPT for :func:`write_image`.

    Args:
        disk_sectors: the disk's size in ``sector_size`` sectors.
        partitions: ``(first_lba, last_lba, type_guid, name)``, entry 1 first.
        sector_size: the logical sector size the LBAs count in.
        entry_count: entries in each array.
        entry_size: bytes per entry.
        disk_guid: the disk GUID.
    """
    array = bytearray(entry_count * entry_size)
    for index, (first, last, type_guid, name) in enumerate(partitions):
        struct.pack_into(
            "<16s16sQQQ72s",
            array,
            index * entry_size,
            _guid_bytes(type_guid),
            uuid.uuid5(uuid.NAMESPACE_OID, f"{disk_guid}/{index}").bytes_le,
            first,
            last,
            0,
            name.encode("utf-16-le")[:72],
        )
    entry_sectors = -(-len(array) // sector_size)
    last_lba = disk_sectors - 1
    backup_entries = last_lba - entry_sectors

    def header(my_lba: int, alternate: int, entries_lba: int) -> bytes:
        raw = bytearray(sector_size)
        struct.pack_into(
            "<8sIII4xQQQQ16sQIII",
            raw,
            0,
            b"EFI PART",
            0x00010000,
            92,
            0,
            my_lba,
            alternate,
            2 + entry_sectors,
            backup_entries - 1,
            _guid_bytes(disk_guid),
            entries_lba,
            entry_count,
            entry_size,
            zlib.crc32(array),
        )
        struct.pack_into("<I", raw, 16, zlib.crc32(bytes(raw[:92])))
        return bytes(raw)

    pmbr = make_mbr([(0, 0xEE, 1, min(last_lba, 0xFFFFFFFF))])
    return {
        0: pmbr,
        sector_size: header(1, last_lba, 2),
        2 * sector_size: bytes(array),
        backup_entries * sector_size: bytes(array),
        last_lba * sector_size: header(last_lba, 1, backup_entries),
    }


def fix_gpt_crcs(image: bytearray, lba: int, sector_size: int = 512) -> None:
    """Recompute, in place, the entries CRC32 and header CRC32 of the GPT header at ``lba``.

    Fuzzing uses it so that a mutated header is not simply refused for its CRC: the
    parser's handling of the mutated fields themselves gets exercised. Fields that
    make either CRC impossible to compute (sizes out of range) are left alone.
    """
    at = lba * sector_size
    if at < 0 or at + 92 > len(image):
        return
    entries_lba, count, size = struct.unpack_from("<QII", image, at + 72)
    start = entries_lba * sector_size
    if count * size <= 1 << 20 and start + count * size <= len(image):
        struct.pack_into(
            "<I", image, at + 88, zlib.crc32(bytes(image[start : start + count * size]))
        )
    header_size = struct.unpack_from("<I", image, at + 12)[0]
    if 92 <= header_size <= sector_size and at + header_size <= len(image):
        image[at + 16 : at + 20] = bytes(4)
        struct.pack_into("<I", image, at + 16, zlib.crc32(bytes(image[at : at + header_size])))


# --- image files and util-linux ---------------------------------------------


def write_image(path: str | os.PathLike[str], size: int, chunks: Mapping[int, bytes]) -> Path:
    """Create a sparse image file of ``size`` bytes with ``chunks`` (offset -> bytes) written."""
    path = Path(path)
    with open(path, "wb") as image:
        image.truncate(size)
        for offset, data in chunks.items():
            image.seek(offset)
            image.write(data)
    return path


def image_bytes(size: int, chunks: Mapping[int, bytes]) -> bytes:
    """Return an in-memory image of ``size`` bytes with ``chunks`` (offset -> bytes) written."""
    image = bytearray(size)
    for offset, data in chunks.items():
        image[offset : offset + len(data)] = data[: max(0, size - offset)]
    return bytes(image)


def sfdisk_image(path: str | os.PathLike[str], script: str, *, size: int = 64 << 20) -> Path:
    """Write a partition table with ``sfdisk`` into a sparse image file and return its path.

    The file is created with ``size`` bytes when it does not exist. ``script`` is
    sfdisk's input, e.g. ``"label: gpt\\nsize=16M, type=L\\n"``.
    """
    path = Path(path)
    if not path.exists():
        with open(path, "wb") as image:
            image.truncate(size)
    result = subprocess.run(
        [SFDISK, "--quiet", "--no-reread", "--no-tell-kernel", str(path)],
        input=script,
        capture_output=True,
        text=True,
        env=_tool_env(),
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"sfdisk failed on {path}: {result.stdout}{result.stderr}")
    return path


def sfdisk_json(path: str | os.PathLike[str]) -> dict:
    """Return ``sfdisk --json``'s "partitiontable" object for an image file."""
    result = subprocess.run(
        [SFDISK, "--json", str(path)],
        capture_output=True,
        text=True,
        env=_tool_env(),
        check=True,
    )
    return json.loads(result.stdout)["partitiontable"]


def fdisk_list(path: str | os.PathLike[str], *, sector_size: int | None = None) -> str:
    """Return what ``fdisk -l`` prints for an image file (C locale)."""
    command = [FDISK, "-l", str(path)]
    if sector_size is not None:
        command[1:1] = ["-b", str(sector_size)]
    return subprocess.run(
        command, capture_output=True, text=True, env=_tool_env(), check=True
    ).stdout


def fdisk_rows(listing: str) -> list[list[str]]:
    """Return the partition rows of an ``fdisk -l`` listing, split on whitespace."""
    lines = listing.splitlines()
    # The table's header row starts with "Device" (dos, gpt, sun) or "Slice" (bsd).
    header = next((i for i, line in enumerate(lines) if line.startswith(("Device", "Slice"))), None)
    if header is None:
        return []
    rows = []
    for line in lines[header + 1 :]:
        if not line.strip():
            break
        rows.append(line.split())
    return rows
