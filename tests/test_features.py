"""The shared feature definition on tiny frames with nulls, edge dates and one customer."""

from __future__ import annotations

import datetime as dt

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from batch.features import category_flag_name, channel_flag_name, with_customer_features
from batch.model import capped_log_sql
from schemas.tables import CUSTOMER_STATE_SCHEMA

D = dt.date


def state(spark: SparkSession, rows: list[tuple[object, ...]]) -> DataFrame:
    now = dt.datetime(2021, 6, 1)
    full = [(*r[:12], None, now, 0) for r in rows]
    return spark.createDataFrame(full, CUSTOMER_STATE_SCHEMA)


def test_rfm_tenure_and_shares(spark: SparkSession) -> None:
    df = state(
        spark,
        [
            (
                "a",
                "Android App",
                "Offline",
                D(2020, 1, 1),
                D(2021, 5, 30),
                D(2021, 5, 1),
                D(2021, 5, 30),
                3,
                1,
                100.0,
                300.0,
                ["KADIN"],
            ),
            (
                "b",
                "Mobile",
                "Mobile",
                D(2021, 6, 1),
                D(2021, 6, 1),
                D(2021, 6, 1),
                None,
                1,
                0,
                0.0,
                50.0,
                None,
            ),
            (
                "c",
                "Desktop",
                "Desktop",
                D(2021, 1, 1),
                D(2021, 7, 1),
                D(2021, 7, 1),
                None,
                2,
                0,
                0.0,
                80.0,
                [],
            ),
        ],
    )
    got = {r["master_id"]: r for r in with_customer_features(df, F.lit(D(2021, 6, 1))).collect()}
    a, b, c = got["a"], got["b"], got["c"]
    assert (a["recency"], a["tenure"], a["frequency"], a["monetary"]) == (2, 517, 4, 400.0)
    assert (a["online_share"], a["avg_order_value"]) == (0.75, 100.0)
    assert (
        a[channel_flag_name("Offline")],
        a[channel_flag_name("Mobile")],
        a[category_flag_name("KADIN")],
    ) == (1, 0, 1)
    assert (b["recency"], b["tenure"], b["online_share"], b[category_flag_name("KADIN")]) == (0, 0, 1.0, 0)
    # An order after the analysis date (re-scoring with an older date) never gives negative recency.
    assert c["recency"] == 0
    assert str(a["as_of"]) == "2021-06-01"


def test_caps_apply_before_the_log(spark: SparkSession) -> None:
    caps = {"recency": 100.0, "frequency": 10.0, "monetary": 1000.0, "tenure": 500.0}
    df = spark.createDataFrame(
        [(5, 50, 20000.0, 700, 0.5)],
        "recency int, frequency long, monetary double, tenure int, online_share double",
    )
    df.createOrReplaceTempView("__THIS__")
    row = spark.sql(capped_log_sql(caps)).first()
    assert row is not None
    import math

    assert row["x_frequency"] == math.log1p(10.0)
    assert row["x_monetary"] == math.log1p(1000.0)
    assert row["x_recency"] == math.log1p(5.0)
    assert row["x_online_share"] == 0.5
