"""Hostile events against the real broker: none stops the stream, corrupts a customer or creates a fake one."""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from streaming_support import send

from batch.compact import compact_lake
from batch.lake import read_table
from devstack.stack import TopicSpec, ensure_topics
from flo_seg.settings import LakeSettings
from streaming.job import StreamSettings, start_stream

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture(scope="module")
def lake(trained_lake: Path, tmp_path_factory: pytest.TempPathFactory) -> LakeSettings:
    """A copy of the trained lake for this module's own (the tests write to it)."""
    root = tmp_path_factory.mktemp("hostile") / "lake"
    shutil.copytree(trained_lake, root)
    return LakeSettings(root=str(root))


def stream_topic(
    spark: SparkSession, lake: LakeSettings, bootstrap: str, checkpoint: Path, topic: str
) -> Exception | None:
    """Run the stream over what the topic holds (available-now) and return how it ended."""
    settings = StreamSettings(
        bootstrap_servers=bootstrap, checkpoint=str(checkpoint), topic=topic, changes_topic=None, available_now=True
    )
    query = start_stream(spark, lake, settings)
    try:
        query.awaitTermination(timeout=300)
    except Exception as exc:  # awaitTermination re-raises the query's failure
        return exc
    finally:
        query.stop()
        compact_lake(spark, lake)  # what a stopping `flo-seg stream` does
    return query.exception()


def batch_lines(caplog: pytest.LogCaptureFixture, timeout_s: float = 20.0) -> list[str]:
    """The stream's batch log lines; the listener reports progress asynchronously, so wait for one."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("batch ")]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.5)


def test_hostile_events_are_quarantined_and_the_stream_goes_on(
    spark: SparkSession, lake: LakeSettings, kafka_bootstrap: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state_before = read_table(spark, lake, "customer_state")
    ids = sorted(r[0] for r in state_before.select("master_id").limit(3).collect())
    target, other, third = ids
    before = {r["master_id"]: r.asDict() for r in state_before.collect()}
    latest = state_before.agg(F.max("last_order_date")).first()[0]  # type: ignore[index]
    ts = dt.datetime.combine(latest, dt.time(12), tzinfo=dt.timezone(dt.timedelta(hours=3))).isoformat()
    good: dict[str, Any] = {
        "event_id": "good-1",
        "master_id": target,
        "order_ts": ts,
        "channel": "Offline",
        "amount": 100.25,
        "categories": ["KADIN"],
        "schema_version": 1,
    }

    def ev(**changes: Any) -> bytes:
        return json.dumps({**good, **changes}).encode()

    hostile: list[tuple[str, bytes, str]] = [
        (target, ev(event_id="h-1", amount=1e308), "amount_out_of_range"),
        (target, ev(event_id="h-2").replace(b"100.25", b"NaN"), "malformed_json"),  # not JSON
        (target, ev(event_id="h-3", amount="Infinity"), "amount_out_of_range"),
        (target, ev(event_id="h-4", order_ts="2021-06-01T10:15:00"), "bad_order_ts"),
        (target, ev(event_id="h-5", order_ts="2021"), "bad_order_ts"),
        (" " + target, ev(event_id="h-6", master_id=" " + target), "bad_master_id"),
        (target, ev(event_id="h-7", categories=["KADIN", None]), "unknown_category"),
        (target, b'{"x":' + b"[" * 3000 + b"]" * 3000 + b"}", "malformed_json"),
        (third, ev(event_id="h-9"), "key_mismatch"),
    ]
    messages = [(target.encode(), ev())]
    messages += [(key.encode(), value) for key, value, _ in hostile]
    messages.append((target.encode(), ev()))  # a producer retry: counted once
    messages.append((target.encode(), ev(amount=999.0)))  # same event_id, other content: the first wins
    messages.append((other.encode(), ev(event_id="good-2", master_id=other, channel="Mobile", amount=50.0)))

    topic = f"test.hostile.{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_bootstrap, [TopicSpec(name=topic, partitions=1)])
    send(kafka_bootstrap, topic, messages)
    with caplog.at_level(logging.INFO, logger="streaming.job"):
        assert stream_topic(spark, lake, kafka_bootstrap, tmp_path / "checkpoint", topic) is None
        lines = batch_lines(caplog)

    quarantined = read_table(spark, lake, "quarantine").where(F.col("kafka_topic") == topic).collect()
    assert sorted((r["kafka_offset"], r["reason"]) for r in quarantined) == [
        (offset, reason) for offset, (_, _, reason) in enumerate(hostile, start=1)
    ]
    assert all(r["detail"] for r in quarantined)

    after = {r["master_id"]: r.asDict() for r in read_table(spark, lake, "customer_state").collect()}
    assert set(after) == set(before)  # no fake customer from a padded id
    t0, t1 = before[target], after[target]
    assert t1["order_num_total_ever_offline"] == t0["order_num_total_ever_offline"] + 1
    assert t1["customer_value_total_ever_offline"] == pytest.approx(t0["customer_value_total_ever_offline"] + 100.25)
    assert t1["order_num_total_ever_online"] == t0["order_num_total_ever_online"]
    assert after[other]["order_num_total_ever_online"] == before[other]["order_num_total_ever_online"] + 1
    assert after[third] == before[third]
    segments = read_table(spark, lake, "customer_segments").where(F.col("master_id") == target).first()
    assert segments is not None and segments["monetary"] is not None and segments["m_score"] is not None

    assert any("duplicates dropped 1, conflicting duplicates dropped 1" in line for line in lines), lines


def test_a_batch_that_fails_names_its_kafka_offsets(
    spark: SparkSession, lake: LakeSettings, kafka_bootstrap: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = LakeSettings(root=str(tmp_path / "lake"))
    shutil.copytree(lake.root, broken.root)
    # The current model's artifact is gone: the first batch cannot score.
    spark.sql(f"UPDATE delta.`{broken.table('models')}` SET artifact_path = '{tmp_path / 'gone'}'")
    topic = f"test.failing.{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_bootstrap, [TopicSpec(name=topic, partitions=1)])
    send(kafka_bootstrap, topic, [(b"x", b"not json")] * 3)
    with caplog.at_level(logging.ERROR, logger="streaming.job"):
        error = stream_topic(spark, broken, kafka_bootstrap, tmp_path / "checkpoint", topic)
    assert error is not None and f"batch 0 ({topic}[0] offsets 0..2) failed" in str(error)
    assert any(f"batch 0 ({topic}[0] offsets 0..2) failed" in r.getMessage() for r in caplog.records)
