"""The one definition of customer features, used by training, batch re-scoring and the stream."""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from schemas.history import CATEGORIES, CHANNELS

ONLINE_ORDERS = "order_num_total_ever_online"
OFFLINE_ORDERS = "order_num_total_ever_offline"
ONLINE_VALUE = "customer_value_total_ever_online"
OFFLINE_VALUE = "customer_value_total_ever_offline"
CATEGORY_LIST = "interested_in_categories_12"

# Inputs of the clustering pipeline, in vector order. Channel and category indicators describe
# segments (profiles, actions) but do not drive the clustering, so segments stay RFM-shaped.
CLUSTER_FEATURES: tuple[str, ...] = ("recency", "frequency", "monetary", "tenure", "online_share")
# Heavy-tailed inputs that are capped at a training quantile and log-scaled before clustering.
CAPPED_FEATURES: tuple[str, ...] = ("recency", "frequency", "monetary", "tenure")


def recency_days(last_order_col: Column, as_of_col: Column) -> Column:
    """Days from the last order to the analysis date, never negative."""
    return F.greatest(F.datediff(as_of_col, last_order_col), F.lit(0))


def tenure_days(first_order_col: Column, as_of_col: Column) -> Column:
    """Days since the first order, never negative."""
    return F.greatest(F.datediff(as_of_col, first_order_col), F.lit(0))


def channel_flag_name(channel: str) -> str:
    """Column name of a last-order-channel indicator, e.g. `is_last_channel_android_app`."""
    return "is_last_channel_" + channel.lower().replace(" ", "_")


def category_flag_name(category: str) -> str:
    """Column name of a category-interest indicator, e.g. `has_kadin`."""
    return "has_" + category.lower()


def with_customer_features(state_df: DataFrame, as_of_col: Column) -> DataFrame:
    """Recency, tenure, frequency, monetary, online share, basket size and indicators per customer."""
    frequency = F.col(ONLINE_ORDERS) + F.col(OFFLINE_ORDERS)
    monetary = F.col(ONLINE_VALUE) + F.col(OFFLINE_VALUE)
    df = state_df.select(
        "*",
        as_of_col.cast("date").alias("as_of"),
        recency_days(F.col("last_order_date"), as_of_col).cast("int").alias("recency"),
        tenure_days(F.col("first_order_date"), as_of_col).cast("int").alias("tenure"),
        frequency.cast("long").alias("frequency"),
        monetary.cast("double").alias("monetary"),
    )
    indicators = [(F.col("last_order_channel") == F.lit(c)).cast("int").alias(channel_flag_name(c)) for c in CHANNELS]
    indicators += [
        F.coalesce(F.array_contains(F.col(CATEGORY_LIST), c), F.lit(False)).cast("int").alias(category_flag_name(c))
        for c in CATEGORIES
    ]
    return df.select(
        "*",
        F.when(F.col("frequency") > 0, F.col(ONLINE_ORDERS) / F.col("frequency")).otherwise(0.0).alias("online_share"),
        F.when(F.col("frequency") > 0, F.col("monetary") / F.col("frequency")).otherwise(0.0).alias("avg_order_value"),
        *indicators,
    )


def default_as_of(latest_last_order_col: Column) -> Column:
    """The FLO notebooks' analysis date: two days after the latest last order."""
    return F.date_add(latest_last_order_col, 2)
