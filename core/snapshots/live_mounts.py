"""The mounts of a device as the kernel shows them now, not as the device scan saw them.

A job may start long after the scan that found its volume: the static view, the
reflink freeze and the choice of provider all ask the mount table again.
"""

from __future__ import annotations

from collections.abc import Sequence

from core.devices import BlockDevice, mounts_of
from core.mounts import Mount, read_mounts


def mounts_now(dev: BlockDevice) -> tuple[Mount, ...]:
    """Return the mounts of ``dev`` now (the tree may be older than this job)."""
    return mounts_of(dev.major, dev.minor, dev.path, read_mounts())


def unique_points(mounts: Sequence[Mount]) -> list[str]:
    """Return the mount points of ``mounts`` in order, each once."""
    return list(dict.fromkeys(m.mount_point for m in mounts))
