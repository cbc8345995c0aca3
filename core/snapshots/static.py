"""The static view: the file system is remounted read-only for the copy, then put back.

Refuses, naming every holder and what would work instead, while something keeps the
volume from standing still: a process holding a file of it open for writing, a loop
device attached to a file on it, a device that shares its bytes (its disk, a partition
or slice of it) mounted read-write, or when it holds the root file system. Leaves a
file system that is read-only already as it is, and reads an unmounted or raw volume
as it is.
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
from core.devices import BlockDevice, Overlap, mounts_of, scan, writable
from core.findings import Finding
from core.mounts import Mount, ProcessUse, is_under, mount_containing, processes_using, read_mounts
from core.preflight import describe_processes
from core.snapshots.live_mounts import mounts_now, unique_points
from core.snapshots.model import (
    ImageType,
    Obstacle,
    Provider,
    ReadView,
    StaticRefused,
    UndoError,
    all_of,
    first_line,
    use_imagetype,
)
from core.snapshots.providers import snapshot_provider
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


def shared_in_use(dev: BlockDevice) -> list[tuple[Overlap, list[str]]]:
    """Return the devices sharing bytes with ``dev`` that are mounted read-write now, and where.

    A disk whose partition is mounted (or a slice of a disk whose file system is)
    changes under a copy however still its own file system is.
    """
    table = read_mounts()
    out: list[tuple[Overlap, list[str]]] = []
    for o in dev.overlaps:
        mounts = mounts_of(o.major, o.minor, o.path, table)
        if mounts and writable(mounts):
            out.append((o, unique_points(mounts)))
    return out


def _obstacles(dev: BlockDevice, mounts: Sequence[Mount]) -> list[Obstacle]:
    """Return everything that stops a static image of ``dev`` mounted as ``mounts``, now."""
    out = [
        Obstacle(
            f"{o.describe()} is mounted read-write at {', '.join(points)}",
            "unmount " + all_of(points),
        )
        for o, points in shared_in_use(dev)
    ]
    if not mounts or "ro" in mounts[0].super_options or all(m.read_only for m in mounts):
        return out  # nothing of its own to remount
    points = unique_points(mounts)
    if "/" in points:
        # Nothing can take "/" offline: naming every process that writes there is noise.
        return [
            Obstacle(f"{dev.path} holds the root file system, which cannot go offline", None),
            *out,
        ]
    writers = _writers(dev)
    if writers:
        pids = list(dict.fromkeys(u.pid for u in writers))
        out.insert(
            0,
            Obstacle(
                describe_processes(writers),
                ("stop pid " if len(pids) == 1 else "stop pids ") + ", ".join(map(str, pids)),
                writers,
            ),
        )
    for u in dev.loop_users:
        if not u.read_only and any(is_under(u.backing_file, p) for p in points):
            out.append(
                Obstacle(
                    f"loop device {u.path} holds its backing file {u.backing_file} "
                    "open for writing",
                    f"detach {u.path} ('losetup -d {u.path}')",
                )
            )
    return out


def static_obstacles(volume: Volume) -> list[Obstacle]:
    """Return what stops a static image of ``volume`` now; empty when one would be taken."""
    return _obstacles(volume.device, mounts_now(volume.device))


def _alternatives(dev: BlockDevice) -> tuple[tuple[ImageType, ...], str]:
    """Return the image types that would be accepted instead of static, and why not snapshot."""
    provider, why = snapshot_provider(dev)
    if provider is None:
        return (ImageType.DYNAMIC,), why
    return (ImageType.SNAPSHOT, ImageType.DYNAMIC), ""


def _refused(dev: BlockDevice, why: str, obstacles: Sequence[Obstacle]) -> StaticRefused:
    """Return the refusal: ``why``, then what would work (each remedy, or another type)."""
    alternatives, no_snapshot = _alternatives(dev)
    remedies = [o.remedy for o in obstacles if o.remedy]
    advice = (all_of(remedies) + ", or " if remedies else "") + use_imagetype(alternatives)
    if no_snapshot:
        advice += f"; --imagetype snapshot is not possible: {no_snapshot}"
    return StaticRefused(
        f"a static image of {dev.path} is refused: {why}; {advice}",
        obstacles=obstacles,
        alternatives=alternatives,
    )


def _refuse(dev: BlockDevice, obstacles: Sequence[Obstacle]) -> StaticRefused:
    return _refused(dev, "; ".join(o.what for o in obstacles), obstacles)


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
    obstacles = _obstacles(dev, mounts)
    if obstacles:
        raise _refuse(dev, obstacles)
    if not mounts:
        yield ReadView(dev.path, 0, dev.size, ImageType.STATIC, False, Provider.UNMOUNTED)
        return

    points = unique_points(mounts)
    writable_mounts = [m for m in mounts if not m.read_only]
    if "ro" in mounts[0].super_options or not writable_mounts:
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

    named = volume.mount.mount_point if volume.mount else None
    target = next((m.mount_point for m in writable_mounts if m.mount_point == named), None)
    target = target or writable_mounts[0].mount_point

    with ExitStack() as stack:
        with signals_deferred():
            # Written down first: if this process is killed, the next one makes it rw.
            rec = undo.record("remount-rw", target, dev.path)
            done = remount(target, "ro")
            if done.returncode != 0:
                undo.forget(rec)
                # Most often EBUSY: a file was opened for writing, or a loop device attached
                # to a file on it, since the check. A fresh scan names the newcomers.
                now = scan().by_number(dev.major, dev.minor) or dev
                obstacles = _obstacles(now, mounts_now(now))
                if obstacles:
                    raise _refuse(dev, obstacles)
                raise _refused(
                    dev, f"cannot remount {target} read-only ({first_line(done.stderr)})", ()
                )
            started = time.monotonic()
            stack.callback(
                undone, rec, _restore_read_write, target, dev.path, started, view._closing
            )
        after = next((m for m in mounts_now(dev) if m.mount_point == target), None)
        if after is None or "ro" not in after.super_options:
            raise _refused(dev, f"{target} stayed writable after 'mount -o remount,ro'", ())
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
