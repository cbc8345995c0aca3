"""Which byte ranges of a volume hold data: what an image backup has to read.

For ext2, ext3 and ext4 the answer comes from the file system's own allocation
records, as partclone gets it: the superblock, the group descriptors and each
group's block bitmap. A block the bitmaps call free holds nothing the file
system will ever read back, so an image that leaves it out (and a restore that
writes zeros there) gives the same file system. Every other file system, and a
raw volume, is read whole.

What the map holds beyond the bitmaps' used blocks, each on purpose (safe,
meaning more data read, beats wrong, meaning data lost):

- The first MiB of the volume. With 1 KiB blocks, block 0 belongs to no group
  and no bitmap covers it, yet boot loaders keep code in the first KiB. A
  restored image must mount and boot, and a MiB costs nothing.
- The bytes past the file system's last block up to the volume's end. They are
  not the file system's to describe (an md 1.0 superblock, a grown partition
  whose file system was never resized), so they are kept.
- Every group's metadata as the superblock and the descriptors place it:
  superblock backup, descriptor blocks, reserved descriptor blocks, the two
  bitmaps and the inode table, whether or not a bitmap marks it.
- A group whose descriptor says ``BLOCK_UNINIT`` has no bitmap on disk. Its
  used blocks are only the metadata above that lies in it (its own and, with
  flex_bg, other groups' bitmaps and inode tables), which is what the kernel's
  ``ext4_init_block_bitmap`` and e2fsprogs' ``read_bitmaps`` compute for it.
  As in the kernel, the flag counts only when the group descriptors carry
  checksums (``uninit_bg`` or ``metadata_csum``); otherwise the bitmap on disk
  is read.

:func:`used_map` refuses (with :class:`UsedBlocksError`) every ext file system
whose bitmaps could miss a block in use, and every feature or field it does not
understand; :func:`used_map_or_whole` turns a refusal into a whole-volume map and
the warning to show. Refused on purpose:

- ``needs_recovery``: committed transactions still in the journal may allocate
  blocks the bitmaps on disk do not show yet (a mounted read-write file system
  always looks like this; a frozen one does not, because freezing clears it).
- An error state, and a journal-less file system that was not cleanly
  unmounted: e2fsck may find blocks in use that the bitmaps do not mark.
- An external journal device, compression, next3 snapshots, replicas, the
  test-only ``lazy_bg``, and any feature bit this module does not know.

The bytes are untrusted. Every field that sizes a loop or a read is checked
against the volume's size, so any input gives a map or :class:`UsedBlocksError`
(or an ``OSError`` from the source), in time proportional to the volume's size.
Checksums of the superblock, the descriptors and the bitmaps are not verified:
the superblock's is :func:`core.signatures.probe`'s job, which named the
file-system type the caller passes in.
"""

from __future__ import annotations

import bisect
import itertools
import operator
import re
import struct
from dataclasses import dataclass
from enum import StrEnum

from core.bytesource import ByteSource
from core.errors import BlockvaultError

MiB = 1 << 20

BOOT_REGION = MiB
"""The first bytes of an ext volume that every map includes (see the module docstring)."""

WHOLE_BLOCK_SIZE = 512
"""The ``block_size`` of a whole-volume map: the sector, the smallest unit a device reads."""

_EXT_TYPES = frozenset({"ext2", "ext3", "ext4"})


class UsedBlocksError(BlockvaultError):
    """The used blocks of a volume cannot be told from its file system; read it whole."""


class UsedMethod(StrEnum):
    """How a :class:`UsedMap` was made."""

    EXT_BITMAP = "ext-bitmap"
    """From an ext2/3/4 file system's block bitmaps."""
    WHOLE = "whole"
    """The whole volume counts as used."""


