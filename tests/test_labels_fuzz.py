"""Property tests: whatever the bytes, the label parsers return a label or None, quickly.

Mutated labels have their checksums and CRCs recomputed after the mutation (when
the mutated sizes still allow it), so the parsers' handling of absurd field values
is reached instead of every mutation being refused at the integrity check.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from labelkit import (
    BSD_FS_BSDFFS,
    BSD_FS_SWAP,
    LINUX_FS_GUID,
    SUN_TAG_BACKUP,
    SUN_TAG_ROOT,
    fix_bsd_checksum,
    fix_gpt_crcs,
    fix_sun_checksum,
    image_bytes,
    make_bsd_label,
    make_gpt,
    make_mbr,
    make_sun_label,
    sfdisk_image,
)

from core.bytesource import BytesSource
from core.labels import DiskLabel, extent_findings, read_label, volume_label_findings

MiB = 1 << 20
# Well above the slowest real parse (a 1 MiB GPT entry array), well below a hang.
FUZZ = settings(
    max_examples=300,
    deadline=1000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

EXTREMES = [
    0,
    1,
    2,
    33,
    34,
    0x7F,
    0x80,
    0xFF,
    0x100,
    0x7FFF,
    0xFFFF,
    0x7FFFFFFF,
    0x80000000,
    0xFFFFFFFF,
    1 << 32,
    (1 << 63) - 1,
    1 << 63,
    (1 << 64) - 1,
]


def check(data: bytes, sector_size: int = 512) -> DiskLabel | None:
    """Parse ``data`` and the findings built on it; fail on anything but a sane result."""
    source = BytesSource(data)
    label = read_label(source, sector_size)
    assert label is None or isinstance(label, DiskLabel)
    if label is not None:
        for partition in label.partitions:
            assert partition.start >= 0
            assert partition.size >= 0
        for span in label.label_ranges:
            assert 0 <= span.start <= span.end
        assert set(label.backup_ranges) <= set(label.label_ranges)
        # Bounded output: 4 primaries + 256 logical, or 1 MiB of 128-byte GPT entries.
        assert len(label.partitions) <= (1 << 20) // 128
        assert len(label.notes) <= 8
        extent_findings(label, 0, len(data), disk="d", volume="v")
        for partition in label.partitions[:8]:
            extent_findings(label, partition.start, partition.size, disk="d", volume="v")
    volume_label_findings(source, volume="v", sector_size=sector_size)
    return label


# --- random bytes ------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=4096))
def test_random_short_bytes_give_a_label_or_none(data: bytes) -> None:
    check(data)


def _plant(data: bytearray, what: str) -> None:
    """Put a magic number where a parser looks, so random bytes get past the first check."""
    if what == "mbr" and len(data) >= 512:
        data[510:512] = b"\x55\xaa"
    elif what == "pmbr" and len(data) >= 512:
        data[510:512] = b"\x55\xaa"
        data[446 + 4] = 0xEE
        if len(data) >= 1024:
            data[512:520] = b"EFI PART"
    elif what == "sun" and len(data) >= 512:
        data[508:510] = b"\xda\xbe"
    elif what == "bsd" and len(data) >= 1024:
        struct.pack_into("<I", data, 512, 0x82564557)
        struct.pack_into("<I", data, 512 + 132, 0x82564557)


@settings(FUZZ, max_examples=100)
@given(
    size=st.sampled_from([0, 1, 511, 512, 513, 1023, 1024, 4095, 4096, 65536, MiB + 512]),
    seed=st.integers(0, 2**32 - 1),
    magic=st.sampled_from(["none", "mbr", "pmbr", "sun", "bsd"]),
    sector_size=st.sampled_from([512, 4096]),
)
def test_random_bytes_of_any_size_give_a_label_or_none(
    size: int, seed: int, magic: str, sector_size: int
) -> None:
    data = bytearray(random.Random(seed).randbytes(size))
    _plant(data, magic)
    check(bytes(data), sector_size)


# --- mutated valid labels ------------------------------------------------------


def _crafted_dos() -> bytes:
    # Extended partition at LBA 64 with three EBRs chained 64 -> 96 -> 128.
    return image_bytes(
        256 * 512,
        {
            0: make_mbr([(0x80, 0x83, 1, 63), (0, 0x05, 64, 192)]),
            64 * 512: make_mbr([(0, 0x83, 1, 31), (0, 0x05, 32, 32)]),
            96 * 512: make_mbr([(0, 0x83, 1, 31), (0, 0x05, 64, 64)]),
            128 * 512: make_mbr([(0, 0x82, 1, 63)]),
        },
    )


def _crafted_gpt(sector_size: int) -> bytes:
    sectors = 128 if sector_size == 4096 else 256
    partitions = [(40, 60, LINUX_FS_GUID, "a"), (61, 80, LINUX_FS_GUID, "b")]
    return image_bytes(
        sectors * sector_size, make_gpt(sectors, partitions, sector_size=sector_size)
    )


def _crafted_sun() -> bytes:
    slices = [(SUN_TAG_ROOT, 0, 0, 640), (0x03, 0, 10, 640), (SUN_TAG_BACKUP, 1, 0, 2560)]
    return image_bytes(40 * 64 * 512, {0: make_sun_label(4, 16, 40, slices)})


def _crafted_bsd() -> bytes:
    label = make_bsd_label([(16, 64, BSD_FS_BSDFFS), (80, 64, BSD_FS_SWAP), (0, 256, 0)])
    return image_bytes(256 * 512, {512: label})


# (offset, width) of fields worth setting to extreme values, relative to the
# structure that holds them; the fix-up re-validates checksums after the mutation.
MBR_ENTRY_FIELDS = [
    (446 + 16 * i + off, width)
    for i in range(4)
    for off, width in ((0, 1), (4, 1), (8, 4), (12, 4))
]
GPT_HEADER_FIELDS = [(12, 4), (24, 8), (32, 8), (40, 8), (48, 8), (72, 8), (80, 4), (84, 4)]
GPT_ENTRY_FIELDS = [(0, 1), (32, 8), (40, 8), (128 + 32, 8), (128 + 40, 8)]
SUN_FIELDS = [(432, 2), (436, 2), (438, 2), (188, 4), (142, 2), (150, 2)] + [
    (444 + 8 * i + off, 4) for i in range(8) for off in (0, 4)
]
BSD_FIELDS = [(40, 4), (138, 2)] + [(148 + 16 * i + off, 4) for i in range(4) for off in (0, 4)]


@dataclass(frozen=True, repr=False)
class Base:
    """A valid label image and how to mutate it meaningfully."""

    name: str
    data: bytes
    sector_size: int
    fields: list[tuple[int, int, str]]
    """(absolute offset, width, byte order) of fields to set to extreme values."""
    structures: list[tuple[int, int]]
    """(start, end) of the label structures, where byte flips are aimed."""
    fix: Callable[[bytearray, int], None]

    def __repr__(self) -> str:
        # Hypothesis prints the arguments of a failing example; megabytes of image do
        # not help anyone read it.
        return f"<{self.name}>"


def _fix_gpt(image: bytearray, sector_size: int) -> None:
    fix_gpt_crcs(image, 1, sector_size)
    fix_gpt_crcs(image, len(image) // sector_size - 1, sector_size)


def _fix_sun(image: bytearray, _sector_size: int) -> None:
    image[:512] = fix_sun_checksum(image[:512])


def _fix_bsd(image: bytearray, _sector_size: int) -> None:
    image[512:1024] = fix_bsd_checksum(image[512:1024])


def _no_fix(_image: bytearray, _sector_size: int) -> None:
    pass


def _base(name: str, data: bytes, sector_size: int, fix: Callable) -> Base:
    label = read_label(BytesSource(data), 512)
    assert label is not None, name
    structures = [(r.start, r.end) for r in label.label_ranges]
    fields: list[tuple[int, int, str]]
    if label.kind.value == "dos":
        fields = [
            (r.start + o, w, "little") for r in label.label_ranges for o, w in MBR_ENTRY_FIELDS
        ]
    elif label.kind.value == "gpt":
        last = len(data) - sector_size
        fields = [(sector_size + o, w, "little") for o, w in GPT_HEADER_FIELDS]
        fields += [(last + o, w, "little") for o, w in GPT_HEADER_FIELDS]
        fields += [(2 * sector_size + o, w, "little") for o, w in GPT_ENTRY_FIELDS]
        fields += [(446 + 4, 1, "little"), (446 + 8, 4, "little")]
    elif label.kind.value == "sun":
        fields = [(o, w, "big") for o, w in SUN_FIELDS]
    else:
        fields = [(512 + o, w, "little") for o, w in BSD_FIELDS]
    return Base(name, data, sector_size, fields, structures, fix)


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> list[Base]:
    """The valid images the mutation test starts from, two of them written by sfdisk."""
    tmp = tmp_path_factory.mktemp("labels-fuzz")
    dos = sfdisk_image(
        tmp / "dos.img",
        "label: dos\nsize=1M, type=83\ntype=5\nsize=1M, type=83\nsize=1M, type=82\n",
        size=6 * MiB,
    ).read_bytes()
    gpt = sfdisk_image(
        tmp / "gpt.img", "label: gpt\nsize=1M, type=L, name=one\nsize=1M, type=S\n", size=4 * MiB
    ).read_bytes()
    return [
        _base("sfdisk dos", dos, 512, _no_fix),
        _base("crafted dos", _crafted_dos(), 512, _no_fix),
        _base("sfdisk gpt", gpt, 512, _fix_gpt),
        _base("crafted gpt", _crafted_gpt(512), 512, _fix_gpt),
        _base("crafted gpt 4k", _crafted_gpt(4096), 4096, _fix_gpt),
        _base("sun", _crafted_sun(), 512, _fix_sun),
        _base("bsd", _crafted_bsd(), 512, _fix_bsd),
    ]


def test_every_base_image_parses_as_its_own_kind(bases: list[Base]) -> None:
    # The mutations below only mean something if the unmutated images are clean labels.
    labels = {base.name: check(base.data, base.sector_size) for base in bases}
    assert {name: label.kind.value for name, label in labels.items() if label} == {
        "sfdisk dos": "dos",
        "crafted dos": "dos",
        "sfdisk gpt": "gpt",
        "crafted gpt": "gpt",
        "crafted gpt 4k": "gpt",
        "sun": "sun",
        "bsd": "bsd",
    }
    assert all(label is not None and not label.notes for label in labels.values())
    assert len(labels["sfdisk dos"].label_ranges) == 3  # sector 0 and two EBRs


@settings(FUZZ, max_examples=1500)
@given(
    pick=st.integers(0, 6),
    fields=st.lists(st.tuples(st.integers(0, 1000), st.sampled_from(EXTREMES)), max_size=4),
    flips=st.lists(
        st.tuples(st.integers(0, 100), st.integers(0, 1 << 16), st.integers(1, 255)), max_size=8
    ),
    fix=st.booleans(),
    truncate=st.sampled_from([None, None, None, 511, 1024, 4096, 16384, -512, -4096]),
)
def test_mutated_labels_give_a_label_or_none(
    bases: list[Base],
    pick: int,
    fields: list[tuple[int, int]],
    flips: list[tuple[int, int, int]],
    fix: bool,
    truncate: int | None,
) -> None:
    base = bases[pick]
    image = bytearray(base.data)
    for choice, value in fields:
        offset, width, order = base.fields[choice % len(base.fields)]
        image[offset : offset + width] = (value % (1 << (8 * width))).to_bytes(width, order)
    for structure, position, mask in flips:
        start, end = base.structures[structure % len(base.structures)]
        image[start + position % (end - start)] ^= mask
    if fix:
        base.fix(image, base.sector_size)
    if truncate is not None:
        image = image[:truncate]
    check(bytes(image), base.sector_size)


@settings(FUZZ, max_examples=40)
@given(count=st.integers(0, (1 << 32) - 1), size=st.sampled_from([0, 128, 136, 4096, 1 << 31]))
def test_gpt_entry_array_claims_are_bounded(count: int, size: int) -> None:
    image = bytearray(_crafted_gpt(512))
    for lba in (1, len(image) // 512 - 1):
        struct.pack_into("<II", image, lba * 512 + 80, count, size)
        fix_gpt_crcs(image, lba)
    check(bytes(image))
