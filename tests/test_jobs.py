"""The job queue on real loop volumes: image, increment and restore jobs, as a UI sees them.

Every volume is a loop device this test made; every repository lives in tmp_path.
Nothing sleeps: a test waits on the queue, or on an event a subscribed listener sets.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from imagekit import device_digest, fsck_clean, populate, tree_digest

from core.engine.restore import plan_restore
from core.history import volume_history
from core.jobs import BackupSpec, JobQueue, JobState, JobView, RestoreSpec, Sample
from core.repo.repository import Repository

pytestmark = pytest.mark.loop

MIB = 1 << 20
TIMEOUT = 60.0
"""Seconds any one job may take before the test gives up on it."""
BUSY = (JobState.RUNNING, JobState.CANCELLING)


@pytest.fixture
def repo_location(tmp_path: Path) -> str:
    return str(tmp_path / "repo")


@pytest.fixture
def queue(loopkit, repo_location: str) -> Iterator[JobQueue]:
    """A queue on a fresh repository; closed before the loop kit undoes its volumes."""
    q = JobQueue(repo_location, max_running=2)
    try:
        yield q
    finally:
        q.close()


def image_ids(repo_location: str) -> list[str]:
    if "://" not in repo_location and not os.path.exists(f"{repo_location}/config.json"):
        return []  # a first backup that stored nothing leaves no repository behind
    return [m.id for m in Repository.open(repo_location, create=False).images()]


def finished(queue: JobQueue, job_id: str) -> JobView:
    view = queue.wait(job_id, timeout=TIMEOUT)
    assert view.state.finished, f"job {job_id} still {view.state.value} after {TIMEOUT} s"
    return view


def done(queue: JobQueue, job_id: str) -> JobView:
    view = finished(queue, job_id)
    assert view.state is JobState.DONE, f"{view.title}: {view.state.value}: {view.error}"
    assert view.return_code in (0, 8), view.log
    return view


def small_volume(loopkit, size: str = "32M"):
    vol = loopkit.volume(size, "ext4")
    loopkit.fill(vol, files=12)
    return vol


def raw_volume(loopkit, size_mib: int):
    """A loop device without a file system, filled with random bytes."""
    vol = loopkit.volume(f"{size_mib}M", None)
    with open(vol.device, "r+b") as f:
        f.write(os.urandom(size_mib * MIB))
    return vol


class Watch:
    """Records, at every notification, every job's state (read under one lock, in order)."""

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue
        self.lock = threading.Lock()
        self.snapshots: list[dict[str, JobState]] = []
        self.notified: list[tuple[str, JobState]] = []
        self.unsubscribe = queue.subscribe(self._changed)

    def _changed(self, job_id: str) -> None:
        with self.lock:
            states = {v.id: v.state for v in self.queue.views()}
            self.snapshots.append(states)
            self.notified.append((job_id, states[job_id]))

    def states_of(self, job_id: str) -> list[JobState]:
        """The states ``job_id`` was seen in at its own notifications, repeats dropped."""
        out: list[JobState] = []
        for changed, state in self.notified:
            if changed == job_id and (not out or out[-1] is not state):
                out.append(state)
        return out

    def running_sets(self) -> list[set[str]]:
        return [{j for j, s in snap.items() if s in BUSY} for snap in self.snapshots]


class Gate:
    """Holds a job inside its first progress report until :meth:`release` (or a timeout).

    Only the job's own thread is held (the queue names it ``job-<id>``): a sampler or
    submitting thread that notifies about the job passes straight through.
    """

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue
        self.job_id: str | None = None
        self.reached = threading.Event()
        self.released = threading.Event()
        queue.subscribe(self._changed)

    def _changed(self, job_id: str) -> None:
        if (
            job_id == self.job_id
            and threading.current_thread().name == f"job-{job_id}"
            and not self.reached.is_set()
            and self.queue.view(job_id).progress is not None
        ):
            self.reached.set()
            self.released.wait(TIMEOUT)

    def hold(self, job_id: str) -> None:
        self.job_id = job_id
        assert self.reached.wait(TIMEOUT), f"job {job_id} never reported progress"

    def release(self) -> None:
        self.released.set()


