"""Drift: PSI and share shift against the training snapshot, the monitor's alarms, and the retrain they trigger."""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import Row, SparkSession
from pyspark.sql import functions as F

from batch.drift import (
    OTHER,
    SMOOTHING,
    DriftReference,
    Thresholds,
    drift_reference,
    feature_bins,
    feature_drift,
    psi,
    share_drift,
)
from batch.lake import read_table, table_exists
from batch.registry import ModelRecord, current_model_record
from flo_seg.settings import LakeSettings, MonitorOptions, choices_of
from schemas.history import CHANNELS
from schemas.tables import MODELS_SCHEMA
from streaming.monitor import MonitorSettings, Retrainer, alarm_rows, monitor_once, record_alarms, window_start
from streaming.produce import ProduceSettings, generate_events, load_profiles


def test_psi_is_the_smoothed_formula_and_zero_for_the_reference_itself() -> None:
    reference = (0.5, 0.5)
    q = np.array([90 + SMOOTHING, 10 + SMOOTHING]) / (100 + 2 * SMOOTHING)
    expected = sum((qi - 0.5) * math.log(qi / 0.5) for qi in q)
    assert psi(reference, np.array([90, 10])) == pytest.approx(expected)
    assert psi(reference, np.array([5000, 5000])) == pytest.approx(0.0)
    # An empty bin costs a finite amount (the pseudo-count), not infinity.
    assert math.isfinite(psi(reference, np.array([100, 0])))


def test_numeric_bins_are_training_deciles_and_categories_keep_an_other_bin() -> None:
    values = pd.Series(np.arange(1.0, 101.0))
    bins = feature_bins(values, "avg_order_value")
    assert bins.edges == pytest.approx(tuple(np.quantile(values, np.linspace(0.1, 0.9, 9))))
    # Deciles of 1..100 are 10.9, 20.8, ..., 90.1: 50 is in the fifth bin.
    assert list(bins.counts(pd.Series([0.5, 50.0, 1000.0, None]))) == [1, 0, 0, 0, 1, 0, 0, 0, 0, 1]
    assert sum(bins.proportions) == pytest.approx(1.0)

    channels = feature_bins(pd.Series(["Offline", "Mobile", "Offline", "Offline"]), "last_order_channel")
    assert channels.categories == ("Mobile", "Offline")
    # (1 + .5) / 5.5, (3 + .5) / 5.5 and the unseen bin .5 / 5.5
    assert channels.proportions == pytest.approx((1.5 / 5.5, 3.5 / 5.5, 0.5 / 5.5))
    assert list(channels.counts(pd.Series(["Offline", "Fax"]))) == [0, 1, 1]  # Fax counts as OTHER
    assert OTHER not in channels.categories


def test_a_feature_that_cannot_be_binned_is_left_out_and_the_shares_still_stored(spark: SparkSession) -> None:
    n = 100
    skewed = [10.0] * 95 + [50.0] * 5  # the deciles collapse to one edge: every basket >= 10 in one bin
    for basket, channel in (([30.0] * n, ["Offline"] * n), (skewed, ["Mobile"] * n), ([None] * n, [None] * n)):
        frame = pd.DataFrame({"avg_order_value": basket, "last_order_channel": channel})
        reference = drift_reference(frame, {"a": 3, "b": 1})
        assert "avg_order_value" not in [b.feature for b in reference.bins]
        assert reference.segment_shares == {"a": 0.75, "b": 0.25}
    # Nothing binnable at all: the reference is still one, with its shares (not "trained before drift").
    record = replace(_record(trained_at=dt.datetime(2026, 1, 1)), drift=reference)
    assert reference.bins == ()
    row = spark.createDataFrame([record.to_row(is_current=True)], MODELS_SCHEMA).first()
    assert row is not None
    assert ModelRecord.from_row(row).drift == reference


