"""The bounded de-duplication in the state step: copies within the window are dropped, ids expire after it (no broker)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from streaming.customer_state import DUPLICATE, STATE, apply_customer_state, event_inputs, state_schema
from streaming.events import parse_order_events
from streaming.job import KAFKA_RECORD_SCHEMA, STREAM_SESSION_CONF


def record(
    event_id: str, offset: int, amount: float = 10.0, master_id: str = "m1"
) -> tuple[bytes, bytes, str, int, int]:
    body = {
        "event_id": event_id,
        "master_id": master_id,
        "order_ts": "2021-06-01T10:15:00+03:00",
        "channel": "Mobile",
        "amount": amount,
        "categories": [],
        "schema_version": 1,
    }
    return master_id.encode(), json.dumps(body).encode(), "orders", 0, offset


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
def test_window_drops_re_sends_and_conflicts_and_forgets_ids_after_it(spark: SparkSession, tmp_path: Path) -> None:
    """Within the window a re-send or a conflicting reuse of a customer's event_id is dropped and counted, the
    first copy by Kafka offset wins; once the window has passed, the customer's next order forgets the old ids."""
    source, checkpoint = tmp_path / "kafka", tmp_path / "checkpoint"
    boot = spark.createDataFrame([], state_schema(spark))
    window_s = 5

    def run(*batches: list[tuple[bytes, bytes, str, int, int]]) -> list[dict[str, tuple[object, ...]]]:
        """One micro-batch per list of records; per batch and customer (kind, orders applied, re-sends,
        conflicts, online cents)."""
        seen: dict[int, dict[str, tuple[object, ...]]] = {}
        for records in batches:
            name = f"b{len(list(source.glob('b*')))}"
            spark.createDataFrame(records, KAFKA_RECORD_SCHEMA).coalesce(1).write.parquet(str(source / name))
        stream = spark.readStream.schema(KAFKA_RECORD_SCHEMA).option("maxFilesPerTrigger", 1).parquet(str(source / "*"))
        out = apply_customer_state(event_inputs(parse_order_events(stream)), boot, f"{window_s} seconds").select(
            "master_id", "kind", "batch_orders", "resent", "conflicting", "online_cents"
        )
        query = (
            out.writeStream.outputMode("update")
            .option("checkpointLocation", str(checkpoint))
            .foreachBatch(lambda df, batch: seen.update({batch: {r[0]: tuple(r[1:]) for r in df.collect()}}))
            .trigger(availableNow=True)
            .start()
        )
        query.awaitTermination()
        assert query.exception() is None
        return [seen[b] for b in sorted(seen)]

    def held() -> dict[str, list[str]]:
        """The event ids the state store holds per customer after the last run."""
        store = (
            spark.read.format("statestore").load(str(checkpoint)).select("key.value", "value.groupState.recent_events")
        )
        return {key: sorted(e.event_id for e in events or []) for key, events in store.collect()}

    # A re-send and a conflicting reuse of e1 in the batch of its first copy: e1 counted once, at 10.00.
    # The next batch (about a second later) brings another re-send: no order applied, the drop counted.
    first, second = run(
        [record("e1", 0), record("e1", 1), record("e1", 2, amount=99.0), record("e2", 3)], [record("e1", 4)]
    )
    ran = time.monotonic()
    assert first == {"m1": (STATE, 2, 1, 1, 2_000)}
    assert second == {"m1": (DUPLICATE, None, 1, 0, None)}
    assert held() == {"m1": ["e1", "e2"]}
    time.sleep(max(0.0, ran + window_s + 0.5 - time.monotonic()))
    # The window has passed: e1 counts again, e2 is forgotten. Another customer's reuse of an id is its own.
    (after,) = run([record("e1", 5), record("m2-e1", 6, master_id="m2"), record("e1", 7, master_id="m2")])
    assert after == {"m1": (STATE, 1, 0, 0, 3_000), "m2": (STATE, 2, 0, 0, 2_000)}
    assert held() == {"m1": ["e1"], "m2": ["e1", "m2-e1"]}