def test_image_job_runs_to_done_with_progress_samples_log_and_its_image_stored(
    loopkit, queue, repo_location
):
    vol = loopkit.volume("128M", "ext4")
    populate(vol.mount_point)
    sampled = threading.Event()

    def sample_at_first_progress(job_id: str) -> None:
        # The background sampler ticks every 0.5 s and this backup may be quicker:
        # take one sample as soon as the job reports progress. Set the flag first,
        # because sample() notifies listeners (this one) again.
        if not sampled.is_set() and queue.view(job_id).progress is not None:
            sampled.set()
            queue.sample()

    queue.subscribe(sample_at_first_progress)
    job = queue.submit(BackupSpec(str(vol.mount_point)))
    view = done(queue, job)

    assert view.report is not None
    image_id = view.report["image_id"]
    assert image_ids(repo_location) == [image_id]
    manifest = Repository.open(repo_location, create=False).image(image_id)
    assert manifest.volume.device == vol.device
    # The mount point was resolved to its device when queued: that device's I/O is graphed.
    assert view.device == vol.device
    assert view.progress is not None and view.progress.done > 0
    assert view.fraction == 1.0
    assert view.started is not None and view.ended is not None
    assert view.submitted <= view.started <= view.ended
    lines = list(view.log)
    at = {
        word: next(i for i, line in enumerate(lines) if f" {word}" in line)
        for word in ("queued", "started", "done")
    }
    assert at["queued"] < at["started"] < at["done"], lines
    # A finished job keeps the samples taken while it ran.
    assert sampled.is_set()
    assert view.samples and all(isinstance(s, Sample) for s in view.samples)
    assert all(s.t >= 0 and s.rate >= 0 for s in view.samples)
    assert queue.active() == []


def test_listener_is_told_the_job_id_as_it_goes_queued_running_done(loopkit, queue):
    vol = small_volume(loopkit)
    watch = Watch(queue)
    job = queue.submit(BackupSpec(vol.device))
    done(queue, job)
    assert watch.states_of(job) == [JobState.QUEUED, JobState.RUNNING, JobState.DONE]
    assert {changed for changed, _ in watch.notified} == {job}


def test_second_job_on_the_same_volume_waits_queued_until_the_first_ends(
    loopkit, queue, repo_location
):
    vol = small_volume(loopkit)
    watch = Watch(queue)
    gate = Gate(queue)
    first = queue.submit(BackupSpec(str(vol.mount_point)))
    gate.hold(first)
    # The same volume named by its device: still one volume, so it must wait.
    try:
        second = queue.submit(BackupSpec(vol.device))
        assert queue.view(first).state is JobState.RUNNING
        assert queue.view(second).state is JobState.QUEUED
    finally:
        gate.release()
    a, b = done(queue, first), done(queue, second)

    assert all(not {first, second} <= running for running in watch.running_sets())
    assert b.started is not None and a.ended is not None and b.started >= a.ended
    assert sorted(image_ids(repo_location)) == sorted([a.report["image_id"], b.report["image_id"]])


def test_jobs_on_two_volumes_all_finish_one_per_volume_and_never_above_max_running(
    loopkit, queue, repo_location
):
    one, two = small_volume(loopkit), small_volume(loopkit)
    watch = Watch(queue)
    jobs = {
        queue.submit(BackupSpec(str(one.mount_point))): one.device,
        queue.submit(BackupSpec(str(two.mount_point))): two.device,
        queue.submit(BackupSpec(one.device)): one.device,
        queue.submit(BackupSpec(two.device)): two.device,
    }
    views = [done(queue, job) for job in jobs]

    for running in watch.running_sets():
        assert len(running) <= queue.max_running
        devices = [jobs[j] for j in running]
        assert len(devices) == len(set(devices)), f"two jobs on one volume ran at once: {running}"
    assert sorted(image_ids(repo_location)) == sorted(v.report["image_id"] for v in views)


