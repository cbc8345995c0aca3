"""Turn a TARGET argument into the block device it names.

A TARGET is a block device path (symlinks such as ``/dev/disk/by-uuid/…`` or
``/dev/VG/LV`` resolved) or the mount point of a mounted volume.
"""

from __future__ import annotations

import os
import socket
import stat
from dataclasses import dataclass

from core.devices import BlockDevice, DeviceTree
from core.errors import TargetError
from core.mounts import Mount, mount_containing
from core.repo.format import VolumeRecord


@dataclass(frozen=True)
class Volume:
    """A resolved TARGET: the device, and the mount the user named if they named one."""

    given: str
    device: BlockDevice
    mount: Mount | None = None
    """The mount whose mount point was given as TARGET (None when a device path was given)."""


class TargetCodeError(TargetError):
    """A TARGET that names no usable block device, with the finding code that says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def resolve(target: str, tree: DeviceTree) -> Volume:
    """Return the :class:`Volume` that ``target`` names.

    Raises:
        TargetCodeError: the path is missing, is not a block device or mount point,
            or is a block device the kernel does not list.
    """
    path = os.path.abspath(target)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise TargetCodeError(
            "TARGET_MISSING",
            f"{target}: no such file or directory; give a block device (see "
            "'blockvault devices') or the mount point of a mounted volume",
        ) from None
    except OSError as e:
        raise TargetCodeError("TARGET_UNREADABLE", f"{target}: {e.strerror}") from None

    if stat.S_ISBLK(st.st_mode):
        dev = tree.by_number(os.major(st.st_rdev), os.minor(st.st_rdev))
        if dev is None:
            raise TargetCodeError(
                "TARGET_NO_MEDIUM",
                f"{target} is a block device with no medium or size 0 (an unattached loop "
                "device?); attach or insert it first",
            )
        return Volume(given=target, device=dev)

    if stat.S_ISDIR(st.st_mode):
        real = os.path.realpath(path)
        mount = next((m for m in reversed(tree.mounts) if m.mount_point == real), None)
        if mount is None:
            holder = mount_containing(real, tree.mounts)
            where = (
                f"; it lies on the file system mounted at {holder.mount_point}" if holder else ""
            )
            raise TargetCodeError(
                "TARGET_NOT_MOUNT_POINT",
                f"{target} is a directory but not a mount point{where}; give a block device "
                "or the mount point of a mounted volume",
            )
        dev = tree.by_number(mount.major, mount.minor) or (
            tree.by_path(mount.source) if mount.source.startswith("/dev/") else None
        )
        if dev is None:
            raise TargetCodeError(
                "TARGET_NOT_BLOCK_DEVICE",
                f"{target} is mounted from {mount.source} ({mount.fstype}), which is not a "
                "block device; image backup needs a volume on a block device",
            )
        return Volume(given=target, device=dev, mount=mount)

    kind = (
        "a regular file"
        if stat.S_ISREG(st.st_mode)
        else "a character device"
        if stat.S_ISCHR(st.st_mode)
        else "not a block device"
    )
    hint = (
        "; to back up an image file, attach it first with 'losetup --find --show FILE'"
        if stat.S_ISREG(st.st_mode)
        else ""
    )
    raise TargetCodeError(
        "TARGET_NOT_BLOCK_DEVICE",
        f"{target} is {kind}, not a block device or mount point{hint}",
    )


def volume_key(device: BlockDevice, fstab_mount_point: str | None = None) -> str:
    """Return the name images of a volume are filed under.

    The guide files an image under its file space (the mount point): the current one,
    else the one fstab gives; a raw volume, or a file system with neither, under its
    device path.
    """
    if device.mount_points:
        return device.mount_points[0]
    return fstab_mount_point or device.path


def target_names(target: str, device: BlockDevice | None) -> list[str]:
    """Return the names under which images of ``target`` may be filed.

    A TARGET that no longer resolves (the disk died) still matches by the name given.
    """
    names = [os.path.abspath(target)]
    if device is not None:
        names += [device.path, *device.mount_points]
    return names


def volume_record(
    device: BlockDevice, *, key: str, mount_point: str | None, size: int, host: str | None = None
) -> VolumeRecord:
    """Return the record a manifest keeps of ``device``, backed up as ``key``.

    Args:
        device: the volume's device as scanned when the backup started.
        key: the name its backups are filed under (:func:`volume_key`).
        mount_point: where its file system was mounted for the backup, if it was.
        size: the bytes the backup covers (the snapshot's size for an image).
        host: the machine's name (default: this machine's).
    """
    return VolumeRecord(
        key=key,
        device=device.path,
        mount_point=mount_point,
        fstype=device.fstype,
        uuid=device.uuid,
        fs_label=device.fs_label,
        size=size,
        sector_size=device.sector_size,
        kind=device.kind.value,
        serial=device.serial,
        host=socket.gethostname() if host is None else host,
    )
