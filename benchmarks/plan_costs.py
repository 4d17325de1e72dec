"""`python -m benchmarks.plan_costs`: what building the stream's scoring frames costs in Python, per call.

A micro-batch builds its frames over py4j before any Spark job runs (the handler's `plan` step). This
times each piece of that on a 10-row frame of a lake's customer_state with its current model, after a
warm-up, as the mean of `--repeats` calls, and prints a Markdown table. No job runs: only plans are built.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from batch.features import with_customer_features
from batch.lake import read_table
from batch.model import score_clusters
from batch.score import load_current_model, score_customers, with_segments
from flo_seg.settings import LakeSettings, default_spark_settings
from flo_seg.spark import build_session


def mean_ms(build: Callable[[], object], repeats: int) -> float:
    """Mean milliseconds of `build()` over `repeats` calls, after one untimed call."""
    build()
    started = time.perf_counter()
    for _ in range(repeats):
        build()
    return (time.perf_counter() - started) / repeats * 1000.0


def main(argv: Sequence[str] | None = None) -> int:
    """Time each piece of the scoring plan and print the table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plan_costs", description=__doc__)
    parser.add_argument("--lake", required=True, help="a trained lake, e.g. a benchmark lake of 1M customers")
    parser.add_argument("--repeats", type=int, default=10, help="calls per piece (default 10)")
    args = parser.parse_args(argv)
    spark = build_session(default_spark_settings("flo-seg-plan-costs"))
    lake = LakeSettings(root=args.lake)
    model = load_current_model(spark, lake)
    state = read_table(spark, lake, "customer_state").limit(10)
    as_of = F.lit(dt.date(2021, 6, 1))
    features = with_customer_features(state, as_of)
    java_pipeline = model.pipeline._to_java()  # the same stages, called in the JVM directly
    pieces: dict[str, Callable[[], object]] = {
        "with_customer_features": lambda: with_customer_features(state, as_of),
        "PipelineModel.transform": lambda: model.pipeline.transform(features),
        "the JVM PipelineModel's transform": lambda: DataFrame(java_pipeline.transform(features._jdf), spark),
        "score_clusters": lambda: score_clusters(model.pipeline, features),
        "with_segments": lambda: with_segments(features, model),
        "score_customers (all of scoring)": lambda: score_customers(state, model, as_of),
        "one withColumn, for scale": lambda: features.withColumn("x", F.lit(1)),
    }
    stage_input = features
    for stage in model.pipeline.stages:
        pieces[f"stage {type(stage).__name__}"] = partial(stage.transform, stage_input)
        stage_input = stage.transform(stage_input)
    print(f"| piece (mean of {args.repeats} calls) | ms |")
    print("|---|---:|")
    for name, build in pieces.items():
        print(f"| {name} | {mean_ms(build, args.repeats):.1f} |", flush=True)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
