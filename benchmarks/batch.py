"""`python -m benchmarks.batch`: wall time and peak memory of generate, train and score as customers grow.

For each size the product's own paths run in one SparkSession, each in a fresh lake under `--work`:
`run_train` with k chosen by silhouette (the default job), `run_train` with a fixed k, and re-scoring
every customer of `customer_state` with the stored model into `customer_segments` (a Delta overwrite, as
`flo-seg rescore` does). scikit-learn KMeans on the same capped, log-scaled, standardised features is
the single-machine reference (its adjusted Rand index against the product's model, fitted on a
sample, is recorded beside it). Two more stages give the targets their yardsticks: the I/O floor (a
plain Spark job that reads the same CSV and writes two Delta tables) and, for the real file,
`flo-seg train` in a fresh process, session start included. Results are printed as a Markdown table
and written as JSON, with a verdict per target.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path

import numpy as np
from pyspark.ml import PipelineModel
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, pairwise_distances_argmin_min

from batch.features import CLUSTER_FEATURES, with_customer_features
from batch.generate import write_history_csv
from batch.lake import overwrite_table, read_table
from batch.model import SCALED, vectors
from batch.score import ScoringModel, load_current_model, resolve_as_of, score_customers
from batch.segments import ARCHETYPES
from batch.train import run_train
from benchmarks import toolkit
from benchmarks.toolkit import MemorySampler, machine, uptime
from flo_seg.settings import LakeSettings, TrainSettings, default_spark_settings
from flo_seg.spark import build_session
from schemas.tables import CUSTOMER_SEGMENTS, CUSTOMER_STATE

log = logging.getLogger("benchmarks.batch")

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "flo_data_20k.csv"
REAL = "real"
# The targets: train (auto k) + score of 1M customers within 20 s of wall time and within 2.5x
# the I/O floor; the real file's `flo-seg train` in a fresh process within 10 s; 10M within 10x 1M.
TARGET_ROWS = 1_000_000
TARGET_SECONDS = 20.0
TARGET_FLOOR_RATIO = 2.5
TARGET_REAL_SECONDS = 10.0
TARGET_SCALE_ROWS = 10_000_000
TARGET_SCALE_RATIO = 10.0

GENERATE = "generate"
TRAIN_AUTO = "train (auto k)"
TRAIN_FIXED = "train (fixed k)"
SCORE = "score"
TO_NUMPY = "features to numpy"
SKLEARN = "sklearn fit+predict"
FLOOR = "I/O floor: read CSV, write 2 Delta tables"
TRAIN_CLI = "flo-seg train, fresh process"
STAGES: tuple[str, ...] = (GENERATE, FLOOR, TRAIN_CLI, TRAIN_AUTO, TRAIN_FIXED, SCORE, TO_NUMPY, SKLEARN)

StageAction = Callable[[], tuple[int, dict[str, object]]]


@dataclass(kw_only=True)
class StageResult:
    """One measured stage of one size."""

    size: str
    stage: str
    rows: int = 0
    seconds: float | None = None
    driver_rss_peak: int = 0
    jvm_rss_peak: int = 0
    load_before: float = 0.0
    load_after: float = 0.0
    # CPU seconds each process got during the stage: on a shared machine, far below 2 x wall time.
    driver_cpu_seconds: float = 0.0
    jvm_cpu_seconds: float = 0.0
    error: str | None = None
    # Time ratio / size ratio against the same stage of the previous size; <= 1 is no worse than linear.
    growth: float | None = None
    detail: dict[str, object] = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float | None:
        """Throughput of a successful stage."""
        return self.rows / self.seconds if self.seconds else None


@dataclass(kw_only=True)
class Bench:
    """The results so far, saved to JSON after every stage so a crash still leaves the numbers."""

    out: Path
    sampler: MemorySampler
    meta: dict[str, object]
    results: list[StageResult] = field(default_factory=list)

    def stage(self, size: str, name: str, action: StageAction) -> StageResult:
        """Run and measure one stage; an exception is recorded, not raised."""
        log.info("[%s] %s ...", size, name)
        result = StageResult(size=size, stage=name, load_before=os.getloadavg()[0])
        self.sampler.reset()
        cpu_before = self.sampler.cpu_seconds()
        started = time.perf_counter()
        try:
            result.rows, result.detail = action()
            result.seconds = time.perf_counter() - started
        except Exception as exc:
            log.exception("[%s] %s failed", size, name)
            first_line = next(iter(str(exc).strip().splitlines()), "")
            result.error = f"{type(exc).__name__}: {first_line[:300]}"
        result.driver_rss_peak, result.jvm_rss_peak = self.sampler.peaks()
        cpu_after = self.sampler.cpu_seconds()
        result.driver_cpu_seconds = cpu_after[0] - cpu_before[0]
        result.jvm_cpu_seconds = cpu_after[1] - cpu_before[1]
        result.load_after = os.getloadavg()[0]
        self.results.append(result)
        self.save()
        took = f"{result.seconds:.1f}s" if result.seconds is not None else f"FAILED ({result.error})"
        print(
            f"[{size}] {name}: {took}, driver RSS peak {_gib(result.driver_rss_peak)}, "
            f"JVM RSS peak {_gib(result.jvm_rss_peak)}, CPU s driver {result.driver_cpu_seconds:.1f} "
            f"JVM {result.jvm_cpu_seconds:.1f}",
            flush=True,
        )
        return result

    def save(self) -> None:
        """Write the JSON results."""
        add_growth(self.results)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            **self.meta,
            "results": [{**asdict(r), "rows_per_second": r.rows_per_second} for r in self.results],
            "target": target_verdicts(self.results),
        }
        self.out.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def add_growth(results: list[StageResult]) -> None:
    """Cost growth of each stage against the same stage at the previous size that ran it."""
    previous: dict[str, StageResult] = {}
    for r in results:
        before = previous.get(r.stage)
        r.growth = None
        if r.seconds and before is not None and before.seconds and before.rows and r.rows:
            r.growth = (r.seconds / before.seconds) / (r.rows / before.rows)
        if r.seconds:
            previous[r.stage] = r


def _verdict(name: str, value: float, limit: float, unit: str) -> dict[str, object]:
    return {
        "target": name,
        "value": value,
        "limit": limit,
        "unit": unit,
        "verdict": "MET" if value <= limit else "MISSED",
    }


def target_verdicts(results: list[StageResult]) -> list[dict[str, object]]:
    """Each of the issue's targets that this run measured, MET or MISSED with its value."""
    seconds: dict[tuple[str, str], float] = {}
    rows: dict[str, int] = {}
    for r in results:
        if r.seconds is not None:
            seconds[(r.size, r.stage)] = r.seconds
            if r.stage == SCORE:
                rows[r.size] = r.rows
    verdicts: list[dict[str, object]] = []
    by_rows = {n: size for size, n in rows.items()}

    def train_and_score(size: str) -> float | None:
        train, score = seconds.get((size, TRAIN_AUTO)), seconds.get((size, SCORE))
        return None if train is None or score is None else train + score

    target = by_rows.get(TARGET_ROWS)
    total = train_and_score(target) if target else None
    if target and total is not None:
        verdicts.append(_verdict(f"{TARGET_ROWS:,}: train (auto k) + score", total, TARGET_SECONDS, "s"))
        floor = seconds.get((target, FLOOR))
        if floor:
            verdicts.append(
                _verdict(f"{TARGET_ROWS:,}: train + score / I/O floor", total / floor, TARGET_FLOOR_RATIO, "x")
            )
    real = seconds.get((REAL, TRAIN_CLI))
    if real is not None:
        verdicts.append(_verdict("real data: flo-seg train in a fresh process", real, TARGET_REAL_SECONDS, "s"))
    scale = by_rows.get(TARGET_SCALE_ROWS)
    big = train_and_score(scale) if scale else None
    if total is not None and big is not None:
        verdicts.append(
            _verdict(f"{TARGET_SCALE_ROWS:,} / {TARGET_ROWS:,}: train + score", big / total, TARGET_SCALE_RATIO, "x")
        )
    return verdicts


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def _size_label(size: str, results: list[StageResult]) -> str:
    rows = next((r.rows for r in results if r.size == size and r.stage == TRAIN_AUTO and r.rows), None)
    if size == REAL:
        return f"{rows:,} (real)" if rows else "real"
    return f"{int(size):,}"


