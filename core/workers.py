"""run_workers: N threads draining one stream of work items, stopping all at the first failure.

The image backup, the image restore and the increment's file reading all share this
shape: each worker thread keeps its own buffers or reader, takes the next item from
one shared iterator, and the first failure — a damaged chunk, an I/O error, a
cancel — must stop every thread and reach the caller as it was raised.

Items are taken one at a time under a lock, never listed up front, so a caller that
streams its work keeps memory bounded by what the workers hold. Per item the cost is
one lock, one ``next()`` and the cancel check: no future, no queue hand-over.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def run_workers(
    items: Iterable[T],
    worker: Callable[[Iterator[T]], None],
    *,
    threads: int,
    check_cancel: Callable[[], None] | None = None,
    name: str = "bv-worker",
) -> None:
    """Run ``worker`` in ``threads`` threads until ``items`` is used up; return once all ended.

    Each thread calls ``worker(take)`` once (not at all if the run was stopped before the
    thread began). ``take`` yields the items this thread is to do, taken from ``items``
    one at a time, so every item goes to exactly one thread, in no particular order
    across threads; the worker keeps its per-thread state (buffers, an open reader) in
    locals and tears it down as it returns. Before handing out an item ``take`` calls
    ``check_cancel`` (e.g. a progress meter's), whose exception then fails that worker
    like any other.

    The first exception any worker raises stops the others: no thread is given
    another item, each finishes the item it holds, and once all have ended the
    exception is raised here, with its own type and traceback (later ones, mostly
    consequences of the first, are dropped). An interrupt in the waiting caller
    (Ctrl-C) stops the workers the same way and is re-raised after they ended.

    Args:
        items: the work; consumed lazily, from several threads under one lock.
        worker: the body of one thread; it must take its items only from ``take``.
        threads: how many threads (at least one is started).
        check_cancel: raises to stop the work (``Meter.check_cancel``).
        name: prefix of the threads' names (``bv-backup-1``, …), for debuggers and ``ps``.
    """
    source = iter(items)
    lock = threading.Lock()
    idle = threading.Condition(lock)
    """Notified under ``lock`` each time a worker ends."""
    failures: list[BaseException] = []
    """Non-empty once the run is stopped: read under ``lock`` with every item taken."""
    active = 0
    """Threads inside ``worker``, under ``lock``."""

    def take() -> Iterator[T]:
        while True:
            with lock:
                if failures:
                    return
                try:
                    item = next(source)
                except StopIteration:
                    return
            if check_cancel is not None:
                check_cancel()
            yield item

    def run() -> None:
        nonlocal active
        with lock:
            if failures:
                return  # began after the run was stopped: it must not start on anything
            active += 1
        try:
            worker(take())
        except BaseException as e:  # recorded and raised in the caller
            with lock:
                failures.append(e)
        finally:
            with lock:
                active -= 1
                idle.notify_all()

    pool = [
        threading.Thread(target=run, name=f"{name}-{i}")
        for i in range(1, max(1, threads) + 1)
    ]
    try:
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    except BaseException as e:
        # Interrupted (Ctrl-C lands in the waiting thread, possibly while it starts
        # threads), or out of threads: stop, and leave only once no worker is left in
        # ``worker`` — a thread that begins later sees the stop and does nothing.
        with lock:
            failures.append(e)
            while active:
                idle.wait()
        raise
    if failures:
        first = failures[0]
        failures.clear()
        try:
            raise first
        finally:
            del first  # no cycle: this frame, the exception, its traceback
