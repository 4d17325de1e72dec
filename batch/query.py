"""`flo-seg query`: Spark SQL over the lake's tables, registered under their own names."""

from __future__ import annotations

import csv
import json
import sys
from typing import TextIO

from pyspark.sql import DataFrame, SparkSession

from batch.lake import read_table, table_exists
from flo_seg.settings import LakeSettings
from schemas.tables import TABLE_SCHEMAS

FORMATS = ("table", "csv", "json")


def register_tables(spark: SparkSession, lake: LakeSettings) -> list[str]:
    """Temp views for every table that exists; returns their names."""
    names = []
    for name in TABLE_SCHEMAS:
        if table_exists(spark, lake, name):
            read_table(spark, lake, name).createOrReplaceTempView(name)
            names.append(name)
    return names


def write_result(df: DataFrame, fmt: str, limit: int, out: TextIO | None = None) -> int:
    """Print up to `limit` rows as an aligned table, CSV or JSON lines; returns the rows printed."""
    out = out or sys.stdout
    rows = df.limit(limit).collect()
    columns = df.columns
    if fmt == "json":
        for r in rows:
            out.write(json.dumps(r.asDict(recursive=True), default=str, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(columns)
        writer.writerows([[_text(v) for v in r] for r in rows])
    else:
        cells = [[_text(v) for v in r] for r in rows]
        widths = [max([len(c), *[len(row[i]) for row in cells]]) for i, c in enumerate(columns)]
        out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip() + "\n")
        out.write("  ".join("-" * w for w in widths) + "\n")
        for row in cells:
            out.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() + "\n")
        out.write(f"({len(rows)} row{'s' if len(rows) != 1 else ''})\n")
    return len(rows)


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


def run_query(spark: SparkSession, lake: LakeSettings, sql: str, *, fmt: str, limit: int) -> int:
    """Run one SQL statement over the lake's tables and print its result."""
    if not register_tables(spark, lake):
        raise FileNotFoundError(f"no tables under {lake.root}; run `flo-seg train` first")
    return write_result(spark.sql(sql), fmt, limit)
