"""The whole stream without a broker: Kafka-shaped records from Parquet files through the real query.

The query is the one `flo-seg stream` runs (parsing, quarantine, de-duplication, the per-customer state
step, the batch handler's scoring, change detection and idempotent appends); only its record source is
a file source of rows shaped like Spark's Kafka source, one file per micro-batch. Publishing to Kafka
and process crashes are tested against the real broker in tests/test_streaming.py.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pandas as pd
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual
from streaming_support import EventSet, expected_state, make_events

from batch.compact import compact_lake
from batch.lake import read_table
from batch.migrations import NEW, migration_sql, read_migrations_native
from batch.score import load_current_model, score_customers
from flo_seg.settings import LakeSettings
from streaming.job import KAFKA_RECORD_SCHEMA, StreamSettings, file_records, read_clock, start_stream

pytestmark = pytest.mark.slow

TOPIC = "orders"
# Not order_channel: a new customer's is set by the first micro-batch that holds their orders, so a late,
# earlier order in a later batch does not change it; the recomputation below orders all events by time.
STATE_COLUMNS = [
    "master_id",
    "last_order_channel",
    "first_order_date",
    "last_order_date",
    "last_order_date_online",
    "last_order_date_offline",
    "order_num_total_ever_online",
    "order_num_total_ever_offline",
    "customer_value_total_ever_online",
    "customer_value_total_ever_offline",
]


def write_records(spark: SparkSession, folder: Path, messages: list[tuple[bytes, bytes]], files: int) -> None:
    """The messages as Kafka-shaped rows over two partitions with their own offsets, in `files` files."""
    offsets = [0, 0]
    rows = []
    for i, (key, value) in enumerate(messages):
        partition = i % 2
        rows.append((key, value, TOPIC, partition, offsets[partition]))
        offsets[partition] += 1
    size = -(-len(rows) // files)
    for n in range(files):
        chunk = rows[n * size : (n + 1) * size]
        spark.createDataFrame(chunk, KAFKA_RECORD_SCHEMA).coalesce(1).write.parquet(str(folder / f"batch-{n:03d}"))


def run_stream(spark: SparkSession, lake: LakeSettings, records: Path, checkpoint: Path) -> None:
    """What `flo-seg stream --available-now` does, over the files instead of a topic, without publishing."""
    settings = StreamSettings(
        bootstrap_servers="no-broker:9092",  # never contacted: the source is files, changes are not published
        checkpoint=str(checkpoint),
        topic=TOPIC,
        changes_topic=None,
        available_now=True,
    )
    query = start_stream(spark, lake, settings, source=file_records(str(records)))
    try:
        query.awaitTermination(timeout=600)
        assert query.exception() is None
    finally:
        query.stop()
        compact_lake(spark, lake)


@pytest.fixture(scope="module")
def trained(trained_lake: Path) -> LakeSettings:
    return LakeSettings(root=str(trained_lake))


@pytest.fixture(scope="module")
def sent(spark: SparkSession, trained: LakeSettings) -> EventSet:
    """300 orders with re-sends, late orders and every malformed kind; the last file re-sends the first's."""
    state = read_table(spark, trained, "customer_state")
    ids = sorted(r[0] for r in state.select("master_id").limit(60).collect())
    latest = state.agg(F.max("last_order_date")).first()
    assert latest is not None
    # Two days of orders: within the 7 aging days, so no batch sweeps everyone (the broker run and the aging
    # test in tests/test_streaming.py cover the sweep; here it would cost ~13 s a batch).
    start = dt.datetime.combine(latest[0], dt.time(), tzinfo=dt.UTC)
    events = make_events(ids, start, 300, seed=11, minutes=(2, 20))
    resent = [m for m in events.messages[:40] if m[0] != b"bad"]  # valid orders (a malformed copy is a new record)
    events.messages.extend(resent)  # one more file: copies of the first file's records, in a later batch
    events.duplicates += len(resent)
    return events


@pytest.fixture(scope="module")
def streamed(
    spark: SparkSession, trained: LakeSettings, sent: EventSet, tmp_path_factory: pytest.TempPathFactory
) -> tuple[LakeSettings, Path, Path]:
    root = tmp_path_factory.mktemp("files-run")
    shutil.copytree(trained.root, root / "lake")
    lake = LakeSettings(root=str(root / "lake"))
    write_records(spark, root / "records", sent.messages, files=4)
    run_stream(spark, lake, root / "records", root / "checkpoint")
    return lake, root / "records", root / "checkpoint"


def test_state_is_the_history_plus_each_valid_order_once(
    spark: SparkSession, trained: LakeSettings, streamed: tuple[LakeSettings, Path, Path], sent: EventSet
) -> None:
    initial = read_table(spark, trained, "customer_state").toPandas()
    want = expected_state(initial, sent.valid)[STATE_COLUMNS]
    got = read_table(spark, streamed[0], "customer_state").select(STATE_COLUMNS)
    assertDataFrameEqual(got, spark.createDataFrame(want, schema=got.schema))


def test_quarantine_holds_each_malformed_record_with_its_reason_and_coordinates(
    spark: SparkSession, streamed: tuple[LakeSettings, Path, Path], sent: EventSet
) -> None:
    quarantine = read_table(spark, streamed[0], "quarantine").where(F.col("source") == "kafka")
    assertDataFrameEqual(
        quarantine.groupBy("reason").count(),
        spark.createDataFrame(sorted(sent.malformed.items()), "reason string, count long"),
    )
    assert quarantine.where(F.col("kafka_topic").isNull() | F.col("kafka_offset").isNull()).count() == 0
    assert quarantine.where(F.col("kafka_topic") != TOPIC).count() == 0


