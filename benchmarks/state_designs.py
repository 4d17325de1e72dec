"""Spike: where the stream keeps per-customer state (issue 10), measured on the same events.

Candidates, each fed the same pre-written parquet event files (a file stream source, one file per
micro-batch) over a bootstrap of N customers, with RocksDB state and changelog checkpointing:

- `builtin`: union(bootstrap as the first micro-batch, events) → groupBy(master_id).agg(...) in update
  mode (the JVM's own streaming aggregation);
- `tws`: the Python Row-based transformWithState (Spark 4.1+) with the bootstrap as initialState and one
  ValueState per customer;
- `jvm`: a Java flatMapGroupsWithState (`jvm/spikes/TotalsState.java`, compiled here against pyspark's
  own jars) with the bootstrap as initialState, called through py4j;
- `product`: the winner as built, the product's state step (`jvm/state`, `make setup` builds it) with
  the whole customer state (17 fields: dates, channels, categories, segment, sequence numbers).

The sink materialises the changed customers (a count in foreachBatch), so a batch's time is the cost of
reading its events and updating the state of its customers. Kafka parsing and scoring come on top and
are the same for both; `benchmarks/streaming.py` measures the whole path.

    python -m benchmarks.state_designs --customers 1000000 --batch-events 100000 --batches 5

`--front` measures the part before the state instead (needs the broker, `make stack-up`): a topic filled
with valid events, read by Kafka → parse and check (streaming/events.py) → no de-duplication /
the product's de-duplication (streaming/events.py) / one dropDuplicatesWithinWatermark over the broker
timestamp.

The Python worker of `tws` must be the project's interpreter (PYSPARK_PYTHON=.venv/bin/python), and the
Python transformWithState needs `protobuf` (pip install protobuf), which the product does not depend on.
`--parse-profile` times `parse_order_events` in batch over such a topic, cached in memory.
Results and the decision: docs/benchmarks.md, "Where the stream keeps its state".
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming.stateful_processor import StatefulProcessor, StatefulProcessorHandle
from pyspark.sql.types import DateType, DoubleType, LongType, StructField, StructType

from flo_seg.settings import default_spark_settings
from flo_seg.spark import build_session

EVENT_SCHEMA = "master_id string, amount double, is_online boolean, order_date date"
STATE_SCHEMA = (
    "master_id string, online_orders long, offline_orders long, online_value double, offline_value double, "
    "first_order_date date, last_order_date date"
)


def write_inputs(spark: SparkSession, work: Path, customers: int, batch_events: int, batches: int) -> None:
    """The bootstrap (one row per customer) and `batches` event files of uniformly random customers."""
    ids = F.format_string("c%07d", F.col("id"))
    spark.range(customers).select(
        ids.alias("master_id"),
        (F.col("id") % 5 + 1).alias("online_orders"),
        (F.col("id") % 3).alias("offline_orders"),
        (F.col("id") % 997 * 1.5).alias("online_value"),
        (F.col("id") % 311 * 2.5).alias("offline_value"),
        F.lit("2020-01-01").cast("date").alias("first_order_date"),
        F.lit("2021-05-01").cast("date").alias("last_order_date"),
    ).coalesce(1).write.parquet(str(work / "bootstrap"))
    for b in range(batches):
        spark.range(batch_events, numPartitions=2).select(
            F.format_string("c%07d", (F.rand(seed=b) * customers).cast("long")).alias("master_id"),
            (F.rand(seed=100 + b) * 500 + 10).alias("amount"),
            (F.rand(seed=200 + b) < 0.6).alias("is_online"),
            F.lit("2021-06-01").cast("date").alias("order_date"),
        ).coalesce(1).write.mode("append").parquet(str(work / "events" / f"b{b:04d}"))


def _file_stream(spark: SparkSession, path: Path, schema: str) -> DataFrame:
    return spark.readStream.schema(schema).option("maxFilesPerTrigger", 1).parquet(str(path))


def builtin_query(spark: SparkSession, work: Path) -> DataFrame:
    """Bootstrap rows and event rows as one stream of per-customer increments, summed by the JVM."""
    online = F.col("is_online")
    events = _file_stream(spark, work / "events" / "*", EVENT_SCHEMA).select(
        "master_id",
        F.when(online, 1).otherwise(0).cast("long").alias("online_orders"),
        F.when(online, 0).otherwise(1).cast("long").alias("offline_orders"),
        F.when(online, F.col("amount")).otherwise(0.0).alias("online_value"),
        F.when(online, 0.0).otherwise(F.col("amount")).alias("offline_value"),
        F.col("order_date").alias("first_order_date"),
        F.col("order_date").alias("last_order_date"),
    )
    boot = _file_stream(spark, work / "bootstrap_stream", STATE_SCHEMA)
    return (
        boot.unionByName(events)
        .groupBy("master_id")
        .agg(
            F.sum("online_orders").alias("online_orders"),
            F.sum("offline_orders").alias("offline_orders"),
            F.sum("online_value").alias("online_value"),
            F.sum("offline_value").alias("offline_value"),
            F.min("first_order_date").alias("first_order_date"),
            F.max("last_order_date").alias("last_order_date"),
        )
    )


class TotalsProcessor(StatefulProcessor):
    """One ValueState row per customer: the running totals; emits the new totals of every touched customer."""

    def init(self, handle: StatefulProcessorHandle) -> None:
        # An explicit StructType: DDL strings need a SparkContext, which a Python worker has not.
        totals = StructType(
            [StructField(n, LongType()) for n in ("online_orders", "offline_orders")]
            + [StructField(n, DoubleType()) for n in ("online_value", "offline_value")]
            + [StructField(n, DateType()) for n in ("first_order_date", "last_order_date")]
        )
        self.state = handle.getValueState("totals", totals)

    def handleInputRows(self, key: Any, rows: Iterator[Any], timerValues: Any) -> Iterator[Any]:
        current = self.state.get()
        on, off, on_v, off_v, first, last = current if current is not None else (0, 0, 0.0, 0.0, None, None)
        for r in rows:
            if r.is_online:
                on, on_v = on + 1, on_v + r.amount
            else:
                off, off_v = off + 1, off_v + r.amount
            first = r.order_date if first is None else min(first, r.order_date)
            last = r.order_date if last is None else max(last, r.order_date)
        self.state.update((on, off, on_v, off_v, first, last))
        yield Row(
            master_id=key[0],
            online_orders=on,
            offline_orders=off,
            online_value=on_v,
            offline_value=off_v,
            first_order_date=first,
            last_order_date=last,
        )

    def handleInitialState(self, key: Any, initialState: Any, timerValues: Any) -> None:
        self.state.update(tuple(initialState)[1:])

    def close(self) -> None:
        pass


def tws_query(spark: SparkSession, work: Path) -> DataFrame:
    """The Python Row-API transformWithState, bootstrapped through initialState."""
    boot = spark.read.schema(STATE_SCHEMA).parquet(str(work / "bootstrap"))
    events = _file_stream(spark, work / "events" / "*", EVENT_SCHEMA)
    return events.groupBy("master_id").transformWithState(
        statefulProcessor=TotalsProcessor(),
        outputStructType=STATE_SCHEMA,
        outputMode="Update",
        timeMode="None",
        initialState=boot.groupBy("master_id"),
    )


def jvm_query(spark: SparkSession, work: Path) -> DataFrame:
    """A JVM flatMapGroupsWithState (jar given by --jvm-jar), bootstrapped through initialState."""
    boot = spark.read.schema(STATE_SCHEMA).parquet(str(work / "bootstrap"))
    events = _file_stream(spark, work / "events" / "*", EVENT_SCHEMA)
    jdf = spark._jvm.flo.spike.TotalsState.apply(events._jdf, boot._jdf)  # type: ignore[union-attr]
    return DataFrame(jdf, spark)


def fill_topic(spark: SparkSession, bootstrap: str, topic: str, events: int, customers: int) -> None:
    """`events` valid order events of the contract, keyed by master_id, written to Kafka by a batch job."""
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        if topic in admin.list_topics():
            admin.delete_topics([topic])
            time.sleep(2)
        admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    finally:
        admin.close()
    master = F.format_string("c%07d", (F.rand(seed=7) * customers).cast("long"))
    event = spark.range(events, numPartitions=2).select(
        master.alias("master_id"),
        F.format_string("e%010d", F.col("id")).alias("event_id"),
        F.lit("2021-06-01T10:15:00+03:00").alias("order_ts"),
        F.when(F.rand(seed=8) < 0.6, F.lit("Mobile")).otherwise(F.lit("Offline")).alias("channel"),
        F.round(F.rand(seed=9) * 500 + 10, 2).alias("amount"),
        F.array(F.lit("KADIN")).alias("categories"),
        F.lit(1).alias("schema_version"),
    )
    event.select(F.col("master_id").alias("key"), F.to_json(F.struct(*event.columns)).alias("value")).write.format(
        "kafka"
    ).option("kafka.bootstrap.servers", bootstrap).option("topic", topic).save()


def front_query(spark: SparkSession, bootstrap: str, topic: str, dedupe: str, per_trigger: int) -> DataFrame:
    """Kafka → parse and check (streaming/events.py) → de-duplicate as `dedupe` says."""
    from benchmarks.merge_design import dedupe_key, two_step_dedupe
    from flo_seg.settings import DEFAULT_DEDUPE_WINDOW
    from streaming.events import CONTENT_KEY, parse_order_events

    kafka = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", bootstrap)
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .option("maxOffsetsPerTrigger", per_trigger)
        .load()
    )
    # parse_order_events keeps only the Kafka coordinates; the spike carries the broker time in the topic.
    tagged = kafka.withColumn("topic", F.concat_ws("|", "topic", F.col("timestamp").cast("double")))
    parsed = parse_order_events(tagged).withColumn(
        "broker_ts", F.split("kafka_topic", "[|]")[1].cast("double").cast("timestamp")
    )
    if dedupe == "product":
        # The product's de-duplication when this spike ran; it now happens inside the state step.
        return two_step_dedupe(parsed, DEFAULT_DEDUPE_WINDOW)
    if dedupe == "within-watermark":
        return (
            parsed.withColumn("dedupe_key", dedupe_key())
            .withWatermark("broker_ts", "1 hour")
            .dropDuplicatesWithinWatermark(["dedupe_key", CONTENT_KEY])
        )
    return parsed


def run_parse_profile(spark: SparkSession, args: argparse.Namespace) -> None:
    """Seconds per pass (best of 3, `noop` writes) of the parse and its JSON steps over the topic, cached."""
    from streaming.events import parse_order_events

    fill_topic(spark, args.bootstrap_servers, args.topic, args.front_events, args.customers)
    kafka = (
        spark.read.format("kafka")
        .option("kafka.bootstrap.servers", args.bootstrap_servers)
        .option("subscribe", args.topic)
        .load()
        .select("key", "value", "topic", "partition", "offset")
        .repartition(2)
        .cache()
    )
    records = kafka.count()
    raw = F.col("value").cast("string")
    steps = {
        "from_json alone": kafka.select(F.from_json(raw, "event_id string, amount double").alias("e")),
        "try_parse_json alone": kafka.select(F.expr("try_parse_json(CAST(value AS STRING))").alias("v")),
        "json_array_length alone": kafka.select(F.json_array_length(F.concat(F.lit("["), raw, F.lit("]")))),
        "parse_order_events": parse_order_events(kafka),
    }
    print(f"| step ({records:,} records, cached) | best of 3 s | records/s |")
    print("| --- | ---: | ---: |")
    for name, df in steps.items():
        best = float("inf")
        for _ in range(3):
            started = time.monotonic()
            df.write.format("noop").mode("overwrite").save()
            best = min(best, time.monotonic() - started)
        print(f"| {name} | {best:.2f} | {records / best:,.0f} |")


def _materialise(batch: DataFrame, _batch_id: int) -> None:
    batch.count()


def run_front(spark: SparkSession, args: argparse.Namespace, work: Path) -> None:
    """Events/s of the stream's front on a pre-filled topic, per de-duplication variant."""
    started = time.monotonic()
    fill_topic(spark, args.bootstrap_servers, args.topic, args.front_events, args.customers)
    print(f"topic {args.topic} filled with {args.front_events:,} events in {time.monotonic() - started:.1f}s")
    print("| front | events | batches | mean batch s | events/s (after the first batch) |")
    print("| --- | --- | --- | --- | --- |")
    variants = ["none", "product", "within-watermark"] + (["within-watermark+jvm"] if args.jvm_jar else [])
    for dedupe in variants:
        checkpoint = work / f"checkpoint-front-{dedupe}"
        shutil.rmtree(checkpoint, ignore_errors=True)
        df = front_query(spark, args.bootstrap_servers, args.topic, dedupe.split("+")[0], args.batch_events)
        if dedupe.endswith("+jvm"):
            # The valid events into the JVM state of `--customers` bootstrapped customers.
            events = df.where("reason IS NULL").select(
                "master_id", "amount", (F.col("channel") != "Offline").alias("is_online"), "order_date"
            )
            boot = spark.read.schema(STATE_SCHEMA).parquet(str(work / "bootstrap"))
            jdf = spark._jvm.flo.spike.TotalsState.apply(events._jdf, boot._jdf)  # type: ignore[union-attr]
            df = DataFrame(jdf, spark)
        query = (
            df.writeStream.option("checkpointLocation", str(checkpoint))
            .outputMode("update" if dedupe.endswith("+jvm") else "append")
            .foreachBatch(_materialise)
            .trigger(availableNow=True)
            .start()
        )
        query.awaitTermination()
        progress = [p for p in query.recentProgress if p["numInputRows"]]
        steady = progress[1:] or progress
        rows = sum(p["numInputRows"] for p in steady)
        seconds = sum(p["durationMs"]["triggerExecution"] for p in steady) / 1000.0
        print(f"| {dedupe} | {rows:,} | {len(steady)} | {seconds / len(steady):.2f} | {rows / seconds:,.0f} |")


