"""The job queue: backups, increments and restores run in threads and are watched as views.

The console (and later the agent) submits a job spec, then reads immutable
:class:`JobView` snapshots whenever a listener is told a job changed. Jobs run one
per volume at a time and at most ``max_running`` at once; a sampler records each
running job's throughput and its device's read/write rates twice a second, so a
graph can be drawn for the whole job.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any, Protocol

from core.errors import BlockvaultError
from core.findings import Finding, ReturnCode, Severity, finding_from_dict
from core.progress import Cancelled, Progress

log = logging.getLogger(__name__)

SAMPLE_EVERY = 0.5
MAX_SAMPLES = 7200
"""Two hours at two samples a second; older samples are dropped first."""
MAX_LOG = 500
SAVE_EVERY = 1.0
"""Seconds between saves of changed jobs to the store (an ended job is saved at once)."""


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

    @property
    def title(self) -> str:
        """One line naming the job."""
        extra = " + increment" if self.increment_id else ""
        return f"restore → {self.dest}{extra}"

    @property
    def volume(self) -> str:
        """The device the job writes."""
        return self.dest


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
    """The newest log lines (at most 500)."""
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


# --- the wire format: what the agent stores and sends ----------------------------------------


def spec_to_dict(spec: JobSpec) -> dict[str, Any]:
    """Return ``spec`` as JSON-ready data with its ``kind``."""
    kind = "backup" if isinstance(spec, BackupSpec) else "restore"
    return {"kind": kind, **asdict(spec)}


def _tuples(value: Any) -> Any:
    """Return JSON lists as tuples, recursively (identities compare as tuples)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def spec_from_dict(d: Mapping[str, Any]) -> JobSpec:
    """Return the spec ``spec_to_dict`` wrote; BlockvaultError on anything else."""
    fields = {k: v for k, v in d.items() if k != "kind"}
    try:
        if d.get("kind") == "backup":
            return BackupSpec(**fields)
        if d.get("kind") == "restore":
            expected = fields.get("expected")
            fields["expected"] = _tuples(expected) if expected is not None else None
            return RestoreSpec(**fields)
    except TypeError as e:
        raise BlockvaultError(f"bad job spec: {e}; send a backup's or a restore's fields") from None
    raise BlockvaultError("bad job spec: 'kind' must be 'backup' or 'restore'")


def _progress_to_dict(p: Progress) -> dict[str, Any]:
    return {**asdict(p), "counters": dict(p.counters)}


def view_to_dict(view: JobView, *, samples: bool = True) -> dict[str, Any]:
    """Return ``view`` as JSON-ready data; without ``samples`` only the newest one is kept."""
    kept = view.samples if samples else view.samples[-1:]
    return {
        "id": view.id,
        "spec": spec_to_dict(view.spec),
        "state": view.state.value,
        "submitted": view.submitted,
        "started": view.started,
        "ended": view.ended,
        "device": view.device,
        "progress": _progress_to_dict(view.progress) if view.progress else None,
        "samples": [[s.t, s.rate, s.dev_read, s.dev_write] for s in kept],
        "samples_total": len(view.samples),
        "report": view.report,
        "return_code": view.return_code,
        "error": view.error,
        "findings": [f.to_dict() for f in view.findings],
        "log": list(view.log),
        "log_total": view.log_total,
    }


def view_from_dict(d: Mapping[str, Any]) -> JobView:
    """Return the view ``view_to_dict`` wrote."""
    p = d.get("progress")
    return JobView(
        id=str(d["id"]),
        spec=spec_from_dict(d["spec"]),
        state=JobState(d["state"]),
        submitted=float(d["submitted"]),
        started=d.get("started"),
        ended=d.get("ended"),
        device=d.get("device"),
        progress=Progress(**{**p, "counters": dict(p.get("counters") or {})}) if p else None,
        samples=tuple(Sample(*row) for row in d.get("samples") or ()),
        report=d.get("report"),
        return_code=d.get("return_code"),
        error=d.get("error"),
        findings=tuple(finding_from_dict(f) for f in d.get("findings") or ()),
        log=tuple(d.get("log") or ()),
        log_total=int(d.get("log_total") or 0),
    )


class JobStore(Protocol):
    """Where a queue keeps its jobs, so that history survives a restart (the agent's SQLite)."""

    def load(self) -> list[JobView]:
        """Return every stored job, oldest first."""
        ...

    def save(self, view: JobView) -> None:
        """Store ``view`` (insert or replace by id)."""
        ...


Listener = Callable[[str], None]
"""Called with a job id whenever that job changed (from any thread)."""


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


class JobSource(Protocol):
    """What :func:`wait_finished` needs: the queue itself, or a client of the agent's."""

    def subscribe(self, listener: Listener) -> Callable[[], None]: ...

    def view(self, job_id: str) -> JobView: ...


