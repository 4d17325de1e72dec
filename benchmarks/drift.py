"""`python -m benchmarks.drift`: what the drift check measures on usual and shifted streams, and what it costs.

Trains once on the history (into a temporary lake). Then, per scenario, on a copy of that lake: draws
`--events` orders from the customers with `flo-seg produce`'s generator (as usual, or shifted: all
offline, baskets times a factor), runs them through the real stream query (a file source in place of
Kafka, available-now), and runs one drift check (`check_drift`, as `flo-seg monitor` does). The usual
stream is the baseline the shifted ones are compared with, in the same run.

Prints two Markdown tables: per scenario, the PSI of the drift features, the largest segment share
shift, the alarms and the check's seconds; and, to show why those features, the PSI that every model
feature of the same recently updated customers has against the training customers.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from batch.compact import compact_lake
from batch.drift import DRIFT_FEATURES, SEGMENT, feature_bins, psi
from batch.features import CLUSTER_FEATURES, with_customer_features
from batch.lake import read_table
from batch.registry import current_model_record
from batch.train import run_train
from benchmarks.toolkit import machine, markdown_table, uptime
from flo_seg.settings import LakeSettings, MonitorOptions, TrainSettings, default_spark_settings
from flo_seg.spark import build_session
from streaming.job import KAFKA_RECORD_SCHEMA, StreamSettings, file_records, start_stream
from streaming.monitor import MonitorSettings, check_drift
from streaming.produce import ProduceSettings, generate_events, load_profiles

SCENARIOS: dict[str, dict[str, object]] = {
    "usual (baseline)": {},
    "baskets x2": {"basket_factor": 2.0},
    "all offline": {"channel": "Offline"},
    "all offline, baskets x4": {"channel": "Offline", "basket_factor": 4.0},
}


def write_orders(
    spark: SparkSession, lake: LakeSettings, records: Path, events: int, seed: int, **shift: object
) -> None:
    """`events` generated orders for the lake's customers (shifted as told) as one Parquet file of
    Kafka-shaped records under `records`, for `file_records`."""
    profiles = load_profiles(spark, lake)
    settings = ProduceSettings(seed=seed, **shift)  # type: ignore[arg-type]
    produced = generate_events(
        profiles, settings, events, rng=np.random.default_rng(seed), start_ts=profiles.default_start_ts, seq_start=0
    )
    rows = [(p.key, p.value, "orders", i % 4, i // 4) for i, p in enumerate(produced)]
    spark.createDataFrame(rows, KAFKA_RECORD_SCHEMA).coalesce(1).write.parquet(str(records / "batch-000"))


def stream_orders(spark: SparkSession, lake: LakeSettings, root: Path, events: int, seed: int, **shift: object) -> None:
    """`events` generated orders through the stream query, from Kafka-shaped Parquet rows."""
    write_orders(spark, lake, root / "records", events, seed, **shift)

    settings_ = StreamSettings(
        bootstrap_servers="unused:9092",
        checkpoint=str(root / "checkpoint"),
        topic="orders",
        changes_topic=None,
        available_now=True,
    )
    query = start_stream(spark, lake, settings_, source=file_records(str(root / "records")))
    try:
        query.awaitTermination()
        if query.exception() is not None:
            raise RuntimeError(str(query.exception()))
    finally:
        query.stop()
    compact_lake(spark, lake)


def model_features(state: DataFrame, as_of: object) -> pd.DataFrame:
    """Every model feature and the drift features of these customers' states."""
    columns = sorted({*CLUSTER_FEATURES, *DRIFT_FEATURES})
    return state.transform(lambda df: with_customer_features(df, F.lit(as_of))).select(*columns).toPandas()


def feature_psi(training: pd.Series, recent: pd.Series) -> float:
    """PSI of the recent values against bins of the training values, as the drift check computes it."""
    bins = feature_bins(training, str(training.name))
    return psi(bins.proportions, bins.counts(recent))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", required=True, help="history CSV to train on and draw customers from")
    parser.add_argument("--events", type=int, default=2_000, help="orders per scenario (default 2000)")
    parser.add_argument("--seed", type=int, default=1, help="generator seed (default 1)")
    args = parser.parse_args(argv)

    spark = build_session(dataclasses.replace(default_spark_settings("drift"), master="local[2]"))
    print(f"machine: {machine(spark)}\nload at start: {uptime()}")
    with tempfile.TemporaryDirectory() as tmp:
        trained = LakeSettings(root=f"{tmp}/trained")
        run_train(spark, trained, TrainSettings(), history_path=args.history)
        record = current_model_record(spark, trained)
        training = model_features(read_table(spark, trained, "customer_state"), record.as_of)
        results, every_feature = [], []
        for name, shift in SCENARIOS.items():
            root = Path(tmp) / name.replace(" ", "_").replace(",", "")
            shutil.copytree(trained.root, root / "lake")
            lake = LakeSettings(root=str(root / "lake"))
            stream_orders(spark, lake, root, args.events, args.seed, **shift)
            started = time.monotonic()
            now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
            check = check_drift(spark, lake, MonitorSettings(options=MonitorOptions()), now)
            seconds = time.monotonic() - started
            measured = {m.name: m.value for m in check.measurements if m.kind != SEGMENT}
            shifts = [m for m in check.measurements if m.kind == SEGMENT]
            largest = max(shifts, key=lambda m: m.value) if shifts else None
            results.append(
                [
                    name,
                    check.recent_customers,
                    *[f"{measured.get(f, float('nan')):.3f}" for f in DRIFT_FEATURES],
                    f"{largest.value:.3f} ({largest.name})" if largest else "-",
                    ", ".join(m.name for m in check.alarms) or "none",
                    f"{seconds:.1f}",
                ]
            )
            touched = read_table(spark, lake, "state_log").where(F.col("source") == "stream").select("master_id")
            state = read_table(spark, lake, "customer_state").join(touched.distinct(), "master_id")
            recent = model_features(state, record.as_of)
            every_feature.append([name, *[f"{feature_psi(training[f], recent[f]):.3f}" for f in training.columns]])
        print(f"\n{args.events} orders per scenario, drift check of model {record.version}\n")
        print(
            markdown_table(
                [
                    "scenario",
                    "customers",
                    *[f"PSI {f}" for f in DRIFT_FEATURES],
                    "largest share shift",
                    "alarms",
                    "check s",
                ],
                results,
            )
        )
        print("\nPSI of every feature of the same customers against all training customers\n")
        print(markdown_table(["scenario", *training.columns], every_feature))
    print(f"\nload at end: {uptime()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
