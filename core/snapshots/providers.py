"""Which snapshot provider applies to a device, and in words why none does.

An LVM logical volume gets an LVM snapshot when the LVM tools are installed; a loop
device gets a reflink clone when its backing file lies on a file system that clones
(XFS made with reflink=1, btrfs) and it does not hold "/". Only reads sysfs facts,
the mount table and the XFS geometry: choosing changes nothing.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import struct

from core.devices import BlockDevice, DeviceKind
from core.mounts import mount_containing, read_mounts
from core.snapshots.live_mounts import mounts_now
from core.snapshots.lvm import LVM_TOOLS
from core.snapshots.model import Provider

XFS_IOC_FSGEOMETRY = 0x8100587E
"""ioctl ``_IOR('X', 126, struct xfs_fsop_geom)`` (256 bytes); ``flags`` is the u32 at byte 92."""
XFS_FSOP_GEOM_FLAGS_REFLINK = 1 << 20

REFLINK_FILESYSTEMS = frozenset({"btrfs", "bcachefs", "ocfs2"})
"""File systems that always clone with FICLONE; XFS does when formatted with reflink=1."""


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


def snapshot_provider(dev: BlockDevice) -> tuple[Provider | None, str]:
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
    if "/" in (m.mount_point for m in mounts_now(dev)):
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
