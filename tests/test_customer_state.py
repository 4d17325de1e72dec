"""The JVM state step (jvm/state): the customer_state rules on tiny inline inputs, and state across micro-batches."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F

from flo_seg.settings import LakeSettings
from schemas.tables import CUSTOMER_STATE
from streaming.customer_state import (
    INPUT_SCHEMA,
    INVALID,
    ORDER,
    SEGMENT,
    STATE,
    apply_customer_state,
    as_customer_state,
    bootstrap_state,
    order_inputs,
    processor,
)
from streaming.state import merge_state

D = dt.date
TS = dt.datetime

HISTORY = Row(
    master_id="h1",
    order_channel="Offline",
    last_order_channel="Offline",
    first_order_date=D(2020, 1, 10),
    last_order_date=D(2021, 5, 1),
    last_order_date_online=D(2021, 3, 1),
    last_order_date_offline=D(2021, 5, 1),
    order_num_total_ever_online=2,
    order_num_total_ever_offline=3,
    customer_value_total_ever_offline=50.05,
    customer_value_total_ever_online=100.10,
    interested_in_categories_12=["KADIN"],
    last_order_ts=None,
)


def history(spark: SparkSession, rows: list[Row]) -> DataFrame:
    schema = (
        "master_id string, order_channel string, last_order_channel string, first_order_date date, "
        "last_order_date date, last_order_date_online date, last_order_date_offline date, "
        "order_num_total_ever_online long, order_num_total_ever_offline long, "
        "customer_value_total_ever_offline double, customer_value_total_ever_online double, "
        "interested_in_categories_12 array<string>, last_order_ts timestamp"
    )
    return spark.createDataFrame(rows, schema).withColumn("state_seq", F.lit(0).cast("long"))


def order(master_id: str, event_id: str, at: dt.datetime, channel: str, cents: int, cats: list[str]) -> dict[str, Any]:
    return {
        "kind": ORDER,
        "master_id": master_id,
        "event_id": event_id,
        "order_time": at,
        "order_date": at.date(),
        "channel": channel,
        "is_online": channel != "Offline",
        "amount_cents": cents,
        "categories": cats,
    }


def inputs(spark: SparkSession, rows: list[dict[str, Any]]) -> DataFrame:
    full = [{f.name: r.get(f.name) for f in INPUT_SCHEMA} for r in rows]
    return spark.createDataFrame([Row(**r) for r in full], INPUT_SCHEMA)


def by_key(df: DataFrame) -> dict[str, Row]:
    return {r["master_id"]: r for r in df.collect()}


def ack(master_id: str, segment: str, model: str, seq: int, as_of: dt.date) -> dict[str, Any]:
    return {
        "kind": SEGMENT,
        "master_id": master_id,
        "segment": segment,
        "model_version": model,
        "segment_seq": seq,
        "as_of": as_of,
    }


def test_orders_follow_the_customer_state_rules(spark: SparkSession) -> None:
    """Counts and cents add up, dates move outward, late orders keep the last channel; new customers, pass-through."""
    boot = bootstrap_state(
        history(spark, [HISTORY]),
        spark.createDataFrame(
            [("h1", "champions", "v1", 0, D(2021, 5, 3))],
            "master_id string, segment string, model_version string, state_seq long, as_of date",
        ),
    )
    quarantined = {
        "source": "kafka",
        "raw_record": "{oops",
        "reason": "malformed_json",
        "detail": "not one JSON object",
        "kafka_topic": "t",
        "kafka_partition": 0,
        "kafka_offset": 7,
        "detected_at": TS(2021, 6, 1),
    }
    batch = inputs(
        spark,
        [
            # Late (before last_order_date 2021-05-01): counted, but neither the date nor the channel moves.
            order("h1", "e1", TS(2021, 4, 1, 10), "Android App", 1001, ["ERKEK"]),
            order("h1", "e2", TS(2021, 5, 2, 9), "Mobile", 500, []),
            order("n1", "e3", TS(2021, 5, 3, 12), "Offline", 2000, ["COCUK"]),
            order("n1", "e4", TS(2021, 5, 3, 8), "Ios App", 3000, []),
            # Published segments come back; the newest by (state seq, model version, as-of date) wins.
            ack("h1", "at_risk", "v2", 5, D(2021, 5, 3)),
            ack("h1", "hibernating", "v9", 4, D(2021, 6, 1)),
            ack("h1", "need_attention", "v2", 5, D(2021, 5, 1)),
            {"kind": INVALID, "master_id": "invalid:t:0:7", "quarantine": Row(**quarantined)},
        ],
    )
    out = apply_customer_state(batch, boot)
    states = by_key(out.where(F.col("kind") == STATE))
    h1, n1 = states["h1"], states["n1"]
    assert (h1["online_orders"], h1["offline_orders"], h1["online_cents"], h1["offline_cents"]) == (4, 3, 11511, 5005)
    assert (h1["first_order_date"], h1["last_order_date"]) == (D(2020, 1, 10), D(2021, 5, 2))
    assert (h1["last_order_date_online"], h1["last_order_date_offline"]) == (D(2021, 5, 2), D(2021, 5, 1))
    assert (h1["order_channel"], h1["last_order_channel"], h1["last_order_ts"]) == (
        "Offline",
        "Mobile",
        TS(2021, 5, 2, 9),
    )
    assert h1["categories"] == ["KADIN", "ERKEK"]
    # The segment published before this batch (the one that came back last) is what a change compares to.
    assert (h1["previous_segment"], h1["previous_model_version"], h1["seq"]) == ("at_risk", "v2", 1)
    assert (h1["segment_seq"], h1["segment_as_of"], h1["batch_orders"]) == (5, D(2021, 5, 3), 2)
    assert (n1["order_channel"], n1["last_order_channel"]) == ("Ios App", "Offline")
    assert (n1["online_orders"], n1["offline_orders"], n1["online_cents"], n1["offline_cents"]) == (1, 1, 3000, 2000)
    assert (n1["first_order_date"], n1["last_order_date"], n1["categories"]) == (
        D(2021, 5, 3),
        D(2021, 5, 3),
        ["COCUK"],
    )
    assert (n1["previous_segment"], n1["seq"], n1["last_order_date_online"]) == (None, 1, D(2021, 5, 3))
    invalid = out.where(F.col("kind") == INVALID).collect()
    assert [(r["master_id"], r["quarantine"].asDict()) for r in invalid] == [("invalid:t:0:7", quarantined)]
    # Money goes back to customer_state as exact doubles.
    state = by_key(as_customer_state(out))
    assert (state["h1"]["customer_value_total_ever_online"], state["h1"]["customer_value_total_ever_offline"]) == (
        115.11,
        50.05,
    )


def test_a_second_late_order_does_not_take_the_channel_from_a_later_history_date(spark: SparkSession) -> None:
    """Once a late order set last_order_ts, an order still before last_order_date must not take over the channel."""
    boot = bootstrap_state(history(spark, [HISTORY]))
    first = apply_customer_state(
        inputs(
            spark,
            [
                order("h1", "e1", TS(2021, 4, 1, 10), "Android App", 100, []),
                order("h1", "e2", TS(2021, 4, 15, 10), "Desktop", 100, []),
            ],
        ),
        boot,
    )
    h1 = by_key(first)["h1"]
    assert (h1["last_order_channel"], h1["last_order_date"]) == ("Offline", D(2021, 5, 1))


def _run(spark: SparkSession, source: Path, checkpoint: Path, boot: DataFrame, seen: list[Row]) -> None:
    stream = spark.readStream.schema(INPUT_SCHEMA).option("maxFilesPerTrigger", 1).parquet(str(source / "*"))
    query = (
        apply_customer_state(stream, boot)
        .writeStream.outputMode("update")
        .option("checkpointLocation", str(checkpoint))
        .foreachBatch(lambda df, _batch: seen.extend(df.collect()))
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination()
    assert query.exception() is None


def test_state_lives_in_the_checkpoint_across_batches_and_restarts(spark: SparkSession, tmp_path: Path) -> None:
    """Each batch starts from the last; a restart on the checkpoint neither bootstraps again nor loses state."""
    source, checkpoint = tmp_path / "inputs", tmp_path / "checkpoint"

    def add_file(name: str, rows: list[dict[str, Any]]) -> None:
        inputs(spark, rows).coalesce(1).write.parquet(str(source / name))

    add_file("b0", [order("h1", "e1", TS(2021, 5, 2, 9), "Mobile", 1000, [])])
    add_file("b1", [ack("h1", "loyal", "v1", 1, D(2021, 5, 2))])
    add_file("b2", [order("h1", "e2", TS(2021, 5, 3, 9), "Offline", 250, ["ERKEK"])])
    seen: list[Row] = []
    _run(spark, source, checkpoint, bootstrap_state(history(spark, [HISTORY])), seen)
    assert [(r["seq"], r["online_orders"], r["offline_orders"], r["previous_segment"]) for r in seen] == [
        (1, 3, 3, None),
        (2, 3, 4, "loyal"),
    ]

    # Restarted with another bootstrap: it must be ignored, the state comes from the checkpoint.
    add_file("b3", [order("h1", "e3", TS(2021, 5, 4, 9), "Offline", 1, [])])
    other = bootstrap_state(history(spark, [Row(**(HISTORY.asDict() | {"order_num_total_ever_offline": 100}))]))
    restarted: list[Row] = []
    _run(spark, source, checkpoint, other, restarted)
    assert [(r["seq"], r["offline_orders"], r["offline_cents"], r["last_order_date"]) for r in restarted] == [
        (3, 5, 5005 + 250 + 1, D(2021, 5, 4))
    ]


def test_a_processor_missing_from_the_classpath_says_how_to_get_it(spark: SparkSession) -> None:
    """py4j returns a package for an unknown class; the step turns that into one clear error."""
    assert processor(spark)._fqn == "flo.seg.state.CustomerState"
    with pytest.raises(RuntimeError, match="not on the JVM classpath: run `make setup`"):
        processor(spark, "flo.seg.state.NoSuchStep")


def test_a_bootstrap_of_another_shape_is_refused(spark: SparkSession) -> None:
    """The processor checks its initial state's columns and names what it expected."""
    with pytest.raises(Exception, match="bootstrap has columns"):
        apply_customer_state(inputs(spark, []), spark.createDataFrame([("x",)], "master_id string"))


