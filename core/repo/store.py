"""The object API every repository backend implements, and the local-directory backend.

Keys are ``KIND/NAME`` strings (``chunks/3f…``, ``images/20261126T…``). Objects are
immutable: ``put`` of an existing key with the same content is a no-op, and a put
is atomic (a reader sees the whole object or none).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import stat
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

from core.errors import BlockvaultError
from core.repo.format import DamagedObject


class ObjectMissing(BlockvaultError):
    """An object the repository should hold is not there."""


class UnreadableObject(DamagedObject):
    """An object is there but cannot be read (an I/O error of the repository's disk)."""


class RepositoryError(BlockvaultError):
    """The repository cannot be used (missing, unwritable, not a blockvault repository)."""


class RepositoryWriteFailed(RepositoryError):
    """An object could not be written: the repository's disk is full, read-only or failing.

    Never an OSError, so that code reading a source (which skips an unreadable file)
    cannot mistake the repository's failure for the file's: the backup fails instead.
    """


def write_failed(root: str, key: str, error: OSError) -> RepositoryWriteFailed:
    """Return the one-line error for an object of ``key`` that could not be written."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        why, fix = "its file system is full", "free space there or use another --repo"
    elif error.errno == errno.EROFS:
        why, fix = "its file system is read-only", "remount it read-write or use another --repo"
    else:
        why, fix = error.strerror or str(error), "check the repository's disk (dmesg)"
    return RepositoryWriteFailed(
        f"cannot write {key} to the repository {root}: {why}; {fix}, then run the backup "
        "again — nothing of this backup was recorded"
    )


class ObjectStore(Protocol):
    """Put, get, batch-exists, list and delete immutable objects by key."""

    readers: int
    """How many gets in flight keep this store busy (a restore's or a check's threads)."""

    def put(self, key: str, data: Buffers) -> None:
        """Store ``data`` (one buffer, or several to concatenate) under ``key`` atomically."""
        ...

    def get(self, key: str) -> bytes:
        """Return the object; raise :class:`ObjectMissing` if there is none."""
        ...

    def exists_many(self, keys: Iterable[str]) -> set[str]:
        """Return the subset of ``keys`` that are stored."""
        ...

    def list(self, kind: str) -> Iterator[str]:
        """Yield every key of ``kind`` (``chunks``, ``images``)."""
        ...

    def strays(self, kind: str) -> Iterator[tuple[str, str]]:
        """Yield ``(where, why)`` for what lies under ``kind`` but is no object of it."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; a missing object is not an error."""
        ...

    def size_of(self, key: str) -> int:
        """Return the stored size of an object in bytes."""
        ...

    def sync(self) -> None:
        """Make every object put so far durable (before a manifest names them)."""
        ...

    def commit(self, key: str, data: Buffers, refs: Iterable[bytes]) -> None:
        """Store manifest ``key`` once every object put so far is durable.

        ``refs`` are the digests of the chunks it names: a server checks that the node
        may name them and keeps them as that node's known chunks.
        """
        ...


Buffers = bytes | bytearray | memoryview | Sequence[bytes | bytearray | memoryview]
"""What put() takes: one buffer, or several written back to back."""


def _write_all(fd: int, data: Buffers) -> int:
    parts = (
        [memoryview(data)]
        if isinstance(data, bytes | bytearray | memoryview)
        else [memoryview(p) for p in data]
    )
    total = sum(len(p) for p in parts)
    i = 0
    while i < len(parts):
        n = os.writev(fd, parts[i : i + IOV_MAX])  # a pack is thousands of buffers
        while i < len(parts) and n >= len(parts[i]):
            n -= len(parts[i])
            i += 1
        if i < len(parts) and n:
            parts[i] = parts[i][n:]
    return total


IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024
"""The most buffers one writev takes."""


_KEY = re.compile(r"^[a-z]+/[A-Za-z0-9._-]+$")
TMP_PREFIX = ".tmp-"
MIN_OBJECT = 6
"""No object is smaller: a chunk's magic and codec byte and at least one byte of payload."""


def check_key(key: str) -> tuple[str, str]:
    """Return ``(kind, name)`` of a well-formed key; raise ValueError otherwise."""
    if not _KEY.match(key) or ".." in key:
        raise ValueError(f"bad object key {key!r}")
    kind, name = key.split("/", 1)
    return kind, name


class LocalStore:
    """Objects as files: ``ROOT/KIND/NN/NAME`` (two-character fan-out keeps directories small).

    Objects are written to a temporary file and renamed into place without an fsync
    each; :meth:`sync` makes them durable in one ``syncfs`` before any manifest that
    names them is written (manifests are put with ``durable=True``).
    """

    readers = (os.cpu_count() or 1) + 1
    """A disk answers at once: a reader per core, and one more to overlap the writes."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.fspath(root)
        self._behind = _WriteBehind()
        self._real_dirs: set[str] = set()
        """Fan-out directories seen to be real directories (no symlink on the way)."""

    def _path(self, key: str) -> str:
        kind, name = check_key(key)
        directory = os.path.join(self.root, kind, name[:2])
        if directory not in self._real_dirs:
            self._check_dirs(kind, name[:2])
        return os.path.join(directory, name)

    def _check_dirs(self, kind: str, fan: str) -> None:
        """Refuse a kind or fan-out directory that is a symlink (or no directory at all).

        Every path below the root is made of these two, so no object is read, written
        or deleted through a link that leads out of the repository. A directory not
        made yet is fine: the write that needs it makes it.
        """
        for rel in (kind, os.path.join(kind, fan)):
            try:
                mode = os.lstat(os.path.join(self.root, rel)).st_mode
            except FileNotFoundError:
                return
            if not stat.S_ISDIR(mode):
                what = "a symbolic link" if stat.S_ISLNK(mode) else _file_kind(mode)
                raise DamagedObject(
                    f"{rel} in the repository {self.root} is {what}, not a directory: damage "
                    "(or tampering) — nothing is read, written or deleted through it"
                )
        self._real_dirs.add(os.path.join(self.root, kind, fan))

    def put(self, key: str, data: Buffers, *, durable: bool = False) -> None:
        try:
            self._put(key, data, durable=durable)
        except OSError as e:
            raise write_failed(self.root, key, e) from None

    def _put(self, key: str, data: Buffers, *, durable: bool) -> None:
        path = self._path(key)
        directory = os.path.dirname(path)
        tmp = os.path.join(directory, f"{TMP_PREFIX}{secrets.token_hex(8)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            size = _write_all(fd, data)
            if durable:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.rename(tmp, path)
        if durable or size < WRITE_BEHIND_MIN:
            # Small objects (a file's few KiB) are left to the one syncfs before the
            # manifest: waiting for each one's own disk write would serialise them.
            os.close(fd)
        else:
            self._behind.add(fd)
        if durable:
            _fsync_dir(directory)

    def get(self, key: str) -> bytes:
        with os.fdopen(self._open(key), "rb") as f:
            try:
                return f.read()
            except OSError as e:
                raise self._unreadable(key, e) from None

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """Return ``length`` bytes of object ``key`` from ``offset`` (fewer past its end)."""
        fd = self._open(key)
        try:
            return os.pread(fd, length, offset)
        except OSError as e:
            raise self._unreadable(key, e) from None
        finally:
            os.close(fd)

    def _open(self, key: str) -> int:
        """Open object ``key`` for reading; only a regular file is one.

        A symlink is never followed (it could lead out of the repository), and a FIFO
        or a device would hang or flood the reader.
        """
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(self._path(key), flags)
        except FileNotFoundError:
            raise self._missing(key) from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise self._not_regular(key, "a symbolic link") from None
            raise UnreadableObject(
                f"cannot open {key} in the repository {self.root}: {e.strerror}"
            ) from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise self._not_regular(key, _file_kind(mode))
        return fd

    def _unreadable(self, key: str, error: OSError) -> UnreadableObject:
        return UnreadableObject(
            f"cannot read {key} from the repository {self.root}: {error.strerror}; "
            "check the repository's disk (dmesg), then 'blockvault repo check'"
        )

    def exists_many(self, keys: Iterable[str]) -> set[str]:
        found: set[str] = set()
        for key in keys:
            try:
                # An empty or headless file is what a crash can leave of an unsynced
                # write, and anything but a regular file is damage: none counts as stored.
                st = os.lstat(self._path(key))
                if stat.S_ISREG(st.st_mode) and st.st_size >= MIN_OBJECT:
                    found.add(key)
            except FileNotFoundError:
                continue
        return found

    def list(self, kind: str) -> Iterator[str]:
        for key, why in self._walk(kind):
            if why is None:
                yield key

    def strays(self, kind: str) -> Iterator[tuple[str, str]]:
        """Yield ``(path, why)`` for what lies under ``kind`` but is no object of it.

        A name no key can have, an object in another fan-out directory than its name
        says (it would never be found), a symlinked or non-directory fan-out entry:
        none is read, listed or deleted; ``repo check`` reports them.
        """
        for path, why in self._walk(kind):
            if why is not None:
                yield path, why

    def _walk(self, kind: str) -> Iterator[tuple[str, str | None]]:
        """Yield ``(key, None)`` per object of ``kind``, ``(path, why)`` per stray entry."""
        top = os.path.join(self.root, kind)
        if not _real_directory(top):
            return
        for fan in sorted(os.listdir(top)):
            where = os.path.join(top, fan)
            # A symlinked fan-out directory is never entered: what lies behind it is not
            # the repository's, and prune would delete it.
            if not _real_directory(where):
                yield where, "is not a fan-out directory (a symlink or a file)"
                continue
            for name in sorted(os.listdir(where)):
                if name.startswith(TMP_PREFIX):
                    continue
                key = f"{kind}/{name}"
                if not _KEY.match(key) or ".." in key:
                    yield os.path.join(where, name), "has a name no object can have"
                elif name[:2] != fan:
                    right = os.path.join(top, name[:2], name)
                    yield (
                        os.path.join(where, name),
                        f"is in the wrong directory (move it to {right})",
                    )
                else:
                    yield key, None

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(key))

    def size_of(self, key: str) -> int:
        try:
            return os.lstat(self._path(key)).st_size
        except FileNotFoundError:
            raise self._missing(key) from None

    def _not_regular(self, key: str, kind: str) -> DamagedObject:
        return DamagedObject(
            f"object {key} in the repository {self.root} is {kind}, not a regular file: "
            "damage (or tampering) — it is not read; 'blockvault repo check' lists such objects"
        )

    def _missing(self, key: str) -> ObjectMissing:
        return ObjectMissing(f"object {key} is missing from the repository {self.root}")

    def release(self) -> None:
        """Finish the write-behind of objects put so far (also on a failed backup's way out)."""
        self._behind.drain()

    def sync(self) -> None:
        try:
            self._behind.drain()
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                _syncfs(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise write_failed(self.root, "the objects written so far", e) from None

    def commit(self, key: str, data: Buffers, refs: Iterable[bytes]) -> None:
        self.sync()
        self.put(key, data, durable=True)

    def temp_files(self) -> Iterator[str]:
        """Yield leftovers of interrupted writes (removed by prune)."""
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(TMP_PREFIX):
                    yield os.path.join(dirpath, name)


_libc = ctypes.CDLL(None, use_errno=True)


_SYNC_FILE_RANGE_WAIT_BEFORE = 1
_SYNC_FILE_RANGE_WRITE = 2
_SYNC_FILE_RANGE_WAIT_AFTER = 4


def _sync_file_range(fd: int, flags: int) -> None:
    _libc.sync_file_range(fd, ctypes.c_int64(0), ctypes.c_int64(0), flags)


WRITE_BEHIND_MIN = 256 << 10
"""Objects at least this large are written back at once and dropped from the cache."""


class _WriteBehind:
    """Objects whose writeback has started; the oldest are waited for and dropped from cache.

    Writeback starts as soon as an object is written, so the disk is busy all along
    rather than in one flush before the manifest; and once an object is on disk its
    pages leave the page cache, so a backup of a large volume does not push the
    server's own working set out of memory. The window also bounds dirty memory.
    """

    WINDOW = 8

    def __init__(self) -> None:
        self._fds: deque[int] = deque()
        self._lock = threading.Lock()

    def add(self, fd: int) -> None:
        _sync_file_range(fd, _SYNC_FILE_RANGE_WRITE)
        with self._lock:
            self._fds.append(fd)
            oldest = self._fds.popleft() if len(self._fds) > self.WINDOW else None
        if oldest is not None:
            self._retire(oldest)

    def drain(self) -> None:
        while True:
            with self._lock:
                if not self._fds:
                    return
                fd = self._fds.popleft()
            self._retire(fd)

    @staticmethod
    def _retire(fd: int) -> None:
        try:
            _sync_file_range(
                fd,
                _SYNC_FILE_RANGE_WAIT_BEFORE | _SYNC_FILE_RANGE_WRITE | _SYNC_FILE_RANGE_WAIT_AFTER,
            )
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _real_directory(path: str) -> bool:
    """True when ``path`` is a directory itself, not a symlink to one (nor missing)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _file_kind(mode: int) -> str:
    """Return what a non-regular file is, in words ("a FIFO", "a directory")."""
    for test, words in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISCHR, "a character device"),
    ):
        if test(mode):
            return words
    return "not a regular file"


def _syncfs(fd: int) -> None:
    """Flush the whole file system holding ``fd`` (one call instead of an fsync per object)."""
    if _libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems cannot fsync a directory
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)
