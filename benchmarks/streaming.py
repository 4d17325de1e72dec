"""`python -m benchmarks.streaming`: sustained throughput, end-to-end latency and a naive MERGE baseline.

Everything runs in one local SparkSession against the shared Kafka broker:

1. the lake: `--customers` generated customers, `run_train` with k fixed; built once per size and cached
   under `--work`, then copied for every run so each run starts from the same tables;
2. a fresh topic pre-filled with `--events` valid orders by the project's producer (timed on its own);
3. throughput: the product's stream (`start_stream`: state in the state store, available-now, fresh
   checkpoint, fresh changes topic) and today's MERGE design (`benchmarks.merge_design`) each drain the
   topic once per `--max-offsets` value; events/s = Kafka rows over the span from the first batch's
   start to the last batch's end (query progress), with a per-batch breakdown rebuilt from the Delta
   commit log (each idempotent write carries its batch id as `txnVersion`); the product's compaction
   after the drain is timed apart;
4. baseline: the Delta documentation's upsert-from-foreachBatch pattern, one MERGE of the raw
   micro-batch rows into customer_state, on the same topic and trigger sizes (see `NAIVE_VARIANTS`);
5. latency: each of `--designs` on a processing-time trigger while a separate producer process sends
   at each `--rates` value; latency from the event's Kafka timestamp (stamped by the producer when it
   sends) to the Kafka timestamp of the last segment change its micro-batch published (the target's
   latency; over the events of batches that published one), and to the end of that micro-batch (its
   Delta appends are committed by then). The product runs with its background compaction; how far
   customer_state and customer_segments lagged the stream is reported beside.

A Markdown report with MET/MISSED verdicts goes to stdout, all numbers to the JSON file `--out`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import multiprocessing
import os
import pickle
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from delta.tables import DeltaTable
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from batch.compact import Compactor, compact_lake
from batch.generate import write_history_csv
from batch.lake import read_table
from batch.train import run_train
from benchmarks.merge_design import start_merge_stream
from benchmarks.toolkit import CpuMeter, machine, markdown_table, uptime
from devstack.stack import TopicSpec, admin_client, ensure_topics
from flo_seg.settings import REPO_ROOT, LakeSettings, TrainSettings, default_spark_settings
from flo_seg.spark import build_session
from schemas.tables import (
    COMPACTIONS,
    CUSTOMER_SEGMENTS,
    CUSTOMER_STATE,
    SEGMENT_CHANGES,
    SEGMENT_LOG,
    STATE_LOG,
    STREAM_CLOCK,
)
from streaming.events import parse_order_events, valid_orders
from streaming.job import BatchLogger, BatchMetrics, StreamSettings, start_stream
from streaming.produce import CustomerProfiles, ProduceSettings, load_profiles, run_produce
from streaming.run import PROCESS, THREAD, CompactionProcess, stop_between_batches
from streaming.state import CENTS, state_merge_inserts, state_merge_updates

log = logging.getLogger("benchmarks.streaming")

# The issue's targets.
TARGET_EVENTS_PER_S = 100_000.0
TARGET_P99_S = 2.0
TARGET_P99_RATE = 5_000.0
TARGET_SPEEDUP = 5.0
TARGET_DESIGN_THROUGHPUT = 10.0  # x the MERGE design's events/s
TARGET_DESIGN_P99 = 20.0  # x lower p99 than the MERGE design's
TARGET_FRESHNESS_S = 30.0

PRODUCT = "product"  # the state-store design (streaming.job)
MERGE_DESIGN = "merge"  # today's MERGE design (benchmarks.merge_design), the issue's comparison
DESIGNS: tuple[str, ...] = (PRODUCT, MERGE_DESIGN)
# Where the product's compaction runs during a latency run: a thread of the stream's own session, as
# `flo-seg stream` runs by default, or `flo-seg compact --every` in a process of its own at the lowest
# CPU priority (`nice -n 19`), beside `flo-seg stream --compact-seconds 0`.
COMPACTION_PLACES = (THREAD, PROCESS)
# The Delta docs' foreachBatch upsert merges the raw micro-batch with `whenMatchedUpdateAll`. Orders are
# counted, not replaced, so the raw rows become per-order increments (the product's own SET clauses),
# and Delta rejects two source rows for one target row. Hence three readings of "the naive pattern":
NAIVE_RAW = "naive-raw"  # literally one MERGE of every raw row: fails once a customer orders twice in a batch
NAIVE_ROUNDS = "naive-rounds"  # one such MERGE per round holding each customer's k-th order: correct counts
NAIVE_LATEST = "naive-latest"  # the docs' dedupe to the latest row per key, one MERGE: drops orders (wrong)
NAIVE_VARIANTS: tuple[str, ...] = (NAIVE_RAW, NAIVE_ROUNDS, NAIVE_LATEST)
BASELINE = NAIVE_ROUNDS

# Phases of one micro-batch per design, each ending at a commit (table, txnAppId suffix); see `design_batches`.
PHASES: dict[str, tuple[tuple[str, str, str | None, str | None], ...]] = {
    # The product's appends run at once: its step table (BatchMetrics.steps) says more than commits.
    PRODUCT: (
        ("logged", "Kafka read + parse + dedupe + state step + score + appends", SEGMENT_LOG, "segment_log:stream"),
        ("end", "publish (sweep, clock) + offsets + state store commit", None, None),
    ),
    MERGE_DESIGN: (
        ("state", "Kafka read + parse + dedupe + customer_state MERGE", CUSTOMER_STATE, "state"),
        ("changes", "re-score + diff + segment_changes append", SEGMENT_CHANGES, "changes"),
        ("segments", "customer_segments MERGE", CUSTOMER_SEGMENTS, "segments"),
        ("clock", "publish changes to Kafka + stream_clock write", STREAM_CLOCK, "clock"),
        ("end", "offsets + state store commit", None, None),
    ),
}
MERGE_METRICS = (
    "numSourceRows",
    "numTargetRowsUpdated",
    "numTargetRowsInserted",
    "numTargetRowsCopied",
    "numTargetFilesRemoved",
    "numTargetFilesAdded",
    "numTargetBytesAdded",
    "executionTimeMs",
    "scanTimeMs",
    "rewriteTimeMs",
)


@dataclass(frozen=True, kw_only=True)
class BenchSettings:
    """What to measure and where; filled from the CLI in `main()`."""

    customers: int
    events: int
    seed: int
    k: int
    work: Path
    out: Path
    bootstrap_servers: str
    driver_memory: str
    partitions: int
    max_offsets: tuple[int, ...]
    naive: tuple[str, ...]
    naive_timeout_s: float
    event_span_hours: float
    rates: tuple[float, ...]
    trigger_seconds: tuple[float, ...]
    latency_seconds: float
    warmup_events: int
    drain_timeout_s: float
    skip_throughput: bool
    skip_naive: bool
    skip_latency: bool
    skip_merge: bool
    designs: tuple[str, ...]
    compactions: tuple[str, ...] = ("thread",)
    compact_seconds: float = 10.0
    compaction_nice: int = 19
    keep_topics: bool
    keep_runs: bool


@dataclass(kw_only=True)
class ThroughputResult:
    """One drain of the pre-filled topic by one pattern at one trigger size."""

    pattern: str
    max_offsets: int
    events_in_topic: int
    events: int = 0  # input rows of the batches that completed
    batches: int = 0
    seconds: float | None = None  # first batch start to last completed batch end
    query_seconds: float | None = None  # start() to termination (or to the timeout)
    events_per_s: float | None = None
    # The same after the first batch, which alone loads the model, reads the clock and runs a sweep.
    steady_events_per_s: float | None = None
    is_complete: bool = False
    error: str | None = None
    orders_counted: int | None = None  # orders added to customer_state, to check nothing was lost
    # Naive runs: every customer_state MERGE (rows, time, files), and for a run stopped at its timeout
    # the rate including the rounds of the unfinished batch.
    merge_commits: list[dict[str, int]] = field(default_factory=list)
    partial_note: str | None = None
    batch_rows: list[dict[str, Any]] = field(default_factory=list)
    phase_means_s: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    compaction_s: float | None = None  # product: the compaction after the drain (not in events/s)
    state_mb: float | None = None  # product: the checkpoint's state store files after the drain


@dataclass(kw_only=True)
class LatencyResult:
    """End-to-end latency of one design's stream at one offered rate and trigger interval."""

    design: str
    rate: float
    trigger_seconds: float
    compaction: str = THREAD  # product: where the compaction ran (see COMPACTION_PLACES)
    # Product: how far customer_state / customer_segments lagged the stream's logs (log commit to the
    # commit of the compaction that covered it), over the run's log commits.
    step_means_s: dict[str, float] = field(default_factory=dict)  # product: handler steps, mean per batch
    freshness_p50_s: float | None = None
    freshness_max_s: float | None = None
    compactions: int = 0
    produced: int = 0
    achieved_rate: float | None = None
    committed: int = 0
    uncommitted: int = 0
    p50_s: float | None = None  # to the end of the batch that read the event
    p95_s: float | None = None
    p99_s: float | None = None
    max_s: float | None = None
    mean_s: float | None = None
    kafka_events: int = 0  # events whose batch published segment changes
    kafka_p50_s: float | None = None  # to the batch's last change on the changes topic (the target's latency)
    kafka_p95_s: float | None = None
    kafka_p99_s: float | None = None
    kafka_max_s: float | None = None
    batches: int = 0
    mean_batch_s: float | None = None
    mean_batch_rows: float | None = None
    error: str | None = None
    batch_rows: list[dict[str, Any]] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------- machine and load


