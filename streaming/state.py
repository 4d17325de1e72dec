"""Per-customer order aggregates of a micro-batch and their MERGE into `customer_state`: the design the
stream used before its state moved into the state store (jvm/state keeps the same rules). Kept as the
reference the state step is tested against and as the benchmarks' baseline.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from delta.tables import DeltaTable
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from batch.features import CATEGORY_LIST, OFFLINE_ORDERS, OFFLINE_VALUE, ONLINE_ORDERS, ONLINE_VALUE
from batch.lake import with_conflict_retry
from flo_seg.settings import LakeSettings
from schemas.tables import CUSTOMER_STATE

_TXN_APP = "spark.databricks.delta.write.txnAppId"
_TXN_VERSION = "spark.databricks.delta.write.txnVersion"

CENTS = "decimal(18,2)"


def _add_money(col_name: str, delta: str) -> str:
    return f"CAST(CAST(t.{col_name} AS DECIMAL(20,2)) + s.{delta} AS DOUBLE)"


def customer_order_deltas(orders_df: DataFrame) -> DataFrame:
    """One row per customer: what this batch's valid orders add (a MERGE needs one source row per key)."""
    online = F.col("is_online")
    cents = F.col("amount").cast(CENTS)
    tiebreak = F.struct("order_time", "event_id")
    return orders_df.groupBy("master_id").agg(
        F.count(F.lit(1)).alias("orders"),
        F.sum(F.when(online, 1).otherwise(0)).cast("long").alias("online_orders"),
        F.sum(F.when(online, 0).otherwise(1)).cast("long").alias("offline_orders"),
        # Money is summed in exact cents: a double sum depends on row order, which a replay may change.
        F.sum(F.when(online, cents).otherwise(F.lit(0).cast(CENTS))).alias("online_value"),
        F.sum(F.when(online, F.lit(0).cast(CENTS)).otherwise(cents)).alias("offline_value"),
        F.min("order_date").alias("min_order_date"),
        F.max("order_date").alias("max_order_date"),
        F.max(F.when(online, F.col("order_date"))).alias("max_online_date"),
        F.max(F.when(~online, F.col("order_date"))).alias("max_offline_date"),
        F.min_by("channel", tiebreak).alias("first_channel"),
        F.max_by("channel", tiebreak).alias("last_channel"),
        F.array_sort(F.array_distinct(F.flatten(F.collect_list("categories")))).alias("categories"),
        F.max("order_time").alias("max_order_time"),
    )


def state_merge_updates() -> dict[str, str | Column]:
    """SET clauses for a known customer: counts add up, dates only move outward, a late order never
    moves last_order_date backwards nor takes over last_order_channel."""
    return {
        ONLINE_ORDERS: f"t.{ONLINE_ORDERS} + s.online_orders",
        OFFLINE_ORDERS: f"t.{OFFLINE_ORDERS} + s.offline_orders",
        ONLINE_VALUE: _add_money(ONLINE_VALUE, "online_value"),
        OFFLINE_VALUE: _add_money(OFFLINE_VALUE, "offline_value"),
        "first_order_date": "least(t.first_order_date, s.min_order_date)",
        "last_order_date": "greatest(t.last_order_date, s.max_order_date)",
        "last_order_date_online": "greatest(t.last_order_date_online, s.max_online_date)",
        "last_order_date_offline": "greatest(t.last_order_date_offline, s.max_offline_date)",
        # History rows know only the date of their last order: any order from that day on is later. Both
        # count (greatest skips a null): a late order's time must not hide a later last_order_date.
        "last_order_channel": (
            "CASE WHEN s.max_order_time > greatest(t.last_order_ts, CAST(t.last_order_date AS TIMESTAMP)) "
            "THEN s.last_channel ELSE t.last_order_channel END"
        ),
        "last_order_ts": "greatest(t.last_order_ts, s.max_order_time)",
        CATEGORY_LIST: f"array_union(coalesce(t.{CATEGORY_LIST}, array()), s.categories)",
        "updated_at": "current_timestamp()",
        "state_seq": "coalesce(t.state_seq, 0) + 1",
    }


def state_merge_inserts() -> dict[str, str | Column]:
    """VALUES for a customer first seen in the stream: their first order is this batch's first order."""
    return {
        "master_id": "s.master_id",
        "order_channel": "s.first_channel",
        "last_order_channel": "s.last_channel",
        "first_order_date": "s.min_order_date",
        "last_order_date": "s.max_order_date",
        "last_order_date_online": "s.max_online_date",
        "last_order_date_offline": "s.max_offline_date",
        ONLINE_ORDERS: "s.online_orders",
        OFFLINE_ORDERS: "s.offline_orders",
        ONLINE_VALUE: "CAST(s.online_value AS DOUBLE)",
        OFFLINE_VALUE: "CAST(s.offline_value AS DOUBLE)",
        CATEGORY_LIST: "s.categories",
        "last_order_ts": "s.max_order_time",
        "updated_at": "current_timestamp()",
        "state_seq": "1",
    }


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
