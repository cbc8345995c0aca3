"""On-disk formats: chunk objects and image manifests.

A chunk's id is the BLAKE3 of its plain bytes (hex); the object holds a 4-byte
magic, a codec byte and the payload (zstd, or raw when compression does not pay).
An image manifest is zstd-compressed: magic, a JSON header and a binary chunk
table of 32-byte ids, where 32 zero bytes mean an all-zero chunk that is not stored,
then the BLAKE3 of everything before it (a manifest is checked as a whole on read,
so a flipped byte in a chunk id is found before a restore writes anything).
"""

from __future__ import annotations

import json
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

import blake3
import zstandard

from core.errors import BlockvaultError

CHUNK_MAGIC = b"BVC1"
MANIFEST_MAGIC = b"BVM2"
LEGACY_MANIFEST_MAGIC = b"BVM1"
"""Format-1 repositories' first manifests carry no checksum; they are still read."""
SEAL_BYTES = 32
CODEC_RAW = 0
CODEC_ZSTD = 1
ID_BYTES = 32
ZERO_ID = bytes(ID_BYTES)
ZSTD_LEVEL = 1
"""Level 1: measured here at ~2.8× on mixed volume data for ~2× the speed of level 3."""

_local = threading.local()


class DamagedObject(BlockvaultError):
    """An object's bytes do not match its id, or cannot be decoded."""


def _compressor() -> zstandard.ZstdCompressor:
    # One compressor per thread: sharing one between threads crashes the process.
    c = getattr(_local, "compressor", None)
    if c is None:
        c = _local.compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "decompressor", None)
    if d is None:
        d = _local.decompressor = zstandard.ZstdDecompressor()
    return d


def chunk_digest(data: bytes | memoryview) -> bytes:
    """Return the 32-byte BLAKE3 digest that names a chunk."""
    return blake3.blake3(data).digest()


def split_digests(data: bytes) -> list[bytes]:
    """Return the ``ID_BYTES``-long digests concatenated in ``data`` (a torn tail is dropped)."""
    return [data[i : i + ID_BYTES] for i in range(0, len(data) - len(data) % ID_BYTES, ID_BYTES)]


def chunk_key(digest: bytes) -> str:
    """Return the object key of a chunk digest."""
    return f"chunks/{digest.hex()}"


_HEADER_ZSTD = CHUNK_MAGIC + bytes((CODEC_ZSTD,))
_HEADER_RAW = CHUNK_MAGIC + bytes((CODEC_RAW,))


def encode_chunk(data: bytes | memoryview) -> tuple[bytes, bytes | memoryview]:
    """Return the stored form of a chunk as (header, payload): zstd when that saves space.

    Two parts, written with one ``writev``, so that 4 MiB are never copied just to
    put five bytes in front of them.
    """
    packed = _compressor().compress(data)
    if len(packed) < len(data):
        return _HEADER_ZSTD, packed
    return _HEADER_RAW, data


def _checked_plain(
    stored: bytes, digest: bytes, max_size: int, name: Callable[[bytes | memoryview], bytes]
) -> bytes | memoryview:
    hexid = digest.hex()
    if stored[:4] != CHUNK_MAGIC or len(stored) < 5:
        raise DamagedObject(f"chunk {hexid} is damaged: bad header")
    codec = stored[4]
    payload = memoryview(stored)[5:]
    if codec == CODEC_ZSTD:
        try:
            plain: bytes | memoryview = _decompressor().decompress(
                payload, max_output_size=max_size
            )
        except zstandard.ZstdError as e:
            raise DamagedObject(f"chunk {hexid} is damaged: {e}") from None
    elif codec == CODEC_RAW:
        plain = payload  # hashed where it lies: no copy
    else:
        raise DamagedObject(f"chunk {hexid} is damaged: unknown codec {codec}")
    if name(plain) != digest:
        raise DamagedObject(f"chunk {hexid} is damaged: its content does not match its hash")
    return plain


def verify_chunk(
    stored: bytes,
    digest: bytes,
    *,
    max_size: int = 1 << 30,
    name: Callable[[bytes | memoryview], bytes] = chunk_digest,
) -> int:
    """Check a stored chunk against ``digest`` and return its plain size (nothing is kept).

    ``name`` computes a chunk's id from its content (keyed in an encrypted repository).

    Raises:
        DamagedObject: bad magic, unknown codec, undecodable payload or hash mismatch.
    """
    return len(_checked_plain(stored, digest, max_size, name))


def decode_chunk(
    stored: bytes,
    digest: bytes,
    *,
    max_size: int = 1 << 30,
    name: Callable[[bytes | memoryview], bytes] = chunk_digest,
) -> bytes:
    """Return a chunk's plain bytes once they match ``digest`` (see :func:`verify_chunk`)."""
    plain = _checked_plain(stored, digest, max_size, name)
    return plain if isinstance(plain, bytes) else bytes(plain)


