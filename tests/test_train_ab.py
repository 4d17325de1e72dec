"""benchmarks/train_ab.py reads step times from train's progress lines; train_warm.py writes them."""

from __future__ import annotations

from benchmarks.train_ab import steps


def test_step_times_come_from_the_done_lines_only() -> None:
    log_text = "\n".join(
        [
            "2026-12-02 04:15:59,907 INFO batch.train: reading and validating h.csv ...",
            "2026-12-02 04:16:11,903 INFO batch.train: reading and validating h.csv done in 12.0s",
            "2026-12-02 04:16:13,955 INFO batch.train: training on 50000 customers, analysis date 2021-06-01",
            "2026-12-02 04:16:54,514 INFO batch.train: scoring and writing tables done in 16.5s",
            "2026-12-02 04:16:55,000 WARNING other: something done in 3.0s",
        ]
    )
    assert steps(log_text) == {"reading and validating h.csv": 12.0, "scoring and writing tables": 16.5}


def test_train_warm_runs_the_writes_in_turn_and_times_each_as_a_step() -> None:
    import logging

    from batch.train import step
    from benchmarks.train_warm import _Lines, one_at_a_time

    done: list[str] = []
    handler = _Lines()
    log = logging.getLogger("batch.train")
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.INFO)
    try:
        one_at_a_time({"a": lambda: done.append("a"), "b": lambda: done.append("b")}, step)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    assert done == ["a", "b"]
    assert set(steps("\n".join(handler.lines))) == {"write a", "write b"}
