"""The edges both of `flo-seg stream`'s queries share: JSON rows to a Kafka topic, and a foreachBatch
query whose handler knows the query's id."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

BatchHandler = Callable[[DataFrame, int], None]


def publish_json(
    rows: DataFrame,
    *,
    topic: str,
    bootstrap_servers: str,
    kafka_options: Mapping[str, str],
    key: str = "master_id",
) -> None:
    """Each row as a JSON value keyed by its `key` column (at least once: the rows carry their dedupe key)."""
    payload = rows.select(
        F.col(key).alias("key"),
        F.to_json(F.struct(*[F.col(c) for c in rows.columns])).alias("value"),
    )
    writer = payload.write.format("kafka").option("kafka.bootstrap.servers", bootstrap_servers)
    for key, value in kafka_options.items():
        writer = writer.option(key, value)
    writer.option("topic", topic).save()


def start_foreach_batch(
    stream: DataFrame,
    make_handler: Callable[[Callable[[], str]], BatchHandler],
    *,
    name: str,
    checkpoint: str,
    available_now: bool,
    trigger_seconds: float,
    output_mode: str | None = None,
) -> StreamingQuery:
    """Start a named, checkpointed foreachBatch query with an explicit trigger.

    `make_handler` gets a function that returns the query's id (stable across restarts on the same
    checkpoint: it names the query's idempotent transactions); a batch that asks before `start`
    returned waits for it.
    """
    ready = threading.Event()
    holder: dict[str, str] = {}

    def query_id() -> str:
        ready.wait(timeout=60)
        return holder["id"]

    writer = stream.writeStream.queryName(name).option("checkpointLocation", checkpoint)
    if output_mode is not None:
        writer = writer.outputMode(output_mode)
    writer = writer.foreachBatch(make_handler(query_id))
    writer = (
        writer.trigger(availableNow=True)
        if available_now
        else writer.trigger(processingTime=f"{trigger_seconds} seconds")
    )
    query = writer.start()
    holder["id"] = str(query.id)
    ready.set()
    return query