def test_the_state_step_equals_the_customer_state_merge_on_the_real_data(
    spark: SparkSession, real_data_path: Path, tmp_path: Path
) -> None:
    """Customer by customer, the JVM step gives what the customer_state MERGE gives for the same orders."""
    from batch.load import read_history
    from batch.train import state_from_history
    from batch.validate import validate_history
    from schemas.tables import CUSTOMER_STATE_SCHEMA
    from streaming.state import customer_order_deltas

    validated = validate_history(read_history(spark, str(real_data_path)))
    history_df = state_from_history(validated).select(*CUSTOMER_STATE_SCHEMA.fieldNames()).cache()
    # 1-3 orders for a third of the customers and for a few new ones: around each last order (so many are
    # late), on hash-chosen channels, amounts and categories.
    ids = history_df.select("master_id", "last_order_date").where(F.pmod(F.xxhash64("master_id"), F.lit(3)) == 0)
    ids = ids.unionByName(
        spark.range(50).select(
            F.format_string("new-%03d", "id").alias("master_id"), F.lit(D(2021, 5, 1)).alias("last_order_date")
        )
    )
    channels = F.array(*[F.lit(c) for c in ("Android App", "Ios App", "Desktop", "Mobile", "Offline")])
    orders = (
        ids.withColumn(
            "n", F.explode(F.sequence(F.lit(1), (F.abs(F.xxhash64("master_id", F.lit("orders"))) % 3 + 1).cast("int")))
        )
        .withColumn("h", F.abs(F.xxhash64("master_id", "n")))
        .select(
            "master_id",
            F.concat_ws("-", "master_id", "n").alias("event_id"),
            (
                F.col("last_order_date").cast("timestamp")
                + F.make_interval(days=(F.col("h") % 120 - 60).cast("int"), hours=(F.col("h") % 2).cast("int"))
            ).alias("order_time"),
            F.element_at(channels, (F.col("h") % 5 + 1).cast("int")).alias("channel"),
            ((F.col("h") % 100_000) / 100 + 0.01).alias("amount"),
            # A deterministic subset (a mask from the hash), unlike shuffle(): both paths read the same orders.
            F.expr(
                "filter(array('KADIN', 'ERKEK', 'COCUK', 'AKTIFSPOR', 'AKTIFCOCUK'), (c, i) -> shiftright(h, i + 7) % 2 = 1)"
            ).alias("categories"),
        )
        .withColumn("order_date", F.to_date("order_time"))
        .withColumn("is_online", F.col("channel") != "Offline")
        .cache()
    )
    assert orders.count() > 10_000

    lake = LakeSettings(root=str(tmp_path))
    path = lake.table(CUSTOMER_STATE)
    history_df.write.format("delta").save(path)
    merge_state(spark, lake, customer_order_deltas(orders), "parity", 0)
    columns = [c for c in history_df.columns if c != "updated_at"]
    touched = orders.select("master_id").distinct()
    merged = spark.read.format("delta").load(path).join(touched, "master_id", "left_semi").select(*columns)
    stepped = as_customer_state(apply_customer_state(order_inputs(orders), bootstrap_state(history_df))).select(
        *columns
    )
    assert stepped.count() == merged.count() == touched.count()
    assert stepped.exceptAll(merged).count() == 0
    assert merged.exceptAll(stepped).count() == 0


