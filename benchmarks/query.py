"""`python -m benchmarks.query`: wall time of `flo-seg query` per engine, as a person at a shell sees it.

Each run is a fresh `flo-seg --lake L query SQL --format csv --engine E` process, timed from its start to
its exit (interpreter, imports, for Spark the JVM and session start, reading the Delta log, the query,
printing). Two queries over the lake's customer tables: a GROUP BY over `customer_segments` and a join
of `customer_state` with `customer_segments`. The Spark engine, measured in the same run, is the
baseline; both engines' outputs must be equal. Target: native ≤ 2 s wall for each query at 1M customers.

The lake is `--lake` (read only), or else one of `--customers` generated customers trained under
`--work` (built once, reused). With `--deletion-vectors`, a copy under `--work` first gets one in ten
customers of each table rewritten by a Delta UPDATE, so every file carries a deletion vector as the
compaction's MERGEs leave them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute
from deltalake import DeltaTable, QueryBuilder

QUERIES = {
    "group-by": "SELECT segment, count(*) AS customers, avg(recency) AS mean_recency, "
    "avg(monetary) AS mean_monetary FROM customer_segments GROUP BY segment ORDER BY segment",
    "join": "SELECT s.segment, c.order_channel, count(*) AS customers, "
    "sum(c.customer_value_total_ever_online + c.customer_value_total_ever_offline) AS spend "
    "FROM customer_state c JOIN customer_segments s ON c.master_id = s.master_id "
    "GROUP BY s.segment, c.order_channel ORDER BY s.segment, c.order_channel",
}
ENGINES = ("native", "spark")
TABLES = ("customer_state", "customer_segments")
TARGET_S = 2.0
FLO_SEG = [sys.executable, "-m", "flo_seg.cli"]


def build_lake(work: Path, customers: int, seed: int) -> Path:
    """A lake trained on `customers` generated customers (k = 4), built once under `work`."""
    lake = work / f"query-lake-{customers}-s{seed}"
    marker = lake.with_suffix(".built")
    if marker.exists():
        return lake
    shutil.rmtree(lake, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    history = work / f"history-{customers}-s{seed}.csv"
    for args in (
        ["generate", "--customers", str(customers), "--seed", str(seed), "--out", str(history)],
        ["--lake", str(lake), "train", "--history", str(history), "--k", "4", "--seed", str(seed)],
    ):
        print("building the lake: flo-seg " + " ".join(args), file=sys.stderr, flush=True)
        subprocess.run([*FLO_SEG, *args], check=True, stdout=subprocess.DEVNULL)
    history.unlink()
    marker.write_text("built\n")
    return lake


def with_deletion_vectors(lake: Path, work: Path) -> Path:
    """A copy of the customer tables in which one customer in ten was rewritten by a Delta UPDATE."""
    from flo_seg.settings import default_spark_settings
    from flo_seg.spark import build_session

    copy = work / f"{lake.name}-dv"
    shutil.rmtree(copy, ignore_errors=True)
    copy.mkdir(parents=True)
    for name in TABLES:
        shutil.copytree(lake / name, copy / name)
    spark = build_session(default_spark_settings("flo-seg-query-bench"))
    for name in TABLES:
        spark.sql(f"UPDATE delta.`{copy / name}` SET master_id = master_id WHERE abs(hash(master_id)) % 10 = 0")
    spark.stop()
    return copy


def layout(lake: Path) -> dict[str, dict[str, int]]:
    """Data files, the rows in them and the rows left once deletion vectors apply, per customer table."""
    info = {}
    for name in TABLES:
        table = DeltaTable(str(lake / name))
        actions = pa.table(table.get_add_actions(flatten=True))
        count = pa.table(QueryBuilder().register("t", table).execute("SELECT count(*) AS n FROM t"))
        info[name] = {
            "files": actions.num_rows,
            "rows_in_files": int(pa.compute.sum(actions["num_records"]).as_py() or 0),
            "rows": int(count["n"][0].as_py()),
        }
    return info


def run_once(lake: Path, engine: str, sql: str) -> tuple[float, str]:
    """Seconds from the start of a fresh `flo-seg query` process to its exit, and what it printed."""
    command = [*FLO_SEG, "--lake", str(lake), "query", sql, "--format", "csv", "--limit", "100000"]
    started = time.perf_counter()
    done = subprocess.run([*command, "--engine", engine], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"flo-seg query --engine {engine} failed: {done.stderr.strip()[-500:]}")
    return seconds, done.stdout


def _rounded(csv_text: str) -> list[list[str]]:
    """Rows with numbers to 6 significant digits: the engines sum doubles in different orders."""

    def cell(text: str) -> str:
        try:
            return f"{float(text):.6g}"
        except ValueError:
            return text

    return [[cell(c) for c in line.split(",")] for line in csv_text.splitlines()]


def measure(lake: Path, repeats: int) -> list[dict[str, object]]:
    results = []
    for query, sql in QUERIES.items():
        outputs = {}
        for engine in ENGINES:
            runs = []
            for _ in range(repeats):
                seconds, printed = run_once(lake, engine, sql)
                runs.append(round(seconds, 3))
            outputs[engine] = printed
            results.append(
                {
                    "query": query,
                    "engine": engine,
                    "runs_s": runs,
                    "median_s": round(statistics.median(runs), 3),
                    "min_s": min(runs),
                    "rows": len(printed.splitlines()) - 1,
                }
            )
            print(f"  {query} {engine}: {runs}", file=sys.stderr, flush=True)
        if _rounded(outputs["native"]) != _rounded(outputs["spark"]):
            raise RuntimeError(f"{query}: the engines printed different results")
    return results


def markdown(results: list[dict[str, object]], info: dict[str, object]) -> str:
    lines = [
        f"lake {info['lake']} ({info['layout']})",
        f"{os.cpu_count()} cores, load average at start {info['load_average']}",
        "",
        "| query | engine | median s | min s | runs | rows | vs spark | target ≤ 2 s |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | --- |",
    ]
    spark = {r["query"]: r["median_s"] for r in results if r["engine"] == "spark"}
    for r in results:
        median = float(r["median_s"])  # type: ignore[arg-type]
        ratio = float(spark[r["query"]]) / median  # type: ignore[arg-type]
        verdict = ("MET" if median <= TARGET_S else "MISSED") if r["engine"] == "native" else "baseline"
        runs = ", ".join(f"{s:.2f}" for s in r["runs_s"])  # type: ignore[attr-defined]
        lines.append(
            f"| {r['query']} | {r['engine']} | {median:.2f} | {float(r['min_s']):.2f} | {runs} | {r['rows']} "  # type: ignore[arg-type]
            f"| {ratio:.1f}× | {verdict} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.query", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lake", type=Path, help="an existing lake to query (never written)")
    parser.add_argument("--customers", type=int, default=1_000_000, help="without --lake: customers to generate")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--work", type=Path, default=Path("/tmp/flo-query-bench"), help="scratch folder")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per query and engine")
    parser.add_argument(
        "--deletion-vectors", action="store_true", help="query a copy whose every file has a deletion vector"
    )
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    lake = args.lake.resolve() if args.lake else build_lake(args.work, args.customers, args.seed)
    if args.deletion_vectors:
        lake = with_deletion_vectors(lake, args.work)
    tables = layout(lake)
    info: dict[str, object] = {
        "lake": str(lake),
        "layout": "; ".join(
            f"{name}: {t['rows']:,} rows, {t['rows_in_files'] - t['rows']:,} more hidden by deletion vectors, "
            f"in {t['files']} files"
            for name, t in tables.items()
        ),
        "load_average": os.getloadavg(),
    }
    results = measure(lake, args.repeats)
    print(markdown(results, info))
    if args.out:
        args.out.write_text(json.dumps({**info, "tables": tables, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
