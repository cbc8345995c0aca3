"""Signature probing on real mkfs images and crafted headers, checked against ``blkid -p``.

Every image is a sparse file (no loop device, no mount); ``blkid -p`` reads the
same file directly, so its TYPE, UUID, LABEL and VERSION are the expected values.
"""

from __future__ import annotations

import functools
import random
import shlex
import shutil
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.bytesource import BytesSource, FileSource
from core.signatures import FsType, Signature, probe

TOOL_PATH = "/usr/sbin:/sbin:/usr/bin:/bin"
MiB = 1 << 20


def tool(name: str) -> str:
    """The path of a system tool, or a skip when this machine lacks it."""
    path = shutil.which(name, path=TOOL_PATH)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def blkid(path: Path) -> dict[str, str]:
    """The tags ``blkid -p`` (low-level probe, no cache) reports for a file; empty for none."""
    proc = subprocess.run(
        [tool("blkid"), "-p", "-o", "export", str(path)], capture_output=True, text=True
    )
    if proc.returncode == 2:  # blkid found nothing
        return {}
    assert proc.returncode == 0, proc.stderr
    tags = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition("=")
        tags[key] = shlex.split(value)[0] if value else ""  # export escapes blanks with "\ "
    return tags


def probe_file(path: Path) -> Signature | None:
    with FileSource(path) as source:
        return probe(source)


def assert_matches_blkid(signature: Signature | None, path: Path) -> None:
    tags = blkid(path)
    assert signature is not None, f"blkid says {tags}"
    assert (signature.fstype, signature.uuid, signature.label, signature.version) == (
        tags.get("TYPE"),
        tags.get("UUID"),
        tags.get("LABEL"),
        tags.get("VERSION"),
    )


@functools.cache
def head_of(path: Path, size: int) -> bytes:
    """The first ``size`` bytes of a file (cached: the fuzz tests mutate copies of it)."""
    with open(path, "rb") as f:
        return f.read(size)


