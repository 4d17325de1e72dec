"""`python -m benchmarks.merge_scaling`: one micro-batch's customer_state MERGE as the table grows, per layout.

For each size a synthetic `customer_state` (built in Spark from `spark.range`, contract-shaped, with
hash-derived UUID-shaped master_ids) is written once per layout. Each repeat then builds a fresh
micro-batch of orders (90% for existing customers spread uniformly over the key space, 10% for new
ones), reduces it with the product's `customer_order_deltas` and applies it with the product's own
`merge_state` (the same MERGE statement, clauses and idempotent-transaction wrapper as the stream).
The MERGE wall time, Delta's operation metrics from the table history and the MERGE command's
file-skipping metrics explain where the time goes. Results are printed as Markdown and written as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from delta.tables import DeltaTable
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from batch.features import CATEGORY_LIST, OFFLINE_ORDERS, OFFLINE_VALUE, ONLINE_ORDERS, ONLINE_VALUE
from batch.lake import append_table
from benchmarks.toolkit import machine, uptime
from flo_seg.settings import LakeSettings, default_spark_settings
from flo_seg.spark import build_session
from schemas.history import CATEGORIES, CHANNELS
from schemas.tables import CUSTOMER_STATE, CUSTOMER_STATE_SCHEMA, conform
from streaming.state import customer_order_deltas, merge_state

log = logging.getLogger("benchmarks.merge_scaling")

KEY = "master_id"
# Ids of customers first seen in a benchmark batch start here, far above any table row id.
NEW_ID_BASE = 10**12
HISTORY_START = "2013-01-01"
HISTORY_END = "2021-05-30"
STREAM_START = "2021-06-01 00:00:00"
UPDATED_AT = "2021-05-31 00:00:00"
# What the MERGE history metrics are read for; Delta reports them as strings.
HISTORY_METRICS: tuple[str, ...] = (
    "executionTimeMs",
    "scanTimeMs",
    "rewriteTimeMs",
    "numSourceRows",
    "numTargetRowsUpdated",
    "numTargetRowsInserted",
    "numTargetRowsCopied",
    "numTargetFilesAdded",
    "numTargetFilesRemoved",
    "numTargetBytesAdded",
    "numTargetBytesRemoved",
    "numTargetDeletionVectorsAdded",
    "numTargetDeletionVectorsUpdated",
    "numTargetDeletionVectorsRemoved",
)
# SQL metrics of the MergeIntoCommand node that the history leaves out: what file skipping achieved.
COMMAND_METRICS: dict[str, str] = {
    "number of target files before skipping": "filesBeforeSkipping",
    "number of target files after skipping": "filesAfterSkipping",
    "number of target bytes after skipping": "bytesAfterSkipping",
}
MERGE_NODE = "Execute MergeIntoCommand"


@dataclass(frozen=True, kw_only=True)
class Layout:
    """How a customer_state table is laid out on disk."""

    name: str
    cluster_by: tuple[str, ...] = ()
    properties: dict[str, str] = field(default_factory=dict)
    description: str = ""

    @property
    def is_clustered(self) -> bool:
        """Whether OPTIMIZE (re)clusters the table on its clustering columns."""
        return bool(self.cluster_by)


_DV = {"delta.enableDeletionVectors": "true"}
LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout(name="plain", description="default Delta table: copy-on-write MERGE"),
        Layout(name="dv", properties=_DV, description="deletion vectors: merge-on-read MERGE"),
        Layout(
            name="clustered",
            cluster_by=(KEY,),
            description=f"liquid clustering on {KEY} (OPTIMIZE after load), copy-on-write MERGE",
        ),
        Layout(
            name="clustered-dv",
            cluster_by=(KEY,),
            properties=_DV,
            description=f"liquid clustering on {KEY} (OPTIMIZE after load) + deletion vectors",
        ),
    )
}
DEFAULT_LAYOUTS = "plain,dv,clustered-dv"


@dataclass(kw_only=True)
class MergeRun:
    """One timed MERGE of one fresh micro-batch."""

    repeat: int
    seconds: float
    table_files_before: int
    table_bytes_before: int
    metrics: dict[str, int] = field(default_factory=dict)


@dataclass(kw_only=True)
class LayoutResult:
    """Build, MERGE repeats and follow-up OPTIMIZE of one layout at one size."""

    rows: int
    layout: str
    batch_customers: int = 0
    write_seconds: float | None = None
    optimize_seconds: float | None = None
    files: int = 0
    table_bytes: int = 0
    merges: list[MergeRun] = field(default_factory=list)
    maintenance_seconds: float | None = None
    maintenance_metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def build_seconds(self) -> float | None:
        """Write plus the initial OPTIMIZE (when the layout clusters)."""
        if self.write_seconds is None:
            return None
        return self.write_seconds + (self.optimize_seconds or 0.0)

    @property
    def merge_seconds(self) -> float | None:
        """Median MERGE wall time over the repeats."""
        return statistics.median(m.seconds for m in self.merges) if self.merges else None

    def median_metric(self, name: str) -> int | None:
        """Median of one MERGE metric over the repeats."""
        values = [m.metrics[name] for m in self.merges if name in m.metrics]
        return int(statistics.median(values)) if values else None


# ---------------------------------------------------------------------------------------------------
# Synthetic data: pure transforms of `spark.range` ids.


def _hash(id_col: Column, salt: int) -> Column:
    return F.xxhash64(id_col, F.lit(salt))


def _pick(values: Sequence[str], h: Column) -> Column:
    return F.element_at(F.array(*[F.lit(v) for v in values]), (F.pmod(h, F.lit(len(values))) + 1).cast("int"))


def _subset(values: Sequence[str], h: Column) -> Column:
    """A reproducible subset of `values`: bit i of the hash keeps value i."""
    flags = [F.when(F.pmod(F.floor(F.abs(h) / 2**i), 2) == 1, F.lit(v)) for i, v in enumerate(values)]
    return F.array_compact(F.array(*flags))


def master_id(id_col: Column) -> Column:
    """A UUID-shaped customer id derived from a row id: uniform over the key space, like FLO's ids."""
    h = F.md5(F.concat(F.lit("flo-customer-"), id_col.cast("string")))
    parts = [(1, 8), (9, 4), (13, 4), (17, 4), (21, 12)]
    return F.concat_ws("-", *[F.substring(h, start, length) for start, length in parts])