@dataclass(frozen=True)
class VolumeRecord:
    """The volume a backup was taken from, as its image or file manifest records it."""

    key: str
    """The name its backups are filed under: the mount point, fstab's, or the device path."""
    device: str
    mount_point: str | None = None
    fstype: str | None = None
    uuid: str | None = None
    fs_label: str | None = None
    size: int = 0
    sector_size: int = 512
    kind: str = ""
    """The device's kind when it was backed up (``partition``, ``loop``, …)."""
    serial: str | None = None
    host: str = ""

    @property
    def names(self) -> frozenset[str]:
        """The names the volume was known by: its key, device and mount point."""
        return frozenset(n for n in (self.key, self.device, self.mount_point) if n)

    def to_dict(self) -> dict[str, Any]:
        """Return the record as stored in a manifest's JSON header."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: object) -> VolumeRecord:
        """Return the record stored as ``d``; ValueError names a field of the wrong type.

        Fields this version does not know are ignored; missing optional ones take
        their defaults.
        """
        if not isinstance(d, dict):
            raise ValueError("the volume record is not an object")
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in d:
                continue
            v = d[f.name]
            if f.type == "int":
                ok = type(v) is int and v >= 0
            elif f.type == "str":
                ok = isinstance(v, str)
            else:  # str | None
                ok = v is None or isinstance(v, str)
            if not ok:
                raise ValueError(f"volume field {f.name!r} is {v!r}")
            values[f.name] = v
        if not values.get("key") or not values.get("device"):
            raise ValueError("the volume record names no key or device")
        return cls(**values)


@dataclass(frozen=True)
class ImageManifest:
    """One image: the volume it was taken from, how, and its chunk table."""

    id: str
    volume: VolumeRecord
    imagetype: str
    fuzzy: bool
    started: str
    finished: str
    chunk_size: int
    size: int
    table: bytes = field(repr=False)
    """``ID_BYTES`` per chunk; ``ZERO_ID`` for an all-zero (or unused) chunk."""
    findings: tuple[dict[str, Any], ...] = ()
    stats: dict[str, Any] = field(default_factory=dict)
    label: dict[str, Any] | None = None
    """The disk label found at the start of the volume, if any (kind, ranges)."""

    @property
    def chunk_count(self) -> int:
        """Number of chunks in the table."""
        return len(self.table) // ID_BYTES

    def chunk(self, index: int) -> bytes:
        """Return the digest of chunk ``index`` (``ZERO_ID`` for zeros)."""
        return self.table[index * ID_BYTES : (index + 1) * ID_BYTES]

    def chunks(self) -> Iterator[tuple[int, bytes]]:
        """Yield ``(index, digest)`` for every chunk, zeros included."""
        for i in range(self.chunk_count):
            yield i, self.chunk(i)

    def stored_digests(self) -> set[bytes]:
        """Return the distinct digests of stored (non-zero) chunks."""
        return {d for _, d in self.chunks() if d != ZERO_ID}

    def header(self) -> dict[str, Any]:
        """Return the JSON header (everything but the chunk table)."""
        return manifest_header(
            self,
            imagetype=self.imagetype,
            fuzzy=self.fuzzy,
            chunk_size=self.chunk_size,
            size=self.size,
            findings=list(self.findings),
            label=self.label,
        )


class _Manifest(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def volume(self) -> VolumeRecord: ...
    @property
    def started(self) -> str: ...
    @property
    def finished(self) -> str: ...
    @property
    def stats(self) -> dict[str, Any]: ...


def manifest_header(m: _Manifest, **kind_fields: Any) -> dict[str, Any]:
    """Return a manifest's JSON header: what image and file manifests share, then the rest."""
    return {
        "format": 1,
        "id": m.id,
        "volume": m.volume.to_dict(),
        "started": m.started,
        "finished": m.finished,
        "stats": m.stats,
        **kind_fields,
    }


def seal(body: bytes) -> bytes:
    """Return ``body`` followed by its checksum (BLAKE3, :data:`SEAL_BYTES`)."""
    return body + blake3.blake3(body).digest()


def unseal(body: bytes, key: str) -> bytes:
    """Return a sealed body without its checksum; :class:`DamagedObject` if it does not match."""
    content, digest = body[:-SEAL_BYTES], body[-SEAL_BYTES:]
    if len(body) < SEAL_BYTES or blake3.blake3(content).digest() != digest:
        raise DamagedObject(
            f"{key} is damaged: its checksum does not match its content (a changed or "
            "lost byte); nothing was read from it"
        )
    return content


def encode_manifest(m: ImageManifest) -> bytes:
    """Return the stored form of a manifest."""
    header = json.dumps(m.header(), sort_keys=True).encode()
    body = MANIFEST_MAGIC + struct.pack(">I", len(header)) + header + m.table
    return zstandard.ZstdCompressor(level=3).compress(seal(body))


