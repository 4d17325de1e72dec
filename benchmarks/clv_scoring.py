"""`python -m benchmarks.clv_scoring`: what the lifetime-value columns add to scoring customers.

Trains once on the history (into a temporary lake), then scores micro-batch-sized sets of its customers
with `score_customers` (the stream's and re-score's scoring) twice per round: with the version's CLV
parameters, and with them removed (the baseline: the scoring before lifetime value), alternating so the
machine's drift falls on both. Each timing scores a cached input into Spark's noop sink (every row and
column computed, nothing written).
Prints a Markdown table of the median seconds per size and the difference.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import statistics
import tempfile
import time
from collections.abc import Sequence

from pyspark.sql import functions as F

from batch.lake import read_table
from batch.score import ScoringModel, load_current_model, score_customers
from batch.train import run_train
from benchmarks.toolkit import machine, markdown_table, uptime
from flo_seg.settings import LakeSettings, TrainSettings, default_spark_settings
from flo_seg.spark import build_session


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", required=True, help="history CSV to train on and take customers from")
    parser.add_argument("--sizes", default="1000,20000", help="customers per scoring, comma-separated")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per size and variant (default 5)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    spark = build_session(dataclasses.replace(default_spark_settings("clv-scoring"), master="local[2]"))
    print(f"machine: {machine(spark)}\nload at start: {uptime()}")
    with tempfile.TemporaryDirectory() as root:
        lake = LakeSettings(root=root)
        run_train(spark, lake, TrainSettings(), history_path=args.history)
        with_clv = load_current_model(spark, lake)
        assert with_clv.record.clv is not None, "the training run fitted no lifetime value model"
        without = ScoringModel(dataclasses.replace(with_clv.record, clv=None), with_clv.pipeline)
        state = read_table(spark, lake, "customer_state")
        as_of = F.lit(with_clv.record.as_of + dt.timedelta(days=1))
        rows = []
        for size in sizes:
            customers = state.orderBy("master_id").limit(size).cache()
            customers.count()
            times: dict[str, list[float]] = {"baseline": [], "with CLV": []}
            for round_ in range(args.rounds + 1):  # round 0 warms both up (Python workers, codegen)
                for name, model in (("baseline", without), ("with CLV", with_clv)):
                    started = time.monotonic()
                    score_customers(customers, model, as_of).write.format("noop").mode("overwrite").save()
                    if round_:
                        times[name].append(time.monotonic() - started)
            customers.unpersist()
            base, clv = statistics.median(times["baseline"]), statistics.median(times["with CLV"])
            rows.append((size, f"{base:.3f}", f"{clv:.3f}", f"{clv - base:+.3f}", f"{clv / base:.2f}x"))
    print(f"load at end: {uptime()}\n")
    print(
        markdown_table(
            ["customers scored", "baseline s (median)", "with CLV s (median)", "difference s", "ratio"],
            rows,
            align="rrrrr",
        )
    )
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
