"""`flo-seg maintain`: compact the lake's tables and drop files no version needs any more.

Every micro-batch of the stream adds a few small files to the tables it writes, and so does every
compaction. That keeps a micro-batch cheap but slowly makes reads dearer: more files to list and open.
OPTIMIZE folds the small files together (and rewrites files whose deletion vectors hide many rows, in a
table that has them); VACUUM then deletes the data files that only versions older than the retention
period still reference. Both commit like any
writer, so they can run while the stream runs (a conflicting commit is retried).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from delta.tables import DeltaTable
from pyspark.sql import SparkSession

from batch.lake import table_exists, with_conflict_retry
from flo_seg.settings import LakeSettings
from schemas.tables import (
    COMPACTIONS,
    CUSTOMER_SEGMENTS,
    CUSTOMER_STATE,
    QUARANTINE,
    SEGMENT_CHANGES,
    SEGMENT_LOG,
    STATE_LOG,
)

log = logging.getLogger(__name__)

# The tables that grow a little with every micro-batch.
MAINTAINED_TABLES: tuple[str, ...] = (
    CUSTOMER_STATE,
    CUSTOMER_SEGMENTS,
    SEGMENT_CHANGES,
    QUARANTINE,
    STATE_LOG,
    SEGMENT_LOG,
    COMPACTIONS,
)
# Delta's own default retention; VACUUM refuses shorter ones unless its safety check is disabled.
DEFAULT_RETAIN_HOURS = 168.0
RETENTION_CHECK = "spark.databricks.delta.retentionDurationCheck.enabled"


@dataclass(frozen=True, kw_only=True)
class TableMaintenance:
    """What OPTIMIZE (and VACUUM) did to one table."""

    table: str
    files_before: int
    files_after: int
    files_removed: int
    files_added: int
    optimize_seconds: float
    vacuumed: bool
    vacuum_seconds: float | None = None


def table_file_count(spark: SparkSession, path: str) -> int:
    """Data files in the table's current snapshot."""
    row = DeltaTable.forPath(spark, path).detail().select("numFiles").first()
    return int(row[0]) if row is not None else 0


def optimize_table(spark: SparkSession, path: str) -> tuple[int, int]:
    """OPTIMIZE (bin-packing; also rewrites files with many rows deleted); (files removed, files added)."""
    row = DeltaTable.forPath(spark, path).optimize().executeCompaction().select("metrics").first()
    if row is None:
        return 0, 0
    metrics = row["metrics"]
    return int(metrics["numFilesRemoved"]), int(metrics["numFilesAdded"])


def maintain_table(
    spark: SparkSession, lake: LakeSettings, name: str, *, retain_hours: float | None
) -> TableMaintenance:
    """OPTIMIZE one table, then VACUUM it unless `retain_hours` is None."""
    path = lake.table(name)
    files_before = table_file_count(spark, path)
    started = time.perf_counter()
    removed, added = with_conflict_retry(lambda: optimize_table(spark, path), what=f"optimize {name}")
    optimize_seconds = time.perf_counter() - started
    vacuum_seconds = None
    if retain_hours is not None:
        started = time.perf_counter()
        DeltaTable.forPath(spark, path).vacuum(retain_hours)
        vacuum_seconds = time.perf_counter() - started
    result = TableMaintenance(
        table=name,
        files_before=files_before,
        files_after=table_file_count(spark, path),
        files_removed=removed,
        files_added=added,
        optimize_seconds=optimize_seconds,
        vacuumed=retain_hours is not None,
        vacuum_seconds=vacuum_seconds,
    )
    log.info(
        "%s: OPTIMIZE %d -> %d files (%d rewritten into %d) in %.1fs%s",
        name,
        result.files_before,
        result.files_after,
        removed,
        added,
        optimize_seconds,
        f"; VACUUM (retain {retain_hours:g} h) in {vacuum_seconds:.1f}s" if vacuum_seconds is not None else "",
    )
    return result


def run_maintenance(
    spark: SparkSession,
    lake: LakeSettings,
    *,
    tables: tuple[str, ...] = MAINTAINED_TABLES,
    retain_hours: float | None = DEFAULT_RETAIN_HOURS,
) -> list[TableMaintenance]:
    """Maintain every named table that exists; a missing table is skipped with a log line."""
    unknown = [name for name in tables if name not in MAINTAINED_TABLES]
    if unknown:
        raise ValueError(f"cannot maintain {unknown}: tables are among {', '.join(MAINTAINED_TABLES)}")
    if retain_hours is not None and retain_hours < 0:
        raise ValueError(f"retention must be >= 0 hours, got {retain_hours:g}")
    check = spark.conf.get(RETENTION_CHECK, "true")
    if retain_hours is not None and retain_hours < DEFAULT_RETAIN_HOURS and str(check).lower() != "false":
        raise ValueError(
            f"Delta refuses to VACUUM with less than {DEFAULT_RETAIN_HOURS:g} h retention while {RETENTION_CHECK} "
            "is on: a reader or a stream restarting from an older version could lose files. Set it to false "
            "(spark-submit --conf) only if no such reader exists."
        )
    results = []
    for name in tables:
        if not table_exists(spark, lake, name):
            log.info("%s: no table under %s, skipped", name, lake.root)
            continue
        results.append(maintain_table(spark, lake, name, retain_hours=retain_hours))
    return results
