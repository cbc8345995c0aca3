"""Used-block maps of ext2/3/4 image files, checked against e2fsprogs and by restoring them.

Every image is a sparse file made by ``mkfs -d`` from a directory of files (no
loop device, no mount). The truth is ``dumpe2fs``'s free-block lists; the
strongest check copies only the mapped ranges into a zero-filled file and asks
``e2fsck`` and ``debugfs rdump`` whether the file system and every file survived.
"""

from __future__ import annotations

import dataclasses
import filecmp
import os
import random
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.bytesource import BytesSource, FileSource
from core.errors import BlockvaultError
from core.signatures import FsType, probe
from core.usedblocks import (
    BOOT_REGION,
    UsedBlocksError,
    UsedMap,
    UsedMethod,
    used_map,
    used_map_or_whole,
    whole_map,
)

TOOL_PATH = "/usr/sbin:/sbin:/usr/bin:/bin"
KiB = 1 << 10
MiB = 1 << 20
IMAGE_SIZE = 256 * MiB
INLINE_DATA_BYTES = 60

Range = tuple[int, int]


def tool(name: str) -> str:
    """The path of a system tool, or a skip when this machine lacks it."""
    path = shutil.which(name, path=TOOL_PATH)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool(args[0]), *args[1:]], capture_output=True, text=True)


def debugfs(image: Path, request: str, *, write: bool = False) -> str:
    """Run one debugfs request on an image file and return its output."""
    proc = run("debugfs", *(["-w"] if write else []), "-R", request, str(image))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def normalized(ranges: Iterable[Range]) -> list[Range]:
    """Sort ranges and join the overlapping and adjacent ones."""
    joined: list[Range] = []
    for start, end in sorted(r for r in ranges if r[0] < r[1]):
        if joined and start <= joined[-1][1]:
            joined[-1] = (joined[-1][0], max(end, joined[-1][1]))
        else:
            joined.append((start, end))
    return joined


def overlap(ranges: Iterable[Range], start: int, end: int) -> int:
    """How many bytes of ``[start, end)`` the ranges cover."""
    return sum(max(0, min(end, b) - max(start, a)) for a, b in ranges)


@dataclass(frozen=True)
class Truth:
    """What dumpe2fs says about an image."""

    block_size: int
    fs_bytes: int
    used: list[Range]
    """Byte ranges of the blocks that no group's "Free blocks:" list names."""


