"""The static view: the file system is remounted read-only for the copy, then put back.

Refuses while a process holds a file of it open for writing (naming the processes)
and for the root file system; leaves a file system that is read-only already as it
is, and reads an unmounted or raw volume as it is.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

from core import findings as F
from core import undo
from core.devices import BlockDevice
from core.findings import Finding
from core.mounts import ProcessUse, mount_containing, processes_using, read_mounts
from core.preflight import describe_processes
from core.snapshots.live_mounts import mounts_now, unique_points
from core.snapshots.model import (
    ImageType,
    Provider,
    ReadView,
    StaticRefused,
    UndoError,
    first_line,
)
from core.snapshots.signals import signals_deferred
from core.snapshots.undoing import undone
from core.targets import Volume


def _writers(dev: BlockDevice) -> tuple[ProcessUse, ...]:
    """Return the processes holding files of ``dev``'s file system open for writing.

    Files below a mount point that lie on another file system mounted deeper down
    (``/srv/data`` under ``/srv``) do not stop ``/srv`` from going read-only.
    """
    table = read_mounts()
    own = mounts_now(dev)
    own_ids = {m.mount_id for m in own}
    return tuple(
        u
        for u in processes_using(unique_points(own))
        if u.how == "write"
        and (holder := mount_containing(u.path, table)) is not None
        and holder.mount_id in own_ids
    )


def _refuse_writers(mount_point: str, uses: Sequence[ProcessUse]) -> StaticRefused:
    return StaticRefused(
        f"cannot remount {mount_point} read-only for a static image: "
        f"{describe_processes(uses)}; stop them, or use --imagetype snapshot or dynamic",
        uses,
    )


def remount(mount_point: str, mode: str) -> subprocess.CompletedProcess[str]:
    """Run ``mount -o remount,MODE MOUNT_POINT`` keeping every other option of the mount.

    ``--options-source mtab`` takes the other options from the mount table, not from
    fstab, so a volume mounted with options that differ from fstab comes back as it was.
    """
    return subprocess.run(
        ["mount", "--options-source", "mtab", "-o", f"remount,{mode}", mount_point],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def _syncfs(mount_point: str) -> None:
    """Flush one file system (``syncfs(2)``), so the device holds what was written."""
    fd = os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), mount_point)
    finally:
        os.close(fd)


@contextmanager
def static_view(volume: Volume) -> Iterator[ReadView]:
    """Yield the device with its file system read-only; put it back as it was on exit.

    One remount suffices however many times the file system is mounted (bind mounts,
    subvolumes): ``remount,ro`` makes the superblock read-only, which every mount of
    it obeys, and sets only the remounted mount's own ro flag. So a mount whose own
    flag is rw is remounted, and ``remount,rw`` of that one mount restores the
    superblock and that flag; the other mounts' flags were never touched.
    """
    dev = volume.device
    view = ReadView(dev.path, 0, dev.size, ImageType.STATIC, False, Provider.REMOUNT_RO)
    mounts = mounts_now(dev)
    if not mounts:
        yield ReadView(dev.path, 0, dev.size, ImageType.STATIC, False, Provider.UNMOUNTED)
        return

    points = unique_points(mounts)
    writable = [m for m in mounts if not m.read_only]
    if "ro" in mounts[0].super_options or not writable:
        # Already read-only (superblock, or every mount): nothing to change. A superblock
        # still rw behind read-only mounts may hold unwritten data: flush it first.
        if "ro" not in mounts[0].super_options:
            _syncfs(points[0])
        yield ReadView(
            dev.path,
            0,
            dev.size,
            ImageType.STATIC,
            False,
            Provider.READ_ONLY,
            (
                F.info(
                    "STATIC_ALREADY_READ_ONLY",
                    f"{dev.path} is mounted read-only at {', '.join(points)}; left as it is",
                    mount_points=points,
                ),
            ),
        )
        return

    if "/" in points:
        raise StaticRefused(
            f"{dev.path} holds the root file system, which cannot go offline; "
            "use --imagetype snapshot or dynamic"
        )
    writers = _writers(dev)
    if writers:
        raise _refuse_writers(points[0], writers)

    named = volume.mount.mount_point if volume.mount else None
    target = next((m.mount_point for m in writable if m.mount_point == named), None)
    target = target or writable[0].mount_point

    with ExitStack() as stack:
        with signals_deferred():
            # Written down first: if this process is killed, the next one makes it rw.
            rec = undo.record("remount-rw", target, dev.path)
            done = remount(target, "ro")
            if done.returncode != 0:
                undo.forget(rec)
                # Most often EBUSY: a file was opened for writing since the check.
                writers = _writers(dev)
                if writers:
                    raise _refuse_writers(target, writers)
                raise StaticRefused(
                    f"cannot remount {target} read-only for a static image: "
                    f"{first_line(done.stderr)}; use --imagetype snapshot or dynamic"
                )
            started = time.monotonic()
            stack.callback(
                undone, rec, _restore_read_write, target, dev.path, started, view._closing
            )
        now = next((m for m in mounts_now(dev) if m.mount_point == target), None)
        if now is None or "ro" not in now.super_options:
            raise StaticRefused(
                f"{target} stayed writable after 'mount -o remount,ro'; "
                "use --imagetype snapshot or dynamic"
            )
        yield view


def _restore_read_write(
    mount_point: str, device: str, started: float, closing: list[Finding]
) -> None:
    with signals_deferred():
        done = remount(mount_point, "rw")
        held = time.monotonic() - started
    if done.returncode != 0:
        raise UndoError(
            f"{mount_point} is still read-only ({first_line(done.stderr)}); "
            f"make it writable again with 'mount -o remount,rw {mount_point}'"
        )
    closing.append(
        F.info(
            "STATIC_READ_ONLY",
            f"{mount_point} ({device}) was read-only for {held:.1f} s while it was copied",
            mount_point=mount_point,
            seconds=round(held, 3),
        )
    )
