"""What ``query image`` shows: images per volume, newest first, active or inactive.

Derived from the manifests alone, so it can always be rebuilt.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.devices import BlockDevice
from core.repo.format import ImageManifest
from core.repo.repository import Repository


def volume_key(device: BlockDevice, fstab_mount_point: str | None = None) -> str:
    """Return the name images of a volume are filed under.

    The guide files an image under its file space (the mount point): the current one,
    else the one fstab gives; a raw volume, or a file system with neither, under its
    device path.
    """
    if device.mount_points:
        return device.mount_points[0]
    return fstab_mount_point or device.path


@dataclass(frozen=True)
class CatalogEntry:
    """One image with its place among its volume's versions."""

    manifest: ImageManifest
    version: int
    """1 for the newest image of its volume, 2 for the one before, …"""
    active: bool

    def to_dict(self) -> dict[str, object]:
        """Return the JSON form ``query image --json`` prints."""
        m = self.manifest
        return {
            "id": m.id,
            "volume": m.volume.get("key"),
            "device": m.volume.get("device"),
            "mount_point": m.volume.get("mount_point"),
            "fstype": m.volume.get("fstype"),
            "uuid": m.volume.get("uuid"),
            "host": m.volume.get("host"),
            "started": m.started,
            "finished": m.finished,
            "size": m.size,
            "imagetype": m.imagetype,
            "fuzzy": m.fuzzy,
            "active": self.active,
            "version": self.version,
            "stored_new": m.stats.get("bytes_stored_new"),
        }


def catalog(
    repo: Repository, manifests: Sequence[ImageManifest] | None = None
) -> list[CatalogEntry]:
    """Return every image, grouped by volume, newest first within each volume."""
    manifests = repo.images() if manifests is None else manifests
    by_volume: dict[str, list[ImageManifest]] = {}
    for m in manifests:
        by_volume.setdefault(str(m.volume.get("key")), []).append(m)
    out: list[CatalogEntry] = []
    keep = repo.config.keep_versions
    for key in sorted(by_volume):
        versions = sorted(by_volume[key], key=lambda m: (m.started, m.id), reverse=True)
        out.extend(CatalogEntry(m, version=i + 1, active=i < keep) for i, m in enumerate(versions))
    return out


def matches(entry: CatalogEntry, names: Iterable[str]) -> bool:
    """True when the image was taken from a volume known by one of ``names``."""
    return volume_matches(entry.manifest.volume, names)


def volume_matches(v: Mapping[str, Any], names: Iterable[str]) -> bool:
    """True when the volume record (of an image or increment) is known by one of ``names``.

    Names only, never the file-system UUID: a restored copy carries its original's
    UUID, and must not pick up (or delete) the original's backups.
    """
    wanted = {os.path.normpath(n) for n in names}
    recorded = {v.get("key"), v.get("device"), v.get("mount_point")}
    return bool(wanted & {os.path.normpath(r) for r in recorded if r})


def target_names(target: str, device: BlockDevice | None) -> list[str]:
    """Return the names under which images of ``target`` may be filed.

    A TARGET that no longer resolves (the disk died) still matches by the name given.
    """
    names = [os.path.abspath(target)]
    if device is not None:
        names += [device.path, *device.mount_points]
    return names
