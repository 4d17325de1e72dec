"""`flo-seg stream`: Kafka order events → exactly-once customer state → re-scored segments → change feed.

Exactly once: the Kafka source and the event_id de-duplication live in the query's checkpoint, so a
restarted query replays an unfinished micro-batch with the same `batch_id` and the same rows. Every
Delta write of the batch is an idempotent transaction (`txnAppId` = query id, `txnVersion` =
batch_id): a write that committed before a crash is skipped on replay, one that did not is redone.
The writes are ordered so that a replay recomputes exactly what the crashed attempt would have
written: segment changes are appended before the segments they compare against are replaced, and the
event-time clock is advanced last.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from delta.tables import DeltaTable
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery, StreamingQueryListener

from batch.lake import append_table, ensure_table, read_table, table_exists, with_conflict_retry
from batch.score import ScoringModel, load_current_model, score_customers
from flo_seg.errors import first_line
from flo_seg.settings import LakeSettings
from schemas.tables import (
    CUSTOMER_SEGMENTS,
    CUSTOMER_SEGMENTS_SCHEMA,
    CUSTOMER_STATE,
    QUARANTINE,
    SEGMENT_CHANGES,
    STREAM_CLOCK,
    STREAM_CLOCK_SCHEMA,
    conform,
)
from streaming.events import (
    DEFAULT_DEDUPE_WINDOW,
    REASON,
    drop_duplicate_events,
    parse_order_events,
    quarantine_rows,
    valid_orders,
)
from streaming.state import customer_order_deltas, state_merge_inserts, state_merge_updates

log = logging.getLogger(__name__)

_TXN_APP = "spark.databricks.delta.write.txnAppId"
_TXN_VERSION = "spark.databricks.delta.write.txnVersion"
# Spark's name of a dropDuplicatesWithinWatermark step in a query's progress.
DEDUPE_OPERATOR = "dedupeWithinWatermark"


@dataclass(frozen=True, kw_only=True)
class StreamSettings:
    """Where to read, how fast, where to keep progress."""

    bootstrap_servers: str
    checkpoint: str
    topic: str = "flo.orders"
    changes_topic: str | None = "flo.segment-changes"
    query_name: str = "flo-seg-stream"
    trigger_seconds: float = 2.0
    available_now: bool = False
    max_offsets_per_trigger: int | None = 200_000
    starting_offsets: str = "earliest"
    aging_days: int = 7
    dedupe_window: str = DEFAULT_DEDUPE_WINDOW
    kafka_options: dict[str, str] = field(default_factory=dict)


@dataclass(kw_only=True)
class BatchMetrics:
    """What one micro-batch did, for its log line."""

    batch_id: int
    events: int = 0
    valid: int = 0
    quarantined: int = 0
    customers_updated: int = 0
    rescored: int = 0
    changes: int = 0
    model_version: str = ""
    clock: dt.datetime | None = None
    seconds: float = 0.0


@contextmanager
def idempotent_txn(spark: SparkSession, app_id: str, version: int) -> Iterator[None]:
    """Session confs that make the MERGE inside skip itself if this (app, version) already committed."""
    spark.conf.set(_TXN_APP, app_id)
    spark.conf.set(_TXN_VERSION, str(version))
    try:
        yield
    finally:
        spark.conf.unset(_TXN_APP)
        spark.conf.unset(_TXN_VERSION)


def merge_state(spark: SparkSession, lake: LakeSettings, deltas: DataFrame, app_id: str, batch_id: int) -> None:
    """Add the batch's per-customer aggregates to customer_state (new customers inserted)."""
    target = DeltaTable.forPath(spark, lake.table(CUSTOMER_STATE))

    def run() -> None:
        with idempotent_txn(spark, f"{app_id}:state", batch_id):
            (
                target.alias("t")
                .merge(deltas.alias("s"), "t.master_id = s.master_id")
                .whenMatchedUpdate(set=state_merge_updates())
                .whenNotMatchedInsert(values=state_merge_inserts())
                .execute()
            )

    with_conflict_retry(run, what=f"batch {batch_id}: MERGE customer_state")


