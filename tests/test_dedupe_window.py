"""The bounded de-duplication: re-sends within the window are dropped, its state expires after it (no broker)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from streaming.events import drop_duplicate_events, parse_order_events
from streaming.job import KAFKA_RECORD_SCHEMA, STREAM_SESSION_CONF


def record(event_id: str, offset: int, amount: float = 10.0) -> tuple[bytes, bytes, str, int, int]:
    body = {
        "event_id": event_id,
        "master_id": "m1",
        "order_ts": "2021-06-01T10:15:00+03:00",
        "channel": "Mobile",
        "amount": amount,
        "categories": [],
        "schema_version": 1,
    }
    return b"m1", json.dumps(body).encode(), "orders", 0, offset


@pytest.fixture
def stream_conf(spark: SparkSession) -> Iterator[None]:
    """The session settings `flo-seg stream` starts its query with (no batch without data among them)."""
    before = {key: spark.conf.get(key, None) for key in STREAM_SESSION_CONF}
    for key, value in STREAM_SESSION_CONF.items():
        spark.conf.set(key, value)
    yield
    for key, previous in before.items():
        if previous is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, previous)


@pytest.mark.usefixtures("stream_conf")
def test_window_drops_re_sends_and_forgets_them_after_it(spark: SparkSession, tmp_path: Path) -> None:
    """Within the window a re-send (or a conflicting reuse) is dropped; well after it the id is counted again.

    Spark expires an id at the end of the first batch whose watermark (set by the batches before it) is past
    the id's expiry. The stream runs no batch without data, so that is the second batch after the window."""
    source, checkpoint = tmp_path / "kafka", tmp_path / "checkpoint"

    def run(name: str, records: list[tuple[bytes, bytes, str, int, int]]) -> tuple[list[str], int]:
        """Event ids the run let through (watermark-only batches add none), and the ids held after it."""
        counted: list[str] = []
        spark.createDataFrame(records, KAFKA_RECORD_SCHEMA).coalesce(1).write.parquet(str(source / name))
        stream = spark.readStream.schema(KAFKA_RECORD_SCHEMA).option("maxFilesPerTrigger", 1).parquet(str(source / "*"))
        query = (
            drop_duplicate_events(parse_order_events(stream), "2 seconds")
            .writeStream.option("checkpointLocation", str(checkpoint))
            .foreachBatch(lambda df, _batch: counted.extend(r.event_id for r in df.collect()))
            .trigger(availableNow=True)
            .start()
        )
        query.awaitTermination()
        assert query.exception() is None
        progress = query.lastProgress
        assert progress is not None
        operators = progress["stateOperators"]
        assert [op["operatorName"] for op in operators] == ["dedupeWithinWatermark"] * 2
        return sorted(counted), operators[0]["numRowsTotal"]

    # A re-send and a conflicting reuse of e1 in the first batch, a re-send moments later: one e1 counted.
    assert run("b0", [record("e1", 0), record("e1", 1), record("e1", 2, amount=99.0), record("e2", 3)])[0] == [
        "e1",
        "e2",
    ]
    assert run("b1", [record("e1", 4)])[0] == []
    time.sleep(5)  # more than twice the 2 s window of stream time
    assert run("b2", [record("e3", 5)])[0] == ["e3"]  # moves the watermark past e1's and e2's expiry
    assert run("b3", [record("e4", 6)])[0] == ["e4"]  # the next batch expires them at its end
    counted, held = run("b4", [record("e1", 7)])
    assert counted == ["e1"]
    assert 2 <= held <= 3  # e1 (again), e4 and perhaps e3 (its expiry is this close); e2 and the first e1 are gone
