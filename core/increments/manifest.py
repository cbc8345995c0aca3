"""File manifests: the complete list of a file system's entries at one increment.

Every manifest lists every path (not only the changed ones), so a replay knows
what was deleted and which permissions or owners changed — what the guide's
incremental-by-date cannot know. Regular files carry the ids of their content
chunks (``FILE_CHUNK`` bytes each; ``ZERO_ID`` for an all-zero piece, which is a
hole in a sparse file); unchanged files reuse the previous manifest's ids.

Stored as ``increments/<id>``: zstd-compressed, a magic, a JSON header line,
then one JSON array per entry. Manifests are untrusted input on restore: the
decoder checks types; paths are checked by the replay before anything is touched.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import zstandard

from core.repo.format import ID_BYTES, ZERO_ID, DamagedObject

MANIFEST_MAGIC = b"BVF1\n"
FILE_CHUNK = 1 << 20
"""Content is cut into 1 MiB pieces: a small change to a large file sends one piece."""

KINDS = {
    "f": "file",
    "d": "directory",
    "l": "symlink",
    "c": "char device",
    "b": "block device",
    "p": "fifo",
    "s": "socket",
}


@dataclass(frozen=True)
class FileEntry:
    """One path of the file system, as the scan saw it."""

    path: str
    """Relative to the mount point, '/'-separated; "." is the root directory itself.
    Names that are not UTF-8 are kept with surrogate escapes (``os.fsdecode``)."""
    kind: str
    """One letter of :data:`KINDS`."""
    mode: int
    """Permission bits (``stat.S_IMODE``)."""
    uid: int
    gid: int
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    nlink: int
    target: str | None = None
    """A symlink's target."""
    rdev: int = 0
    """A device node's device number."""
    chunks: tuple[bytes, ...] = ()
    """Content chunk digests of a regular file (``ZERO_ID`` for a hole)."""
    link: str | None = None
    """For a hard link: the path of the first entry of the same inode (content there)."""

    def to_row(self) -> list[Any]:
        """Return the compact JSON row."""
        return [
            self.path,
            self.kind,
            self.mode,
            self.uid,
            self.gid,
            self.size,
            self.mtime_ns,
            self.ctime_ns,
            self.ino,
            self.nlink,
            self.target,
            self.rdev,
            b"".join(self.chunks).hex(),
            self.link,
        ]

    @classmethod
    def from_row(cls, row: list[Any]) -> FileEntry:
        """Return the entry of a JSON row; raise ValueError/TypeError if it is malformed."""
        if not isinstance(row, list) or len(row) != 14:
            raise ValueError("entry row must be a list of 14 fields")
        (path, kind, mode, uid, gid, size, mtime, ctime, ino, nlink, target, rdev, chunks, link) = (
            row
        )
        ints = (mode, uid, gid, size, mtime, ctime, ino, nlink, rdev)
        if (
            not isinstance(path, str)
            or kind not in KINDS
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in ints)
        ):
            raise ValueError(f"malformed entry {path!r}")
        if min(mode, uid, gid, size, nlink, rdev) < 0 or mode > 0o7777:
            raise ValueError(f"entry {path!r} has out-of-range numbers")
        if not (target is None or isinstance(target, str)) or not (
            link is None or isinstance(link, str)
        ):
            raise ValueError(f"entry {path!r} has a malformed link")
        raw = bytes.fromhex(chunks) if isinstance(chunks, str) else None
        if raw is None or len(raw) % ID_BYTES:
            raise ValueError(f"entry {path!r} has a malformed chunk list")
        return cls(
            path,
            kind,
            mode,
            uid,
            gid,
            size,
            mtime,
            ctime,
            ino,
            nlink,
            target,
            rdev,
            tuple(raw[i : i + ID_BYTES] for i in range(0, len(raw), ID_BYTES)),
            link,
        )

    def same_content_as(self, other: FileEntry) -> bool:
        """True when both entries hold the same content (type, size, target, chunks)."""
        return (
            self.kind == other.kind
            and self.size == other.size
            and self.target == other.target
            and self.rdev == other.rdev
            and self.chunks == other.chunks
        )

    def same_metadata_as(self, other: FileEntry) -> bool:
        """True when mode, owner and modification time are equal."""
        return (self.mode, self.uid, self.gid, self.mtime_ns) == (
            other.mode,
            other.uid,
            other.gid,
            other.mtime_ns,
        )