def merge_segments(spark: SparkSession, lake: LakeSettings, scored: DataFrame, app_id: str, batch_id: int) -> None:
    """Upsert re-scored customers; a row scored by a newer model version is never overwritten by an older one."""
    target = DeltaTable.forPath(spark, lake.table(CUSTOMER_SEGMENTS))
    source = conform(scored, CUSTOMER_SEGMENTS_SCHEMA)

    def run() -> None:
        with idempotent_txn(spark, f"{app_id}:segments", batch_id):
            (
                target.alias("t")
                .merge(source.alias("s"), "t.master_id = s.master_id")
                .whenMatchedUpdateAll(condition="t.model_version <= s.model_version")
                .whenNotMatchedInsertAll()
                .execute()
            )

    with_conflict_retry(run, what=f"batch {batch_id}: MERGE customer_segments")


def segment_change_rows(scored: DataFrame, previous: DataFrame, batch_id: int) -> DataFrame:
    """Customers whose segment differs from their previous row (or who had none), as change events."""
    joined = scored.alias("n").join(previous.alias("p"), "master_id", "left")
    changed = joined.where(F.col("p.segment").isNull() | (F.col("p.segment") != F.col("n.segment")))
    change_id = F.substring(
        F.sha2(F.concat_ws("|", "master_id", F.lit(batch_id), "n.model_version", "n.segment"), 256), 1, 32
    )
    return changed.select(
        change_id.alias("change_id"),
        "master_id",
        F.col("p.segment").alias("previous_segment"),
        F.col("n.segment").alias("segment"),
        F.col("n.model_version").alias("model_version"),
        F.col("n.as_of").alias("as_of"),
        F.current_timestamp().alias("changed_at"),
        F.lit(batch_id).cast("long").alias("batch_id"),
    )


def customers_to_rescore(
    segments: DataFrame, changed_ids: DataFrame, model_version: str, as_of: dt.date, aging_days: int
) -> DataFrame:
    """Changed customers, plus those scored by another model or more than `aging_days` of event time ago."""
    stale = segments.where(
        (F.col("model_version") != model_version) | (F.col("as_of") <= F.lit(as_of - dt.timedelta(days=aging_days)))
    ).select("master_id")
    return changed_ids.select("master_id").unionByName(stale).distinct()


def read_clock(spark: SparkSession, lake: LakeSettings) -> dt.datetime | None:
    """The event-time clock, or None before the first batch."""
    if not table_exists(spark, lake, STREAM_CLOCK):
        return None
    row = read_table(spark, lake, STREAM_CLOCK).agg(F.max("clock_ts")).first()
    return None if row is None else row[0]


def initial_clock(spark: SparkSession, lake: LakeSettings) -> dt.datetime:
    """Before any event: the latest last order in customer_state (the history's own clock)."""
    row = read_table(spark, lake, CUSTOMER_STATE).agg(F.max("last_order_date")).first()
    if row is None or row[0] is None:
        raise LookupError("customer_state is empty; run `flo-seg train --history CSV` first")
    return dt.datetime.combine(row[0], dt.time())


def write_clock(
    spark: SparkSession,
    lake: LakeSettings,
    clock: dt.datetime,
    model_version: str,
    app_id: str,
    batch_id: int,
) -> None:
    """Replace the one clock row; committed last, so a replayed batch sees the clock it started from."""
    row = spark.createDataFrame(
        [
            (
                clock,
                clock.date(),
                model_version,
                batch_id,
                dt.datetime.now(dt.timezone.utc).replace(tzinfo=None),
            )
        ],
        STREAM_CLOCK_SCHEMA,
    )
    writer = row.write.format("delta").mode("overwrite").option("txnAppId", f"{app_id}:clock")
    with_conflict_retry(
        lambda: writer.option("txnVersion", batch_id).save(lake.table(STREAM_CLOCK)), what="write clock"
    )


