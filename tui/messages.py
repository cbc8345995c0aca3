"""Messages that workers and the job queue post to the console.

Workers never touch widgets: they post one of these, and the app renders it on
the UI thread.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from core.devices import DeviceTree
from core.history import VolumeHistory
from core.preflight import VolumeCheck
from core.repo.repository import RepoStatus


@dataclass
class DevicesScanned(Message):
    """A device scan finished."""

    tree: DeviceTree


@dataclass
class VolumeChecked(Message):
    """The findings for one device are ready."""

    path: str
    check: VolumeCheck


@dataclass
class HistoryLoaded(Message):
    """A volume's images and increments were read from the repository."""

    path: str
    history: VolumeHistory | None
    error: str | None = None


@dataclass
class RepositoryProbed(Message):
    """The repository (a directory or a server) was asked whether it answers."""

    status: RepoStatus


class JobChanged(Message):
    """A job changed (state, progress, a sample or a log line).

    A newer tick for the same job replaces one still queued, so the UI never
    works through a backlog while a backup runs at full speed.
    """

    def __init__(self, job_id: str) -> None:
        super().__init__()
        self.job_id = job_id

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, JobChanged) and message.job_id == self.job_id
