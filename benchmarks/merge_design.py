"""Today's MERGE design of the stream, kept as the benchmarks' baseline (`python -m benchmarks.streaming`).

Until the state moved into the state store, every micro-batch MERGEd its per-customer aggregates into
customer_state, re-read the changed customers from it to score them, compared with customer_segments
and MERGEd the new segments into it: each batch scanned both tables whatever its size. This is that
handler, on the same parse, scoring and idempotent writes as the product, with the de-duplication the
product had then (two stateful operators before the handler; it now happens in the state step).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from delta.tables import DeltaTable
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from batch.lake import append_table, read_table, with_conflict_retry
from batch.score import ScoringModel, score_customers
from flo_seg.settings import LakeSettings
from schemas.tables import (
    CUSTOMER_SEGMENTS,
    CUSTOMER_SEGMENTS_SCHEMA,
    CUSTOMER_STATE,
    QUARANTINE,
    SEGMENT_CHANGES,
    conform,
)
from streaming.events import CONTENT_KEY, REASON, invalid_event_key, parse_order_events, quarantine_rows, valid_orders
from streaming.job import (
    BatchLogger,
    BatchMetrics,
    ModelCache,
    StreamSettings,
    initial_clock,
    kafka_records,
    prepare_tables,
    publish_changes,
    read_clock,
    write_clock,
)
from streaming.state import customer_order_deltas, idempotent_txn, merge_state

log = logging.getLogger(__name__)


def dedupe_key() -> Column:
    """The event-level de-duplication key: a valid event's event_id, an invalid one's Kafka coordinates."""
    return F.when(F.col(REASON).isNull(), F.col("event_id")).otherwise(invalid_event_key())


def two_step_dedupe(events_df: DataFrame, window: str) -> DataFrame:
    """The stream's de-duplication until it moved into the state step: first occurrence of each event_id
    within `window` of stream time, exact re-sends dropped by one operator and conflicting reuses by another."""
    return (
        events_df.withColumns({"dedupe_key": dedupe_key(), "ingested_at": F.current_timestamp()})
        .withWatermark("ingested_at", window)
        .dropDuplicatesWithinWatermark(["dedupe_key", CONTENT_KEY])
        .dropDuplicatesWithinWatermark(["dedupe_key"])
    )


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


def customers_to_rescore(
    segments: DataFrame, changed_ids: DataFrame, model_version: str, as_of: dt.date, aging_days: int
) -> DataFrame:
    """Changed customers, plus those scored by another model or more than `aging_days` of event time ago."""
    stale = segments.where(
        (F.col("model_version") != model_version) | (F.col("as_of") <= F.lit(as_of - dt.timedelta(days=aging_days)))
    ).select("master_id")
    return changed_ids.select("master_id").unionByName(stale).distinct()


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
                write_clock(spark, lake, clock, (as_of, model.record.version), app, batch_id)
            memo.update(first_batch=False, clock=clock, swept=(as_of, model.record.version))
            deltas.unpersist()
        finally:
            events.unpersist()
        metrics.seconds = time.monotonic() - started
        on_metrics(metrics)

    return handle


def start_merge_stream(
    spark: SparkSession, lake: LakeSettings, settings: StreamSettings, listener: BatchLogger
) -> StreamingQuery:
    """The MERGE design's query: parse + de-duplicate, then the MERGE handler per micro-batch."""
    prepare_tables(spark, lake)
    spark.streams.addListener(listener)
    query_id = threading.Event()
    holder: dict[str, str] = {}

    def app_id() -> str:
        query_id.wait(timeout=60)
        return holder["id"]

    writer = (
        two_step_dedupe(parse_order_events(kafka_records(spark, settings)), settings.dedupe_window)
        .writeStream.queryName(settings.query_name)
        .option("checkpointLocation", settings.checkpoint)
        .foreachBatch(make_batch_handler(lake, settings, app_id, listener.record))
    )
    writer = (
        writer.trigger(availableNow=True)
        if settings.available_now
        else writer.trigger(processingTime=f"{settings.trigger_seconds} seconds")
    )
    query = writer.start()
    holder["id"] = str(query.id)
    query_id.set()
    return query
