"""Order events off Kafka: parse, give every untrustworthy event one reason, hash their content for de-duplication."""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType, VariantType

from batch.validate import with_first_failure
from schemas.events import (
    EARLIEST_ORDER,
    MAX_ORDER_AMOUNT,
    MIN_ORDER_AMOUNT,
    ORDER_TS_PATTERN,
    SCHEMA_VERSION,
    event_spark_schema,
)
from schemas.history import CATEGORIES, CHANNELS, IDENTIFIER_PATTERN, spark_regex

REASON = "reason"
DETAIL = "detail"
CONTENT_KEY = "content_key"
CORRUPT_COLUMN = "_corrupt_json"
# The ids are parsed as variants, so a JSON number or object is told apart from a string; their JSON types.
ID_FIELDS: tuple[str, ...] = ("event_id", "master_id")
ID_TYPE_SUFFIX = "_json_type"
REQUIRED_FIELDS: tuple[str, ...] = ("event_id", "master_id", "order_ts", "channel", "amount", "schema_version")
# An order more than a day in the future of the wall clock is a producer bug, not a customer.
MAX_FUTURE = "INTERVAL 1 DAY"
# Offending values are quoted in the quarantine detail, cut to this length.
DETAIL_CHARS = 200


def _cut(text: Column) -> Column:
    """Text cut to DETAIL_CHARS with an ellipsis, for a quarantine detail."""
    return F.when(F.length(text) > DETAIL_CHARS, F.concat(F.substring(text, 1, DETAIL_CHARS), F.lit("…"))).otherwise(
        text
    )


def _quoted(col: Column) -> Column:
    """A value as it came, quoted and cut short, for a quarantine detail."""
    text = F.to_json(F.array(col))
    return _cut(F.substring(text, 2, F.length(text) - 2))


def _event_checks() -> list[tuple[str, Column, Column]]:
    """(reason, failed?, detail) in priority order; each check may assume the earlier ones passed."""
    raw = F.trim(F.col("raw_value"))
    order_ts = F.col("order_time")
    amount = F.col("amount")
    any_field_parsed = F.exists(F.array(*[F.col(c).isNotNull() for c in REQUIRED_FIELDS]), lambda x: x)
    # Ids must be JSON strings.
    not_text = [F.when(F.coalesce(F.col(c + ID_TYPE_SUFFIX) != "STRING", F.lit(False)), F.lit(c)) for c in ID_FIELDS]
    missing = F.filter(
        F.array_distinct(
            F.array(
                *[
                    F.when(F.col(c).isNull() | (F.trim(F.col(c).cast("string")) == ""), F.lit(c))
                    for c in REQUIRED_FIELDS
                ],
                *not_text,
            )
        ),
        lambda name: name.isNotNull(),
    )
    unknown_categories = F.filter(F.col("categories"), lambda c: c.isNull() | ~c.isin(list(CATEGORIES)))
    return [
        (
            "malformed_json",
            F.col("raw_value").isNull()
            | ~raw.startswith("{")
            # Exactly one JSON value: from_json would stop after a first object and ignore what follows.
            | F.coalesce(F.json_array_length(F.concat(F.lit("["), raw, F.lit("]"))) != 1, F.lit(True))
            | F.col(CORRUPT_COLUMN).isNotNull() & ~any_field_parsed,
            F.lit("not one JSON object (unparseable, truncated, or nested deeper than the parser allows)"),
        ),
        (
            "missing_or_mistyped_field",
            (F.size(missing) > 0) | F.col(CORRUPT_COLUMN).isNotNull(),
            F.when(
                F.size(missing) > 0,
                F.concat(F.lit("missing, empty or of the wrong type: "), F.array_join(missing, ", ")),
            ).otherwise(F.lit("categories is not an array of strings")),
        ),
        (
            "unsupported_schema_version",
            F.col("schema_version") != SCHEMA_VERSION,
            F.concat(F.lit(f"expected {SCHEMA_VERSION}, got "), F.col("schema_version").cast("string")),
        ),
        (
            "bad_event_id",
            ~F.col("event_id").rlike(spark_regex(IDENTIFIER_PATTERN)),
            F.concat(F.lit("not a plain identifier: "), _quoted(F.col("event_id"))),
        ),
        (
            "bad_master_id",
            ~F.col("master_id").rlike(spark_regex(IDENTIFIER_PATTERN)),
            F.concat(F.lit("not a plain identifier: "), _quoted(F.col("master_id"))),
        ),
        ("unknown_channel", ~F.col("channel").isin(list(CHANNELS)), _quoted(F.col("channel"))),
        ("non_positive_amount", amount <= 0, F.concat(F.lit("amount "), amount.cast("string"), F.lit(" <= 0"))),
        (
            "amount_out_of_range",
            F.isnan(amount) | (amount < MIN_ORDER_AMOUNT) | (amount > MAX_ORDER_AMOUNT),
            F.concat(
                F.lit("amount "),
                amount.cast("string"),
                F.lit(f" is not a finite number from {MIN_ORDER_AMOUNT} (0.01 in cents) to {MAX_ORDER_AMOUNT:.0f}"),
            ),
        ),
        (
            "bad_order_ts",
            ~F.col("order_ts").rlike(spark_regex(ORDER_TS_PATTERN)) | order_ts.isNull(),
            F.concat(F.lit("not RFC 3339 with seconds and offset: "), _quoted(F.col("order_ts"))),
        ),
        (
            "absurd_order_ts",
            (order_ts < F.lit(EARLIEST_ORDER).cast("timestamp"))
            | (order_ts > F.current_timestamp() + F.expr(MAX_FUTURE)),
            F.concat(F.lit(f"before {EARLIEST_ORDER} or over a day ahead: "), F.col("order_ts")),
        ),
        (
            "unknown_category",
            F.size(F.coalesce(unknown_categories, F.array())) > 0,
            F.concat(F.lit("not one of the categories: "), _cut(F.to_json(unknown_categories))),
        ),
        (
            "key_mismatch",
            F.col("kafka_key").isNull() | (F.col("kafka_key") != F.col("master_id")),
            F.concat(
                F.lit("Kafka key "), F.coalesce(_quoted(F.col("kafka_key")), F.lit("null")), F.lit(" is not master_id")
            ),
        ),
    ]


