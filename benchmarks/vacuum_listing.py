"""`python -m benchmarks.vacuum_listing`: VACUUM's file listing under a local master, by listing parallelism.

Delta's VACUUM lists a table's folders in `spark.sql.sources.parallelPartitionDiscovery.parallelism` tasks.
Spark's default is 10000, which on one machine is 10000 nearly empty tasks; the session factory sets the
local core count instead. This builds a table of `--commits` small appends and times VACUUM (retain 168 h,
so nothing is deleted) `--repeats` times at each setting, alternating, in one session: Spark's default is
the baseline, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from delta.tables import DeltaTable

from benchmarks.toolkit import machine, markdown_table
from flo_seg.settings import default_spark_settings
from flo_seg.spark import LISTING_PARALLELISM, build_session

SPARK_DEFAULT = "10000"


def main(argv: Sequence[str] | None = None) -> int:
    """Build the table, time VACUUM at both settings, print the machine and a table of medians."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.vacuum_listing", description=__doc__)
    parser.add_argument("--commits", type=int, default=12, help="small appends in the table (default 12)")
    parser.add_argument("--repeats", type=int, default=3, help="VACUUMs per setting (default 3)")
    parser.add_argument("--master", default="local[2]", help="Spark master (default local[2])")
    args = parser.parse_args(argv)

    spark = build_session(replace(default_spark_settings("flo-seg-vacuum-listing"), master=args.master, ui=False))
    local = str(spark.conf.get(LISTING_PARALLELISM))
    print(json.dumps(machine(spark), indent=2))
    work = Path(tempfile.mkdtemp(prefix="flo-vacuum-"))
    try:
        path = str(work / "table")
        for _ in range(args.commits):
            spark.range(100).write.format("delta").mode("append").save(path)
        seconds: dict[str, list[float]] = {SPARK_DEFAULT: [], local: []}
        DeltaTable.forPath(spark, path).vacuum(168)  # warm-up: the first VACUUM loads its classes
        for _ in range(args.repeats):
            for setting in seconds:
                spark.conf.set(LISTING_PARALLELISM, setting)
                started = time.perf_counter()
                DeltaTable.forPath(spark, path).vacuum(168)
                seconds[setting].append(time.perf_counter() - started)
        spark.conf.set(LISTING_PARALLELISM, local)
        base = statistics.median(seconds[SPARK_DEFAULT])
        rows = [
            (
                f"{setting} ({'Spark default, baseline' if setting == SPARK_DEFAULT else 'local cores'})",
                f"{statistics.median(times):.2f}",
                f"{min(times):.2f}",
                f"{max(times):.2f}",
                f"{base / statistics.median(times):.1f}x",
            )
            for setting, times in seconds.items()
        ]
        print(markdown_table(["listing parallelism", "median s", "min s", "max s", "speed-up"], rows, align="lrrrr"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