def test_jobs_starting_together_on_a_fresh_repository_location_all_create_and_use_it(
    loopkit, tmp_path
):
    # The first job on a location creates the repository, which is not atomic: another
    # job opening it meanwhile found a half-made directory and failed. A few rounds,
    # because the window is short.
    vols = [raw_volume(loopkit, 4), raw_volume(loopkit, 4)]
    for round_ in range(5):
        location = str(tmp_path / f"repo{round_}")
        queue = JobQueue(location, max_running=0)  # nothing starts: both jobs wait
        try:
            jobs = [queue.submit(BackupSpec(v.device)) for v in vols]
            # Open two slots; the next submit lets the queue look again, and both jobs
            # start at once and open — so create — the repository at the same moment.
            queue.max_running = 2
            queue.cancel(queue.submit(BackupSpec(str(tmp_path / "nothing"))))
            views = [done(queue, job) for job in jobs]
        finally:
            queue.close()
        assert sorted(image_ids(location)) == sorted(v.report["image_id"] for v in views)


def test_queued_job_cancelled_before_it_starts_ends_cancelled_and_writes_no_image(
    loopkit, queue, repo_location
):
    vol = small_volume(loopkit)
    gate = Gate(queue)
    first = queue.submit(BackupSpec(vol.device))
    gate.hold(first)
    queued = queue.submit(BackupSpec(vol.device))
    try:
        assert queue.view(queued).state is JobState.QUEUED
        assert queue.cancel(queued) is True
    finally:
        gate.release()
    view = finished(queue, queued)
    assert view.state is JobState.CANCELLED
    assert view.started is None
    assert view.error and "\n" not in view.error
    assert queue.cancel(queued) is False  # finished jobs cannot be cancelled again

    kept = done(queue, first)
    assert image_ids(repo_location) == [kept.report["image_id"]]


def test_running_image_job_cancelled_ends_cancelled_and_leaves_no_image(
    loopkit, queue, repo_location
):
    vol = loopkit.volume("512M", "ext4")
    with open(vol.mount_point / "random.bin", "wb") as f:
        for _ in range(64):  # 256 MiB: many chunks, so progress arrives well before the end
            f.write(os.urandom(4 * MIB))
    os.sync()
    cancelled = threading.Event()

    def cancel_at_first_progress(job_id: str) -> None:
        if not cancelled.is_set() and queue.view(job_id).progress is not None:
            cancelled.set()  # first: cancel() notifies this listener again
            queue.cancel(job_id)

    queue.subscribe(cancel_at_first_progress)
    job = queue.submit(BackupSpec(str(vol.mount_point)))
    view = finished(queue, job)

    assert cancelled.is_set()
    assert view.state is JobState.CANCELLED, f"{view.state.value}: {view.error}"
    assert view.report is None
    assert view.progress is not None and view.progress.done < view.progress.total
    assert any("cancel requested" in line for line in view.log)
    assert image_ids(repo_location) == []
    # The static backup's read-only remount was undone: the volume is writable again.
    (vol.mount_point / "after.txt").write_text("writable")


def test_image_job_of_a_path_that_is_no_volume_fails_in_one_line_and_the_queue_goes_on(
    loopkit, queue, tmp_path
):
    nope = tmp_path / "nope"
    failed = finished(queue, queue.submit(BackupSpec(str(nope))))
    assert failed.state is JobState.FAILED
    assert failed.return_code == 12
    assert failed.error and "\n" not in failed.error and str(nope) in failed.error
    assert failed.report is None

    vol = small_volume(loopkit)
    done(queue, queue.submit(BackupSpec(vol.device)))


def test_restore_job_writes_the_image_and_the_destination_holds_the_same_files(
    loopkit, queue, repo_location
):
    vol = loopkit.volume("128M", "ext4")
    assert vol.mount_point is not None
    populate(vol.mount_point)
    expected = tree_digest(vol.mount_point)
    image_id = done(queue, queue.submit(BackupSpec(str(vol.mount_point)))).report["image_id"]

    repo = Repository.open(repo_location, create=False)
    dest = loopkit.attach(loopkit.image("128M"))
    plan = plan_restore(repo.image(image_id), dest, repo)
    assert not plan.blocked, plan.findings
    spec = RestoreSpec(image_id, dest=dest, confirm=dest, expected=plan.identity)
    view = done(queue, queue.submit(spec))

    assert view.device == dest
    assert view.report["image"]["bytes_written"] > 0
    # Not byte for byte: a clean ext4 journal's log is not stored, and restores as zeros.
    clean, out = fsck_clean(dest)
    assert clean, out
    mp = loopkit.mount(dest, None, "ro")
    assert tree_digest(mp) == expected
    loopkit.umount(mp)


