"""The reflink snapshot: a clone of a loop device's backing file, taken with its fs frozen.

``FICLONE`` makes a new file share every extent of the backing file (XFS with
reflink=1, btrfs), which costs no data copy; ``FIFREEZE`` holds the loop device's own
file system still for that instant, so the clone is as clean as an unmounted volume.
The clone is deleted when the view closes.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext

from core import findings as F
from core import undo
from core.snapshots.live_mounts import mounts_now, unique_points
from core.snapshots.model import (
    SNAPSHOT_NAME_PREFIX,
    FreezeError,
    FreezeUnsupported,
    Provider,
    ReadView,
    SnapshotUnavailable,
    UndoError,
    snapshot_read_view,
)
from core.snapshots.signals import signals_deferred
from core.snapshots.undoing import undone
from core.targets import Volume

FICLONE = 0x40049409
"""ioctl: make the destination file share all of the source file's extents."""
FIFREEZE = 0xC0045877
"""ioctl on any fd of a file system: flush it and block every writer until FITHAW."""
FITHAW = 0xC0045878
_NEW_CLONE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
"""A new file of our own, never one that was there (as ``mkstemp`` opens it)."""


def _ficlone(src_fd: int, dst_fd: int) -> None:
    """Make ``dst_fd``'s file share every extent of ``src_fd``'s (O(extents), no data copied)."""
    fcntl.ioctl(dst_fd, FICLONE, src_fd)


@contextmanager
def _frozen(mount_point: str) -> Iterator[None]:
    """Freeze the file system mounted at ``mount_point`` for the block; always thaw it.

    The caller holds signals (:func:`signals_deferred`), so nothing interrupts the
    window between freeze and thaw.
    """
    fd = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY)
    rec = undo.record("thaw", mount_point, "")
    try:
        try:
            fcntl.ioctl(fd, FIFREEZE, 0)
        except OSError as e:
            undo.forget(rec)
            if e.errno == errno.EBUSY:
                raise FreezeError(
                    f"{mount_point} is already frozen (fsfreeze or another backup?); "
                    f"wait for it or thaw it with 'fsfreeze -u {mount_point}'"
                ) from None
            if e.errno in (errno.EOPNOTSUPP, errno.ENOTTY):
                raise FreezeUnsupported(
                    f"the file system at {mount_point} cannot be frozen"
                ) from None
            raise FreezeError(f"cannot freeze {mount_point}: {e.strerror}") from None
        try:
            yield
        finally:
            try:
                fcntl.ioctl(fd, FITHAW, 0)
            except OSError as e:
                if e.errno != errno.EINVAL:  # EINVAL: someone thawed it already
                    raise FreezeError(
                        f"{mount_point} is still frozen ({e.strerror}); "
                        f"thaw it now with 'fsfreeze -u {mount_point}'"
                    ) from None
            undo.forget(rec)
    finally:
        os.close(fd)


def remove_clone(path: str) -> None:
    """Delete the clone at ``path`` (gone already is fine); UndoError says to delete it."""
    with signals_deferred():
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise UndoError(
                f"the snapshot clone {path} could not be deleted ({e.strerror}); delete it"
            ) from None


@contextmanager
def reflink_view(volume: Volume, workdir: str | None) -> Iterator[ReadView]:
    """Yield a reflink clone of the loop device's backing file, taken with its fs frozen."""
    dev = volume.device
    assert dev.loop is not None
    backing = dev.loop.backing_file
    mounts = mounts_now(dev)
    named = volume.mount.mount_point if volume.mount else None
    points = unique_points(mounts)
    freeze_at = named if named in points else (points[0] if points else None)
    clone_dir = workdir or os.path.dirname(backing)

    with ExitStack() as stack:
        with signals_deferred(), ExitStack() as fds:
            clone = os.path.join(
                clone_dir,
                f".{os.path.basename(backing)}.{SNAPSHOT_NAME_PREFIX}{secrets.token_hex(4)}",
            )
            # Recorded before the clone exists: killed at any instant after this, the
            # next backup or agent start finds the record and deletes the clone.
            rec = undo.record("unlink", clone, dev.path)
            try:
                dst = os.open(clone, _NEW_CLONE_FLAGS, 0o600)
            except OSError as e:
                undo.forget(rec)
                raise SnapshotUnavailable(
                    dev.path, f"cannot create a clone in {clone_dir}: {e.strerror}"
                ) from None
            stack.callback(undone, rec, remove_clone, clone)
            fds.callback(os.close, dst)
            try:
                src = os.open(backing, os.O_RDONLY)
            except OSError as e:
                raise SnapshotUnavailable(
                    dev.path, f"cannot open its backing file {backing}: {e.strerror}"
                ) from None
            fds.callback(os.close, src)
            started = time.monotonic()
            with _frozen(freeze_at) if freeze_at else nullcontext():
                try:
                    _ficlone(src, dst)
                except OSError as e:
                    if e.errno == errno.EXDEV:
                        why = f"{clone_dir} is not on the file system of {backing}"
                    elif e.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOTTY):
                        why = f"the file system of {backing} cannot clone it (reflink)"
                    else:
                        why = f"cloning {backing} failed: {e.strerror}"
                    raise SnapshotUnavailable(dev.path, why) from None
            frozen_ms = (time.monotonic() - started) * 1000
        how = f"froze {freeze_at} for {frozen_ms:.0f} ms and" if freeze_at else "(not mounted)"
        taken = F.info(
            "SNAPSHOT_REFLINK",
            f"{how} cloned {backing} to {clone} for the copy",
            backing_file=backing,
            clone=clone,
            frozen_mount_point=freeze_at,
            frozen_ms=round(frozen_ms, 3) if freeze_at else None,
        )
        yield snapshot_read_view(clone, dev.loop.offset, dev.size, Provider.REFLINK, taken)
