"""Jobs: backups, increments and restores as specs, run by one runner, watched as views.

- :mod:`~core.jobs.model`: specs, states, views, samples and the :class:`Jobs` protocol
  that the queue, the agent's client and the recorded scene implement;
- :mod:`~core.jobs.listeners`: the one list of who hears of a job's changes;
- :mod:`~core.jobs.wire`: specs and views as JSON (the agent's API and its store);
- :mod:`~core.jobs.runner`: runs one spec, for the queue and the command line alike;
- :mod:`~core.jobs.queue`: the in-process queue with sampling and an optional store.
"""

from core.jobs.model import (
    MAX_LOG,
    MAX_SAMPLES,
    SAMPLE_EVERY,
    BackupSpec,
    Jobs,
    JobSpec,
    JobState,
    JobView,
    Listener,
    RestoreSpec,
    Sample,
)
from core.jobs.queue import JobQueue, JobStore
from core.jobs.runner import JobResult, run_job
from core.jobs.wire import spec_from_dict, spec_to_dict, view_from_dict, view_to_dict

__all__ = [
    "MAX_LOG",
    "MAX_SAMPLES",
    "SAMPLE_EVERY",
    "BackupSpec",
    "JobQueue",
    "JobResult",
    "JobSpec",
    "JobState",
    "JobStore",
    "JobView",
    "Jobs",
    "Listener",
    "RestoreSpec",
    "Sample",
    "run_job",
    "spec_from_dict",
    "spec_to_dict",
    "view_from_dict",
    "view_to_dict",
]
