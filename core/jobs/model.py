"""What a job is: its spec, its state, the views a UI renders, and the ``Jobs`` front ends use.

A front end (the console, the command line) submits a spec and watches immutable
:class:`JobView` snapshots. Three things implement :class:`Jobs`: the in-process
queue (:class:`core.jobs.queue.JobQueue`), the agent's client
(:class:`core.agent.client.AgentClient`) and the recorded scene of the screenshots;
a front end cannot tell them apart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from core.findings import Finding
from core.progress import Progress

SAMPLE_EVERY = 0.5
"""Seconds between two throughput samples of a running job."""
MAX_SAMPLES = 7200
"""Two hours at two samples a second; older samples are dropped first."""
MAX_LOG = 500
"""Log lines a view keeps (the newest)."""
BACKUP_MODES = ("full", "incremental")
"""A backup's ``mode``: an image, or a file-level increment."""
IMAGE_TYPES = ("static", "snapshot", "dynamic")
"""A backup's ``imagetype``: the values of :class:`core.snapshots.ImageType` (a test keeps
them equal), named here so that checking a spec does not import the snapshot providers."""


@dataclass(frozen=True)
class Sample:
    """One point of a job's throughput graph."""

    t: float
    """Seconds since the job started."""
    rate: float
    """The job's own bytes per second."""
    dev_read: float
    """The job's device: bytes read per second (all readers, from /proc/diskstats)."""
    dev_write: float
    """The job's device: bytes written per second."""


class JobState(StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    """The process running it died (the agent was killed, the machine rebooted)."""

    @property
    def finished(self) -> bool:
        """True once the job can change no more."""
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED, JobState.INTERRUPTED)


@dataclass(frozen=True)
class BackupSpec:
    """An image backup (``mode`` full) or a file-level increment of ``target``."""

    target: str
    mode: str = "full"
    """``full`` (an image) or ``incremental`` (a file-level increment)."""
    imagetype: str | None = None
    """``static``, ``snapshot`` or ``dynamic``; None: snapshot where a provider applies."""
    fallback_dynamic: bool = False
    snapshot_cache_pct: int = 10
    gap_size: int | None = None
    """Smallest unused gap skipped rather than read; None: the engine's default."""
    compare_content: bool = False

    @property
    def title(self) -> str:
        """One line naming the job."""
        if self.mode == "incremental":
            return f"increment {self.target}"
        return f"image {self.target} ({self.imagetype or 'auto'})"

    @property
    def volume(self) -> str:
        """The device or mount point the job works on."""
        return self.target

    def cut_off(self, started: bool) -> str:
        """Say what this job left when the process running it died, and what to do."""
        return (
            "interrupted: the agent stopped while it ran; rerun it (what a backup stored is reused)"
        )


@dataclass(frozen=True)
class RestoreSpec:
    """A restore of image ``image_id`` onto ``dest``, with the typed confirmation."""

    image_id: str
    dest: str
    confirm: str
    """The destination's name as the user typed it: it must name ``dest`` exactly."""
    expected: tuple[object, ...] | None = None
    """The destination's identity when it was shown (``RestorePlan.identity``)."""
    increment_id: str | None = None
    """Replay this increment after the image (``--incremental``)."""
    deletefiles: bool = False
    preserve_label: bool = False
    verify: bool = False
    to_file: bool = False
    """Write the image into the regular file ``dest`` (``--imagetofile``)."""

    @property
    def title(self) -> str:
        """One line naming the job."""
        extra = " + increment" if self.increment_id else ""
        return f"restore → {self.dest}{extra}"

    @property
    def volume(self) -> str:
        """The device the job writes."""
        return self.dest

    def cut_off(self, started: bool) -> str:
        """Say what this job left when the process running it died, and what to do."""
        if not started:
            return "interrupted before it started: nothing was written; rerun it"
        return (
            f"interrupted: the agent stopped while it restored {self.dest}, which is partly "
            "written; restore it again before using it"
        )


JobSpec = BackupSpec | RestoreSpec


@dataclass(frozen=True)
class JobView:
    """What a job is now: an immutable snapshot for a UI to render."""

    id: str
    spec: JobSpec
    state: JobState
    submitted: float
    """Wall-clock time (``time.time()``) the job was queued."""
    started: float | None = None
    ended: float | None = None
    device: str | None = None
    """The block device whose read/write rates are sampled (None: not known or a file)."""
    progress: Progress | None = None
    samples: tuple[Sample, ...] = ()
    report: dict[str, Any] | None = None
    """The job's JSON report once it finished."""
    return_code: int | None = None
    error: str | None = None
    findings: tuple[Finding, ...] = ()
    log: tuple[str, ...] = ()
    """The newest log lines (at most :data:`MAX_LOG`)."""
    log_total: int = 0
    """Lines logged since the job was queued: a viewer's count of lines already shown."""

    @property
    def title(self) -> str:
        """One line naming the job."""
        return self.spec.title

    @property
    def fraction(self) -> float:
        """Work done, 0.0 to 1.0 (1.0 once the job is done)."""
        if self.state is JobState.DONE:
            return 1.0
        p = self.progress
        return min(1.0, p.done / p.total) if p and p.total else 0.0


Listener = Callable[[str], object]
"""Called with a job id whenever that job changed (from any thread); its result is ignored."""


class Jobs(Protocol):
    """Where a front end runs and watches jobs: the queue here, the agent, or a recorded scene.

    Implementations subclass this to share :meth:`active` and :meth:`wait`.
    """

    outlives_client: bool = False
    """True when the jobs keep running after the front end goes away (the agent's)."""

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(job_id)`` on every change; return the function that stops it."""
        ...

    def submit(self, spec: JobSpec) -> str:
        """Queue ``spec``; return the job's id."""
        ...

    def cancel(self, job_id: str) -> bool:
        """Ask job ``job_id`` to stop; return False when it had already finished."""
        ...

    def rerun(self, job_id: str) -> str:
        """Queue job ``job_id``'s spec again (it must have ended); return the new job's id."""
        ...

    def view(self, job_id: str) -> JobView:
        """Return job ``job_id`` as it is now (KeyError when unknown)."""
        ...

    def views(self) -> list[JobView]:
        """Return every job, oldest first."""
        ...

    def close(self) -> None:
        """Let go: a local queue cancels its jobs, the agent's client only disconnects."""
        ...

    def active(self) -> list[JobView]:
        """Return the jobs not yet finished."""
        return [v for v in self.views() if not v.state.finished]

    def wait(self, job_id: str, timeout: float | None = None) -> JobView:
        """Block until job ``job_id`` finished (or ``timeout``); return its view.

        Woken by the job's own changes; a half-second check covers a change that came
        between the subscription and the first look.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        done = threading.Event()

        def check(changed: str) -> None:
            if changed == job_id and self.view(job_id).state.finished:
                done.set()

        stop = self.subscribe(check)
        try:
            while not self.view(job_id).state.finished:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                done.wait(0.5 if left is None else min(0.5, left))
        finally:
            stop()
        return self.view(job_id)