def product_query(spark: SparkSession, work: Path) -> DataFrame:
    """The product's state step (jvm/state via streaming/customer_state.py): the full customer state."""
    from streaming.customer_state import apply_customer_state, bootstrap_state, order_inputs

    boot = (
        spark.read.schema(STATE_SCHEMA)
        .parquet(str(work / "bootstrap"))
        .select(
            "master_id",
            F.lit("Offline").alias("order_channel"),
            F.lit("Mobile").alias("last_order_channel"),
            "first_order_date",
            "last_order_date",
            F.col("last_order_date").alias("last_order_date_online"),
            F.col("first_order_date").alias("last_order_date_offline"),
            F.col("online_orders").alias("order_num_total_ever_online"),
            F.col("offline_orders").alias("order_num_total_ever_offline"),
            F.col("offline_value").alias("customer_value_total_ever_offline"),
            F.col("online_value").alias("customer_value_total_ever_online"),
            F.array(F.lit("KADIN")).alias("interested_in_categories_12"),
            F.lit(None).cast("timestamp").alias("last_order_ts"),
        )
    )
    events = _file_stream(spark, work / "events" / "*", EVENT_SCHEMA).select(
        "master_id",
        F.expr("uuid()").alias("event_id"),
        (F.col("order_date").cast("timestamp") + F.expr("make_interval(0, 0, 0, 0, 0, 0, amount)")).alias("order_time"),
        "order_date",
        F.when(F.col("is_online"), F.lit("Mobile")).otherwise(F.lit("Offline")).alias("channel"),
        "is_online",
        "amount",
        F.array(F.lit("ERKEK")).alias("categories"),
    )
    return apply_customer_state(order_inputs(events), bootstrap_state(boot))


