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

A refusal names what holds the volume and only the image types that would be
accepted instead. A device that shares the volume's bytes (its disk, a partition or
slice of it) mounted read-write refuses static and makes any other image fuzzy.

This package is the public API (:func:`consistent_view`, :func:`default_imagetype`,
:func:`snapshot_provider_for`, :func:`static_obstacles`, :func:`recover_interrupted`
and the types and errors); each of its modules has one job:

- ``model``: ImageType, Provider, ReadView, the errors and the shared constants.
- ``signals``: signals held while a change is made or undone; SIGTERM as an unwind.
- ``live_mounts``: the mounts of a device now (the scan may be older than the job).
- ``undoing``: run an undo and forget its record only once it worked.
- ``static``, ``dynamic``, ``reflink``, ``lvm``: one view each.
- ``providers``: which snapshot provider applies to a device, or why none does.
- ``recovery``: the undo of changes a killed backup left behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from core import findings as F
from core.devices import BlockDevice
from core.snapshots.dynamic import dynamic_view
from core.snapshots.lvm import lvm_view
from core.snapshots.model import (
    FALLBACK_HINT,
    SNAPSHOT_NAME_PREFIX,
    FreezeError,
    FreezeUnsupported,
    ImageType,
    Obstacle,
    Provider,
    ReadView,
    SnapshotOverflow,
    SnapshotUnavailable,
    StaticRefused,
    UndoError,
)
from core.snapshots.providers import snapshot_provider
from core.snapshots.recovery import recover_interrupted
from core.snapshots.reflink import reflink_view
from core.snapshots.signals import terminate_unwinds
from core.snapshots.static import shared_in_use, static_obstacles, static_view
from core.targets import Volume

__all__ = [
    "FALLBACK_HINT",
    "SNAPSHOT_NAME_PREFIX",
    "FreezeError",
    "FreezeUnsupported",
    "ImageType",
    "Obstacle",
    "Provider",
    "ReadView",
    "SnapshotOverflow",
    "SnapshotUnavailable",
    "StaticRefused",
    "UndoError",
    "consistent_view",
    "default_imagetype",
    "recover_interrupted",
    "snapshot_provider_for",
    "static_obstacles",
]


def snapshot_provider_for(volume: Volume) -> str | None:
    """Return the snapshot provider that applies to ``volume`` ("lvm", "reflink"), or None.

    Reads sysfs facts, the mount table and (for XFS) the file system geometry; changes
    nothing. A reflink clone can still fail when tried; :func:`consistent_view` then
    raises :class:`SnapshotUnavailable`.
    """
    provider, _ = snapshot_provider(volume.device)
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
        yield dynamic_view(dev)
        return

    with terminate_unwinds():
        if kind is ImageType.STATIC:
            with static_view(volume) as view:
                yield view
            return

        stack = ExitStack()
        try:
            view = stack.enter_context(_snapshot_view(volume, snapshot_cache_pct, workdir))
        except SnapshotUnavailable as e:
            if not fallback_dynamic:
                # Never send the user to static when static would be refused too.
                raise SnapshotUnavailable(e.device, e.reason, static_obstacles(volume)) from None
            why = e.reason
        except FreezeUnsupported as e:
            if not fallback_dynamic:
                raise SnapshotUnavailable(dev.path, e.message, static_obstacles(volume)) from None
            why = e.message
        except FreezeError as e:
            if not fallback_dynamic:
                raise
            why = e.message
        else:
            with stack:
                yield _fuzzy_if_shared(view, dev)
            return

    # Outside the except clauses, so a failure in the caller's block is not chained to why.
    fallback = F.warning(
        "SNAPSHOT_FALLBACK_DYNAMIC",
        f"no snapshot of {dev.path}: {why}; copied it as is instead (dynamic)",
        device=dev.path,
        reason=why,
    )
    yield dynamic_view(dev, (fallback,))


def _fuzzy_if_shared(view: ReadView, dev: BlockDevice) -> ReadView:
    """Return ``view``, marked fuzzy when a device sharing its bytes is mounted read-write.

    The snapshot froze only the volume's own file system: a partition or slice of it
    (or the disk it lies on) went on changing while the snapshot was taken.
    """
    shared = shared_in_use(dev)
    if not shared:
        return view
    named = [f"{o.describe()} mounted read-write at {', '.join(points)}" for o, points in shared]
    return view.marked_fuzzy(
        F.warning(
            "IMAGE_FUZZY",
            f"{dev.path} was copied from a snapshot while {'; '.join(named)} went on "
            "changing unfrozen: the image may be inconsistent there; run fsck on it after "
            "restoring, or unmount it and back up again for a clean image",
            device=dev.path,
            shared=[o.path for o, _ in shared],
        )
    )


@contextmanager
def _snapshot_view(volume: Volume, cache_pct: int, workdir: str | None) -> Iterator[ReadView]:
    """Yield the snapshot of the provider that applies, or raise SnapshotUnavailable why not."""
    dev = volume.device
    provider, why = snapshot_provider(dev)
    if provider is Provider.LVM:
        with lvm_view(dev, cache_pct) as view:
            yield view
    elif provider is Provider.REFLINK:
        with reflink_view(volume, workdir) as view:
            yield view
    else:
        raise SnapshotUnavailable(dev.path, why)
