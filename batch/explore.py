"""The exploratory look at the history the FLO brief starts with, computed by `train` in its own pass.

Every statistic is one row (section, item, statistic, value) of the `data_profile` table, so the report
and any SQL reader see the same numbers. Three Spark jobs over frames `train` has cached already: the
column checks over the validated rows, one aggregation and one quantile pass over the kept customers.
Correlations come from the training sample on the driver.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from batch.features import (
    CAPPED_FEATURES,
    OFFLINE_ORDERS,
    OFFLINE_VALUE,
    ONLINE_ORDERS,
    ONLINE_VALUE,
    category_flag_name,
)
from batch.validate import REASON
from schemas.history import CATEGORIES, CHANNELS, HISTORY_COLUMNS

COLUMNS, DISTRIBUTIONS, MIX, OUTLIERS, CORRELATIONS = "columns", "distributions", "mix", "outliers", "correlations"
# Raw amounts and counts by channel, as the brief compares them: online against offline.
DISTRIBUTION_COLUMNS: tuple[str, ...] = (ONLINE_ORDERS, OFFLINE_ORDERS, ONLINE_VALUE, OFFLINE_VALUE)
DATE_COLUMNS: tuple[str, ...] = tuple(c.name for c in HISTORY_COLUMNS if c.kind == "date")
PROFILE_QUANTILES: tuple[float, ...] = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
QUANTILE_NAMES: tuple[str, ...] = ("min", "q05", "q25", "q50", "q75", "q95", "max")
CORRELATED: tuple[str, ...] = ("recency", "frequency", "monetary", "tenure", "online_share", "avg_order_value")
EPOCH = dt.date(1970, 1, 1)

Statistic = tuple[str, str, str, float]


def _is_blank(raw_col: Column) -> Column:
    return raw_col.isNull() | (F.trim(raw_col) == "")


def column_checks(validated_df: DataFrame) -> list[Statistic]:
    """Per history column: rows where it is missing, and where it is present but not a valid value."""
    aggs = []
    for column in HISTORY_COLUMNS:
        raw = F.col(f"raw_{column.name}")
        parsed = F.col(column.name)
        is_invalid = ~_is_blank(raw) & (~parsed.isin(list(CHANNELS)) if column.kind == "channel" else parsed.isNull())
        aggs += [
            F.sum(_is_blank(raw).cast("long")).alias(f"{column.name}|missing"),
            F.sum(F.coalesce(is_invalid, F.lit(False)).cast("long")).alias(f"{column.name}|invalid"),
        ]
    aggs.append(F.count(F.lit(1)).alias("rows|read"))
    aggs.append(F.sum(F.col(REASON).isNull().cast("long")).alias("rows|kept"))
    row = validated_df.agg(*aggs).first()
    assert row is not None
    return [(COLUMNS, *name.split("|"), float(row[name] or 0)) for name in row.asDict()]  # type: ignore[misc]


def _days(date_col: Column) -> Column:
    return F.datediff(date_col, F.lit(EPOCH)).cast("double")


def mix_and_outliers(features_df: DataFrame, caps: dict[str, float]) -> list[Statistic]:
    """Customers per channel (first and last order) and per category; what each outlier cap changes."""
    aggs = []
    for channel in CHANNELS:
        for column in ("order_channel", "last_order_channel"):
            aggs.append(F.sum((F.col(column) == channel).cast("long")).alias(f"{column}={channel}|customers"))
    for category in CATEGORIES:
        aggs.append(F.sum(F.col(category_flag_name(category))).cast("long").alias(f"category={category}|customers"))
    for name in CAPPED_FEATURES:
        above = F.col(name) > F.lit(caps[name])
        aggs += [
            F.sum(above.cast("long")).alias(f"{name}|customers_above_cap"),
            F.avg(F.when(above, F.col(name) - F.lit(caps[name]))).alias(f"{name}|mean_excess"),
            F.max(name).cast("double").alias(f"{name}|max"),
        ]
    row = features_df.agg(*aggs).first()
    assert row is not None
    out: list[Statistic] = []
    for key, value in row.asDict().items():
        item, statistic = key.split("|")
        section = OUTLIERS if statistic in ("customers_above_cap", "mean_excess", "max") else MIX
        out.append((section, item, statistic, float(value or 0)))
    out += [(OUTLIERS, name, "cap", float(cap)) for name, cap in caps.items()]
    return out


def distributions(features_df: DataFrame) -> list[Statistic]:
    """Quantiles of the raw counts and spend by channel and of the dates (as days since 1970)."""
    frame = features_df.select(
        *[F.col(c).cast("double").alias(c) for c in DISTRIBUTION_COLUMNS],
        *[_days(F.col(c)).alias(c) for c in DATE_COLUMNS],
    )
    names = [*DISTRIBUTION_COLUMNS, *DATE_COLUMNS]
    quantiles = frame.approxQuantile(names, list(PROFILE_QUANTILES), 0.001)
    return [
        (DISTRIBUTIONS, name, q, float(v))
        for name, values in zip(names, quantiles, strict=True)
        for q, v in zip(QUANTILE_NAMES, values, strict=False)
    ]


def correlations(sample_pdf: pd.DataFrame) -> list[Statistic]:
    """Pearson correlations of the features on the training sample (upper triangle)."""
    matrix = sample_pdf[list(CORRELATED)].astype(float).corr().to_numpy()
    return [
        (CORRELATIONS, f"{a}~{b}", "pearson", float(matrix[i, j]))
        for i, a in enumerate(CORRELATED)
        for j, b in enumerate(CORRELATED)
        if j > i
    ]


def data_profile(
    validated_df: DataFrame | None, features_df: DataFrame, sample_pdf: pd.DataFrame, caps: dict[str, float]
) -> list[Statistic]:
    """All sections; without validated rows (a retrain from the lake) the column checks are left out."""
    stats = column_checks(validated_df) if validated_df is not None else []
    stats += mix_and_outliers(features_df, caps)
    stats += distributions(features_df)
    stats += correlations(sample_pdf)
    return stats


def profile_frame(spark: SparkSession, stats: list[Statistic], version: str) -> DataFrame:
    """The statistics as `data_profile` rows of one model version."""
    rows = [(version, section, item, statistic, value) for section, item, statistic, value in stats]
    return spark.createDataFrame(
        rows, "model_version string, section string, item string, statistic string, value double"
    )


def as_date(days: float) -> dt.date:
    """A date quantile back from days since 1970."""
    return EPOCH + dt.timedelta(days=round(days))
