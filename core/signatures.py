"""File-system and volume signatures, probed from a device's first bytes as ``blkid -p`` does.

:func:`probe` runs for every block device while the device tree is built, so it is
cheap by design: one read of the first 68 KiB covers every signature it knows
(the btrfs superblock at 64 KiB is the farthest), and only a FAT root directory
can cost one or two more small reads. The bytes are untrusted: any input gives a
:class:`Signature` or ``None``, never an exception, and every loop is bounded.

Results follow util-linux's libblkid (2.38, the reference the tests compare
with), with these deliberate differences:

- ext4, XFS v5 and btrfs superblocks whose checksum does not verify are not
  reported (the kernel refuses to mount them; libblkid 2.39 and later checks
  them too, 2.38 does not). A mismatch is read a second time before it counts,
  because a mounted file system may be rewriting its superblock as we read it.
  Likewise a LUKS2 primary header must say it is at offset 0, as cryptsetup
  requires (blkid checks that since 2.39).
- ``block_size`` is the file system's allocation unit: XFS's block size and
  FAT's cluster size, where blkid's ``BLOCK_SIZE`` gives their sector size;
  for swap it is the page size the signature was found at (blkid gives none).
- blkid's guesses that depend on the running kernel (ext2 reported as ext4
  when only the ext4 driver is present; ``ext4dev``) are not made: a
  journal-less ext2 is ext2, and a test-flagged ext4 is ext4.
- Types outside :class:`FsType` are not reported: an external ext journal
  (``jbd``), a hibernation image in swap (``swsuspend``), a LUKS2 device whose
  primary header is gone (blkid finds its secondary header).
- A FAT root directory is searched for its label entry through at most
  :data:`_FAT_DIR_MAX_BYTES` per cluster and :data:`_FAT32_ROOT_MAX_CLUSTERS`
  clusters (blkid reads whole clusters and follows up to 99); the label entry
  is almost always the first one.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from itertools import pairwise

from core.bytesource import ByteSource


class FsType(StrEnum):
    """What a volume holds; the values are the ``TYPE`` strings blkid prints."""

    EXT2 = "ext2"
    EXT3 = "ext3"
    EXT4 = "ext4"
    XFS = "xfs"
    BTRFS = "btrfs"
    VFAT = "vfat"
    SWAP = "swap"
    LVM2 = "LVM2_member"
    LUKS = "crypto_LUKS"


_FILE_SYSTEMS = frozenset(
    {FsType.EXT2, FsType.EXT3, FsType.EXT4, FsType.XFS, FsType.BTRFS, FsType.VFAT}
)


@dataclass(frozen=True)
class Signature:
    """A recognised signature and the identity it carries."""

    fstype: FsType
    """The kind of file system or volume."""
    uuid: str | None
    """The UUID as blkid prints it, or ``None`` when the volume has none."""
    label: str | None
    """The label, or ``None`` when it is empty."""
    block_size: int | None
    """The file system's block (allocation unit) size in bytes, where known."""
    version: str | None
    """The format version as blkid prints it: ``"1.0"`` (ext), ``"FAT32"``, ``"2"`` (LUKS)..."""

    @property
    def is_filesystem(self) -> bool:
        """Whether the volume holds a mountable file system (not swap, an LVM PV or LUKS)."""
        return self.fstype in _FILE_SYSTEMS


_BTRFS_SB_OFFSET = 0x10000
_HEAD_SIZE = _BTRFS_SB_OFFSET + 0x1000
"""One read of this many bytes from the start covers every signature probed here."""

_SPACES = b" \t\n\v\f\r"
"""What C's ``isspace`` strips from the end of a label, as blkid does."""


def probe(source: ByteSource) -> Signature | None:
    """Return the signature at the start of ``source``, or ``None`` for a raw volume.

    Raises:
        OSError: the source could not be read.
    """
    head = source.read_at(0, _HEAD_SIZE)
    for probe_one in _PROBES:
        signature = probe_one(source, head)
        if signature is not None:
            return signature
    return None