def sparse_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def write_at(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


# -- real file systems -----------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """How to make one real image, and what its signature must say."""

    tool: str
    args: tuple[str, ...]
    size: int
    fstype: FsType
    uuid: str
    label: str
    block_size: int


RECIPES = {
    "ext2": Recipe(
        "mkfs.ext2", ("-q", "-F", "-b", "1024", "-U", "0a2e0000-0000-4000-8000-000000000002"),
        64 * MiB, FsType.EXT2, "0a2e0000-0000-4000-8000-000000000002", "bv-ext2", 1024,
    ),
    "ext3": Recipe(
        "mkfs.ext3", ("-q", "-F", "-b", "2048", "-U", "0a2e0000-0000-4000-8000-000000000003"),
        64 * MiB, FsType.EXT3, "0a2e0000-0000-4000-8000-000000000003", "bv-ext3", 2048,
    ),
    "ext4": Recipe(
        "mkfs.ext4", ("-q", "-F", "-b", "4096", "-U", "0a2e0000-0000-4000-8000-000000000004"),
        64 * MiB, FsType.EXT4, "0a2e0000-0000-4000-8000-000000000004", "bv-ext4", 4096,
    ),
    "xfs": Recipe(
        "mkfs.xfs",
        ("-q", "-f", "-b", "size=4096", "-m", "uuid=0a2e0000-0000-4000-8000-0000000000f5"),
        300 * MiB, FsType.XFS, "0a2e0000-0000-4000-8000-0000000000f5", "bv-xfs", 4096,
    ),
    "btrfs": Recipe(
        "mkfs.btrfs", ("-q", "-f", "-U", "0a2e0000-0000-4000-8000-0000000000b7"),
        128 * MiB, FsType.BTRFS, "0a2e0000-0000-4000-8000-0000000000b7", "bv btrfs", 4096,
    ),
    "fat12": Recipe(
        "mkfs.vfat", ("-F", "12", "-s", "8", "-S", "512", "-i", "12AB0C12"),
        8 * MiB, FsType.VFAT, "12AB-0C12", "BV FAT12", 4096,
    ),
    "fat16": Recipe(
        "mkfs.vfat", ("-F", "16", "-s", "4", "-S", "512", "-i", "12AB0C16"),
        64 * MiB, FsType.VFAT, "12AB-0C16", "BV FAT16", 2048,
    ),
    "fat32": Recipe(
        "mkfs.vfat", ("-F", "32", "-s", "1", "-S", "512", "-i", "12AB0C32"),
        64 * MiB, FsType.VFAT, "12AB-0C32", "BVFAT32", 512,
    ),
    "swap": Recipe(
        "mkswap", ("-q", "-U", "0a2e0000-0000-4000-8000-00000000005a"),
        16 * MiB, FsType.SWAP, "0a2e0000-0000-4000-8000-00000000005a", "bv-swap", 4096,
    ),
    "swap64k": Recipe(
        "mkswap", ("-q", "-p", "65536", "-U", "0a2e0000-0000-4000-8000-000000064000"),
        16 * MiB, FsType.SWAP, "0a2e0000-0000-4000-8000-000000064000", "bv-swap64k", 65536,
    ),
}  # fmt: skip
"""One image per format blockvault probes; block_size is the file system's allocation unit."""


def build(recipe: Recipe, path: Path) -> Path:
    sparse_file(path, recipe.size)
    label_flag = "-n" if recipe.fstype is FsType.VFAT else "-L"
    subprocess.run(
        [tool(recipe.tool), *recipe.args, label_flag, recipe.label, str(path)],
        capture_output=True,
        check=True,
    )
    return path


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Make (once per module) and return the image of a recipe; tests copy it before changing it."""
    made: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("signatures")

    def make(name: str) -> Path:
        if name not in made:
            made[name] = build(RECIPES[name], root / f"{name}.img")
        return made[name]

    return make


@pytest.mark.parametrize("name", RECIPES)
def test_probe_of_real_image_matches_blkid(image, name):
    """Type, UUID, label and version equal blkid's and what mkfs was asked for.

    The block size is the allocation unit mkfs was asked for; for XFS and FAT it is
    not blkid's BLOCK_SIZE, which reports their sector size there.
    """
    recipe = RECIPES[name]
    path = image(name)
    signature = probe_file(path)
    assert_matches_blkid(signature, path)
    assert signature is not None
    assert (signature.fstype, signature.uuid, signature.label) == (
        recipe.fstype,
        recipe.uuid,
        recipe.label,
    )
    assert signature.block_size == recipe.block_size


@pytest.mark.parametrize("name", ["ext2", "ext3", "ext4", "btrfs"])
def test_block_size_equals_blkid_block_size(image, name):
    assert str(probe_file(image(name)).block_size) == blkid(image(name))["BLOCK_SIZE"]


@pytest.mark.parametrize("name", RECIPES)
def test_probe_reads_a_few_blocks_only(image, name):
    """Cheap by design: the head read, plus at most a FAT root directory and its FAT entry."""
    reads: list[int] = []

    class CountingSource(FileSource):
        def read_at(self, offset: int, length: int) -> bytes:
            reads.append(length)
            return super().read_at(offset, length)

    with CountingSource(image(name)) as source:
        assert probe(source) is not None
    assert len(reads) <= 3
    assert sum(reads) <= 192 * 1024


@pytest.mark.parametrize(
    ("name", "offset"),
    [("ext4", 1024 + 0x78), ("xfs", 108), ("btrfs", 0x10000 + 0x12B)],
)
def test_superblock_with_bad_checksum_is_not_reported(image, tmp_path, name, offset):
    """A label changed behind the checksum's back: the kernel would refuse it, so do we.

    blkid 2.38 does not verify these checksums and still reports the file system;
    util-linux 2.39 and later check them as we do.
    """
    path = tmp_path / f"{name}.img"
    shutil.copyfile(image(name), path)
    write_at(path, offset, b"XX")
    assert probe_file(path) is None


@pytest.mark.parametrize("name", ["fat16", "fat32"])
def test_fat_label_comes_from_root_directory_entry_as_in_blkid(image, tmp_path, name):
    """blkid's LABEL is the root directory's volume-label entry, not the boot sector's copy."""
    path = tmp_path / f"{name}.img"
    shutil.copyfile(image(name), path)
    with open(path, "rb") as f:
        boot = f.read(512)
    sector_size, cluster_sectors, reserved, fats = struct.unpack_from("<HBHB", boot, 11)
    (fat_length,) = struct.unpack_from("<H", boot, 22)
    if fat_length:
        root = (reserved + fat_length * fats) * sector_size
    else:
        fat32_length, root_cluster = struct.unpack_from("<I4xI", boot, 36)
        root = (reserved + fat32_length * fats + (root_cluster - 2) * cluster_sectors) * sector_size

    write_at(path, root, b"RENAMED    ")
    assert probe_file(path).label == "RENAMED"
    assert_matches_blkid(probe_file(path), path)

    write_at(path, root, b"\xe5")  # the entry deleted: blkid reports no LABEL at all
    assert probe_file(path).label is None
    assert_matches_blkid(probe_file(path), path)


def test_truncated_ext4_image_probes_without_error(image, tmp_path):
    """The first 2 KiB hold the whole superblock, so the type and identity survive."""
    path = tmp_path / "head.img"
    path.write_bytes(head_of(image("ext4"), 2048))
    signature = probe_file(path)
    assert signature is not None and signature.fstype is FsType.EXT4
    assert signature == probe_file(image("ext4"))


# -- no signature ----------------------------------------------------------------------------


def test_all_zero_file_is_raw(tmp_path):
    path = sparse_file(tmp_path / "zero.img", 4 * MiB)
    assert probe_file(path) is None
    assert blkid(path) == {}


def test_empty_source_is_raw():
    assert probe(BytesSource(b"")) is None


@pytest.mark.parametrize("table", ["dos", "gpt"])
def test_partition_table_alone_is_not_a_file_system(tmp_path, table):
    """An MBR has 0x55AA where a FAT boot sector does; its BPB fields must give it away."""
    path = sparse_file(tmp_path / "disk.img", 64 * MiB)
    subprocess.run(
        [tool("sfdisk"), "--quiet", str(path)],
        input=f"label: {table}\nstart=2048, size=65536, type=L\n",
        text=True,
        capture_output=True,
        check=True,
    )
    assert probe_file(path) is None
    tags = blkid(path)
    assert tags["PTTYPE"] == table and "TYPE" not in tags


def test_seeded_random_megabyte_is_raw():
    data = random.Random(20240601).randbytes(MiB)
    assert probe(BytesSource(data)) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=8192))
