"""Compaction: customer_state and customer_segments brought current from the stream's logs, off the hot path.

The stream appends what each micro-batch changed to `state_log` and `segment_log` (and sweeps,
re-scores and retrains append to `segment_log` too). A compaction reads each log's versions after the
last one it compacted (through the change data feed), keeps the newest row per customer, and MERGEs
it into the table users read, replacing a row only with a newer one: by `state_seq` for the state,
by `(state_seq, model_version, as_of)` for the segments. It records how far it read in `compactions`
after the MERGE, so a compaction killed in between repeats the same MERGE, which then changes
nothing: the tables are the same whatever the moment of the crash.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass

import psutil
from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from batch.lake import append_table, ensure_table, overwrite_table, read_table, with_conflict_retry
from flo_seg.faults import crash_point
from flo_seg.settings import LakeSettings
from flo_seg.stopping import stop_requested
from schemas.tables import (
    COMPACTIONS,
    COMPACTIONS_SCHEMA,
    CUSTOMER_SEGMENTS,
    CUSTOMER_STATE,
    SEGMENT_LOG,
    STATE_LOG,
    TABLE_SCHEMAS,
    conform,
)

log = logging.getLogger(__name__)

# Within one process, compactions run one at a time (the stream's background one, a sweep's, a stop's).
_LOCK = threading.Lock()


@dataclass(frozen=True)
class Compaction:
    """One log and the table it keeps current; `order` ranks two rows of one customer (newest last)."""

    log: str
    target: str
    order: tuple[str, ...]

    def newer(self, new: str, old: str) -> str:
        """SQL: the `new` row ranks after the `old` one."""

        def key(alias: str) -> str:
            parts = [f"coalesce({alias}.state_seq, 0)", *(f"{alias}.{c}" for c in self.order[1:])]
            return f"struct({', '.join(parts)})"

        return f"{key(new)} > {key(old)}"


STATE = Compaction(STATE_LOG, CUSTOMER_STATE, ("state_seq",))
SEGMENTS = Compaction(SEGMENT_LOG, CUSTOMER_SEGMENTS, ("state_seq", "model_version", "as_of"))
COMPACTIONS_IN_ORDER = (STATE, SEGMENTS)


@dataclass(kw_only=True)
class Compacted:
    """What one compaction of one log did."""

    log: str
    from_version: int
    to_version: int
    rows_read: int = 0
    customers: int = 0
    seconds: float = 0.0


def log_version(spark: SparkSession, lake: LakeSettings, name: str) -> int:
    """A log table's latest version."""
    row = DeltaTable.forPath(spark, lake.table(name)).history(1).select("version").first()
    assert row is not None
    return int(row[0])


def compacted_version(spark: SparkSession, lake: LakeSettings, name: str) -> int:
    """The last version of a log a compaction has merged (-1 before any)."""
    row = read_table(spark, lake, COMPACTIONS).where(F.col("log") == name).agg(F.max("to_version")).first()
    return -1 if row is None or row[0] is None else int(row[0])


def log_rows(spark: SparkSession, lake: LakeSettings, name: str, after: int, upto: int) -> DataFrame:
    """Rows appended to a log in versions (after, upto], with `_commit_version` (a truncation reads as none)."""
    changes = (
        spark.read.format("delta")
        .option("readChangeFeed", "true")
        .option("startingVersion", after + 1)
        .option("endingVersion", upto)
        .load(lake.table(name))
    )
    return changes.where(F.col("_change_type") == "insert").drop("_change_type", "_commit_timestamp")


def newest_per_customer(rows: DataFrame, order: tuple[str, ...]) -> DataFrame:
    """One row per master_id: the highest by `order`, then by the latest commit."""
    key = F.struct(F.coalesce(F.col(order[0]), F.lit(0)), *[F.col(c) for c in order[1:]], F.col("_commit_version"))
    payload = F.struct(*[F.col(c) for c in rows.columns])
    return rows.groupBy("master_id").agg(F.max_by(payload, key).alias("row")).select("row.*")