def _kafka_broker_version() -> str:
    jars = sorted((REPO_ROOT / ".jars" / "kafka").glob("kafka_2.13-*.jar"))
    return jars[0].stem.removeprefix("kafka_2.13-") if jars else "unknown"


# ---------------------------------------------------------------- lake, profiles, topics


def build_lake(spark: SparkSession, settings: BenchSettings) -> tuple[Path, dict[str, object]]:
    """The trained lake of this size, built once under `--work` and reused while its marker is there."""
    name = f"lake-{settings.customers}-s{settings.seed}-k{settings.k}"
    lake_dir = settings.work / name
    marker = settings.work / f"{name}.json"
    if marker.exists() and lake_dir.is_dir():
        return lake_dir, {**json.loads(marker.read_text()), "cached": True}
    shutil.rmtree(lake_dir, ignore_errors=True)
    csv = settings.work / f"history-{settings.customers}-s{settings.seed}.csv"
    started = time.perf_counter()
    write_history_csv(csv, customers=settings.customers, seed=settings.seed)
    generated = time.perf_counter()
    summary = run_train(
        spark,
        LakeSettings(root=str(lake_dir)),
        TrainSettings(k=settings.k, seed=settings.seed),
        history_path=str(csv),
    )
    trained = time.perf_counter()
    spark.catalog.clearCache()
    csv.unlink(missing_ok=True)
    info: dict[str, object] = {
        "customers": summary.rows_kept,
        "k": summary.k,
        "model_version": summary.model_version,
        "as_of": str(summary.as_of),
        "generate_s": round(generated - started, 1),
        "train_s": round(trained - generated, 1),
    }
    marker.write_text(json.dumps(info, indent=2) + "\n")
    return lake_dir, {**info, "cached": False}


def cached_profiles(spark: SparkSession, lake_dir: Path) -> Path:
    """The producer's customer profiles of a lake, pickled beside it so producer processes skip Spark."""
    path = lake_dir.with_name(f"{lake_dir.name}.profiles.pkl")
    if not path.exists():
        profiles = load_profiles(spark, LakeSettings(root=str(lake_dir)))
        partial = path.with_suffix(".partial")
        partial.write_bytes(pickle.dumps(profiles, protocol=pickle.HIGHEST_PROTOCOL))
        partial.replace(path)
    return path


def read_profiles(path: Path) -> CustomerProfiles:
    """Profiles written by `cached_profiles` (our own file, so unpickling is safe)."""
    profiles: CustomerProfiles = pickle.loads(path.read_bytes())
    return profiles


def copy_lake(base: Path, dest: Path) -> LakeSettings:
    """A private copy of the trained lake; model artifacts stay where the models table points."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(base, dest)
    return LakeSettings(root=str(dest))


def topic_end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Next offset of every partition: what a reader has to reach to have read everything sent so far."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = sorted(consumer.partitions_for_topic(topic) or [])
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return {tp.partition: int(offset) for tp, offset in ends.items()}
    finally:
        consumer.close()


def delete_topics(bootstrap: str, names: Sequence[str]) -> None:
    """Remove the benchmark's own topics from the shared broker."""
    if not names:
        return
    try:
        with admin_client(bootstrap, timeout_s=30.0) as admin:
            existing = set(admin.list_topics())
            doomed = [n for n in names if n in existing]
            if doomed:
                admin.delete_topics(doomed, timeout_ms=30_000)
    except KafkaError as exc:
        log.warning("could not delete the benchmark topics %s: %s", list(names), exc)


def _produce_child(settings: ProduceSettings, profiles_path: str, summary_path: str) -> None:
    """Entry point of a producer process: the producer's CPU stays out of the driver's Python process."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s producer: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    summary = run_produce(settings, read_profiles(Path(profiles_path)))
    Path(summary_path).write_text(json.dumps(asdict(summary), default=str))


def produce_in_process(settings: ProduceSettings, profiles_path: Path, summary_path: Path) -> dict[str, Any]:
    """Run the project's producer in a spawned process and return its summary."""
    child = multiprocessing.get_context("spawn").Process(
        target=_produce_child, args=(settings, str(profiles_path), str(summary_path)), name="producer"
    )
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"the producer process failed (exit code {child.exitcode})")
    summary: dict[str, Any] = json.loads(summary_path.read_text())
    return summary


# ---------------------------------------------------------------- progress and the Delta log


class MetricsRecorder(BatchLogger):
    """The product's per-batch log line, also keeping each batch's handler metrics for the results."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: dict[int, BatchMetrics] = {}

    def record(self, metrics: BatchMetrics) -> None:
        """Called by the product's batch handler when a batch finished its writes."""
        super().record(metrics)
        self.metrics[metrics.batch_id] = metrics


def _epoch_ms(timestamp: str) -> float:
    return dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp() * 1000.0


def _offsets(value: Any, topic: str) -> dict[int, int]:
    """A progress source offset (JSON text or object) as {partition: offset} for one topic."""
    if value is None:
        return {}
    parsed = json.loads(value) if isinstance(value, str) else value
    return {int(p): int(o) for p, o in (parsed.get(topic) or {}).items()}


def executed_batches(query: StreamingQuery, topic: str) -> list[dict[str, Any]]:
    """One dict per micro-batch that ran (idle triggers left out), in batch order."""
    batches = []
    for progress in query.recentProgress:
        p = json.loads(progress.json)
        durations = p.get("durationMs") or {}
        if "addBatch" not in durations:
            continue
        sources = p.get("sources") or [{}]
        kafka = [src for src in sources if "kafka" in str(src.get("description", "")).lower()] or sources[:1]
        source = kafka[0]
        start_ms = _epoch_ms(p["timestamp"])
        batches.append(
            {
                "batch_id": int(p["batchId"]),
                # Kafka rows only: the product also reads its own segment_log back.
                "rows": sum(int(src.get("numInputRows", 0)) for src in kafka),
                "start_ms": start_ms,
                "end_ms": start_ms + float(p["batchDuration"]),
                "seconds": float(p["batchDuration"]) / 1000.0,
                "duration_ms": {k: int(v) for k, v in durations.items()},
                "end_offsets": _offsets(source.get("endOffset"), topic),
            }
        )
    return sorted(batches, key=lambda b: b["batch_id"])


def delta_commits(table_dir: Path) -> list[dict[str, Any]]:
    """Every commit of a local Delta table: version, time, operation, metrics and its (txnAppId, txnVersion)."""
    commits = []
    for path in sorted((table_dir / "_delta_log").glob("*.json")):
        commit: dict[str, Any] = {"version": int(path.stem)}
        for line in path.read_text().splitlines():
            action = json.loads(line)
            if "commitInfo" in action:
                info = action["commitInfo"]
                commit["timestamp_ms"] = float(info.get("inCommitTimestamp") or info["timestamp"])
                commit["operation"] = info.get("operation")
                commit["metrics"] = info.get("operationMetrics") or {}
                commit["user_metadata"] = info.get("userMetadata")
            elif "txn" in action:
                commit["txn_app"] = action["txn"]["appId"]
                commit["txn_version"] = int(action["txn"]["version"])
        commits.append(commit)
    return commits


