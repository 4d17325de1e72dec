"""`python -m benchmarks.stream_run`: what one short `flo-seg stream --available-now` run costs beside its orders.

Trains once on generated customers (or `--history`) into a temporary lake. Then, per round and variant,
on a fresh copy of that lake and a fresh checkpoint: `--events` orders from `flo-seg produce`'s generator
as one file of Kafka-shaped records (the file source the tests use in place of Kafka), through the
product's `start_stream` to the end (available-now), then the compaction a stopping `flo-seg stream`
runs. Variants, in the same JVM, alternating, after one warm-up run that is not counted:

- `product`: as `flo-seg stream` runs;
- `no-data-batches`: Spark's default, as before: a batch without data after each batch that moves the
  de-duplication watermark;
- `describe-detail`: table properties and features read with DESCRIBE DETAIL, as before (a snapshot
  computation per table at every start and compaction).

Prints, per variant, the median seconds of the start (`start_stream`: table checks, the start-up
compaction, the bootstrap snapshot, planning), the run (its batches), the compaction and the whole, the
batches the checkpoint committed, and each run's total.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from delta.tables import DeltaTable
from pyspark.sql import SparkSession

import batch.lake
import streaming.job
from batch.compact import compact_lake
from batch.generate import write_history_csv
from batch.train import run_train
from benchmarks.drift import write_orders
from benchmarks.toolkit import machine, markdown_table, uptime
from flo_seg.settings import LakeSettings, TrainSettings, default_spark_settings
from flo_seg.spark import build_session
from streaming.job import StreamSettings, file_records, start_stream

VARIANTS = ("product", "no-data-batches", "describe-detail")
COLUMNS = ("start", "run", "compaction", "total")


def described_detail(spark: SparkSession, lake: LakeSettings, name: str) -> tuple[dict[str, str], set[str]]:
    """`batch.lake.table_detail` as it was: DESCRIBE DETAIL, which also counts the table's files."""
    row = DeltaTable.forPath(spark, lake.table(name)).detail().select("properties", "tableFeatures").first()
    if row is None:
        return {}, set()
    return dict(row["properties"] or {}), set(row["tableFeatures"] or [])


@contextmanager
def variant_in_effect(variant: str) -> Iterator[None]:
    """The product's code with the variant's one difference, restored afterwards."""
    conf = dict(streaming.job.STREAM_SESSION_CONF)
    detail = batch.lake.table_detail
    if variant == "no-data-batches":
        streaming.job.STREAM_SESSION_CONF["spark.sql.streaming.noDataMicroBatches.enabled"] = "true"
    elif variant == "describe-detail":
        batch.lake.table_detail = described_detail
    try:
        yield
    finally:
        streaming.job.STREAM_SESSION_CONF.clear()
        streaming.job.STREAM_SESSION_CONF.update(conf)
        batch.lake.table_detail = detail


def timed(action: Callable[[], object]) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


def one_run(spark: SparkSession, trained: LakeSettings, records: Path, work: Path, variant: str) -> dict[str, float]:
    """A copy of the trained lake, a new checkpoint, the records to the end, then the compaction."""
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(trained.root, work / "lake")
    lake = LakeSettings(root=str(work / "lake"))
    settings = StreamSettings(
        bootstrap_servers="unused:9092",  # the source is files; changes are not published
        checkpoint=str(work / "checkpoint"),
        topic="orders",
        changes_topic=None,
        available_now=True,
    )
    with variant_in_effect(variant):
        started = time.monotonic()
        query = start_stream(spark, lake, settings, source=file_records(str(records)))
        start = time.monotonic() - started
        try:
            run = timed(query.awaitTermination)
            if query.exception() is not None:
                raise RuntimeError(f"{variant}: {query.exception()}")
        finally:
            query.stop()
        compaction = timed(lambda: compact_lake(spark, lake))
    commits = [f for f in (work / "checkpoint" / "commits").iterdir() if f.name.isdigit()]
    return {
        "start": start,
        "run": run,
        "compaction": compaction,
        "total": start + run + compaction,
        "batches": float(len(commits)),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stream_run", description=__doc__)
    parser.add_argument("--history", help="history CSV to train on (default: generated customers)")
    parser.add_argument("--customers", type=int, default=4_000, help="generated customers (default 4000)")
    parser.add_argument("--events", type=int, default=300, help="orders in the run (default 300)")
    parser.add_argument("--rounds", type=int, default=3, help="counted runs per variant (default 3)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    spark = build_session(dataclasses.replace(default_spark_settings("flo-seg-stream-run"), master="local[2]"))
    print(f"machine: {machine(spark)}\nload at start: {uptime()}", flush=True)
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        history = args.history
        if history is None:
            history = str(root / "history.csv")
            write_history_csv(history, customers=args.customers, seed=args.seed)
        trained = LakeSettings(root=str(root / "trained"))
        run_train(spark, trained, TrainSettings(k=3, seed=1), history_path=history)
        write_orders(spark, trained, root / "records", args.events, args.seed)
        one_run(spark, trained, root / "records", root / "warm-up", variants[0])
        for n in range(args.rounds):
            for variant in variants:
                found = one_run(spark, trained, root / "records", root / "run", variant)
                runs[variant].append(found)
                print(f"round {n + 1} {variant}: {found['total']:.1f} s, {found['batches']:.0f} batch(es)", flush=True)
    rows = []
    for variant, measured in runs.items():
        medians = [f"{statistics.median(r[c] for r in measured):.1f}" for c in COLUMNS]
        batches = "/".join(sorted({f"{r['batches']:.0f}" for r in measured}))
        each = ", ".join(f"{r['total']:.1f}" for r in measured)
        rows.append([variant, *medians, batches, each])
    headers = ["variant", *(f"{c} s" for c in COLUMNS), "batches", "runs (total s)"]
    print(markdown_table(headers, rows, align="lrrrrrl"))
    print(f"load at end: {uptime()}")
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
