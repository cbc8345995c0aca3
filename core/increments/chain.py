"""Which image and which increment a restore uses, and a file's versions across increments.

Every file manifest is complete, so the state at a point in time is simply the
newest increment finished at or before it, replayed onto the newest image
finished at or before it (an image newer than the point is never used).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time

from core.errors import BlockvaultError
from core.repo.catalog import CatalogEntry
from core.repo.filemanifest import FileEntry, FileManifest


class NothingAtThatTime(BlockvaultError):
    """No image of the volume was finished at or before the point in time."""


class BrokenChain(BlockvaultError):
    """An increment the point in time depends on is missing from the repository."""


_ID_TIME = "%Y%m%dT%H%M%S.%fZ"
"""How an increment's id begins: the time it started (``core.increments.backup``)."""


def id_time(increment_id: str) -> datetime | None:
    """Return the time an increment id says it started, or None for an id of another shape."""
    try:
        return datetime.strptime(increment_id.split("-", 1)[0], _ID_TIME).replace(tzinfo=UTC)
    except ValueError:
        return None


def missing_links(increments: Iterable[FileManifest]) -> dict[str, str]:
    """Return ``{missing id: the increment that builds on it}`` within ``increments``."""
    present = {m.id: m for m in increments}
    return {
        m.previous: m.id
        for m in present.values()
        if m.previous is not None and m.previous not in present
    }


def point_in_time(pitdate: str | None, pittime: str | None) -> datetime | None:
    """Return the point in time of ``--pitdate YYYY-MM-DD [--pittime HH:MM:SS]`` (local time).

    ``--pitdate MM/DD/YYYY`` (dsmc's default format) is taken too.

    Like TSM, a date without a time means the end of that day.

    Raises:
        BlockvaultError: a malformed date or time, or a time without a date.
    """
    if pitdate is None:
        if pittime is not None:
            raise BlockvaultError("--pittime needs --pitdate YYYY-MM-DD as well")
        return None
    try:
        # YYYY-MM-DD, or MM/DD/YYYY as dsmc takes it (its default date format).
        day = (
            datetime.strptime(pitdate, "%m/%d/%Y").date()
            if "/" in pitdate
            else date.fromisoformat(pitdate)
        )
    except ValueError:
        raise BlockvaultError(
            f"--pitdate {pitdate!r} is not a date: use YYYY-MM-DD (or MM/DD/YYYY)"
        ) from None
    try:
        at = time.fromisoformat(pittime) if pittime else time(23, 59, 59, 999999)
    except ValueError:
        raise BlockvaultError(f"--pittime {pittime!r} is not a time: use HH:MM:SS") from None
    return datetime.combine(day, at).astimezone(UTC)


def _finished(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


@dataclass(frozen=True)
class RestorePoint:
    """The image to restore and the increment (if any) to replay onto it."""

    image: CatalogEntry
    increment: FileManifest | None
    """None when no increment is newer than the image (the image alone is the state)."""


def choose_point(
    images: Sequence[CatalogEntry],
    increments: Iterable[FileManifest],
    pit: datetime | None,
    *,
    image_id: str | None = None,
    volume: str = "the volume",
) -> RestorePoint:
    """Return the image and increment that give the volume's state at ``pit`` (None: newest).

    ``images`` and ``increments`` are the volume's own. ``image_id`` forces an image.
    """
    if image_id is not None:
        chosen = [e for e in images if e.manifest.id == image_id]
        if not chosen:
            raise NothingAtThatTime(f"{volume} has no image {image_id}")
        image = chosen[0]
    else:
        usable = [e for e in images if pit is None or _finished(e.manifest.finished) <= pit]
        if not usable:
            when = f" finished by {pit.isoformat(timespec='seconds')}" if pit else ""
            raise NothingAtThatTime(
                f"{volume} has no image{when}; see 'blockvault query image --inactive'"
            )
        image = max(usable, key=lambda e: (e.manifest.finished, e.manifest.id))
    candidates = [m for m in increments if pit is None or _finished(m.finished) <= pit]
    newest = max(candidates, key=lambda m: (m.finished, m.id), default=None)
    # Only an increment begun after the image was complete describes a later state; one
    # that overlapped or preceded it would roll files back (and --deletefiles delete new
    # ones), so the image alone is the state then.
    if newest is not None and _finished(newest.started) < _finished(image.manifest.finished):
        newest = None
    _refuse_gaps(image, newest, increments, pit)
    return RestorePoint(image, newest)


def _refuse_gaps(
    image: CatalogEntry,
    chosen: FileManifest | None,
    increments: Iterable[FileManifest],
    pit: datetime | None,
) -> None:
    """Raise :class:`BrokenChain` when a missing increment could be the state at ``pit``.

    An increment another one builds on, taken after the image and not after the point,
    and newer than the one chosen: without it the restore would silently bring back an
    older state. (One older than the chosen increment does not matter: every manifest
    lists the whole file system.)
    """
    since = _finished(image.manifest.finished)
    floor = _finished(chosen.started) if chosen is not None else since
    for gone, by in sorted(missing_links(increments).items()):
        started = id_time(gone)
        if started is None or started < since or started <= floor:
            continue
        if pit is None or started <= pit:
            raise BrokenChain(
                f"increment {gone} is missing from the repository (increment {by} builds on "
                f"it), so the state {'at that time' if pit else 'asked for'} cannot be "
                "restored; nothing was written — run 'blockvault repo check', or choose an "
                "earlier --pitdate"
            )


@dataclass(frozen=True)
class FileVersion:
    """One version of a file: what the increment recorded, or its deletion."""

    increment: str
    finished: str
    state: str
    """``new``, ``changed`` (content), ``metadata`` (mode/owner/time only) or ``deleted``."""
    entry: FileEntry | None

    def to_dict(self) -> dict[str, object]:
        """Return the JSON form ``query backup --json`` prints."""
        e = self.entry
        return {
            "increment": self.increment,
            "finished": self.finished,
            "state": self.state,
            "kind": e.kind if e else None,
            "size": e.size if e else None,
            "mode": oct(e.mode) if e else None,
            "uid": e.uid if e else None,
            "gid": e.gid if e else None,
            "mtime_ns": e.mtime_ns if e else None,
        }


def file_versions(increments: Sequence[FileManifest], relpath: str) -> list[FileVersion]:
    """Return the versions of ``relpath`` across ``increments`` (oldest first).

    An increment where the file is exactly as before adds no version.
    """
    out: list[FileVersion] = []
    before: FileEntry | None = None
    for m in sorted(increments, key=lambda m: (m.finished, m.id)):
        now = m.by_path().get(relpath)
        if now is None:
            if before is not None:
                out.append(FileVersion(m.id, m.finished, "deleted", None))
        elif before is None:
            out.append(FileVersion(m.id, m.finished, "new", now))
        elif not now.same_content_as(before):
            out.append(FileVersion(m.id, m.finished, "changed", now))
        elif not now.same_metadata_as(before):
            out.append(FileVersion(m.id, m.finished, "metadata", now))
        before = now
    return out
