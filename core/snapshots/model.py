"""What every view shares: the image types, the providers, the ReadView and the errors.

The floor of the package: it imports no other module of it. The views build their
:class:`ReadView` here, raise the errors defined here, and quote a failed command
with :func:`first_line`, so every message reads the same whichever view failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from core.errors import BlockvaultError
from core.findings import Finding
from core.mounts import ProcessUse

SNAPSHOT_NAME_PREFIX = "bv-snap-"
"""Prefix of LVM snapshots and reflink clones this package makes (find leftovers by it)."""

FALLBACK_HINT = "or add --snapshot-fallback dynamic"
"""How the messages name the fallback option (kept in one place for the interfaces to match)."""


class ImageType(StrEnum):
    """How an image backup gets a consistent view (the guide's ``imagetype`` option)."""

    STATIC = "static"
    SNAPSHOT = "snapshot"
    DYNAMIC = "dynamic"


class Provider(StrEnum):
    """What :func:`core.snapshots.consistent_view` actually did; :attr:`ReadView.provider`."""

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

    def marked_fuzzy(self, finding: Finding) -> ReadView:
        """Return this view marked fuzzy, ``finding`` saying why; what closing adds still shows."""
        view = replace(self, fuzzy=True, findings=(*self.findings, finding))
        object.__setattr__(view, "_closing", self._closing)  # the view's undo appends here
        return view


def snapshot_read_view(
    path: str, offset: int, size: int, provider: Provider, taken: Finding
) -> ReadView:
    """Return the view of a snapshot at ``path``: consistent (not fuzzy), ``taken`` its finding."""
    return ReadView(path, offset, size, ImageType.SNAPSHOT, False, provider, (taken,))


def first_line(text: str) -> str:
    """Return the first non-blank line of a failed command's stderr, as the messages quote it."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "no message")


@dataclass(frozen=True)
class Obstacle:
    """One thing that keeps a volume from being copied offline (static), and what removes it."""

    what: str
    """Who holds it, by name: ``pid 42 (python) has open for writing /srv/log``."""
    remedy: str | None
    """What removes it (``stop pid 42``); None when nothing can (the root file system)."""
    processes: tuple[ProcessUse, ...] = ()
    """The processes named, when they are the obstacle."""


def all_of(steps: Sequence[str]) -> str:
    """Return ``a``, ``a and b``, ``a, b and c``: steps that are all needed."""
    return " and ".join(steps) if len(steps) < 3 else ", ".join(steps[:-1]) + " and " + steps[-1]


def use_imagetype(alternatives: Sequence[ImageType]) -> str:
    """Return ``use --imagetype snapshot or dynamic``: the one way the advice names types."""
    return "use --imagetype " + " or ".join(t.value for t in alternatives)


class StaticRefused(BlockvaultError):
    """The file system cannot go read-only for a static image; the message names who holds it."""

    def __init__(
        self,
        message: str,
        processes: Sequence[ProcessUse] = (),
        *,
        obstacles: Sequence[Obstacle] = (),
        alternatives: Sequence[ImageType] = (),
    ) -> None:
        super().__init__(message)
        self.processes = tuple(processes) or tuple(p for o in obstacles for p in o.processes)
        """The processes holding files open for writing, when they are the reason."""
        self.obstacles = tuple(obstacles)
        self.alternatives = tuple(alternatives)
        """The image types that would be accepted instead, as the message names them."""


class SnapshotUnavailable(BlockvaultError):
    """No snapshot provider applies to the volume, or the snapshot could not be taken.

    With ``static_obstacles`` (what refuses a static image of the same volume) the
    advice names only what would be accepted: dynamic, and how to make static possible.
    """

    def __init__(self, device: str, reason: str, static_obstacles: Sequence[Obstacle] = ()) -> None:
        if static_obstacles:
            alternatives: tuple[ImageType, ...] = (ImageType.DYNAMIC,)
            remedies = [o.remedy for o in static_obstacles if o.remedy]
            advice = (
                f"a static image is refused too ({'; '.join(o.what for o in static_obstacles)}); "
                f"{use_imagetype(alternatives)}, {FALLBACK_HINT}"
                + (f" (for a static image, first {all_of(remedies)})" if remedies else "")
            )
        else:
            alternatives = (ImageType.STATIC, ImageType.DYNAMIC)
            advice = f"{use_imagetype(alternatives)}, {FALLBACK_HINT}"
        super().__init__(f"no snapshot of {device} is possible: {reason}; {advice}")
        self.device = device
        self.reason = reason
        """Why, without the advice (for the fallback finding)."""
        self.static_obstacles = tuple(static_obstacles)
        self.alternatives = alternatives
        """The image types that would be accepted instead, as the message names them."""


class SnapshotOverflow(BlockvaultError):
    """An LVM snapshot filled up during the copy: the image read from it is unusable."""


class FreezeError(BlockvaultError):
    """A file system could not be frozen for a snapshot, or could not be thawed."""


class FreezeUnsupported(FreezeError):
    """The file system cannot be frozen at all: no snapshot of it is possible this way."""


class UndoError(BlockvaultError):
    """A temporary state change could not be undone; the message gives the command to do it."""