def publish_changes(changes: DataFrame, settings: StreamSettings) -> None:
    """Segment changes as JSON keyed by master_id (at least once; change_id is the dedupe key)."""
    if settings.changes_topic is None:
        return
    payload = changes.select(
        F.col("master_id").alias("key"),
        F.to_json(F.struct(*[F.col(c) for c in changes.columns])).alias("value"),
    )
    writer = payload.write.format("kafka").option("kafka.bootstrap.servers", settings.bootstrap_servers)
    for key, value in settings.kafka_options.items():
        writer = writer.option(key, value)
    writer.option("topic", settings.changes_topic).save()


class ModelCache:
    """The current model, reloaded only when `flo-seg train` publishes a new version (hot reload)."""

    def __init__(self) -> None:
        self.model: ScoringModel | None = None

    def current(self, spark: SparkSession, lake: LakeSettings) -> ScoringModel:
        """Reload when the registry's current version differs from the cached one."""
        latest = read_table(spark, lake, "models").where("is_current").orderBy(F.col("trained_at").desc()).first()
        if latest is None:
            raise LookupError("no current model; run `flo-seg train` first")
        if self.model is None or self.model.record.version != latest["model_version"]:
            previous = None if self.model is None else self.model.record.version
            self.model = load_current_model(spark, lake)
            log.info("model %s loaded (was %s)", self.model.record.version, previous)
        return self.model


def crash_point(variable: str, batch_id: int) -> None:
    """Fault injection for the crash-safety tests: SIGKILL this process group at a chosen batch."""
    if os.environ.get(variable) == str(batch_id):
        log.warning("%s=%d: killing the process group now", variable, batch_id)
        os.killpg(os.getpgid(0), signal.SIGKILL)


def rescore_and_publish(
    spark: SparkSession,
    lake: LakeSettings,
    settings: StreamSettings,
    deltas: DataFrame,
    model: ScoringModel,
    as_of: dt.date,
    needs_sweep: bool,
    may_be_replay: bool,
    app: str,
    batch_id: int,
    metrics: BatchMetrics,
) -> None:
    """Score changed (and, on a sweep, stale) customers; append changes, upsert segments, publish."""
    segments = read_table(spark, lake, CUSTOMER_SEGMENTS)
    if needs_sweep:
        ids = customers_to_rescore(segments, deltas, model.record.version, as_of, settings.aging_days)
    else:
        ids = deltas.select("master_id")
    state = read_table(spark, lake, CUSTOMER_STATE).join(ids, "master_id", "left_semi")
    scored = score_customers(state, model, F.lit(as_of)).persist()
    try:
        metrics.rescored = scored.count()
        if not metrics.rescored:
            return
        changes = segment_change_rows(scored, segments.select("master_id", "segment"), batch_id).persist()
        metrics.changes = changes.count()
        # Changes are appended before the segments they were computed against are replaced.
        if metrics.changes:
            append_table(changes, lake, SEGMENT_CHANGES, txn=(f"{app}:changes", batch_id))
        merge_segments(spark, lake, scored, app, batch_id)
        # Published from the table, never from `changes`: the segments MERGE invalidates cached plans that
        # read customer_segments, and a crashed attempt may have committed its changes already.
        if metrics.changes or may_be_replay:
            published = read_table(spark, lake, SEGMENT_CHANGES).where(F.col("batch_id") == batch_id)
            if metrics.changes or published.limit(1).count():
                publish_changes(published, settings)
        changes.unpersist()
    finally:
        scored.unpersist()


class BatchFailed(RuntimeError):
    """A micro-batch could not be written; the message names the Kafka offsets it covered."""


def offset_ranges(events: DataFrame) -> str:
    """`topic[partition] offsets a..b` for each partition of a micro-batch, to name it in an error."""
    try:
        rows = (
            events.groupBy("kafka_topic", "kafka_partition")
            .agg(F.min("kafka_offset").alias("first"), F.max("kafka_offset").alias("last"))
            .orderBy("kafka_topic", "kafka_partition")
            .collect()
        )
    except Exception as exc:  # the source itself may be what failed
        return f"offsets unknown: {first_line(exc, type(exc).__name__)}"
    if not rows:
        return "no events"
    return ", ".join(f"{r['kafka_topic']}[{r['kafka_partition']}] offsets {r['first']}..{r['last']}" for r in rows)


