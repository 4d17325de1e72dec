"""The stream's per-customer state step: inputs for the JVM processor (jvm/state) and its output as customer_state.

The processor keeps each customer's running state in the stream's state store, keyed by master_id,
and touches only the customers of a micro-batch; its rules are in `jvm/state/.../CustomerState.java`
and are those of the customer_state MERGE it replaces. Money travels in whole cents. Three kinds of
input rows share one schema: valid orders, published segments coming back (the newest by
`segment_seq` wins), and quarantined events, which pass through without state. The processor also
drops an order whose event_id the customer had within the de-duplication window (a re-send, or a
conflicting reuse of the id) and counts it in `resent` / `conflicting`.
"""

from __future__ import annotations

import json

from py4j.java_gateway import JavaClass, JavaObject
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from batch.features import CATEGORY_LIST, OFFLINE_ORDERS, OFFLINE_VALUE, ONLINE_ORDERS, ONLINE_VALUE
from flo_seg.settings import DEFAULT_DEDUPE_WINDOW, interval_seconds
from schemas.tables import QUARANTINE_SCHEMA
from streaming.events import CONTENT_KEY, REASON, invalid_event_key, order_columns, quarantine_columns

PROCESSOR = "flo.seg.state.CustomerState"
ORDER, SEGMENT, INVALID, STATE, DUPLICATE = "order", "segment", "invalid", "state", "duplicate"

# The quarantine row rides along nullable: order rows have none.
_QUARANTINE = T.StructType([T.StructField(f.name, f.dataType, True) for f in QUARANTINE_SCHEMA])
INPUT_SCHEMA = T.StructType(
    [
        T.StructField("kind", T.StringType()),
        T.StructField("master_id", T.StringType()),
        T.StructField("event_id", T.StringType()),
        T.StructField("order_time", T.TimestampType()),
        T.StructField("order_date", T.DateType()),
        T.StructField("channel", T.StringType()),
        T.StructField("is_online", T.BooleanType()),
        T.StructField("amount_cents", T.LongType()),
        T.StructField("categories", T.ArrayType(T.StringType())),
        T.StructField("segment", T.StringType()),
        T.StructField("model_version", T.StringType()),
        T.StructField("segment_seq", T.LongType()),
        T.StructField("as_of", T.DateType()),
        T.StructField("content_key", T.LongType()),  # what tells a re-send from a conflicting reuse
        T.StructField("kafka_partition", T.IntegerType()),  # of copies in one batch the first wins
        T.StructField("kafka_offset", T.LongType()),
        T.StructField("quarantine", _QUARANTINE),
    ]
)


def _cents(amount: Column) -> Column:
    """A money amount in whole cents (the contract counts in cents; a double sum would drift)."""
    return (amount.cast("decimal(20,2)") * 100).cast("long")


def _inputs(**columns: Column) -> list[Column]:
    """All input columns in INPUT_SCHEMA order, typed nulls where `columns` gives none."""
    return [columns.get(f.name, F.lit(None)).cast(f.dataType).alias(f.name) for f in INPUT_SCHEMA]


def order_inputs(orders_df: DataFrame) -> DataFrame:
    """Valid orders (streaming.events.valid_orders) as processor input."""
    return orders_df.select(
        *_inputs(
            kind=F.lit(ORDER),
            master_id=F.col("master_id"),
            event_id=F.col("event_id"),
            order_time=F.col("order_time"),
            order_date=F.col("order_date"),
            channel=F.col("channel"),
            is_online=F.col("is_online"),
            amount_cents=_cents(F.col("amount")),
            categories=F.col("categories"),
        )
    )


def event_inputs(events_df: DataFrame) -> DataFrame:
    """Parsed events (valid or not) as processor input in one pass over them: valid orders keyed by
    master_id, quarantined events by their own Kafka coordinates (no customer state is touched).

    One projection, not a union of two filtered copies: in a streaming query each copy would read
    and parse the Kafka source again.
    """
    valid = F.col(REASON).isNull()
    order = order_columns()
    return events_df.select(
        *_inputs(
            kind=F.when(valid, F.lit(ORDER)).otherwise(F.lit(INVALID)),
            master_id=F.when(valid, F.col("master_id")).otherwise(invalid_event_key()),
            event_id=F.when(valid, order["event_id"]),
            order_time=F.when(valid, order["order_time"]),
            order_date=F.when(valid, order["order_date"]),
            channel=F.when(valid, order["channel"]),
            is_online=F.when(valid, order["is_online"]),
            amount_cents=F.when(valid, _cents(order["amount"])),
            categories=F.when(valid, order["categories"]),
            content_key=F.when(valid, F.col(CONTENT_KEY)),
            kafka_partition=F.when(valid, F.col("kafka_partition")),
            kafka_offset=F.when(valid, F.col("kafka_offset")),
            quarantine=F.when(~valid, F.struct(*quarantine_columns())),
        )
    )