def test_random_bytes_are_raw(data):
    assert probe(BytesSource(data)) is None


MUTATION_OFFSETS = st.one_of(
    st.integers(0, 0x1FFF),  # boot sector, LVM label, ext superblock, first swap page
    st.integers(0x10000, 0x10FFF),  # btrfs superblock
    st.integers(0, 2 * MiB - 1),  # anywhere, FAT directories included
)


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(sorted(RECIPES)),
    mutations=st.lists(st.tuples(MUTATION_OFFSETS, st.integers(0, 255)), min_size=1, max_size=24),
)
def test_mutated_real_superblocks_never_raise(image, name, mutations):
    data = bytearray(head_of(image(name), 2 * MiB))
    for offset, value in mutations:
        if offset < len(data):
            data[offset] = value
    signature = probe(BytesSource(bytes(data)))
    assert signature is None or isinstance(signature.fstype, FsType)


# -- ext feature rules, crafted --------------------------------------------------------------


def ext_superblock(compat: int, incompat: int, ro_compat: int) -> bytes:
    """A 64 KiB image with a bare ext superblock (no metadata_csum) carrying these features."""
    data = bytearray(64 * 1024)
    sb = 1024
    struct.pack_into("<I", data, sb + 0x18, 2)  # 4 KiB blocks
    data[sb + 0x38 : sb + 0x3A] = b"\x53\xef"
    struct.pack_into("<I", data, sb + 0x4C, 1)  # dynamic revision
    struct.pack_into("<III", data, sb + 0x5C, compat, incompat, ro_compat)
    data[sb + 0x68 : sb + 0x78] = bytes.fromhex("0a2e00000000400080000000000000e1")
    data[sb + 0x78 : sb + 0x80] = b"crafted"
    return bytes(data)