def make_batch_handler(
    lake: LakeSettings,
    settings: StreamSettings,
    app_id: Callable[[], str],
    on_metrics: Callable[[BatchMetrics], None],
) -> Callable[[DataFrame, int], None]:
    """The foreachBatch function: one idempotent state + segments update per micro-batch."""
    models = ModelCache()
    # What this process already did. Only its first batch can be the replay of a crashed attempt, and
    # an aging sweep at a given (clock date, model) finds nothing the second time, so both are skipped
    # when known to be redundant: the tables end up the same, the batch costs less.
    memo: dict[str, Any] = {"first_batch": True, "clock": None, "swept": None}

    def handle(batch_df: DataFrame, batch_id: int) -> None:
        started = time.monotonic()
        spark = batch_df.sparkSession
        app = app_id()
        metrics = BatchMetrics(batch_id=batch_id)
        is_first = memo["first_batch"]
        events = batch_df.persist()
        try:
            counts = {r[REASON]: r["count"] for r in events.groupBy(REASON).count().collect()}
            metrics.events = sum(counts.values())
            metrics.valid = counts.get(None, 0)
            metrics.quarantined = metrics.events - metrics.valid
            if metrics.quarantined:
                append_table(quarantine_rows(events), lake, QUARANTINE, txn=(f"{app}:quarantine", batch_id))

            deltas = customer_order_deltas(valid_orders(events)).persist()
            batch_max = None
            if metrics.valid:
                merge_state(spark, lake, deltas, app, batch_id)
                crash_point("FLO_FAULT_AFTER_STATE_MERGE", batch_id)
                summary = deltas.agg(F.count(F.lit(1)), F.max("max_order_time")).first()
                metrics.customers_updated, batch_max = summary[0], summary[1]  # type: ignore[index]

            old_clock = memo["clock"] or read_clock(spark, lake) or initial_clock(spark, lake)
            clock = max(old_clock, batch_max) if batch_max is not None else old_clock
            metrics.clock = clock
            model = models.current(spark, lake)
            metrics.model_version = model.record.version
            as_of = clock.date()
            needs_sweep = memo["swept"] != (as_of, model.record.version)
            if metrics.valid or needs_sweep or is_first:
                rescore_and_publish(
                    spark, lake, settings, deltas, model, as_of, needs_sweep, is_first, app, batch_id, metrics
                )
                write_clock(spark, lake, clock, model.record.version, app, batch_id)
            memo.update(first_batch=False, clock=clock, swept=(as_of, model.record.version))
            deltas.unpersist()
        except Exception as exc:
            where = offset_ranges(events)
            log.error("batch %d (%s) failed: %s", batch_id, where, exc)
            raise BatchFailed(f"batch {batch_id} ({where}) failed: {first_line(exc, type(exc).__name__)}") from exc
        finally:
            events.unpersist()
        metrics.seconds = time.monotonic() - started
        on_metrics(metrics)

    return handle


class BatchLogger(StreamingQueryListener):
    """One log line per micro-batch, joining the handler's counts with the query's progress."""

    def __init__(self) -> None:
        self.pending: dict[int, BatchMetrics] = {}
        self.lock = threading.Lock()

    def record(self, metrics: BatchMetrics) -> None:
        """Called by the batch handler when a batch finished its writes."""
        with self.lock:
            self.pending[metrics.batch_id] = metrics

    def onQueryStarted(self, event: Any) -> None:
        """Nothing to log until a batch ends."""

    def onQueryIdle(self, event: Any) -> None:
        """Idle triggers have no batch to report."""

    def onQueryTerminated(self, event: Any) -> None:
        """Termination is logged by run_stream."""

    def onQueryProgress(self, event: Any) -> None:
        """Log `batch … events … valid … quarantined … duplicates …` for the batch that just ended."""
        progress = event.progress
        with self.lock:
            metrics = self.pending.pop(progress.batchId, None)
        # Watermark-only batches (Spark runs them to expire de-duplication state) read nothing: no line
        # unless they re-scored someone.
        if metrics is None or (not progress.numInputRows and not metrics.rescored):
            return
        dedupes = [op for op in progress.stateOperators or [] if op.operatorName == DEDUPE_OPERATOR]
        # drop_duplicate_events chains (event_id, content) then event_id; progress lists the outer one first.
        conflicts = _dropped(dedupes[0]) if dedupes else 0
        resent = sum(_dropped(op) for op in dedupes[1:])
        ids_held = int(dedupes[0].numRowsTotal or 0) if dedupes else 0
        read = int(progress.numInputRows)
        seconds = progress.batchDuration / 1000.0 if progress.batchDuration else metrics.seconds
        log.info(
            "batch %d: events in %d, valid %d, quarantined %d, duplicates dropped %d, conflicting duplicates "
            "dropped %d (event ids held %d), customers updated %d, re-scored %d, segment changes %d, model %s, "
            "clock %s, %.2fs, %.0f events/s",
            metrics.batch_id,
            read,
            metrics.valid,
            metrics.quarantined,
            resent,
            conflicts,
            ids_held,
            metrics.customers_updated,
            metrics.rescored,
            metrics.changes,
            metrics.model_version,
            metrics.clock,
            seconds,
            read / seconds if seconds else 0.0,
        )


