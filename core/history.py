"""A volume's backups: its images and increments, and the restore point for a time.

The command line's ``query image`` / ``restore image`` and the console's history
timeline and restore wizard read the same history, so they agree on what a
volume has and which image a point in time restores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from core.devices import DeviceTree, scan
from core.errors import TargetError
from core.increments.chain import RestorePoint, choose_point
from core.repo.catalog import CatalogEntry, catalog, matches, volume_matches
from core.repo.filemanifest import FileManifest
from core.repo.repository import Repository
from core.targets import resolve, target_names


@dataclass(frozen=True)
class TimelineEntry:
    """One backup on a volume's timeline: an image or an increment."""

    kind: str
    """``image`` or ``increment``."""
    id: str
    finished: str
    """ISO time the backup completed: what a point-in-time restore compares against."""
    summary: str
    size: int = 0
    """Bytes: the volume's size for an image, the bytes sent for an increment."""


@dataclass(frozen=True)
class VolumeHistory:
    """Every image and increment of one volume, newest first."""

    target: str
    images: tuple[CatalogEntry, ...]
    increments: tuple[FileManifest, ...]

    @property
    def active_images(self) -> tuple[CatalogEntry, ...]:
        """The image versions kept active (the rest are inactive, restorable by id)."""
        return tuple(e for e in self.images if e.active)

    def point(
        self,
        pit: datetime | None = None,
        *,
        image_id: str | None = None,
        incremental: bool = False,
    ) -> RestorePoint:
        """Return the image (and, with ``incremental``, the increment) that restores ``pit``.

        Without a time or an image id the newest active image is used, as ``restore
        image`` does; a point in time may pick an inactive image.

        Raises:
            NothingAtThatTime: no image of the volume is old enough, or ``image_id`` is unknown.
        """
        images = self.images if pit is not None or image_id is not None else self.active_images
        increments = self.increments if incremental else ()
        return choose_point(images, increments, pit, image_id=image_id, volume=self.target)

    def timeline(self) -> list[TimelineEntry]:
        """Return the images and increments in the order they finished, newest first."""
        out = [
            TimelineEntry(
                "image",
                e.manifest.id,
                e.manifest.finished,
                f"{e.manifest.imagetype}{' fuzzy' if e.manifest.fuzzy else ''}"
                f"{'' if e.active else ' inactive'}",
                e.manifest.size,
            )
            for e in self.images
        ]
        out += [
            TimelineEntry(
                "increment",
                m.id,
                m.finished,
                f"{int(m.stats.get('files_scanned', 0))} files, "
                f"{int(m.stats.get('files_new', 0))} new, "
                f"{int(m.stats.get('files_changed', 0))} changed, "
                f"{int(m.stats.get('files_deleted', 0))} deleted",
                int(m.stats.get("bytes_sent", 0)),
            )
            for m in self.increments
        ]
        return sorted(out, key=lambda t: (t.finished, t.id), reverse=True)


def volume_names(target: str, tree: DeviceTree | None = None) -> list[str]:
    """Return the names backups of ``target`` are filed under (it may no longer resolve)."""
    try:
        device = resolve(target, scan() if tree is None else tree).device
    except TargetError:
        device = None  # the volume may be gone: match by the name given
    return target_names(target, device)


def volume_history(
    repo: Repository | None,
    target: str,
    tree: DeviceTree | None = None,
    *,
    images: Sequence[CatalogEntry] | None = None,
    increments: Sequence[FileManifest] | None = None,
) -> VolumeHistory:
    """Return ``target``'s images and increments from ``repo`` (or from lists already read).

    ``repo`` may be None when both lists are given.
    """
    names = volume_names(target, tree)
    if images is None or increments is None:
        if repo is None:
            raise ValueError("volume_history needs a repository or both lists")
        images = catalog(repo) if images is None else images
        increments = repo.increments() if increments is None else increments
    return VolumeHistory(
        target,
        tuple(e for e in images if matches(e, names)),
        tuple(
            sorted(
                (m for m in increments if volume_matches(m.volume, names)),
                key=lambda m: (m.finished, m.id),
                reverse=True,
            )
        ),
    )