def txn_commits(table_dir: Path, app_id: str) -> dict[int, dict[str, Any]]:
    """The commits of one idempotent writer, by batch id: Delta txn (`app_id`, batch id) or the product's
    userMetadata tag `app_id:batch id` (streaming.job.batch_tag)."""
    commits: dict[int, dict[str, Any]] = {}
    for c in delta_commits(table_dir):
        tag = c.get("user_metadata") or ""
        if c.get("txn_app") == app_id:
            commits[c["txn_version"]] = c
        elif tag.startswith(f"{app_id}:") and tag[len(app_id) + 1 :].isdigit():
            commits[int(tag[len(app_id) + 1 :])] = c
    return commits


def design_batches(lake_dir: Path, query_id: str, batches: list[dict[str, Any]], design: str) -> None:
    """Add each batch's phase times (between its commits) and its MERGEs' Delta metrics, in place."""
    commits = {
        phase: txn_commits(lake_dir / table, f"{query_id}:{suffix}")
        for phase, _, table, suffix in PHASES[design]
        if table is not None
    }
    for batch in batches:
        bid = batch["batch_id"]
        previous = batch["start_ms"]
        phases: dict[str, float] = {}
        for phase, *_ in PHASES[design]:
            commit = commits.get(phase, {}).get(bid)
            point = batch["end_ms"] if phase == "end" else (commit["timestamp_ms"] if commit else None)
            if point is None:
                continue  # no such write in this batch (e.g. no segment change): its time is in the next phase
            phases[phase] = round((point - previous) / 1000.0, 3)
            previous = point
        batch["phases_s"] = phases
        for phase in ("state", "segments") if design == MERGE_DESIGN else ():
            commit = commits[phase].get(bid)
            if commit is not None:
                metrics = commit.get("metrics", {})
                batch[f"{phase}_merge"] = {k: int(metrics[k]) for k in MERGE_METRICS if k in metrics}


def phase_means(batches: list[dict[str, Any]], design: str) -> dict[str, float]:
    """Mean seconds per phase over batches (a phase a batch skipped counts as 0 s)."""
    if not batches:
        return {}
    return {
        phase: round(sum(b.get("phases_s", {}).get(phase, 0.0) for b in batches) / len(batches), 3)
        for phase, *_ in PHASES[design]
    }


def run_name(result: LatencyResult) -> str:
    """The design, and for the product where its compaction ran."""
    return f"{result.design} ({result.compaction} compaction)" if result.design == PRODUCT else result.design


def latency_label(design: str, rate: float, trigger_s: float, compaction: str) -> str:
    """The run's name: topics, query and run folder."""
    where = f"-{compaction}" if design == PRODUCT and compaction != THREAD else ""
    return f"lat-{design}{where}-{rate:g}-t{trigger_s:g}"


def start_compaction(
    spark: SparkSession, lake: LakeSettings, interval_s: float, compaction: str, niceness: int = 19
) -> Compactor | CompactionProcess:
    """The product's compaction for a latency run, where `compaction` says (as `flo-seg stream --compaction`)."""
    if compaction == PROCESS:
        return CompactionProcess(spark, lake, interval_s, niceness=niceness)
    return Compactor(spark, lake, interval_s).start()


def start_design(
    spark: SparkSession, lake: LakeSettings, settings: StreamSettings, design: str, recorder: BatchLogger
) -> StreamingQuery:
    """Start one design's stream."""
    if design == PRODUCT:
        return start_stream(spark, lake, settings, recorder)
    return start_merge_stream(spark, lake, settings, recorder)


def freshness(spark: SparkSession, lake: LakeSettings, since_ms: float) -> tuple[list[float], int]:
    """Per state_log / segment_log commit after `since_ms`: seconds until the compaction covering it was done
    (its MERGE committed before its `compacted_at` is taken), and how many compactions ran."""
    records = read_table(spark, lake, COMPACTIONS).where(F.col("rows_read") > 0).collect()
    lags: list[float] = []
    for table in (STATE_LOG, SEGMENT_LOG):
        marks = [
            (int(r["to_version"]), r["compacted_at"].replace(tzinfo=dt.UTC).timestamp() * 1000.0)
            for r in records
            if r["log"] == table
        ]
        for commit in delta_commits(Path(lake.root) / table):
            if commit["timestamp_ms"] < since_ms or commit.get("operation") != "WRITE":
                continue
            done = [at for to_version, at in marks if to_version >= commit["version"]]
            if done:
                lags.append((min(done) - commit["timestamp_ms"]) / 1000.0)
    return lags, len(records)


def orders_total(spark: SparkSession, lake: LakeSettings) -> int:
    """All orders in customer_state, online plus offline."""
    row = (
        read_table(spark, lake, CUSTOMER_STATE)
        .agg(F.sum(F.col("order_num_total_ever_online") + F.col("order_num_total_ever_offline")))
        .first()
    )
    return int(row[0] or 0) if row is not None else 0


# ---------------------------------------------------------------- the naive baseline


def order_increments(orders_df: DataFrame) -> DataFrame:
    """Each valid order as its own customer_state increment, shaped like the product's per-customer deltas."""
    online = F.col("is_online")
    cents = F.col("amount").cast(CENTS)
    no_cents = F.lit(0).cast(CENTS)
    return orders_df.select(
        "master_id",
        "event_id",
        "order_time",
        F.lit(1).cast("long").alias("orders"),
        F.when(online, 1).otherwise(0).cast("long").alias("online_orders"),
        F.when(online, 0).otherwise(1).cast("long").alias("offline_orders"),
        F.when(online, cents).otherwise(no_cents).alias("online_value"),
        F.when(online, no_cents).otherwise(cents).alias("offline_value"),
        F.col("order_date").alias("min_order_date"),
        F.col("order_date").alias("max_order_date"),
        F.when(online, F.col("order_date")).alias("max_online_date"),
        F.when(~online, F.col("order_date")).alias("max_offline_date"),
        F.col("channel").alias("first_channel"),
        F.col("channel").alias("last_channel"),
        F.array_sort(F.array_distinct("categories")).alias("categories"),
        F.col("order_time").alias("max_order_time"),
    )


def make_naive_handler(lake: LakeSettings, variant: str, merges: dict[int, int]) -> Callable[[DataFrame, int], None]:
    """The docs' foreachBatch upsert: MERGE the micro-batch's rows into customer_state (see NAIVE_VARIANTS)."""

    def merge(spark: SparkSession, source: DataFrame) -> None:
        (
            DeltaTable.forPath(spark, lake.table(CUSTOMER_STATE))
            .alias("t")
            .merge(source.alias("s"), "t.master_id = s.master_id")
            .whenMatchedUpdate(set=state_merge_updates())
            .whenNotMatchedInsert(values=state_merge_inserts())
            .execute()
        )

    def handle(batch_df: DataFrame, batch_id: int) -> None:
        spark = batch_df.sparkSession
        increments = order_increments(valid_orders(batch_df))
        if variant == NAIVE_RAW:
            merges[batch_id] = 1
            merge(spark, increments)
            return
        # Round r holds each customer's r-th order of the batch (the latest first for NAIVE_LATEST).
        order = [F.col("order_time").desc(), "event_id"] if variant == NAIVE_LATEST else ["order_time", "event_id"]
        ranked = increments.withColumn(
            "merge_round", F.row_number().over(Window.partitionBy("master_id").orderBy(*order))
        ).persist()
        try:
            row = ranked.agg(F.max("merge_round")).first()
            rounds = int(row[0] or 0) if row is not None else 0
            if variant == NAIVE_LATEST:
                rounds = min(rounds, 1)
            merges[batch_id] = rounds
            for merge_round in range(1, rounds + 1):
                merge(spark, ranked.where(F.col("merge_round") == merge_round).drop("merge_round"))
        finally:
            ranked.unpersist()

    return handle


