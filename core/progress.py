"""Progress, cancellation and the meter that throttles progress events.

Every long-running piece of core (image backup and restore, increments, replay,
repository checks) reports through these, and a UI, the command line and the JSON
report all read the same events; the meter coalesces ticks so that a fast pipeline
never floods a slow consumer.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from core.errors import BlockvaultError


class Cancelled(BlockvaultError):
    """The user cancelled the job; nothing half-done became visible."""


@dataclass(frozen=True)
class Progress:
    """Where a job is: ``done`` of ``total`` bytes of work in ``phase``."""

    phase: str
    done: int
    total: int
    rate: float
    """Bytes per second over the last few seconds."""
    eta: float | None
    """Seconds to go at the current rate; None until a rate is known."""
    elapsed: float
    counters: Mapping[str, int] = field(default_factory=dict)


ProgressFn = Callable[[Progress], None]


RATE_WINDOW = 3.0
EMIT_EVERY = 0.2


class Meter:
    """Counts work done across worker threads and emits :class:`Progress` at most every 0.2 s."""

    def __init__(
        self,
        phase: str,
        total: int,
        callback: ProgressFn | None,
        cancel: threading.Event | None = None,
        *,
        report: object | None = None,
    ) -> None:
        self.phase = phase
        self.report = report
        """A report whose integer fields each event carries as live counters."""
        self.total = total
        self.callback = callback
        self.cancel = cancel
        self.counters: dict[str, int] = {}
        self.done = 0
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._last_emit = 0.0
        self._samples: deque[tuple[float, int]] = deque([(self._start, 0)])

    def check_cancel(self) -> None:
        """Raise :class:`Cancelled` once the cancel event is set."""
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("cancelled by the user; nothing was committed")

    def add(self, done: int = 0, **counters: int) -> None:
        """Record ``done`` bytes of work and counter increments; emit if it is time."""
        now = time.monotonic()
        with self._lock:
            self.done += done
            for k, v in counters.items():
                self.counters[k] = self.counters.get(k, 0) + v
            if now - self._last_emit < EMIT_EVERY:
                return
            self._last_emit = now
            event = self._event(now)
        if self.callback is not None:
            self.callback(event)

    def finish(self, phase: str | None = None) -> Progress:
        """Emit and return the final event."""
        with self._lock:
            if phase:
                self.phase = phase
            event = self._event(time.monotonic())
        if self.callback is not None:
            self.callback(event)
        return event

    def _event(self, now: float) -> Progress:
        self._samples.append((now, self.done))
        while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW:
            self._samples.popleft()
        t0, d0 = self._samples[0]
        rate = (self.done - d0) / (now - t0) if now > t0 else 0.0
        left = max(0, self.total - self.done)
        counters = dict(self.counters)
        if self.report is not None:
            # Plain int fields only; read without the report's lock, a figure is at
            # most one chunk behind, which a live view can bear.
            counters.update(
                (k, v) for k, v in vars(self.report).items() if type(v) is int
            )
        return Progress(
            phase=self.phase,
            done=self.done,
            total=self.total,
            rate=rate,
            eta=left / rate if rate > 0 else None,
            elapsed=now - self._start,
            counters=counters,
        )

    @property
    def elapsed(self) -> float:
        """Seconds since the meter started."""
        return time.monotonic() - self._start
