"""Image manifests as hostile input: fields that size or place a write are checked first.

The repositories are made by the test; the hostile manifests are written into them
by hand, as an attacker (or a flipped disk) would leave them.
"""

from __future__ import annotations

import json
import struct
from dataclasses import replace
from pathlib import Path

import pytest
import zstandard
from cliutil import blockvault
from imagekit import device_digest

from core.repo.format import (
    MANIFEST_MAGIC,
    ZERO_ID,
    DamagedObject,
    ImageManifest,
    VolumeRecord,
    decode_manifest,
    encode_manifest,
    seal,
)
from core.repo.repository import Repository

MIB = 1 << 20
GOOD = ImageManifest(
    "img1",
    VolumeRecord(key="/dev/x", device="/dev/x"),
    "static",
    False,
    "2026-12-01T00:00:00+00:00",
    "2026-12-01T00:00:01+00:00",
    4 * MIB,
    6 * MIB,
    ZERO_ID * 2,
)


def stored(header: dict, table: bytes = ZERO_ID * 2) -> bytes:
    raw = json.dumps(header).encode()
    return zstandard.ZstdCompressor().compress(
        seal(MANIFEST_MAGIC + struct.pack(">I", len(raw)) + raw + table)
    )


def test_a_good_manifest_decodes():
    assert decode_manifest(encode_manifest(GOOD)) == GOOD


@pytest.mark.parametrize(
    "change, why",
    [
        ({"size": -1}, "size -1"),
        ({"size": "6M"}, "size '6M'"),
        ({"chunk_size": 0}, "chunk size 0"),
        ({"chunk_size": -4 * MIB}, "chunk size"),
        ({"chunk_size": 3 * MIB}, "chunk size"),
        ({"chunk_size": 1 << 40}, "chunk size"),
        ({"size": 2 * MIB}, "needs 1"),  # a table longer than the image: writes past its end
        ({"size": 1 << 50}, "needs"),  # an absurd size the table does not cover
        ({"imagetype": "bogus"}, "imagetype"),
        ({"id": 7}, "id 7"),
        ({"format": 2}, "format"),
    ],
)
def test_a_manifest_whose_fields_do_not_add_up_is_damaged(change, why):
    with pytest.raises(DamagedObject, match="is damaged") as damaged:
        decode_manifest(stored(GOOD.header() | change), "images/img1")
    assert why in damaged.value.message


def test_a_manifest_that_expands_without_bound_is_refused_in_bounded_memory():
    header = json.dumps(GOOD.header()).encode()
    compressor = zstandard.ZstdCompressor().compressobj()
    parts = [compressor.compress(MANIFEST_MAGIC + struct.pack(">I", len(header)) + header)]
    zeros = bytes(MIB)
    parts += [compressor.compress(zeros) for _ in range(300)]  # 300 MiB of "chunk table"
    bomb = b"".join(parts) + compressor.flush()
    assert len(bomb) < MIB
    with pytest.raises(DamagedObject, match="is damaged"):
        decode_manifest(bomb, "images/img1")


def test_a_header_length_past_the_limit_is_damaged():
    body = seal(MANIFEST_MAGIC + struct.pack(">I", 1 << 30) + b"{}")
    with pytest.raises(DamagedObject, match="header length"):
        decode_manifest(zstandard.ZstdCompressor().compress(body), "images/img1")


@pytest.mark.loop
def test_a_chunk_table_longer_than_the_image_writes_nothing_past_its_size(loopkit, tmp_path):
    """The findings say the bytes beyond the image stay: a hostile table cannot write them."""
    repo = tmp_path / "repo"
    source = loopkit.attach(loopkit.image("8M"))
    with open(source, "r+b") as f:
        f.write(b"source data " * (8 * MIB // 12))
    res = blockvault(
        "backup", "image", source, "--imagetype", "dynamic", "--repo", str(repo),
        "--no-agent", "--json",
    )  # fmt: skip
    assert res.rc in (0, 8), res.out + res.err
    image_id = res.json()["image_id"]
    # Shrink the declared size to 4 MiB and keep the 8 MiB chunk table.
    r = Repository.open(str(repo), create=False)
    hostile = replace(r.image(image_id), size=4 * MIB)
    Path(repo, "images", image_id[:2], image_id).write_bytes(encode_manifest(hostile))
    dest = loopkit.attach(loopkit.image("16M"))
    with open(dest, "r+b") as f:
        f.write(b"\xa5" * 16 * MIB)  # the target's own bytes, which must stay
    before = device_digest(dest)

    res = blockvault(
        "restore", "image", source, dest, "--image", image_id, "--confirm", dest,
        "--repo", str(repo), "--no-agent", "--json",
    )  # fmt: skip

    assert res.rc == 12, res.out + res.err
    assert "is damaged" in res.json()["error"] and "needs 1" in res.json()["error"]
    assert "internal error" not in res.err
    assert device_digest(dest) == before
