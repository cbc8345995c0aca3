"""Random-access byte sources: what parsers of on-disk structures read from.

Parsers (disk labels, file-system signatures) take a :class:`ByteSource` so that
tests feed them crafted bytes and the device layer feeds them a device, with the
same code in between.
"""

from __future__ import annotations

import os
from typing import Protocol


class ByteSource(Protocol):
    """Something of known size that can be read at any offset."""

    @property
    def size(self) -> int:
        """Total size in bytes."""
        ...

    def read_at(self, offset: int, length: int) -> bytes:
        """Return up to ``length`` bytes at ``offset``; fewer (or none) past the end."""
        ...


class _Bounded:
    """A source of ``_size`` bytes whose reads are clamped to them, once for every kind."""

    _size: int

    @property
    def size(self) -> int:
        """Total size in bytes."""
        return self._size

    def read_at(self, offset: int, length: int) -> bytes:
        """Return up to ``length`` bytes at ``offset``; fewer (or none) past the end."""
        if offset < 0 or length <= 0 or offset >= self._size:
            return b""
        return self._read(offset, min(length, self._size - offset))

    def _read(self, offset: int, length: int) -> bytes:
        """Return the ``length`` bytes at ``offset``, all of which lie inside the source."""
        raise NotImplementedError


class BytesSource(_Bounded):
    """A :class:`ByteSource` over bytes in memory."""

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)
        self._size = len(self._data)

    def _read(self, offset: int, length: int) -> bytes:
        return self._data[offset : offset + length]


class FileSource(_Bounded):
    """A read-only :class:`ByteSource` over a regular file or block device.

    Opened with ``O_RDONLY`` only: reading a label or a superblock never writes.
    Use as a context manager so the descriptor is closed on every exit path.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._size = os.lseek(self._fd, 0, os.SEEK_END)
        except OSError:
            os.close(self._fd)
            raise

    def _read(self, offset: int, length: int) -> bytes:
        return os.pread(self._fd, length, offset)

    def close(self) -> None:
        """Close the descriptor; safe to call twice."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SliceSource(_Bounded):
    """A :class:`ByteSource` over ``size`` bytes of another source starting at ``offset``.

    How a loop slice inside a snapshot clone file is read as a volume of its own.
    """

    def __init__(self, base: ByteSource, offset: int, size: int) -> None:
        self._base = base
        self._offset = offset
        self._size = max(0, min(size, base.size - offset))

    def _read(self, offset: int, length: int) -> bytes:
        return self._base.read_at(self._offset + offset, length)
