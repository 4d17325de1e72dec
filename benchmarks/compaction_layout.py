"""`python -m benchmarks.compaction_layout`: what one compaction round costs with and without deletion vectors.

`customer_state` and `customer_segments` are copy-on-write (no deletion vectors), so that delta-rs'
`to_pandas()`, which refuses tables whose protocol has that reader feature, opens them; the compaction's
MERGE then rewrites every data file it touches instead of marking replaced rows in a small file. This
measures what that costs the compaction, the one writer of those tables: a copy of `--lake`'s two tables
per variant, then `--rounds` rounds of `--customers` random customers (a few seconds of stream at 5,000
events/s) appended to both logs with a newer `state_seq`, and each round compacted by the product's
`compact_lake`. Variants: `copy-on-write` (the tables as created) and `deletion-vectors`
(`delta.enableDeletionVectors` true, as before 2026-12-06). Prints the median seconds per log and per
round (the first round left out as warm-up) and the files each MERGE rewrote."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from delta.tables import DeltaTable
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from batch.compact import compact_lake, prepare_logs
from batch.lake import append_table, read_table
from flo_seg.settings import LakeSettings, default_spark_settings
from flo_seg.spark import build_session
from schemas.tables import CUSTOMER_SEGMENTS, CUSTOMER_STATE, SEGMENT_LOG, STATE_LOG, TABLE_SCHEMAS, conform

VARIANTS = ("deletion-vectors", "copy-on-write")
TARGETS = ((CUSTOMER_STATE, STATE_LOG), (CUSTOMER_SEGMENTS, SEGMENT_LOG))


def copy_variant(spark: SparkSession, source: Path, work: Path, variant: str) -> LakeSettings:
    """The two customer tables of `source` in a lake of their own, set up for `variant`."""
    root = work / variant
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for name, _ in TARGETS:
        shutil.copytree(source / name, root / name)
    lake = LakeSettings(root=str(root))
    prepare_logs(spark, lake)  # sets the tables' contract properties: copy-on-write
    if variant == "deletion-vectors":  # the rounds compact with prepared=True, so this stays
        for name, _ in TARGETS:
            spark.sql(f"ALTER TABLE delta.`{root / name}` SET TBLPROPERTIES ('delta.enableDeletionVectors' = 'true')")
    return lake


def append_round(spark: SparkSession, lake: LakeSettings, customers: int, seed: int, total: int) -> None:
    """`customers` random customers appended to both logs, each one state update newer than the tables."""
    fraction = min(1.0, 1.2 * customers / total)
    for name, log_name in TARGETS:
        rows = (
            read_table(spark, lake, name)
            .sample(fraction=fraction, seed=seed)
            .limit(customers)
            .withColumn("state_seq", F.coalesce(F.col("state_seq"), F.lit(0)) + seed)
            .withColumn("batch_id", F.lit(seed).cast("long"))
            .withColumn("source", F.lit("benchmark"))
        )
        append_table(conform(rows, TABLE_SCHEMAS[log_name]), lake, log_name)


def files_rewritten(spark: SparkSession, lake: LakeSettings, name: str) -> dict[str, int]:
    """The last MERGE's file and deletion vector counts, from the table's history."""
    metrics = DeltaTable.forPath(spark, lake.table(name)).history(1).collect()[0]["operationMetrics"]
    keys = ("numTargetFilesRemoved", "numTargetFilesAdded", "numTargetDeletionVectorsAdded", "numTargetRowsUpdated")
    return {k: int(metrics.get(k, 0)) for k in keys}


def run_variant(spark: SparkSession, lake: LakeSettings, rounds: int, customers: int) -> dict[str, object]:
    total = read_table(spark, lake, CUSTOMER_STATE).count()
    per_round = []
    for i in range(1, rounds + 1):
        append_round(spark, lake, customers, seed=i, total=total)
        started = time.perf_counter()
        done = compact_lake(spark, lake, prepared=True)
        wall = time.perf_counter() - started
        per_round.append(
            {
                "wall_s": round(wall, 3),
                **{d.log: round(d.seconds, 3) for d in done},
                "customers": [d.customers for d in done],
                **{f"{name}_merge": files_rewritten(spark, lake, name) for name, _ in TARGETS},
            }
        )
        print(f"  round {i}: {per_round[-1]}", file=sys.stderr, flush=True)
    timed = per_round[1:] or per_round
    return {
        "rounds": per_round,
        "median_wall_s": round(statistics.median(float(r["wall_s"]) for r in timed), 3),  # type: ignore[arg-type]
        **{
            f"median_{log_name}_s": round(statistics.median(float(r[log_name]) for r in timed), 3)  # type: ignore[arg-type]
            for _, log_name in TARGETS
        },
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compaction_layout", description=__doc__)
    parser.add_argument("--lake", type=Path, required=True, help="a trained lake (read only; its tables are copied)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/flo-compaction-layout"), help="scratch folder")
    parser.add_argument("--customers", type=int, default=25_000, help="customers per round (default 25000)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per variant, the first is warm-up (default 4)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated of {', '.join(VARIANTS)}")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    spark = build_session(default_spark_settings("flo-seg-compaction-layout"))
    results: dict[str, object] = {"load_average_at_start": os.getloadavg(), "customers_per_round": args.customers}
    for variant in variants:
        print(f"{variant}:", file=sys.stderr, flush=True)
        lake = copy_variant(spark, args.lake.resolve(), args.work, variant)
        results[variant] = run_variant(spark, lake, args.rounds, args.customers)
    print(f"{os.cpu_count()} cores, load average at start {results['load_average_at_start']}")
    print("| variant | median s per round | state_log → customer_state | segment_log → customer_segments |")
    print("| --- | ---: | ---: | ---: |")
    for variant in variants:
        r = results[variant]
        assert isinstance(r, dict)
        medians = [r["median_wall_s"], r["median_state_log_s"], r["median_segment_log_s"]]
        print(f"| {variant} | " + " | ".join(f"{m:.2f}" for m in medians) + " |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