@pytest.mark.parametrize(
    ("compat", "incompat", "ro_compat", "expected"),
    [
        (0, 0x2, 0x3, FsType.EXT2),  # filetype; sparse_super, large_file
        (0x4, 0x2, 0x3, FsType.EXT3),  # + has_journal
        (0x4, 0x6, 0x3, FsType.EXT3),  # + needs_recovery, which ext3 understands
        (0x4, 0x42, 0x3, FsType.EXT4),  # + extents
        (0x4, 0x2, 0x8, FsType.EXT4),  # huge_file is ro_compat but ext4-only
        (0, 0x2C2, 0x3, FsType.EXT4),  # extents, 64bit, flex_bg and no journal: still ext4
    ],
)
def test_ext_type_follows_blkid_feature_rules(tmp_path, compat, incompat, ro_compat, expected):
    path = tmp_path / "ext.img"
    path.write_bytes(ext_superblock(compat, incompat, ro_compat))
    signature = probe_file(path)
    assert signature is not None and signature.fstype is expected
    assert signature.label == "crafted" and signature.block_size == 4096
    assert_matches_blkid(signature, path)


@pytest.mark.parametrize(
    ("incompat", "blkid_type"),
    [(0x8, "jbd"), (0x6, None)],  # an external journal; needs_recovery with no journal
)
def test_ext_superblock_that_is_no_file_system_is_raw(tmp_path, incompat, blkid_type):
    path = tmp_path / "ext.img"
    path.write_bytes(ext_superblock(0, incompat, 0x3))
    assert probe_file(path) is None
    assert blkid(path).get("TYPE") == blkid_type


# -- LVM2 and LUKS, crafted ------------------------------------------------------------------

LVM_CRC_TABLE = (
    0x00000000, 0x1DB71064, 0x3B6E20C8, 0x26D930AC, 0x76DC4190, 0x6B6B51F4, 0x4DB26158, 0x5005713C,
    0xEDB88320, 0xF00F9344, 0xD6D6A3E8, 0xCB61B38C, 0x9B64C2B0, 0x86D3D2D4, 0xA00AE278, 0xBDBDF21C,
)  # fmt: skip


def lvm_crc(data: bytes) -> int:
    """LVM's own label checksum (lib/misc/crc.c), nibble by nibble."""
    crc = 0xF597A6CF
    for byte in data:
        crc ^= byte
        crc = (crc >> 4) ^ LVM_CRC_TABLE[crc & 0xF]
        crc = (crc >> 4) ^ LVM_CRC_TABLE[crc & 0xF]
    return crc


PV_UUID = "Bv2eXa-mp1e-PVid-0123-4567-89ab-cdEFgh"
PV_ID = PV_UUID.replace("-", "").encode()


def lvm2_pv(sector: int = 1, size: int = 8 * MiB) -> bytearray:
    """An image that starts like ``pvcreate`` leaves a device: a label_header and pv_header."""
    data = bytearray(size)
    label = bytearray(512)
    label[0:8] = b"LABELONE"
    struct.pack_into("<QII", label, 8, sector, 0, 32)  # sector_xl, crc_xl (below), offset_xl
    label[24:32] = b"LVM2 001"
    label[32:64] = PV_ID
    struct.pack_into("<Q", label, 64, size)  # device_size_xl
    # One data area from 1 MiB to the end, one metadata area before it; each list ends in 0, 0.
    struct.pack_into("<8Q", label, 72, MiB, 0, 0, 0, 4096, MiB - 4096, 0, 0)
    struct.pack_into("<I", label, 16, lvm_crc(label[20:]))
    data[sector * 512 : (sector + 1) * 512] = label
    return data


