"""Where a server keeps what is no repository object: config, nodes, owners, sessions, lock.

All of it lives in the datastore itself, a directory (:class:`LocalMeta`) or a bucket
(:class:`BucketMeta`), never in one server's memory or state directory: several
``blockvault serve`` processes over one bucket serve the same nodes, and a session
begun through one can be resumed by another after a restart. Names are
``/``-separated paths under the datastore's root (``config.json``,
``server/nodes.json``, ``server/owners/NODE/KIND/ID``, ``server/sessions/SID.json``).

Changes that two servers could race are compare-and-swap (:meth:`swap`: a version
read with the data must still be current); a *log* (:meth:`append`) collects small
records without rewriting what is there (in a bucket, one object per append).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from core.repo.s3 import LockBusy, S3Store, is_s3
from core.repo.store import LocalStore, RepositoryError
from core.undo import write_durably

Release = Callable[[], None]


class Busy(RepositoryError):
    """The datastore is being pruned: no session may begin."""


class Meta(Protocol):
    """The server's own records in a datastore."""

    root: str
    remote: bool
    """True when every call is a request over the network (callers cache what they can)."""

    def read(self, name: str) -> tuple[bytes, str] | None:
        """Return ``(data, version)`` of ``name``, or None when there is none."""

    def version(self, name: str) -> str | None:
        """Return the version :meth:`read` would give ``name`` (cheaper), or None: not there."""

    def create(self, name: str, data: bytes) -> bool:
        """Store ``name`` unless it is there (return False then): never replaced."""

    def swap(self, name: str, data: bytes, version: str | None) -> bool:
        """Replace ``name`` if it is still at ``version`` (None: still absent); else False."""

    def put(self, name: str, data: bytes) -> None:
        """Store ``name`` durably, replacing what is there."""

    def append(self, name: str, record: bytes) -> None:
        """Add ``record`` to log ``name`` durably."""

    def records(self, name: str) -> bytes | None:
        """Return every record of log ``name`` joined (None: no such log)."""

    def delete(self, name: str) -> None:
        """Remove ``name`` (an object or a log); nothing when it is not there."""

    def names(self, folder: str) -> list[str]:
        """Return the names directly in ``folder`` (objects, logs and subfolders)."""

    def stamp(self, folder: str) -> str:
        """Return a value that changes whenever ``folder``'s objects change."""

    def idle(self, folder: str, seconds: float) -> list[str]:
        """Return the names in ``folder`` not changed for ``seconds``."""

    def shared_lock(self) -> Release:
        """Hold the datastore's lock shared (a backup session); raise :class:`Busy` if pruning."""


