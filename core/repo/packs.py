"""Packs: many small stored chunks in one object, so that small files are not one PUT each.

A chunk whose stored form (encoded, and sealed in an encrypted repository) is smaller
than :data:`PACK_BELOW` is not an object of its own: it waits in the repository's
:class:`Packer` with others until they fill :data:`PACK_TARGET`, and all go as one
object ``packs/NAME``::

    MAGIC | piece 1 | … | piece n | index | n (u32) | END

where the index holds each piece's chunk id (32 bytes) and length (u32), in order,
and NAME is the BLAKE3 of the whole object: anyone can verify a pack without a key.
A piece is byte for byte what the chunk object would be (a sealed piece is sealed
under its chunk's key, ``chunks/ID``), so it verifies as that chunk would, and a prune
moves live pieces to a new pack without opening them.

The index is not encrypted: it holds what the unpacked layout shows in its object
names and sizes anyway (keyed chunk ids in an encrypted repository, and lengths), and
a server must read it to verify each piece and to let a node reference only chunks it
may. Packs are listed and their indexes read (the tail of each, one ranged read) into
a :class:`PackMap`: chunk id → where its piece lies.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, Protocol

import blake3

from core.repo.crypto import check_sealed
from core.repo.format import CHUNK_SIZES, DamagedObject, chunk_key, verify_chunk
from core.repo.store import ObjectMissing

PACK_MAGIC = b"BVK1\n"
PACK_END = b"BVKX"
PACK_BELOW = 256 << 10
"""Stored chunks smaller than this go into packs (a small file's content, a chunk of a
nearly empty stretch of a volume); larger ones stay objects of their own."""
PACK_TARGET = 16 << 20
"""A pack is stored once its pieces reach this many bytes (tens of MiB at most)."""
MAX_PIECES = 8192
"""A pack is stored once it holds this many pieces, whatever their size."""
MAX_PLAIN = 256 << 20
"""…or once its pieces expand to this many bytes: what verifying one pack may cost."""
MAX_PACK = PACK_TARGET + MAX_PIECES * 36 + 64
"""The largest pack: the target, and the index of the most pieces."""
_ENTRY = struct.Struct(">32sI")
_FOOT = struct.Struct(">I4s")
TAIL_GUESS = 64 << 10
"""The first ranged read of a pack's tail: the whole index of up to 1800 pieces."""
MIN_PIECE = 6
"""No stored chunk is smaller (its magic, codec byte and a byte of payload)."""
MAX_PIECE = PACK_BELOW + 4096
"""No piece is larger: only chunks stored under :data:`PACK_BELOW` (sealed: a little
more) are packed."""


class Entry(NamedTuple):
    """Where one chunk's piece lies: in pack ``key``, ``length`` bytes from ``offset``."""

    key: str
    offset: int
    length: int


def pack_key(name: str) -> str:
    """Return the object key of the pack named ``name`` (64 hex digits)."""
    return f"packs/{name}"


Pieces = Sequence[tuple[bytes, Sequence[bytes | memoryview]]]


def encode_pack(pieces: Pieces) -> tuple[str, list[bytes | memoryview]]:
    """Return ``(key, parts)`` of the pack holding ``pieces`` (chunk id, stored parts)."""
    parts: list[bytes | memoryview] = [PACK_MAGIC]
    index = bytearray()
    for digest, stored in pieces:
        parts.extend(stored)
        index += _ENTRY.pack(digest, sum(len(p) for p in stored))
    parts.append(bytes(index))
    parts.append(_FOOT.pack(len(pieces), PACK_END))
    body = b"".join(parts)  # one buffer: thousands of small ones cost a syscall or a
    return pack_key(blake3.blake3(body).hexdigest()), [body]  # TLS record each


