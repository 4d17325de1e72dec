"""Stopping the stream waits for the running micro-batch instead of interrupting it."""

from __future__ import annotations

from typing import Any

from streaming.run import stop_between_batches


class FakeQuery:
    """A query whose trigger is busy for the first `busy_polls` status reads."""

    def __init__(self, busy_polls: int) -> None:
        self.busy_polls = busy_polls
        self.isActive = True
        self.log: list[str] = []

    @property
    def status(self) -> dict[str, Any]:
        busy = self.busy_polls > 0
        self.busy_polls -= 1
        self.log.append("busy" if busy else "idle")
        return {"isTriggerActive": busy}

    def stop(self) -> None:
        self.log.append("stop")
        self.isActive = False


def test_stop_waits_for_the_running_batch() -> None:
    query = FakeQuery(busy_polls=3)
    stop_between_batches(query)  # type: ignore[arg-type]
    assert query.log == ["busy", "busy", "busy", "idle", "stop"]


def test_stop_gives_up_waiting_after_the_timeout() -> None:
    query = FakeQuery(busy_polls=10**9)
    stop_between_batches(query, timeout_s=0.3)  # type: ignore[arg-type]
    assert query.log[-1] == "stop" and not query.isActive
