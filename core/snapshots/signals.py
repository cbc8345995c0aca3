"""Signal handling while a state is held: Ctrl-C held back, SIGTERM turned into an unwind.

The few instants between making a change and registering its undo, and every undo
step, run inside :func:`signals_deferred`, which delivers SIGINT, SIGTERM and SIGHUP
only once the block is over. While a view is open, :func:`terminate_unwinds` makes a
default (fatal) SIGTERM or SIGHUP raise SystemExit instead, so the undo still runs.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

_HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Signals held back while a state change is made or undone, then delivered."""
_UNWIND_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
"""Signals whose default action (die at once) is turned into SystemExit while a state is held."""


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP for the block, then deliver them as they would have been.

    In the main thread the Python handlers are swapped for one that only records the
    signal: ``pthread_sigmask`` alone would not do, because the kernel hands a signal
    sent to the process to any thread that does not block it, and Python then runs
    the handler in the main thread anyway. In other threads (where Python never runs
    handlers) the signals are blocked for this thread with ``pthread_sigmask``.
    """
    if not _in_main_thread():
        previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        return

    caught: list[signal.Signals] = []

    def hold(signum: int, _frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        if sig not in caught:
            caught.append(sig)

    previous: dict[signal.Signals, Callable[[int, FrameType | None], object] | int] = {}
    try:
        for sig in _HELD_SIGNALS:
            handler = signal.getsignal(sig)
            if handler is not None:  # None: installed outside Python; leave it alone
                previous[sig] = handler
                signal.signal(sig, hold)
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in caught:
            if previous.get(sig) is not signal.SIG_IGN:
                signal.raise_signal(sig)  # the original handler runs now, after the window


@contextmanager
def terminate_unwinds() -> Iterator[None]:
    """Make SIGTERM and SIGHUP raise SystemExit while the block runs, if they would kill.

    Only handlers left at the default (die at once, skipping every undo) are replaced,
    only in the main thread, and put back afterwards unless someone changed them.
    """
    if not _in_main_thread():
        yield
        return

    def unwind(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    replaced = [sig for sig in _UNWIND_SIGNALS if signal.getsignal(sig) is signal.SIG_DFL]
    for sig in replaced:
        signal.signal(sig, unwind)
    try:
        yield
    finally:
        for sig in replaced:
            if signal.getsignal(sig) is unwind:
                signal.signal(sig, signal.SIG_DFL)