@pytest.mark.parametrize("sector", range(4))
def test_crafted_lvm2_physical_volume_is_an_lvm2_member(tmp_path, sector):
    """The header is crafted because this machine has no lvm2 tools; blkid agrees with it."""
    path = tmp_path / "pv.img"
    path.write_bytes(lvm2_pv(sector))
    signature = probe_file(path)
    assert signature == Signature(FsType.LVM2, PV_UUID, None, None, "LVM2 001")
    assert not signature.is_filesystem
    assert_matches_blkid(signature, path)


def test_lvm2_label_with_bad_checksum_is_raw(tmp_path):
    path = tmp_path / "pv.img"
    data = lvm2_pv()
    data[512 + 100] ^= 0xFF
    path.write_bytes(data)
    assert probe_file(path) is None
    assert blkid(path) == {}


LUKS_UUID = b"0a2e0000-0000-4000-8000-00000000c0de"


def luks1_header() -> bytearray:
    """A LUKS1 phdr as cryptsetup lays it out, with all eight key slots disabled."""
    data = bytearray(4 * MiB)
    data[0:6] = b"LUKS\xba\xbe"
    struct.pack_into(">H", data, 6, 1)
    data[8:11] = b"aes"
    data[40:51] = b"xts-plain64"
    data[72:78] = b"sha256"
    struct.pack_into(">II", data, 104, 4096, 64)  # payloadOffset (sectors), keyBytes
    struct.pack_into(">I", data, 164, 1000)  # mkDigestIterations
    data[168 : 168 + len(LUKS_UUID)] = LUKS_UUID
    for slot in range(8):
        struct.pack_into(">I", data, 208 + 48 * slot, 0x0000DEAD)  # LUKS_KEY_DISABLED
    return data


def luks2_header(hdr_offset: int = 0) -> bytearray:
    """A LUKS2 binary header (label, uuid, subsystem) and a minimal JSON area."""
    data = bytearray(4 * MiB)
    data[0:6] = b"LUKS\xba\xbe"
    struct.pack_into(">HQQ", data, 6, 2, 16384, 1)  # version, hdr_size, seqid
    data[24:34] = b"bv-crypted"
    data[72:78] = b"sha256"
    data[168 : 168 + len(LUKS_UUID)] = LUKS_UUID
    data[208:215] = b"backups"
    struct.pack_into(">Q", data, 256, hdr_offset)
    data[4096:4098] = b"{}"
    return data


@pytest.mark.parametrize(
    ("header", "label", "version"),
    [(luks1_header, None, "1"), (luks2_header, "bv-crypted", "2")],
)
def test_crafted_luks_header_is_crypto_luks(tmp_path, header, label, version):
    """The header is crafted because this machine has no cryptsetup; blkid agrees with it."""
    path = tmp_path / "luks.img"
    path.write_bytes(header())
    signature = probe_file(path)
    assert signature == Signature(FsType.LUKS, LUKS_UUID.decode(), label, None, version)
    assert not signature.is_filesystem
    assert_matches_blkid(signature, path)


def test_luks2_header_claiming_another_offset_is_raw(tmp_path):
    """A primary header must say it is at offset 0, as cryptsetup checks.

    blkid 2.38 does not check it and reports crypto_LUKS; util-linux 2.39 and later do.
    """
    path = tmp_path / "luks.img"
    path.write_bytes(luks2_header(hdr_offset=0x4000))
    assert probe_file(path) is None


def test_swap_version_0_has_no_identity(tmp_path):
    path = sparse_file(tmp_path / "swap0.img", MiB)
    write_at(path, 4096 - 10, b"SWAP-SPACE")
    signature = probe_file(path)
    assert signature == Signature(FsType.SWAP, None, None, 4096, "0")
    assert_matches_blkid(signature, path)


# -- the type itself -------------------------------------------------------------------------


@pytest.mark.parametrize("fstype", FsType)
def test_only_mountable_types_are_file_systems(fstype):
    signature = Signature(fstype, None, None, None, None)
    mountable = fstype not in (FsType.SWAP, FsType.LVM2, FsType.LUKS)
    assert signature.is_filesystem is mountable


def test_fstype_values_are_blkid_type_strings():
    assert [t.value for t in FsType] == [
        "ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "swap", "LVM2_member", "crypto_LUKS",
    ]  # fmt: skip