def compact_log(spark: SparkSession, lake: LakeSettings, compaction: Compaction, upto: int | None = None) -> Compacted:
    """MERGE a log's new versions into its table, newer rows only; then record how far it read."""
    started = time.monotonic()
    after = compacted_version(spark, lake, compaction.log)
    latest = log_version(spark, lake, compaction.log) if upto is None else upto
    done = Compacted(log=compaction.log, from_version=after + 1, to_version=latest)
    if latest <= after:
        return done
    rows = log_rows(spark, lake, compaction.log, after, latest).persist()
    try:
        done.rows_read = rows.count()
        if done.rows_read:
            source = conform(newest_per_customer(rows, compaction.order), TABLE_SCHEMAS[compaction.target])
            target = DeltaTable.forPath(spark, lake.table(compaction.target))
            merge = (
                target.alias("t")
                .merge(source.alias("s"), "t.master_id = s.master_id")
                .whenMatchedUpdateAll(condition=compaction.newer("s", "t"))
                .whenNotMatchedInsertAll()
            )
            with_conflict_retry(merge.execute, what=f"compact {compaction.log} into {compaction.target}")
            crash_point("FLO_FAULT_AFTER_COMPACT_MERGE", compaction.log)
            done.customers = rows.select("master_id").distinct().count()
    finally:
        rows.unpersist()
    done.seconds = round(time.monotonic() - started, 3)
    _record(spark, lake, compaction, done)
    return done


def _record(spark: SparkSession, lake: LakeSettings, compaction: Compaction, done: Compacted) -> None:
    """Append how far a compaction read (after its MERGE: a crash in between repeats the MERGE)."""
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    row = (
        compaction.log,
        compaction.target,
        done.from_version,
        done.to_version,
        done.rows_read,
        done.customers,
        done.seconds,
        now,
    )
    append_table(spark.createDataFrame([row], COMPACTIONS_SCHEMA), lake, COMPACTIONS)


def prepare_logs(spark: SparkSession, lake: LakeSettings) -> None:
    """The logs and the compaction record exist (created empty, with their contract properties)."""
    for name in (STATE_LOG, SEGMENT_LOG, COMPACTIONS, CUSTOMER_STATE, CUSTOMER_SEGMENTS):
        ensure_table(spark, lake, name)


def append_segments(scored: DataFrame, lake: LakeSettings, source: str) -> None:
    """Segment rows scored outside the stream (re-score, retrain) into segment_log; the next compaction
    and the running stream's state both take them from there."""
    tagged = scored.withColumn("batch_id", F.lit(None).cast("long")).withColumn("source", F.lit(source))
    append_table(tagged, lake, SEGMENT_LOG)


def reset_logs(spark: SparkSession, lake: LakeSettings) -> None:
    """Empty both logs (the state was rebuilt from a history CSV: what they hold no longer applies) and
    mark them compacted up to the truncation, so no compaction applies their old rows to the new state."""
    with _LOCK:
        prepare_logs(spark, lake)
        for compaction in COMPACTIONS_IN_ORDER:
            overwrite_table(spark.createDataFrame([], TABLE_SCHEMAS[compaction.log]), lake, compaction.log)
            version = log_version(spark, lake, compaction.log)
            _record(spark, lake, compaction, Compacted(log=compaction.log, from_version=version, to_version=version))


def compact_lake(spark: SparkSession, lake: LakeSettings, *, prepared: bool = False) -> list[Compacted]:
    """Bring customer_state and customer_segments current with everything their logs hold now.

    `prepared`: the caller has run `prepare_logs` on this lake already (the running stream), so the
    tables' schemas and properties are not read again.
    """
    with _LOCK:
        if not prepared:
            prepare_logs(spark, lake)
        done = [compact_log(spark, lake, c) for c in COMPACTIONS_IN_ORDER]
    for d in done:
        if d.rows_read:
            log.info(
                "compacted %s v%d..%d into %s: %d rows, %d customers, %.2fs",
                d.log,
                d.from_version,
                d.to_version,
                STATE.target if d.log == STATE.log else SEGMENTS.target,
                d.rows_read,
                d.customers,
                d.seconds,
            )
    return done


