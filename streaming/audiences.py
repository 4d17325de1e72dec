"""The audience follower: a second query of `flo-seg stream` that keeps `audience_members` current.

It reads what the segment stream (and re-scores, sweeps, retrains) append to `segment_log`, through
the log's change data feed, and for each micro-batch: takes each customer's newest row, evaluates the
audiences' predicates on it (batch/audiences.py), compares with the customer's rows in
`audience_members`, appends the joins and leaves to `audience_changes` (once per batch: Delta's
txnAppId/txnVersion), publishes them to Kafka (at least once; `change_id` is the dedupe key) and
MERGEs them into `audience_members` (a replay finds nothing left to change).

Off the order path: the segment stream never waits for it; an audience change follows the segment
row it comes from by about one of its micro-batches (docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from batch.audiences import membership_changes, memberships, merge_members
from batch.compact import SEGMENTS, newest_per_customer
from batch.lake import append_table, ensure_table, read_table
from flo_seg.settings import LakeSettings
from schemas.tables import AUDIENCE_CHANGES, AUDIENCE_MEMBERS, SEGMENT_LOG
from streaming.sinks import BatchHandler, publish_json, start_foreach_batch

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class AudienceSettings:
    """Where the follower reads, writes and publishes."""

    audiences: Mapping[str, str]
    checkpoint: str
    query_name: str = "flo-seg-audiences"
    bootstrap_servers: str = ""
    topic: str | None = None  # None: changes are not published
    kafka_options: Mapping[str, str] | None = None
    available_now: bool = False
    trigger_seconds: float = 0.0


def follow_batch(rows: DataFrame, batch_id: int, *, lake: LakeSettings, settings: AudienceSettings, app_id: str) -> int:
    """One micro-batch of segment_log rows: the joins and leaves they make, recorded, published, applied."""
    spark = rows.sparkSession
    started = time.monotonic()
    inserted = rows.where(F.col("_change_type") == "insert")
    newest = newest_per_customer(inserted.drop("_change_type", "_commit_timestamp"), SEGMENTS.order).persist()
    try:
        current = memberships(newest, settings.audiences)
        members = read_table(spark, lake, AUDIENCE_MEMBERS)
        previous = members.join(newest.select("master_id"), "master_id", "left_semi")
        changes = membership_changes(
            current,
            previous.select("audience", "master_id", "segment"),
            changed_at=F.current_timestamp(),
            batch_id=batch_id,
            id_tag=F.lit(f"{app_id}-{batch_id}"),
        ).persist()
        count = changes.count()
        if count:
            # The record first, once per batch; then Kafka; then the members, which a replay finds applied.
            append_table(changes, lake, AUDIENCE_CHANGES, txn=(f"{app_id}:audience_changes", batch_id))
            if settings.topic is not None:
                publish_json(
                    changes,
                    topic=settings.topic,
                    bootstrap_servers=settings.bootstrap_servers,
                    kafka_options=settings.kafka_options or {},
                )
            merge_members(spark, lake, changes)
        changes.unpersist()
        log.info(
            "audiences batch %d: %d customers re-checked, %d joins and leaves in %.1fs",
            batch_id,
            newest.count(),
            count,
            time.monotonic() - started,
        )
        return count
    finally:
        newest.unpersist()


def start_audiences(spark: SparkSession, lake: LakeSettings, settings: AudienceSettings) -> StreamingQuery:
    """Start the follower over segment_log's change data feed (its first batch: the whole log so far)."""
    for name in (AUDIENCE_MEMBERS, AUDIENCE_CHANGES, SEGMENT_LOG):
        ensure_table(spark, lake, name)
    source = spark.readStream.format("delta").option("readChangeFeed", "true").load(lake.table(SEGMENT_LOG))

    def make_handler(app_id: Callable[[], str]) -> BatchHandler:
        # The query id names the follower's transactions; it is the checkpoint's, stable across restarts.
        def handle(rows: DataFrame, batch_id: int) -> None:
            follow_batch(rows, batch_id, lake=lake, settings=settings, app_id=app_id())

        return handle

    query = start_foreach_batch(
        source,
        make_handler,
        name=settings.query_name,
        checkpoint=settings.checkpoint,
        available_now=settings.available_now,
        trigger_seconds=settings.trigger_seconds,
    )
    log.info(
        "audience follower %s started: %d audiences, checkpoint %s",
        settings.query_name,
        len(settings.audiences),
        settings.checkpoint,
    )
    return query