# -- helpers ---------------------------------------------------------------------------------


def _read(source: ByteSource, head: bytes, offset: int, length: int) -> bytes:
    """Return ``length`` bytes at ``offset``, from ``head`` when it already holds them."""
    end = offset + length
    if end <= len(head):
        return head[offset:end]
    return source.read_at(offset, length)


def _text(raw: bytes, encoding: str = "utf-8") -> str | None:
    """Return a NUL-terminated, blank-padded on-disk string, or ``None`` when it is empty."""
    raw = raw.split(b"\0", 1)[0].rstrip(_SPACES)
    return raw.decode(encoding, errors="replace") or None


def _uuid(raw: bytes) -> str | None:
    """Return a 16-byte binary UUID in dashed lower-case form; ``None`` when it is all zeros."""
    if len(raw) != 16 or not any(raw):
        return None
    return str(uuid.UUID(bytes=raw))


def _is_power_of_2(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for index in range(256):
        crc = index
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def _crc32c(data: bytes) -> int:
    """Return the CRC-32C (Castagnoli) of ``data``, the checksum ext4, XFS and btrfs use."""
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _verified(
    source: ByteSource, head: bytes, offset: int, length: int, check: Callable[[bytes], bool]
) -> bool:
    """Whether ``check`` accepts the block at ``offset``, reading it again after a mismatch.

    A mounted file system can rewrite its superblock between our reading the
    checksum and the bytes it covers; one fresh read tells that race from damage.
    """
    block = head[offset : offset + length]
    if check(block):
        return True
    return check(source.read_at(offset, length))


# -- LUKS ------------------------------------------------------------------------------------

_LUKS_MAGIC = b"LUKS\xba\xbe"


def _probe_luks(source: ByteSource, head: bytes) -> Signature | None:
    # The LUKS1 header and the binary part of the LUKS2 header share the magic,
    # the version and the UUID field; only LUKS2 has a label.
    if len(head) < 512 or head[:6] != _LUKS_MAGIC:
        return None
    (version,) = struct.unpack_from(">H", head, 6)
    (hdr_offset,) = struct.unpack_from(">Q", head, 256)
    if version == 2 and hdr_offset != 0:
        return None
    uuid_text = label = None
    if version in (1, 2):
        uuid_text = _text(head[168:208], "ascii")
    if version == 2:
        label = _text(head[24:72])
    return Signature(FsType.LUKS, uuid_text, label, None, str(version))


# -- XFS -------------------------------------------------------------------------------------

_XFS_SB = struct.Struct(">4sIQQQ16sQQQQIIIIIHHHH12sBBBBBBBB")
_XFS_CRC_OFFSET = 224


def _xfs_crc_ok(block: bytes) -> bool:
    if len(block) < _XFS_CRC_OFFSET + 4:
        return False
    zeroed = block[:_XFS_CRC_OFFSET] + b"\0\0\0\0" + block[_XFS_CRC_OFFSET + 4 :]
    (stored,) = struct.unpack_from("<I", block, _XFS_CRC_OFFSET)
    return _crc32c(zeroed) == stored


def _probe_xfs(source: ByteSource, head: bytes) -> Signature | None:
    if head[:4] != b"XFSB" or len(head) < _XFS_SB.size:
        return None
    (
        _magic, blocksize, dblocks, _rblocks, _rextents, uuid_raw, _logstart, _rootino,
        _rbmino, _rsumino, rextsize, agblocks, agcount, _rbmblocks, _logblocks, versionnum,
        sectsize, inodesize, _inopblock, fname, blocklog, sectlog, inodelog, inopblog,
        _agblklog, _rextslog, _inprogress, imax_pct,
    ) = _XFS_SB.unpack_from(head)  # fmt: skip
    # blkid's sanity checks: a magic number alone is four bytes of luck.
    if not (
        agcount > 0
        and 9 <= sectlog <= 15
        and sectsize == 1 << sectlog
        and 9 <= blocklog <= 16
        and blocksize == 1 << blocklog
        and 8 <= inodelog <= 11
        and inodesize == 1 << inodelog
        and blocklog - inodelog == inopblog
        and 4096 <= rextsize * blocksize <= 1 << 30
        and imax_pct <= 100
        and 0 < dblocks <= agcount * agblocks
        and dblocks >= (agcount - 1) * agblocks + 64
    ):
        return None
    if versionnum & 0xF == 5 and not _verified(source, head, 0, sectsize, _xfs_crc_ok):
        return None
    return Signature(FsType.XFS, _uuid(uuid_raw), _text(fname), blocksize, None)


# -- LVM2 physical volume --------------------------------------------------------------------


_LVM2_UUID_CUTS = (0, 6, 10, 14, 18, 22, 26, 32)
"""Where blkid cuts LVM's 32-character id: 6-4-4-4-4-4-6."""


def _lvm2_crc(data: bytes) -> int:
    # LVM's label CRC is the ordinary CRC-32 started at 0xf597a6cf with no final
    # inversion; zlib.crc32 inverts on the way in and out, so undo both.
    return zlib.crc32(data, 0xF597A6CF ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


def _probe_lvm2(source: ByteSource, head: bytes) -> Signature | None:
    # The label sits in one of the first four 512-byte sectors and checksums
    # itself from its offset_xl field (byte 20) to the end of the sector.
    for sector in range(4):
        label = head[sector * 512 : (sector + 1) * 512]
        if len(label) < 512 or label[:8] != b"LABELONE" or label[24:32] != b"LVM2 001":
            continue
        sector_xl, crc_xl, offset_xl = struct.unpack_from("<QII", label, 8)
        if sector_xl != sector or _lvm2_crc(label[20:]) != crc_xl:
            continue
        # The pv_header starts at offset_xl (always 32 in practice, where blkid reads it).
        pv_uuid = label[offset_xl : offset_xl + 32]
        if len(pv_uuid) != 32:
            continue
        uuid_text = None
        if any(pv_uuid):
            text = pv_uuid.decode("ascii", errors="replace")
            uuid_text = "-".join(text[start:end] for start, end in pairwise(_LVM2_UUID_CUTS))
        return Signature(FsType.LVM2, uuid_text, None, None, "LVM2 001")
    return None


# -- ext2/3/4 --------------------------------------------------------------------------------

_EXT_SB_OFFSET = 1024
_EXT_COMPAT_HAS_JOURNAL = 0x0004
_EXT_INCOMPAT_FILETYPE = 0x0002
_EXT_INCOMPAT_RECOVER = 0x0004
_EXT_INCOMPAT_JOURNAL_DEV = 0x0008
_EXT_INCOMPAT_META_BG = 0x0010
_EXT_RO_COMPAT_METADATA_CSUM = 0x0400
# What ext2 and ext3 drivers understand (blkid's *_SUPP masks); anything beyond
# makes the file system ext4.
_EXT2_EXT3_RO_COMPAT = 0x0001 | 0x0002 | 0x0004  # sparse_super, large_file, btree_dir
_EXT2_INCOMPAT = _EXT_INCOMPAT_FILETYPE | _EXT_INCOMPAT_META_BG
_EXT3_INCOMPAT = _EXT2_INCOMPAT | _EXT_INCOMPAT_RECOVER
_EXT_MAX_LOG_BLOCK_SIZE = 6  # 64 KiB, the largest block ext4 supports


def _ext_csum_ok(block: bytes) -> bool:
    # ext4 stores the CRC-32C register without the final inversion.
    if len(block) < 1024:
        return False
    (stored,) = struct.unpack_from("<I", block, 0x3FC)
    return _crc32c(block[:0x3FC]) ^ 0xFFFFFFFF == stored


def _probe_ext(source: ByteSource, head: bytes) -> Signature | None:
    sb = head[_EXT_SB_OFFSET : _EXT_SB_OFFSET + 1024]
    if len(sb) < 0x200 or sb[0x38:0x3A] != b"\x53\xef":
        return None
    (log_block_size,) = struct.unpack_from("<I", sb, 0x18)
    (minor_rev,) = struct.unpack_from("<H", sb, 0x3E)
    (rev,) = struct.unpack_from("<I", sb, 0x4C)
    compat, incompat, ro_compat = struct.unpack_from("<III", sb, 0x5C)
    journal = bool(compat & _EXT_COMPAT_HAS_JOURNAL)
    ro_compat_ext3 = not ro_compat & ~_EXT2_EXT3_RO_COMPAT
    if incompat & _EXT_INCOMPAT_JOURNAL_DEV:
        return None  # an external journal (blkid's "jbd"), not a file system
    if not journal and ro_compat_ext3 and not incompat & ~_EXT2_INCOMPAT:
        fstype = FsType.EXT2
    elif journal and ro_compat_ext3 and not incompat & ~_EXT3_INCOMPAT:
        fstype = FsType.EXT3
    elif not ro_compat_ext3 or incompat & ~_EXT3_INCOMPAT:
        fstype = FsType.EXT4
    else:
        return None  # needs_recovery without a journal: blkid claims it for no ext type
    if ro_compat & _EXT_RO_COMPAT_METADATA_CSUM and not _verified(
        source, head, _EXT_SB_OFFSET, 1024, _ext_csum_ok
    ):
        return None
    block_size = None
    if log_block_size <= _EXT_MAX_LOG_BLOCK_SIZE:
        block_size = 1024 << log_block_size
    return Signature(
        fstype, _uuid(sb[0x68:0x78]), _text(sb[0x78:0x88]), block_size, f"{rev}.{minor_rev}"
    )


# -- btrfs -----------------------------------------------------------------------------------


def _btrfs_csum_ok(block: bytes) -> bool:
    if len(block) < 0x1000:
        return False
    (csum_type,) = struct.unpack_from("<H", block, 0xC4)
    data = block[0x20:0x1000]
    if csum_type == 0:
        return struct.pack("<I", _crc32c(data)) == block[:4]
    if csum_type == 2:
        return hashlib.sha256(data).digest() == block[:32]
    if csum_type == 3:
        return hashlib.blake2b(data, digest_size=32).digest() == block[:32]
    return True  # xxhash64 (type 1) is not in the standard library: not checked


def _probe_btrfs(source: ByteSource, head: bytes) -> Signature | None:
    sb = head[_BTRFS_SB_OFFSET:]
    if len(sb) < 0x1000 or sb[0x40:0x48] != b"_BHRfS_M":
        return None
    if not _verified(source, head, _BTRFS_SB_OFFSET, 0x1000, _btrfs_csum_ok):
        return None
    (sectorsize,) = struct.unpack_from("<I", sb, 0x90)
    block_size = sectorsize if _is_power_of_2(sectorsize) and sectorsize <= 0x10000 else None
    label = _text(sb[0x12B:0x22B])
    return Signature(FsType.BTRFS, _uuid(sb[0x20:0x30]), label, block_size, None)


# -- swap ------------------------------------------------------------------------------------

_SWAP_PAGE_SIZES = (0x1000, 0x2000, 0x4000, 0x8000, 0x10000)
_TUXONICE_MAGIC = b"\xed\xc3\x02\xe9\x98\x56\xe5\x0c"


def _probe_swap(source: ByteSource, head: bytes) -> Signature | None:
    # The magic ends the first page, whatever the page size of the machine that
    # made it; the v1 header (uuid, label) is always at 1024.
    for page_size in _SWAP_PAGE_SIZES:
        magic = head[page_size - 10 : page_size]
        if magic in (b"SWAPSPACE2", b"SWAP-SPACE"):
            break
    else:
        return None
    if head[:8] == _TUXONICE_MAGIC:
        return None  # TuxOnIce keeps a swap header but the area holds its hibernation image
    if magic == b"SWAP-SPACE":
        return Signature(FsType.SWAP, None, None, page_size, "0")
    (version, last_page) = struct.unpack_from("<II", head, 1024)
    if version not in (1, 0x01000000) or last_page == 0:
        return None
    uuid_text = label = None
    # blkid's "is there garbage down there" test before trusting uuid and label.
    if head[1024 + 44 + 32 * 4 : 1024 + 44 + 34 * 4] == bytes(8):
        uuid_text = _uuid(head[1036:1052])
        label = _text(head[1052:1068])
    return Signature(FsType.SWAP, uuid_text, label, page_size, "1")


# -- vfat ------------------------------------------------------------------------------------

_FAT12_MAX_CLUSTERS = 0xFF4
_FAT16_MAX_CLUSTERS = 0xFFF4
_FAT32_MAX_CLUSTERS = 0x0FFFFFF6
_FAT_DIR_ENTRY = 32
_FAT_DIR_MAX_BYTES = 0x10000
"""The most of one root directory (FAT12/16) or one root cluster (FAT32) searched for a label."""
_FAT32_ROOT_MAX_CLUSTERS = 4
"""How many clusters of a FAT32 root directory's chain are followed looking for the label."""
_FAT_ATTR_VOLUME_ID = 0x08
_FAT_ATTR_DIR = 0x10
_FAT_ATTR_LONG_NAME = 0x0F
_FAT_ENTRY_FREE = 0xE5
_FAT_LABEL_ENCODING = "cp850"  # mkfs.fat's default code page
_FAT_STRING_MAGICS = ((0x52, b"MSWIN"), (0x52, b"FAT32   "), (0x36, b"MSDOS"), (0x36, b"FAT16   "),
                      (0x36, b"FAT12   "), (0x36, b"FAT     "))  # fmt: skip


def _fat_dir_label(entries: bytes) -> bytes | None:
    """Return the raw 11-byte name of the volume-label entry in a directory block."""
    for pos in range(0, len(entries) - _FAT_DIR_ENTRY + 1, _FAT_DIR_ENTRY):
        first, attr = entries[pos], entries[pos + 11]
        if first == 0:
            break  # end of directory
        if (
            first == _FAT_ENTRY_FREE
            or entries[pos + 20 : pos + 22] != b"\0\0"  # a label entry owns no cluster
            or entries[pos + 26 : pos + 28] != b"\0\0"
            or attr & 0x3F == _FAT_ATTR_LONG_NAME
        ):
            continue
        if attr & (_FAT_ATTR_VOLUME_ID | _FAT_ATTR_DIR) == _FAT_ATTR_VOLUME_ID:
            return entries[pos : pos + 11]
    return None


def _probe_vfat(source: ByteSource, head: bytes) -> Signature | None:
    boot = head[:512]
    if len(boot) < 512:
        return None
    # Without a FAT string, only the boot-sector signature remains; JFS and HPFS
    # put a FAT-like pseudo header there.
    has_fat_string = any(boot[off : off + len(magic)] == magic for off, magic in _FAT_STRING_MAGICS)
    if not has_fat_string and (
        boot[510:512] != b"\x55\xaa" or boot[0x36:0x3E] in (b"JFS     ", b"HPFS    ")
    ):
        return None
    if boot[3:11] == b"-FVE-FS-":
        return None  # BitLocker keeps a FAT-like boot sector in front of its volume
    (sector_size, cluster_sectors, reserved, fats, dir_entries, sectors16, media, fat_length16) = (
        struct.unpack_from("<HBHBHHBH", boot, 11)
    )
    (sectors32, fat32_length) = struct.unpack_from("<II", boot, 32)
    # The checks that keep an MBR, or another boot sector, from passing for FAT.
    if (
        fats == 0
        or reserved == 0
        or not (media >= 0xF8 or media == 0xF0)
        or not _is_power_of_2(cluster_sectors)
        or not _is_power_of_2(sector_size)
        or not 512 <= sector_size <= 4096
    ):
        return None
    sectors = sectors16 or sectors32
    fat_size = (fat_length16 or fat32_length) * fats
    dir_sectors = (dir_entries * _FAT_DIR_ENTRY + sector_size - 1) // sector_size
    data_sectors = sectors - (reserved + fat_size + dir_sectors)
    if data_sectors < 0:
        return None
    clusters = data_sectors // cluster_sectors
    fat32 = fat_length16 == 0 and fat32_length != 0
    if fat32:
        max_clusters = _FAT32_MAX_CLUSTERS
    elif clusters > _FAT12_MAX_CLUSTERS:
        max_clusters = _FAT16_MAX_CLUSTERS
    else:
        max_clusters = _FAT12_MAX_CLUSTERS
    if clusters > max_clusters:
        return None

    cluster_bytes = cluster_sectors * sector_size
    label_raw = serial = version = None
    if fat_length16:
        root_start = (reserved + fat_size) * sector_size
        root_bytes = min(dir_entries * _FAT_DIR_ENTRY, _FAT_DIR_MAX_BYTES)
        label_raw = _fat_dir_label(_read(source, head, root_start, root_bytes))
        if boot[0x26] in (0x28, 0x29):  # the extended boot signature says the serial is set
            serial = boot[0x27:0x2B]
        if clusters < _FAT12_MAX_CLUSTERS:
            version = "FAT12"
        elif clusters < _FAT16_MAX_CLUSTERS:
            version = "FAT16"
    elif fat32:
        label_raw = _fat32_root_label(source, head, boot, reserved, fat_size, sector_size)
        serial = boot[0x43:0x47]
        version = "FAT32"
        (fsinfo_sector,) = struct.unpack_from("<H", boot, 0x30)
        if fsinfo_sector and not _fat32_fsinfo_ok(
            _read(source, head, fsinfo_sector * sector_size, 488)
        ):
            return None
    uuid_text = None
    if serial is not None and any(serial):
        uuid_text = f"{serial[3]:02X}{serial[2]:02X}-{serial[1]:02X}{serial[0]:02X}"
    label = _text(label_raw, _FAT_LABEL_ENCODING) if label_raw is not None else None
    return Signature(FsType.VFAT, uuid_text, label, cluster_bytes, version)


def _fat32_root_label(
    source: ByteSource, head: bytes, boot: bytes, reserved: int, fat_size: int, sector_size: int
) -> bytes | None:
    """Return the raw volume label from the FAT32 root directory, following its cluster chain."""
    cluster_sectors = boot[13]
    (fat32_length, root_cluster) = struct.unpack_from("<I4xI", boot, 0x24)
    fat_entries = fat32_length * sector_size // 4
    data_start = reserved + fat_size
    cluster_bytes = min(cluster_sectors * sector_size, _FAT_DIR_MAX_BYTES)
    cluster = root_cluster
    for _ in range(_FAT32_ROOT_MAX_CLUSTERS):
        if not 2 <= cluster < fat_entries:
            break  # end of chain (or a broken one)
        offset = (data_start + (cluster - 2) * cluster_sectors) * sector_size
        label = _fat_dir_label(_read(source, head, offset, cluster_bytes))
        if label is not None:
            return label
        entry = _read(source, head, reserved * sector_size + cluster * 4, 4)
        if len(entry) != 4:
            break
        cluster = int.from_bytes(entry, "little") & 0x0FFFFFFF
    return None


def _fat32_fsinfo_ok(fsinfo: bytes) -> bool:
    # Some formatters leave the FSInfo signatures zero; blkid accepts that too.
    if len(fsinfo) != 488:
        return False
    return fsinfo[:4] in (b"RRaA", b"RRdA", bytes(4)) and fsinfo[484:488] in (b"rrAa", bytes(4))


_PROBES: tuple[Callable[[ByteSource, bytes], Signature | None], ...] = (
    # Cheapest and most specific first; FAT, whose only sure sign is a pile of
    # plausible numbers, last.
    _probe_luks,
    _probe_xfs,
    _probe_lvm2,
    _probe_ext,
    _probe_btrfs,
    _probe_swap,
    _probe_vfat,
)