def start_naive_stream(
    spark: SparkSession, lake: LakeSettings, settings: StreamSettings, variant: str, merges: dict[int, int]
) -> StreamingQuery:
    """The baseline query: same source, parsing and trigger sizes as the product, no dedupe, no re-scoring."""
    reader = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", settings.bootstrap_servers)
        .option("subscribe", settings.topic)
        .option("startingOffsets", "earliest")
        .option("failOnDataLoss", "true")
    )
    if settings.max_offsets_per_trigger:
        reader = reader.option("maxOffsetsPerTrigger", settings.max_offsets_per_trigger)
    return (
        parse_order_events(reader.load())
        .writeStream.queryName(settings.query_name)
        .option("checkpointLocation", settings.checkpoint)
        .foreachBatch(make_naive_handler(lake, variant, merges))
        .trigger(availableNow=True)
        .start()
    )


# ---------------------------------------------------------------- throughput


def _first_line(exc: BaseException | object) -> str:
    """The most specific error class in a (Python-wrapped JVM) error, or else its first line."""
    text = str(exc).strip()
    classes = re.findall(r"\[([A-Z][A-Z0-9_]{5,})\]", text)
    specific = [c for c in classes if c not in ("STREAM_FAILED", "FOREACH_BATCH_USER_FUNCTION_ERROR")]
    if specific:
        return specific[-1]
    return next(iter(text.splitlines()), type(exc).__name__)[:400]


def run_throughput(
    spark: SparkSession,
    settings: BenchSettings,
    base_lake: Path,
    topic: str,
    pattern: str,
    max_offsets: int,
    run_dir: Path,
    changes_topic: str,
) -> ThroughputResult:
    """Drain the pre-filled topic once with one pattern, on a fresh lake copy and checkpoint."""
    in_topic = sum(topic_end_offsets(settings.bootstrap_servers, topic).values())
    result = ThroughputResult(pattern=pattern, max_offsets=max_offsets, events_in_topic=in_topic)
    lake = copy_lake(base_lake, run_dir / "lake")
    orders_before = orders_total(spark, lake)
    state_dir = Path(lake.root) / CUSTOMER_STATE
    base_version = max(c["version"] for c in delta_commits(state_dir))
    stream_settings = StreamSettings(
        bootstrap_servers=settings.bootstrap_servers,
        checkpoint=str(run_dir / "checkpoint"),
        topic=topic,
        changes_topic=changes_topic,
        query_name=f"sbench-{pattern}-{max_offsets}",
        available_now=True,
        max_offsets_per_trigger=max_offsets,
    )
    recorder = MetricsRecorder()
    merges: dict[int, int] = {}
    is_design = pattern in DESIGNS
    timeout_s = None if is_design else settings.naive_timeout_s
    meter = CpuMeter()
    started, started_ms = time.monotonic(), time.time() * 1000.0
    if is_design:
        query = start_design(spark, lake, stream_settings, pattern, recorder)
    else:
        query = start_naive_stream(spark, lake, stream_settings, pattern, merges)
    try:
        result.is_complete = bool(query.awaitTermination(int(timeout_s))) if timeout_s else _await(query)
        if not result.is_complete:
            log.warning("%s at %d: stopped after the %.0f s timeout", pattern, max_offsets, timeout_s or 0)
    except Exception as exc:
        result.error = _first_line(exc)
    finally:
        stop_between_batches(query)
        if is_design:
            spark.streams.removeListener(recorder)
    result.query_seconds = round(time.monotonic() - started, 1)
    result.cpu = meter.stop()
    if pattern == PRODUCT:
        store = run_dir / "checkpoint" / "state"
        result.state_mb = round(sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 2**20, 1)
        # customer_state is current only after a compaction: timed apart, not part of events/s.
        compacting = time.monotonic()
        compact_lake(spark, lake)
        result.compaction_s = round(time.monotonic() - compacting, 1)
    error = query.exception()
    if error is not None and result.error is None:
        result.error = _first_line(error)
    if result.error:
        result.is_complete = False

    batches = executed_batches(query, topic)
    if is_design:
        design_batches(Path(lake.root), str(query.id), batches, pattern)
        for b in batches:
            m = recorder.metrics.get(b["batch_id"])
            if m is not None:
                b.update(customers_updated=m.customers_updated, rescored=m.rescored, changes=m.changes, steps=m.steps)
        result.phase_means_s = phase_means(batches, pattern)
    else:
        for b in batches:
            b["merges"] = merges.get(b["batch_id"], 0)
    for b in batches:
        b.pop("end_offsets", None)
    result.batch_rows = batches
    result.batches = len(batches)
    result.events = sum(b["rows"] for b in batches)
    if batches:
        span_s = (max(b["end_ms"] for b in batches) - min(b["start_ms"] for b in batches)) / 1000.0
        result.seconds = round(span_s, 2)
        result.events_per_s = round(result.events / span_s, 1) if span_s > 0 else None
    if len(batches) > 1:
        later = batches[1:]
        span_s = (max(b["end_ms"] for b in later) - min(b["start_ms"] for b in later)) / 1000.0
        result.steady_events_per_s = round(sum(b["rows"] for b in later) / span_s, 1) if span_s > 0 else None
    result.orders_counted = orders_total(spark, lake) - orders_before
    if not is_design:
        add_merge_commits(result, state_dir, base_version, batches[0]["start_ms"] if batches else started_ms)
    return result


def add_merge_commits(result: ThroughputResult, state_dir: Path, base_version: int, first_start_ms: float) -> None:
    """The naive run's MERGE commits; a rounds run cut by the timeout also counts its unfinished batch."""
    merges = [c for c in delta_commits(state_dir) if c["version"] > base_version and c.get("operation") == "MERGE"]
    keys = ("numSourceRows", "executionTimeMs", "numTargetFilesRemoved", "numTargetRowsCopied")
    result.merge_commits = [{k: int(c["metrics"].get(k, 0)) for k in keys} for c in merges]
    merged = sum(m["numSourceRows"] for m in result.merge_commits)
    if result.pattern == NAIVE_ROUNDS and not result.is_complete and not result.batches and merges:
        # No batch finished: orders merged so far over time. An upper bound, as a batch's first rounds
        # hold most of its orders and its many small last rounds cost about as much each.
        span_s = (merges[-1]["timestamp_ms"] - first_start_ms) / 1000.0
        result.events, result.seconds = merged, round(span_s, 2)
        result.events_per_s = round(merged / span_s, 1) if span_s > 0 else None
        result.partial_note = (
            f"no batch finished before the timeout: {merged:,} orders merged in {len(merges)} MERGEs "
            "so far (an upper bound)"
        )


def _await(query: StreamingQuery) -> bool:
    query.awaitTermination()
    return True


# ---------------------------------------------------------------- latency