def parse_tail(key: str, tail: bytes | memoryview, size: int) -> list[tuple[bytes, Entry]] | int:
    """Return the entries of pack ``key`` (``size`` bytes) from the last bytes of it.

    Returns how many tail bytes are needed instead when ``tail`` is too short.

    Raises:
        DamagedObject: the tail is no pack's, or its index does not add up to ``size``.
    """
    if size < len(PACK_MAGIC) + _FOOT.size or len(tail) < _FOOT.size:
        raise DamagedObject(f"{key} is damaged: too short to be a pack")
    count, end = _FOOT.unpack(tail[-_FOOT.size :])
    if end != PACK_END:
        raise DamagedObject(f"{key} is damaged: it does not end as a pack does")
    need = count * _ENTRY.size + _FOOT.size
    if count == 0 or count > MAX_PIECES or len(PACK_MAGIC) + need + count * MIN_PIECE > size:
        raise DamagedObject(f"{key} is damaged: its index cannot fit in it")
    if len(tail) < need:
        return need
    table = memoryview(tail)[len(tail) - need : len(tail) - _FOOT.size]
    out: list[tuple[bytes, Entry]] = []
    offset = len(PACK_MAGIC)
    for digest, length in _ENTRY.iter_unpack(table):
        if not MIN_PIECE <= length <= MAX_PIECE:
            raise DamagedObject(f"{key} is damaged: a piece of {length} bytes")
        out.append((bytes(digest), Entry(key, offset, length)))
        offset += length
    if offset != size - need:
        raise DamagedObject(f"{key} is damaged: its pieces do not add up to its size")
    return out


def verify_pack(
    key: str, body: bytes, *, sealed: bool, max_chunk: int = max(CHUNK_SIZES)
) -> list[tuple[bytes, Entry]]:
    """Return the entries of pack ``key`` after verifying its name and every piece.

    A sealed piece's checksum is verified (no key needed); a plain piece is decoded
    (to at most ``max_chunk`` bytes, and all together to at most :data:`MAX_PLAIN`)
    and hashed against its chunk id.

    Raises:
        DamagedObject: naming the pack, and the first piece that does not verify.
    """
    if body[: len(PACK_MAGIC)] != PACK_MAGIC:
        raise DamagedObject(f"{key} is damaged: no pack header")
    if len(body) > MAX_PACK:
        raise DamagedObject(f"{key} is damaged: {len(body)} bytes, more than any pack holds")
    if blake3.blake3(body).hexdigest() != key.split("/", 1)[1]:
        raise DamagedObject(f"{key} is damaged: its content does not match its name")
    entries = parse_tail(key, body, len(body))
    assert not isinstance(entries, int)  # the whole body is its own tail
    view = memoryview(body)
    plain = 0
    for digest, e in entries:
        plain += verify_piece(digest, view[e.offset : e.offset + e.length], sealed=sealed,
                              where=key, max_chunk=max_chunk)
        if plain > MAX_PLAIN:
            raise DamagedObject(f"{key} expands to more than {MAX_PLAIN} bytes: no pack does")
    return entries


def verify_piece(
    digest: bytes,
    piece: bytes | memoryview,
    *,
    sealed: bool,
    where: str,
    max_chunk: int = max(CHUNK_SIZES),
) -> int:
    """Verify one piece as its chunk object would be verified, without a key; return the
    bytes it expands to (a sealed piece: its own length)."""
    try:
        if sealed:
            return len(check_sealed(chunk_key(digest), bytes(piece)))
        return verify_chunk(piece, digest, max_size=max_chunk)  # type: ignore[arg-type]
    except DamagedObject as e:
        raise DamagedObject(f"{where}: piece of chunk {digest.hex()[:16]}…: {e}") from None


class RangeStore(Protocol):
    """What a :class:`PackMap` needs of a store."""

    readers: int

    def list(self, kind: str) -> Iterable[str]: ...

    def size_of(self, key: str) -> int: ...

    def get_range(self, key: str, offset: int, length: int) -> bytes: ...