def synthetic_state(spark: SparkSession, rows: int, partitions: int) -> DataFrame:
    """`rows` plausible customer_state rows, contract-shaped, as history loads them (no stream time yet)."""
    id_col = F.col("id")
    span = F.datediff(F.lit(HISTORY_END).cast("date"), F.lit(HISTORY_START).cast("date"))
    first = F.date_add(F.lit(HISTORY_START).cast("date"), F.pmod(_hash(id_col, 1), span).cast("int"))
    tenure = F.datediff(F.lit(HISTORY_END).cast("date"), F.col("first_order_date")) + 1
    last = F.date_add(F.col("first_order_date"), F.pmod(_hash(id_col, 2), tenure).cast("int"))
    online = F.pmod(_hash(id_col, 3), 12).cast("long")
    offline = F.when(online == 0, 1 + F.pmod(_hash(id_col, 4), 4)).otherwise(F.pmod(_hash(id_col, 4), 3))
    last_online = F.when(F.col(ONLINE_ORDERS) > 0, F.col("last_order_date"))
    last_offline = F.when(
        F.col(OFFLINE_ORDERS) > 0,
        F.greatest(F.col("first_order_date"), F.date_sub(F.col("last_order_date"), 30)),
    )

    def money(count: str, salt: int) -> Column:
        return F.round(F.col(count) * (30 + F.pmod(_hash(id_col, salt), 40_000) / 100), 2)

    return (
        spark.range(0, rows, numPartitions=partitions)
        .select(
            id_col,
            master_id(id_col).alias(KEY),
            _pick(CHANNELS, _hash(id_col, 5)).alias("order_channel"),
            _pick(CHANNELS, _hash(id_col, 6)).alias("last_order_channel"),
            first.alias("first_order_date"),
            online.alias(ONLINE_ORDERS),
            offline.cast("long").alias(OFFLINE_ORDERS),
            _subset(CATEGORIES, _hash(id_col, 7)).alias(CATEGORY_LIST),
        )
        .withColumn("last_order_date", last)
        .withColumn("last_order_date_online", last_online)
        .withColumn("last_order_date_offline", last_offline)
        .withColumn(ONLINE_VALUE, money(ONLINE_ORDERS, 8))
        .withColumn(OFFLINE_VALUE, money(OFFLINE_ORDERS, 9))
        .withColumn("last_order_ts", F.lit(None).cast("timestamp"))
        .withColumn("updated_at", F.lit(UPDATED_AT).cast("timestamp"))
        .transform(lambda df: conform(df, CUSTOMER_STATE_SCHEMA))
    )