def test_restore_job_with_the_wrong_confirmation_fails_and_writes_nothing(
    loopkit, queue, repo_location
):
    vol = raw_volume(loopkit, 16)
    image_id = done(queue, queue.submit(BackupSpec(vol.device))).report["image_id"]
    dest = loopkit.attach(loopkit.image("16M"))
    with open(dest, "r+b") as f:
        f.write(b"\xab" * (16 * MIB))
    before = device_digest(dest)
    repo = Repository.open(repo_location, create=False)
    plan = plan_restore(repo.image(image_id), dest, repo)

    # The classic slip: typing the source's name instead of the destination's.
    spec = RestoreSpec(image_id, dest=dest, confirm=vol.device, expected=plan.identity)
    view = finished(queue, queue.submit(spec))
    assert view.state is JobState.FAILED
    assert view.return_code == 12
    assert view.error and "confirm" in view.error and "\n" not in view.error
    assert view.progress is None
    assert device_digest(dest) == before


def test_restore_job_to_a_mounted_device_is_refused_and_writes_nothing(loopkit, queue):
    vol = raw_volume(loopkit, 16)
    image_id = done(queue, queue.submit(BackupSpec(vol.device))).report["image_id"]
    dest = loopkit.attach(loopkit.image("16M"))
    loopkit.mkfs(dest, "ext4")
    # Read-only, so the mounted file system itself writes nothing the digest would see.
    loopkit.mount(dest, None, "ro")
    before = device_digest(dest)

    view = finished(queue, queue.submit(RestoreSpec(image_id, dest=dest, confirm=dest)))
    assert view.state is JobState.FAILED
    assert view.return_code == 12
    assert view.error and "mounted" in view.error
    assert view.progress is None  # refused before a byte was written
    assert device_digest(dest) == before


def test_increment_job_queued_behind_its_image_job_shows_on_the_timeline_newest_first(
    loopkit, queue, repo_location
):
    vol = small_volume(loopkit)
    mp = str(vol.mount_point)
    # Queued together: the increment needs the image, so it must run after it.
    image_job = queue.submit(BackupSpec(mp))
    increment_job = queue.submit(BackupSpec(mp, mode="incremental"))
    image = done(queue, image_job)
    increment = done(queue, increment_job)
    assert increment.report["base_image"] == image.report["image_id"]

    history = volume_history(Repository.open(repo_location, create=False), mp)
    assert [(t.kind, t.id) for t in history.timeline()] == [
        ("increment", increment.report["increment_id"]),
        ("image", image.report["image_id"]),
    ]
    point = history.point(incremental=True)
    assert point.image.manifest.id == image.report["image_id"]
    assert point.increment is not None
    assert point.increment.id == increment.report["increment_id"]


def test_running_restore_cancelled_says_the_target_is_partly_written(
    loopkit, queue, repo_location
):
    """A restore cannot be undone: its cancellation names the target and its state."""
    vol = raw_volume(loopkit, 256)
    image_id = done(queue, queue.submit(BackupSpec(vol.device))).report["image_id"]
    repo = Repository.open(repo_location, create=False)
    dest = loopkit.attach(loopkit.image("256M"))
    plan = plan_restore(repo.image(image_id), dest, repo)
    cancelled = threading.Event()

    def cancel_at_first_progress(job_id: str) -> None:
        view = queue.view(job_id)
        if isinstance(view.spec, RestoreSpec) and view.progress and not cancelled.is_set():
            cancelled.set()  # first: cancel() notifies this listener again
            queue.cancel(job_id)

    queue.subscribe(cancel_at_first_progress)
    spec = RestoreSpec(image_id, dest=dest, confirm=dest, expected=plan.identity)
    view = finished(queue, queue.submit(spec))

    assert view.state is JobState.CANCELLED, f"{view.state.value}: {view.error}"
    assert view.error and dest in view.error and "partly written" in view.error


def test_log_total_counts_past_the_kept_window(loopkit, queue):
    """The view keeps the newest lines; log_total keeps counting, so viewers see new ones."""
    vol = small_volume(loopkit)
    job_id = queue.submit(BackupSpec(vol.device))
    view = done(queue, job_id)
    assert view.log_total == len(view.log)  # a short job: nothing dropped yet
    assert view.log[-1].split(" ", 1)[1].startswith("done")