def wait_until_read(query: StreamingQuery, topic: str, target: dict[int, int], timeout_s: float) -> bool:
    """Block until a completed micro-batch has read every partition up to `target` (or the timeout)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not query.isActive:
            raise RuntimeError(f"the stream stopped: {query.exception()}")
        progress = query.lastProgress
        if progress is not None:
            source = (json.loads(progress.json).get("sources") or [{}])[0]
            ends = _offsets(source.get("endOffset"), topic)
            if all(ends.get(p, 0) >= offset for p, offset in target.items()):
                return True
        time.sleep(0.25)
    return False


def record_times(spark: SparkSession, bootstrap: str, topic: str, after: dict[int, int]) -> np.ndarray:
    """(partition, offset, Kafka timestamp ms) of every record from `after` on, as an int64 array."""
    starting = json.dumps({topic: {str(p): o for p, o in after.items()}}) if after else "earliest"
    records = (
        spark.read.format("kafka")
        .option("kafka.bootstrap.servers", bootstrap)
        .option("subscribe", topic)
        .option("startingOffsets", starting)
        .option("endingOffsets", "latest")
        .load()
        .select("partition", "offset", F.unix_millis("timestamp").alias("ts_ms"))
        .toPandas()
    )
    return records.to_numpy(dtype=np.int64)


def batch_of(records: np.ndarray, batches: list[dict[str, Any]]) -> np.ndarray:
    """Per record, the index in `batches` of the batch that read it (len(batches) when none did)."""
    out = np.full(len(records), len(batches), dtype=np.int64)
    for partition in np.unique(records[:, 0]):
        at = records[:, 0] == partition
        ends = np.array([b["end_offsets"].get(int(partition), 0) for b in batches], dtype=np.int64)
        # Batches read increasing offset ranges: a record belongs to the first batch whose end passes it.
        out[at] = np.searchsorted(ends, records[at, 1], side="right")
    return out


def change_times_ms(spark: SparkSession, bootstrap: str, topic: str) -> dict[int, float]:
    """Per batch id, when the last of its segment changes reached the changes topic (Kafka timestamp)."""
    rows = (
        spark.read.format("kafka")
        .option("kafka.bootstrap.servers", bootstrap)
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .option("endingOffsets", "latest")
        .load()
        .select(
            F.get_json_object(F.col("value").cast("string"), "$.batch_id").cast("long").alias("batch_id"),
            F.unix_millis("timestamp").alias("ts_ms"),
        )
        .groupBy("batch_id")
        .agg(F.max("ts_ms").alias("ts_ms"))
        .collect()
    )
    return {int(r["batch_id"]): float(r["ts_ms"]) for r in rows if r["batch_id"] is not None}


def percentiles(seconds: np.ndarray) -> tuple[float, float, float, float] | None:
    """p50, p95, p99 and max, rounded to ms (None when empty)."""
    if not seconds.size:
        return None
    p50, p95, p99 = np.percentile(seconds, [50, 95, 99])
    return round(float(p50), 3), round(float(p95), 3), round(float(p99), 3), round(float(seconds.max()), 3)


def run_latency(
    spark: SparkSession,
    settings: BenchSettings,
    base_lake: Path,
    profiles_path: Path,
    rate: float,
    trigger_s: float,
    run_dir: Path,
    topics: list[str],
    prefix: str,
    design: str = PRODUCT,
    compaction: str = THREAD,
) -> LatencyResult:
    """Offer `rate` events/s for `latency_seconds` to one design's running stream; latency per event.

    An event's latency runs from its Kafka timestamp to the last segment change its micro-batch put on
    the changes topic, and to the end of that micro-batch (its Delta appends committed). The product
    runs with its background compaction, as `flo-seg stream` does, and the run records how far the
    tables lagged.
    """
    result = LatencyResult(design=design, rate=rate, trigger_seconds=trigger_s, compaction=compaction)
    label = latency_label(design, rate, trigger_s, compaction)
    topic, changes_topic = f"{prefix}.{label}.orders", f"{prefix}.{label}.changes"
    topics += [topic, changes_topic]
    ensure_topics(
        settings.bootstrap_servers,
        [TopicSpec(name=t, partitions=settings.partitions) for t in (topic, changes_topic)],
    )
    lake = copy_lake(base_lake, run_dir / "lake")
    stream_settings = StreamSettings(
        bootstrap_servers=settings.bootstrap_servers,
        checkpoint=str(run_dir / "checkpoint"),
        topic=topic,
        changes_topic=changes_topic,
        query_name=f"sbench-{label}",
        trigger_seconds=trigger_s,
        compact_seconds=settings.compact_seconds,
    )
    event_seconds = 1.0 / rate  # event time advances like wall time
    recorder = MetricsRecorder()
    query = start_design(spark, lake, stream_settings, design, recorder)
    compactor = None
    if design == PRODUCT:
        compactor = start_compaction(spark, lake, stream_settings.compact_seconds, compaction, settings.compaction_nice)
    measured_from_ms = time.time() * 1000.0
    try:
        # Warm-up: the first batch loads the model and sweeps; measured events come after it committed.
        warmup = ProduceSettings(
            bootstrap_servers=settings.bootstrap_servers,
            topic=topic,
            events=settings.warmup_events,
            seed=settings.seed + 1,
            event_seconds=event_seconds,
        )
        produce_in_process(warmup, profiles_path, run_dir / "warmup.json")
        warm_end = topic_end_offsets(settings.bootstrap_servers, topic)
        if not wait_until_read(query, topic, warm_end, settings.drain_timeout_s):
            raise RuntimeError("the warm-up batch did not commit within the drain timeout")
        measured_from_ms = time.time() * 1000.0
        meter = CpuMeter()
        offered = ProduceSettings(
            bootstrap_servers=settings.bootstrap_servers,
            topic=topic,
            duration_s=settings.latency_seconds,
            rate=rate,
            seed=settings.seed + 2,
            event_seconds=event_seconds,
        )
        summary = produce_in_process(offered, profiles_path, run_dir / "produce.json")
        result.produced = int(summary["sent"])
        end = topic_end_offsets(settings.bootstrap_servers, topic)
        if not wait_until_read(query, topic, end, settings.drain_timeout_s):
            log.warning("%s: not drained within %.0f s", label, settings.drain_timeout_s)
        result.cpu = meter.stop()
    except Exception as exc:
        result.error = _first_line(exc)
        log.exception("%s failed", label)
        return result
    finally:
        stop_between_batches(query)
        spark.streams.removeListener(recorder)
        if compactor is not None:
            compactor.stop()
    if design == PRODUCT:
        lags, result.compactions = freshness(spark, lake, measured_from_ms)
        if lags:
            result.freshness_p50_s = round(float(np.percentile(lags, 50)), 2)
            result.freshness_max_s = round(max(lags), 2)

    batches = [
        b for b in executed_batches(query, topic) if any(b["end_offsets"].get(p, 0) > o for p, o in warm_end.items())
    ]
    records = record_times(spark, settings.bootstrap_servers, topic, warm_end)
    index = batch_of(records, batches)
    committed_ms = np.array([b["end_ms"] for b in batches] + [np.nan])[index]
    is_committed = ~np.isnan(committed_ms)
    latency_s = (committed_ms[is_committed] - records[is_committed, 2]) / 1000.0
    result.committed, result.uncommitted = int(is_committed.sum()), int((~is_committed).sum())
    if len(records) > 1:
        span_s = (records[:, 2].max() - records[:, 2].min()) / 1000.0
        result.achieved_rate = round(len(records) / span_s, 1) if span_s > 0 else None
    found = percentiles(latency_s)
    if found is not None:
        result.p50_s, result.p95_s, result.p99_s, result.max_s = found
        result.mean_s = round(float(latency_s.mean()), 3)
    # To the change on Kafka: the events of batches that published a change, to when the batch's last
    # change landed on the changes topic.
    changed_ms = change_times_ms(spark, settings.bootstrap_servers, changes_topic)
    published_ms = np.array([changed_ms.get(b["batch_id"], np.nan) for b in batches] + [np.nan])[index]
    is_published = ~np.isnan(published_ms)
    result.kafka_events = int(is_published.sum())
    found = percentiles((published_ms[is_published] - records[is_published, 2]) / 1000.0)
    if found is not None:
        result.kafka_p50_s, result.kafka_p95_s, result.kafka_p99_s, result.kafka_max_s = found
    for b in batches:
        m = recorder.metrics.get(b["batch_id"])
        if m is not None:
            b.update(customers_updated=m.customers_updated, rescored=m.rescored, changes=m.changes, steps=m.steps)
        b.pop("end_offsets", None)
    result.batch_rows = batches
    result.batches = len(batches)
    if batches:
        steps = sorted({k for b in batches for k in b.get("steps", {})})
        result.step_means_s = {
            k: round(sum(b.get("steps", {}).get(k, 0.0) for b in batches) / len(batches), 3) for k in steps
        }
        result.mean_batch_s = round(sum(b["seconds"] for b in batches) / len(batches), 2)
        result.mean_batch_rows = round(sum(b["rows"] for b in batches) / len(batches), 1)
    return result


# ---------------------------------------------------------------- report


@dataclass(kw_only=True)
class Report:
    """Everything measured so far, saved to JSON after every run so a crash still leaves the numbers."""

    out: Path
    meta: dict[str, Any]
    throughput: list[ThroughputResult] = field(default_factory=list)
    latency: list[LatencyResult] = field(default_factory=list)

    def save(self) -> None:
        """Write the JSON results."""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            **self.meta,
            "throughput": [asdict(r) for r in self.throughput],
            "latency": [asdict(r) for r in self.latency],
            "verdicts": verdicts(self),
        }
        self.out.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def _verdict(is_met: bool) -> str:
    return "MET" if is_met else "MISSED"


def to_kafka_p99(result: LatencyResult) -> float | None:
    """The target's latency: to the change on Kafka (to the batch end where no batch published one)."""
    return result.kafka_p99_s if result.kafka_p99_s is not None else result.p99_s


