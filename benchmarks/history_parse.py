"""`python -m benchmarks.history_parse`: what parsing quoted newlines as CSV does (multiLine) costs.

The same generated history is read and validated (`read_history` + `validate_history`, counting the kept
rows) with multiLine on, as the product reads it, and off (splittable, but a quoted newline splits a
record), alternating, in one run and one session. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from batch.generate import write_history_csv
from batch.load import read_history
from batch.validate import REASON, validate_history
from benchmarks.toolkit import markdown_table
from flo_seg.settings import default_spark_settings
from flo_seg.spark import build_session


def main(argv: Sequence[str] | None = None) -> int:
    """Time read + validate of one history file with multiLine on and off."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.history_parse", description=__doc__)
    parser.add_argument("--customers", type=int, default=1_000_000, help="rows generated (default 1000000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per mode after one warm-up (default 3)")
    parser.add_argument("--work", default="/tmp/flo-history-parse", help="folder for the generated CSV")
    parser.add_argument("--driver-memory", default="8g", help="Spark driver memory (default 8g)")
    args = parser.parse_args(argv)

    csv_path = Path(args.work) / f"history-{args.customers}.csv"
    if not csv_path.exists():
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        write_history_csv(csv_path, customers=args.customers, seed=42)
    spark = build_session(replace(default_spark_settings("flo-bench-history-parse"), driver_memory=args.driver_memory))
    seconds: dict[bool, list[float]] = {True: [], False: []}
    for run in range(args.repeats + 1):
        for multi_line in (True, False):
            started = time.monotonic()
            kept = (
                validate_history(read_history(spark, str(csv_path), multi_line=multi_line))
                .where(f"{REASON} IS NULL")
                .count()
            )
            if run:  # the first round warms the JVM up
                seconds[multi_line].append(time.monotonic() - started)
            assert kept == args.customers, f"multiLine={multi_line}: kept {kept} of {args.customers}"
    size_mib = csv_path.stat().st_size / 2**20
    print(f"{args.customers} customers, {size_mib:.0f} MiB, {os.cpu_count()} cores, {spark.sparkContext.master}")
    rows = [
        (
            "on (product)" if multi_line else "off",
            f"{statistics.median(seconds[multi_line]):.1f}",
            ", ".join(f"{s:.1f}" for s in seconds[multi_line]),
        )
        for multi_line in (True, False)
    ]
    print(markdown_table(["multiLine", "median s", "runs s"], rows))
    on, off = statistics.median(seconds[True]), statistics.median(seconds[False])
    print(f"multiLine costs {on / off:.2f}x the splittable read ({on - off:+.1f} s)")
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
