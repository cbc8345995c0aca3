"""The job queue: backups, increments and restores run in threads of this process.

The console (or the agent) submits a job spec, then reads immutable :class:`JobView`
snapshots whenever a listener is told a job changed. Jobs run one per volume at a
time and at most ``max_running`` at once, each through :func:`core.jobs.runner.run_job`;
a sampler records each running job's throughput and its device's read/write rates
twice a second, so a graph can be drawn for the whole job.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from core.errors import BlockvaultError
from core.findings import ReturnCode, Severity
from core.jobs.listeners import Listeners
from core.jobs.model import (
    MAX_LOG,
    MAX_SAMPLES,
    SAMPLE_EVERY,
    Jobs,
    JobSpec,
    JobState,
    JobView,
    Listener,
    Sample,
)
from core.jobs.runner import run_job
from core.progress import Cancelled, Progress

if TYPE_CHECKING:
    from core.repo.repository import Repository

log = logging.getLogger(__name__)

SAVE_EVERY = 1.0
"""Seconds between saves of changed jobs to the store (an ended job is saved at once)."""


class JobStore(Protocol):
    """Where a queue keeps its jobs, so that history survives a restart (the agent's SQLite)."""

    def load(self) -> list[JobView]:
        """Return every stored job, oldest first."""
        ...

    def save(self, view: JobView) -> None:
        """Store ``view`` (insert or replace by id)."""
        ...


@dataclass
class _Job:
    view: JobView
    cancel: threading.Event = field(default_factory=threading.Event)
    samples: deque[Sample] = field(default_factory=lambda: deque(maxlen=MAX_SAMPLES))
    log: deque[str] = field(default_factory=lambda: deque(maxlen=MAX_LOG))
    log_total: int = 0
    last_done: int = 0
    last_sample: float = 0.0
    last_io: tuple[int, int] | None = None
    phase: str = ""

    def add_log(self, line: str) -> None:
        """Log ``line``; the view shows it at once (the caller holds the queue's lock)."""
        self.log.append(line)
        self.log_total += 1
        self.view = replace(self.view, log=tuple(self.log), log_total=self.log_total)


class JobQueue(Jobs):
    """Runs jobs in threads of this process; every change is told to listeners as a job id.

    Args:
        repo_location: the repository every job uses (None: the default location).
        max_running: jobs that may run at once (never two on one volume).
    """

    def __init__(
        self,
        repo_location: str | None = None,
        *,
        max_running: int = 2,
        store: JobStore | None = None,
    ) -> None:
        self.repo_location = repo_location
        self.max_running = max_running
        self._store = store
        self._unsaved: set[str] = set()
        self._save_now = threading.Event()
        self._save_lock = threading.Lock()
        """Held from taking the changed views to storing them: saves never reorder."""
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._repo_lock = threading.Lock()
        """Held while a job opens the repository: two first jobs must not both create it."""
        self._listeners = Listeners()
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._ids = itertools.count(self._load() + 1)
        self._sampler = threading.Thread(target=self._sample_loop, name="job-sampler", daemon=True)
        self._sampler.start()
        self._saver: threading.Thread | None = None
        if store is not None:
            self._saver = threading.Thread(target=self._save_loop, name="job-saver", daemon=True)
            self._saver.start()

    def _load(self) -> int:
        """Take the stored jobs in; return the highest id. A job left unfinished was cut off."""
        if self._store is None:
            return 0
        highest = 0
        for view in self._store.load():
            job = _Job(view)
            job.log.extend(view.log)
            job.log_total = view.log_total
            job.samples.extend(view.samples)
            if not view.state.finished:
                job.add_log(f"{_clock()} interrupted: the process running it stopped")
                job.view = replace(
                    job.view,
                    state=JobState.INTERRUPTED,
                    ended=time.time(),
                    error=view.spec.cut_off(started=view.state is not JobState.QUEUED),
                    return_code=int(ReturnCode.FAILED),
                )
                self._store.save(job.view)
            self._jobs[view.id] = job
            highest = max(highest, int(view.id)) if view.id.isdigit() else highest
        return highest

    # --- what a UI calls ------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(job_id)`` on every change; return the function that stops it."""
        return self._listeners.add(listener)

    def submit(self, spec: JobSpec) -> str:
        """Queue ``spec``; return the job's id. It starts once its volume and a slot are free."""
        if self._closed.is_set():
            raise BlockvaultError("the job queue is closed; no job was queued")
        job_id = str(next(self._ids))
        # Resolved now, so that a mount point and its device count as one volume.
        device = _device_of(spec)
        job = _Job(JobView(job_id, spec, JobState.QUEUED, submitted=time.time(), device=device))
        job.add_log(f"{_clock()} queued: {spec.title}")
        with self._lock:
            if self._closed.is_set():  # closed while the device was being resolved
                raise BlockvaultError("the job queue is closed; no job was queued")
            self._jobs[job_id] = job
        self._notify(job_id)
        self._start_ready()
        return job_id

    def cancel(self, job_id: str) -> bool:
        """Ask job ``job_id`` to stop; return False when it had already finished."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.view.state.finished or job.cancel.is_set():
                return False
            job.cancel.set()
            if job.view.state is JobState.QUEUED:
                self._end(job, JobState.CANCELLED, error="cancelled before it started")
            else:
                job.add_log(f"{_clock()} cancel requested")
                job.view = replace(job.view, state=JobState.CANCELLING)
        self._notify(job_id)
        self._start_ready()
        return True

    def rerun(self, job_id: str) -> str:
        """Queue job ``job_id``'s spec again (it must have ended); return the new job's id.

        A backup rerun reuses every chunk the first run stored. A restore's guards and
        its confirmation are checked again when the new job starts.
        """
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise BlockvaultError(f"there is no job {job_id}; see 'blockvault jobs'")
            if not job.view.state.finished:
                raise BlockvaultError(f"job {job_id} is still {job.view.state.value}; wait for it")
            spec = job.view.spec
        new_id = self.submit(spec)
        with self._lock:
            new = self._jobs[new_id]
            new.add_log(f"{_clock()} rerun of job {job_id}")
        self._notify(new_id)
        return new_id

    def view(self, job_id: str) -> JobView:
        """Return job ``job_id`` as it is now (KeyError when unknown)."""
        with self._lock:
            return self._jobs[job_id].view

    def views(self) -> list[JobView]:
        """Return every job, oldest first."""
        with self._lock:
            return [j.view for j in self._jobs.values()]

    def close(self, timeout: float = 30.0) -> None:
        """Cancel every job that has not finished and wait for the threads to end."""
        self._closed.set()
        for v in self.active():
            self.cancel(v.id)
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(timeout)
        self._sampler.join(timeout)
        if self._saver is not None:
            self._save_now.set()
            self._saver.join(timeout)
            self._save()  # whatever changed while the saver stopped

    # --- running ----------------------------------------------------------------------------

    def _start_ready(self) -> None:
        """Start queued jobs, oldest first, while slots are free and their volume is idle."""
        to_start: list[_Job] = []
        with self._lock:
            if self._closed.is_set():
                return
            running = [
                j
                for j in self._jobs.values()
                if j.view.state in (JobState.RUNNING, JobState.CANCELLING)
            ]
            busy = {_volume_key(j.view) for j in running}
            for job in self._jobs.values():
                if len(running) + len(to_start) >= self.max_running:
                    break
                key = _volume_key(job.view)
                if job.view.state is JobState.QUEUED and key not in busy:
                    busy.add(key)
                    job.add_log(f"{_clock()} started")
                    job.view = replace(
                        job.view,
                        state=JobState.RUNNING,
                        started=time.time(),
                    )
                    job.last_sample = time.monotonic()
                    to_start.append(job)
        for job in to_start:
            t = threading.Thread(target=self._run, args=(job,), name=f"job-{job.view.id}")
            with self._lock:
                self._threads.append(t)
            t.start()
            self._notify(job.view.id)

    def _run(self, job: _Job) -> None:
        try:
            report = self._execute(job)
        except Cancelled as e:
            self._finish(job, JobState.CANCELLED, error=e.message)
        except BlockvaultError as e:
            self._finish(job, JobState.FAILED, error=e.message, rc=int(e.return_code))
        except Exception as e:  # an engine bug must end the job visibly, not kill the thread
            log.exception("job %s failed", job.view.id)
            self._finish(job, JobState.FAILED, error=f"internal error: {e!r}")
        else:
            self._finish(job, JobState.DONE, report=report)
        finally:
            with self._lock:
                self._threads.remove(threading.current_thread())
            self._start_ready()

    def _open_repo(self, create: bool) -> Repository:
        """Open the queue's repository, one job at a time.

        Creating a repository is not atomic: a second job opening it meanwhile finds a
        directory that is neither empty nor a repository yet, and would fail.
        """
        from core.repo.repository import Repository

        with self._repo_lock:
            return Repository.open(self.repo_location, create=create)

    def _execute(self, job: _Job) -> dict[str, Any]:
        def progress(p: Progress) -> None:
            now = time.monotonic()
            # Between the sampler's ticks too, so that a job of a second has a graph.
            io = _disk_counters() if now - job.last_sample >= SAMPLE_EVERY / 2 else None
            with self._lock:
                if p.phase != job.phase:
                    job.phase = p.phase
                    # A part's "done" (a restore's image, then its replay) is no line of
                    # its own: the job's end says "done" once, with its return code.
                    if p.phase != "done":
                        job.add_log(f"{_clock()} {p.phase}")
                job.view = replace(job.view, progress=p)
                if io is not None:
                    self._sample_locked(job, now, io)
            self._notify(job.view.id)

        result = run_job(job.view.spec, self._open_repo, progress=progress, cancel=job.cancel)
        with self._lock:
            job.view = replace(job.view, findings=result.findings)
        return result.report

    def _finish(self, job: _Job, state: JobState, **outcome: Any) -> None:
        """Record the job's end with a last sample, and tell the listeners."""
        io = _disk_counters()
        with self._lock:
            self._sample_locked(job, time.monotonic(), io, final=True)
            self._end(job, state, **outcome)
        self._notify(job.view.id)

    def _end(
        self,
        job: _Job,
        state: JobState,
        *,
        report: dict[str, Any] | None = None,
        error: str | None = None,
        rc: int | None = None,
    ) -> None:
        """Record the job's end (the lock is held)."""
        if report is not None:
            rc = int(report.get("return_code", 0))
        elif rc is None:
            rc = int(ReturnCode.FAILED)
        for f in job.view.findings:
            if f.severity is not Severity.INFO:
                job.add_log(f"{_clock()} {f.severity.word} {f.code}: {f.message}")
        ending = f"{_clock()} {state.value} (return code {rc})"
        job.add_log(ending + (f": {error}" if error else ""))
        job.view = replace(
            job.view,
            state=state,
            ended=time.time(),
            report=report,
            return_code=rc,
            error=error,
            samples=tuple(job.samples),
        )

    # --- sampling ---------------------------------------------------------------------------

    def _sample_loop(self) -> None:
        while not self._closed.wait(SAMPLE_EVERY):
            self.sample()

    def sample(self) -> None:
        """Record one throughput sample for every running job (the sampler calls this)."""
        io = _disk_counters()
        now = time.monotonic()
        with self._lock:
            changed = [j.view.id for j in self._jobs.values() if self._sample_locked(j, now, io)]
        for job_id in changed:
            self._notify(job_id)

    def _sample_locked(
        self, job: _Job, now: float, io: dict[str, tuple[int, int]], *, final: bool = False
    ) -> bool:
        """Append a sample to ``job`` (the lock is held); return True when one was added."""
        v = job.view
        live = v.state in (JobState.RUNNING, JobState.CANCELLING)
        if not (live or final) or v.started is None:
            return False
        dt = now - job.last_sample
        if dt <= 0:
            return False
        done = v.progress.done if v.progress else 0
        counters = io.get(os.path.basename(v.device)) if v.device else None
        dev_r = dev_w = 0.0
        if counters is not None and job.last_io is not None:
            dev_r = max(0, counters[0] - job.last_io[0]) / dt
            dev_w = max(0, counters[1] - job.last_io[1]) / dt
        job.last_io = counters
        job.samples.append(
            Sample(
                t=time.time() - v.started,
                rate=max(0, done - job.last_done) / dt,
                dev_read=dev_r,
                dev_write=dev_w,
            )
        )
        job.last_done = done
        job.last_sample = now
        job.view = replace(v, samples=tuple(job.samples))
        return True

    def _save_loop(self) -> None:
        # Off the jobs' threads: a slow disk under the database never slows a backup.
        while not self._closed.is_set():
            self._save_now.wait(SAVE_EVERY)
            self._save_now.clear()
            self._save()

    def flush(self) -> None:
        """Store every change not stored yet, now (the agent does so before it answers a submit)."""
        if self._store is not None:
            self._save()

    def _save(self) -> None:
        assert self._store is not None
        with self._save_lock:
            with self._lock:
                views = [self._jobs[i].view for i in sorted(self._unsaved, key=int)]
                self._unsaved.clear()
            for view in views:
                try:
                    self._store.save(view)
                except Exception:  # a full disk must not stop the jobs; it is logged
                    log.exception("could not store job %s", view.id)

    def _notify(self, job_id: str) -> None:
        with self._lock:
            if self._store is not None:
                self._unsaved.add(job_id)
                job = self._jobs.get(job_id)
                if job is not None and job.view.state.finished:
                    self._save_now.set()  # an ended job is stored at once
        self._listeners.notify(job_id)


def _clock() -> str:
    return time.strftime("%H:%M:%S")


def _volume_key(view: JobView) -> str:
    return view.device or os.path.realpath(view.spec.volume)


def _device_of(spec: JobSpec) -> str | None:
    """Return the block device a job reads or writes (its rates are graphed), if any."""
    from core.devices import scan
    from core.targets import resolve

    try:
        return resolve(spec.volume, scan()).device.path
    except BlockvaultError:
        return None


def _disk_counters() -> dict[str, tuple[int, int]]:
    """Return bytes read and written so far per block device name (``loop3``, ``vda1``)."""
    import psutil

    try:
        counters = psutil.disk_io_counters(perdisk=True, nowrap=True) or {}
    except (OSError, RuntimeError):
        return {}
    return {name: (c.read_bytes, c.write_bytes) for name, c in counters.items()}
