"""Delta table edges: read, overwrite, append and MERGE under `<lake>/<name>`, retrying write conflicts."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from contextlib import AbstractContextManager
from typing import TypeVar

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, DataFrameWriter, SparkSession

from flo_seg.settings import LakeSettings
from schemas.tables import TABLE_PROPERTIES, TABLE_SCHEMAS, conform

log = logging.getLogger(__name__)
R = TypeVar("R")

_DELETION_VECTORS = "delta.enableDeletionVectors"
_DELETION_VECTORS_FEATURE = "deletionVectors"

# Delta's optimistic concurrency raises these when two writers touch the same files; both are retryable.
_CONFLICTS = (
    "ConcurrentAppendException",
    "ConcurrentDeleteReadException",
    "ConcurrentDeleteDeleteException",
    "ConcurrentTransactionException",
    "MetadataChangedException",
    "ProtocolChangedException",
    "DELTA_CONCURRENT",
)


def is_write_conflict(exc: BaseException) -> bool:
    """A Delta optimistic-concurrency conflict, identified by its class name or error class."""
    text = f"{type(exc).__name__} {exc}"
    return any(marker in text for marker in _CONFLICTS)


def with_conflict_retry(action: Callable[[], R], *, what: str, attempts: int = 8, base_delay: float = 0.2) -> R:
    """Run a Delta write, retrying optimistic-concurrency conflicts with jittered exponential backoff."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as exc:
            if not is_write_conflict(exc) or attempt == attempts:
                raise
            delay = base_delay * 2 ** (attempt - 1) * (0.5 + random.random())
            log.warning("%s: Delta write conflict (attempt %d/%d), retrying in %.2fs", what, attempt, attempts, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def table_exists(spark: SparkSession, lake: LakeSettings, name: str) -> bool:
    """Whether a Delta table has been created at `<lake>/<name>`."""
    return DeltaTable.isDeltaTable(spark, lake.table(name))


def read_table(spark: SparkSession, lake: LakeSettings, name: str) -> DataFrame:
    """A Delta table, or a clear error naming the command that creates it."""
    if not table_exists(spark, lake, name):
        raise FileNotFoundError(f"no Delta table {name!r} under {lake.root}; run `flo-seg train --history CSV` first")
    return spark.read.format("delta").load(lake.table(name))


def overwrite_table(df: DataFrame, lake: LakeSettings, name: str, *, replace_where: str | None = None) -> None:
    """Atomically replace a table (or the rows matching `replace_where`) with contract-shaped rows.

    A missing table is created by this write, its contract properties in its first commit (one commit,
    not an empty create and then the data: a third of the time, measured). An existing table first
    gets the contract columns and properties it lacks (an overwrite keeps a table's properties).
    """
    spark = df.sparkSession
    shaped = conform(df, TABLE_SCHEMAS[name])

    def write() -> None:
        writer = shaped.write.format("delta").mode("overwrite")
        if table_exists(spark, lake, name):
            upgrade_table(spark, lake, name)
        else:
            writer = with_contract_properties(writer, name)
        if replace_where:
            writer = writer.option("replaceWhere", replace_where)
        else:
            writer = writer.option("overwriteSchema", "true")
        writer.save(lake.table(name))

    # Decided again on a conflict: a concurrent writer may have created the table meanwhile.
    with_conflict_retry(write, what=f"overwrite {name}")


def append_table(df: DataFrame, lake: LakeSettings, name: str, *, txn: tuple[str, int] | None = None) -> None:
    """Append contract-shaped rows; `txn=(app_id, version)` makes a replayed append a no-op."""
    writer = conform(df, TABLE_SCHEMAS[name]).write.format("delta").mode("append")
    if txn is not None:
        writer = writer.option("txnAppId", txn[0]).option("txnVersion", txn[1])
    with_conflict_retry(lambda: writer.save(lake.table(name)), what=f"append {name}")


def tag_committed(spark: SparkSession, lake: LakeSettings, name: str, tag: str, *, depth: int = 500) -> bool:
    """Whether one of a table's last `depth` commits carries `tag` as its userMetadata."""
    history = DeltaTable.forPath(spark, lake.table(name)).history(depth)
    return bool(history.where(history["userMetadata"] == tag).limit(1).count())


def append_once(df: DataFrame, lake: LakeSettings, name: str, tag: str, *, may_exist: bool) -> bool:
    """Append contract-shaped rows in a commit tagged `tag`; with `may_exist` (a replay), skip the append
    when a recent commit already carries the tag. Returns whether it appended.

    The same exactly-once as Delta's txnAppId/txnVersion for one writer that knows when it may be
    replaying, without the per-commit cost of looking the transaction up (measured ~0.6 s a commit).
    """
    spark = df.sparkSession
    if may_exist and tag_committed(spark, lake, name, tag):
        log.info("%s: commit %s already there, not appended again", name, tag)
        return False
    writer = conform(df, TABLE_SCHEMAS[name]).write.format("delta").mode("append").option("userMetadata", tag)
    with_conflict_retry(lambda: writer.save(lake.table(name)), what=f"append {name}")
    return True


def latest_commit(spark: SparkSession, lake: LakeSettings, name: str) -> int:
    """A table's newest commit version from a listing of its `_delta_log` (no Spark job); -1 if none."""
    sc = spark.sparkContext
    jvm, jsc = sc._jvm, sc._jsc
    if jvm is None or jsc is None:
        raise RuntimeError("listing a Delta log needs a classic (JVM) SparkSession")
    path = jvm.org.apache.hadoop.fs.Path(f"{lake.table(name)}/_delta_log")
    fs = path.getFileSystem(jsc.hadoopConfiguration())
    if not fs.exists(path):
        return -1
    names = (status.getPath().getName() for status in fs.listStatus(path))
    return max((int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit()), default=-1)


def table_properties(spark: SparkSession, lake: LakeSettings, name: str) -> dict[str, str]:
    """The table properties of an existing table."""
    return table_detail(spark, lake, name)[0]


# What SHOW TBLPROPERTIES adds to a Delta table's own properties from its protocol.
_PROTOCOL_PROPERTIES = ("delta.minReaderVersion", "delta.minWriterVersion")
_FEATURE_PREFIX = "delta.feature."


def table_detail(spark: SparkSession, lake: LakeSettings, name: str) -> tuple[dict[str, str], set[str]]:
    """An existing table's properties and the table features its protocol names.

    From SHOW TBLPROPERTIES, which reads the log's metadata and protocol: DESCRIBE DETAIL gives the same
    two but also counts the table's files, which costs a snapshot computation (4 Spark jobs, ~0.6 s on a
    small table, measured) at every stream start, compaction and train.
    """
    rows = spark.sql(f"SHOW TBLPROPERTIES delta.`{lake.table(name)}`").collect()
    shown = {r["key"]: r["value"] for r in rows}
    features = {key[len(_FEATURE_PREFIX) :] for key in shown if key.startswith(_FEATURE_PREFIX)}
    properties = {
        key: value
        for key, value in shown.items()
        if not key.startswith(_FEATURE_PREFIX) and key not in _PROTOCOL_PROPERTIES
    }
    return properties, features


def with_contract_properties(writer: DataFrameWriter, name: str) -> DataFrameWriter:
    """A writer that gives the table it creates its contract properties from that first commit."""
    for key, value in TABLE_PROPERTIES.get(name, {}).items():
        writer = writer.option(key, value)
    return writer


def ensure_table(spark: SparkSession, lake: LakeSettings, name: str) -> None:
    """Create a table with its contract schema if missing, else bring it up to its contract (`upgrade_table`)."""
    if not table_exists(spark, lake, name):
        # Created empty, with its properties from version 0 (a change data feed must cover every version).
        empty = with_contract_properties(spark.createDataFrame([], TABLE_SCHEMAS[name]).write.format("delta"), name)
        with_conflict_retry(lambda: empty.mode("append").save(lake.table(name)), what=f"create {name}")
    upgrade_table(spark, lake, name)


def upgrade_table(spark: SparkSession, lake: LakeSettings, name: str) -> None:
    """Give an existing table the nullable contract columns and the contract properties it lacks.

    A table written by an older version gets the columns it lacks (e.g. state_seq) as null. A table
    whose contract has no deletion vectors but whose protocol still names the feature (customer_state and
    customer_segments as earlier versions of flo-seg wrote them) has it dropped: the files that hold deleted
    rows are rewritten once and the protocol downgraded, so readers without deletion vectors (delta-rs'
    `to_pandas()`) open it. Delta keeps the older versions readable for the readers that know the feature.
    """
    path = lake.table(name)
    have = set(spark.read.format("delta").load(path).columns)
    added = [f for f in TABLE_SCHEMAS[name].fields if f.name not in have and f.nullable]
    if added:
        log.info("%s: adding columns %s", name, [f.name for f in added])
        columns = ", ".join(f"{f.name} {f.dataType.simpleString()}" for f in added)
        with_conflict_retry(
            lambda: spark.sql(f"ALTER TABLE delta.`{path}` ADD COLUMNS ({columns})"), what=f"add columns to {name}"
        )
    wanted = TABLE_PROPERTIES.get(name, {})
    if not wanted:
        return
    current, features = table_detail(spark, lake, name)
    if wanted.get(_DELETION_VECTORS) == "false" and _DELETION_VECTORS_FEATURE in features:
        log.info("%s: dropping deletion vectors so that every Delta reader opens it (a one-time rewrite)", name)
        with_conflict_retry(
            lambda: spark.sql(f"ALTER TABLE delta.`{path}` DROP FEATURE {_DELETION_VECTORS_FEATURE}"),
            what=f"drop deletion vectors of {name}",
        )
        current, _ = table_detail(spark, lake, name)
    missing = {key: value for key, value in wanted.items() if current.get(key) != value}
    if missing:
        log.info("%s: setting table properties %s", name, missing)
        assignments = ", ".join(f"'{key}' = '{value}'" for key, value in sorted(missing.items()))
        with_conflict_retry(
            lambda: spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ({assignments})"),
            what=f"set properties of {name}",
        )


class ConcurrentWrites:
    """Independent writes that run at once, each started as soon as what it writes is ready.

    Each write runs inside `timed(name)` on a thread of its own. `wait()` blocks until every write
    started so far has ended and raises the first failure; leaving the `with` block waits too, and an
    exception from inside the block wins over a write's (the writes still end first, so nothing runs
    on after the caller gave up).
    """

    def __init__(self, timed: Callable[[str], AbstractContextManager[object]], max_workers: int = 4) -> None:
        self._timed = timed
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="flo-seg-write")
        self._futures: list[Future[None]] = []

    def _run(self, name: str, write: Callable[[], object]) -> None:
        with self._timed(name):
            write()

    def start(self, name: str, write: Callable[[], object]) -> None:
        """Start `write` now, beside whatever the caller does next."""
        self._futures.append(self._pool.submit(self._run, name, write))

    def wait(self) -> None:
        """Block until every started write has ended; raise the first failure."""
        started, self._futures = self._futures, []
        failures = [exc for exc in (future.exception() for future in started) if exc is not None]
        if failures:
            raise failures[0]

    def __enter__(self) -> ConcurrentWrites:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        try:
            if exc is None:
                self.wait()
            else:
                futures_wait(self._futures)
        finally:
            self._pool.shutdown(wait=True)


def write_concurrently(
    writes: dict[str, Callable[[], object]], timed: Callable[[str], AbstractContextManager[object]]
) -> None:
    """Run independent writes at once, each inside `timed(name)`; the first failure is raised once all end.

    A Delta write of a small table is mostly driver-side latency (snapshot, commit, checkpoint), so
    writes to different tables overlap well even on two cores.
    """
    if len(writes) <= 1:
        for name, write in writes.items():
            with timed(name):
                write()
        return
    with ConcurrentWrites(timed, max_workers=len(writes)) as running:
        for name, write in writes.items():
            running.start(name, write)
