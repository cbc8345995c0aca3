"""A consistent view of a volume for an image backup: static, snapshot or dynamic.

The guide's three imagetypes:

- ``static`` (offline): the file system is remounted read-only for the copy and put
  back as it was afterwards. An unmounted or raw volume is copied as it is.
- ``snapshot`` (online): a point-in-time copy is read while the volume stays in use.
  Providers: an LVM snapshot of a logical volume, or a reflink clone of a loop
  device's backing file (XFS with reflink=1, btrfs), taken while the volume's file
  system is frozen for the instant of the clone.
- ``dynamic``: the volume is read as it is; the image is marked fuzzy.

Every temporary state change (remount, freeze, clone, LVM snapshot) is undone on
every exit path. Undo steps, and the few instants between making a change and
registering its undo, hold SIGINT, SIGTERM and SIGHUP and deliver them afterwards,
so a Ctrl-C cannot leave a file system frozen or read-only.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import secrets
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from enum import StrEnum
from types import FrameType
from typing import Any

from core import findings as F
from core import undo
from core.devices import BlockDevice, DeviceKind
from core.errors import BlockvaultError
from core.findings import Finding
from core.mounts import Mount, ProcessUse, mount_containing, processes_using, read_mounts
from core.targets import Volume

FICLONE = 0x40049409
"""ioctl: make the destination file share all of the source file's extents."""
FIFREEZE = 0xC0045877
"""ioctl on any fd of a file system: flush it and block every writer until FITHAW."""
FITHAW = 0xC0045878
XFS_IOC_FSGEOMETRY = 0x8100587E
"""ioctl ``_IOR('X', 126, struct xfs_fsop_geom)`` (256 bytes); ``flags`` is the u32 at byte 92."""
XFS_FSOP_GEOM_FLAGS_REFLINK = 1 << 20

REFLINK_FILESYSTEMS = frozenset({"btrfs", "bcachefs", "ocfs2"})
"""File systems that always clone with FICLONE; XFS does when formatted with reflink=1."""
LVM_TOOLS = ("lvcreate", "lvs", "lvremove")
SNAPSHOT_NAME_PREFIX = "bv-snap-"
"""Prefix of LVM snapshots and reflink clones this module makes (find leftovers by it)."""
SNAPSHOT_USAGE_WARNING_PCT = 80.0
"""An LVM snapshot fuller than this at the end of the copy earns a warning."""

FALLBACK_HINT = "or add --snapshot-fallback dynamic"
"""How the messages name the fallback option (kept in one place for the interfaces to match)."""

_HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Signals held back while a state change is made or undone, then delivered."""
_UNWIND_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
"""Signals whose default action (die at once) is turned into SystemExit while a state is held."""


class ImageType(StrEnum):
    """How an image backup gets a consistent view (the guide's ``imagetype`` option)."""

    STATIC = "static"
    SNAPSHOT = "snapshot"
    DYNAMIC = "dynamic"


class Provider(StrEnum):
    """What :func:`consistent_view` actually did; the value of :attr:`ReadView.provider`."""

    REMOUNT_RO = "remount-ro"
    """Static: the file system was remounted read-only for the copy."""
    READ_ONLY = "read-only"
    """Static: the file system was read-only already; nothing was changed."""
    UNMOUNTED = "unmounted"
    """Static: the volume is not mounted (or raw) and is read as it is."""
    REFLINK = "reflink"
    LVM = "lvm"
    NONE = "none"
    """Dynamic: no snapshot; read as it is."""


@dataclass(frozen=True)
class ReadView:
    """What the engine reads: ``size`` bytes of ``path`` starting at ``offset``."""

    path: str
    """A block device, or a regular file (a reflink clone)."""
    offset: int
    size: int
    imagetype: ImageType
    """What was actually done (DYNAMIC after an allowed fallback from SNAPSHOT)."""
    fuzzy: bool
    """True when the image may be inconsistent (dynamic): fsck after restoring."""
    provider: str
    """One of :class:`Provider`."""
    findings: tuple[Finding, ...] = ()
    """What the report should show, known when the view opened."""
    _closing: list[Finding] = field(default_factory=list, init=False, repr=False, compare=False)

    @property
    def all_findings(self) -> tuple[Finding, ...]:
        """Return :attr:`findings` plus those added as the view closed.

        Read it after the ``with`` block: closing adds how long the file system was
        read-only and how full an LVM snapshot got.
        """
        return self.findings + tuple(self._closing)


class StaticRefused(BlockvaultError):
    """The file system cannot go read-only for a static image (writers, or it is "/")."""

    def __init__(self, message: str, processes: Sequence[ProcessUse] = ()) -> None:
        super().__init__(message)
        self.processes = tuple(processes)
        """The processes holding files open for writing, when they are the reason."""


class SnapshotUnavailable(BlockvaultError):
    """No snapshot provider applies to the volume, or the snapshot could not be taken."""

    def __init__(self, device: str, reason: str) -> None:
        super().__init__(
            f"no snapshot of {device} is possible: {reason}; "
            f"use --imagetype static or dynamic, {FALLBACK_HINT}"
        )
        self.device = device
        self.reason = reason
        """Why, without the advice (for the fallback finding)."""


class SnapshotOverflow(BlockvaultError):
    """An LVM snapshot filled up during the copy: the image read from it is unusable."""


class FreezeError(BlockvaultError):
    """A file system could not be frozen for a snapshot, or could not be thawed."""


class UndoError(BlockvaultError):
    """A temporary state change could not be undone; the message gives the command to do it."""


# --- public API ----------------------------------------------------------------------


def snapshot_provider_for(volume: Volume) -> str | None:
    """Return the snapshot provider that applies to ``volume`` ("lvm", "reflink"), or None.

    Reads sysfs facts, the mount table and (for XFS) the file system geometry; changes
    nothing. A reflink clone can still fail when tried; :func:`consistent_view` then
    raises :class:`SnapshotUnavailable`.
    """
    provider, _ = _snapshot_provider(volume.device)
    return provider


def default_imagetype(volume: Volume) -> ImageType:
    """Return SNAPSHOT where a snapshot provider applies to ``volume``, else STATIC."""
    return ImageType.SNAPSHOT if snapshot_provider_for(volume) else ImageType.STATIC


@contextmanager
def consistent_view(
    volume: Volume,
    imagetype: ImageType | None,
    *,
    fallback_dynamic: bool = False,
    snapshot_cache_pct: int = 10,
    workdir: str | None = None,
) -> Iterator[ReadView]:
    """Yield a :class:`ReadView` of ``volume`` that stays consistent until the block ends.

    Write the image manifest only after the ``with`` block exits without an error:
    an LVM snapshot that overflowed is only detected as the view closes.

    While a state is held (read-only, snapshot) in the main thread, a SIGTERM or
    SIGHUP whose action is the default raises ``SystemExit(128 + signal)`` instead,
    so the undo runs before the process ends.

    Args:
        volume: the resolved TARGET.
        imagetype: static, snapshot or dynamic; None picks :func:`default_imagetype`.
        fallback_dynamic: when no snapshot can be taken, read the volume as it is
            (dynamic, fuzzy) with a SNAPSHOT_FALLBACK_DYNAMIC warning instead of raising.
        snapshot_cache_pct: size of an LVM snapshot, in percent of its origin (1–100).
        workdir: where a reflink clone is made (same file system as the loop device's
            backing file); by default next to the backing file.

    Raises:
        StaticRefused: static, and the file system cannot go read-only.
        SnapshotUnavailable: snapshot, and no provider applies or the snapshot failed.
        FreezeError: snapshot, and the file system could not be frozen or thawed.
        SnapshotOverflow: the LVM snapshot filled up during the copy (raised on exit).
        UndoError: a state change could not be undone (raised on exit).
    """
    if not 1 <= snapshot_cache_pct <= 100:
        raise ValueError(f"snapshot_cache_pct must be 1..100, not {snapshot_cache_pct}")
    kind = ImageType(imagetype) if imagetype is not None else default_imagetype(volume)
    dev = volume.device

    if kind is ImageType.DYNAMIC:
        yield _dynamic_view(dev)
        return

    with _terminate_unwinds():
        if kind is ImageType.STATIC:
            with _static_view(volume) as view:
                yield view
            return

        stack = ExitStack()
        try:
            view = stack.enter_context(_snapshot_view(volume, snapshot_cache_pct, workdir))
        except SnapshotUnavailable as e:
            if not fallback_dynamic:
                raise
            why = e.reason
        except FreezeError as e:
            if not fallback_dynamic:
                raise
            why = e.message
        else:
            with stack:
                yield view
            return

    # Outside the except clauses, so a failure in the caller's block is not chained to why.
    fallback = F.warning(
        "SNAPSHOT_FALLBACK_DYNAMIC",
        f"no snapshot of {dev.path}: {why}; copied it as is instead (dynamic)",
        device=dev.path,
        reason=why,
    )
    yield _dynamic_view(dev, (fallback,))


# --- dynamic ---------------------------------------------------------------------------


def _dynamic_view(dev: BlockDevice, findings: tuple[Finding, ...] = ()) -> ReadView:
    fuzzy = F.warning(
        "IMAGE_FUZZY",
        f"{dev.path} was copied while in use without a snapshot: the image may be "
        "inconsistent; run fsck after restoring",
        device=dev.path,
    )
    return ReadView(
        path=dev.path,
        offset=0,
        size=dev.size,
        imagetype=ImageType.DYNAMIC,
        fuzzy=True,
        provider=Provider.NONE,
        findings=(*findings, fuzzy),
    )


# --- static: remount read-only ---------------------------------------------------------


def _current_mounts(dev: BlockDevice) -> tuple[Mount, ...]:
    """Return the mounts of ``dev`` now (the tree may be older than this job).

    Matches by device number or by source path, as :func:`core.devices.scan` does:
    btrfs reports an anonymous device number in mountinfo.
    """
    real = os.path.realpath(dev.path)
    return tuple(
        m
        for m in read_mounts()
        if (m.major, m.minor) == (dev.major, dev.minor)
        or (m.source.startswith("/dev/") and os.path.realpath(m.source) == real)
    )


def _unique_points(mounts: Sequence[Mount]) -> list[str]:
    return list(dict.fromkeys(m.mount_point for m in mounts))


def _writers(dev: BlockDevice) -> tuple[ProcessUse, ...]:
    """Return the processes holding files of ``dev``'s file system open for writing.

    Files below a mount point that lie on another file system mounted deeper down
    (``/srv/data`` under ``/srv``) do not stop ``/srv`` from going read-only.
    """
    table = read_mounts()
    own = _current_mounts(dev)
    own_ids = {m.mount_id for m in own}
    return tuple(
        u
        for u in processes_using(_unique_points(own))
        if u.how == "write"
        and (holder := mount_containing(u.path, table)) is not None
        and holder.mount_id in own_ids
    )


def _describe_writers(uses: Sequence[ProcessUse], limit: int = 3) -> str:
    by_pid: dict[int, list[ProcessUse]] = {}
    for u in uses:
        by_pid.setdefault(u.pid, []).append(u)
    phrases = [
        group[0].describe() + (f" (+{len(group) - 1} more)" if len(group) > 1 else "")
        for group in by_pid.values()
    ]
    more = len(phrases) - limit
    return ", ".join(phrases[:limit]) + (f" and {more} more" if more > 0 else "")


def _refuse_writers(mount_point: str, uses: Sequence[ProcessUse]) -> StaticRefused:
    return StaticRefused(
        f"cannot remount {mount_point} read-only for a static image: "
        f"{_describe_writers(uses)}; stop them, or use --imagetype snapshot or dynamic",
        uses,
    )


def _remount(mount_point: str, mode: str) -> subprocess.CompletedProcess[str]:
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


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "no message")


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
def _static_view(volume: Volume) -> Iterator[ReadView]:
    """Yield the device with its file system read-only; put it back as it was on exit.

    One remount suffices however many times the file system is mounted (bind mounts,
    subvolumes): ``remount,ro`` makes the superblock read-only, which every mount of
    it obeys, and sets only the remounted mount's own ro flag. So a mount whose own
    flag is rw is remounted, and ``remount,rw`` of that one mount restores the
    superblock and that flag; the other mounts' flags were never touched.
    """
    dev = volume.device
    view = ReadView(dev.path, 0, dev.size, ImageType.STATIC, False, Provider.REMOUNT_RO)
    mounts = _current_mounts(dev)
    if not mounts:
        yield ReadView(dev.path, 0, dev.size, ImageType.STATIC, False, Provider.UNMOUNTED)
        return

    points = _unique_points(mounts)
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
        with _signals_deferred():
            # Written down first: if this process is killed, the next one makes it rw.
            rec = undo.record("remount-rw", target, dev.path)
            done = _remount(target, "ro")
            if done.returncode != 0:
                undo.forget(rec)
                # Most often EBUSY: a file was opened for writing since the check.
                writers = _writers(dev)
                if writers:
                    raise _refuse_writers(target, writers)
                raise StaticRefused(
                    f"cannot remount {target} read-only for a static image: "
                    f"{_first_line(done.stderr)}; use --imagetype snapshot or dynamic"
                )
            started = time.monotonic()
            stack.callback(
                _undone, rec, _restore_read_write, target, dev.path, started, view._closing
            )
        now = next((m for m in _current_mounts(dev) if m.mount_point == target), None)
        if now is None or "ro" not in now.super_options:
            raise StaticRefused(
                f"{target} stayed writable after 'mount -o remount,ro'; "
                "use --imagetype snapshot or dynamic"
            )
        yield view


