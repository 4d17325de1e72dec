"""`flo-seg stream`: Kafka order events → per-customer state in the state store → re-scored segments → changes.

The hot path touches only the customers of a micro-batch. Each customer's running state (orders,
spend, dates, channels, categories, and the segment last published for them) lives in the query's
RocksDB state store, keyed by master_id, and is updated by the JVM step in `jvm/state`
(streaming/customer_state.py); the state is bootstrapped once, from customer_state and
customer_segments, when the query starts on a new checkpoint. A micro-batch then scores just the
customers it changed, compares with the segment the state says was published, and appends what
changed to Delta: `state_log`, `segment_log`, `segment_changes`, `quarantine`. The segments it
appends come back to the state through a second source (the segment_log table read as a stream), so
the next batch compares with them. customer_state and customer_segments, the tables users read, are
brought current from the logs by a compaction off the hot path (batch/compact.py).

Exactly once: the Kafka and segment_log offsets, the de-duplication and the customer state live in the
checkpoint, so a restarted query replays an unfinished micro-batch with the same `batch_id`, the same
rows and the same state. Every Delta write of the batch is an idempotent transaction (`txnAppId` =
query id and what, `txnVersion` = batch_id): a write that committed before a crash is skipped on
replay, one that did not is redone. The writes of a batch run at once. The event-time clock is the
latest order time in state_log; `stream_clock` records it with each sweep.

Aging and model reload are sweeps: when the event-time date or the current model changes, the batch
compacts, then re-scores every customer whose segment is older than `aging_days` or from another model.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.streaming import StreamingQuery, StreamingQueryListener

from batch.compact import SEGMENTS, compact_lake, compacted_version, log_rows, log_version, prepare_logs
from batch.lake import (
    ConcurrentWrites,
    append_once,
    ensure_table,
    latest_commit,
    read_table,
    table_exists,
    with_conflict_retry,
)
from batch.migrations import change_rows
from batch.score import ScoringModel, load_current_model, score_customers
from flo_seg.errors import first_line
from flo_seg.faults import crash_point
from flo_seg.settings import ORDERS_TOPIC, SEGMENT_CHANGES_TOPIC, LakeSettings, StreamOptions
from schemas.tables import (
    CUSTOMER_SEGMENTS,
    CUSTOMER_STATE,
    QUARANTINE,
    SEGMENT_CHANGES,
    SEGMENT_LOG,
    SEGMENT_LOG_SCHEMA,
    STATE_LOG,
    STREAM_CLOCK,
    STREAM_CLOCK_SCHEMA,
)
from streaming.customer_state import (
    INVALID,
    STATE,
    apply_customer_state,
    as_customer_state,
    bootstrap_state,
    event_inputs,
    segment_inputs,
    state_schema,
)
from streaming.events import parse_order_events
from streaming.lease import LeaseFile
from streaming.sinks import publish_json, start_foreach_batch

log = logging.getLogger(__name__)

# Session settings the stream's query starts with.
STREAM_SESSION_CONF = {
    "spark.sql.streaming.stateStore.providerClass": (
        "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"
    ),
    # Each batch's checkpoint writes only the changed keys, not a RocksDB snapshot.
    "spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled": "true",
    # No batch without data: the state step has no timers and the query no watermark, so such a batch
    # would change no customer, yet it would run the whole batch handler.
    "spark.sql.streaming.noDataMicroBatches.enabled": "false",
}


@pydantic_dataclass(frozen=True, kw_only=True, config=ConfigDict(extra="forbid"))
class StreamSettings(StreamOptions):
    """How the stream runs (the `[stream]` settings) plus where it reads, publishes and keeps progress."""

    bootstrap_servers: str
    checkpoint: str  # required here: the CLI fills it in beside the lake
    topic: str = ORDERS_TOPIC
    changes_topic: str | None = SEGMENT_CHANGES_TOPIC  # None: changes are not published
    available_now: bool = False
    kafka_options: dict[str, str] = Field(default_factory=dict)  # kafka.* options of the Spark Kafka source


@dataclass(kw_only=True)
class BatchMetrics:
    """What one micro-batch did, for its log line."""

    batch_id: int
    events: int = 0
    valid: int = 0
    quarantined: int = 0
    resent: int = 0  # copies of an order dropped: same event_id and content
    conflicting: int = 0  # dropped: an event_id the customer had, with other content
    customers_updated: int = 0
    rescored: int = 0
    swept: int = 0
    changes: int = 0
    model_version: str = ""
    clock: dt.datetime | None = None
    seconds: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)  # seconds per step of the handler

    @contextmanager
    def timed(self, step: str) -> Iterator[None]:
        """Add the time spent inside to `steps[step]`."""
        started = time.monotonic()
        try:
            yield
        finally:
            self.steps[step] = round(self.steps.get(step, 0.0) + time.monotonic() - started, 3)


def read_clock(spark: SparkSession, lake: LakeSettings) -> dt.datetime | None:
    """The event-time clock, or None before the first batch.

    `stream_clock` is written with each sweep (when the event date or the model changes); in between,
    the clock is the latest order time in `state_log` (a late order never raises either).
    """
    times = []
    for name, column in ((STREAM_CLOCK, "clock_ts"), (STATE_LOG, "last_order_ts")):
        if table_exists(spark, lake, name):
            row = read_table(spark, lake, name).agg(F.max(column)).first()
            if row is not None and row[0] is not None:
                times.append(row[0])
    return max(times, default=None)


def initial_clock(spark: SparkSession, lake: LakeSettings) -> dt.datetime:
    """Before any event: the latest last order in customer_state (the history's own clock)."""
    row = read_table(spark, lake, CUSTOMER_STATE).agg(F.max("last_order_date")).first()
    if row is None or row[0] is None:
        raise LookupError("customer_state is empty; run `flo-seg train --history CSV` first")
    return dt.datetime.combine(row[0], dt.time())


def last_sweep(spark: SparkSession, lake: LakeSettings) -> tuple[dt.date, str] | None:
    """(event date, model version) of the last sweep, from the clock row."""
    if not table_exists(spark, lake, STREAM_CLOCK):
        return None
    row = read_table(spark, lake, STREAM_CLOCK).first()
    if row is None or row["last_sweep_date"] is None:
        return None
    return row["last_sweep_date"], row["model_version"]


def write_clock(
    spark: SparkSession,
    lake: LakeSettings,
    clock: dt.datetime,
    swept: tuple[dt.date, str],
    app_id: str,
    batch_id: int,
) -> None:
    """Replace the one clock row (with the sweep it ran): committed after the sweep, so a replayed batch
    whose sweep did not finish sweeps again."""
    row = spark.createDataFrame(
        [
            (
                clock,
                swept[0],
                swept[1],
                batch_id,
                dt.datetime.now(dt.UTC).replace(tzinfo=None),
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
    publish_json(
        changes,
        topic=settings.changes_topic,
        bootstrap_servers=settings.bootstrap_servers,
        kafka_options=settings.kafka_options,
    )


class ModelCache:
    """The current model, reloaded only when `flo-seg train` publishes a new version (hot reload).

    At most every `check_seconds` it lists the models table's Delta log (no Spark job: a micro-batch
    does not wait for a core for it) and reads the registry only when a commit was added.
    """

    def __init__(self, check_seconds: float = 5.0) -> None:
        self.model: ScoringModel | None = None
        self.check_seconds = check_seconds
        self.checked = 0.0
        self.commit = -1

    def current(self, spark: SparkSession, lake: LakeSettings) -> ScoringModel:
        """Reload when the registry's current version differs from the cached one."""
        if self.model is not None and time.monotonic() - self.checked < self.check_seconds:
            return self.model
        self.checked = time.monotonic()
        commit = latest_commit(spark, lake, "models")
        if self.model is not None and commit == self.commit:
            return self.model
        latest = read_table(spark, lake, "models").where("is_current").orderBy(F.col("trained_at").desc()).first()
        if latest is None:
            raise LookupError("no current model; run `flo-seg train` first")
        if self.model is None or self.model.record.version != latest["model_version"]:
            previous = None if self.model is None else self.model.record.version
            self.model = load_current_model(spark, lake)
            log.info("model %s loaded (was %s)", self.model.record.version, previous)
        self.commit = commit
        return self.model


def segment_change_rows(scored: DataFrame, batch_id: int) -> DataFrame:
    """Scored customers whose segment differs from `previous_segment` (or who had none), as change events."""
    return change_rows(scored, batch_id=batch_id, id_tag=F.lit(batch_id), changed_at=F.current_timestamp())


def _published_key(seq: str, model: str, as_of: str) -> F.Column:
    return F.struct(F.coalesce(F.col(seq), F.lit(-1)).alias("seq"), F.col(model).alias("m"), F.col(as_of).alias("d"))


def previous_segments(state_rows: DataFrame, unacked: DataFrame | None) -> DataFrame:
    """(master_id, previous_segment) for the batch's customers: the newest segment published for them.

    That is the one the state holds, unless `unacked` (segment_log rows the state has not read back
    yet) holds a newer one: an available-now run reads segment_log only up to where it was at the start.
    """
    held = state_rows.select(
        "master_id", "segment", _published_key("segment_seq", "model_version", "segment_as_of").alias("key")
    )
    if unacked is None:
        return held.select("master_id", F.col("segment").alias("previous_segment"))
    later = unacked.join(held.select("master_id"), "master_id", "left_semi").select(
        "master_id", "segment", _published_key("state_seq", "model_version", "as_of").alias("key")
    )
    return held.unionByName(later).groupBy("master_id").agg(F.max_by("segment", "key").alias("previous_segment"))


def unacked_segments(spark: SparkSession, lake: LakeSettings, settings: StreamSettings, batch_id: int) -> DataFrame:
    """segment_log rows of earlier batches (and re-scores) from the version this batch's segment_log offset
    stands at on: a superset of what the state has not read back (more is harmless: the newest wins)."""
    offset = _source_offset(spark, f"{settings.checkpoint.rstrip('/')}/offsets/{batch_id}", "reservoirVersion")
    # (reservoirVersion V, index): versions before V are read; V itself only up to `index`, so from V on.
    after = int(offset["reservoirVersion"]) - 1 if offset else -1
    latest = log_version(spark, lake, SEGMENT_LOG)
    if latest <= after:
        return spark.createDataFrame([], SEGMENT_LOG_SCHEMA)
    rows = log_rows(spark, lake, SEGMENT_LOG, after, latest)
    # This batch's own rows (a crashed attempt may have written them) are not "earlier".
    return rows.where(F.col("batch_id").isNull() | (F.col("batch_id") < batch_id))


def append_log(
    df: DataFrame, lake: LakeSettings, name: str, source: str, app: str, batch_id: int, *, may_be_replay: bool = True
) -> None:
    """Append rows to state_log / segment_log, tagged with the batch and what wrote them; once per batch."""
    tagged = df.withColumn("batch_id", F.lit(batch_id).cast("long")).withColumn("source", F.lit(source))
    append_once(tagged, lake, name, batch_tag(app, f"{name}:{source}", batch_id), may_exist=may_be_replay)


def batch_tag(app: str, what: str, batch_id: int) -> str:
    """The userMetadata of a micro-batch's commit: query id, what, batch id."""
    return f"{app}:{what}:{batch_id}"


def stale_customers(segments: DataFrame, model_version: str, as_of: dt.date, aging_days: int) -> DataFrame:
    """Customers scored by another model or more than `aging_days` of event time ago, with that segment."""
    return segments.where(
        (F.col("model_version") != model_version) | (F.col("as_of") <= F.lit(as_of - dt.timedelta(days=aging_days)))
    ).select("master_id", F.col("segment").alias("previous_segment"))


def anyone_stale(spark: SparkSession, lake: LakeSettings, model_version: str, as_of: dt.date, aging_days: int) -> bool:
    """Whether a sweep could find a stale customer, without compacting first.

    Checked row by row in customer_segments and in the segment_log rows no compaction has merged yet:
    a customer stale after a compaction has its newest row in one of the two, so False means nobody.
    """
    columns = ("master_id", "segment", "model_version", "as_of")
    frames = [read_table(spark, lake, CUSTOMER_SEGMENTS).select(*columns)]
    after, latest = compacted_version(spark, lake, SEGMENTS.log), log_version(spark, lake, SEGMENT_LOG)
    if latest > after:
        frames.append(log_rows(spark, lake, SEGMENT_LOG, after, latest).select(*columns))
    return any(stale_customers(frame, model_version, as_of, aging_days).limit(1).count() for frame in frames)


class BatchFailed(RuntimeError):
    """A micro-batch could not be written; the message names the Kafka offsets it covered."""


def _source_offset(spark: SparkSession, path: str, marker: str) -> dict[str, Any]:
    """The JSON line of a checkpoint offset file that contains `marker` (a topic name, a Delta field)."""
    for row in spark.read.text(path).collect():
        line = row[0].strip()
        if line.startswith("{") and f'"{marker}"' in line:
            value = json.loads(line)
            if isinstance(value, dict):
                return value
    return {}


def _kafka_offsets(spark: SparkSession, path: str, topic: str) -> dict[str, int]:
    """The `{partition: offset}` of `topic` in a checkpoint offset file."""
    value = _source_offset(spark, path, topic).get(topic)
    return {str(p): int(o) for p, o in value.items()} if isinstance(value, dict) else {}


def offset_ranges(spark: SparkSession, settings: StreamSettings, batch_id: int) -> str:
    """`topic[partition] offsets a..b` for each partition a micro-batch read, from the checkpoint's offset log."""
    root = settings.checkpoint.rstrip("/")
    try:
        end = _kafka_offsets(spark, f"{root}/offsets/{batch_id}", settings.topic)
        previous = f"{root}/offsets/{batch_id - 1}" if batch_id > 0 else f"{root}/sources/0/0"
        start = _kafka_offsets(spark, previous, settings.topic)
    except Exception as exc:  # the checkpoint itself may be what failed
        return f"offsets unknown: {first_line(exc, type(exc).__name__)}"
    ranges = [
        f"{settings.topic}[{p}] offsets {start.get(p, 0)}..{o - 1}"
        for p, o in sorted(end.items(), key=lambda kv: int(kv[0]))
        if o > start.get(p, 0)
    ]
    return ", ".join(ranges) or "no events"


@dataclass
class _Memo:
    """What this process already knows: the clock, the last sweep, the run's first batch."""

    first_batch: int | None = None
    clock: dt.datetime | None = None
    swept: tuple[dt.date, str] | None = None
    loaded: bool = False


def batch_summary(out: DataFrame) -> dict[str, Row]:
    """Rows, orders and the latest order time per kind of the state step's output (runs the step)."""
    summary = out.groupBy("kind").agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum("batch_orders").alias("orders"),
        F.max("last_order_ts").alias("latest"),
        F.sum("resent").alias("resent"),
        F.sum("conflicting").alias("conflicting"),
    )
    return {r["kind"]: r for r in summary.collect()}


@dataclass(frozen=True)
class ScoredBatch:
    """What a micro-batch writes for its customers, built (not run) at one analysis date."""

    as_of: dt.date
    state: DataFrame  # their customer_state rows
    scored: DataFrame  # persisted: features, segment, RFM, previous_segment
    changes: DataFrame  # persisted: the segment changes among them

    def unpersist(self) -> None:
        """Drop the cached frames."""
        self.changes.unpersist()
        self.scored.unpersist()


def scored_batch(
    out: DataFrame, model: ScoringModel, as_of: dt.date, unacked: DataFrame | None, batch_id: int
) -> ScoredBatch:
    """The state step's customers scored with `model` at `as_of`, against the segment last published."""
    state = as_customer_state(out, "segment", "model_version", "segment_seq", "segment_as_of")
    previous = previous_segments(state, unacked)
    scored = (
        score_customers(state.drop("segment", "model_version"), model, F.lit(as_of))
        .join(previous, "master_id")
        .persist()
    )
    return ScoredBatch(as_of, state, scored, segment_change_rows(scored, batch_id).persist())


def make_batch_handler(
    lake: LakeSettings,
    settings: StreamSettings,
    app_id: Callable[[], str],
    on_metrics: Callable[[BatchMetrics], None],
) -> Callable[[DataFrame, int], None]:
    """The foreachBatch function over the state step's output: quarantine, logs, scores, changes, clock."""
    models = ModelCache()
    memo = _Memo()

    def handle(out_df: DataFrame, batch_id: int) -> None:
        started = time.monotonic()
        spark = out_df.sparkSession
        app = app_id()
        metrics = BatchMetrics(batch_id=batch_id)
        if memo.first_batch is None:
            memo.first_batch = batch_id
        # Only the first batch of a process can be the replay of a crashed attempt.
        may_be_replay = batch_id == memo.first_batch
        if not memo.loaded:
            memo.clock = read_clock(spark, lake) or initial_clock(spark, lake)
            memo.swept = last_sweep(spark, lake)
            memo.loaded = True
        out = out_df.persist()
        frames: ScoredBatch | None = None
        try:
            with metrics.timed("model check"):
                model = models.current(spark, lake)
            metrics.model_version = model.record.version
            with metrics.timed("unacked"):
                unacked = unacked_segments(spark, lake, settings, batch_id) if settings.available_now else None
            assert memo.clock is not None

            def summarise() -> dict[str, Row]:
                with metrics.timed("state step"):
                    return batch_summary(out)

            # The state step's job runs on a thread of its own while this one builds the scoring frames
            # over its output (Python and py4j work on the driver) at the clock's date so far; a batch
            # that moves the date builds them again.
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="flo-seg-state") as pool:
                summary = pool.submit(summarise)
                with metrics.timed("plan"):
                    frames = scored_batch(out, model, memo.clock.date(), unacked, batch_id)
                kinds = summary.result()
            state_summary = kinds.get(STATE)
            metrics.quarantined = kinds[INVALID]["rows"] if INVALID in kinds else 0
            metrics.customers_updated = state_summary["rows"] if state_summary else 0
            metrics.valid = int(state_summary["orders"] or 0) if state_summary else 0
            metrics.resent = sum(int(k["resent"] or 0) for k in kinds.values())
            metrics.conflicting = sum(int(k["conflicting"] or 0) for k in kinds.values())
            metrics.events = metrics.valid + metrics.quarantined
            clock = memo.clock
            if state_summary is not None and state_summary["latest"] is not None:
                clock = max(clock, state_summary["latest"])
            metrics.clock = clock
            as_of = clock.date()
            wanted = (as_of, model.record.version)
            needs_sweep = memo.swept != wanted
            if not metrics.customers_updated or frames.as_of != as_of:
                frames.unpersist()
                frames = None
            if metrics.customers_updated and frames is None:
                with metrics.timed("plan"):
                    frames = scored_batch(out, model, as_of, unacked, batch_id)

            def appending(rows: DataFrame, table: str, what: str) -> Callable[[], object]:
                return lambda: append_once(rows, lake, table, batch_tag(app, what, batch_id), may_exist=may_be_replay)

            def appending_log(rows: DataFrame, table: str) -> Callable[[], object]:
                return lambda: append_log(rows, lake, table, "stream", app, batch_id, may_be_replay=may_be_replay)

            # The batch's writes are independent idempotent transactions on different tables (a replay
            # recomputes the same rows from the state store), so each starts as soon as its rows are
            # ready and runs beside the scoring and the publish; only a sweep, which reads what they
            # wrote, and the clock after it wait for them.
            with ConcurrentWrites(metrics.timed) as writes:
                if metrics.quarantined:
                    quarantined = out.where(F.col("kind") == INVALID).select("quarantine.*")
                    writes.start("quarantine", appending(quarantined, QUARANTINE, "quarantine"))
                if frames is not None:
                    state, scored, changes = frames.state, frames.scored, frames.changes
                    writes.start("state_log", appending_log(state, STATE_LOG))
                    metrics.rescored = metrics.customers_updated
                    with metrics.timed("score"):
                        metrics.changes = changes.count()
                    if metrics.changes and not (may_be_replay or needs_sweep):
                        # On Kafka before the segment appends: that is where a change is awaited. Should
                        # an append fail, the replay publishes the same change_ids again.
                        with metrics.timed("publish"):
                            publish_changes(changes, settings)
                        crash_point("FLO_FAULT_AFTER_PUBLISH", "publish")
                    writes.start("segment_log", appending_log(scored, SEGMENT_LOG))
                    if metrics.changes:
                        writes.start("segment_changes", appending(changes, SEGMENT_CHANGES, "changes"))
                with metrics.timed("writes"):  # what the batch still waits for once it has published
                    writes.wait()
            with metrics.timed("unpersist"):
                if frames is not None:
                    frames.unpersist()
                    frames = None
            crash_point("FLO_FAULT_AFTER_LOGS", batch_id)

            if needs_sweep:
                with metrics.timed("sweep"):
                    sweep(spark, lake, settings, model, as_of, app, batch_id, metrics)
            if (may_be_replay or needs_sweep) and settings.changes_topic is not None:
                # A crashed attempt (or the sweep) may have appended changes the frames above do not hold.
                with metrics.timed("publish"):
                    published = read_table(spark, lake, SEGMENT_CHANGES).where(F.col("batch_id") == batch_id)
                    if published.limit(1).count():
                        publish_changes(published, settings)
            if needs_sweep:
                with metrics.timed("clock"):
                    write_clock(spark, lake, clock, wanted, app, batch_id)
            memo.clock, memo.swept = clock, wanted
        except Exception as exc:
            where = offset_ranges(spark, settings, batch_id)
            log.error("batch %d (%s) failed: %s", batch_id, where, exc)
            raise BatchFailed(f"batch {batch_id} ({where}) failed: {first_line(exc, type(exc).__name__)}") from exc
        finally:
            if frames is not None:
                frames.unpersist()
            out.unpersist()
        metrics.seconds = time.monotonic() - started
        on_metrics(metrics)

    return handle


def sweep(
    spark: SparkSession,
    lake: LakeSettings,
    settings: StreamSettings,
    model: ScoringModel,
    as_of: dt.date,
    app: str,
    batch_id: int,
    metrics: BatchMetrics,
) -> None:
    """Aging and model reload: re-score every customer whose segment is stale at `as_of` with `model`.

    Runs once per event date and model version. When someone may be stale it compacts first (so the
    tables hold every batch, this one's too), then costs a scan of customer_segments plus scoring the
    stale customers; otherwise only the check.
    """
    started = time.monotonic()
    if not anyone_stale(spark, lake, model.record.version, as_of, settings.aging_days):
        log.info(
            "sweep at %s with model %s: nobody stale (%.1fs)", as_of, model.record.version, time.monotonic() - started
        )
        return
    compact_lake(spark, lake, prepared=True)  # the stream prepared the lake when it started
    stale = stale_customers(
        read_table(spark, lake, CUSTOMER_SEGMENTS), model.record.version, as_of, settings.aging_days
    )
    state = read_table(spark, lake, CUSTOMER_STATE).join(stale, "master_id")
    scored = score_customers(state, model, F.lit(as_of)).persist()
    try:
        metrics.swept = scored.count()
        if metrics.swept:
            changes = segment_change_rows(scored, batch_id)
            metrics.changes += changes.count()
            # Changes first: a replay after the segment rows committed would find nobody stale any more.
            append_once(changes, lake, SEGMENT_CHANGES, batch_tag(app, "sweep-changes", batch_id), may_exist=True)
            crash_point("FLO_FAULT_IN_SWEEP", "sweep")
            append_log(scored, lake, SEGMENT_LOG, "sweep", app, batch_id)
    finally:
        scored.unpersist()
    metrics.rescored += metrics.swept
    log.info(
        "sweep at %s with model %s: %d stale customers re-scored in %.1fs",
        as_of,
        model.record.version,
        metrics.swept,
        time.monotonic() - started,
    )


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
        # A batch that read no order (only segment_log rows, or a watermark-only batch of a query started
        # without STREAM_SESSION_CONF) gets no line unless it re-scored someone.
        if metrics is None or (not kafka_rows(progress) and not metrics.rescored):
            return
        read = kafka_rows(progress)
        seconds = progress.batchDuration / 1000.0 if progress.batchDuration else metrics.seconds
        log.info(
            "batch %d: events in %d, valid %d, quarantined %d, duplicates dropped %d, conflicting duplicates "
            "dropped %d, customers updated %d, re-scored %d (swept %d), segment changes %d, "
            "model %s, clock %s, %.2fs, %.0f events/s",
            metrics.batch_id,
            read,
            metrics.valid,
            metrics.quarantined,
            metrics.resent,
            metrics.conflicting,
            metrics.customers_updated,
            metrics.rescored,
            metrics.swept,
            metrics.changes,
            metrics.model_version,
            metrics.clock,
            seconds,
            read / seconds if seconds else 0.0,
        )


def kafka_rows(progress: Any) -> int:
    """Rows a micro-batch read from Kafka (the segment_log source's rows are the stream's own)."""
    return sum(int(s.numInputRows) for s in progress.sources if "kafka" in s.description.lower())


# Where the order records come from: a streaming DataFrame shaped like Spark's Kafka source (key, value,
# topic, partition, offset, ...). The stream reads Kafka; tests give a file source of such rows.
RecordSource = Callable[[SparkSession, "StreamSettings"], DataFrame]

# The columns of Spark's Kafka source that the stream reads: rows of this shape in Parquet files replay
# records without a broker (`file_records`).
KAFKA_RECORD_SCHEMA = T.StructType(
    [
        T.StructField("key", T.BinaryType()),
        T.StructField("value", T.BinaryType()),
        T.StructField("topic", T.StringType()),
        T.StructField("partition", T.IntegerType()),
        T.StructField("offset", T.LongType()),
    ]
)


def file_records(folder: str) -> RecordSource:
    """A record source of KAFKA_RECORD_SCHEMA Parquet under `folder`/*, one file per micro-batch (tests,
    benchmarks)."""

    def source(spark: SparkSession, settings: StreamSettings) -> DataFrame:
        return spark.readStream.schema(KAFKA_RECORD_SCHEMA).option("maxFilesPerTrigger", 1).parquet(f"{folder}/*")

    return source


def kafka_records(spark: SparkSession, settings: StreamSettings) -> DataFrame:
    """The order events topic as Spark's Kafka source reads it."""
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
    return reader.load()


# Beside the query's own files in the checkpoint: the segment_log version its state starts after.
SEGMENT_LOG_START = "flo-seg-segment-log-start.json"


def segment_log_start(spark: SparkSession, lake: LakeSettings, checkpoint: str) -> int:
    """The segment_log version to read published segments from, fixed when the checkpoint is new.

    The state is bootstrapped from customer_segments as compacted at that first start; a restart must
    read segment_log from the same version (Spark takes `startingVersion` again while the source has
    no committed offset yet). Re-reading a version the bootstrap already holds is harmless: the
    newest segment wins.
    """
    marker = LeaseFile(spark, checkpoint, SEGMENT_LOG_START)
    found = marker.read()
    if found is None:
        start = max(compacted_version(spark, lake, SEGMENTS.log), 0)
        if marker.create(json.dumps({"starting_version": start}).encode()):
            return start
        found = marker.read()
    assert found is not None
    return int(json.loads(found[0])["starting_version"])


def published_segments(spark: SparkSession, lake: LakeSettings, starting_version: int) -> DataFrame:
    """segment_log as a stream: what was published comes back to the state.

    A truncation of the log (a `train --history --replace-state`) is skipped: that needs a new
    checkpoint anyway.
    """
    return (
        spark.readStream.format("delta")
        .option("startingVersion", starting_version)
        .option("skipChangeCommits", "true")
        .load(lake.table(SEGMENT_LOG))
    )


def state_updates(
    spark: SparkSession, lake: LakeSettings, settings: StreamSettings, source: RecordSource = kafka_records
) -> DataFrame:
    """Orders, quarantined events and published segments through the per-customer state step."""
    events = parse_order_events(source(spark, settings))
    published = published_segments(spark, lake, segment_log_start(spark, lake, settings.checkpoint))
    inputs = event_inputs(events).unionByName(segment_inputs(published))
    return apply_customer_state(inputs, bootstrap(spark, lake, settings.checkpoint), settings.dedupe_window)


# Beside the query's own files in the checkpoint: the bootstrap snapshot, until the first batch committed.
BOOTSTRAP_SNAPSHOT = "flo-seg-bootstrap"


def bootstrap(spark: SparkSession, lake: LakeSettings, checkpoint: str) -> DataFrame:
    """The state store's initial state: customer_state ⋈ customer_segments, as of the checkpoint's first start.

    Spark plans it with every micro-batch although only a new checkpoint's first batch reads it.
    Planned from the Delta tables (pinned versions) it cost 0.3-0.4 s of every batch at 1M customers,
    so the join is written once as Parquet beside the checkpoint, which plans in a few ms; a restart
    before the first commit reads the same snapshot. Once the first batch has committed the state
    lives in the checkpoint: the bootstrap is empty and the snapshot is removed.
    """
    snapshot = LeaseFile(spark, checkpoint, BOOTSTRAP_SNAPSHOT)
    if LeaseFile(spark, checkpoint, "commits/0").read() is not None:
        snapshot.delete(recursive=True)
        return spark.createDataFrame([], state_schema(spark))
    if LeaseFile(spark, checkpoint, f"{BOOTSTRAP_SNAPSHOT}/_SUCCESS").read() is None:
        started = time.monotonic()
        tables = []
        for name in (CUSTOMER_STATE, CUSTOMER_SEGMENTS):
            version = log_version(spark, lake, name)
            tables.append(spark.read.format("delta").option("versionAsOf", version).load(lake.table(name)))
        bootstrap_state(*tables).write.mode("overwrite").parquet(snapshot.uri)
        log.info("bootstrap snapshot of the customer tables written in %.1fs", time.monotonic() - started)
    return spark.read.schema(state_schema(spark)).parquet(snapshot.uri)


def prepare_tables(spark: SparkSession, lake: LakeSettings) -> None:
    """The stream extends what `flo-seg train` created; it creates only its own tables, then compacts.

    Compacting first makes customer_state and customer_segments hold everything logged so far: they
    bootstrap the state store when the checkpoint is new.
    """
    for needed in (CUSTOMER_STATE, CUSTOMER_SEGMENTS, "models"):
        if not table_exists(spark, lake, needed):
            raise LookupError(f"no {needed} table under {lake.root}; run `flo-seg train --history CSV` first")
    for name in (QUARANTINE, SEGMENT_CHANGES):
        ensure_table(spark, lake, name)
    prepare_logs(spark, lake)
    compact_lake(spark, lake, prepared=True)


def start_stream(
    spark: SparkSession,
    lake: LakeSettings,
    settings: StreamSettings,
    listener: BatchLogger | None = None,
    source: RecordSource = kafka_records,
) -> StreamingQuery:
    """Start the query (named, checkpointed, explicit trigger) over `source` (Kafka) and return it."""
    prepare_tables(spark, lake)
    for key, value in STREAM_SESSION_CONF.items():
        spark.conf.set(key, value)
    # A new checkpoint fixes its state partitions; a restart keeps the checkpoint's whatever is set here.
    spark.conf.set(
        "spark.sql.shuffle.partitions", str(settings.state_partitions or spark.sparkContext.defaultParallelism)
    )
    listener = listener or BatchLogger()
    spark.streams.addListener(listener)
    query = start_foreach_batch(
        state_updates(spark, lake, settings, source),
        lambda app_id: make_batch_handler(lake, settings, app_id, listener.record),
        name=settings.query_name,
        checkpoint=settings.checkpoint,
        available_now=settings.available_now,
        trigger_seconds=settings.trigger_seconds,
        output_mode="update",
    )
    log.info(
        "stream %s started: topic %s at %s, checkpoint %s, lake %s",
        settings.query_name,
        settings.topic,
        settings.bootstrap_servers,
        settings.checkpoint,
        lake.root,
    )
    return query