IMAGE_TYPES = frozenset({"static", "snapshot", "dynamic"})
MAX_MANIFEST_HEADER = 1 << 20
"""A header is a few KiB; more is a hostile manifest (its decoder must not expand it)."""
MAX_CHUNK_TABLE = 256 << 20
"""8 M chunks: a 32 TiB volume at 4 MiB a chunk."""
CHUNK_SIZES = frozenset(1 << bits for bits in range(12, 27))
"""Chunk sizes a manifest may declare: powers of two, 4 KiB to 64 MiB."""
CHUNK_SLACK = 64 << 10
"""What an encoded (or sealed) chunk may add to the chunk size: header, tag, checksum."""
MAX_MANIFEST = 512 << 20
"""The largest manifest a repository holds (an image of 16 TiB has a 128 MiB table)."""


CONTENT_KINDS = ("chunks/", "packs/")
"""Objects named by their content: storing one that exists stores the same bytes again."""


def max_stored(key: str) -> int:
    """Return the most bytes object ``key`` can hold: a reader refuses more, unread."""
    return max(CHUNK_SIZES) + CHUNK_SLACK if key.startswith(CONTENT_KINDS) else MAX_MANIFEST


def expand(stored: bytes, limit: int, key: str) -> bytes:
    """Return the zstd-decompressed ``stored``, refusing to expand it past ``limit`` bytes.

    A frame that declares its size (ours do) is refused before any memory is taken
    when that size is over ``limit``; one that does not is expanded a block at a
    time, so a small hostile object costs at most ``limit`` bytes before it is refused.
    """
    too_big = DamagedObject(
        f"{key} is damaged: it expands to more than {limit} bytes, more than any "
        "manifest of this kind holds"
    )
    try:
        declared = zstandard.frame_content_size(stored)
        if declared > limit:
            raise too_big
        if declared >= 0:
            return zstandard.ZstdDecompressor().decompress(stored, max_output_size=limit)
        out = bytearray()
        reader = zstandard.ZstdDecompressor().stream_reader(stored, read_across_frames=True)
        while block := reader.read(1 << 20):
            out += block
            if len(out) > limit:
                raise too_big
    except zstandard.ZstdError as e:
        raise DamagedObject(f"{key} is damaged: {e}") from None
    return bytes(out)


def decode_manifest(stored: bytes, key: str = "manifest") -> ImageManifest:
    """Return the manifest in ``stored``; raise :class:`DamagedObject` if it is not one.

    The manifest is untrusted: its expansion is bounded, and every field that sizes
    or places a write (chunk size, size, the chunk table's length) is checked here,
    before any restore can act on it.
    """
    body = expand(stored, 8 + MAX_MANIFEST_HEADER + MAX_CHUNK_TABLE + SEAL_BYTES, key)
    if body[:4] == MANIFEST_MAGIC:
        body = unseal(body, key)
    elif body[:4] != LEGACY_MANIFEST_MAGIC:
        raise DamagedObject(f"{key} is damaged: bad header")
    if len(body) < 8:
        raise DamagedObject(f"{key} is damaged: bad header")
    (n,) = struct.unpack(">I", body[4:8])
    if n > MAX_MANIFEST_HEADER or 8 + n > len(body):
        raise DamagedObject(f"{key} is damaged: its header length {n} is not plausible")
    try:
        h = json.loads(body[8 : 8 + n])
        table = body[8 + n :]
        if not isinstance(h, dict) or h.get("format") != 1:
            raise ValueError("unknown format")
        chunk_size, size = h["chunk_size"], h["size"]
        if type(chunk_size) is not int or chunk_size not in CHUNK_SIZES:
            raise ValueError(f"chunk size {chunk_size!r} is not a power of two of 4 KiB-64 MiB")
        if type(size) is not int or size < 0:
            raise ValueError(f"size {size!r} is not a number of bytes")
        needed = -(-size // chunk_size)
        if len(table) != needed * ID_BYTES:
            raise ValueError(
                f"its chunk table holds {len(table) / ID_BYTES:g} chunks but its size "
                f"({size} bytes) needs {needed}"
            )
        if h["imagetype"] not in IMAGE_TYPES:
            raise ValueError(f"imagetype {h['imagetype']!r} is unknown")
        for name in ("id", "started", "finished"):
            if not isinstance(h[name], str) or not h[name]:
                raise ValueError(f"{name} {h[name]!r} is not text")
        return ImageManifest(
            id=h["id"],
            volume=VolumeRecord.from_dict(h["volume"]),
            imagetype=h["imagetype"],
            fuzzy=bool(h["fuzzy"]),
            started=h["started"],
            finished=h["finished"],
            chunk_size=chunk_size,
            size=size,
            table=table,
            findings=tuple(h.get("findings", ())),
            stats=h.get("stats", {}),
            label=h.get("label"),
        )
    except (ValueError, KeyError, TypeError) as e:
        raise DamagedObject(f"{key} is damaged: {e}") from None
