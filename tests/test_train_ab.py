"""benchmarks/train_ab.py reads step times from train's progress lines."""

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