def segment_inputs(segments_df: DataFrame) -> DataFrame:
    """Published segment rows (segment_log) going back to the state; the newest by
    (state_seq, model_version, as_of) wins."""
    return segments_df.select(
        *_inputs(
            kind=F.lit(SEGMENT),
            master_id=F.col("master_id"),
            segment=F.col("segment"),
            model_version=F.col("model_version"),
            segment_seq=F.col("state_seq"),
            as_of=F.col("as_of"),
        )
    )


def processor(spark: SparkSession, name: str = PROCESSOR) -> JavaObject:
    """The processor's JVM class, or a RuntimeError saying how to get it (py4j returns a package otherwise)."""
    found: JavaObject = spark._jvm
    for part in name.split("."):
        found = getattr(found, part)
    if not isinstance(found, JavaClass):
        raise RuntimeError(
            f"{name} is not on the JVM classpath: run `make setup` (it builds .jars/spark/flo-seg-state.jar) "
            "or pass that jar to spark-submit --jars"
        )
    return found


def state_schema(spark: SparkSession) -> T.StructType:
    """What the state store holds per customer, in its order: the processor's own definition."""
    schema = T.StructType.fromJson(json.loads(processor(spark).STATE_SCHEMA.json()))
    assert isinstance(schema, T.StructType)
    return schema


def _seq(df: DataFrame) -> Column:
    """A table's state_seq (0 where unknown: a history row, or a lake from before the column)."""
    return F.coalesce(F.col("state_seq"), F.lit(0)) if "state_seq" in df.columns else F.lit(0)


def bootstrap_state(state_df: DataFrame, segments_df: DataFrame | None = None) -> DataFrame:
    """customer_state rows (and their published segment, if given) as the processor's initial state."""
    state = state_df.select(
        "master_id",
        "order_channel",
        "last_order_channel",
        "first_order_date",
        "last_order_date",
        "last_order_date_online",
        "last_order_date_offline",
        F.col(ONLINE_ORDERS).cast("long").alias("online_orders"),
        F.col(OFFLINE_ORDERS).cast("long").alias("offline_orders"),
        _cents(F.col(ONLINE_VALUE)).alias("online_cents"),
        _cents(F.col(OFFLINE_VALUE)).alias("offline_cents"),
        F.col(CATEGORY_LIST).alias("categories"),
        "last_order_ts",
        _seq(state_df).alias("seq"),
    )
    if segments_df is None:
        published = state.select(
            "*", *[F.lit(None).alias(c) for c in ("segment", "model_version", "segment_seq", "segment_as_of")]
        )
    else:
        segments = segments_df.select(
            "master_id",
            "segment",
            "model_version",
            _seq(segments_df).alias("segment_seq"),
            F.col("as_of").alias("segment_as_of"),
        )
        published = state.join(segments, "master_id", "left")
    return published.select(
        *[F.col(f.name).cast(f.dataType).alias(f.name) for f in state_schema(state_df.sparkSession)]
    )


def apply_customer_state(
    inputs: DataFrame, bootstrap: DataFrame, dedupe_window: str = DEFAULT_DEDUPE_WINDOW
) -> DataFrame:
    """The processor over `inputs` (INPUT_SCHEMA), starting from `bootstrap` when there is no checkpoint yet,
    dropping an order whose event_id its customer had within `dedupe_window` of stream time."""
    spark = inputs.sparkSession
    window_ms = interval_seconds(dedupe_window) * 1000
    jdf = processor(spark).apply(inputs.select(*INPUT_SCHEMA.fieldNames())._jdf, bootstrap._jdf, window_ms)
    return DataFrame(jdf, spark)


def as_customer_state(state_rows: DataFrame, *extra: str) -> DataFrame:
    """Processor `state` rows in customer_state's shape (money back to double from exact cents), plus `extra`."""
    return state_rows.where(F.col("kind") == STATE).select(
        "master_id",
        "order_channel",
        "last_order_channel",
        "first_order_date",
        "last_order_date",
        "last_order_date_online",
        "last_order_date_offline",
        F.col("online_orders").alias(ONLINE_ORDERS),
        F.col("offline_orders").alias(OFFLINE_ORDERS),
        (F.col("offline_cents").cast("decimal(20,0)") / 100).cast("double").alias(OFFLINE_VALUE),
        (F.col("online_cents").cast("decimal(20,0)") / 100).cast("double").alias(ONLINE_VALUE),
        F.col("categories").alias(CATEGORY_LIST),
        "last_order_ts",
        F.current_timestamp().alias("updated_at"),
        F.col("seq").alias("state_seq"),
        *extra,
    )
