"""The one list of who wants to hear that a job changed, safe to use from any thread."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from core.jobs.model import Listener

log = logging.getLogger(__name__)


class Listeners:
    """Listeners of job changes: added and removed from any thread, told outside the lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[Listener] = []

    def add(self, listener: Listener) -> Callable[[], None]:
        """Add ``listener``; return the function that removes it (safe to call twice)."""
        with self._lock:
            self._items.append(listener)

        def remove() -> None:
            with self._lock:
                if listener in self._items:
                    self._items.remove(listener)

        return remove

    def notify(self, job_id: str) -> None:
        """Tell every listener that job ``job_id`` changed.

        A listener that raises is logged and the others are still told: a broken
        view must never stop a backup.
        """
        with self._lock:
            items = list(self._items)
        for listener in items:
            try:
                listener(job_id)
            except Exception:
                log.exception("job listener failed")
