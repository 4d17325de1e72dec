"""`python -m benchmarks.batch_steps`: where a state-store micro-batch spends its time, per variant.

The product's `start_stream` on a copy of a benchmark lake (built by `benchmarks.streaming`), a fresh
checkpoint and topic, the project's producer at `--rate` for `--seconds`, no compaction thread. Prints
per variant the steady-state means (batches from the fourth on, with over 1,000 events) of the batch
time, its query planning and the handler's steps. Variants (the candidates in docs/benchmarks.md):

- `product`: as `flo-seg stream` runs;
- `delta-bootstrap`: the state store's initial state planned from the pinned Delta tables, as before
  the Parquet snapshot;
- `no-stats`: Delta appends without file statistics (`spark.databricks.delta.stats.collect=false`);
- `checkpoint-10`: the logs checkpointed every 10 commits (Delta's default), as before;
- `checkpoint-100`: all three logs, `segment_changes` too, checkpointed every 100 commits.

The `one-dedup` and `no-dedup` variants of the de-duplication spike (docs/benchmarks.md) ran at the
revision that added them, when de-duplication was two stateful operators before the state step.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession

import streaming.job as job
from batch.compact import log_version
from benchmarks.streaming import MetricsRecorder, produce_in_process
from devstack.stack import TopicSpec, ensure_topics
from flo_seg.settings import LakeSettings, default_spark_settings
from flo_seg.spark import build_session
from schemas.tables import CUSTOMER_SEGMENTS, CUSTOMER_STATE, SEGMENT_CHANGES, SEGMENT_LOG, STATE_LOG
from streaming.customer_state import bootstrap_state
from streaming.job import StreamSettings, prepare_tables, start_stream
from streaming.produce import ProduceSettings
from streaming.run import stop_between_batches

VARIANTS = ("product", "delta-bootstrap", "no-stats", "checkpoint-10", "checkpoint-100")
STEPS = ("state step", "plan", "score", "publish", "writes", "unpersist", "model check")


def pinned_delta_bootstrap(spark: SparkSession, lake: LakeSettings, checkpoint: str) -> DataFrame:
    """The initial state as it was planned before the snapshot: time-travel reads of both tables."""
    tables = [
        spark.read.format("delta").option("versionAsOf", log_version(spark, lake, name)).load(lake.table(name))
        for name in (CUSTOMER_STATE, CUSTOMER_SEGMENTS)
    ]
    return bootstrap_state(*tables)


def run_variant(spark: SparkSession, args: argparse.Namespace, variant: str) -> dict[str, float]:
    """One fresh lake copy, checkpoint and topic; the steady-state means of its micro-batches."""
    work = args.work / "batch-steps" / variant
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(args.lake, work / "lake")
    lake = LakeSettings(root=str(work / "lake"))
    topic = f"flo.batch-steps.{variant}.{int(time.time())}"
    ensure_topics(args.bootstrap_servers, [TopicSpec(name=topic, partitions=2)])
    settings = StreamSettings(
        bootstrap_servers=args.bootstrap_servers,
        checkpoint=str(work / "checkpoint"),
        topic=topic,
        changes_topic=None,
        query_name=f"batch-steps-{variant}",
    )
    original = job.bootstrap
    spark.conf.set("spark.databricks.delta.stats.collect", "false" if variant == "no-stats" else "true")
    if variant == "delta-bootstrap":
        job.bootstrap = pinned_delta_bootstrap
    if variant in ("checkpoint-10", "checkpoint-100"):
        interval = variant.removeprefix("checkpoint-")
        prepare_tables(spark, lake)
        for name in (STATE_LOG, SEGMENT_LOG, SEGMENT_CHANGES):
            spark.sql(
                f"ALTER TABLE delta.`{lake.table(name)}` SET TBLPROPERTIES ('delta.checkpointInterval' = '{interval}')"
            )
    recorder = MetricsRecorder()
    try:
        query = start_stream(spark, lake, settings, recorder)
    finally:
        job.bootstrap = original
    produce = ProduceSettings(
        bootstrap_servers=args.bootstrap_servers,
        topic=topic,
        duration_s=args.seconds,
        rate=args.rate,
        seed=args.seed,
        event_seconds=1.0 / args.rate,
    )
    producer = threading.Thread(target=produce_in_process, args=(produce, args.profiles, work / "produce.json"))
    producer.start()
    producer.join()
    time.sleep(8)
    stop_between_batches(query)
    spark.streams.removeListener(recorder)
    steady = [p for p in query.recentProgress if p.batchId >= 3 and p.numInputRows > 1000]
    if not steady:
        raise RuntimeError(f"{variant}: no steady-state batch")
    out = {
        "batches": float(len(steady)),
        "events": statistics.mean(p.numInputRows for p in steady),
        "batch_s": statistics.mean(p.durationMs["triggerExecution"] for p in steady) / 1000.0,
        "planning_s": statistics.mean(p.durationMs.get("queryPlanning", 0) for p in steady) / 1000.0,
        "max_writes_s": max(recorder.metrics[p.batchId].steps.get("writes", 0.0) for p in steady),
    }
    for step in STEPS:
        out[step] = statistics.mean(recorder.metrics[p.batchId].steps.get(step, 0.0) for p in steady)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batch_steps", description=__doc__)
    parser.add_argument("--lake", type=Path, required=True, help="a benchmark lake, e.g. <work>/lake-1000000-s42-k4")
    parser.add_argument("--profiles", type=Path, required=True, help="its producer profiles (<lake>.profiles.pkl)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--rate", type=float, default=1000.0, help="orders per second (default 1000)")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to produce (default 60)")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--work", type=Path, default=Path("/tmp/flo-sbench"))
    parser.add_argument("--bootstrap-servers", default="127.0.0.1:9092")
    parser.add_argument("--driver-memory", default="8g")
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    spark = build_session(replace(default_spark_settings("flo-seg-batch-steps"), driver_memory=args.driver_memory))
    columns = ["batches", "events", "batch_s", "planning_s", *STEPS, "max_writes_s"]
    print("| variant | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for variant in variants:
        found = run_variant(spark, args, variant)
        print(f"| {variant} | " + " | ".join(f"{found[c]:,.3f}" for c in columns) + " |", flush=True)
    spark.stop()
    return 0


if __name__ == "__main__":
    multiprocessing.freeze_support()
    sys.exit(main())
