"""The streaming job against the real local broker: state, segments, quarantine, dedupe, crash safety."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
from kafka import KafkaConsumer
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from streaming_support import (
    EventSet,
    expected_state,
    fresh_topics,
    make_events,
    run_available_now,
    send,
    stream_command,
)

from batch.compact import compact_lake
from batch.lake import read_table
from batch.migrations import RETRAIN_BATCH_ID
from batch.score import load_current_model, score_customers
from batch.train import run_train
from devstack.stack import TopicSpec, ensure_topics
from flo_seg.settings import LakeSettings, TrainSettings
from streaming.job import StreamSettings, read_clock, start_stream

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
STATE_KEYS = [
    "order_num_total_ever_online",
    "order_num_total_ever_offline",
    "first_order_date",
    "last_order_date",
    "last_order_date_online",
    "last_order_date_offline",
    "last_order_channel",
]


@pytest.fixture(scope="module")
def topics(kafka_bootstrap: str) -> tuple[str, str]:
    """Fresh order and change topics for this module."""
    suffix = uuid.uuid4().hex[:8]
    orders, changes = f"test.orders.{suffix}", f"test.changes.{suffix}"
    ensure_topics(kafka_bootstrap, [TopicSpec(name=orders, partitions=2), TopicSpec(name=changes, partitions=2)])
    return orders, changes


@pytest.fixture(scope="module")
def sent(spark: SparkSession, trained_lake: Path, topics: tuple[str, str], kafka_bootstrap: str) -> EventSet:
    """400 orders (with re-sends, late orders and every malformed kind) produced before any stream starts."""
    state = read_table(spark, LakeSettings(root=str(trained_lake)), "customer_state")
    ids = sorted(r[0] for r in state.select("master_id").limit(60).collect())
    latest = state.agg(F.max("last_order_date")).first()
    assert latest is not None
    start = dt.datetime.combine(latest[0], dt.time(), tzinfo=dt.UTC)
    events = make_events(ids, start, 400, seed=9)
    send(kafka_bootstrap, topics[0], events.messages)
    return events


def copy_lake(trained_lake: Path, dest: Path) -> LakeSettings:
    shutil.copytree(trained_lake, dest)
    return LakeSettings(root=str(dest))


def settings_for(kafka_bootstrap: str, topics: tuple[str, str], checkpoint: Path) -> StreamSettings:
    return StreamSettings(
        bootstrap_servers=kafka_bootstrap,
        checkpoint=str(checkpoint),
        topic=topics[0],
        changes_topic=topics[1],
        available_now=True,
        max_offsets_per_trigger=120,
        aging_days=7,
    )


def table_rows(spark: SparkSession, lake: LakeSettings, name: str, drop: list[str]) -> list[tuple[object, ...]]:
    df = read_table(spark, lake, name).drop(*drop)
    return sorted(tuple(r) for r in df.collect())


@pytest.fixture(scope="module")
def clean_run(
    spark: SparkSession,
    trained_lake: Path,
    topics: tuple[str, str],
    kafka_bootstrap: str,
    sent: EventSet,
    tmp_path_factory: pytest.TempPathFactory,
) -> LakeSettings:
    """One uninterrupted in-process run over everything sent."""
    root = tmp_path_factory.mktemp("clean")
    lake = copy_lake(trained_lake, root / "lake")
    run_available_now(spark, lake, settings_for(kafka_bootstrap, topics, root / "checkpoint"))
    return lake


@pytest.mark.integration
def test_state_equals_an_independent_recomputation(
    spark: SparkSession, trained_lake: Path, clean_run: LakeSettings, sent: EventSet
) -> None:
    initial = read_table(spark, LakeSettings(root=str(trained_lake)), "customer_state").toPandas()
    want = expected_state(initial, sent.valid).set_index("master_id").sort_index()
    got = read_table(spark, clean_run, "customer_state").toPandas().set_index("master_id").sort_index()
    assert list(got.index) == list(want.index)  # new customers inserted, nobody lost
    for col in STATE_KEYS:
        assert (got[col].astype(str) == want[col].astype(str)).all(), col
    for col in ("customer_value_total_ever_online", "customer_value_total_ever_offline"):
        assert got[col].to_numpy() == pytest.approx(want[col].to_numpy())


@pytest.mark.integration
def test_segments_are_the_current_model_applied_to_the_state(
    spark: SparkSession, clean_run: LakeSettings, sent: EventSet
) -> None:
    segments = read_table(spark, clean_run, "customer_segments").toPandas()
    state = read_table(spark, clean_run, "customer_state")
    assert len(segments) == state.count()
    model = load_current_model(spark, clean_run)
    assert set(segments["model_version"]) == {model.record.version}
    for as_of, rows in segments.groupby("as_of"):
        ids = spark.createDataFrame([(m,) for m in rows["master_id"]], "master_id string")
        want = score_customers(state.join(ids, "master_id", "left_semi"), model, F.lit(as_of)).toPandas()
        merged = rows.merge(want, on="master_id", suffixes=("", "_want"))
        assert len(merged) == len(rows)
        for col in ("segment", "recency", "frequency", "r_score", "f_score", "m_score", "rfm_segment"):
            assert (merged[col] == merged[f"{col}_want"]).all(), col
    clock = read_clock(spark, clean_run)
    assert clock is not None
    latest = max(pd.Timestamp(e["order_ts"]).tz_convert("UTC") for e in sent.valid)
    assert pd.Timestamp(clock).tz_localize("UTC") == latest
    # stream_clock is written with each sweep (each event date): it holds the latest date's clock.
    swept = read_table(spark, clean_run, "stream_clock").first()
    assert swept is not None and swept["last_sweep_date"] == latest.date() and swept["clock_ts"] <= clock
    touched = {e["master_id"] for e in sent.valid}
    assert set(segments.loc[segments["as_of"] == latest.date(), "master_id"]) >= {
        m
        for m in touched
        if max(pd.Timestamp(e["order_ts"]) for e in sent.valid if e["master_id"] == m).tz_convert("UTC").date()
        == latest.date()
    }


@pytest.mark.integration
def test_every_malformed_kind_is_quarantined_with_its_coordinates(
    spark: SparkSession, clean_run: LakeSettings, sent: EventSet
) -> None:
    rows = read_table(spark, clean_run, "quarantine").where(F.col("source") == "kafka").collect()
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["reason"]] = counts.get(r["reason"], 0) + 1
        assert r["kafka_topic"].startswith("test.orders.") and r["kafka_offset"] is not None
        assert r["raw_record"]
    assert counts == sent.malformed


@pytest.mark.integration
def test_segment_changes_are_recorded_and_published(
    spark: SparkSession, clean_run: LakeSettings, topics: tuple[str, str], kafka_bootstrap: str
) -> None:
    changes = read_table(spark, clean_run, "segment_changes").toPandas()
    segments = read_table(spark, clean_run, "customer_segments").toPandas().set_index("master_id")
    assert len(changes) > 0
    last = changes.sort_values(["batch_id"]).groupby("master_id").last()
    assert (last["segment"] == segments.loc[last.index, "segment"]).all()
    assert (changes["previous_segment"] != changes["segment"]).all()
    consumer = KafkaConsumer(
        topics[1],
        bootstrap_servers=kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
        group_id=None,
    )
    published = {json.loads(m.value)["change_id"] for m in consumer}
    consumer.close()
    assert published >= set(changes["change_id"])


def run_stream_process(
    lake: LakeSettings,
    checkpoint: Path,
    topics: tuple[str, str],
    bootstrap: str,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    cmd = stream_command(
        lake.root, checkpoint, topics, bootstrap, "--available-now", "--max-offsets-per-trigger", "120"
    )
    return subprocess.Popen(
        cmd,
        env={**os.environ, **(env or {})},
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.integration
def test_kill_9_at_any_moment_then_restart_equals_a_clean_run(
    spark: SparkSession,
    trained_lake: Path,
    clean_run: LakeSettings,
    topics: tuple[str, str],
    kafka_bootstrap: str,
    tmp_path: Path,
) -> None:
    lake = copy_lake(trained_lake, tmp_path / "lake")
    checkpoint = tmp_path / "checkpoint"
    # First crashes at chosen points: after batch 1's log appends (before any compaction took them), inside
    # an aging sweep between its changes and its segment rows, between a compaction's MERGE and its
    # record. Then kill -9 at several moments, then a run to completion.
    faults = {
        "FLO_FAULT_AFTER_LOGS": "1",
        "FLO_FAULT_IN_SWEEP": "sweep",
        "FLO_FAULT_AFTER_COMPACT_MERGE": "segment_log",
    }
    for variable, value in faults.items():
        proc = run_stream_process(lake, checkpoint, topics, kafka_bootstrap, env={variable: value})
        proc.wait(timeout=300)
        assert proc.returncode == -signal.SIGKILL, (variable, proc.stdout.read() if proc.stdout else "")
    for delay in (14.0, 19.0, 25.0):
        proc = run_stream_process(lake, checkpoint, topics, kafka_bootstrap)
        time.sleep(delay)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    proc = run_stream_process(lake, checkpoint, topics, kafka_bootstrap)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    ignore = {
        "customer_state": ["updated_at"],
        "customer_segments": ["scored_at"],
        "segment_changes": ["changed_at"],
        "quarantine": ["detected_at"],
    }
    for name, drop in ignore.items():
        assert table_rows(spark, lake, name, drop) == table_rows(spark, clean_run, name, drop), name


@pytest.mark.integration
def test_a_batch_puts_its_changes_on_kafka_before_its_delta_appends(
    spark: SparkSession, trained_lake: Path, kafka_bootstrap: str, tmp_path: Path
) -> None:
    lake = copy_lake(trained_lake, tmp_path / "lake")
    checkpoint = tmp_path / "checkpoint"
    own = fresh_topics(kafka_bootstrap)
    # All on one event date, so only the first batch sweeps; the later ones publish before they append.
    state = read_table(spark, lake, "customer_state")
    ids = sorted(r[0] for r in state.select("master_id").limit(60).collect())
    day = state.agg(F.max("last_order_date")).first()[0] + dt.timedelta(days=1)  # type: ignore[index]
    send(
        kafka_bootstrap,
        own[0],
        make_events(ids, dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC), 300, seed=21, minutes=(0, 2)).messages,
    )
    # Killed right after a micro-batch published its changes, before any of its Delta appends.
    proc = run_stream_process(lake, checkpoint, own, kafka_bootstrap, env={"FLO_FAULT_AFTER_PUBLISH": "publish"})
    proc.wait(timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read() if proc.stdout else ""
    on_kafka = published_changes(kafka_bootstrap, own[1])
    crashed = max(on_kafka)
    assert crashed > 0 and on_kafka[crashed]
    assert read_table(spark, lake, "segment_changes").where(F.col("batch_id") == crashed).count() == 0

    # The restart replays the batch: the same change_ids land in Delta, once, and again on Kafka.
    proc = run_stream_process(lake, checkpoint, own, kafka_bootstrap)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    changes = read_table(spark, lake, "segment_changes").toPandas()
    assert not changes["change_id"].duplicated().any()
    assert set(changes.loc[changes["batch_id"] == crashed, "change_id"]) == on_kafka[crashed]
    assert set(changes["change_id"]) == set().union(*published_changes(kafka_bootstrap, own[1]).values())


def published_changes(kafka_bootstrap: str, topic: str) -> dict[int, set[str]]:
    """change_ids on a changes topic, by batch."""
    consumer = KafkaConsumer(
        topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=5000, group_id=None
    )
    found: dict[int, set[str]] = {}
    for message in consumer:
        change = json.loads(message.value)
        found.setdefault(int(change["batch_id"]), set()).add(change["change_id"])
    consumer.close()
    return found


def wait_for(predicate, timeout: float = 180.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(1.0)
    raise AssertionError(f"timed out waiting for {what}")


def test_aging_moves_lapsed_customers_out_of_top_segments_and_each_change_is_published_keyed_by_its_customer(
    spark: SparkSession, trained_lake: Path, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """One small run for two properties. Orders a year after training age every customer without new ones,
    so nobody keeps a top segment on old orders. What only a broker shows (tests/test_stream_files.py runs
    the same query over files): the run's recorded changes are on the changes topic, each once, keyed by
    master_id, with the row's values."""
    lake = copy_lake(trained_lake, tmp_path / "lake")
    before = read_table(spark, lake, "customer_segments").toPandas()
    champions = set(before.loc[before["rfm_segment"] == "champions", "master_id"])
    assert champions
    others = sorted(set(before["master_id"]) - champions)  # the champions get no orders: they must lapse
    latest = read_table(spark, lake, "customer_state").agg(F.max("last_order_date")).first()[0]  # type: ignore[index]
    # Orders just after training for 30 customers (every malformed kind too), then orders 400 days on for 3.
    recent = make_events(
        others[:30], dt.datetime.combine(latest, dt.time(), tzinfo=dt.UTC), 60, seed=31, minutes=(2, 20)
    )
    start = dt.datetime.combine(before["as_of"].max(), dt.time(), tzinfo=dt.UTC) + dt.timedelta(days=400)
    lapse = make_events(others[:3], start, 20, seed=4)
    topics = fresh_topics(kafka_bootstrap)
    send(kafka_bootstrap, topics[0], recent.messages + [m for m in lapse.messages if m[0] != b"bad"])
    run_available_now(spark, lake, settings_for(kafka_bootstrap, topics, tmp_path / "checkpoint"))
    clock = read_clock(spark, lake)
    assert clock is not None
    after = read_table(spark, lake, "customer_segments").toPandas().set_index("master_id")
    # Every segment is at most `aging_days` of event time old, so nobody keeps a year-old verdict.
    assert (after["as_of"] >= clock.date() - dt.timedelta(days=7)).all()
    lapsed = after.loc[sorted(champions)]
    assert (lapsed["recency"] >= 400).all()
    assert (lapsed["r_score"] == 1).all()
    assert not (lapsed["rfm_segment"].isin(["champions", "loyal_customers", "potential_loyalists"])).any()
    changes = read_table(spark, lake, "segment_changes").toPandas()
    assert set(changes["master_id"]) >= set(
        lapsed.index[lapsed["segment"] != before.set_index("master_id").loc[lapsed.index, "segment"]]
    )

    recorded = changes.set_index("change_id")
    assert len(recorded) > 0
    consumer = KafkaConsumer(
        topics[1], bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=5000
    )
    messages = [(m.key.decode(), json.loads(m.value)) for m in consumer]
    consumer.close()
    assert sorted(value["change_id"] for _, value in messages) == sorted(recorded.index)
    for key, value in messages:
        row = recorded.loc[value["change_id"]]
        assert key == value["master_id"] == row["master_id"]
        assert (value["segment"], value.get("previous_segment"), value["batch_id"]) == (
            row["segment"],
            row["previous_segment"],
            row["batch_id"],
        )