def verdicts(report: Report) -> list[dict[str, Any]]:
    """Each target against what was measured: MET/MISSED and by how much (None when it did not run)."""
    out: list[dict[str, Any]] = []
    products = [r for r in report.throughput if r.pattern == PRODUCT and r.events_per_s and r.is_complete]
    best = max(products, key=lambda r: r.events_per_s or 0.0, default=None)
    if best is not None and best.events_per_s is not None:
        eps = best.events_per_s
        out.append(
            {
                "target": f"sustained >= {TARGET_EVENTS_PER_S:,.0f} events/s",
                "measured": f"{eps:,.0f} events/s (maxOffsetsPerTrigger {best.max_offsets:,})",
                "verdict": _verdict(eps >= TARGET_EVENTS_PER_S),
                "margin": f"{eps / TARGET_EVENTS_PER_S:.1%} of the target"
                + ("" if eps >= TARGET_EVENTS_PER_S else f", {TARGET_EVENTS_PER_S / eps:.1f}x short"),
            }
        )
    at_target = [r for r in report.latency if r.design == PRODUCT and r.rate == TARGET_P99_RATE and to_kafka_p99(r)]
    fastest = min(at_target, key=lambda r: to_kafka_p99(r) or 0.0, default=None)
    p99 = None if fastest is None else to_kafka_p99(fastest)
    if fastest is not None and p99 is not None:
        out.append(
            {
                "target": f"p99 <= {TARGET_P99_S:g} s at {TARGET_P99_RATE:,.0f} events/s (produce to change on Kafka)",
                "measured": f"p99 {p99:.2f} s (trigger {fastest.trigger_seconds:g} s, "
                f"achieved {fastest.achieved_rate or 0:,.0f} events/s, {fastest.uncommitted} not committed)",
                "verdict": _verdict(p99 <= TARGET_P99_S and fastest.uncommitted == 0),
                "margin": f"{p99 - TARGET_P99_S:+.2f} s ({p99 / TARGET_P99_S:.1f}x the target)",
            }
        )
    merges = [r for r in report.latency if r.design == MERGE_DESIGN and r.rate == TARGET_P99_RATE and to_kafka_p99(r)]
    merge_run = min(merges, key=lambda r: to_kafka_p99(r) or 0.0, default=None)
    merge_p99 = None if merge_run is None else to_kafka_p99(merge_run)
    if p99 and merge_p99:
        ratio = merge_p99 / p99
        out.append(
            {
                "target": f">= {TARGET_DESIGN_P99:g}x lower p99 than the MERGE design at {TARGET_P99_RATE:,.0f}/s",
                "measured": f"{ratio:.1f}x ({p99:.2f} s vs {merge_p99:.2f} s)",
                "verdict": _verdict(ratio >= TARGET_DESIGN_P99),
                "margin": f"{ratio / TARGET_DESIGN_P99:.1%} of the target",
            }
        )
    fresh = [r for r in report.latency if r.design == PRODUCT and r.freshness_max_s is not None]
    for r in fresh:
        assert r.freshness_max_s is not None
        out.append(
            {
                "target": f"tables <= {TARGET_FRESHNESS_S:g} s behind the stream at {r.rate:,.0f}/s",
                "measured": f"max {r.freshness_max_s:.1f} s, p50 {r.freshness_p50_s or 0:.1f} s "
                f"({r.compactions} compactions)",
                "verdict": _verdict(r.freshness_max_s <= TARGET_FRESHNESS_S),
                "margin": f"{r.freshness_max_s - TARGET_FRESHNESS_S:+.1f} s",
            }
        )
    for product in products:
        for merge in report.throughput:
            if merge.pattern != MERGE_DESIGN or merge.max_offsets != product.max_offsets or not merge.events_per_s:
                continue
            ratio = (product.events_per_s or 0.0) / merge.events_per_s
            out.append(
                {
                    "target": f">= {TARGET_DESIGN_THROUGHPUT:g}x the MERGE design's throughput",
                    "measured": f"{ratio:.2f}x at maxOffsetsPerTrigger {product.max_offsets:,} "
                    f"({product.events_per_s:,.0f} vs {merge.events_per_s:,.0f} events/s)",
                    "verdict": _verdict(ratio >= TARGET_DESIGN_THROUGHPUT),
                    "margin": f"{ratio / TARGET_DESIGN_THROUGHPUT:.1%} of the target",
                }
            )
        for naive in report.throughput:
            if naive.pattern in DESIGNS or naive.max_offsets != product.max_offsets or not naive.events_per_s:
                continue
            ratio = (product.events_per_s or 0.0) / naive.events_per_s
            out.append(
                {
                    "target": f">= {TARGET_SPEEDUP:g}x the naive pattern ({naive.pattern})",
                    "measured": f"{ratio:.2f}x at maxOffsetsPerTrigger {product.max_offsets:,} "
                    f"({product.events_per_s:,.0f} vs {naive.events_per_s:,.0f} events/s"
                    + ("" if naive.is_complete else ", naive stopped at its timeout")
                    + ")",
                    "verdict": _verdict(ratio >= TARGET_SPEEDUP) if naive.pattern == BASELINE else "context",
                    "margin": f"{ratio / TARGET_SPEEDUP:.1%} of the target",
                }
            )
    return out


def _num(value: float | None, fmt: str = ",.0f") -> str:
    return "–" if value is None else format(value, fmt)


