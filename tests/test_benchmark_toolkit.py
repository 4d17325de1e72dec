"""benchmarks/toolkit.py: the Markdown table, the CPU meter and the machine facts the benchmarks share."""

from __future__ import annotations

import time

import pytest

from benchmarks.toolkit import CpuMeter, cpu_model, markdown_table, uptime


def test_markdown_table_renders_two_by_two() -> None:
    assert markdown_table(["size", "seconds"], [["1,000", 1.5], ["real", None]]) == (
        "| size | seconds |\n|---|---|\n| 1,000 | 1.5 |\n| real | None |"
    )


def test_markdown_table_right_aligns_the_columns_asked_for() -> None:
    assert markdown_table(["a", "b"], [[1, 2], [3, 4]], align="lr") == "| a | b |\n|---|---:|\n| 1 | 2 |\n| 3 | 4 |"


def test_markdown_table_refuses_a_row_of_the_wrong_width() -> None:
    with pytest.raises(ValueError, match="2 cells for 3 headers"):
        markdown_table(["a", "b", "c"], [[1, 2]])


def test_cpu_meter_reports_non_negative_cores_after_a_busy_loop() -> None:
    meter = CpuMeter()
    deadline = time.monotonic() + 0.2
    total = 0
    while time.monotonic() < deadline:
        total += sum(range(1000))
    found = meter.stop()
    assert total > 0
    assert set(found) == {"machine_busy_cores", "benchmark_cores", "other_cores", "load_before", "load_after"}
    assert all(isinstance(v, float) and v >= 0.0 for v in found.values()), found


def test_cpu_model_and_uptime_are_non_empty_strings() -> None:
    assert isinstance(cpu_model(), str) and cpu_model().strip()
    assert isinstance(uptime(), str) and "load average" in uptime()
