"""The agent's job store: every job's view in one SQLite table, readable after a crash."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading

from core.errors import BlockvaultError
from core.jobs import JobState, JobView, view_from_dict, view_to_dict

log = logging.getLogger(__name__)

DB_ENV = "BLOCKVAULT_AGENT_DB"
DEFAULT_DB = "/var/lib/blockvault/agent.db"


def default_db_path() -> str:
    """Return ``$BLOCKVAULT_AGENT_DB``, else ``/var/lib/blockvault/agent.db``."""
    return os.environ.get(DB_ENV) or DEFAULT_DB


_FINISHED = tuple(s.value for s in JobState if s.finished)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    submitted REAL NOT NULL,
    state TEXT NOT NULL,
    doc TEXT NOT NULL
)
"""

# A finished job never changes again, so a late save of an older view must not undo it.
_UPSERT = f"""
INSERT INTO jobs (id, submitted, state, doc) VALUES (?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET submitted = excluded.submitted, state = excluded.state,
    doc = excluded.doc
WHERE jobs.state NOT IN ({", ".join("?" for _ in _FINISHED)})
"""


class SqliteJobStore:
    """A :class:`core.jobs.JobStore` in SQLite (WAL), safe to use from any thread.

    The database's directory is created 0700 and the file 0600: job logs name
    devices and mount points, which are nobody else's business.

    Args:
        path: the database file (created, with its directory, if missing).
    """

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        parent = os.path.dirname(self.path)
        if not os.path.isdir(parent):
            os.makedirs(parent, mode=0o700, exist_ok=True)
            os.chmod(parent, 0o700)  # makedirs' mode is filtered by the umask
        try:
            # Made 0600 before SQLite opens it; SQLite gives its -wal and -shm the same mode.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except (OSError, sqlite3.Error) as e:
            raise BlockvaultError(f"cannot open the job database {self.path}: {e}") from None
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA busy_timeout = 5000")
            self._db.execute("PRAGMA journal_mode = WAL")
            # FULL: a job the agent said it queued is still there after a power cut.
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute(_SCHEMA)

    def load(self) -> list[JobView]:
        """Return every stored job, oldest first (a row that cannot be read is logged, skipped)."""
        with self._lock:
            rows = self._db.execute("SELECT id, doc FROM jobs ORDER BY id").fetchall()
        views = []
        for job_id, doc in rows:
            try:
                views.append(view_from_dict(json.loads(doc)))
            except (ValueError, KeyError, TypeError, BlockvaultError) as e:
                log.error("job %s in %s cannot be read and is left out: %s", job_id, self.path, e)
        return views

    def save(self, view: JobView) -> None:
        """Store ``view`` (insert or replace by id; a finished job is never replaced)."""
        doc = json.dumps(view_to_dict(view), separators=(",", ":"))
        with self._lock:
            self._db.execute(
                _UPSERT, (int(view.id), view.submitted, view.state.value, doc, *_FINISHED)
            )

    def close(self) -> None:
        """Close the database (a checkpoint folds the WAL back into the file)."""
        with self._lock:
            self._db.close()