def read_index(store: RangeStore, key: str, size: int | None = None) -> list[tuple[bytes, Entry]]:
    """Return pack ``key``'s entries from one ranged read of its tail (two when it is long)."""
    if size is None:
        size = store.size_of(key)
    if size > MAX_PACK:
        raise DamagedObject(f"{key} is damaged: {size} bytes, more than any pack can hold")
    want = min(size, TAIL_GUESS)
    found = parse_tail(key, store.get_range(key, size - want, want), size)
    if isinstance(found, int):
        found = parse_tail(key, store.get_range(key, size - found, found), size)
        if isinstance(found, int):
            raise DamagedObject(f"{key} is damaged: its index changed between two reads")
    return found


class PackMap:
    """Chunk id → the pack piece that holds it, for every pack of a store.

    Loaded on first use (a listing and a ranged read per pack), kept up to date with
    the packs this process stores, and loaded again when asked (:meth:`refresh`).
    A pack whose index does not read is left out and listed in :attr:`damaged`.
    """

    def __init__(
        self, store: RangeStore, sizes: Callable[[], dict[str, int]] | None = None
    ) -> None:
        self.store = store
        self._sizes = sizes
        self._lock = threading.Lock()
        self._where: dict[bytes, Entry] | None = None
        self._stale = False
        self._generation = 0
        """Counts :meth:`forget` calls: a refresh that saw one begin after it stays stale."""
        self._listed = 0.0
        """When the last refresh began listing (monotonic)."""
        self._refreshing = threading.Lock()
        self._added: dict[str, int] = {}
        """Packs this process stored, by when (:attr:`_added_count` then)."""
        self._added_count = 0
        self._packs: dict[str, list[tuple[bytes, Entry]]] = {}
        self.damaged: dict[str, DamagedObject] = {}

    def _loaded(self) -> dict[bytes, Entry]:
        with self._lock:
            where = None if self._stale else self._where
        return where if where is not None else self.refresh()

    def refresh(self, min_age: float = 0.0) -> dict[bytes, Entry]:
        """List the packs again; read the index of each one not seen before.

        One refresh runs at a time; with ``min_age``, a map listed less than that many
        seconds ago (and not forgotten since) is returned as it is. A chunk keeps the
        place it was first found in while that pack is there: a later pack holding the
        same id does not take its place.
        """
        asked = time.monotonic()
        with self._refreshing:
            with self._lock:
                if self._where is not None and not self._stale and (
                    self._listed > asked or asked - self._listed < min_age
                ):
                    return self._where
            return self._refresh()

    def _refresh(self) -> dict[bytes, Entry]:
        with self._lock:
            started = self._added_count
            generation = self._generation
            listed = time.monotonic()
        sizes: dict[str, int | None]
        if self._sizes is not None:
            sizes = dict(self._sizes())
        else:
            sizes = dict.fromkeys(self.store.list("packs"))
        with self._lock:
            new = [k for k in sizes if k not in self._packs]
        read: dict[str, list[tuple[bytes, Entry]]] = {}
        damaged: dict[str, DamagedObject] = {}

        def one(key: str) -> None:
            try:
                read[key] = read_index(self.store, key, sizes[key])
            except DamagedObject as e:
                damaged[key] = e
            except ObjectMissing:
                pass  # pruned since it was listed

        if len(new) > 1:
            with ThreadPoolExecutor(min(len(new), max(2, self.store.readers))) as pool:
                list(pool.map(one, new))
        elif new:
            one(new[0])
        with self._lock:
            # A pack this process stored after the listing began is kept: it is there.
            fresh = {k for k, n in self._added.items() if n > started}
            packs = {k: v for k, v in self._packs.items() if k in sizes or k in fresh}
            packs.update(read)
            self._packs = packs
            self.damaged = {k: v for k, v in {**self.damaged, **damaged}.items() if k in sizes}
            where = {d: e for d, e in (self._where or {}).items() if e.key in packs}
            for key in sorted(packs):
                for digest, entry in packs[key]:
                    where.setdefault(digest, entry)
            self._where, self._listed = where, listed
            self._stale = self._generation != generation  # forgotten meanwhile: again
            return where

    def forget(self) -> None:
        """List the packs again at next use (a prune may have run since they were listed);
        only the indexes of packs not seen before are read then."""
        with self._lock:
            self._stale = True
            self._generation += 1

    def add(self, key: str, entries: list[tuple[bytes, Entry]]) -> None:
        """Note pack ``key``, just stored by this process."""
        with self._lock:
            self._added_count += 1
            self._added[key] = self._added_count
            self._packs[key] = entries
            if self._where is None:
                return  # not loaded yet: the first listing finds the rest
            for digest, entry in entries:
                self._where.setdefault(digest, entry)

    def locate(self, digest: bytes) -> Entry | None:
        """Return where chunk ``digest`` lies in a pack, or None."""
        return self._loaded().get(digest)

    def packs(self) -> dict[str, list[tuple[bytes, Entry]]]:
        """Return every readable pack's entries, by key."""
        self._loaded()
        with self._lock:
            return dict(self._packs)