def markdown(report: Report) -> str:
    """The results as Markdown tables followed by the verdicts."""
    headers = [
        "pattern",
        "maxOffsetsPerTrigger",
        "events read",
        "batches",
        "MERGEs",
        "span s",
        "query s",
        "events/s",
        "events/s after batch 0",
        "orders counted",
        "busy cores (ours / others)",
        "note",
    ]
    rows = []
    for r in report.throughput:
        merges = {PRODUCT: 0, MERGE_DESIGN: 2 * r.batches}.get(r.pattern, sum(b.get("merges", 0) for b in r.batch_rows))
        note = r.error or r.partial_note or ("" if r.is_complete else "stopped at the timeout")
        if r.compaction_s is not None:
            note = f"{note}; compaction after the drain {r.compaction_s:.1f} s".lstrip("; ")
        if r.state_mb is not None and r.batch_rows:
            first = r.batch_rows[0]["seconds"]
            note += f"; batch 0 (bootstrap) {first:.1f} s; state store {r.state_mb:,.0f} MiB"
        cpu = f"{r.cpu.get('benchmark_cores', 0):.2f} / {r.cpu.get('other_cores', 0):.2f}" if r.cpu else "–"
        rows.append(
            (
                r.pattern,
                f"{r.max_offsets:,}",
                f"{r.events:,}",
                r.batches,
                merges,
                _num(r.seconds, ".1f"),
                _num(r.query_seconds, ".1f"),
                _num(r.events_per_s),
                _num(r.steady_events_per_s),
                _num(r.orders_counted),
                cpu,
                note,
            )
        )
    lines = [markdown_table(headers, rows, align="lrrrrrrrrr")]
    for design in DESIGNS:
        runs = [r for r in report.throughput if r.pattern == design and r.phase_means_s]
        if not runs:
            continue
        lines += ["", f"{design} micro-batch, mean seconds per phase (between its Delta commits):", ""]
        phase_rows = []
        for phase, title, *_ in PHASES[design]:
            cells = [title]
            for r in runs:
                total = sum(r.phase_means_s.values()) or 1.0
                value = r.phase_means_s.get(phase, 0.0)
                cells.append(f"{value:.2f} ({value / total:.0%})")
            phase_rows.append(cells)
        phase_rows.append(["whole batch", *(f"{sum(r.phase_means_s.values()):.2f}" for r in runs)])
        headers = ["phase", *(f"{r.max_offsets:,} / batch" for r in runs)]
        lines.append(markdown_table(headers, phase_rows, align="l" + "r" * len(runs)))
    if report.latency:
        lines += [
            "",
            "| design | offered events/s | trigger s | achieved events/s | events | batches | mean batch s "
            "| mean batch events | p50 s | p95 s | p99 s | max s | to Kafka p50 / p95 / p99 / max s | not committed "
            "| tables behind, max s | busy cores (ours / others) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for lat in report.latency:
            cpu = f"{lat.cpu.get('benchmark_cores', 0):.2f} / {lat.cpu.get('other_cores', 0):.2f}" if lat.cpu else "–"
            to_kafka = (lat.kafka_p50_s, lat.kafka_p95_s, lat.kafka_p99_s, lat.kafka_max_s)
            if lat.error:
                lines.append(
                    f"| {run_name(lat)} | {lat.rate:,.0f} | {lat.trigger_seconds:g} | failed: {lat.error} |" + " |" * 12
                )
                continue
            lines.append(
                f"| {run_name(lat)} | {lat.rate:,.0f} | {lat.trigger_seconds:g} | {_num(lat.achieved_rate)} "
                f"| {lat.committed + lat.uncommitted:,} | {lat.batches} | {_num(lat.mean_batch_s, '.2f')} "
                f"| {_num(lat.mean_batch_rows)} | {_num(lat.p50_s, '.2f')} | {_num(lat.p95_s, '.2f')} "
                f"| {_num(lat.p99_s, '.2f')} | {_num(lat.max_s, '.2f')} "
                f"| {' / '.join(_num(v, '.2f') for v in to_kafka)} "
                f"| {lat.uncommitted:,} "
                f"| {_num(lat.freshness_max_s, '.1f')} | {cpu} |"
            )
    timed = [lat for lat in report.latency if lat.step_means_s]
    if timed:
        steps = sorted({k for lat in timed for k in lat.step_means_s})
        lines += ["", "Batch handler steps, mean seconds per micro-batch:", ""]
        headers = ["step", *(f"{run_name(lat)} {lat.rate:,.0f}/s" for lat in timed)]
        step_rows = [[step, *(f"{lat.step_means_s.get(step, 0.0):.3f}" for lat in timed)] for step in steps]
        lines.append(markdown_table(headers, step_rows, align="l" + "r" * len(timed)))
    lines += ["", "Targets:"]
    found = verdicts(report)
    lines += [f"- {v['target']}: {v['measured']} → **{v['verdict']}** ({v['margin']})" for v in found]
    if not found:
        lines.append("- nothing measured that a target applies to")
    return "\n".join(lines)


# ---------------------------------------------------------------- CLI


def _positive_int(text: str) -> int:
    (value,) = _int_list(text)
    return value


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(p.strip().replace("_", "")) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _float_list(text: str, *, zero: bool = False) -> tuple[float, ...]:
    try:
        values = tuple(float(p.strip().replace("_", "")) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(v < 0 or (v == 0 and not zero) for v in values):
        raise argparse.ArgumentTypeError(f"expected {'non-negative' if zero else 'positive'} numbers, got {text!r}")
    return values


def _trigger_list(text: str) -> tuple[float, ...]:
    return _float_list(text, zero=True)


def _variants(text: str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [n for n in names if n not in NAIVE_VARIANTS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown naive variants {unknown}; choose from {', '.join(NAIVE_VARIANTS)}")
    return names


def _one_or_more(allowed: Sequence[str], what: str) -> Callable[[str], tuple[str, ...]]:
    """An argparse type: a comma-separated, non-empty list of names out of `allowed`."""

    def parse(text: str) -> tuple[str, ...]:
        names = tuple(p.strip() for p in text.split(",") if p.strip())
        unknown = [n for n in names if n not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown {what} {unknown}; choose from {', '.join(allowed)}")
        return names

    return parse


_designs = _one_or_more(DESIGNS, "designs")
_compactions = _one_or_more(COMPACTION_PLACES, "compactions")


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's flags."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.streaming",
        description=(
            "Measure the streaming job on a pre-filled Kafka topic (events/s), against the naive "
            "one-MERGE-per-micro-batch pattern, and end to end at offered rates (latency p50/p95/p99); "
            "print Markdown tables with MET/MISSED verdicts and write JSON."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    size = parser.add_argument_group("size")
    size.add_argument("--customers", type=_positive_int, default=1_000_000, help="customers in the trained lake")
    size.add_argument("--events", type=_positive_int, default=1_000_000, help="events pre-filled into the topic")
    size.add_argument("--seed", type=int, default=42, help="seed of the history, the model and the events")
    size.add_argument("--k", type=int, default=4, help="fixed number of segments of the trained model")
    size.add_argument(
        "--event-span-hours",
        type=float,
        default=24.0,
        help="event time the pre-filled backlog covers (daily aging sweeps run when the event date changes)",
    )
    runs = parser.add_argument_group("runs")
    runs.add_argument(
        "--max-offsets", type=_int_list, default="250000,500000", help="maxOffsetsPerTrigger values to drain with"
    )
    runs.add_argument(
        "--naive",
        type=_variants,
        default=",".join(NAIVE_VARIANTS),
        help=f"naive variants: {NAIVE_RAW} (one MERGE of every raw row, tried once: it fails on repeat "
        f"customers), {NAIVE_ROUNDS} (one MERGE per round of at most one order per customer; the baseline), "
        f"{NAIVE_LATEST} (keep each customer's latest order, one MERGE; loses orders)",
    )
    runs.add_argument("--naive-timeout", type=float, default=900.0, help="seconds before a naive drain is stopped")
    runs.add_argument("--rates", type=_float_list, default="1000,5000", help="offered events/s for latency")
    runs.add_argument(
        "--trigger-seconds",
        type=_trigger_list,
        default="0",
        help="processing-time triggers for latency (0, the default: each batch starts when the last ended)",
    )
    runs.add_argument("--latency-seconds", type=float, default=60.0, help="how long each offered rate is sent")
    runs.add_argument(
        "--warmup-events",
        type=int,
        default=2_000,
        help="events of the untimed warm-up drain and of each latency run's warm-up",
    )
    runs.add_argument("--drain-timeout", type=float, default=600.0, help="seconds to wait for the stream to catch up")
    runs.add_argument("--skip-throughput", action="store_true", help="skip the product's drains")
    runs.add_argument("--skip-naive", action="store_true", help="skip the naive baseline")
    runs.add_argument("--skip-latency", action="store_true", help="skip the latency runs")
    runs.add_argument("--skip-merge", action="store_true", help="skip the MERGE design's drains")
    runs.add_argument(
        "--designs",
        type=_designs,
        default=",".join(DESIGNS),
        help=f"designs measured for latency: {PRODUCT} (state store) and {MERGE_DESIGN} (today's MERGE design)",
    )
    runs.add_argument(
        "--compaction",
        type=_compactions,
        default=THREAD,
        help=f"where the product's compaction runs in latency runs, comma-separated: {THREAD} (in the stream's "
        f"session, as `flo-seg stream` by default), {PROCESS} (`nice -n 19 flo-seg compact --every`)",
    )
    runs.add_argument(
        "--compact-seconds", type=float, default=10.0, help="the product's compaction interval (default 10)"
    )
    runs.add_argument(
        "--compaction-nice", type=int, default=19, help="the compaction process's nice level (default 19)"
    )
    where = parser.add_argument_group("where")
    where.add_argument("--work", type=Path, default=Path("/tmp/flo-sbench"), help="cached lakes, run copies, scratch")
    where.add_argument("--out", type=Path, default=None, help="JSON results; None: <work>/streaming-results.json")
    where.add_argument(
        "--bootstrap-servers",
        default=os.environ.get("FLO_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        help="Kafka (env FLO_KAFKA_BOOTSTRAP_SERVERS)",
    )
    where.add_argument("--partitions", type=int, default=4, help="partitions of every benchmark topic")
    where.add_argument("--driver-memory", default="8g", help="spark.driver.memory of the one local session")
    where.add_argument("--keep-topics", action="store_true", help="keep the benchmark's topics on the broker")
    where.add_argument("--keep-runs", action="store_true", help="keep the per-run lake copies and checkpoints")
    return parser


def settings_from(args: argparse.Namespace) -> BenchSettings:
    """Validated settings from parsed flags."""
    work = args.work.resolve()
    return BenchSettings(
        customers=args.customers,
        events=args.events,
        seed=args.seed,
        k=args.k,
        work=work,
        out=(args.out or work / "streaming-results.json").resolve(),
        bootstrap_servers=args.bootstrap_servers,
        driver_memory=args.driver_memory,
        partitions=args.partitions,
        max_offsets=args.max_offsets,
        naive=args.naive,
        naive_timeout_s=args.naive_timeout,
        event_span_hours=args.event_span_hours,
        rates=args.rates,
        trigger_seconds=args.trigger_seconds,
        latency_seconds=args.latency_seconds,
        warmup_events=args.warmup_events,
        drain_timeout_s=args.drain_timeout,
        skip_throughput=args.skip_throughput,
        skip_naive=args.skip_naive,
        skip_latency=args.skip_latency,
        skip_merge=args.skip_merge,
        designs=args.designs,
        compactions=args.compaction,
        compact_seconds=args.compact_seconds,
        compaction_nice=args.compaction_nice,
        keep_topics=args.keep_topics,
        keep_runs=args.keep_runs,
    )


def session(settings: BenchSettings) -> SparkSession:
    """The one SparkSession, from the product's factory with the benchmark's scratch folders."""
    base = default_spark_settings("flo-seg-streaming-bench")
    return build_session(
        replace(base, driver_memory=settings.driver_memory),
        extra_conf={
            "spark.local.dir": str(settings.work / "spark-local"),
            "spark.sql.warehouse.dir": str(settings.work / "warehouse"),
            # Every batch's progress is read back after a run, not just the last 100.
            "spark.sql.streaming.numRecentProgressUpdates": "100000",
            # Only the benchmark's own toPandas calls (profiles, record timestamps) use Arrow.
            "spark.sql.execution.arrow.pyspark.enabled": "true",
            # The producer's profiles of 10M customers come to the driver at once (1.2 GiB).
            "spark.driver.maxResultSize": "4g",
            # As `flo-seg stream`: the background compaction runs in its own pool.
            "spark.scheduler.mode": "FAIR",
        },
    )


def fill_topic(settings: BenchSettings, profiles_path: Path, topic: str, events: int, seed: int) -> dict[str, Any]:
    """Create the topic and fill it with valid orders as fast as the project's producer sends them."""
    ensure_topics(settings.bootstrap_servers, [TopicSpec(name=topic, partitions=settings.partitions)])
    produce = ProduceSettings(
        bootstrap_servers=settings.bootstrap_servers,
        topic=topic,
        events=events,
        seed=seed,
        event_seconds=settings.event_span_hours * 3600.0 / events,
    )
    started = time.perf_counter()
    summary = run_produce(produce, read_profiles(profiles_path))
    seconds = time.perf_counter() - started
    if summary.failed or summary.sent != events:
        raise RuntimeError(f"filling {topic} sent {summary.sent} of {events}, {summary.failed} not delivered")
    return {"events": summary.sent, "seconds": round(seconds, 1), "events_per_s": round(summary.sent / seconds, 1)}


@dataclass(kw_only=True)
class Runner:
    """One benchmark run: the session, the cached lake and the topics it created (deleted at the end)."""

    spark: SparkSession
    settings: BenchSettings
    report: Report
    base_lake: Path
    profiles_path: Path
    prefix: str
    runs_dir: Path
    topics: list[str] = field(default_factory=list)
    topic: str | None = None

    def drain(self, topic: str, pattern: str, max_offsets: int, label: str) -> ThroughputResult:
        """One throughput run with its own changes topic, its copies removed afterwards."""
        changes_topic = f"{self.prefix}.{label}.changes"
        self.topics.append(changes_topic)
        ensure_topics(
            self.settings.bootstrap_servers, [TopicSpec(name=changes_topic, partitions=self.settings.partitions)]
        )
        log.info("throughput: %s ...", label)
        result = run_throughput(
            self.spark, self.settings, self.base_lake, topic, pattern, max_offsets, self.runs_dir / label, changes_topic
        )
        log.info("throughput: %s: %s events/s", label, _num(result.events_per_s))
        self.spark.catalog.clearCache()
        if not self.settings.keep_runs:
            shutil.rmtree(self.runs_dir / label, ignore_errors=True)
        return result

    def prepare_drains(self) -> None:
        """An untimed warm-up drain (class loading, JIT), then the pre-filled topic."""
        settings = self.settings
        warmup_topic = f"{self.prefix}.warmup.orders"
        self.topics.append(warmup_topic)
        fill_topic(settings, self.profiles_path, warmup_topic, settings.warmup_events, settings.seed + 3)
        warmup = self.drain(warmup_topic, PRODUCT, settings.warmup_events, "warmup")
        self.report.meta["warmup_drain"] = {"events": warmup.events, "seconds": warmup.seconds, "error": warmup.error}
        self.topic = f"{self.prefix}.orders"
        self.topics.append(self.topic)
        log.info("pre-filling %s with %d events ...", self.topic, settings.events)
        self.report.meta["prefill"] = fill_topic(
            settings, self.profiles_path, self.topic, settings.events, settings.seed
        )
        self.report.save()

    def drains(self, sizes: Sequence[int]) -> None:
        """Drain the pre-filled topic with every pattern at each size; patterns alternate under similar load."""
        settings = self.settings
        if self.topic is None:
            self.prepare_drains()
        assert self.topic is not None
        patterns = [] if settings.skip_throughput else [PRODUCT]
        patterns += [] if settings.skip_merge else [MERGE_DESIGN]
        patterns += [] if settings.skip_naive else list(settings.naive)
        for max_offsets in sizes:
            for pattern in patterns:
                # The literal raw MERGE fails on its first batch: one attempt shows it.
                if pattern == NAIVE_RAW and max_offsets != settings.max_offsets[0]:
                    continue
                self.report.throughput.append(self.drain(self.topic, pattern, max_offsets, f"{pattern}-{max_offsets}"))
                self.report.save()

    def latencies(self) -> None:
        """Every offered rate at every trigger interval."""
        runs = [
            (design, compaction)
            for design in self.settings.designs
            for compaction in (self.settings.compactions if design == PRODUCT else (THREAD,))
        ]
        for design, compaction in runs:
            for trigger_s in self.settings.trigger_seconds:
                for rate in self.settings.rates:
                    label = latency_label(design, rate, trigger_s, compaction)
                    log.info("latency: %s ...", label)
                    result = run_latency(
                        self.spark,
                        self.settings,
                        self.base_lake,
                        self.profiles_path,
                        rate,
                        trigger_s,
                        self.runs_dir / label,
                        self.topics,
                        self.prefix,
                        design,
                        compaction,
                    )
                    log.info("latency: %s: p99 %s s", label, _num(result.p99_s, ".2f"))
                    self.report.latency.append(result)
                    self.report.save()
                    self.spark.catalog.clearCache()
                    if not self.settings.keep_runs:
                        shutil.rmtree(self.runs_dir / label, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Build or reuse the lake, pre-fill a topic, run every measurement, print the report, write JSON."""
    args = build_parser().parse_args(argv)
    settings = settings_from(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("py4j", "kafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings.work.mkdir(parents=True, exist_ok=True)
    tag = time.strftime("%Y%m%d-%H%M%S")
    uptime_before = uptime()
    spark = session(settings)
    meta: dict[str, Any] = {
        "command": " ".join(["python -m benchmarks.streaming", *(argv if argv is not None else sys.argv[1:])]),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()},
        "machine": machine(spark, kafka_python=metadata.version("kafka-python"), kafka_broker=_kafka_broker_version()),
        "uptime_before": uptime_before,
    }
    report = Report(out=settings.out, meta=meta)
    runs_dir = settings.work / "runs" / tag
    runner: Runner | None = None
    try:
        log.info("lake with %d customers ...", settings.customers)
        base_lake, meta["lake"] = build_lake(spark, settings)
        report.save()
        runner = Runner(
            spark=spark,
            settings=settings,
            report=report,
            base_lake=base_lake,
            profiles_path=cached_profiles(spark, base_lake),
            prefix=f"flo.sbench.{tag}",
            runs_dir=runs_dir,
        )
        has_drains = not (settings.skip_throughput and settings.skip_naive)
        # Every target at the first trigger size before the other sizes, so a long run that has to be cut
        # short still answers all three.
        if has_drains:
            runner.drains(settings.max_offsets[:1])
        if not settings.skip_latency:
            runner.latencies()
        if has_drains:
            runner.drains(settings.max_offsets[1:])
    finally:
        meta["uptime_after"] = uptime()
        meta["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        report.save()
        if runner is not None and not settings.keep_topics:
            delete_topics(settings.bootstrap_servers, runner.topics)
        if not settings.keep_runs:
            shutil.rmtree(runs_dir, ignore_errors=True)
    print()
    print(f"{settings.customers:,} customers, {settings.events:,} events; pre-fill: {meta.get('prefill', '–')}")
    print()
    print(markdown(report))
    print(f"\nuptime before: {uptime_before}\nuptime after:  {meta['uptime_after']}")
    print(f"results written to {settings.out}")
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