@pytest.mark.integration
def test_new_model_is_hot_reloaded_while_the_stream_runs(
    spark: SparkSession, trained_lake: Path, kafka_bootstrap: str, tmp_path: Path
) -> None:
    lake = copy_lake(trained_lake, tmp_path / "lake")
    first_version = read_table(spark, lake, "models").first()["model_version"]  # type: ignore[index]
    ids = sorted(r[0] for r in read_table(spark, lake, "customer_state").select("master_id").limit(40).collect())
    start = dt.datetime(2021, 6, 2, tzinfo=dt.UTC)
    first, second = (
        make_events(ids, start, 60, seed=1),
        make_events(ids, start + dt.timedelta(days=5), 60, seed=2),
    )
    topics = fresh_topics(kafka_bootstrap)
    settings = StreamSettings(
        bootstrap_servers=kafka_bootstrap,
        checkpoint=str(tmp_path / "checkpoint"),
        topic=topics[0],
        changes_topic=topics[1],
        trigger_seconds=1.0,
        max_offsets_per_trigger=50,
    )
    query = start_stream(spark, lake, settings)
    try:
        send(kafka_bootstrap, topics[0], first.messages)
        wait_for(lambda: read_table(spark, lake, "segment_changes").count() > 0, what="first changes")
        # Retrain from the lake while the stream keeps writing the same tables.
        summary = run_train(spark, lake, TrainSettings(k=4, seed=3), history_path=None)
        assert summary.model_version != first_version
        send(kafka_bootstrap, topics[0], second.messages)
        wait_for(
            lambda: (
                (read_table(spark, lake, "stream_clock").first() or {"model_version": None})["model_version"]
                == summary.model_version
            ),
            what="a micro-batch with the new model",
        )
        query.processAllAvailable()
        assert query.exception() is None
    finally:
        query.stop()
        compact_lake(spark, lake)  # what a stopping `flo-seg stream` does
    segments = read_table(spark, lake, "customer_segments")
    assert {r[0] for r in segments.select("model_version").distinct().collect()} == {summary.model_version}
    assert segments.count() == read_table(spark, lake, "customer_state").count()
    changes = read_table(spark, lake, "segment_changes").toPandas()
    # The retrain records whom it moved (batch_id -1), all on the new model; then the stream's batches.
    retrain = changes[changes["batch_id"] == RETRAIN_BATCH_ID]
    assert (retrain["model_version"] == summary.model_version).all()
    streamed = changes[changes["batch_id"] >= 0]
    switched = streamed.loc[streamed["model_version"] == summary.model_version, "batch_id"].min()
    assert (streamed.loc[streamed["batch_id"] > switched, "model_version"] == summary.model_version).all()