class LocalMeta:
    """The records as files of a datastore directory (logs are appended files)."""

    remote = False

    def __init__(self, root: str) -> None:
        self.root = root

    def _path(self, name: str) -> str:
        return os.path.join(self.root, *name.split("/"))

    def read(self, name: str) -> tuple[bytes, str] | None:
        try:
            with open(self._path(name), "rb") as f:
                return f.read(), _version_of(os.fstat(f.fileno()))
        except FileNotFoundError:
            return None

    def version(self, name: str) -> str | None:
        try:
            return _version_of(os.stat(self._path(name)))
        except FileNotFoundError:
            return None

    def _folder_of(self, name: str) -> str:
        folder = os.path.dirname(self._path(name))
        os.makedirs(folder, mode=0o700, exist_ok=True)
        return folder

    def create(self, name: str, data: bytes) -> bool:
        path = self._path(name)
        base = name.rsplit("/", 1)[-1]
        tmp = os.path.join(self._folder_of(name), f".{base}.{secrets.token_hex(6)}")
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails when it is there: never replaced
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True

    def swap(self, name: str, data: bytes, version: str | None) -> bool:
        lock = os.open(os.path.join(self._folder_of(name), f".{os.path.basename(name)}.lock"),
                       os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.version(name) != version:
                return False
            self.put(name, data)
            return True
        finally:
            os.close(lock)

    def put(self, name: str, data: bytes) -> None:
        path = self._path(name)
        self._folder_of(name)
        write_durably(Path(f"{path}.tmp-{secrets.token_hex(4)}"), Path(path), data)

    def append(self, name: str, record: bytes) -> None:
        self._folder_of(name)
        fd = os.open(self._path(name), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        try:
            os.write(fd, record)
        finally:
            os.close(fd)

    def records(self, name: str) -> bytes | None:
        found = self.read(name)
        return None if found is None else found[0]

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(name))

    def names(self, folder: str) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self._path(folder)) if not n.startswith("."))
        except FileNotFoundError:
            return []

    def stamp(self, folder: str) -> str:
        try:
            return str(os.stat(self._path(folder)).st_mtime_ns)
        except FileNotFoundError:
            return "0"

    def idle(self, folder: str, seconds: float) -> list[str]:
        old = []
        for name in self.names(folder):
            with contextlib.suppress(FileNotFoundError):
                if time.time() - os.stat(self._path(f"{folder}/{name}")).st_mtime > seconds:
                    old.append(name)
        return old

    def shared_lock(self) -> Release:
        fd = os.open(os.path.join(self.root, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Busy(
                "the datastore is being pruned; try again when the prune has finished"
            ) from None
        return lambda: os.close(fd)


class BucketMeta:
    """The records as objects under the bucket prefix of an :class:`S3Store`.

    A log is a folder of objects, one per append (``NAME/TIME-RANDOM``); a version
    is an object's ETag, swapped with ``If-Match``. The lock is the store's lock
    objects, the same that ``repo prune`` on the bucket takes exclusively.
    """

    remote = True

    def __init__(self, store: S3Store) -> None:
        self.store = store
        self.root = store.root

    def _key(self, name: str) -> str:
        return self.store.raw_key(name)

    def read(self, name: str) -> tuple[bytes, str] | None:
        return self.store.raw_get(self._key(name))

    def version(self, name: str) -> str | None:
        return self.store.raw_etag(self._key(name))

    def create(self, name: str, data: bytes) -> bool:
        return self.store.raw_create(self._key(name), data)

    def swap(self, name: str, data: bytes, version: str | None) -> bool:
        if version is None:
            return self.create(name, data)
        return self.store.raw_replace(self._key(name), data, version)

    def put(self, name: str, data: bytes) -> None:
        self.store.call(f"storing {name}", "put_object", Key=self._key(name), Body=data)

    def append(self, name: str, record: bytes) -> None:
        part = f"{name}/{time.time_ns():020d}-{secrets.token_hex(4)}"
        self.store.raw_create(self._key(part), record)

    def records(self, name: str) -> bytes | None:
        entries = self.store.raw_list(self._key(name) + "/")
        if not entries:
            return None
        return b"".join(_data(self.store.raw_get(str(e["Key"]))) for e in entries)

    def delete(self, name: str) -> None:
        keys = [str(e["Key"]) for e in self.store.raw_list(self._key(name) + "/")]
        self.store.raw_delete([self._key(name), *keys])

    def names(self, folder: str) -> list[str]:
        base = self._key(folder) + "/"
        seen = {str(e["Key"])[len(base) :].split("/", 1)[0] for e in self.store.raw_list(base)}
        return sorted(seen)

    def stamp(self, folder: str) -> str:
        digest = hashlib.sha256()
        for entry in self.store.raw_list(self._key(folder) + "/"):
            digest.update(f"{entry['Key']} {entry.get('ETag')}\n".encode())
        return digest.hexdigest()

    def idle(self, folder: str, seconds: float) -> list[str]:
        base = self._key(folder) + "/"
        newest: dict[str, float] = {}
        for entry in self.store.raw_list(base):
            name = str(entry["Key"])[len(base) :].split("/", 1)[0]
            modified = entry["LastModified"].timestamp()
            newest[name] = max(newest.get(name, 0.0), modified)
        # This host's clock against the bucket's: twice the time, for a clock that is off.
        return sorted(n for n, t in newest.items() if time.time() - t > 2 * seconds)

    def shared_lock(self) -> Release:
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(self.store.lock())
        except LockBusy:
            raise Busy("the datastore is being pruned; try again when the prune has "
                       "finished") from None
        return stack.close


def _version_of(st: os.stat_result) -> str:
    return f"{st.st_mtime_ns}.{st.st_ino}.{st.st_size}"


def _data(found: tuple[bytes, str] | None) -> bytes:
    return b"" if found is None else found[0]


def store_at(location: str) -> LocalStore | S3Store:
    """Return the object store of the datastore at ``location`` (a directory or s3://)."""
    return S3Store(location) if is_s3(location) else LocalStore(os.path.abspath(location))


def meta_of(store: LocalStore | S3Store) -> Meta:
    """Return the records' home for a datastore whose objects are in ``store``."""
    return BucketMeta(store) if isinstance(store, S3Store) else LocalMeta(store.root)


def meta_at(location: str) -> Meta:
    """Return the records' home of the datastore at ``location`` (a directory or s3://)."""
    return meta_of(store_at(location))
