"""Segment migration: how many customers moved from which segment to which, from `segment_changes`.

A migration is a recorded segment change: the stream's (its micro-batches, and the sweeps that age
customers and move them to a new model) and a retrain's (`flo-seg train` on a lake that has segments
records who it moves, with `RETRAIN_BATCH_ID`). One SQL statement defines the matrix, so both engines
compute the same numbers: `flo-seg migrations` runs it through delta-rs (no JVM), the report through
Spark SQL. A customer who had no segment before (a new customer) comes from `NEW`.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from flo_seg.settings import LakeSettings
from schemas.tables import SEGMENT_CHANGES

if TYPE_CHECKING:  # pandas is imported where it is used: `flo-seg --help` reads NEW and PERIODS only
    import pandas as pd

NEW = "(new)"
# segment_changes.batch_id of the changes a retrain records (the stream's batch ids start at 0).
RETRAIN_BATCH_ID = -1
PERIODS = ("all", "day", "week", "month")
COLUMNS = ("period", "from_segment", "to_segment", "changes", "customers", "share", "share_of_from")


def migration_sql(*, since: dt.date | None = None, until: dt.date | None = None, period: str = "all") -> str:
    """The migration matrix over `segment_changes` as one query both engines run.

    One row per (period, from, to): `changes` recorded, distinct `customers`, their `share` of the
    period's changes and `share_of_from`, their share of the changes out of `from_segment` in the period.
    `since` / `until` bound `changed_at` (from `since` inclusive to `until` exclusive, both UTC days);
    `period` is `all` (one period, named by the first day of the window) or a `date_trunc` unit.
    """
    if period not in PERIODS:
        raise ValueError(f"period must be one of {', '.join(PERIODS)}, not {period!r}")
    if since is not None and until is not None and until <= since:
        raise ValueError(f"--until {until} must come after --since {since}")
    bounds = []
    if since is not None:
        bounds.append(f"changed_at >= TIMESTAMP '{since.isoformat()} 00:00:00'")
    if until is not None:
        bounds.append(f"changed_at < TIMESTAMP '{until.isoformat()} 00:00:00'")
    where = f"WHERE {' AND '.join(bounds)}" if bounds else ""
    if period != "all":
        bucket = f"CAST(date_trunc('{period}', changed_at) AS DATE)"
    elif since is not None:
        bucket = f"DATE '{since.isoformat()}'"
    else:
        bucket = "min(CAST(changed_at AS DATE)) OVER ()"
    return f"""
WITH moves AS (
  SELECT {bucket} AS period, coalesce(previous_segment, '{NEW}') AS from_segment, segment AS to_segment, master_id
  FROM segment_changes {where}
)
SELECT period, from_segment, to_segment, count(*) AS changes, count(DISTINCT master_id) AS customers,
  CAST(count(*) AS DOUBLE) / sum(count(*)) OVER (PARTITION BY period) AS share,
  CAST(count(*) AS DOUBLE) / sum(count(*)) OVER (PARTITION BY period, from_segment) AS share_of_from
FROM moves
GROUP BY period, from_segment, to_segment
ORDER BY period, changes DESC, from_segment, to_segment
""".strip()


def matrix_frame(moves: pd.DataFrame) -> pd.DataFrame:
    """The moves of one period as a from × to table of changes, with each row's total (`NEW` first)."""
    import pandas as pd

    if moves.empty:
        return pd.DataFrame()
    matrix = moves.pivot_table(index="from_segment", columns="to_segment", values="changes", aggfunc="sum")
    order = sorted(set(matrix.index) | set(matrix.columns), key=lambda name: (name != NEW, name))
    matrix = matrix.reindex(index=[n for n in order if n in matrix.index], columns=[n for n in order if n != NEW])
    matrix = matrix.fillna(0).astype(int)
    matrix["total"] = matrix.sum(axis=1)
    matrix.index.name = "from \\ to"
    matrix.columns.name = None
    return matrix


def matrix_cells(moves: pd.DataFrame) -> pd.DataFrame:
    """`matrix_frame` as text cells: changes and, in brackets, their share of the row; `.` for none."""
    matrix = matrix_frame(moves)
    cells = matrix.astype(object)
    for name in matrix.index:
        total = int(matrix.loc[name, "total"])
        for column in matrix.columns[:-1]:
            count = int(matrix.loc[name, column])
            share = count / total
            cells.loc[name, column] = (
                "." if not count else f"{count} ({share:.0%})" if share >= 0.005 else f"{count} (<1%)"
            )
    return cells


def matrix_text(moves: pd.DataFrame) -> str:
    """Each period's matrix as aligned text, under a line naming the period and its changes."""
    if moves.empty:
        return "no segment changes in the window\n"
    parts = []
    for period, rows in moves.groupby("period", sort=True):
        changes = int(rows["changes"].sum())
        parts.append(f"{period}: {changes} change{'s' if changes != 1 else ''}\n{matrix_cells(rows).to_string()}\n")
    return "\n".join(parts)


def change_rows(scored: DataFrame, *, batch_id: int, id_tag: Column, changed_at: Column) -> DataFrame:
    """Scored customers whose segment differs from their `previous_segment` (or who had none), as
    segment_changes rows. change_id hashes the customer, `id_tag`, the model version and the new segment,
    so the same change written again (a replayed micro-batch) keeps its id."""
    moved = scored.where(F.col("previous_segment").isNull() | (F.col("previous_segment") != F.col("segment")))
    change_id = F.substring(F.sha2(F.concat_ws("|", "master_id", id_tag, "model_version", "segment"), 256), 1, 32)
    return moved.select(
        change_id.alias("change_id"),
        "master_id",
        "previous_segment",
        "segment",
        "model_version",
        "as_of",
        changed_at.cast("timestamp").alias("changed_at"),
        F.lit(batch_id).cast("long").alias("batch_id"),
    )


def retrain_change_rows(previous: DataFrame, scored: DataFrame, changed_at: dt.datetime) -> DataFrame:
    """The customers a retrain moves, as segment_changes rows: `scored` (the new model's segments)
    against `previous` (master_id, segment before it), new customers coming from no segment."""
    before = previous.select("master_id", F.col("segment").alias("previous_segment"))
    return change_rows(
        scored.join(before, "master_id", "left"),
        batch_id=RETRAIN_BATCH_ID,
        id_tag=F.lit("retrain"),
        changed_at=F.lit(changed_at),
    )


def _no_changes(lake: LakeSettings) -> LookupError:
    return LookupError(
        f"no segment_changes table under {lake.root}: the stream records the changes; run `flo-seg stream`"
    )


def read_migrations_native(lake: LakeSettings, sql: str) -> pd.DataFrame:
    """The rows of `migration_sql` through delta-rs' SQL engine (no JVM)."""
    import pandas as pd

    from batch.query_native import lake_tables, native_rows

    if SEGMENT_CHANGES not in lake_tables(lake):
        raise _no_changes(lake)
    columns, rows = native_rows(lake, sql, limit=1_000_000)
    return pd.DataFrame(rows, columns=columns)


def read_migrations_spark(spark: SparkSession, lake: LakeSettings, sql: str) -> pd.DataFrame:
    """The rows of `migration_sql` through Spark SQL, the changes table registered by name."""
    from batch.lake import read_table, table_exists

    if not table_exists(spark, lake, SEGMENT_CHANGES):
        raise _no_changes(lake)
    read_table(spark, lake, SEGMENT_CHANGES).createOrReplaceTempView(SEGMENT_CHANGES)
    return spark.sql(sql).toPandas()