def _dropped(operator: Any) -> int:
    return int((operator.customMetrics or {}).get("numDroppedDuplicateRows", 0))


def kafka_events(spark: SparkSession, settings: StreamSettings) -> DataFrame:
    """The Kafka source, parsed and de-duplicated on event_id within the window (state kept in the checkpoint)."""
    reader = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", settings.bootstrap_servers)
        .option("subscribe", settings.topic)
        .option("startingOffsets", settings.starting_offsets)
        .option("failOnDataLoss", "true")
    )
    if settings.max_offsets_per_trigger:
        reader = reader.option("maxOffsetsPerTrigger", settings.max_offsets_per_trigger)
    for key, value in settings.kafka_options.items():
        reader = reader.option(key, value)
    return drop_duplicate_events(parse_order_events(reader.load()), settings.dedupe_window)


def prepare_tables(spark: SparkSession, lake: LakeSettings) -> None:
    """The stream extends what `flo-seg train` created; it creates only its own tables."""
    for needed in (CUSTOMER_STATE, CUSTOMER_SEGMENTS, "models"):
        if not table_exists(spark, lake, needed):
            raise LookupError(f"no {needed} table under {lake.root}; run `flo-seg train --history CSV` first")
    # Also gives the MERGE targets of a lake written by an older version their contract properties.
    for name in (CUSTOMER_STATE, CUSTOMER_SEGMENTS, QUARANTINE, SEGMENT_CHANGES):
        ensure_table(spark, lake, name)


def start_stream(
    spark: SparkSession, lake: LakeSettings, settings: StreamSettings, listener: BatchLogger | None = None
) -> StreamingQuery:
    """Start the query (named, checkpointed, explicit trigger) and return it."""
    prepare_tables(spark, lake)
    spark.conf.set(
        "spark.sql.streaming.stateStore.providerClass",
        "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider",
    )
    listener = listener or BatchLogger()
    spark.streams.addListener(listener)
    query_id = threading.Event()
    holder: dict[str, str] = {}

    def app_id() -> str:
        query_id.wait(timeout=60)
        return holder["id"]

    handler = make_batch_handler(lake, settings, app_id, listener.record)
    writer = (
        kafka_events(spark, settings)
        .writeStream.queryName(settings.query_name)
        .option("checkpointLocation", settings.checkpoint)
        .foreachBatch(handler)
    )
    writer = (
        writer.trigger(availableNow=True)
        if settings.available_now
        else writer.trigger(processingTime=f"{settings.trigger_seconds} seconds")
    )
    query = writer.start()
    holder["id"] = str(query.id)
    query_id.set()
    log.info(
        "stream %s started: topic %s at %s, checkpoint %s, lake %s",
        settings.query_name,
        settings.topic,
        settings.bootstrap_servers,
        settings.checkpoint,
        lake.root,
    )
    return query


def as_of_column(clock: dt.datetime) -> Column:
    """The scoring date for an event-time clock."""
    return F.lit(clock.date())