def markdown_table(results: list[StageResult]) -> str:
    """The results as a Markdown table, one row per size and stage."""
    headers = [
        "customers",
        "stage",
        "rows",
        "wall s",
        "rows/s",
        "driver RSS peak",
        "JVM RSS peak",
        "growth vs previous size",
    ]
    rows = []
    for r in results:
        wall = f"{r.seconds:.1f}" if r.seconds is not None else f"failed: {r.error}"
        rate = f"{r.rows_per_second:,.0f}" if r.rows_per_second else "–"
        growth = f"{r.growth:.2f}" if r.growth is not None else "–"
        rows.append(
            (
                _size_label(r.size, results),
                r.stage,
                f"{r.rows:,}",
                wall,
                rate,
                _gib(r.driver_rss_peak),
                _gib(r.jvm_rss_peak),
                growth,
            )
        )
    return toolkit.markdown_table(headers, rows, align="llrrrrrr")


def verdict_lines(results: list[StageResult]) -> list[str]:
    """One line per measured target."""
    lines = [
        f"- {v['target']}: {v['value']:.2f} {v['unit']} (target <= {v['limit']:g} {v['unit']}) → {v['verdict']}"
        for v in target_verdicts(results)
    ]
    return lines or ["- no target size ran (or all failed): no verdict"]


