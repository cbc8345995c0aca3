"""File manifests: the complete list of a file system's entries at one increment.

Every manifest lists every path (not only the changed ones), so a replay knows
what was deleted and which permissions or owners changed — what the guide's
incremental-by-date cannot know. Regular files carry the ids of their content
chunks (``FILE_CHUNK`` bytes each; ``ZERO_ID`` for an all-zero piece, which is a
hole in a sparse file); unchanged files reuse the previous manifest's ids.

Stored as ``increments/<id>``: zstd-compressed, a magic, a JSON header line, then
one JSON array holding a row (an array) per entry, then the checksum of it all.
Manifests are untrusted input on restore: the decoder checks types; paths are
checked by the replay before anything is touched.
"""

from __future__ import annotations

import contextlib
import gc
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any

import zstandard

from core.repo.format import (
    ID_BYTES,
    MAX_MANIFEST_HEADER,
    ZERO_ID,
    DamagedObject,
    VolumeRecord,
    expand,
    manifest_header,
    seal,
    unseal,
)

MANIFEST_MAGIC = b"BVF2\n"
LEGACY_MANIFEST_MAGIC = b"BVF1\n"
"""The first increments carry no checksum; they are still read."""
MAX_FILE_MANIFEST = 4 << 30
"""What a file manifest may expand to: about 20 million entries."""
MAX_EXPANSION = 64
"""Rows hold hex chunk ids and distinct names: a real manifest expands a few times,
never 64 times (a bomb expands thousands of times)."""
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
    volume: VolumeRecord
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
        return manifest_header(
            self,
            base_image=self.base_image,
            previous=self.previous,
            problems=list(self.problems),
            entries=len(self.entries),
        )


ENTRY_FIELDS = (
    "path",
    "kind",
    "mode",
    "uid",
    "gid",
    "size",
    "mtime_ns",
    "ctime_ns",
    "ino",
    "nlink",
    "target",
    "rdev",
    "chunks",
    "link",
)
FAST_ENTRIES = (
    tuple(f.name for f in fields(FileEntry)) == ENTRY_FIELDS
    and "__slots__" not in FileEntry.__dict__
    and not hasattr(FileEntry, "__post_init__")
)
"""Whether entries may be built by filling their instance dict in one go.

The frozen dataclass's ``__init__`` sets its 14 fields one ``object.__setattr__`` at a
time (2.8 µs an entry, as much as a scan's ``lstat``); one dict makes the same object
(equal, same hash, same repr) in 1.2 µs. Only while FileEntry is a frozen dataclass
with a ``__dict__``, exactly these fields and no ``__post_init__``.
"""

_new = object.__new__
_set = object.__setattr__


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while many acyclic objects are built."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def entry_from_fields(values: dict[str, Any]) -> FileEntry:
    """Return a FileEntry of already-checked ``values`` (all of :data:`ENTRY_FIELDS`)."""
    if not FAST_ENTRIES:
        return FileEntry(**values)
    e = _new(FileEntry)
    _set(e, "__dict__", values)
    return e


def encode_file_manifest(m: FileManifest) -> bytes:
    """Return the stored form of a file manifest: magic, header line, one array of rows."""
    header = json.dumps(m.header(), sort_keys=True).encode()
    # One dumps call for all rows: the C encoder, not 200,000 Python calls.
    rows = json.dumps([e.to_row() for e in m.entries], separators=(",", ":")).encode()
    return zstandard.ZstdCompressor(level=3).compress(
        seal(b"".join((MANIFEST_MAGIC, header, b"\n", rows, b"\n")))
    )


def _entries(rows: Any) -> tuple[FileEntry, ...]:
    """Return the entries of decoded rows, checking every field's type and range.

    Written flat (one unpacking, exact type tests) because it runs once per file:
    200,000 entries in well under a second.
    """
    if type(rows) is not list:
        raise ValueError("the entries are not a list")
    out: list[FileEntry] = []
    append = out.append
    make = entry_from_fields
    for row in rows:
        if type(row) is not list or len(row) != 14:
            raise ValueError("an entry row is not a list of 14 fields")
        path, kind, mode, uid, gid, size, mtime, ctime, ino, nlink, target, rdev, chunks, link = row
        if not (
            type(path) is str
            and kind in KINDS
            and type(chunks) is str
            and type(mode) is int
            and type(uid) is int
            and type(gid) is int
            and type(size) is int
            and type(mtime) is int
            and type(ctime) is int
            and type(ino) is int
            and type(nlink) is int
            and type(rdev) is int
            and (target is None or type(target) is str)
            and (link is None or type(link) is str)
        ):
            raise ValueError(f"malformed entry {path!r}")
        if not 0 <= mode <= 0o7777 or min(uid, gid, size, ino, nlink, rdev) < 0:
            raise ValueError(f"entry {path!r} has out-of-range numbers")
        if chunks:
            raw = bytes.fromhex(chunks)
            if len(raw) % ID_BYTES:
                raise ValueError(f"entry {path!r} has a malformed chunk list")
            pieces = tuple(raw[i : i + ID_BYTES] for i in range(0, len(raw), ID_BYTES))
        else:
            pieces = ()
        append(
            make(
                {
                    "path": path,
                    "kind": kind,
                    "mode": mode,
                    "uid": uid,
                    "gid": gid,
                    "size": size,
                    "mtime_ns": mtime,
                    "ctime_ns": ctime,
                    "ino": ino,
                    "nlink": nlink,
                    "target": target,
                    "rdev": rdev,
                    "chunks": pieces,
                    "link": link,
                }
            )
        )
    return tuple(out)


def decode_file_manifest(stored: bytes, key: str = "file manifest") -> FileManifest:
    """Return the manifest in ``stored``; raise :class:`DamagedObject` if it is not one."""
    body = expand(stored, min(MAX_FILE_MANIFEST, (32 << 20) + MAX_EXPANSION * len(stored)), key)
    if body.startswith(MANIFEST_MAGIC):
        body = unseal(body, key)
    elif not body.startswith(LEGACY_MANIFEST_MAGIC):
        raise DamagedObject(f"{key} is damaged: bad header")
    end = body.find(b"\n", len(MANIFEST_MAGIC), len(MANIFEST_MAGIC) + MAX_MANIFEST_HEADER)
    if end < 0:
        raise DamagedObject(f"{key} is damaged: its header is missing or not plausible")
    head, rest = body[len(MANIFEST_MAGIC) : end], body[end + 1 :]
    try:
        h = json.loads(head)
        if h.get("format") != 1:
            raise ValueError("unknown format")
        # Hundreds of thousands of new containers: the cyclic collector would walk them
        # again and again while they are built, and they hold no cycles.
        with gc_paused():
            entries = _entries(json.loads(rest))
        if len(entries) != h["entries"]:
            raise ValueError("entry count does not match the header")
        return FileManifest(
            id=str(h["id"]),
            volume=VolumeRecord.from_dict(h["volume"]),
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