QUERIES = {"builtin": builtin_query, "tws": tws_query, "jvm": jvm_query, "product": product_query}


def build_spike_jar(work: Path) -> str:
    """Compile jvm/spikes/TotalsState.java against the installed pyspark's own jars (nothing downloaded)."""
    import subprocess

    import pyspark

    source = Path(__file__).resolve().parents[1] / "jvm" / "spikes" / "TotalsState.java"
    classes = work / "spike-classes"
    classpath = str(Path(pyspark.__file__).parent / "jars" / "*")
    subprocess.run(["javac", "-nowarn", "-d", str(classes), "-cp", classpath, str(source)], check=True)
    jar = work / "totals-spike.jar"
    subprocess.run(["jar", "cf", str(jar), "-C", str(classes), "."], check=True)
    return str(jar)


def run(spark: SparkSession, design: str, work: Path) -> list[tuple[int, float]]:
    """(customers changed, seconds) per micro-batch; the first batch also loads the bootstrap."""
    checkpoint = work / f"checkpoint-{design}"
    shutil.rmtree(checkpoint, ignore_errors=True)
    changed: list[int] = []
    query = (
        QUERIES[design](spark, work)
        .writeStream.outputMode("update")
        .option("checkpointLocation", str(checkpoint))
        .foreachBatch(lambda batch, _batch_id: changed.append(batch.count()))
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination()
    seconds = [p["durationMs"]["triggerExecution"] / 1000.0 for p in query.recentProgress]
    return [(changed[i] if i < len(changed) else 0, s) for i, s in enumerate(seconds)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--batch-events", type=int, default=100_000)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--designs", default="builtin,tws,jvm")
    parser.add_argument("--shuffle-partitions", type=int, default=2)
    parser.add_argument("--work", default=None)
    parser.add_argument("--jvm-jar", default=None, help="jar of the `jvm` design (default: compiled here)")
    parser.add_argument("--front", action="store_true", help="measure Kafka → parse → de-duplicate instead")
    parser.add_argument("--parse-profile", action="store_true", help="time the parse in batch over a filled topic")
    parser.add_argument("--front-events", type=int, default=1_000_000)
    parser.add_argument("--bootstrap-servers", default="127.0.0.1:9092")
    parser.add_argument("--topic", default="spike.orders")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="state-designs-"))
    work.mkdir(parents=True, exist_ok=True)
    if "jvm" in args.designs.split(",") and not args.jvm_jar:
        args.jvm_jar = build_spike_jar(work)
    spark = build_session(
        dataclasses.replace(
            default_spark_settings("state-designs"),
            shuffle_partitions=args.shuffle_partitions,
            driver_memory="8g",
            log_level="ERROR",
        ),
        {
            "spark.sql.streaming.stateStore.providerClass": (
                "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"
            ),
            "spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled": "true",
            **({"spark.driver.extraClassPath": args.jvm_jar} if args.jvm_jar else {}),
        },
    )
    if args.parse_profile:
        run_parse_profile(spark, args)
        return
    if args.front:
        if args.jvm_jar:
            write_inputs(spark, work, args.customers, 1, 0)
        run_front(spark, args, work)
        return
    started = time.monotonic()
    write_inputs(spark, work, args.customers, args.batch_events, args.batches)
    shutil.copytree(work / "bootstrap", work / "bootstrap_stream")
    print(f"inputs written in {time.monotonic() - started:.1f}s under {work}")
    print("| design | customers | events/batch | bootstrap s | mean batch s | max batch s | events/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for design in args.designs.split(","):
        measured = run(spark, design, work)
        # The first batch loads the bootstrap (with the first event file); the second warms up. Neither counts.
        boot_s = measured[0][1]
        steady = [s for _, s in measured[2:]] or [s for _, s in measured[1:]]
        mean = statistics.mean(steady)
        print(
            f"| {design} | {args.customers:,} | {args.batch_events:,} | {boot_s:.1f} | {mean:.2f} | "
            f"{max(steady):.2f} | {args.batch_events / mean:,.0f} |"
        )
        print("   batches:", ", ".join(f"{n} rows {s:.2f}s" for n, s in measured))


if __name__ == "__main__":
    main()
