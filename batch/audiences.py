"""Audiences: named SQL predicates over `customer_segments`, their members and who joins or leaves them.

Two audiences are built in, the classic FLO campaign lists (batch/segments.py `CAMPAIGNS`); more come
from the `[audiences]` table of the settings file, name = predicate, e.g.

    [audiences]
    vip_slipping = "segment = 'regular_high_value' AND p_alive < 0.9"

`train` rebuilds `audience_members` from every customer's new row (and records who it moved in or out);
the stream's audience follower (streaming/audiences.py) keeps it current from `segment_log`, one
`audience_changes` row and one Kafka message per join or leave.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from delta.tables import DeltaTable
from deltalake import DeltaTable as NativeDeltaTable
from pyspark.errors import PySparkException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from batch.lake import append_table, ensure_table, latest_commit, overwrite_table, table_exists, with_conflict_retry
from batch.migrations import RETRAIN_BATCH_ID
from batch.segments import CAMPAIGN_PREDICATES
from flo_seg.errors import first_line
from flo_seg.settings import LakeSettings
from schemas.tables import (
    AUDIENCE_CHANGES,
    AUDIENCE_MEMBERS,
    CUSTOMER_SEGMENTS_SCHEMA,
)

log = logging.getLogger(__name__)

JOINED, LEFT = "joined", "left"


# The classic campaign lists (batch/segments.py), always there.
CLASSIC_AUDIENCES: dict[str, str] = dict(CAMPAIGN_PREDICATES)


class AudienceError(ValueError):
    """An audience whose name or predicate cannot be used."""


def audience_definitions(extra: Mapping[str, str]) -> dict[str, str]:
    """The built-in audiences and the configured ones (a configured name replaces a built-in one)."""
    definitions = {**CLASSIC_AUDIENCES, **extra}
    for name in definitions:
        if not name or not all(c.isalnum() or c in "_-." for c in name):
            raise AudienceError(f"audience name {name!r}: use letters, digits, '_', '-' or '.'")
    return definitions


def check_audiences(spark: SparkSession, definitions: Mapping[str, str]) -> None:
    """Fail early, naming the audience, on a predicate that is not a boolean over customer_segments."""
    empty = spark.createDataFrame([], CUSTOMER_SEGMENTS_SCHEMA)
    for name, predicate in definitions.items():
        try:
            kind = empty.select(F.expr(predicate).alias("member")).schema["member"].dataType.typeName()
        except PySparkException as exc:
            raise AudienceError(
                f"audience {name!r}: {predicate!r} is not an expression over customer_segments' columns: "
                f"{first_line(exc, type(exc).__name__)}"
            ) from exc
        if kind != "boolean":
            raise AudienceError(f"audience {name!r}: {predicate!r} is a {kind}, not a true/false predicate")


def memberships(segments_df: DataFrame, definitions: Mapping[str, str]) -> DataFrame:
    """(audience, master_id, segment) for every audience each customer row belongs to, in one pass."""
    tags: list[Column] = [
        F.when(F.coalesce(F.expr(predicate), F.lit(False)), F.lit(name)) for name, predicate in definitions.items()
    ]
    member_of = F.filter(F.array(*tags), lambda tag: tag.isNotNull())
    return segments_df.select(F.explode(member_of).alias("audience"), "master_id", "segment")


def membership_changes(
    current: DataFrame, previous: DataFrame, *, changed_at: Column, batch_id: int, id_tag: Column
) -> DataFrame:
    """Joins and leaves between two memberships of the same customers, as audience_changes rows.

    `current` and `previous` are (audience, master_id, segment) rows; a customer's row missing from
    `previous` joined, one missing from `current` left. `id_tag` makes change_id unique per batch.
    """
    now = current.select("audience", "master_id", F.col("segment").alias("now_segment"))
    before = previous.select("audience", "master_id", F.lit(True).alias("was"))
    both = now.join(before, ["audience", "master_id"], "full_outer")
    change = F.when(F.col("was").isNull(), F.lit(JOINED)).when(F.col("now_segment").isNull(), F.lit(LEFT))
    return (
        both.withColumn("change", change)
        .where(F.col("change").isNotNull())
        .select(
            F.concat_ws(":", id_tag.cast("string"), "audience", "master_id", "change").alias("change_id"),
            "audience",
            "master_id",
            "change",
            F.col("now_segment").alias("segment"),
            changed_at.alias("changed_at"),
            F.lit(batch_id).cast("long").alias("batch_id"),
        )
    )


def merge_members(spark: SparkSession, lake: LakeSettings, changes: DataFrame) -> None:
    """Apply joins and leaves to audience_members (a replay of the same changes changes nothing)."""
    target = DeltaTable.forPath(spark, lake.table(AUDIENCE_MEMBERS))
    source = changes.select("audience", "master_id", "change", "segment", F.col("changed_at").alias("joined_at"))

    def run() -> None:
        (
            target.alias("t")
            .merge(source.alias("s"), "t.audience = s.audience AND t.master_id = s.master_id")
            .whenMatchedDelete(condition=f"s.change = '{LEFT}'")
            .whenNotMatchedInsert(
                condition=f"s.change = '{JOINED}'",
                values={
                    "audience": "s.audience",
                    "master_id": "s.master_id",
                    "segment": "s.segment",
                    "joined_at": "s.joined_at",
                },
            )
            .execute()
        )

    with_conflict_retry(run, what="MERGE audience_members")


# ------------------------------------------------------------------------------------------ train's edge
def rebuild_members(
    spark: SparkSession, lake: LakeSettings, scored: DataFrame, definitions: Mapping[str, str], now: dt.datetime
) -> None:
    """audience_members from train's scored customers; who joined or left since the previous members is
    recorded in audience_changes (batch_id -1), as a retrain's segment moves are."""
    current = memberships(scored, definitions).cache()
    members = current.withColumn("joined_at", F.lit(now))
    if table_exists(spark, lake, AUDIENCE_MEMBERS):
        ensure_table(spark, lake, AUDIENCE_CHANGES)
        # Pinned to its version now: the overwrite below must not change what the changes compare against.
        pinned = spark.read.format("delta").option("versionAsOf", latest_commit(spark, lake, AUDIENCE_MEMBERS))
        before = pinned.load(lake.table(AUDIENCE_MEMBERS))
        previous = before.select("audience", "master_id", "segment")
        # A customer who stays keeps the time they joined.
        since = before.select("audience", "master_id", F.col("joined_at").alias("since"))
        members = (
            current.join(since, ["audience", "master_id"], "left")
            .withColumn("joined_at", F.coalesce("since", F.lit(now)))
            .drop("since")
        )
        tag = F.lit(f"train-{now:%Y%m%d%H%M%S%f}")
        changes = membership_changes(
            current, previous, changed_at=F.lit(now), batch_id=RETRAIN_BATCH_ID, id_tag=tag
        ).cache()
        moved = changes.count()
        append_table(changes, lake, AUDIENCE_CHANGES)
        changes.unpersist()
        log.info("audiences: the retrain made %d joins and leaves (recorded in audience_changes)", moved)
    overwrite_table(members, lake, AUDIENCE_MEMBERS)
    current.unpersist()