def spark_centers(model: ScoringModel) -> np.ndarray:
    """Centroids of the stored model in the scaled feature space."""
    return np.asarray(model.pipeline.stages[-1].clusterCenters(), dtype=np.float64)  # type: ignore[attr-defined]


def compare_with_product(x: np.ndarray, labels: np.ndarray, model: ScoringModel) -> dict[str, object]:
    """Inertia of the product's centroids on the reference's points, and label agreement with sklearn."""
    product_labels, distances = pairwise_distances_argmin_min(x, spark_centers(model))
    return {
        "inertia_spark_centroids": float(np.sum(distances**2)),
        "adjusted_rand_vs_spark": float(adjusted_rand_score(product_labels, labels)),
    }


def scaled_features_numpy(spark: SparkSession, lake: LakeSettings, model: ScoringModel) -> np.ndarray:
    """Every customer's clustering features on the driver, through the stored model's own preprocessing."""
    state = read_table(spark, lake, CUSTOMER_STATE)
    features = with_customer_features(state, F.lit(model.record.as_of))
    return vectors(PipelineModel(stages=model.pipeline.stages[:-1]).transform(features), SCALED)


def io_floor(spark: SparkSession, csv: Path, lake: LakeSettings) -> tuple[int, dict[str, object]]:
    """The plain Spark job the product is held against: the same CSV read (multi-line, as the product must),
    then two Delta tables written from one cached frame."""
    rows = spark.read.option("header", True).option("multiLine", True).csv(str(csv)).cache()
    try:
        n = rows.count()
        rows.write.format("delta").mode("overwrite").save(lake.table("floor_rows"))
        rows.select("master_id", "order_channel").write.format("delta").mode("overwrite").save(lake.table("floor_ids"))
    finally:
        rows.unpersist()
    return n, {}


