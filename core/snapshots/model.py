"""What every view shares: the image types, the providers, the ReadView and the errors.

The floor of the package: it imports no other module of it. The views build their
:class:`ReadView` here, raise the errors defined here, and quote a failed command
with :func:`first_line`, so every message reads the same whichever view failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
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


def snapshot_read_view(
    path: str, offset: int, size: int, provider: Provider, taken: Finding
) -> ReadView:
    """Return the view of a snapshot at ``path``: consistent (not fuzzy), ``taken`` its finding."""
    return ReadView(path, offset, size, ImageType.SNAPSHOT, False, provider, (taken,))


def first_line(text: str) -> str:
    """Return the first non-blank line of a failed command's stderr, as the messages quote it."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "no message")


class StaticRefused(BlockvaultError):
    """The file system cannot go read-only for a static image (writers, or it is "/")."""

    def __init__(self, message: str, processes: Sequence[ProcessUse] = ()) -> None:
        super().__init__(message)
        self.processes = tuple(processes)
        """The processes holding files open for writing, when they are the reason."""


class SnapshotUnavailable(BlockvaultError):
    """No snapshot provider applies to the volume, or the snapshot could not be taken."""

    def __init__(self, device: str, reason: str) -> None:
        super().__init__(
            f"no snapshot of {device} is possible: {reason}; "
            f"use --imagetype static or dynamic, {FALLBACK_HINT}"
        )
        self.device = device
        self.reason = reason
        """Why, without the advice (for the fallback finding)."""


class SnapshotOverflow(BlockvaultError):
    """An LVM snapshot filled up during the copy: the image read from it is unusable."""


class FreezeError(BlockvaultError):
    """A file system could not be frozen for a snapshot, or could not be thawed."""


class UndoError(BlockvaultError):
    """A temporary state change could not be undone; the message gives the command to do it."""