def wait_finished(source: JobSource, job_id: str, timeout: float | None = None) -> JobView:
    """Block until job ``job_id`` of ``source`` finished (or ``timeout``); return its view.

    Woken by the job's own changes; a half-second check covers a change that came
    between the subscription and the first look.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    done = threading.Event()

    def check(changed: str) -> None:
        if changed == job_id and source.view(job_id).state.finished:
            done.set()

    stop = source.subscribe(check)
    try:
        while not source.view(job_id).state.finished:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            done.wait(0.5 if left is None else min(0.5, left))
    finally:
        stop()
    return source.view(job_id)


class JobQueue:
    """Runs jobs in threads; every change is told to listeners as a job id.

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
        self._listeners: list[Listener] = []
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
                    error="interrupted: the agent stopped while it ran; rerun it "
                    "(what a backup stored is reused)",
                    return_code=int(ReturnCode.FAILED),
                )
                self._store.save(job.view)
            self._jobs[view.id] = job
            highest = max(highest, int(view.id)) if view.id.isdigit() else highest
        return highest

    # --- what a UI calls ------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(job_id)`` on every change; return the function that stops it."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

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

    def active(self) -> list[JobView]:
        """Return the jobs not yet finished."""
        return [v for v in self.views() if not v.state.finished]

    def wait(self, job_id: str, timeout: float | None = None) -> JobView:
        """Block until job ``job_id`` finished (or ``timeout``); return its view."""
        return wait_finished(self, job_id, timeout)

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
        spec = job.view.spec
        try:
            report = self._execute(job, spec)
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

    def _open_repo(self, *, create: bool) -> Any:
        """Open the queue's repository, one job at a time.

        Creating a repository is not atomic: a second job opening it meanwhile finds a
        directory that is neither empty nor a repository yet, and would fail.
        """
        from core.repo.repository import Repository

        with self._repo_lock:
            return Repository.open(self.repo_location, create=create)

    def _execute(self, job: _Job, spec: JobSpec) -> dict[str, Any]:
        def progress(p: Progress) -> None:
            now = time.monotonic()
            # Between the sampler's ticks too, so that a job of a second has a graph.
            io = _disk_counters() if now - job.last_sample >= SAMPLE_EVERY / 2 else None
            with self._lock:
                if p.phase != job.phase:
                    job.phase = p.phase
                    job.add_log(f"{_clock()} {p.phase}")
                job.view = replace(job.view, progress=p)
                if io is not None:
                    self._sample_locked(job, now, io)
            self._notify(job.view.id)

        cancel = job.cancel
        if isinstance(spec, BackupSpec):
            repo = self._open_repo(create=True)
            if spec.mode == "incremental":
                from core.increments.backup import backup_increment

                report: Any = backup_increment(
                    spec.target,
                    repo,
                    hash_all=spec.compare_content,
                    progress=progress,
                    cancel=cancel,
                )
            else:
                from core.engine.backup import BackupOptions, backup_image
                from core.snapshots import ImageType

                options = BackupOptions(
                    imagetype=ImageType(spec.imagetype) if spec.imagetype else None,
                    fallback_dynamic=spec.fallback_dynamic,
                    snapshot_cache_pct=spec.snapshot_cache_pct,
                    **({"gap_size": spec.gap_size} if spec.gap_size is not None else {}),
                )
                report = backup_image(spec.target, repo, options, progress=progress, cancel=cancel)
            return self._result(job, report.to_dict(), report.findings)
        return self._restore(job, spec, self._open_repo(create=False), progress)

    def _restore(
        self, job: _Job, spec: RestoreSpec, repo: Any, progress: Callable[[Progress], None]
    ) -> dict[str, Any]:
        from core.increments.chain import RestorePoint
        from core.increments.restore import restore_with_increments
        from core.repo.catalog import catalog

        entry = next((e for e in catalog(repo) if e.manifest.id == spec.image_id), None)
        if entry is None:
            raise BlockvaultError(
                f"image {spec.image_id} is not in the repository; nothing was written"
            )
        increment = None
        if spec.increment_id is not None:
            increment = next((m for m in repo.increments() if m.id == spec.increment_id), None)
            if increment is None:
                raise BlockvaultError(
                    f"increment {spec.increment_id} is not in the repository; nothing was written"
                )
        # Without an increment this is the image restore alone (no mount, no replay).
        both = restore_with_increments(
            RestorePoint(entry, increment),
            spec.dest,
            repo,
            confirm=spec.confirm,
            delete=spec.deletefiles,
            preserve_label=spec.preserve_label,
            verify=spec.verify,
            progress=progress,
            cancel=job.cancel,
            expected=spec.expected,
        )
        found = list(both.image.findings) + (list(both.replay.findings) if both.replay else [])
        return self._result(job, both.to_dict(), found)

    def _result(self, job: _Job, doc: dict[str, Any], found: Sequence[Finding]) -> dict[str, Any]:
        with self._lock:
            job.view = replace(job.view, findings=tuple(found))
        return doc

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
            listeners = list(self._listeners)
            if self._store is not None:
                self._unsaved.add(job_id)
                job = self._jobs.get(job_id)
                if job is not None and job.view.state.finished:
                    self._save_now.set()  # an ended job is stored at once
        for listener in listeners:
            try:
                listener(job_id)
            except Exception:  # a broken listener must not stop a backup
                log.exception("job listener failed")


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