def _content_key() -> Column:
    """What makes two events with one event_id the same order: a re-send, or a conflicting rewrite."""
    return F.when(
        F.col(REASON).isNull(),
        F.xxhash64(
            "master_id",
            "order_time",
            "channel",
            F.col("amount").cast("decimal(18,2)"),
            F.array_sort(F.array_distinct(F.coalesce(F.col("categories"), F.array().cast("array<string>")))),
        ),
    ).otherwise(F.lit(0).cast("long"))


def _parse_schema() -> StructType:
    """The event schema with the ids as variants (their JSON type is checked) and the corrupt-record column."""
    fields = [f if f.name not in ID_FIELDS else StructField(f.name, VariantType()) for f in event_spark_schema()]
    return StructType([*fields, StructField(CORRUPT_COLUMN, StringType())])


def invalid_event_key() -> Column:
    """The state step's key of an invalid event: its own Kafka coordinates (it never matches another)."""
    return F.concat_ws(":", F.lit("invalid"), "kafka_topic", "kafka_partition", "kafka_offset")


def parse_order_events(kafka_df: DataFrame) -> DataFrame:
    """Kafka rows → typed order events with `reason`/`detail` (null when valid) and their Kafka coordinates.

    Each value is parsed once (from_json), the order time cast once, and every check evaluated once per
    row: the parse is the stream's most expensive step per event.
    """
    raw = F.col("value").cast("string")
    options = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT_COLUMN, "allowSingleQuotes": "false"}
    fields = [f.name for f in event_spark_schema() if f.name not in ID_FIELDS]
    parsed = (
        kafka_df.select(
            raw.alias("raw_value"),
            F.col("key").cast("string").alias("kafka_key"),
            F.col("topic").alias("kafka_topic"),
            F.col("partition").alias("kafka_partition"),
            F.col("offset").alias("kafka_offset"),
            F.from_json(raw, _parse_schema(), options).alias("e"),
        )
        .select(
            "raw_value",
            "kafka_key",
            "kafka_topic",
            "kafka_partition",
            "kafka_offset",
            *[F.col(f"e.{c}").cast("string").alias(c) for c in ID_FIELDS],
            *[F.expr(f"schema_of_variant(e.{c})").alias(c + ID_TYPE_SUFFIX) for c in ID_FIELDS],
            *[F.col(f"e.{c}").alias(c) for c in fields],
            F.col(f"e.{CORRUPT_COLUMN}").alias(CORRUPT_COLUMN),
        )
        .withColumn("order_time", F.col("order_ts").try_cast("timestamp"))
    )
    return (
        with_first_failure(parsed, _event_checks())
        .select(
            "*",
            F.to_date("order_time").alias("order_date"),
            (F.col("channel") != F.lit("Offline")).alias("is_online"),
        )
        .drop(CORRUPT_COLUMN, *[c + ID_TYPE_SUFFIX for c in ID_FIELDS])
        .withColumn(CONTENT_KEY, _content_key())
    )


def quarantine_columns() -> list[Column]:
    """An invalid event's `quarantine` row: raw value, Kafka coordinates and reason."""
    return [
        F.lit("kafka").alias("source"),
        F.col("raw_value").alias("raw_record"),
        F.col(REASON).alias("reason"),
        F.col(DETAIL).alias("detail"),
        F.col("kafka_topic"),
        F.col("kafka_partition"),
        F.col("kafka_offset"),
        F.current_timestamp().alias("detected_at"),
    ]


def order_columns() -> dict[str, Column]:
    """A valid event's columns that the state update needs, by name."""
    names = ("event_id", "master_id", "order_time", "order_date", "channel", "is_online", "amount")
    return {
        **{name: F.col(name) for name in names},
        "categories": F.coalesce(F.col("categories"), F.array().cast("array<string>")),
    }


def quarantine_rows(events_df: DataFrame) -> DataFrame:
    """Invalid events as `quarantine` rows."""
    return events_df.where(F.col(REASON).isNotNull()).select(*quarantine_columns())


def valid_orders(events_df: DataFrame) -> DataFrame:
    """Valid events only, with the columns the state update needs."""
    return events_df.where(F.col(REASON).isNull()).select(*[c.alias(n) for n, c in order_columns().items()])