def test_two_late_orders_in_two_batches_keep_the_history_channel_in_the_merge_too(
    spark: SparkSession, tmp_path: Path
) -> None:
    """The customer_state MERGE of today's stream and the JVM step agree on a late order after a late order."""
    from streaming.state import customer_order_deltas

    lake = LakeSettings(root=str(tmp_path))
    path = lake.table(CUSTOMER_STATE)
    history(spark, [HISTORY]).withColumn("updated_at", F.current_timestamp()).write.format("delta").save(path)
    state = bootstrap_state(history(spark, [HISTORY]))
    late = (("e1", TS(2021, 4, 1, 10), "Android App"), ("e2", TS(2021, 4, 15, 10), "Desktop"))
    for batch_id, (event_id, at, channel) in enumerate(late):
        batch = [order("h1", event_id, at, channel, 100, [])]
        orders = inputs(spark, batch).withColumn("amount", F.col("amount_cents") / 100)
        merge_state(spark, lake, customer_order_deltas(orders), "late-orders", batch_id)
        state = bootstrap_state(as_customer_state(apply_customer_state(inputs(spark, batch), state)))
    merged = spark.read.format("delta").load(path).first()
    stepped = state.first()
    assert merged is not None and stepped is not None
    assert (merged["last_order_channel"], merged["last_order_date"]) == ("Offline", D(2021, 5, 1))
    assert (stepped["last_order_channel"], stepped["last_order_date"]) == ("Offline", D(2021, 5, 1))
    assert merged["last_order_ts"] == stepped["last_order_ts"] == TS(2021, 4, 15, 10)