def test_features_are_not_judged_on_too_few_customers() -> None:
    reference = drift_reference(
        pd.DataFrame({"avg_order_value": np.arange(1.0, 101.0), "last_order_channel": ["Offline"] * 100}), {"a": 1}
    )
    few = pd.DataFrame({"avg_order_value": [1000.0] * 9, "last_order_channel": ["Mobile"] * 9})
    assert feature_drift(reference, few, Thresholds(min_customers=10)) == []
    measured = feature_drift(reference, pd.concat([few, few]), Thresholds(min_customers=10, psi=0.25))
    assert [(m.name, m.customers, m.is_alarm) for m in measured] == [
        ("avg_order_value", 18, True),
        ("last_order_channel", 18, True),
    ]


def test_share_shift_is_the_absolute_change_of_each_segments_share() -> None:
    reference = DriftReference(bins=(), segment_shares={"a": 0.5, "b": 0.5})
    shifts = share_drift(reference, {"a": 70, "b": 20, "c": 10}, Thresholds(share_shift=0.1))
    assert {m.name: round(m.value, 9) for m in shifts} == {"a": 0.2, "b": 0.3, "c": 0.1}
    assert {m.name for m in shifts if m.is_alarm} == {"a", "b"}  # c moved exactly the threshold
    assert {m.name: (m.reference, m.current) for m in shifts}["c"] == (0.0, 0.1)


def test_the_reference_is_stored_with_the_model_version(spark: SparkSession, trained_lake: Path) -> None:
    record = current_model_record(spark, LakeSettings(root=str(trained_lake)))
    assert record.drift is not None
    assert [b.feature for b in record.drift.bins] == ["avg_order_value", "last_order_channel"]
    assert sum(record.drift.segment_shares.values()) == pytest.approx(1.0)
    assert set(record.drift.segment_shares) == set(record.segment_names.values())
    # Through a models row and back, as the table holds it.
    row = spark.createDataFrame([record.to_row(is_current=True)], MODELS_SCHEMA).first()
    assert row is not None
    assert ModelRecord.from_row(row).drift == record.drift
    older = Row(**(row.asDict() | {"drift_bins": None, "segment_shares": None}))
    assert ModelRecord.from_row(older).drift is None


def test_the_window_starts_at_the_training_when_that_is_later() -> None:
    record = _record(trained_at=dt.datetime(2026, 1, 1, 12, 0))
    hour = dt.timedelta(hours=1)
    assert window_start(record, dt.datetime(2026, 1, 1, 12, 30), hour) == dt.datetime(2026, 1, 1, 12, 0)
    assert window_start(record, dt.datetime(2026, 1, 1, 15, 0), hour) == dt.datetime(2026, 1, 1, 14, 0)


def test_a_retrain_waits_for_the_cooldown_since_the_training_or_the_last_attempt() -> None:
    record = _record(trained_at=dt.datetime(2026, 1, 1, 12, 0))
    calls: list[dt.datetime] = []
    failing = True

    def retrain() -> str:
        calls.append(dt.datetime.now())
        if failing:
            raise RuntimeError("the lake is not reachable")
        return "v2"

    retrainer = Retrainer(retrain=retrain, cooldown=dt.timedelta(minutes=60))
    at = dt.datetime(2026, 1, 1, 12, 0)
    assert retrainer(record, at + dt.timedelta(minutes=59), "drift alarm") is None  # within the cooldown
    assert calls == []
    # After it: an attempt, which fails; the monitor carries on (None) and the next attempt waits again.
    assert retrainer(record, at + dt.timedelta(minutes=61), "drift alarm") is None
    assert len(calls) == 1 and retrainer.failures == 1  # counted: `flo-seg monitor` exits 1
    assert retrainer(record, at + dt.timedelta(minutes=90), "drift alarm") is None
    assert len(calls) == 1
    failing = False
    assert retrainer(record, at + dt.timedelta(minutes=122), "drift alarm") == "v2"
    assert len(calls) == 2