@dataclass(frozen=True)
class FileManifest:
    """One increment: every entry of the file system, and where it sits in the chain."""

    id: str
    volume: dict[str, Any]
    """The volume record, as in image manifests (key, device, mount_point, uuid, …)."""
    base_image: str
    """The full image this increment builds on (the newest when it was taken)."""
    previous: str | None
    """The increment before this one, whose unchanged files this one reuses."""
    started: str
    finished: str
    entries: tuple[FileEntry, ...] = field(repr=False)
    stats: dict[str, Any] = field(default_factory=dict)
    problems: tuple[dict[str, Any], ...] = ()
    """Files skipped (unreadable) or that changed/vanished during the scan."""

    def by_path(self) -> dict[str, FileEntry]:
        """Return the entries by path."""
        return {e.path: e for e in self.entries}

    def stored_digests(self) -> set[bytes]:
        """Return every content chunk digest the manifest needs (zeros excluded)."""
        return {d for e in self.entries for d in e.chunks if d != ZERO_ID}

    def header(self) -> dict[str, Any]:
        """Return the JSON header (everything but the entries)."""
        return {
            "format": 1,
            "id": self.id,
            "volume": self.volume,
            "base_image": self.base_image,
            "previous": self.previous,
            "started": self.started,
            "finished": self.finished,
            "stats": self.stats,
            "problems": list(self.problems),
            "entries": len(self.entries),
        }


def encode_file_manifest(m: FileManifest) -> bytes:
    """Return the stored form of a file manifest."""
    lines: list[bytes] = [MANIFEST_MAGIC, json.dumps(m.header(), sort_keys=True).encode(), b"\n"]
    for e in m.entries:
        lines.append(json.dumps(e.to_row(), separators=(",", ":")).encode())
        lines.append(b"\n")
    return zstandard.ZstdCompressor(level=3).compress(b"".join(lines))


def _rows(body: bytes) -> Iterator[list[Any]]:
    for line in body.split(b"\n"):
        if line:
            yield json.loads(line)


def decode_file_manifest(stored: bytes, key: str = "file manifest") -> FileManifest:
    """Return the manifest in ``stored``; raise :class:`DamagedObject` if it is not one."""
    try:
        body = zstandard.ZstdDecompressor().decompress(stored, max_output_size=1 << 34)
    except zstandard.ZstdError as e:
        raise DamagedObject(f"{key} is damaged: {e}") from None
    if not body.startswith(MANIFEST_MAGIC):
        raise DamagedObject(f"{key} is damaged: bad header")
    head, _, rest = body[len(MANIFEST_MAGIC) :].partition(b"\n")
    try:
        h = json.loads(head)
        if h.get("format") != 1:
            raise ValueError("unknown format")
        entries = tuple(FileEntry.from_row(r) for r in _rows(rest))
        if len(entries) != h["entries"]:
            raise ValueError("entry count does not match the header")
        return FileManifest(
            id=str(h["id"]),
            volume=dict(h["volume"]),
            base_image=str(h["base_image"]),
            previous=h["previous"],
            started=str(h["started"]),
            finished=str(h["finished"]),
            entries=entries,
            stats=dict(h.get("stats", {})),
            problems=tuple(h.get("problems", ())),
        )
    except (ValueError, KeyError, TypeError) as e:
        raise DamagedObject(f"{key} is damaged: {e}") from None


def entries_sorted(entries: Iterable[FileEntry]) -> tuple[FileEntry, ...]:
    """Return entries parents-first (sorted by path components), as a replay needs them."""
    return tuple(sorted(entries, key=lambda e: () if e.path == "." else tuple(e.path.split("/"))))