# The background compaction's session: many small tasks, so a micro-batch never waits long for a core.
_SMALL_TASKS = {
    "spark.sql.shuffle.partitions": "16",
    "spark.sql.adaptive.coalescePartitions.enabled": "false",
    "spark.sql.files.maxPartitionBytes": str(8 * 2**20),
}


class Compactor:
    """Compacts every `interval_s` in a background thread while the stream runs.

    It has a session of its own: its jobs run in their own FAIR pool, and with many small tasks (more
    shuffle partitions, smaller file splits), so a micro-batch's job waits for one short task at most
    instead of a whole stage of the compaction.
    """

    POOL = "compaction"

    def __init__(self, spark: SparkSession, lake: LakeSettings, interval_s: float) -> None:
        self.spark = spark.newSession()
        timezone = spark.conf.get("spark.sql.session.timeZone") or "UTC"
        for key, value in {**_SMALL_TASKS, "spark.sql.session.timeZone": timezone}.items():
            self.spark.conf.set(key, value)
        self.lake, self.interval_s = lake, interval_s
        self.stopping = threading.Event()
        self.failures = 0
        self.prepared = False  # the first round prepares the lake, the later ones need not
        self.thread = threading.Thread(target=self._run, name="flo-seg-compactor", daemon=True)

    def start(self) -> Compactor:
        """Start the background thread."""
        self.thread.start()
        return self

    def _run(self) -> None:
        self.spark.sparkContext.setLocalProperty("spark.scheduler.pool", self.POOL)
        while not self.stopping.wait(self.interval_s):
            try:
                compact_lake(self.spark, self.lake, prepared=self.prepared)
                self.prepared = True
            except Exception as exc:  # the next round retries; the stream itself is not affected
                self.failures += 1
                log.warning("compaction failed (will retry in %.0fs): %s", self.interval_s, exc)

    def stop(self, *, final: bool = True) -> None:
        """Stop the thread; with `final`, compact once more so the tables hold everything logged."""
        self.stopping.set()
        self.thread.join()
        if final:
            compact_lake(self.spark, self.lake, prepared=self.prepared)


def compact_until_stopped(
    spark: SparkSession, lake: LakeSettings, interval_s: float, *, parent_pid: int | None = None
) -> int:
    """`flo-seg compact --every`: compact at an interval until SIGINT / SIGTERM (or until `parent_pid` has
    exited), then once more. Returns 1 when rounds failed.

    With `parent_pid` (a stream's child), a signal means the stream is stopping and compacts once more
    itself, so the child only finishes its round; if the stream died instead, the child compacts once more.

    The compaction as a process of its own, beside a stream: on a cluster it can get executors of its
    own, on one machine the OS can run it at a lower priority (`nice`), so that its MERGEs do not take
    cores from the micro-batches. Two compactions at once are safe: a MERGE only ever replaces a row
    with a newer one, and a conflict is retried.
    """
    stopping = stop_requested("the compaction after the current round", log)
    log.info("compacting %s every %gs until stopped", lake.root, interval_s)
    compactor = Compactor(spark, lake, interval_s).start()
    orphaned = False
    while not stopping.wait(1.0):
        if parent_pid is not None and not psutil.pid_exists(parent_pid):
            log.info("process %d has exited: stopping the compaction", parent_pid)
            orphaned = True
            break
    compactor.stop(final=parent_pid is None or orphaned)
    log.info("compaction stopped (%d failed rounds)", compactor.failures)
    return 1 if compactor.failures else 0
