"""`python -m benchmarks.append_costs`: what one small Delta append costs, alone and three at once, per table setting.

A micro-batch appends a few thousand rows to each of its logs, at once. This appends `--rows` rows of a
lake's customer_segments (cached, two partitions) `--repeats` times to fresh tables created with the logs'
properties, one table at a time or `--parallel` tables at once, and prints the median seconds per
append and per round (the wall of the appends at once), the first two rounds left out as warm-up. Variants:

- `default`: the logs' properties before, per-column statistics on the first 32 columns;
- `no-column-stats`: `delta.dataSkippingNumIndexedCols` 0, as the logs are created now;
- `no-column-stats-no-crc`: also no checksum file per commit (a session setting, not used by the product).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pyspark.sql import DataFrame

from batch.lake import read_table
from flo_seg.settings import LakeSettings, default_spark_settings
from flo_seg.spark import build_session

LOG_PROPERTIES = {"delta.checkpointInterval": "100", "delta.enableChangeDataFeed": "true"}
NO_COLUMN_STATS = {"delta.dataSkippingNumIndexedCols": "0"}
NO_CRC = {"spark.databricks.delta.writeChecksumFile.enabled": "false"}
VARIANTS: dict[str, tuple[dict[str, str], dict[str, str]]] = {  # table properties, session settings
    "default": ({}, {}),
    "no-column-stats": (NO_COLUMN_STATS, {}),
    "no-column-stats-no-crc": (NO_COLUMN_STATS, NO_CRC),
}


def create(rows: DataFrame, path: Path, properties: dict[str, str]) -> None:
    """A table with one row, created with the logs' properties plus `properties`."""
    shutil.rmtree(path, ignore_errors=True)
    writer = rows.limit(1).write.format("delta")
    for key, value in {**LOG_PROPERTIES, **properties}.items():
        writer = writer.option(key, value)
    writer.save(str(path))


def timed_append(rows: DataFrame, path: Path, tag: str) -> float:
    """Seconds to append `rows` to the table at `path` in one tagged commit."""
    started = time.perf_counter()
    rows.write.format("delta").mode("append").option("userMetadata", tag).save(str(path))
    return time.perf_counter() - started


def measure(rows: DataFrame, work: Path, variant: str, parallel: int, repeats: int) -> tuple[float, float]:
    """(median seconds per append, median seconds per round) after two warm-up rounds."""
    properties, settings = VARIANTS[variant]
    spark = rows.sparkSession
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        paths = [work / f"{variant}-x{parallel}-{i}" for i in range(parallel)]
        for path in paths:
            create(rows, path, properties)
        each: list[float] = []
        rounds: list[float] = []
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            for round_no in range(repeats):
                started = time.perf_counter()
                tag = f"bench:{round_no}"
                took = list(pool.map(lambda p, t=tag: timed_append(rows, p, t), paths))
                rounds.append(time.perf_counter() - started)
                if round_no >= 2:
                    each += took
        return statistics.median(each), statistics.median(rounds[2:])
    finally:
        for key in settings:
            spark.conf.unset(key)


def main(argv: Sequence[str] | None = None) -> int:
    """Time the appends of each variant, alone and at once, twice over, and print the table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.append_costs", description=__doc__)
    parser.add_argument("--lake", required=True, help="a trained lake whose customer_segments gives the rows")
    parser.add_argument("--rows", type=int, default=5000, help="rows per append (default 5000)")
    parser.add_argument("--repeats", type=int, default=12, help="rounds per variant, 2 of them warm-up (default 12)")
    parser.add_argument("--parallel", type=int, default=3, help="tables appended to at once (default 3)")
    args = parser.parse_args(argv)
    if args.repeats < 3:
        parser.error("--repeats must be at least 3 (two rounds are warm-up)")
    spark = build_session(default_spark_settings("flo-seg-append-costs"))
    rows = read_table(spark, LakeSettings(root=args.lake), "customer_segments").limit(args.rows).repartition(2)
    rows = rows.persist()
    rows.count()
    print("| pass | variant | tables at once | median s per append | median s per round |")
    print("|---:|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="flo-append-costs-") as tmp:
        for pass_no in (1, 2):
            for variant in VARIANTS:
                for parallel in sorted({1, args.parallel}):
                    each, wall = measure(rows, Path(tmp), variant, parallel, args.repeats)
                    print(f"| {pass_no} | {variant} | {parallel} | {each:.3f} | {wall:.3f} |", flush=True)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
