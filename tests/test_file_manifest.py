"""File manifests: what is written reads back equal, and malformed input is refused cleanly."""

from __future__ import annotations

import json

import pytest
import zstandard

from core.repo.filemanifest import (
    MANIFEST_MAGIC,
    FileEntry,
    FileManifest,
    decode_file_manifest,
    encode_file_manifest,
)
from core.repo.format import DamagedObject, VolumeRecord, seal

ENTRIES = (
    FileEntry(".", "d", 0o755, 0, 0, 4096, 10, 11, 2, 3),
    FileEntry("dir", "d", 0o700, 1000, 1000, 4096, 12, 13, 12, 2),
    FileEntry(
        "dir/a.bin",
        "f",
        0o644,
        0,
        0,
        3 << 20,
        14,
        15,
        13,
        2,
        chunks=(b"\x01" * 32, bytes(32), b"\x02" * 32),
    ),
    FileEntry("dir/hard", "f", 0o644, 0, 0, 3 << 20, 14, 15, 13, 2, link="dir/a.bin"),
    FileEntry("not-utf8-\udcff", "l", 0o777, 0, 0, 3, 16, 17, 14, 1, target="../x"),
    FileEntry("dev", "c", 0o600, 0, 0, 0, 18, 19, 15, 1, rdev=0x0501),
)


def manifest(entries=ENTRIES) -> FileManifest:
    return FileManifest(
        "inc1", VolumeRecord(key="/srv", device="/dev/srv"), "img1", None, "s", "f", tuple(entries)
    )


def stored_with(rows: list, count: int | None = None) -> bytes:
    head = dict(manifest().header(), entries=len(rows) if count is None else count)
    body = MANIFEST_MAGIC + json.dumps(head).encode() + b"\n" + json.dumps(rows).encode()
    return zstandard.ZstdCompressor().compress(seal(body + b"\n"))


def test_round_trip_keeps_every_field_and_odd_names():
    back = decode_file_manifest(encode_file_manifest(manifest()))
    assert back.entries == ENTRIES
    assert {hash(e) for e in back.entries} == {hash(e) for e in ENTRIES}
    assert back.base_image == "img1" and back.volume == manifest().volume


GOOD = ENTRIES[2].to_row()


@pytest.mark.parametrize(
    "row",
    [
        GOOD[:13],  # a field short
        [*GOOD[:2], True, *GOOD[3:]],  # a bool where the mode goes
        [*GOOD[:2], 0o17777, *GOOD[3:]],  # mode out of range
        [*GOOD[:3], -1, *GOOD[4:]],  # negative uid
        [*GOOD[:1], "x", *GOOD[2:]],  # unknown kind
        [*GOOD[:12], "zz", GOOD[13]],  # chunk list not hex
        [*GOOD[:12], "ab" * 31, GOOD[13]],  # chunk list not a multiple of 32 bytes
        [*GOOD[:10], 5, *GOOD[11:]],  # a target that is not a string
        {"path": "x"},  # not a row at all
    ],
)
def test_malformed_rows_are_refused_as_damaged(row):
    with pytest.raises(DamagedObject):
        decode_file_manifest(stored_with([row]))


def test_entry_count_must_match_the_header():
    with pytest.raises(DamagedObject, match="count"):
        decode_file_manifest(stored_with([GOOD], count=2))


def test_garbage_is_damaged_not_a_crash():
    with pytest.raises(DamagedObject):
        decode_file_manifest(b"not zstd at all")
    with pytest.raises(DamagedObject):
        decode_file_manifest(zstandard.ZstdCompressor().compress(seal(MANIFEST_MAGIC + b"{")))