# ------------------------------------------------------------------------------------------ export
def _members(lake: LakeSettings) -> pa.Table:
    try:
        table = NativeDeltaTable(lake.table(AUDIENCE_MEMBERS))
    except Exception as exc:  # deltalake's TableNotFoundError
        raise FileNotFoundError(f"no audience_members table under {lake.root}; run `flo-seg train` first") from exc
    return table.to_pyarrow_table(columns=["audience", "master_id", "segment", "joined_at"])


def audience_sizes(lake: LakeSettings) -> dict[str, int]:
    """Members per audience now."""
    members = _members(lake)
    counts = members.group_by("audience").aggregate([("master_id", "count")])
    return dict(zip(counts.column("audience").to_pylist(), counts.column("master_id_count").to_pylist(), strict=True))


def export_audience(lake: LakeSettings, name: str, definitions: Mapping[str, str], out: Path | None) -> int:
    """The current members of one audience as CSV (master_id, segment, joined_at), read without a JVM;
    to `out` or standard output. Returns the member count."""
    members = _members(lake)
    known = sorted(set(members.column("audience").to_pylist()))
    chosen = members.filter(pc.equal(members.column("audience"), name))
    if name not in definitions and name not in known:
        names = sorted({*definitions, *known})
        raise LookupError(f"no audience {name!r}; the audiences are: {', '.join(names)}")
    rows = chosen.select(["master_id", "segment", "joined_at"]).sort_by("master_id")
    if out is None:
        pacsv.write_csv(rows, sys.stdout.buffer)
    else:
        pacsv.write_csv(rows, str(out))
    return rows.num_rows