class Packer:
    """Small stored chunks gathered until they fill a pack, then stored as one object.

    ``store(key, parts)`` writes the pack; ``stored(key, entries)`` hears of it. Pieces
    in the packer are not in the repository until :meth:`flush` (a manifest commit
    flushes first, so no manifest names a chunk that is not stored).
    """

    def __init__(
        self,
        store: Callable[[str, Sequence[bytes | memoryview]], None],
        stored: Callable[[str, list[tuple[bytes, Entry]]], None],
    ) -> None:
        self._store = store
        self._stored = stored
        self._lock = threading.Lock()
        self._pieces: list[tuple[bytes, Sequence[bytes | memoryview]]] = []
        self._pending: set[bytes] = set()
        self._size = 0
        self._plain = 0
        self.packs_written = 0
        self.written: set[str] = set()
        """The keys of the packs this packer stored."""

    def add(self, digest: bytes, parts: Sequence[bytes | memoryview], plain: int) -> None:
        """Add a stored chunk that expands to ``plain`` bytes; store the pack when full."""
        size = sum(len(p) for p in parts)
        if size > MAX_PIECE:
            raise ValueError(f"a piece of {size} bytes is too large for a pack")
        with self._lock:
            if digest in self._pending:
                return
            if (
                self._size + size > PACK_TARGET
                or len(self._pieces) + 1 > MAX_PIECES
                or self._plain + plain > MAX_PLAIN
            ):
                self._flush_locked()  # first: no pack ever goes over its bounds
            # Pieces are kept: a caller's buffer may be reused once this returns.
            self._pieces.append((digest, [bytes(p) for p in parts]))
            self._pending.add(digest)
            self._size += size
            self._plain += plain

    def pending(self, digest: bytes) -> bool:
        """True when chunk ``digest`` waits in the packer."""
        with self._lock:
            return digest in self._pending

    def waiting(self, digest: bytes) -> bytes | None:
        """Return the stored bytes of chunk ``digest`` if it waits in the packer."""
        with self._lock:
            if digest not in self._pending:
                return None
            return next(b"".join(parts) for d, parts in self._pieces if d == digest)

    def flush(self) -> None:
        """Store the pieces gathered so far as a pack (nothing when there are none)."""
        with self._lock:
            self._flush_locked()

    def discard(self) -> None:
        """Forget the pieces gathered (a failed backup)."""
        with self._lock:
            self._pieces, self._pending, self._size, self._plain = [], set(), 0, 0

    def _flush_locked(self) -> None:
        if not self._pieces:
            return
        key, parts = encode_pack(self._pieces)
        self._store(key, parts)
        offset, entries = len(PACK_MAGIC), []
        for digest, stored in self._pieces:
            length = sum(len(p) for p in stored)
            entries.append((digest, Entry(key, offset, length)))
            offset += length
        self._stored(key, entries)
        self.packs_written += 1
        self.written.add(key)
        self._pieces, self._pending, self._size, self._plain = [], set(), 0, 0