def batch_customer_ids(spark: SparkSession, table_rows: int, customers: int, repeat: int) -> DataFrame:
    """Row ids of one batch's customers: 90% existing, one per equal stratum of the table, 10% new."""
    existing = min(table_rows, round(customers * 0.9))
    new = customers - existing
    stride = table_rows // existing
    i = F.col("id")
    known = spark.range(existing).select(
        (i * stride + F.pmod(F.xxhash64(i, F.lit(repeat), F.lit(table_rows)), stride)).alias("id")
    )
    first_new = NEW_ID_BASE + repeat * customers
    fresh = spark.range(first_new, first_new + new)
    return known.unionByName(fresh)


def synthetic_orders(ids_df: DataFrame, repeat: int) -> DataFrame:
    """Valid order events for the given customers (1–3 each), shaped like `valid_orders` output."""
    id_col = F.col("id")
    start = F.lit(STREAM_START).cast("timestamp").cast("long") + repeat * 60
    order_key = F.concat_ws(":", F.lit(repeat), id_col, F.col("n"))
    channel = _pick(CHANNELS, F.xxhash64(order_key, F.lit(11)))
    order_time = F.timestamp_seconds(start + F.pmod(F.xxhash64(order_key, F.lit(12)), 60))
    return ids_df.withColumn("n", F.explode(F.sequence(F.lit(1), 1 + F.pmod(_hash(id_col, 10), 3).cast("int")))).select(
        F.sha2(F.concat_ws(":", F.lit("bench"), order_key), 256).alias("event_id"),
        master_id(id_col).alias(KEY),
        order_time.alias("order_time"),
        F.to_date(order_time).alias("order_date"),
        channel.alias("channel"),
        (channel != F.lit("Offline")).alias("is_online"),
        F.round(5 + F.pmod(F.xxhash64(order_key, F.lit(13)), 200_000) / 100, 2).alias("amount"),
        _subset(CATEGORIES, F.xxhash64(order_key, F.lit(14))).alias("categories"),
    )


# ---------------------------------------------------------------------------------------------------
# Effects: build a table, MERGE into it, read back what Delta did.


def table_detail(spark: SparkSession, path: str) -> tuple[int, int]:
    """(number of files, bytes) of the table's current snapshot."""
    row = spark.sql(f"DESCRIBE DETAIL delta.`{path}`").select("numFiles", "sizeInBytes").first()
    assert row is not None
    return int(row[0]), int(row[1])


