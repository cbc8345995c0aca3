"""The volume record of a manifest: typed, validated when read, stable when written."""

import json
import struct

import pytest
import zstandard

from core.repo.format import (
    MANIFEST_MAGIC,
    ZERO_ID,
    DamagedObject,
    ImageManifest,
    VolumeRecord,
    decode_manifest,
    encode_manifest,
)

RECORD = VolumeRecord(
    key="/srv",
    device="/dev/sda1",
    mount_point="/srv",
    fstype="ext4",
    uuid="0b6f",
    fs_label="srv",
    size=1 << 30,
    sector_size=512,
    kind="partition",
    serial=None,
    host="db1",
)


def image(volume: VolumeRecord = RECORD) -> ImageManifest:
    return ImageManifest("img1", volume, "static", False, "s", "f", 4 << 20, 4 << 20, ZERO_ID)


def stored_with_volume(volume: object) -> bytes:
    """An image manifest as stored, whose header carries ``volume`` as its record."""
    header = image().header() | {"volume": volume}
    raw = json.dumps(header).encode()
    body = MANIFEST_MAGIC + struct.pack(">I", len(raw)) + raw + ZERO_ID
    return zstandard.ZstdCompressor().compress(body)


def test_a_record_survives_its_manifest_round_trip():
    assert decode_manifest(encode_manifest(image())).volume == RECORD


def test_a_record_is_known_by_its_key_device_and_mount_point():
    assert RECORD.names == {"/srv", "/dev/sda1"}
    assert VolumeRecord(key="/dev/loop3", device="/dev/loop3").names == {"/dev/loop3"}


def test_fields_of_a_newer_version_are_ignored_and_missing_optional_ones_default():
    d = {"key": "/srv", "device": "/dev/sda1", "encryption": "aes"}
    assert VolumeRecord.from_dict(d) == VolumeRecord(key="/srv", device="/dev/sda1")


@pytest.mark.parametrize(
    "volume",
    [
        "not an object",
        {"device": "/dev/sda1"},
        {"key": "", "device": "/dev/sda1"},
        {"key": "/srv", "device": 7},
        {"key": "/srv", "device": "/dev/sda1", "size": -1},
        {"key": "/srv", "device": "/dev/sda1", "size": True},
        {"key": "/srv", "device": "/dev/sda1", "uuid": ["a"]},
    ],
)
def test_a_hostile_record_makes_the_manifest_damaged(volume):
    with pytest.raises(DamagedObject, match="is damaged"):
        decode_manifest(stored_with_volume(volume), "images/img1")
