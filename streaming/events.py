"""Order events off Kafka: parse, give every untrustworthy event one reason, key them for de-duplication."""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from schemas.events import SCHEMA_VERSION, event_spark_schema
from schemas.history import CATEGORIES, CHANNELS

REASON = "reason"
DEDUPE_KEY = "dedupe_key"
EARLIEST_ORDER = "2000-01-01"
# An order more than a day in the future of the wall clock is a producer bug, not a customer.
MAX_FUTURE = "INTERVAL 1 DAY"


def _first_failure(checks: list[tuple[str, Column]]) -> Column:
    out: Column = F.lit(None).cast("string")
    for name, failed in reversed(checks):
        out = F.when(F.coalesce(failed, F.lit(True)), F.lit(name)).otherwise(out)
    return out


def parse_order_events(kafka_df: DataFrame) -> DataFrame:
    """Kafka rows → typed order events with `reason` (null when valid) and their Kafka coordinates."""
    raw = F.col("value").cast("string")
    parsed = (
        kafka_df.select(
            raw.alias("raw_value"),
            F.col("key").cast("string").alias("kafka_key"),
            F.col("topic").alias("kafka_topic"),
            F.col("partition").alias("kafka_partition"),
            F.col("offset").alias("kafka_offset"),
            F.from_json(raw, event_spark_schema(), {"mode": "PERMISSIVE"}).alias("e"),
        )
        .select("*", "e.*")
        .drop("e")
    )
    order_ts = F.col("order_ts").try_cast("timestamp")
    required = ["event_id", "master_id", "order_ts", "channel", "amount", "schema_version"]
    checks = [
        (
            "malformed_json",
            F.col("raw_value").isNull()
            | F.col("event_id").isNull()
            & F.col("master_id").isNull()
            & F.col("amount").isNull()
            & ~F.trim(F.col("raw_value")).startswith("{"),
        ),
        (
            "missing_or_mistyped_field",
            F.exists(F.array(*[F.col(c).isNull() for c in required]), lambda x: x)
            | (F.trim(F.col("event_id")) == "")
            | (F.trim(F.col("master_id")) == ""),
        ),
        ("unsupported_schema_version", F.col("schema_version") != SCHEMA_VERSION),
        ("unknown_channel", ~F.col("channel").isin(list(CHANNELS))),
        ("non_positive_amount", F.col("amount") <= 0),
        ("bad_order_ts", order_ts.isNull()),
        (
            "absurd_order_ts",
            (order_ts < F.lit(EARLIEST_ORDER).cast("timestamp"))
            | (order_ts > F.current_timestamp() + F.expr(MAX_FUTURE)),
        ),
        (
            "unknown_category",
            ~F.coalesce(F.forall(F.col("categories"), lambda c: c.isin(list(CATEGORIES))), F.lit(True)),
        ),
    ]
    reason = _first_failure(checks)
    return parsed.select(
        "*",
        reason.alias(REASON),
        order_ts.alias("order_time"),
        F.to_date(order_ts).alias("order_date"),
        (F.col("channel") != F.lit("Offline")).alias("is_online"),
    ).withColumn(
        DEDUPE_KEY,
        F.when(F.col(REASON).isNull(), F.col("event_id")).otherwise(
            F.concat_ws(":", F.lit("invalid"), "kafka_topic", "kafka_partition", "kafka_offset")
        ),
    )


def quarantine_rows(events_df: DataFrame) -> DataFrame:
    """Invalid events as `quarantine` rows: raw value, Kafka coordinates and reason."""
    return events_df.where(F.col(REASON).isNotNull()).select(
        F.lit("kafka").alias("source"),
        F.col("raw_value").alias("raw_record"),
        F.col(REASON).alias("reason"),
        F.lit(None).cast("string").alias("detail"),
        "kafka_topic",
        "kafka_partition",
        "kafka_offset",
        F.current_timestamp().alias("detected_at"),
    )


def valid_orders(events_df: DataFrame) -> DataFrame:
    """Valid events only, with the columns the state update needs."""
    return events_df.where(F.col(REASON).isNull()).select(
        "event_id",
        "master_id",
        "order_time",
        "order_date",
        "channel",
        "is_online",
        "amount",
        F.coalesce(F.col("categories"), F.array().cast("array<string>")).alias("categories"),
    )
