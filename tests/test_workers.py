"""run_workers: every item done once, the first failure stops all and reaches the caller, cancel."""

from __future__ import annotations

import itertools
import signal
import threading
from collections import Counter
from collections.abc import Iterator

import pytest

from core.progress import Cancelled, Meter
from core.workers import run_workers


class Boom(Exception):
    """A failure only these tests raise."""


def test_every_item_is_done_exactly_once_across_the_threads():
    done: Counter[int] = Counter()
    lock = threading.Lock()

    def worker(take: Iterator[int]) -> None:
        for item in take:
            with lock:
                done[item] += 1

    run_workers(range(20_000), worker, threads=4)

    assert done == Counter(range(20_000))  # each once; in whatever order the threads took them


def test_each_thread_runs_the_worker_once_and_tears_its_state_down():
    names: list[str] = []
    closed: list[str] = []

    def worker(take: Iterator[int]) -> None:
        names.append(threading.current_thread().name)
        try:
            for _ in take:
                pass
        finally:
            closed.append(threading.current_thread().name)

    run_workers(iter(()), worker, threads=3, name="bv-test")

    assert sorted(names) == sorted(closed) == ["bv-test-1", "bv-test-2", "bv-test-3"]


def test_the_first_failure_stops_the_others_and_is_raised_as_it_was():
    raised = Boom("item 100 is bad")
    began: list[str] = []
    ended: list[str] = []

    def worker(take: Iterator[int]) -> None:
        began.append(threading.current_thread().name)
        try:
            for item in take:
                if item == 100:
                    raise raised
        finally:
            ended.append(threading.current_thread().name)

    # An endless stream: only the stop ends the other threads.
    with pytest.raises(Boom) as info:
        run_workers(itertools.count(), worker, threads=4)

    assert info.value is raised
    assert any(entry.name == "worker" for entry in info.traceback)
    # Every thread that started had ended (and cleaned up) before the raise; one that
    # began after the failure was not given the worker at all.
    assert began and sorted(ended) == sorted(began)


def test_after_a_failure_no_further_item_is_taken():
    items = iter(range(100))

    def worker(take: Iterator[int]) -> None:
        for item in take:
            if item == 3:
                raise Boom("stop here")

    with pytest.raises(Boom):
        run_workers(items, worker, threads=1)

    assert next(items) == 4  # 0..3 were taken, nothing after the failure


def test_a_failing_item_source_fails_the_run():
    def source() -> Iterator[int]:
        yield 1
        raise Boom("the work list broke")

    def worker(take: Iterator[int]) -> None:
        for _ in take:
            pass

    with pytest.raises(Boom, match="the work list broke"):
        run_workers(source(), worker, threads=2)


def test_cancel_during_the_work_stops_every_thread_with_cancelled():
    cancel = threading.Event()
    meter = Meter("working", 0, None, cancel)

    def worker(take: Iterator[int]) -> None:
        for item in take:
            if item == 50:
                cancel.set()  # as the user would, from elsewhere, mid-run

    with pytest.raises(Cancelled):
        run_workers(itertools.count(), worker, threads=3, check_cancel=meter.check_cancel)


def test_cancel_before_the_start_does_no_item():
    cancel = threading.Event()
    cancel.set()
    done = []

    def worker(take: Iterator[int]) -> None:
        done.extend(take)

    with pytest.raises(Cancelled):
        run_workers(
            range(10), worker, threads=2, check_cancel=Meter("w", 0, None, cancel).check_cancel
        )

    assert done == []


def test_an_interrupt_in_the_waiting_caller_stops_the_workers_and_is_raised():
    assert threading.current_thread() is threading.main_thread()
    main = threading.main_thread().ident
    assert main is not None
    sent = threading.Event()
    began: list[str] = []
    ended: list[str] = []

    def worker(take: Iterator[int]) -> None:
        began.append(threading.current_thread().name)
        try:
            for item in take:
                if item == 10 and not sent.is_set():
                    sent.set()
                    signal.pthread_kill(main, signal.SIGINT)  # Ctrl-C, delivered to the caller
        finally:
            ended.append(threading.current_thread().name)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_workers(itertools.count(), worker, threads=2)
    finally:
        signal.signal(signal.SIGINT, previous)

    # The endless stream stopped: every thread that started on it had ended by the raise
    # (the interrupt may land while the second thread starts; then it takes nothing).
    assert began and sorted(ended) == sorted(began)
