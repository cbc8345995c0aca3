"""What ``query image`` shows: images per volume, newest first, active or inactive.

Derived from the manifests alone, so it can always be rebuilt; it knows volumes only
by the names their records carry (block devices are the business of the floors above).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from core.repo.format import ImageManifest, VolumeRecord
from core.repo.repository import Repository


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
            "volume": m.volume.key,
            "device": m.volume.device,
            "mount_point": m.volume.mount_point,
            "fstype": m.volume.fstype,
            "uuid": m.volume.uuid,
            "host": m.volume.host,
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
    """Return every image of ``repo`` (or ``manifests``), by volume, newest first in each."""
    return catalog_of(repo.images() if manifests is None else manifests, repo.config.keep_versions)


def catalog_of(manifests: Iterable[ImageManifest], keep: int) -> list[CatalogEntry]:
    """Return ``manifests`` by volume, newest first in each; the newest ``keep`` are active."""
    by_volume: dict[str, list[ImageManifest]] = {}
    for m in manifests:
        by_volume.setdefault(m.volume.key, []).append(m)
    out: list[CatalogEntry] = []
    for key in sorted(by_volume):
        versions = sorted(by_volume[key], key=lambda m: (m.started, m.id), reverse=True)
        out.extend(CatalogEntry(m, version=i + 1, active=i < keep) for i, m in enumerate(versions))
    return out


def matches(entry: CatalogEntry, names: Iterable[str]) -> bool:
    """True when the image was taken from a volume known by one of ``names``."""
    return volume_matches(entry.manifest.volume, names)


def volume_matches(v: VolumeRecord, names: Iterable[str]) -> bool:
    """True when the volume record (of an image or increment) is known by one of ``names``.

    Names only, never the file-system UUID: a restored copy carries its original's
    UUID, and must not pick up (or delete) the original's backups.
    """
    wanted = {os.path.normpath(n) for n in names}
    return bool(wanted & {os.path.normpath(r) for r in v.names})