def last_history_metrics(spark: SparkSession, path: str, operation: str) -> dict[str, int]:
    """Operation metrics of the table's latest commit, which must be `operation`."""
    row = DeltaTable.forPath(spark, path).history(1).select("operation", "operationMetrics").first()
    assert row is not None
    if row["operation"] != operation:
        raise RuntimeError(f"latest commit of {path} is {row['operation']}, expected {operation}")
    metrics = row["operationMetrics"] or {}
    return {name: int(metrics[name]) for name in HISTORY_METRICS if name in metrics}


def _to_java_list(spark: SparkSession, scala_seq: Any) -> list[Any]:
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    return list(jvm.scala.jdk.javaapi.CollectionConverters.asJava(scala_seq))


def last_merge_command_metrics(spark: SparkSession) -> dict[str, int]:
    """File-skipping SQL metrics of the latest MergeIntoCommand, from the SQL status store (UI or not)."""
    store = spark._jsparkSession.sharedState().statusStore()
    for execution in reversed(_to_java_list(spark, store.executionsList())):
        nodes = _to_java_list(spark, store.planGraph(execution.executionId()).allNodes())
        merge_node = next((n for n in nodes if n.name() == MERGE_NODE), None)
        if merge_node is None:
            continue
        values = store.executionMetrics(execution.executionId())
        found: dict[str, int] = {}
        for metric in _to_java_list(spark, merge_node.metrics()):
            key = COMMAND_METRICS.get(metric.name())
            value = values.get(metric.accumulatorId())
            if key and value.isDefined():
                found[key] = int(str(value.get()).replace(",", ""))
        return found
    return {}


def create_table(spark: SparkSession, path: str, layout: Layout) -> None:
    """An empty customer_state table with the layout's clustering and properties."""
    builder = DeltaTable.create(spark).location(path).addColumns(CUSTOMER_STATE_SCHEMA)
    if layout.cluster_by:
        builder = builder.clusterBy(*layout.cluster_by)
    for key, value in layout.properties.items():
        builder = builder.property(key, value)
    builder.execute()


