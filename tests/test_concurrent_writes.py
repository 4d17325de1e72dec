"""ConcurrentWrites: writes start when their rows are ready, run beside the caller, and all end before it goes on."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from batch.lake import ConcurrentWrites


class Steps:
    """A `timed` stand-in that records which steps started and ended."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.ended: list[str] = []
        self.lock = threading.Lock()

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        with self.lock:
            self.started.append(name)
        try:
            yield
        finally:
            with self.lock:
                self.ended.append(name)


def test_a_write_runs_beside_the_caller_and_with_the_other_writes() -> None:
    steps = Steps()
    caller_went_on = threading.Event()
    both_running = threading.Barrier(2, timeout=10)
    with ConcurrentWrites(steps.timed) as writes:
        # The first write can only finish once the caller has gone past start() and started a second one.
        writes.start("state_log", lambda: caller_went_on.wait(10) and both_running.wait())
        caller_went_on.set()
        writes.start("segment_log", both_running.wait)
        writes.wait()
    assert sorted(steps.ended) == ["segment_log", "state_log"]
    assert not both_running.broken


def test_the_first_failure_is_raised_once_every_write_has_ended() -> None:
    steps = Steps()

    def fails() -> None:
        raise OSError("disk full")

    def slow() -> None:
        time.sleep(0.3)

    with pytest.raises(OSError, match="disk full"), ConcurrentWrites(steps.timed) as writes:
        writes.start("quarantine", fails)
        writes.start("segment_changes", slow)
    assert sorted(steps.ended) == ["quarantine", "segment_changes"]


def test_an_error_of_the_caller_wins_and_the_writes_still_end_first() -> None:
    steps = Steps()

    def fails() -> None:
        raise OSError("disk full")

    with pytest.raises(ValueError, match="scoring failed"), ConcurrentWrites(steps.timed) as writes:
        writes.start("state_log", fails)
        writes.start("slow", lambda: time.sleep(0.3))
        raise ValueError("scoring failed")
    assert sorted(steps.ended) == ["slow", "state_log"]


def test_wait_returns_with_nothing_started_and_can_be_called_again() -> None:
    steps = Steps()
    with ConcurrentWrites(steps.timed) as writes:
        writes.wait()
        writes.start("one", lambda: None)
        writes.wait()
        writes.start("two", lambda: None)
    assert steps.ended == ["one", "two"]