def test_a_rescore_while_the_stream_runs_is_what_its_next_change_starts_from(
    spark: SparkSession, trained_lake: Path, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """customer_segments belongs to the compaction; a re-score reaches the stream's state through segment_log."""
    from batch.rescore import run_rescore

    lake = copy_lake(trained_lake, tmp_path / "lake")
    ids = sorted(r[0] for r in read_table(spark, lake, "customer_state").select("master_id").limit(30).collect())
    latest = read_table(spark, lake, "customer_state").agg(F.max("last_order_date")).first()[0]  # type: ignore[index]
    start = dt.datetime.combine(latest, dt.time(), tzinfo=dt.UTC)
    # Orders within the aging days: no batch sweeps everyone (the aging test does), the re-score is the point.
    valid = [m for m in make_events(ids, start, 40, seed=21, minutes=(2, 20)).messages if m[0] != b"bad"]
    topics = fresh_topics(kafka_bootstrap)
    settings = StreamSettings(
        bootstrap_servers=kafka_bootstrap,
        checkpoint=str(tmp_path / "checkpoint"),
        topic=topics[0],
        changes_topic=topics[1],
        trigger_seconds=0.5,
    )
    query = start_stream(spark, lake, settings)
    try:
        send(kafka_bootstrap, topics[0], valid)
        query.processAllAvailable()
        # A year and more later every customer has lapsed: the re-score moves them to other segments.
        run_rescore(spark, lake, as_of=latest + dt.timedelta(days=500))
        rescored = {r["master_id"]: r["segment"] for r in read_table(spark, lake, "customer_segments").collect()}
        before = read_table(spark, lake, "segment_changes").agg(F.max("batch_id")).first()[0]  # type: ignore[index]
        again = [(m[0], m[1].replace(b'"e-21-', b'"again-')) for m in valid]  # same customers, new event ids
        send(kafka_bootstrap, topics[0], again)
        query.processAllAvailable()
        assert query.exception() is None
    finally:
        query.stop()
        compact_lake(spark, lake)
    changes = read_table(spark, lake, "segment_changes").where(F.col("batch_id") > before).toPandas()
    segments = read_table(spark, lake, "customer_segments").toPandas().set_index("master_id")
    moved = [m for m in ids if m in set(changes["master_id"])]
    assert moved, "the orders after the re-score moved nobody"
    first = changes.sort_values("batch_id").groupby("master_id").first()
    for m in moved:
        # The change starts from the re-scored segment, not from what the stream itself last published.
        assert first.loc[m, "previous_segment"] == rescored[m], m
    # Customers whose re-scored segment differs from where their new orders put them all produced a change.
    differ = {m for m in ids if m in segments.index and segments.loc[m, "segment"] != rescored[m]}
    assert differ <= set(moved)