def train_in_a_fresh_process(csv: Path, lake: LakeSettings) -> tuple[int, dict[str, object]]:
    """`flo-seg train --history` as a user runs it: its own Python and JVM, session start included."""
    shutil.rmtree(lake.root, ignore_errors=True)
    command = [sys.executable, "-m", "flo_seg.cli", "--lake", lake.root, "train", "--history", str(csv)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    shutil.rmtree(lake.root, ignore_errors=True)
    return 0, {"command": " ".join(command[1:]), "stdout": done.stdout.strip().splitlines()[:3]}


def is_alive(spark: SparkSession) -> bool:
    """Whether the session's JVM still answers (an out-of-memory JVM does not)."""
    try:
        return spark.range(1).count() == 1
    except Exception:
        return False


def bench_size(bench: Bench, spark: SparkSession, size: str, *, work: Path, k: int, seed: int) -> None:
    """Every stage for one size, in a fresh lake; stops the size at its first failed stage."""
    if size == REAL:
        if not REAL_DATA.exists():
            print(f"[{REAL}] skipped: real FLO data not found at {REAL_DATA}", flush=True)
            return
        csv = REAL_DATA
    else:
        customers = int(size)
        csv = work / f"history-{customers}.csv"
        result = bench.stage(size, GENERATE, lambda: (write_history_csv(csv, customers=customers, seed=seed), {}))
        if result.error:
            return
    lake_dir = work / f"lake-{size}"
    shutil.rmtree(lake_dir, ignore_errors=True)
    lake = LakeSettings(root=str(lake_dir))
    rows_kept = 0
    model: ScoringModel | None = None
    x: np.ndarray | None = None
    labels: np.ndarray | None = None

    def train(settings: TrainSettings) -> StageAction:
        def action() -> tuple[int, dict[str, object]]:
            nonlocal rows_kept
            summary = run_train(spark, lake, settings, history_path=str(csv))
            rows_kept = summary.rows_kept
            return summary.rows_read, {
                "rows_kept": summary.rows_kept,
                "k": summary.k,
                "silhouette": summary.silhouette,
                "model_version": summary.model_version,
            }

        return action

    def score() -> tuple[int, dict[str, object]]:
        nonlocal model
        model = load_current_model(spark, lake)
        state = read_table(spark, lake, CUSTOMER_STATE)
        scored = score_customers(state, model, F.lit(resolve_as_of(state, None)))
        overwrite_table(scored, lake, CUSTOMER_SEGMENTS)
        return rows_kept, {"model_version": model.record.version, "k": model.record.k, "write": "delta"}

    def to_numpy() -> tuple[int, dict[str, object]]:
        nonlocal x
        assert model is not None
        x = scaled_features_numpy(spark, lake, model)
        return x.shape[0], {"columns": list(CLUSTER_FEATURES), "bytes": x.nbytes}

    def sklearn_fit_predict() -> tuple[int, dict[str, object]]:
        nonlocal labels
        assert x is not None
        fitted = KMeans(n_clusters=k, n_init=3, random_state=seed, max_iter=TrainSettings().max_iter).fit(x)
        labels = fitted.predict(x)
        return x.shape[0], {"n_iter": int(fitted.n_iter_), "inertia_sklearn": float(fitted.inertia_)}

    # A clean cache per stage: run_train leaves its validated history cached, which would otherwise
    # carry one stage's memory into the next.
    stages: list[tuple[str, StageAction]] = [(FLOOR, lambda: io_floor(spark, csv, lake))]
    if size == REAL:
        stages.append((TRAIN_CLI, lambda: train_in_a_fresh_process(csv, LakeSettings(root=str(work / "lake-cli")))))
    stages += [
        (TRAIN_AUTO, train(TrainSettings(seed=seed))),
        (TRAIN_FIXED, train(TrainSettings(k=k, seed=seed))),
        (SCORE, score),
        (TO_NUMPY, to_numpy),
        (SKLEARN, sklearn_fit_predict),
    ]
    for name, action in stages:
        spark.catalog.clearCache()
        result = bench.stage(size, name, action)
        if result.error:
            return
    if x is not None and labels is not None and model is not None:
        # Untimed: how the reference's clustering compares with the product's on the same points.
        result.detail.update(compare_with_product(x, labels, model))
        bench.save()


def _sizes(text: str) -> list[str]:
    sizes = []
    for part in text.split(","):
        part = part.strip().replace("_", "")
        if part == REAL:
            sizes.append(REAL)
        elif part.isdigit() and int(part) > 0:
            sizes.append(str(int(part)))
        else:
            raise argparse.ArgumentTypeError(f"a size is '{REAL}' or a positive customer count, got {part!r}")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's flags."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.batch",
        description=(
            "Time generate, train (auto k and fixed k), score and a scikit-learn KMeans reference "
            "at growing customer counts; print a Markdown table and write JSON."
        ),
    )
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=_sizes(f"{REAL},1000000,5000000"),
        help=f"comma-separated sizes: '{REAL}' (the 20k FLO file) or customer counts (default real,1000000,5000000)",
    )
    parser.add_argument("--k", type=int, default=4, help="k of the fixed-k training and of sklearn (default 4)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the data and the clusterings (default 42)")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks-batch.json"), help="JSON results file")
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/flo-bench"),
        help="folder for generated CSVs, lakes and Spark scratch (default /tmp/flo-bench)",
    )
    parser.add_argument(
        "--driver-memory", default="8g", help="spark.driver.memory of the one local session (default 8g)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run every size in one session, print the table and the verdict, write the JSON."""
    args = build_parser().parse_args(argv)
    if not 2 <= args.k <= len(ARCHETYPES):
        raise SystemExit(f"--k must be between 2 and {len(ARCHETYPES)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("py4j").setLevel(logging.WARNING)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    uptime_before = uptime()

    settings = replace(default_spark_settings("flo-seg-bench"), driver_memory=args.driver_memory)
    spark = build_session(
        settings,
        extra_conf={
            "spark.local.dir": str(work / "spark-local"),
            "spark.sql.warehouse.dir": str(work / "warehouse"),
        },
    )
    sampler = MemorySampler()
    sampler.start()
    meta: dict[str, object] = {
        "command": " ".join(["python -m benchmarks.batch", *(argv if argv is not None else sys.argv[1:])]),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "sizes": args.sizes,
        "k": args.k,
        "seed": args.seed,
        "machine": machine(spark, scikit_learn=metadata.version("scikit-learn")),
        "uptime_before": uptime_before,
        "score_write": "score_customers on customer_state, Delta overwrite of customer_segments",
        "sklearn": "KMeans(n_clusters=k, n_init=3, max_iter=100), features standardised in numpy",
    }
    bench = Bench(out=args.out, sampler=sampler, meta=meta)
    try:
        for size in args.sizes:
            bench_size(bench, spark, size, work=work, k=args.k, seed=args.seed)
            if not is_alive(spark):
                print(f"the Spark JVM stopped answering after size {size}; remaining sizes skipped", flush=True)
                break
    finally:
        sampler.stop()
        meta["uptime_after"] = uptime()
        meta["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        bench.save()
    print()
    print(markdown_table(bench.results))
    print()
    print("Targets:")
    print("\n".join(verdict_lines(bench.results)))
    print(f"\nuptime before: {uptime_before}\nuptime after:  {meta['uptime_after']}")
    print(f"results written to {args.out}")
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
