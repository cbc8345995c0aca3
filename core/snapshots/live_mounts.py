"""The mounts of a device as the kernel shows them now, not as the device scan saw them.

A job may start long after the scan that found its volume: the static view, the
reflink freeze and the choice of provider all ask the mount table again.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from core.devices import BlockDevice
from core.mounts import Mount, read_mounts


def mounts_now(dev: BlockDevice) -> tuple[Mount, ...]:
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


def unique_points(mounts: Sequence[Mount]) -> list[str]:
    """Return the mount points of ``mounts`` in order, each once."""
    return list(dict.fromkeys(m.mount_point for m in mounts))