def _restore_read_write(
    mount_point: str, device: str, started: float, closing: list[Finding]
) -> None:
    with _signals_deferred():
        done = _remount(mount_point, "rw")
        held = time.monotonic() - started
    if done.returncode != 0:
        raise UndoError(
            f"{mount_point} is still read-only ({_first_line(done.stderr)}); "
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


def _undone(rec: undo.UndoRecord, undo_fn: Callable[..., None], *args: Any) -> None:
    """Run an undo; forget its record only once it succeeded (a failure keeps it for later)."""
    undo_fn(*args)
    undo.forget(rec)


def recover_interrupted() -> list[Finding]:
    """Complete the undo of changes whose backup process died; return what was done.

    A record whose process still runs belongs to a backup in progress and is left
    alone. A remount is put back only if the same device is still mounted there
    read-only; a change that no longer applies is just forgotten.
    """
    found: list[Finding] = []
    for rec in undo.records():
        if rec.owner_alive:
            continue
        try:
            done = _recover(rec)
        except BlockvaultError as e:
            found.append(F.warning("UNDO_PENDING", e.message, target=rec.target))
            continue
        undo.forget(rec)
        if done:
            found.append(F.warning("UNDO_RECOVERED", done, target=rec.target, kind=rec.kind))
    return found


def _recover(rec: undo.UndoRecord) -> str | None:
    """Undo ``rec``'s change if it still applies; return a line saying what was done."""
    if rec.kind == "remount-rw":
        mounts = [m for m in read_mounts() if m.mount_point == rec.target]
        dev_mounts = [m for m in mounts if m.source == rec.device] or mounts
        if not dev_mounts or "ro" not in dev_mounts[-1].super_options:
            return None
        done = _remount(rec.target, "rw")
        if done.returncode != 0:
            raise UndoError(
                f"{rec.target} was left read-only by a killed static backup and cannot be "
                f"made writable ({_first_line(done.stderr)}); run 'mount -o remount,rw "
                f"{rec.target}'"
            )
        return (
            f"{rec.target} was left read-only by a static backup that was killed; "
            "it is writable again"
        )
    if rec.kind == "thaw":
        try:
            fd = os.open(rec.target, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return None
        try:
            fcntl.ioctl(fd, FITHAW, 0)
        except OSError:
            return None  # EINVAL: not frozen
        finally:
            os.close(fd)
        return f"{rec.target} was left frozen by a snapshot backup that was killed; thawed"
    if rec.kind == "unlink":
        if not os.path.exists(rec.target):
            return None
        _remove_clone(rec.target)
        return f"removed {rec.target}, the clone of a snapshot backup that was killed"
    if rec.kind == "lvremove":
        _lvremove(rec.target)
        return f"removed {rec.target}, the LVM snapshot of a backup that was killed"
    return None


# --- snapshot: which provider ----------------------------------------------------------


def _is_lvm(dev: BlockDevice) -> bool:
    return dev.kind is DeviceKind.LVM or (dev.dm_uuid or "").startswith("LVM-")


def _xfs_has_reflink(path: str) -> bool | None:
    """Return whether the XFS holding ``path`` was made with reflink=1 (None: cannot tell)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        geometry = fcntl.ioctl(fd, XFS_IOC_FSGEOMETRY, bytes(256))
    except OSError:
        return None
    finally:
        os.close(fd)
    (flags,) = struct.unpack_from("=I", geometry, 92)
    return bool(flags & XFS_FSOP_GEOM_FLAGS_REFLINK)


def _snapshot_provider(dev: BlockDevice) -> tuple[Provider | None, str]:
    """Return the provider for ``dev``, or None and why not; changes nothing."""
    if _is_lvm(dev):
        missing = [tool for tool in LVM_TOOLS if shutil.which(tool) is None]
        if missing:
            return None, f"{', '.join(missing)} not found on PATH (install lvm2)"
        return Provider.LVM, ""
    if dev.loop is None:
        return None, (
            f"it is a {dev.kind} device; snapshots need an LVM logical volume or a loop "
            "device whose backing file is on a file system that can clone files "
            "(XFS with reflink=1, btrfs)"
        )
    if "/" in (m.mount_point for m in _current_mounts(dev)):
        return None, (
            "it holds the root file system, which blockvault never freezes (that would "
            "hang this host)"
        )
    backing = dev.loop.backing_file
    if not backing.startswith("/") or not os.path.isfile(backing):
        return None, f"its backing file {backing} is missing or not a regular file"
    host = mount_containing(os.path.realpath(backing), read_mounts())
    fstype = host.fstype if host else "an unknown file system"
    where = f"{fstype} ({host.mount_point})" if host else fstype
    if fstype == "xfs":
        if _xfs_has_reflink(backing) is False:
            return None, (
                f"its backing file {backing} is on {where} made without reflink "
                "(mkfs.xfs -m reflink=1), so it cannot be cloned"
            )
    elif fstype not in REFLINK_FILESYSTEMS:
        return None, (
            f"its backing file {backing} is on {where}, which cannot clone files "
            "(reflink: XFS with reflink=1, btrfs)"
        )
    return Provider.REFLINK, ""


@contextmanager
def _snapshot_view(volume: Volume, cache_pct: int, workdir: str | None) -> Iterator[ReadView]:
    dev = volume.device
    provider, why = _snapshot_provider(dev)
    if provider is Provider.LVM:
        with _lvm_view(dev, cache_pct) as view:
            yield view
    elif provider is Provider.REFLINK:
        with _reflink_view(volume, workdir) as view:
            yield view
    else:
        raise SnapshotUnavailable(dev.path, why)


# --- snapshot: reflink clone of a loop device's backing file ---------------------------


def _ficlone(src_fd: int, dst_fd: int) -> None:
    """Make ``dst_fd``'s file share every extent of ``src_fd``'s (O(extents), no data copied)."""
    fcntl.ioctl(dst_fd, FICLONE, src_fd)


@contextmanager
def _frozen(mount_point: str) -> Iterator[None]:
    """Freeze the file system mounted at ``mount_point`` for the block; always thaw it.

    The caller holds signals (:func:`_signals_deferred`), so nothing interrupts the
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
                raise FreezeError(
                    f"the file system at {mount_point} cannot be frozen; "
                    "use --imagetype static or dynamic"
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


def _remove_clone(path: str) -> None:
    with _signals_deferred():
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise UndoError(
                f"the snapshot clone {path} could not be deleted ({e.strerror}); delete it"
            ) from None


@contextmanager
def _reflink_view(volume: Volume, workdir: str | None) -> Iterator[ReadView]:
    """Yield a reflink clone of the loop device's backing file, taken with its fs frozen."""
    dev = volume.device
    assert dev.loop is not None
    backing = dev.loop.backing_file
    mounts = _current_mounts(dev)
    named = volume.mount.mount_point if volume.mount else None
    points = _unique_points(mounts)
    freeze_at = named if named in points else (points[0] if points else None)
    clone_dir = workdir or os.path.dirname(backing)

    with ExitStack() as stack:
        with _signals_deferred(), ExitStack() as fds:
            try:
                dst, clone = tempfile.mkstemp(
                    prefix=f".{os.path.basename(backing)}.{SNAPSHOT_NAME_PREFIX}", dir=clone_dir
                )
            except OSError as e:
                raise SnapshotUnavailable(
                    dev.path, f"cannot create a clone in {clone_dir}: {e.strerror}"
                ) from None
            rec = undo.record("unlink", clone, dev.path)
            stack.callback(_undone, rec, _remove_clone, clone)
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
        yield ReadView(
            path=clone,
            offset=dev.loop.offset,
            size=dev.size,
            imagetype=ImageType.SNAPSHOT,
            fuzzy=False,
            provider=Provider.REFLINK,
            findings=(
                F.info(
                    "SNAPSHOT_REFLINK",
                    f"{how} cloned {backing} to {clone} for the copy",
                    backing_file=backing,
                    clone=clone,
                    frozen_mount_point=freeze_at,
                    frozen_ms=round(frozen_ms, 3) if freeze_at else None,
                ),
            ),
        )


# --- snapshot: LVM ----------------------------------------------------------------------


def _lvm(*args: str) -> subprocess.CompletedProcess[str]:
    """Run an LVM command found on PATH (tests put fakes first on PATH)."""
    return subprocess.run(
        list(args), capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False
    )


def _lvremove(snapshot: str) -> None:
    with _signals_deferred():
        done = _lvm("lvremove", "-f", snapshot)
    if done.returncode != 0:
        raise UndoError(
            f"the LVM snapshot {snapshot} could not be removed ({_first_line(done.stderr)}); "
            f"remove it with 'lvremove -f {snapshot}' before it fills up"
        )


def _check_snapshot(snapshot: str, closing: list[Finding]) -> None:
    """Raise SnapshotOverflow if ``snapshot`` filled up or went invalid; note its usage."""
    done = _lvm("lvs", "--noheadings", "-o", "lv_attr,snap_percent", snapshot)
    fields = done.stdout.split()
    if done.returncode != 0 or not fields:
        raise SnapshotOverflow(
            f"cannot tell whether the LVM snapshot {snapshot} stayed valid "
            f"({_first_line(done.stderr)}); the image read from it is not trusted, back up again"
        )
    attr = fields[0]
    try:
        used = float(fields[1]) if len(fields) > 1 else None
    except ValueError:
        used = None
    # lv_attr's fifth character: I = invalid snapshot, S = invalid suspended snapshot.
    if (len(attr) > 4 and attr[4] in "IS") or (used is not None and used >= 100):
        raise SnapshotOverflow(
            f"the LVM snapshot {snapshot} filled up during the copy, so the image is "
            "inconsistent; increase --snapshotcachesize and back up again"
        )
    if used is not None:
        nearly = used >= SNAPSHOT_USAGE_WARNING_PCT
        closing.append(
            Finding(
                "SNAPSHOT_USAGE",
                F.Severity.WARNING if nearly else F.Severity.INFO,
                f"the LVM snapshot {snapshot} was {used:.0f}% full at the end of the copy"
                + ("; increase --snapshotcachesize" if nearly else ""),
                {"snapshot": snapshot, "percent": used},
            )
        )


@contextmanager
def _lvm_view(dev: BlockDevice, cache_pct: int) -> Iterator[ReadView]:
    """Yield an LVM snapshot of ``dev``; check on exit that it did not overflow; remove it.

    ``lvcreate --snapshot`` suspends the origin, which freezes a mounted file system
    for the instant of the snapshot: no separate freeze is needed.
    """
    done = _lvm("lvs", "--noheadings", "-o", "vg_name,lv_name", dev.path)
    names = done.stdout.split()
    if done.returncode != 0 or len(names) != 2:
        raise SnapshotUnavailable(
            dev.path, f"lvs does not know it as a logical volume ({_first_line(done.stderr)})"
        )
    vg, lv = names
    name = f"{SNAPSHOT_NAME_PREFIX}{secrets.token_hex(4)}"
    snapshot = f"{vg}/{name}"

    with ExitStack() as stack:
        with _signals_deferred():
            rec = undo.record("lvremove", snapshot, dev.path)
            done = _lvm(
                "lvcreate",
                "--snapshot",
                "--extents",
                f"{cache_pct}%ORIGIN",
                "--name",
                name,
                f"{vg}/{lv}",
            )
            if done.returncode != 0:
                undo.forget(rec)
                raise SnapshotUnavailable(dev.path, f"lvcreate failed: {_first_line(done.stderr)}")
            stack.callback(_undone, rec, _lvremove, snapshot)
        done = _lvm("lvs", "--noheadings", "-o", "lv_path", snapshot)
        path = done.stdout.strip() if done.returncode == 0 else ""
        view = ReadView(
            path=path or f"/dev/{vg}/{name}",
            offset=0,
            size=dev.size,
            imagetype=ImageType.SNAPSHOT,
            fuzzy=False,
            provider=Provider.LVM,
            findings=(
                F.info(
                    "SNAPSHOT_LVM",
                    f"copied from the LVM snapshot {snapshot} of {vg}/{lv} "
                    f"({cache_pct}% of its size for changes)",
                    snapshot=snapshot,
                    origin=f"{vg}/{lv}",
                    cache_pct=cache_pct,
                ),
            ),
        )
        yield view
        _check_snapshot(snapshot, view._closing)  # only after a copy that finished


# --- signals ----------------------------------------------------------------------------


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP for the block, then deliver them as they would have been.

    In the main thread the Python handlers are swapped for one that only records the
    signal: ``pthread_sigmask`` alone would not do, because the kernel hands a signal
    sent to the process to any thread that does not block it, and Python then runs
    the handler in the main thread anyway. In other threads (where Python never runs
    handlers) the signals are blocked for this thread with ``pthread_sigmask``.
    """
    if not _in_main_thread():
        previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        return

    caught: list[int] = []

    def hold(signum: int, _frame: FrameType | None) -> None:
        if signum not in caught:
            caught.append(signum)

    previous: dict[int, Callable[[int, FrameType | None], object] | int] = {}
    try:
        for sig in _HELD_SIGNALS:
            handler = signal.getsignal(sig)
            if handler is not None:  # None: installed outside Python; leave it alone
                previous[sig] = handler
                signal.signal(sig, hold)
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in caught:
            if previous.get(sig) is not signal.SIG_IGN:
                signal.raise_signal(sig)  # the original handler runs now, after the window


@contextmanager
def _terminate_unwinds() -> Iterator[None]:
    """Make SIGTERM and SIGHUP raise SystemExit while the block runs, if they would kill.

    Only handlers left at the default (die at once, skipping every undo) are replaced,
    only in the main thread, and put back afterwards unless someone changed them.
    """
    if not _in_main_thread():
        yield
        return

    def unwind(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    replaced = [sig for sig in _UNWIND_SIGNALS if signal.getsignal(sig) is signal.SIG_DFL]
    for sig in replaced:
        signal.signal(sig, unwind)
    try:
        yield
    finally:
        for sig in replaced:
            if signal.getsignal(sig) is unwind:
                signal.signal(sig, signal.SIG_DFL)