def test_alarm_times_are_stored_as_utc_whatever_the_process_time_zone(
    spark: SparkSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from streaming_support import one_alarm

    check = one_alarm("v1", "feature", "avg_order_value", 1.0, dt.datetime(2026, 1, 1, 12, 0))
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        rows = alarm_rows(spark, check, check.alarms)
        shown = rows.select(F.date_format("detected_at", "HH:mm"), F.date_format("window_start", "HH:mm")).first()
    finally:
        monkeypatch.undo()
        time.tzset()
    assert tuple(shown) == ("12:00", "11:00")  # type: ignore[arg-type]


def test_a_shifted_stream_has_every_order_on_one_channel_and_baskets_scaled() -> None:
    from streaming.produce import customer_profiles

    state = pd.DataFrame(
        {
            "master_id": ["a", "b", "c"],
            "order_channel": ["Android App", "Offline", "Mobile"],
            "last_order_channel": ["Offline", "Desktop", "Mobile"],
            "last_order_date": [dt.date(2021, 5, 1)] * 3,
            "order_num_total_ever_online": [3.0, 1.0, 5.0],
            "order_num_total_ever_offline": [1.0, 4.0, 0.0],
            "customer_value_total_ever_online": [300.0, 80.0, 900.0],
            "customer_value_total_ever_offline": [100.0, 400.0, 0.0],
            "interested_in_categories_12": [["KADIN"], [], ["ERKEK", "COCUK"]],
        }
    )
    profiles = customer_profiles(state)
    start = profiles.default_start_ts

    def events(**shift: object) -> list[dict[str, object]]:
        settings = ProduceSettings(seed=3, new_customer_share=0.0, **shift)  # type: ignore[arg-type]
        produced = generate_events(profiles, settings, 200, rng=np.random.default_rng(3), start_ts=start, seq_start=0)
        return [p.event for p in produced if p.event is not None]

    usual, shifted = events(), events(channel="Offline", basket_factor=3.0)
    assert {e["channel"] for e in usual} > {"Offline"}
    assert {e["channel"] for e in shifted} == {"Offline"}
    # The same customers and draws, baskets three times as large (to the cent).
    assert [e["master_id"] for e in shifted] == [e["master_id"] for e in usual]
    assert [e["amount"] for e in shifted] == pytest.approx([3 * e["amount"] for e in usual], abs=0.011)  # type: ignore[operator]


def test_the_channel_setting_takes_the_contracts_channels() -> None:
    assert choices_of("produce.channel") == CHANNELS


def _record(trained_at: dt.datetime) -> ModelRecord:
    from batch.rfm import RfmEdges

    return ModelRecord(
        version="v1",
        artifact_path="/nowhere",
        algorithm="kmeans",
        k=2,
        silhouette=None,
        k_selection=(),
        features=(),
        caps={},
        edges=RfmEdges(recency=(), frequency=(), monetary=()),
        segment_names={},
        training_rows=0,
        seed=0,
        as_of=trained_at.date(),
        trained_at=trained_at,
    )


# ---------------------------------------------------------------- the monitor over a real stream

CUSTOMERS = 4_000
EVENTS = 300


@pytest.fixture(scope="module")
def drift_lake(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lake of 4,000 generated customers: 300 orders then touch under 8% of them, as in an hour of a
    real stream, so the segment shares move less than the threshold when the orders are as usual."""
    from streaming_support import train_small_lake

    return train_small_lake(tmp_path_factory.mktemp("drift"), spark, customers=CUSTOMERS, seed=11)


def _stream(spark: SparkSession, lake: LakeSettings, folder: Path, seed: int, **shift: object) -> list[str]:
    """EVENTS valid orders drawn from the lake's customers (shifted as told) through the real stream query
    (on a checkpoint of its own); the customers they touched."""
    from test_stream_files import run_stream, write_records

    profiles = load_profiles(spark, lake)
    settings = ProduceSettings(seed=seed, **shift)  # type: ignore[arg-type]
    start = profiles.default_start_ts
    rng = np.random.default_rng(seed)
    produced = generate_events(profiles, settings, EVENTS, rng=rng, start_ts=start, seq_start=0)
    write_records(spark, folder / f"records-{seed}", [(p.key, p.value) for p in produced], files=1)
    run_stream(spark, lake, folder / f"records-{seed}", folder / f"checkpoint-{seed}")
    return [str(p.event["master_id"]) for p in produced if p.event is not None]


def _settings(topic: str | None = None, bootstrap: str | None = None) -> MonitorSettings:
    return MonitorSettings(options=MonitorOptions(), bootstrap_servers=bootstrap, topic=topic)


@pytest.mark.slow
def test_offline_orders_four_times_the_usual_basket_raise_alarms_and_a_retrain_then_usual_orders_raise_none(
    spark: SparkSession, drift_lake: Path, tmp_path: Path, kafka_bootstrap: str
) -> None:
    """Shifted orders raise alarms, which retrain from the lake; the stream's next orders, as usual, are scored
    with the new model and raise no alarm against its snapshot (one stream run serves both)."""
    from kafka import KafkaConsumer
    from streaming_support import fresh_topics

    from batch.train import run_train
    from flo_seg.settings import TrainSettings

    shutil.copytree(drift_lake, tmp_path / "lake")
    lake = LakeSettings(root=str(tmp_path / "lake"))
    before = current_model_record(spark, lake)
    _stream(spark, lake, tmp_path, 2, channel="Offline", basket_factor=4.0)

    topic = fresh_topics(kafka_bootstrap)[0]
    settings = _settings(topic, kafka_bootstrap)

    def retrain() -> str:
        return run_train(spark, lake, TrainSettings(k=3, seed=1), history_path=None).model_version

    # The fixture's model is minutes old: with the default cooldown the alarm does not retrain.
    cooldown = dt.timedelta(minutes=MonitorOptions().retrain_cooldown_minutes)
    check, retrained = monitor_once(spark, lake, settings, Retrainer(retrain=retrain, cooldown=cooldown))
    assert retrained is None
    assert {(m.kind, m.name) for m in check.alarms} >= {
        ("feature", "avg_order_value"),
        ("feature", "last_order_channel"),
    }
    alarms = read_table(spark, lake, "drift_alarms").collect()
    assert {(r["name"], r["statistic"], r["model_version"]) for r in alarms} == {
        (m.name, m.statistic, before.version) for m in check.alarms
    }
    assert all(r["value"] > r["threshold"] for r in alarms)
    assert {r["threshold"] for r in alarms if r["statistic"] == "psi"} == {0.25}
    consumer = KafkaConsumer(
        topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=5000, group_id=None
    )
    published = [(m.key.decode(), json.loads(m.value)) for m in consumer]
    consumer.close()
    assert sorted(p["alarm_id"] for _, p in published) == sorted(r["alarm_id"] for r in alarms)
    assert {key for key, _ in published} == {before.version}

    # No cooldown: the alarm retrains from the lake, and the new version is current. The alarms are
    # recorded within the window already: not again.
    immediate = Retrainer(retrain=retrain, cooldown=dt.timedelta(0))
    check, retrained = monitor_once(spark, lake, settings, immediate)
    assert read_table(spark, lake, "drift_alarms").count() == len(alarms)
    assert check.alarms and retrained is not None and retrained != before.version
    after = current_model_record(spark, lake)
    assert after.version == retrained and after.drift is not None
    # Its snapshot holds the shifted customers: the window starts at its training, so nothing is judged yet.
    check, retrained = monitor_once(spark, lake, settings, immediate)
    assert check.recent_customers == 0 and not [m for m in check.measurements if m.kind == "feature"]
    assert retrained is None

    # The stream's next orders, as usual, are scored with the new model.
    touched = _stream(spark, lake, tmp_path, 3)
    rows = read_table(spark, lake, "customer_segments").where(F.col("master_id").isin(touched)).collect()
    assert rows and {r["model_version"] for r in rows} == {after.version}

    # And they raise no alarm: each feature and segment is measured against the new model's snapshot.
    never = Retrainer(retrain=lambda: pytest.fail("no alarm, no retrain"), cooldown=dt.timedelta(0))
    check, retrained = monitor_once(spark, lake, settings, never)
    measured = {m.name: m for m in check.measurements}
    assert check.recent_customers == len(set(touched)) >= MonitorOptions().min_customers
    assert measured["avg_order_value"].value < 0.1, measured
    assert measured["last_order_channel"].value < 0.1, measured
    assert set(measured) - {"avg_order_value", "last_order_channel"} == set(after.drift.segment_shares)
    assert check.alarms == () and retrained is None
    assert read_table(spark, lake, "drift_alarms").count() == len(alarms)


def test_flo_seg_monitor_once_prints_each_measurement(
    spark: SparkSession, trained_lake: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flo_seg import cli

    shutil.copytree(trained_lake, tmp_path / "lake")
    lake = str(tmp_path / "lake")
    assert cli.main(["monitor", "--once", "--lake", lake, "--alarms-topic", ""]) == 0
    out = capsys.readouterr().out
    record = current_model_record(spark, LakeSettings(root=lake))
    assert f"model {record.version}: 0 customers updated since" in out
    assert "not measured: features: 0 customers updated" in out
    # Nothing streamed: every segment holds its training share.
    for name in set(record.segment_names.values()):
        assert re.search(rf"ok    segment {name}: share_shift 0\.000 \(threshold 0\.1, \d+ customers\)", out), out
    assert "0 alarm(s)" in out and not table_exists(spark, LakeSettings(root=lake), "drift_alarms")


def test_flo_seg_monitor_refuses_a_threshold_that_cannot_be(capsys: pytest.CaptureFixture[str]) -> None:
    from flo_seg import cli

    with pytest.raises(SystemExit) as stopped:
        cli.main(["monitor", "--psi-threshold", "-1"])
    assert stopped.value.code == 2
    assert "argument --psi-threshold: Input should be greater than 0" in capsys.readouterr().err


@pytest.mark.integration
def test_an_alarm_retrains_and_the_running_stream_scores_with_the_new_model(
    spark: SparkSession, drift_lake: Path, tmp_path: Path, kafka_bootstrap: str
) -> None:
    """The whole loop with Kafka: a running stream, shifted orders, an alarm, the retrain, the hot reload."""
    from streaming_support import fresh_topics, send
    from test_streaming import wait_for

    from batch.compact import compact_lake
    from batch.train import run_train
    from flo_seg.settings import TrainSettings
    from streaming.job import StreamSettings, start_stream

    shutil.copytree(drift_lake, tmp_path / "lake")
    lake = LakeSettings(root=str(tmp_path / "lake"))
    before = current_model_record(spark, lake)
    profiles = load_profiles(spark, lake)

    def orders(seed: int, **shift: object) -> list[tuple[bytes, bytes]]:
        settings = ProduceSettings(seed=seed, new_customer_share=0.0, **shift)  # type: ignore[arg-type]
        rng = np.random.default_rng(seed)
        start = profiles.default_start_ts
        return [
            (p.key, p.value) for p in generate_events(profiles, settings, EVENTS, rng=rng, start_ts=start, seq_start=0)
        ]

    topics = fresh_topics(kafka_bootstrap)
    stream_settings = StreamSettings(
        bootstrap_servers=kafka_bootstrap,
        checkpoint=str(tmp_path / "checkpoint"),
        topic=topics[0],
        changes_topic=None,
        trigger_seconds=1.0,
    )
    query = start_stream(spark, lake, stream_settings)
    try:
        send(kafka_bootstrap, topics[0], orders(4, channel="Offline", basket_factor=4.0))
        wait_for(lambda: read_table(spark, lake, "state_log").count() >= 200, what="the shifted orders in state_log")
        query.processAllAvailable()

        monitor = MonitorSettings(options=MonitorOptions())
        retrainer = Retrainer(
            retrain=lambda: run_train(spark, lake, TrainSettings(k=3, seed=1), history_path=None).model_version,
            cooldown=dt.timedelta(0),
        )
        check, retrained = monitor_once(spark, lake, monitor, retrainer)
        assert {m.name for m in check.alarms} >= {"avg_order_value", "last_order_channel"}
        assert retrained is not None and current_model_record(spark, lake).version == retrained != before.version

        later = orders(5)
        send(kafka_bootstrap, topics[0], later)
        wait_for(
            lambda: (
                (read_table(spark, lake, "stream_clock").first() or {"model_version": None})["model_version"]
                == retrained
            ),
            what="a micro-batch with the new model",
        )
        query.processAllAvailable()
        assert query.exception() is None
    finally:
        query.stop()
        compact_lake(spark, lake)
    # The retrain scored everyone (through segment_log, source train); the stream's own rows for the later
    # orders' customers, each customer's newest, are the new model's too: the running stream reloaded it.
    touched = sorted({key.decode() for key, _ in later})
    streamed = read_table(spark, lake, "segment_log").where(
        (F.col("source") == "stream") & F.col("master_id").isin(touched)
    )
    newest = streamed.groupBy("master_id").agg(F.max_by("model_version", "state_seq").alias("model_version")).collect()
    assert len(newest) == len(touched) and {r["model_version"] for r in newest} == {retrained}


def test_an_alarm_that_cannot_be_published_is_recorded_and_the_monitor_carries_on(
    spark: SparkSession, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from streaming_support import one_alarm

    lake = LakeSettings(root=str(tmp_path / "lake"))
    check = one_alarm("v1", "segment", "champions", 0.3, dt.datetime(2026, 1, 1, 12, 0))
    nowhere = MonitorSettings(
        bootstrap_servers="127.0.0.1:1", topic="flo.drift-alarms", kafka_options={"kafka.max.block.ms": "2000"}
    )
    assert record_alarms(spark, lake, nowhere, check) == 1
    assert "could not publish 1 drift alarm(s) to flo.drift-alarms" in caplog.text
    assert [r["name"] for r in read_table(spark, lake, "drift_alarms").collect()] == ["champions"]
    # The same alarm again within the window: not recorded twice; after the window: recorded again.
    assert record_alarms(spark, lake, nowhere, replace(check, detected_at=dt.datetime(2026, 1, 1, 12, 30))) == 0
    assert record_alarms(spark, lake, nowhere, replace(check, detected_at=dt.datetime(2026, 1, 1, 13, 30))) == 1
    assert read_table(spark, lake, "drift_alarms").count() == 2


def test_a_model_without_a_snapshot_is_retrained_to_get_one(
    spark: SparkSession, trained_lake: Path, tmp_path: Path
) -> None:
    from batch.registry import publish_model

    shutil.copytree(trained_lake, tmp_path / "lake")
    lake = LakeSettings(root=str(tmp_path / "lake"))
    publish_model(spark, lake, replace(current_model_record(spark, lake), drift=None))  # as trained before drift checks
    calls: list[int] = []

    def retrain() -> str:
        calls.append(1)
        return "v-new"

    check, retrained = monitor_once(spark, lake, _settings(), Retrainer(retrain=retrain, cooldown=dt.timedelta(0)))
    assert not check.has_reference and check.measurements == ()
    assert "no training snapshot" in check.skipped[0]
    assert (retrained, calls) == ("v-new", [1])
