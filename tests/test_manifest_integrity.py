"""Manifests are checked as a whole: a changed byte anywhere is found on read, before use.

Every stored manifest (image and file) ends in the BLAKE3 of its content; and what a
decoder expands is bounded, so a small hostile object cannot take gigabytes of memory.
"""

from __future__ import annotations

import resource

import pytest
import zstandard

from core.repo.filemanifest import (
    LEGACY_MANIFEST_MAGIC as LEGACY_FILE_MAGIC,
)
from core.repo.filemanifest import (
    FileEntry,
    FileManifest,
    decode_file_manifest,
    encode_file_manifest,
)
from core.repo.format import (
    LEGACY_MANIFEST_MAGIC,
    MANIFEST_MAGIC,
    SEAL_BYTES,
    DamagedObject,
    ImageManifest,
    VolumeRecord,
    decode_manifest,
    encode_manifest,
)

MIB = 1 << 20
IMAGE = ImageManifest(
    "img1",
    VolumeRecord(key="/srv", device="/dev/loop9"),
    "static",
    False,
    "2026-12-01T00:00:00+00:00",
    "2026-12-01T00:00:01+00:00",
    4 * MIB,
    40 * MIB,
    bytes(range(32)) * 10,
)
FILES = FileManifest(
    "inc1",
    VolumeRecord(key="/srv", device="/dev/loop9"),
    "img1",
    None,
    "2026-12-01T00:00:00+00:00",
    "2026-12-01T00:00:01+00:00",
    (
        FileEntry(".", "d", 0o755, 0, 0, 4096, 10, 11, 2, 3),
        FileEntry("a", "f", 0o644, 0, 0, 5, 12, 13, 3, 1, chunks=(b"\x07" * 32,)),
    ),
)


def _plain(stored: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompress(stored)


def _every_position(n: int) -> range:
    """Positions spread over the whole body (magic, header, table or rows, checksum)."""
    return range(0, n, max(1, n // 97))


@pytest.mark.parametrize(
    "encode, decode, manifest",
    [
        (encode_manifest, decode_manifest, IMAGE),
        (encode_file_manifest, decode_file_manifest, FILES),
    ],
    ids=["image", "file"],
)
def test_a_changed_byte_anywhere_is_found_on_read(encode, decode, manifest):
    body = _plain(encode(manifest))
    assert decode(zstandard.ZstdCompressor().compress(body), "m") == manifest
    for pos in _every_position(len(body)):
        for flip in (0x01, 0x80):
            bad = bytearray(body)
            bad[pos] ^= flip
            with pytest.raises(DamagedObject, match="is damaged"):
                decode(zstandard.ZstdCompressor().compress(bytes(bad)), f"m@{pos}")


def test_a_flipped_byte_inside_a_chunk_id_is_named_as_a_checksum_mismatch():
    body = bytearray(_plain(encode_manifest(IMAGE)))
    body[-SEAL_BYTES - 5] ^= 0x10  # inside the last chunk id of the table
    with pytest.raises(DamagedObject, match="checksum does not match"):
        decode_manifest(zstandard.ZstdCompressor().compress(bytes(body)), "images/img1")


@pytest.mark.parametrize(
    "encode, decode, manifest",
    [
        (encode_manifest, decode_manifest, IMAGE),
        (encode_file_manifest, decode_file_manifest, FILES),
    ],
    ids=["image", "file"],
)
def test_a_truncated_manifest_is_damaged(encode, decode, manifest):
    body = _plain(encode(manifest))
    for keep in (len(body) - 1, len(body) - SEAL_BYTES, len(body) // 2, 6):
        with pytest.raises(DamagedObject):
            decode(zstandard.ZstdCompressor().compress(body[:keep]), "m")


def test_manifests_of_the_first_format_without_a_checksum_are_still_read():
    image_body = _plain(encode_manifest(IMAGE))[:-SEAL_BYTES]
    legacy = LEGACY_MANIFEST_MAGIC + image_body[len(MANIFEST_MAGIC) :]
    assert decode_manifest(zstandard.ZstdCompressor().compress(legacy)) == IMAGE
    file_body = _plain(encode_file_manifest(FILES))[:-SEAL_BYTES]
    legacy = LEGACY_FILE_MAGIC + file_body[len(LEGACY_FILE_MAGIC) :]
    assert decode_file_manifest(zstandard.ZstdCompressor().compress(legacy)) == FILES


def _bomb(prefix: bytes, size: int, *, declared: bool) -> bytes:
    """A small zstd object that expands to ``size`` bytes (``prefix``, then zeros)."""
    if declared:
        return zstandard.ZstdCompressor().compress(prefix + bytes(size))
    c = zstandard.ZstdCompressor().compressobj()
    zeros = bytes(MIB)
    parts = [c.compress(prefix)] + [c.compress(zeros) for _ in range(size // MIB)]
    return b"".join(parts) + c.flush()


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("declared", [True, False], ids=["declared-size", "streamed"])
@pytest.mark.parametrize(
    "decode, magic",
    [(decode_manifest, MANIFEST_MAGIC), (decode_file_manifest, LEGACY_FILE_MAGIC)],
    ids=["image", "file"],
)
def test_a_small_object_that_expands_to_a_gibibyte_is_refused_in_bounded_memory(
    decode, magic, declared
):
    bomb = _bomb(magic + b"\xff\xff\xff\xff", 1 << 30, declared=declared)
    assert len(bomb) < 2 * MIB
    before = _peak_mib()
    with pytest.raises(DamagedObject, match="is damaged"):
        decode(bomb, "m")
    # The image bound is a 32 TiB volume's table (256 MiB); a file manifest's follows
    # its compressed size. Nothing near the gibibyte it claims.
    assert _peak_mib() - before < 400
