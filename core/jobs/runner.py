"""Run one job spec: the one road from every front end to the engines.

The job queue (in the console or the agent) and the command line's in-process path
both call :func:`run_job`, so a backup, an increment or a restore is dispatched the
same way whoever asked for it. Each engine is imported when a job needs it, so a
scripted backup pays only for the code it uses.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.errors import BlockvaultError
from core.findings import Finding
from core.jobs.model import BackupSpec, JobSpec, RestoreSpec
from core.progress import ProgressFn

if TYPE_CHECKING:
    from core.repo.repository import Repository

RepoOpener = Callable[[bool], "Repository"]
"""Opens the job's repository; the argument says whether a missing one may be created."""


@dataclass(frozen=True)
class JobResult:
    """What a finished job hands back: its JSON report and its findings."""

    report: dict[str, Any]
    findings: tuple[Finding, ...]


def run_job(
    spec: JobSpec,
    open_repo: RepoOpener,
    *,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> JobResult:
    """Run ``spec`` to its end in this thread; return its report.

    Raises:
        BlockvaultError: the job was refused or failed (its message says what to do).
        Cancelled: ``cancel`` was set; nothing half-done became visible.
    """
    if isinstance(spec, BackupSpec):
        return _backup(spec, open_repo, progress, cancel)
    return _restore(spec, open_repo(False), progress, cancel)


def _backup(
    spec: BackupSpec,
    open_repo: RepoOpener,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
) -> JobResult:
    if spec.mode == "incremental":
        from core.increments.backup import backup_increment

        # An increment needs an image first: it never creates a repository.
        increment = backup_increment(
            spec.target,
            open_repo(False),
            hash_all=spec.compare_content,
            progress=progress,
            cancel=cancel,
        )
        return JobResult(increment.to_dict(), tuple(increment.findings))
    from core.engine.backup import BackupOptions, backup_image
    from core.snapshots import ImageType

    options = BackupOptions(
        imagetype=ImageType(spec.imagetype) if spec.imagetype else None,
        fallback_dynamic=spec.fallback_dynamic,
        snapshot_cache_pct=spec.snapshot_cache_pct,
        **({"gap_size": spec.gap_size} if spec.gap_size is not None else {}),
    )
    repo = open_repo(True)
    try:
        image = backup_image(spec.target, repo, options, progress=progress, cancel=cancel)
    except BaseException:
        repo.discard_unused()  # a refused first backup leaves no repository behind
        raise
    return JobResult(image.to_dict(), tuple(image.findings))


def _restore(
    spec: RestoreSpec,
    repo: Repository,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
) -> JobResult:
    from core.increments.restore import restore_with_increments
    from core.repo.store import RepositoryError

    # Only the two manifests the job names are read (not every image and increment).
    try:
        image = repo.image(spec.image_id)
    except RepositoryError:
        raise BlockvaultError(
            f"image {spec.image_id} is not in the repository; nothing was written"
        ) from None
    increment = None
    if spec.increment_id is not None:
        try:
            increment = repo.increment(spec.increment_id)
        except RepositoryError:
            raise BlockvaultError(
                f"increment {spec.increment_id} is not in the repository; nothing was written"
            ) from None
    # Without an increment this is the image restore alone (no mount, no replay).
    both = restore_with_increments(
        image,
        increment,
        spec.dest,
        repo,
        confirm=spec.confirm,
        delete=spec.deletefiles,
        preserve_label=spec.preserve_label,
        verify=spec.verify,
        to_file=spec.to_file,
        progress=progress,
        cancel=cancel,
        expected=spec.expected,
    )
    found = list(both.image.findings) + (list(both.replay.findings) if both.replay else [])
    return JobResult(both.to_dict(), tuple(found))