def dumpe2fs_truth(image: Path) -> Truth:
    out = run("dumpe2fs", str(image)).stdout

    def header(name: str) -> int:
        return int(re.search(rf"^{name}:\s+(\d+)", out, re.M).group(1))

    block_size, count, first = header("Block size"), header("Block count"), header("First block")
    found = re.search(r"^Cluster size:\s+(\d+)", out, re.M)
    ratio = int(found.group(1)) // block_size if found else 1
    free: list[Range] = []
    for listing in re.findall(r"^  Free blocks: ?(.*)$", out, re.M):
        for part in filter(None, (p.strip() for p in listing.split(","))):
            low, _, high = part.partition("-")
            # With bigalloc a range ends at its last free cluster's first block.
            last = (int(high or low) // ratio + 1) * ratio
            free.append((int(low), min(last, count)))
    used, position = [], first
    for low, high in normalized(free):
        used.append((position * block_size, low * block_size))
        position = high
    used.append((position * block_size, count * block_size))
    skipped = _clean_journal_log(image, out, block_size)
    return Truth(block_size, count * block_size, subtract(normalized(used), skipped))


def _clean_journal_log(image: Path, out: str, block_size: int) -> list[Range]:
    """The journal's log past its superblock, per debugfs, when the journal is one extent
    and empty (what the map leaves out: a clean log is never read)."""
    if "has_journal" not in out or "needs_recovery" in out:
        return []
    stat = debugfs(image, "stat <8>")
    extents = re.findall(r"\((\d+)-(\d+)\):(\d+)-(\d+)", stat.split("EXTENTS:")[-1])
    if "EXTENTS:" not in stat or len(extents) != 1:
        return []
    first, last = int(extents[0][2]), int(extents[0][3])
    if not re.search(r"^Journal start:\s+0$", out, re.M):
        return []
    return [((first + 1) * block_size, (last + 1) * block_size)]


def subtract(ranges: list[Range], holes: list[Range]) -> list[Range]:
    """Return ``ranges`` without ``holes`` (all half-open byte ranges)."""
    out = list(ranges)
    for hs, he in holes:
        nxt = []
        for s, e in out:
            if he <= s or hs >= e:
                nxt.append((s, e))
                continue
            if s < hs:
                nxt.append((s, hs))
            if he < e:
                nxt.append((he, e))
        out = nxt
    return normalized(out)


# -- the files the images hold ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of about 10 MiB: random files, many small ones, hard links, a symlink,
    an empty file and a 64 MiB sparse file with three islands of data."""
    root = tmp_path_factory.mktemp("tree")
    rng = random.Random(20240601)
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "big.bin").write_bytes(rng.randbytes(4 * MiB))
    (root / "sub" / "medium.bin").write_bytes(rng.randbytes(2 * MiB + 123))
    (root / "doomed.bin").write_bytes(rng.randbytes(MiB + 7))
    for index in range(300):
        size = rng.choice([0, 1, 60, 4095, 4096, 4097, rng.randrange(1, 20 * KiB)])
        (root / "sub" / "deeper" / f"f{index:03}").write_bytes(rng.randbytes(size))
    os.link(root / "big.bin", root / "sub" / "big-hardlink.bin")
    os.symlink("../big.bin", root / "sub" / "big-symlink")
    (root / "empty").write_bytes(b"")
    with open(root / "sparse.bin", "wb") as sparse:
        sparse.truncate(64 * MiB)
        for offset in (0, 20 * MiB + 5, 64 * MiB - 3000):
            sparse.seek(offset)
            sparse.write(rng.randbytes(3000))
    return root


def assert_same_tree(expected: Path, actual: Path) -> None:
    """Every file, link and directory of ``expected`` is in ``actual`` with the same bytes."""
    for dirpath, dirnames, filenames in os.walk(expected):
        relative = Path(dirpath).relative_to(expected)
        names = (set(dirnames) | set(filenames)) - {"lost+found"}
        restored = set(os.listdir(actual / relative)) - {"lost+found"}
        assert restored == names, relative
        for name in filenames + dirnames:
            source, copy = Path(dirpath) / name, actual / relative / name
            if source.is_symlink():
                assert os.readlink(copy) == os.readlink(source), copy
            elif source.is_file() and source.stat().st_size <= INLINE_DATA_BYTES:
                # debugfs 1.47.0 dumps a file kept in its inode (inline_data) as
                # all 60 bytes of the inode's block map, zero-padded past its size.
                data, dumped = source.read_bytes(), copy.read_bytes()
                assert dumped in (data, data.ljust(INLINE_DATA_BYTES, b"\0")), copy
            elif source.is_file():
                assert filecmp.cmp(source, copy, shallow=False), copy


# -- the images ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """One way to make an ext file system."""

    name: str
    mkfs: str
    options: str = ""
    """mkfs options, split on blanks."""


LAYOUTS = [
    Layout("ext2-1k", "mkfs.ext2", "-b 1024"),
    Layout("ext2-4k", "mkfs.ext2", "-b 4096"),
    Layout("ext3-1k", "mkfs.ext3", "-b 1024"),
    Layout("ext3-4k", "mkfs.ext3", "-b 4096"),
    Layout("ext4-1k", "mkfs.ext4", "-b 1024"),
    Layout("ext4-4k", "mkfs.ext4", "-b 4096"),
    Layout("ext4-4k-many-groups", "mkfs.ext4", "-b 4096 -g 2048 -O ^resize_inode"),
    Layout("ext4-no-flex_bg", "mkfs.ext4", "-b 4096 -g 4096 -O ^flex_bg"),
    Layout("ext4-meta_bg-1k", "mkfs.ext4", "-b 1024 -O meta_bg,^resize_inode"),
    Layout("ext4-meta_bg-4k", "mkfs.ext4", "-b 4096 -g 1024 -O meta_bg,^resize_inode"),
    Layout("ext4-32bit-descriptors", "mkfs.ext4", "-b 4096 -g 4096 -O ^64bit"),
    Layout("ext4-uninit_bg", "mkfs.ext4", "-b 1024 -O ^metadata_csum,uninit_bg"),
    Layout("ext4-no-group-checksums", "mkfs.ext4", "-b 1024 -O ^metadata_csum,^uninit_bg"),
    Layout("ext4-sparse_super2", "mkfs.ext4", "-b 1024 -O sparse_super2"),
    Layout("ext4-no-sparse_super", "mkfs.ext4", "-b 1024 -O ^sparse_super,^resize_inode"),
    Layout("ext4-bigalloc-1k", "mkfs.ext4", "-b 1024 -O bigalloc -C 16384"),
    Layout("ext4-bigalloc-4k", "mkfs.ext4", "-b 4096 -O bigalloc -C 65536"),
    Layout("ext4-inline_data", "mkfs.ext4", "-b 4096 -O inline_data"),
    Layout("ext4-mmp", "mkfs.ext4", "-b 4096 -O mmp"),
]


def make_image(path: Path, layout: Layout, tree: Path | None, size: int = IMAGE_SIZE) -> Path:
    """Make ``layout``'s file system in a sparse file of ``size`` bytes, filled from ``tree``."""
    with open(path, "wb") as image:
        image.truncate(size)
    populate = ("-d", str(tree)) if tree is not None else ()
    proc = run(layout.mkfs, "-q", "-F", *layout.options.split(), *populate, str(path))
    assert proc.returncode == 0, proc.stderr
    return path


@pytest.fixture(scope="module", params=LAYOUTS, ids=lambda layout: layout.name)
def image(request: pytest.FixtureRequest, tree: Path, tmp_path_factory: pytest.TempPathFactory):
    """A populated image of each layout; tests only read it."""
    layout: Layout = request.param
    return make_image(tmp_path_factory.mktemp(layout.name) / "fs.img", layout, tree)


def map_of(path: Path) -> UsedMap:
    with FileSource(path) as source:
        signature = probe(source)
        assert signature is not None
        return used_map(source, signature.fstype)


def copy_used(image: Path, used: UsedMap, target: Path) -> None:
    """Write only the mapped ranges of ``image`` into a new zero-filled file of its size."""
    with open(image, "rb") as src, open(target, "wb") as dst:
        dst.truncate(used.size)
        for start, end in used.ranges:
            src.seek(start)
            dst.seek(start)
            while start < end:
                piece = src.read(min(end - start, 4 * MiB))
                assert piece
                dst.write(piece)
                start += len(piece)


# -- agreement with e2fsprogs ----------------------------------------------------------------


def test_map_is_dumpe2fs_used_blocks_plus_the_boot_region(image: Path):
    """The map is exactly the blocks dumpe2fs does not call free, and the first MiB —
    less a clean journal's log."""
    used = map_of(image)
    truth = dumpe2fs_truth(image)
    assert used.method == UsedMethod.EXT_BITMAP
    assert used.block_size == truth.block_size
    assert list(used.ranges) == normalized([*truth.used, (0, BOOT_REGION)])


def test_mostly_empty_file_system_maps_a_small_part(image: Path):
    """10 MiB of files in 256 MiB: the journal, inode tables and files, not the free space."""
    used = map_of(image)
    assert used.used_bytes < IMAGE_SIZE // 5
    assert used.used_bytes >= 9 * MiB


def test_copy_of_only_used_ranges_is_a_clean_file_system_with_the_same_files(
    image: Path, tree: Path, tmp_path: Path
):
    """The point of the map: what it leaves out is not needed to restore the volume."""
    copy = tmp_path / "copy.img"
    copy_used(image, map_of(image), copy)
    fsck = run("e2fsck", "-fn", str(copy))
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    from_copy, from_image = tmp_path / "from-copy", tmp_path / "from-image"
    for image_file, restored in ((copy, from_copy), (image, from_image)):
        restored.mkdir()
        debugfs(image_file, f"rdump / {restored}")
    assert_same_tree(tree, from_copy)
    assert_same_tree(from_image, from_copy)


def test_flex_bg_bitmaps_are_read_in_one_read_per_flex_group(tmp_path: Path):
    """32 groups without uninit flags: all 32 bitmaps are read, in 2 reads (16 per flex group)."""
    layout = Layout("plain", "mkfs.ext4", "-b 1024 -O ^metadata_csum,^uninit_bg")
    path = make_image(tmp_path / "fs.img", layout, None)

    class CountingSource(FileSource):
        def __init__(self, path: Path) -> None:
            super().__init__(path)
            self.reads: list[tuple[int, int]] = []

        def read_at(self, offset: int, length: int) -> bytes:
            self.reads.append((offset, length))
            return super().read_at(offset, length)

    with CountingSource(path) as source:
        used_map(source, "ext4")
    superblock, descriptors, *rest = source.reads
    # After the bitmaps: the journal inode and the journal's superblock.
    bitmaps = [r for r in rest if r[1] >= 16 * KiB]
    assert superblock == (1024, 1024)
    assert descriptors == (2048, 2048)  # 32 descriptors of 64 bytes, two blocks, one read
    assert [length for _, length in bitmaps] == [16 * KiB, 16 * KiB]


# -- freed blocks ----------------------------------------------------------------------------


def test_blocks_of_a_deleted_file_are_left_out_though_they_still_hold_its_data(
    tree: Path, tmp_path: Path
):
    path = make_image(tmp_path / "fs.img", Layout("ext4", "mkfs.ext4", "-b 4096"), tree)
    before = map_of(path)
    blocks = [int(b) for b in debugfs(path, "blocks /doomed.bin").split()]
    assert len(blocks) == ceil_div(MiB + 7, 4096)
    debugfs(path, "rm /doomed.bin", write=True)
    assert run("e2fsck", "-fn", str(path)).returncode == 0

    after = map_of(path)
    data = (tree / "doomed.bin").read_bytes()
    with FileSource(path) as source:
        first = source.read_at(blocks[0] * 4096, 4096)
    assert first == data[:4096], "debugfs rm should leave the old bytes in place"
    for block in blocks:
        assert overlap(before.ranges, block * 4096, block * 4096 + 4096) == 4096
        assert overlap(after.ranges, block * 4096, block * 4096 + 4096) == 0
    assert before.used_bytes - after.used_bytes == len(blocks) * 4096


# -- the volume around the file system -------------------------------------------------------


def test_bytes_past_the_file_system_end_are_kept(tree: Path, tmp_path: Path):
    """A partition larger than its file system: the tail is not the file system's to free."""
    path = tmp_path / "fs.img"
    make_image(path, Layout("ext4", "mkfs.ext4", "-b 4096"), tree, size=64 * MiB)
    with open(path, "r+b") as grown:
        grown.truncate(64 * MiB + 12345)
    used = map_of(path)
    assert used.size == 64 * MiB + 12345
    assert used.ranges[-1][1] == used.size
    assert overlap(used.ranges, 64 * MiB, used.size) == 12345


def test_truncated_volume_is_refused(tmp_path: Path):
    path = make_image(tmp_path / "fs.img", Layout("ext4", "mkfs.ext4"), None, 64 * MiB)
    with open(path, "r+b") as cut:
        cut.truncate(60 * MiB)
    with FileSource(path) as source, pytest.raises(UsedBlocksError, match="truncated"):
        used_map(source, "ext4")


# -- refusals that fall back to the whole volume ---------------------------------------------


@pytest.mark.parametrize(
    ("mkfs", "request_", "words"),
    [
        ("mkfs.ext4", "feature needs_recovery", "journal recovery"),
        ("mkfs.ext3", "feature needs_recovery", "journal recovery"),
        ("mkfs.ext4", "ssv state 3", "errors"),
        ("mkfs.ext2", "ssv state 0", "not cleanly unmounted"),
    ],
    ids=["ext4-needs-recovery", "ext3-needs-recovery", "ext4-errors", "ext2-unclean"],
)
def test_untrustworthy_bitmaps_fall_back_to_the_whole_volume(
    tmp_path: Path, mkfs: str, request_: str, words: str
):
    path = make_image(tmp_path / "fs.img", Layout(mkfs, mkfs), None, 32 * MiB)
    debugfs(path, request_, write=True)
    with FileSource(path) as source:
        with pytest.raises(UsedBlocksError, match=words) as raised:
            used_map(source, "ext4")
        assert isinstance(raised.value, BlockvaultError)
        used, warning = used_map_or_whole(source, "ext4")
    assert used == whole_map(32 * MiB)
    assert used.ranges == ((0, 32 * MiB),)
    assert warning is not None
    assert words in warning
    assert "whole volume" in warning


def test_journalled_file_system_left_unclean_without_recovery_is_mapped(tmp_path: Path):
    """A frozen, mounted ext4 (the snapshot case): not clean, but nothing left in the journal."""
    path = make_image(tmp_path / "fs.img", Layout("ext4", "mkfs.ext4"), None, 32 * MiB)
    debugfs(path, "ssv state 0", write=True)
    with FileSource(path) as source:
        used, warning = used_map_or_whole(source, FsType.EXT4)
    assert warning is None
    assert used.method == UsedMethod.EXT_BITMAP


@pytest.fixture(scope="module")
def small_ext4(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """An 8 MiB ext4 with 16 groups whose superblock, descriptors and bitmaps are in 64 KiB."""
    tree = tmp_path_factory.mktemp("small-tree")
    (tree / "a").write_bytes(random.Random(1).randbytes(300 * KiB))
    (tree / "b").symlink_to("a")
    layout = Layout("small", "mkfs.ext4", "-b 1024 -g 512 -N 512 -J size=1 -O ^resize_inode")
    path = make_image(tmp_path_factory.mktemp("small") / "fs.img", layout, tree, 8 * MiB)
    return path.read_bytes()


def patched(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


def test_unknown_incompatible_feature_is_refused(small_ext4: bytes):
    incompat = int.from_bytes(small_ext4[1024 + 0x60 : 1024 + 0x64], "little")
    data = patched(small_ext4, 1024 + 0x60, (incompat | 0x100000).to_bytes(4, "little"))
    with pytest.raises(UsedBlocksError, match="unknown incompatible features 0x100000"):
        used_map(BytesSource(data), "ext4")


def test_external_journal_device_is_refused(tmp_path: Path):
    path = tmp_path / "journal.img"
    with open(path, "wb") as image:
        image.truncate(16 * MiB)
    proc = run("mkfs.ext4", "-q", "-F", "-O", "journal_dev", str(path))
    assert proc.returncode == 0, proc.stderr
    with FileSource(path) as source, pytest.raises(UsedBlocksError, match="external journal"):
        used_map(source, "ext4")


def test_missing_superblock_is_refused():
    with pytest.raises(UsedBlocksError, match="bad magic"):
        used_map(BytesSource(bytes(64 * KiB)), "ext4")
    with pytest.raises(UsedBlocksError, match="too small"):
        used_map(BytesSource(bytes(1500)), "ext2")


# -- other volumes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fstype", [None, "xfs", "btrfs", "vfat", "swap", "LVM2_member", FsType.XFS]
)
def test_anything_but_ext_is_the_whole_volume(fstype: str | None):
    used = used_map(BytesSource(bytes(5000)), fstype)
    assert used == UsedMap(5000, ((0, 5000),), 512, "whole")
    assert used.method == UsedMethod.WHOLE
    assert used.used_bytes == 5000


def test_empty_volume_has_no_ranges():
    assert used_map(BytesSource(b""), None).ranges == ()
    assert whole_map(0).used_bytes == 0


# -- merged and aligned ----------------------------------------------------------------------


def crafted(*ranges: Range, size: int = 100 * MiB) -> UsedMap:
    return UsedMap(size, tuple(ranges), 4096, UsedMethod.EXT_BITMAP)


def test_merged_joins_only_gaps_shorter_than_the_gap():
    used = crafted((0, 4096), (8192, 12288), (12288 + 10000, 40960), (60000, 60001))
    joined = used.merged(10001)
    assert joined.ranges == ((0, 40960), (60000, 60001))
    assert used.merged(10000).ranges == ((0, 12288), (22288, 40960), (60000, 60001))
    assert dataclasses.replace(joined, ranges=used.ranges) == used  # size, unit, method kept
    assert used.merged(0) == used
    assert used.merged(-5) == used


def test_aligned_lists_each_touched_chunk_once():
    chunk = 4 * MiB
    used = crafted(
        (0, 1),  # chunk 0
        (chunk - 1, chunk),  # still chunk 0: an end on a boundary touches nothing past it
        (chunk + 1, chunk + 2),  # chunk 1
        (3 * chunk - 5, 5 * chunk + 1),  # chunks 2 to 5
        (5 * chunk + 10, 5 * chunk + 20),  # chunk 5 again
        (9 * chunk, 10 * chunk),  # chunk 9
    )
    assert used.aligned(chunk) == (0, 1, 2, 3, 4, 5, 9)
    assert crafted().aligned(chunk) == ()
    with pytest.raises(ValueError):
        used.aligned(0)


def test_map_rejects_unsorted_overlapping_or_outside_ranges():
    for ranges in (((10, 20), (5, 8)), ((0, 10), (10, 20)), ((0, 10), (5, 20)), ((5, 5),)):
        with pytest.raises(ValueError):
            crafted(*ranges)
    with pytest.raises(ValueError):
        crafted((0, 11), size=10)


@st.composite
def used_maps(draw: st.DrawFn) -> UsedMap:
    cuts = sorted(draw(st.sets(st.integers(0, 1 << 16), max_size=40)))
    ranges = tuple(zip(cuts[::2], cuts[1::2], strict=False))
    return UsedMap(1 << 16, ranges, 1, UsedMethod.EXT_BITMAP)


@given(used_maps(), st.integers(-3, 5000), st.integers(1, 5000))
def test_merged_and_aligned_agree_with_brute_force(used: UsedMap, gap: int, chunk: int):
    covered = {b for start, end in used.ranges for b in range(start, end)}
    joined = used.merged(gap)
    assert {b for start, end in joined.ranges for b in range(start, end)} >= covered
    gaps = [b - a for (_, a), (b, _) in zip(joined.ranges, joined.ranges[1:], strict=False)]
    assert all(g >= gap for g in gaps)
    assert joined.used_bytes - used.used_bytes == sum(
        b - a for (_, a), (b, _) in zip(used.ranges, used.ranges[1:], strict=False) if b - a < gap
    )
    assert used.aligned(chunk) == tuple(sorted({b // chunk for b in covered}))


# -- bitmaps of every shape ------------------------------------------------------------------


@pytest.fixture(scope="module")
def ext2_groups(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, list[int], int]:
    """A 1 KiB-block ext2 of 8 groups of 256 blocks, the last one partial (207 blocks):
    the image, each group's block bitmap location, and the block count."""
    path = tmp_path_factory.mktemp("ext2-groups") / "fs.img"
    layout = Layout("ext2", "mkfs.ext2", "-b 1024 -g 256 -N 64")
    make_image(path, layout, None, 2000 * KiB)
    out = run("dumpe2fs", str(path)).stdout
    bitmaps = [int(b) for b in re.findall(r"Block bitmap at (\d+)", out)]
    assert len(bitmaps) == 8
    return path.read_bytes(), bitmaps, 2000


bitmap_patterns = st.one_of(
    st.binary(min_size=32, max_size=32),
    st.sampled_from([b"\xff" * 32, b"\x00" * 32, b"\x01" + bytes(30) + b"\x80", b"\xaa" * 32]),
    st.tuples(st.integers(0, 256), st.integers(0, 256)).map(
        lambda run: (((1 << run[1]) - 1) << run[0] & ((1 << 256) - 1)).to_bytes(32, "little")
    ),
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(bitmap_patterns, min_size=8, max_size=8))
def test_any_bitmap_pattern_maps_to_exactly_its_set_bits(
    ext2_groups: tuple[bytes, list[int], int], patterns: list[bytes]
):
    """Runs across group ends, single bits, the partial last group: each set bit is one block."""
    data, bitmaps, blocks_count = ext2_groups
    expected: list[Range] = [(0, BOOT_REGION)]
    for group, (location, pattern) in enumerate(zip(bitmaps, patterns, strict=True)):
        # OR with what mkfs wrote, so the metadata stays marked as it always is.
        old = data[location * 1024 : location * 1024 + 32]
        bits = int.from_bytes(old, "little") | int.from_bytes(pattern, "little")
        data = patched(data, location * 1024, bits.to_bytes(32, "little"))
        for bit in range(256):
            block = 1 + group * 256 + bit
            if bits >> bit & 1 and block < blocks_count:
                expected.append((block * 1024, block * 1024 + 1024))
    assert list(used_map(BytesSource(data), "ext2").ranges) == normalized(expected)


# -- untrusted bytes -------------------------------------------------------------------------

EXTREMES = [0, 1, 2, 7, 8, 255, 256, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]
SUPERBLOCK_FIELDS = [  # (offset, width) of every field the map reads
    (0x00, 4), (0x04, 4), (0x14, 4), (0x18, 4), (0x1C, 4), (0x20, 4), (0x24, 4), (0x28, 4),
    (0x38, 2), (0x3A, 2), (0x4C, 4), (0x58, 2), (0x5C, 4), (0x60, 4), (0x64, 4), (0xCE, 2),
    (0xFE, 2), (0x104, 4), (0x150, 4), (0x168, 8), (0x24C, 4), (0x250, 4),
]  # fmt: skip

field_mutations = st.tuples(
    st.sampled_from(SUPERBLOCK_FIELDS),
    st.one_of(st.sampled_from(EXTREMES), st.integers(0, (1 << 64) - 1)),
).map(lambda m: (1024 + m[0][0], (m[1] % (1 << (8 * m[0][1]))).to_bytes(m[0][1], "little")))
byte_mutations = st.tuples(
    st.one_of(st.integers(1024, 2047), st.integers(2048, 4095), st.integers(0, 64 * KiB - 1)),
    st.binary(min_size=1, max_size=8),
)
FUZZ = settings(
    max_examples=400,
    deadline=2000,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def check(data: bytes) -> None:
    """A map that is sane for ``data``, or UsedBlocksError; anything else fails."""
    try:
        used = used_map(BytesSource(data), "ext4")
    except UsedBlocksError as err:
        assert err.message.startswith("cannot tell the used blocks")
        return
    assert used.size == len(data)
    assert used.ranges[0][0] == 0
    assert used.ranges[0][1] >= min(BOOT_REGION, len(data))


@FUZZ
@given(st.lists(st.one_of(field_mutations, byte_mutations), min_size=1, max_size=6))
def test_mutated_image_gives_a_map_or_used_blocks_error(
    small_ext4: bytes, mutations: list[tuple[int, bytes]]
):
    data = small_ext4
    for offset, value in mutations:
        data = patched(data, offset, value)
    check(data[: len(small_ext4)])


@FUZZ
@given(st.integers(0, 8 * MiB), st.integers(0, 64 * KiB - 1), st.binary(max_size=16))
def test_short_or_mutated_volume_gives_a_map_or_used_blocks_error(
    small_ext4: bytes, length: int, offset: int, value: bytes
):
    check(patched(small_ext4, offset, value)[:length])


def test_unmutated_small_image_is_mapped(small_ext4: bytes):
    used = used_map(BytesSource(small_ext4), "ext4")
    assert BOOT_REGION < used.used_bytes < len(small_ext4)