def optimize(spark: SparkSession, path: str, target_file_bytes: int) -> dict[str, Any]:
    """OPTIMIZE (clusters a clustered table incrementally, bin-packs small files otherwise); its metrics.

    OSS Delta has no `delta.targetFileSize` table property: OPTIMIZE writes files up to
    `optimize.maxFileSize` and only considers files below `optimize.minFileSize` (both 1 GiB by default,
    which would fold a table of this size into one file and make every OPTIMIZE rewrite all of it).
    """
    confs = {
        "spark.databricks.delta.optimize.maxFileSize": str(target_file_bytes),
        "spark.databricks.delta.optimize.minFileSize": str(target_file_bytes // 2),
    }
    for key, value in confs.items():
        spark.conf.set(key, value)
    try:
        row = spark.sql(f"OPTIMIZE delta.`{path}`").select("metrics").first()
    finally:
        for key in confs:
            spark.conf.unset(key)
    assert row is not None
    metrics = row["metrics"].asDict(recursive=True)
    return {
        "numFilesAdded": metrics["numFilesAdded"],
        "numFilesRemoved": metrics["numFilesRemoved"],
        "totalConsideredFiles": metrics["totalConsideredFiles"],
        "bytesRemoved": (metrics.get("filesRemoved") or {}).get("totalSize", 0),
        "bytesAdded": (metrics.get("filesAdded") or {}).get("totalSize", 0),
    }


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """What one size × layout run needs besides the session."""

    work: Path
    batch: int
    repeats: int
    rows_per_file: int
    maintain: bool


def bench_layout(spark: SparkSession, rows: int, layout: Layout, settings: RunSettings) -> LayoutResult:
    """Build one layout of one size, MERGE `repeats` fresh batches into it, then OPTIMIZE once."""
    result = LayoutResult(rows=rows, layout=layout.name)
    lake = LakeSettings(root=str(settings.work / f"lake-{rows}-{layout.name}"))
    path = lake.table(CUSTOMER_STATE)
    shutil.rmtree(lake.root, ignore_errors=True)
    try:
        started = time.perf_counter()
        create_table(spark, path, layout)
        partitions = max(1, math.ceil(rows / settings.rows_per_file))
        append_table(synthetic_state(spark, rows, partitions), lake, CUSTOMER_STATE)
        result.write_seconds = time.perf_counter() - started
        files, table_bytes = table_detail(spark, path)
        # OPTIMIZE aims at the loaded files' size, so every layout starts with about as many files.
        target_file_bytes = max(1, table_bytes // files)
        if layout.is_clustered:
            started = time.perf_counter()
            optimize(spark, path, target_file_bytes)
            result.optimize_seconds = time.perf_counter() - started
        result.files, result.table_bytes = table_detail(spark, path)
        _report(
            f"[{rows:,} {layout.name}] built in {result.build_seconds:.1f}s: {result.files} files, "
            f"{result.table_bytes / 2**20:,.0f} MiB"
        )
        for repeat in range(settings.repeats):
            result.merges.append(merge_once(spark, lake, rows, layout, settings.batch, repeat))
            result.batch_customers = result.merges[-1].metrics.get("numSourceRows", 0)
        if settings.maintain and (layout.is_clustered or layout.properties):
            started = time.perf_counter()
            result.maintenance_metrics = optimize(spark, path, target_file_bytes)
            result.maintenance_seconds = time.perf_counter() - started
            _report(
                f"[{rows:,} {layout.name}] OPTIMIZE after the batches: {result.maintenance_seconds:.1f}s "
                f"{result.maintenance_metrics}"
            )
    except Exception as exc:
        log.exception("[%s %s] failed", rows, layout.name)
        first_line = next(iter(str(exc).strip().splitlines()), "")
        result.error = f"{type(exc).__name__}: {first_line[:300]}"
    finally:
        shutil.rmtree(lake.root, ignore_errors=True)
    return result


def merge_once(spark: SparkSession, lake: LakeSettings, rows: int, layout: Layout, batch: int, repeat: int) -> MergeRun:
    """One fresh micro-batch through the product's MERGE; only the MERGE itself is timed."""
    path = lake.table(CUSTOMER_STATE)
    orders = synthetic_orders(batch_customer_ids(spark, rows, batch, repeat), repeat)
    deltas = customer_order_deltas(orders).persist()
    try:
        deltas.count()
        files_before, bytes_before = table_detail(spark, path)
        started = time.perf_counter()
        merge_state(spark, lake, deltas, f"merge-scaling-{layout.name}", repeat)
        seconds = time.perf_counter() - started
    finally:
        deltas.unpersist()
    run = MergeRun(repeat=repeat, seconds=seconds, table_files_before=files_before, table_bytes_before=bytes_before)
    run.metrics = {**last_history_metrics(spark, path, "MERGE"), **last_merge_command_metrics(spark)}
    m = run.metrics
    _report(
        f"[{rows:,} {layout.name}] MERGE #{repeat}: {seconds:.1f}s, files scanned "
        f"{m.get('filesAfterSkipping')}/{m.get('filesBeforeSkipping')}, removed {m.get('numTargetFilesRemoved')} "
        f"added {m.get('numTargetFilesAdded')}, rows copied {m.get('numTargetRowsCopied')}, "
        f"bytes added {m.get('numTargetBytesAdded', 0) / 2**20:.1f} MiB, DVs +{m.get('numTargetDeletionVectorsAdded')}"
        f"/~{m.get('numTargetDeletionVectorsUpdated')}, scan {m.get('scanTimeMs')} ms, "
        f"rewrite {m.get('rewriteTimeMs')} ms"
    )
    return run


def _report(line: str) -> None:
    print(line, flush=True)


# ---------------------------------------------------------------------------------------------------
# Reporting.


def _mib(n_bytes: int | None) -> str:
    return "–" if n_bytes is None else f"{n_bytes / 2**20:,.1f}"


def _num(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"


def _secs(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def markdown_table(results: list[LayoutResult]) -> str:
    """One row per size × layout: build, the median MERGE and what Delta read and wrote for it."""
    lines = [
        "| customers | layout | build s (write + OPTIMIZE) | files | table MiB | MERGE s median (runs) "
        "| files scanned | files removed / added | DVs added / updated | rows copied | MiB written "
        "| scan / rewrite ms | OPTIMIZE after: s, files, MiB rewritten |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.error:
            lines.append(f"| {r.rows:,} | {r.layout} | failed: {r.error} |" + " |" * 10)
            continue
        build = _secs(r.build_seconds)
        if r.optimize_seconds is not None:
            build += f" ({_secs(r.write_seconds)} + {_secs(r.optimize_seconds)})"
        runs = ", ".join(f"{m.seconds:.1f}" for m in r.merges)
        after = "–"
        if r.maintenance_seconds is not None:
            mm = r.maintenance_metrics
            after = f"{r.maintenance_seconds:.1f}, {mm['numFilesRemoved']}, {_mib(mm['bytesRemoved'])}"
        med = r.median_metric
        lines.append(
            f"| {r.rows:,} | {r.layout} | {build} | {r.files:,} | {_mib(r.table_bytes)} "
            f"| **{_secs(r.merge_seconds)}** ({runs}) "
            f"| {_num(med('filesAfterSkipping'))} of {_num(med('filesBeforeSkipping'))} "
            f"| {_num(med('numTargetFilesRemoved'))} / {_num(med('numTargetFilesAdded'))} "
            f"| {_num(med('numTargetDeletionVectorsAdded'))} / {_num(med('numTargetDeletionVectorsUpdated'))} "
            f"| {_num(med('numTargetRowsCopied'))} | {_mib(med('numTargetBytesAdded'))} "
            f"| {_num(med('scanTimeMs'))} / {_num(med('rewriteTimeMs'))} | {after} |"
        )
    return "\n".join(lines)


def growth_lines(results: list[LayoutResult]) -> list[str]:
    """Per layout: median MERGE time at the largest size over the smallest, against the row ratio."""
    lines = []
    for name in dict.fromkeys(r.layout for r in results):
        done = sorted((r for r in results if r.layout == name and r.merge_seconds), key=lambda r: r.rows)
        if len(done) < 2:
            continue
        small, large = done[0], done[-1]
        assert small.merge_seconds is not None and large.merge_seconds is not None
        written = [r.median_metric("numTargetBytesAdded") or 0 for r in (small, large)]
        lines.append(
            f"- {name}: MERGE {small.merge_seconds:.1f}s at {small.rows:,} rows → {large.merge_seconds:.1f}s at "
            f"{large.rows:,}: ×{large.merge_seconds / small.merge_seconds:.2f} for ×{large.rows / small.rows:g} "
            f"rows (MiB written ×{written[1] / max(1, written[0]):.2f})"
        )
    return lines


# ---------------------------------------------------------------------------------------------------
# CLI.


def _positive_ints(text: str) -> list[int]:
    sizes = []
    for part in text.split(","):
        part = part.strip().replace("_", "")
        if not part.isdigit() or int(part) <= 0:
            raise argparse.ArgumentTypeError(f"expected positive integers, got {part!r}")
        sizes.append(int(part))
    return sizes


def _layouts(text: str) -> list[Layout]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [n for n in names if n not in LAYOUTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"layouts are among {', '.join(LAYOUTS)}; got {text!r}")
    return [LAYOUTS[n] for n in names]


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's flags."""
    layouts_help = "; ".join(f"{layout.name}: {layout.description}" for layout in LAYOUTS.values())
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.merge_scaling",
        description=(
            "Time one micro-batch's MERGE into customer_state (the product's merge_state) against growing "
            "tables, for several table layouts in the same run; print a Markdown table and write JSON."
        ),
    )
    parser.add_argument(
        "--sizes",
        type=_positive_ints,
        default=_positive_ints("1000000,5000000,10000000"),
        help="comma-separated customer_state sizes (default 1000000,5000000,10000000)",
    )
    parser.add_argument(
        "--batch", type=int, default=20_000, help="customers per micro-batch: 90%% existing, 10%% new (default 20000)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="MERGEs of fresh batches per size and layout; the median is reported"
    )
    parser.add_argument(
        "--layouts",
        type=_layouts,
        default=_layouts(DEFAULT_LAYOUTS),
        help=f"comma-separated layouts (default {DEFAULT_LAYOUTS}). {layouts_help}",
    )
    parser.add_argument(
        "--rows-per-file",
        type=int,
        default=1_000_000,
        help="rows per data file of the initial load, and the OPTIMIZE target file size derived from it "
        "(default 1000000, about 50 MiB)",
    )
    parser.add_argument(
        "--no-maintenance",
        dest="maintain",
        action="store_false",
        help="skip the OPTIMIZE that follows the MERGEs of the dv and clustered layouts",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/flo-merge"),
        help="folder for the tables and Spark scratch; each table is deleted after its run (default /tmp/flo-merge)",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON results file (default WORK/merge_scaling.json)")
    parser.add_argument(
        "--driver-memory", default="8g", help="spark.driver.memory of the one local session (default 8g)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run every size × layout in one session, print the table and growth factors, write the JSON."""
    args = build_parser().parse_args(argv)
    if args.batch < 10 or args.repeats < 1 or args.rows_per_file < 1:
        raise SystemExit("--batch must be at least 10, --repeats and --rows-per-file at least 1")
    if min(args.sizes) < round(args.batch * 0.9):
        raise SystemExit("every size must hold at least the batch's existing customers (90% of --batch)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("py4j").setLevel(logging.WARNING)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    out = args.out or work / "merge_scaling.json"
    uptime_before = uptime()
    settings = replace(default_spark_settings("flo-seg-merge-bench"), driver_memory=args.driver_memory)
    spark = build_session(
        settings,
        extra_conf={
            "spark.local.dir": str(work / "spark-local"),
            "spark.sql.warehouse.dir": str(work / "warehouse"),
        },
    )
    run = RunSettings(
        work=work, batch=args.batch, repeats=args.repeats, rows_per_file=args.rows_per_file, maintain=args.maintain
    )
    meta: dict[str, object] = {
        "command": " ".join(["python -m benchmarks.merge_scaling", *(argv if argv is not None else sys.argv[1:])]),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(spark),
        "uptime_before": uptime_before,
        "layouts": {layout.name: asdict(layout) for layout in args.layouts},
        "settings": {k: str(v) for k, v in asdict(run).items()},
    }
    results: list[LayoutResult] = []

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        payload = {**meta, "results": [{**asdict(r), "merge_seconds": r.merge_seconds} for r in results]}
        out.write_text(json.dumps(payload, indent=2, default=str) + "\n")

    try:
        # JIT, class loading and Delta's first-use paths otherwise land on whichever layout runs first.
        warmup_rows = max(100_000, 2 * args.batch)
        warmup = replace(run, repeats=1, maintain=False, rows_per_file=warmup_rows // 2)
        _report(f"warm-up, not recorded: {warmup_rows:,} rows per layout")
        for layout in args.layouts:
            bench_layout(spark, warmup_rows, layout, warmup)
        for rows in args.sizes:
            for layout in args.layouts:
                results.append(bench_layout(spark, rows, layout, run))
                save()
    finally:
        meta["uptime_after"] = uptime()
        meta["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        save()
    print()
    print(markdown_table(results))
    print()
    print("\n".join(growth_lines(results)))
    print(f"\nuptime before: {uptime_before}\nuptime after:  {meta['uptime_after']}")
    print(f"results written to {out}")
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