@dataclass(frozen=True)
class UsedMap:
    """The byte ranges of a volume that an image must read; the rest reads as zeros."""

    size: int
    """The volume's size in bytes."""
    ranges: tuple[tuple[int, int], ...]
    """Sorted, non-overlapping, non-adjacent half-open byte ranges ``[start, end)``."""
    block_size: int
    """The file system's block size (a sector for a whole volume); every boundary is a
    multiple of it, but for ``size``."""
    method: str
    """How the map was made: a :class:`UsedMethod` value."""

    def __post_init__(self) -> None:
        # Strictly rising boundaries: each range is non-empty, sorted and apart.
        bounds = list(itertools.chain.from_iterable(self.ranges))
        rising = all(map(operator.lt, bounds, itertools.islice(bounds, 1, None)))
        inside = not bounds or (bounds[0] >= 0 and bounds[-1] <= self.size)
        if len(bounds) != 2 * len(self.ranges) or not rising or not inside:
            raise ValueError("ranges must be sorted, apart, non-empty and within the volume")

    @property
    def used_bytes(self) -> int:
        """The number of bytes the ranges cover."""
        return sum(end - start for start, end in self.ranges)

    def merged(self, gap: int) -> UsedMap:
        """Return this map with ranges joined across gaps shorter than ``gap`` bytes.

        Reading a short gap costs less than the seek that skipping it costs
        (TSM's ``imagegapsize``). ``gap`` of 0 or less joins nothing.
        """
        if gap <= 0 or len(self.ranges) < 2:
            return self
        joined: list[tuple[int, int]] = []
        start, end = self.ranges[0]
        for next_start, next_end in self.ranges[1:]:
            if next_start - end < gap:
                end = next_end
            else:
                joined.append((start, end))
                start, end = next_start, next_end
        joined.append((start, end))
        return UsedMap(self.size, tuple(joined), self.block_size, self.method)

    def aligned(self, chunk: int) -> tuple[int, ...]:
        """Return the sorted indexes (``offset // chunk``) of the chunks any range touches.

        Raises:
            ValueError: ``chunk`` is not positive.
        """
        if chunk <= 0:
            raise ValueError(f"chunk must be positive, not {chunk}")
        indexes: list[int] = []
        next_free = 0  # the lowest index not yet listed
        for start, end in self.ranges:
            first = max(start // chunk, next_free)
            last = (end - 1) // chunk
            if first <= last:
                indexes.extend(range(first, last + 1))
                next_free = last + 1
        return tuple(indexes)


def whole_map(size: int) -> UsedMap:
    """Return the map that reads all ``size`` bytes of a volume."""
    ranges = ((0, size),) if size > 0 else ()
    return UsedMap(max(size, 0), ranges, WHOLE_BLOCK_SIZE, UsedMethod.WHOLE)


def used_map(source: ByteSource, fstype: str | None) -> UsedMap:
    """Return the byte ranges of ``source`` that hold data, for a volume of ``fstype``.

    ``fstype`` is what :func:`core.signatures.probe` found (``None`` for a raw
    volume). ext2/3/4 are read from their block bitmaps; anything else is whole.

    Raises:
        UsedBlocksError: an ext file system whose used blocks cannot be trusted
            or understood; read the volume whole (:func:`used_map_or_whole`).
        OSError: the source could not be read.
    """
    if fstype in _EXT_TYPES:
        return _ext_used_map(source)
    return whole_map(source.size)


def used_map_or_whole(source: ByteSource, fstype: str | None) -> tuple[UsedMap, str | None]:
    """Return :func:`used_map`'s map, or the whole volume and the warning that says why.

    Raises:
        OSError: the source could not be read.
    """
    try:
        return used_map(source, fstype), None
    except UsedBlocksError as err:
        return whole_map(source.size), f"{err.message}; reading the whole volume instead"


# -- ext2/3/4 --------------------------------------------------------------------------------

_SB_OFFSET = 1024
_SB_SIZE = 1024
_MAGIC = 0xEF53

_STATE_VALID = 0x0001
_STATE_ERROR = 0x0002

_COMPAT_HAS_JOURNAL = 0x0004
_COMPAT_LAZY_BG = 0x0040
_COMPAT_SPARSE_SUPER2 = 0x0200

_RO_COMPAT_SPARSE_SUPER = 0x0001
_RO_COMPAT_GDT_CSUM = 0x0010
_RO_COMPAT_HAS_SNAPSHOT = 0x0080
_RO_COMPAT_BIGALLOC = 0x0200
_RO_COMPAT_METADATA_CSUM = 0x0400
_RO_COMPAT_REPLICA = 0x0800
_RO_COMPAT_KNOWN = 0x1FFFF  # through orphan_present (0x10000)

_INCOMPAT_COMPRESSION = 0x0001
_INCOMPAT_RECOVER = 0x0004
_INCOMPAT_JOURNAL_DEV = 0x0008
_INCOMPAT_META_BG = 0x0010
_INCOMPAT_64BIT = 0x0080
_INCOMPAT_MMP = 0x0100
_INCOMPAT_KNOWN = (
    0x0001  # compression (refused below)
    | 0x0002  # filetype
    | 0x0004  # recover (refused below)
    | 0x0008  # journal_dev (refused below)
    | 0x0010  # meta_bg
    | 0x0040  # extents
    | 0x0080  # 64bit
    | 0x0100  # mmp
    | 0x0200  # flex_bg
    | 0x0400  # ea_inode
    | 0x1000  # dirdata
    | 0x2000  # metadata_csum_seed
    | 0x4000  # largedir
    | 0x8000  # inline_data
    | 0x10000  # encrypt
    | 0x20000  # casefold
)

_BG_BLOCK_UNINIT = 0x0002

_MIN_BLOCKS_PER_GROUP = 256  # mke2fs's lower limit; also bounds the number of groups
_MAX_LOG_BLOCK_SIZE = 6  # 64 KiB
_MAX_LOG_CLUSTER_RATIO = 16  # the largest cluster mke2fs makes is 2^16 blocks
_MAX_GROUPS = (1 << 32) - 1

_BITMAP_WINDOW_BYTES = 16 * MiB
"""Bitmap bytes held at once: a 64 TiB file system has 2 GiB of them."""
_MAX_READ_BYTES = 4 * MiB
"""The largest single read of adjacent bitmap blocks."""

_DESC_HEAD = struct.Struct("<III6xH")  # block bitmap, inode bitmap, inode table (lo); flags
_DESC_HI = struct.Struct("<III")  # the same three, high 32 bits, at offset 0x20


def _refuse(reason: str) -> UsedBlocksError:
    return UsedBlocksError(f"cannot tell the used blocks of this ext file system: {reason}")


@dataclass(frozen=True)
class _Geometry:
    """What the superblock says about where things are, checked for consistency."""

    block_size: int
    cluster_ratio: int
    """Blocks per bitmap bit (1 without bigalloc)."""
    first_data_block: int
    blocks_count: int
    blocks_per_group: int
    clusters_per_group: int
    groups: int
    desc_size: int
    desc_blocks: int
    reserved_gdt_blocks: int
    inode_table_blocks: int
    inode_size: int
    inodes_per_group: int
    meta_bg: bool
    first_meta_bg: int
    sparse_super: bool
    sparse_super2_groups: tuple[int, ...] | None
    uninit_flag_honoured: bool
    mmp_block: int | None

    @property
    def descs_per_block(self) -> int:
        return self.block_size // self.desc_size

    def group_first_block(self, group: int) -> int:
        return self.first_data_block + group * self.blocks_per_group

    def has_super(self, group: int) -> bool:
        """Whether ``group`` holds a superblock (backup), as ``ext4_bg_has_super``."""
        if group == 0:
            return True
        if self.sparse_super2_groups is not None:
            return group in self.sparse_super2_groups
        if group <= 1 or not self.sparse_super:
            return True
        if not group & 1:
            return False
        return _is_power(group, 3) or _is_power(group, 5) or _is_power(group, 7)

    def descriptor_block(self, index: int) -> int:
        """The block that holds descriptor block ``index``, as the kernel's ``descriptor_loc``."""
        if not self.meta_bg or index < self.first_meta_bg:
            return _SB_OFFSET // self.block_size + 1 + index
        group = self.descs_per_block * index
        block = self.group_first_block(group) + self.has_super(group)
        if self.block_size == 1024 and index == 0 and self.first_data_block == 0:
            block += 1  # bigalloc with 1 KiB blocks: block 1 holds the superblock
        return block

    def base_metadata(self, group: int) -> tuple[int, int] | None:
        """The blocks ``[start, end)`` at the start of ``group`` that hold a superblock
        backup and descriptor blocks, or ``None`` when it has neither.

        The union of the kernel's ``ext4_num_base_meta_clusters`` and e2fsprogs'
        ``ext2fs_super_and_bgd_loc2``: reserved descriptor blocks count with
        meta_bg too (the kernel counts them, e2fsprogs does not).
        """
        start = self.group_first_block(group)
        if start == 0 and self.block_size == 1024:
            start = 1  # bigalloc with 1 KiB blocks: block 0 is not the superblock's
        count = int(self.has_super(group))
        if not self.meta_bg or group // self.descs_per_block < self.first_meta_bg:
            if count:
                old_desc = self.first_meta_bg if self.meta_bg else self.desc_blocks
                count += old_desc + self.reserved_gdt_blocks
        elif group % self.descs_per_block in (0, 1, self.descs_per_block - 1):
            count += 1
        if not count:
            return None
        return start, start + count


def _is_power(value: int, base: int) -> bool:
    while value > 1 and value % base == 0:
        value //= base
    return value == 1


def _u32(sb: bytes, offset: int) -> int:
    return int.from_bytes(sb[offset : offset + 4], "little")


def _u16(sb: bytes, offset: int) -> int:
    return int.from_bytes(sb[offset : offset + 2], "little")


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _read_geometry(sb: bytes, volume_size: int) -> _Geometry:
    """Check a 1 KiB superblock and return its geometry, or raise :class:`UsedBlocksError`."""
    if _u16(sb, 0x38) != _MAGIC:
        raise _refuse("no ext superblock at 1 KiB (bad magic)")
    rev_level = _u32(sb, 0x4C)
    if rev_level > 1:
        raise _refuse(f"unknown revision level {rev_level}")
    compat, incompat, ro_compat = _u32(sb, 0x5C), _u32(sb, 0x60), _u32(sb, 0x64)

    if incompat & _INCOMPAT_RECOVER:
        raise _refuse(
            "it needs journal recovery (it is mounted read-write, or was not cleanly "
            "unmounted), so its bitmaps may miss blocks in use; back up an unmounted or "
            "frozen volume to skip free blocks"
        )
    state = _u16(sb, 0x3A)
    if state & _STATE_ERROR:
        raise _refuse("it is marked as having errors; run e2fsck -f on it first")
    if not state & _STATE_VALID and not compat & _COMPAT_HAS_JOURNAL:
        raise _refuse(
            "it has no journal and was not cleanly unmounted (or is mounted), so its "
            "bitmaps may miss blocks in use; unmount it and run e2fsck -f first"
        )
    for mask, name in (
        (_INCOMPAT_JOURNAL_DEV, "it is an external journal, not a file system"),
        (_INCOMPAT_COMPRESSION, "it uses the compression feature"),
    ):
        if incompat & mask:
            raise _refuse(name)
    for mask, name in (
        (_RO_COMPAT_HAS_SNAPSHOT, "it holds next3 snapshots"),
        (_RO_COMPAT_REPLICA, "it uses the replica feature"),
    ):
        if ro_compat & mask:
            raise _refuse(name)
    if compat & _COMPAT_LAZY_BG:
        raise _refuse("it uses lazy_bg, a test-only feature")
    if incompat & ~_INCOMPAT_KNOWN:
        raise _refuse(f"unknown incompatible features 0x{incompat & ~_INCOMPAT_KNOWN:x}")
    if ro_compat & ~_RO_COMPAT_KNOWN:
        raise _refuse(f"unknown read-only features 0x{ro_compat & ~_RO_COMPAT_KNOWN:x}")

    log_block_size = _u32(sb, 0x18)
    if log_block_size > _MAX_LOG_BLOCK_SIZE:
        raise _refuse(f"block size 2^{log_block_size} KiB is out of range")
    block_size = 1024 << log_block_size
    blocks_per_group = _u32(sb, 0x20)
    if ro_compat & _RO_COMPAT_BIGALLOC:
        log_cluster_size = _u32(sb, 0x1C)
        if not log_block_size <= log_cluster_size <= log_block_size + _MAX_LOG_CLUSTER_RATIO:
            raise _refuse(f"cluster size 2^{log_cluster_size} KiB is out of range")
        cluster_ratio = 1 << (log_cluster_size - log_block_size)
        clusters_per_group = _u32(sb, 0x24)
        if clusters_per_group * cluster_ratio != blocks_per_group:
            raise _refuse("clusters per group and blocks per group disagree")
    else:
        cluster_ratio = 1
        clusters_per_group = blocks_per_group
    if not 8 <= clusters_per_group <= block_size * 8:
        raise _refuse(f"{clusters_per_group} clusters per group is out of range")
    if blocks_per_group < _MIN_BLOCKS_PER_GROUP:
        raise _refuse(f"{blocks_per_group} blocks per group is out of range")

    first_data_block = _u32(sb, 0x14)
    expected_first = 1 if block_size == 1024 and cluster_ratio == 1 else 0
    if first_data_block != expected_first:
        raise _refuse(f"first data block {first_data_block} where {expected_first} belongs")
    blocks_count = _u32(sb, 0x04)
    if incompat & _INCOMPAT_64BIT:
        blocks_count |= _u32(sb, 0x150) << 32
    if blocks_count <= first_data_block:
        raise _refuse(f"block count {blocks_count} is too small")
    if blocks_count * block_size > volume_size:
        raise _refuse(
            f"it claims {blocks_count * block_size} bytes but the volume holds only "
            f"{volume_size} (a truncated volume?)"
        )
    groups = _ceil_div(blocks_count - first_data_block, blocks_per_group)
    if groups > _MAX_GROUPS:
        raise _refuse(f"{groups} block groups is out of range")

    if incompat & _INCOMPAT_64BIT:
        desc_size = _u16(sb, 0xFE)
        if not 64 <= desc_size <= 1024 or desc_size & (desc_size - 1):
            raise _refuse(f"group descriptor size {desc_size} is out of range")
    else:
        desc_size = 32
    desc_blocks = _ceil_div(groups, block_size // desc_size)

    inode_size = 128 if rev_level == 0 else _u16(sb, 0x58)
    if not 128 <= inode_size <= block_size or inode_size & (inode_size - 1):
        raise _refuse(f"inode size {inode_size} is out of range")
    inodes_per_group = _u32(sb, 0x28)
    if not block_size // inode_size <= inodes_per_group <= block_size * 8:
        raise _refuse(f"{inodes_per_group} inodes per group is out of range")
    if _u32(sb, 0x00) != groups * inodes_per_group:
        raise _refuse("the inode count does not match the number of groups")

    reserved_gdt_blocks = _u16(sb, 0xCE)
    if reserved_gdt_blocks > block_size // 4:
        raise _refuse(f"{reserved_gdt_blocks} reserved descriptor blocks is out of range")
    meta_bg = bool(incompat & _INCOMPAT_META_BG)
    first_meta_bg = _u32(sb, 0x104) if meta_bg else 0
    if first_meta_bg > desc_blocks:
        raise _refuse(f"first meta block group {first_meta_bg} is out of range")

    sparse_super2_groups = None
    if compat & _COMPAT_SPARSE_SUPER2:
        sparse_super2_groups = tuple(g for g in (_u32(sb, 0x24C), _u32(sb, 0x250)) if g)
    mmp_block = None
    if incompat & _INCOMPAT_MMP:
        mmp_block = int.from_bytes(sb[0x168:0x170], "little")
        if not first_data_block < mmp_block < blocks_count:
            raise _refuse(f"the MMP block {mmp_block} lies outside the file system")

    return _Geometry(
        block_size=block_size,
        cluster_ratio=cluster_ratio,
        first_data_block=first_data_block,
        blocks_count=blocks_count,
        blocks_per_group=blocks_per_group,
        clusters_per_group=clusters_per_group,
        groups=groups,
        desc_size=desc_size,
        desc_blocks=desc_blocks,
        reserved_gdt_blocks=reserved_gdt_blocks,
        inode_table_blocks=_ceil_div(inodes_per_group * inode_size, block_size),
        inode_size=inode_size,
        inodes_per_group=inodes_per_group,
        meta_bg=meta_bg,
        first_meta_bg=first_meta_bg,
        sparse_super=bool(ro_compat & _RO_COMPAT_SPARSE_SUPER),
        sparse_super2_groups=sparse_super2_groups,
        uninit_flag_honoured=bool(ro_compat & (_RO_COMPAT_GDT_CSUM | _RO_COMPAT_METADATA_CSUM)),
        mmp_block=mmp_block,
    )


@dataclass(frozen=True, slots=True)
class _Group:
    block_bitmap: int
    inode_bitmap: int
    inode_table: int
    block_uninit: bool


def _read_blocks(source: ByteSource, geo: _Geometry, first: int, count: int, what: str) -> bytes:
    """Return ``count`` blocks from block ``first``, or refuse when the volume is short."""
    length = count * geo.block_size
    data = source.read_at(first * geo.block_size, length)
    if len(data) != length:
        raise _refuse(f"reading {what} at block {first} came back short")
    return data


def _coalesced(blocks: list[int], max_count: int) -> list[tuple[int, int]]:
    """Return ``(first, count)`` runs of adjacent blocks from sorted unique ``blocks``."""
    runs: list[tuple[int, int]] = []
    for block in blocks:
        if runs:
            first, count = runs[-1]
            if block == first + count and count < max_count:
                runs[-1] = (first, count + 1)
                continue
        runs.append((block, 1))
    return runs


def _read_groups(source: ByteSource, geo: _Geometry) -> list[_Group]:
    """Return every group's descriptor, with its blocks checked to lie in the file system."""
    locations = sorted({geo.descriptor_block(i) for i in range(geo.desc_blocks)})
    if len(locations) != geo.desc_blocks or locations[-1] >= geo.blocks_count:
        raise _refuse("the group descriptors lie outside the file system")
    by_block: dict[int, bytes] = {}
    for first, count in _coalesced(locations, _MAX_READ_BYTES // geo.block_size):
        data = _read_blocks(source, geo, first, count, "group descriptors")
        for i in range(count):
            by_block[first + i] = data[i * geo.block_size : (i + 1) * geo.block_size]
    table = b"".join(by_block[geo.descriptor_block(i)] for i in range(geo.desc_blocks))

    wide = geo.desc_size >= 64
    groups: list[_Group] = []
    low, high = geo.first_data_block, geo.blocks_count
    for number in range(geo.groups):
        offset = number * geo.desc_size
        block_bitmap, inode_bitmap, inode_table, flags = _DESC_HEAD.unpack_from(table, offset)
        if wide:
            bb_hi, ib_hi, it_hi = _DESC_HI.unpack_from(table, offset + 0x20)
            block_bitmap |= bb_hi << 32
            inode_bitmap |= ib_hi << 32
            inode_table |= it_hi << 32
        if not (
            low < block_bitmap < high
            and low < inode_bitmap < high
            and low < inode_table
            and inode_table + geo.inode_table_blocks <= high
        ):
            raise _refuse(f"group {number}'s bitmaps or inode table lie outside the file system")
        block_uninit = geo.uninit_flag_honoured and bool(flags & _BG_BLOCK_UNINIT)
        groups.append(_Group(block_bitmap, inode_bitmap, inode_table, block_uninit))
    return groups


_NONZERO_RUNS = re.compile(rb"[^\x00]+")
_BIT_POSITIONS = tuple(tuple(bit for bit in range(8) if value >> bit & 1) for value in range(256))


class _RunFinder:
    """Turns bitmaps into byte offsets of runs of set bits, for one bit-to-bytes scale."""

    def __init__(self, unit: int) -> None:
        self._unit = unit
        self._byte_span = 8 * unit
        # Per byte value: the byte offsets, from the byte's first bit, of its set bits.
        self._steps = tuple(tuple(bit * unit for bit in bits) for bits in _BIT_POSITIONS)

    def add(self, bits: int, nbits: int, base: int, flat: list[int]) -> None:
        """Append to ``flat`` the runs of set bits among the low ``nbits`` of ``bits``,
        as byte offsets from ``base``: start, end, start, end... ends exclusive.

        Bit ``i`` of the edge mask is set where bit ``i`` differs from bit ``i - 1``,
        so the edges alternate start, end. Only the edge bytes reach Python code:
        the cost is the C-speed big-integer work and a step per run. A run that
        starts where ``flat``'s last run ends continues it.
        """
        edges = (bits ^ (bits << 1)).to_bytes(nbits // 8 + 1, "little")
        steps, byte_span = self._steps, self._byte_span
        offsets: list[int] = []
        append = offsets.append
        for match in _NONZERO_RUNS.finditer(edges):
            offset = base + match.start() * byte_span
            for value in match.group():
                for step in steps[value]:
                    append(offset + step)
                offset += byte_span
        if flat and offsets and flat[-1] == offsets[0]:
            flat.pop()
            del offsets[0]
        flat.extend(offsets)


def _metadata_bits(geo: _Geometry, groups: list[_Group]) -> dict[int, int]:
    """Return, per group, the bitmap bits of the metadata that lies in it.

    The metadata is every group's superblock backup, descriptor blocks and
    reserved descriptor blocks, bitmaps and inode table, and the MMP block:
    what an uninitialised group's bitmap would mark, and what an initialised
    one marks already.
    """
    extents: list[tuple[int, int]] = []
    for number, group in enumerate(groups):
        base = geo.base_metadata(number)
        if base is not None:
            extents.append(base)
        extents.append((group.block_bitmap, group.block_bitmap + 1))
        extents.append((group.inode_bitmap, group.inode_bitmap + 1))
        extents.append((group.inode_table, group.inode_table + geo.inode_table_blocks))
    if geo.mmp_block is not None:
        extents.append((geo.mmp_block, geo.mmp_block + 1))

    bits: dict[int, int] = {}
    first, per_group, ratio = geo.first_data_block, geo.blocks_per_group, geo.cluster_ratio
    for start, end in extents:
        start, end = max(start, first), min(end, geo.blocks_count)
        while start < end:  # an extent may cross groups (flex_bg packs inode tables)
            number = (start - first) // per_group
            group_start = first + number * per_group
            stop = min(end, group_start + per_group)
            low = (start - group_start) // ratio
            high = _ceil_div(stop - group_start, ratio)
            bits[number] = bits.get(number, 0) | ((1 << (high - low)) - 1) << low
            start = stop
    return bits


def _used_offsets(source: ByteSource, geo: _Geometry, groups: list[_Group]) -> list[int]:
    """Return the file system's used byte ranges, flattened (start, end, start, end...)
    in ascending order: each group's bitmap (or none, when uninitialised) with the
    metadata that lies in it.

    Bitmaps are read a window of groups at a time, adjacent bitmap blocks (flex_bg
    packs them) in one read each.
    """
    bs = geo.block_size
    cluster_bytes = bs * geo.cluster_ratio
    fs_end = geo.blocks_count * bs
    metadata = _metadata_bits(geo, groups)
    finder = _RunFinder(cluster_bytes)
    full_mask = (1 << geo.clusters_per_group) - 1
    bitmap_bytes = _ceil_div(geo.clusters_per_group, 8)
    window = max(1, _BITMAP_WINDOW_BYTES // bs)
    flat: list[int] = []
    for window_start in range(0, len(groups), window):
        numbers = range(window_start, min(window_start + window, len(groups)))
        wanted = sorted({groups[n].block_bitmap for n in numbers if not groups[n].block_uninit})
        bitmaps: dict[int, bytes] = {}
        for first, count in _coalesced(wanted, max(1, _MAX_READ_BYTES // bs)):
            data = _read_blocks(source, geo, first, count, "block bitmaps")
            for i in range(count):
                bitmaps[first + i] = data[i * bs : i * bs + bitmap_bytes]
        for number in numbers:
            group = groups[number]
            bits = metadata.get(number, 0)
            if not group.block_uninit:
                bits |= int.from_bytes(bitmaps[group.block_bitmap], "little")
            if not bits:
                continue
            group_start = geo.group_first_block(number) * bs
            nbits = geo.clusters_per_group
            if group_start + nbits * cluster_bytes > fs_end:  # the last group, partial
                nbits = _ceil_div(fs_end - group_start, cluster_bytes)
                bits &= (1 << nbits) - 1
            else:
                bits &= full_mask  # bits past the group are padding
            finder.add(bits, nbits, group_start, flat)
    if flat and flat[-1] > fs_end:  # a partial last cluster
        flat[-1] = fs_end
    return flat


def _with_range(flat: list[int], start: int, end: int) -> None:
    """Add ``[start, end)`` to the flattened sorted ranges ``flat``, joining what it meets."""
    low = bisect.bisect_left(flat, start)  # odd: start lies in (or ends) a range
    high = bisect.bisect_right(flat, end)  # odd: end lies in (or begins) a range
    flat[low:high] = ([] if low % 2 else [start]) + ([] if high % 2 else [end])


def _without_range(flat: list[int], start: int, end: int) -> None:
    """Remove ``[start, end)`` from the flattened sorted ranges ``flat``."""
    if start >= end:
        return
    low = bisect.bisect_left(flat, start)  # odd: a range begins before start and reaches it
    high = bisect.bisect_right(flat, end)  # odd: a range begins at or before end, ends after
    flat[low:high] = ([start] if low % 2 else []) + ([end] if high % 2 else [])


_JOURNAL_MAGIC = 0xC03B3998
_EXTENT_MAGIC = 0xF30A
_JNL_BACKUP_BLOCKS = 1


def _journal_inode_blocks(
    source: ByteSource, sb: bytes, geo: _Geometry, groups: list[_Group]
) -> bytes | None:
    """Return the 60-byte ``i_block`` of the journal inode, read from its inode table."""
    inum = _u32(sb, 0xE0)
    if not 1 <= inum <= geo.groups * geo.inodes_per_group:
        return None
    group, index = divmod(inum - 1, geo.inodes_per_group)
    offset = groups[group].inode_table * geo.block_size + index * geo.inode_size
    inode = source.read_at(offset, 0x28 + 60)
    if len(inode) < 0x28 + 60:
        return None
    return inode[0x28 : 0x28 + 60]


def _clean_journal_log(
    source: ByteSource, sb: bytes, geo: _Geometry, groups: list[_Group]
) -> tuple[int, int] | None:
    """Return the byte range of an internal journal's log when it holds nothing to replay.

    A clean journal (journal superblock ``s_start == 0``; the file system's
    needs_recovery flag is refused earlier) is never read past its superblock: on
    mount, jbd2 sees it empty and starts writing afresh. Its log is then old
    transactions only, and restoring it as zeros changes nothing. The journal's
    blocks are the journal inode's own (``s_journal_inum``, as the kernel reads them),
    and must equal the superblock's backup of them (``s_jnl_blocks``); anything
    unexpected keeps the journal in the map.
    """
    compat = _u32(sb, 0x5C)
    if not compat & _COMPAT_HAS_JOURNAL or _u32(sb, 0xE0) == 0 or sb[0xFD] != _JNL_BACKUP_BLOCKS:
        return None
    i_block = sb[0x10C : 0x10C + 60]
    if _journal_inode_blocks(source, sb, geo, groups) != i_block:
        return None  # the backup is stale (or the inode unreadable): trust neither
    magic, entries, _max, depth = struct.unpack_from("<HHHH", i_block, 0)
    if magic != _EXTENT_MAGIC or depth != 0 or not 1 <= entries <= 4:
        return None
    extents = []
    for n in range(entries):
        logical, length, start_hi, start_lo = struct.unpack_from("<IHHI", i_block, 12 + 12 * n)
        if length > 32768:  # an uninitialised extent: not a journal's
            return None
        extents.append((logical, length, (start_hi << 32) | start_lo))
    extents.sort()
    # Only one contiguous extent is handled: the journal mke2fs and tune2fs make.
    if len(extents) != 1 or extents[0][0] != 0 or extents[0][1] < 2:
        return None
    _, length, first = extents[0]
    if not (geo.first_data_block < first and first + length <= geo.blocks_count):
        return None
    bs = geo.block_size
    jsb = source.read_at(first * bs, 1024)
    if len(jsb) < 1024:
        return None
    j_magic, j_type, _seq, j_blocksize, j_maxlen, _first, _sequence, j_start = struct.unpack_from(
        ">IIIIIIII", jsb, 0
    )
    if j_magic != _JOURNAL_MAGIC or j_type not in (3, 4) or j_blocksize != bs or j_start != 0:
        return None  # v1/v2 superblock types only; a non-empty log must be kept
    if j_maxlen > length:
        return None
    return ((first + 1) * bs, (first + length) * bs)


def _ext_used_map(source: ByteSource) -> UsedMap:
    size = source.size
    sb = source.read_at(_SB_OFFSET, _SB_SIZE)
    if len(sb) < _SB_SIZE:
        raise _refuse("the volume is too small to hold an ext superblock")
    geo = _read_geometry(sb, size)
    groups = _read_groups(source, geo)
    flat = _used_offsets(source, geo, groups)
    journal_log = _clean_journal_log(source, sb, geo, groups)
    if journal_log is not None:
        _without_range(flat, *journal_log)
    _with_range(flat, 0, min(BOOT_REGION, size))
    fs_end = geo.blocks_count * geo.block_size
    if fs_end < size:
        _with_range(flat, fs_end, size)
    ranges = tuple(zip(flat[::2], flat[1::2], strict=True))
    return UsedMap(size, ranges, geo.block_size, UsedMethod.EXT_BITMAP)
