"""Bounded reads from a byte source and sector arithmetic shared by the label parsers."""

from __future__ import annotations

from core.bytesource import ByteSource
from core.labels.model import ByteRange

MAX_READ = 1 << 20
"""The most any parser reads in one go: label fields are untrusted, so a count taken
from them must never turn into a huge allocation."""

SECTOR_SIZES = (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
"""Logical sector sizes a caller may pass."""


def read_bytes(source: ByteSource, offset: int, length: int) -> bytes:
    """Return up to ``length`` bytes at ``offset``; fewer, or none, past the end of ``source``.

    Offsets computed from label fields can be negative or far past the end; those read
    nothing instead of reaching the source, and ``length`` is capped at :data:`MAX_READ`.
    """
    size = source.size
    if offset < 0 or length <= 0 or offset >= size:
        return b""
    return source.read_at(offset, min(length, MAX_READ, size - offset))


def sector_range(lba: int, count: int, sector_size: int, what: str) -> ByteRange:
    """Return the bytes of ``count`` sectors starting at ``lba``."""
    return ByteRange(lba * sector_size, (lba + count) * sector_size, what)


def sectors_for(nbytes: int, sector_size: int) -> int:
    """Return how many whole sectors ``nbytes`` occupy (rounded up)."""
    return -(-nbytes // sector_size)