def test_segments_are_the_current_model_applied_to_the_state(
    spark: SparkSession, trained: LakeSettings, streamed: tuple[LakeSettings, Path, Path], sent: EventSet
) -> None:
    lake = streamed[0]
    segments = read_table(spark, lake, "customer_segments")
    state = read_table(spark, lake, "customer_state")
    model = load_current_model(spark, lake)
    assert [r[0] for r in segments.select("model_version").distinct().collect()] == [model.record.version]
    assert segments.count() == state.count()
    # Everyone with an order was re-scored by the stream: the model applied to their state, as of then.
    ordered = spark.createDataFrame([(m,) for m in {e["master_id"] for e in sent.valid}], "master_id string")
    rescored = segments.join(ordered, "master_id", "left_semi")
    assert rescored.count() == ordered.count()
    columns = ["master_id", "segment", "recency", "frequency", "r_score", "f_score", "m_score", "rfm_segment"]
    columns += ["p_alive", "expected_orders_90d", "expected_value_12m"]  # with the version's CLV parameters
    assert model.record.clv is not None
    assert rescored.where(F.col("p_alive").isNull() | F.col("expected_value_12m").isNull()).count() == 0
    # An order changes a customer's expected value (one more order, a later last order): the stream updated it.
    trained_value = read_table(spark, trained, "customer_segments").select(
        "master_id", F.col("expected_value_12m").alias("trained_value")
    )
    compared = rescored.join(trained_value, "master_id")
    assert compared.where(F.col("expected_value_12m") != F.col("trained_value")).count() == compared.count()
    for (as_of,) in rescored.select("as_of").distinct().collect():
        scored_then = rescored.where(F.col("as_of") == as_of)
        want = score_customers(
            state.join(scored_then.select("master_id"), "master_id", "left_semi"), model, F.lit(as_of)
        )
        assertDataFrameEqual(scored_then.select(columns), want.select(columns))
    # Two days of orders age nobody past the 7 aging days: the others keep their trained rows as they were.
    untouched = read_table(spark, trained, "customer_segments").join(ordered, "master_id", "left_anti")
    assertDataFrameEqual(segments.join(ordered, "master_id", "left_anti"), untouched)
    # The event clock is the latest valid order; stream_clock records the latest date checked for aging.
    latest = max(pd.Timestamp(e["order_ts"]).tz_convert("UTC") for e in sent.valid)
    clock = read_clock(spark, lake)
    assert clock is not None and pd.Timestamp(clock).tz_localize("UTC") == latest
    swept = read_table(spark, lake, "stream_clock").first()
    assert swept is not None and swept["last_sweep_date"] == latest.date() and swept["clock_ts"] <= clock


def test_changes_lead_from_each_customers_previous_segment_to_the_current_one(
    spark: SparkSession, trained: LakeSettings, streamed: tuple[LakeSettings, Path, Path]
) -> None:
    lake = streamed[0]
    changes = read_table(spark, lake, "segment_changes")
    assert changes.count() > 0
    assert changes.where(F.col("previous_segment") == F.col("segment")).count() == 0
    assert changes.select("change_id").distinct().count() == changes.count()
    # Each customer's changes chain from the trained segment (none for a new customer) to the current one.
    before = read_table(spark, trained, "customer_segments").select("master_id", F.col("segment").alias("trained"))
    now = read_table(spark, lake, "customer_segments").select("master_id", F.col("segment").alias("current"))
    per_customer = changes.groupBy("master_id").agg(
        F.min_by("previous_segment", F.struct("batch_id", "changed_at", "change_id")).alias("first_previous"),
        F.max_by("segment", F.struct("batch_id", "changed_at", "change_id")).alias("last_segment"),
    )
    chained = per_customer.join(now, "master_id").join(before, "master_id", "left")
    assertDataFrameEqual(
        chained.select("master_id", F.col("last_segment").alias("segment")),
        chained.select("master_id", F.col("current").alias("segment")),
    )
    assert chained.where(F.col("trained").isNotNull() & (F.col("first_previous") != F.col("trained"))).count() == 0


def test_each_file_is_one_batch_and_no_batch_runs_without_data(streamed: tuple[LakeSettings, Path, Path]) -> None:
    """Four files, four batches: Spark's batches that only move the de-duplication watermark are off
    (each ran the whole batch handler, ~6 s of a one-batch run here)."""
    commits = sorted(int(f.name) for f in (streamed[2] / "commits").iterdir() if f.name.isdigit())
    assert commits == [0, 1, 2, 3]


def test_a_restart_over_the_same_records_writes_nothing_again(
    spark: SparkSession, streamed: tuple[LakeSettings, Path, Path]
) -> None:
    lake, records, checkpoint = streamed
    tables = ("customer_state", "customer_segments", "segment_changes", "quarantine")
    before = {name: read_table(spark, lake, name).toPandas() for name in tables}
    run_stream(spark, lake, records, checkpoint)
    for name in tables:
        got = read_table(spark, lake, name)
        assertDataFrameEqual(got, spark.createDataFrame(before[name], schema=got.schema))


def test_the_migration_matrix_adds_up_to_the_changes_recorded(
    spark: SparkSession, streamed: tuple[LakeSettings, Path, Path]
) -> None:
    lake = streamed[0]
    changes = read_table(spark, lake, "segment_changes")
    moves = read_migrations_native(lake, migration_sql())
    assert int(moves["changes"].sum()) == changes.count() > 0
    cells = changes.groupBy(F.coalesce("previous_segment", F.lit(NEW)).alias("from"), "segment").count().collect()
    assert {(r["from"], r["segment"]): r["count"] for r in cells} == {
        (r["from_segment"], r["to_segment"]): r["changes"] for r in moves.to_dict("records")
    }
