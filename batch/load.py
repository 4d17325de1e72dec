"""Reading the customer-history CSV: header checked first, every value read as text."""

from __future__ import annotations

import csv
import io

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from batch.validate import ROW_ORDER
from flo_seg.errors import first_line
from schemas.history import (
    CORRUPT_RECORD_COLUMN,
    MAX_HEADER_COLUMNS,
    MAX_PARSED_COLUMNS,
    missing_columns,
    raw_history_schema,
)

# Python's csv module refuses a field over 128 KiB by default; a header is read with this limit instead.
_HEADER_FIELD_LIMIT = 16 * 1024 * 1024


class HistoryFileError(ValueError):
    """The history file cannot be used at all (unreadable, empty, or required columns missing)."""


def read_header(spark: SparkSession, path: str) -> list[str]:
    """The CSV header, read through Spark so any path the cluster can read works (s3a://, hdfs://)."""
    try:
        first = spark.read.text(path).limit(1).collect()
    except Exception as exc:  # Spark raises AnalysisException and friends for absent paths
        raise HistoryFileError(f"cannot read history file {path}: {first_line(exc, type(exc).__name__)}") from exc
    if not first:
        raise HistoryFileError(f"history file {path} is empty")
    line = first[0][0].lstrip("\ufeff")
    limit = csv.field_size_limit()
    try:
        csv.field_size_limit(_HEADER_FIELD_LIMIT)
        return [h.strip() for h in next(csv.reader(io.StringIO(line)), [])]
    except csv.Error as exc:
        raise HistoryFileError(f"history file {path}: the header line cannot be read as CSV ({exc})") from exc
    finally:
        csv.field_size_limit(limit)


def _printable(text: str, width: int = 40) -> str:
    """Header text safe to print: control characters escaped (no terminal codes), cut to `width`."""
    safe = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return safe if len(safe) <= width else safe[:width] + "…"


def check_header(header: list[str], path: str) -> None:
    """Refuse a header that cannot be the FLO columns, saying why in one line, before any work starts."""
    if len(header) > MAX_HEADER_COLUMNS:
        raise HistoryFileError(
            f"history file {path} has a header of {len(header)} columns (at most {MAX_HEADER_COLUMNS}); "
            "expected the 12 FLO columns"
        )
    if len(header) == 1 and header[0].count(";") >= 2:
        raise HistoryFileError(
            f"history file {path} looks semicolon-separated; flo-seg reads comma-separated CSV "
            "(values with commas in double quotes)"
        )
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        names = ", ".join(_printable(h) for h in repeated)
        raise HistoryFileError(f"history file {path} names column(s) more than once: {names}")
    missing = missing_columns(header)
    if missing:
        shown = ", ".join(_printable(h) for h in header[:20])
        raise HistoryFileError(
            f"history file {path} lacks required column(s) {', '.join(missing)}; header was: {shown}"
            + (f" (and {len(header) - 20} more)" if len(header) > 20 else "")
        )


def read_history(spark: SparkSession, path: str, *, multi_line: bool = True) -> DataFrame:
    """Raw history rows as strings in file order (`row_order`), malformed lines kept for quarantine.

    Quoted values may hold newlines, as CSV allows (multiLine: each file is parsed by one task;
    `multi_line=False` splits files but cuts such a record in two, for benchmarks/history_parse.py). A record
    with more fields than the parser holds would abort the job; the cap is set far above any real row.
    """
    header = read_header(spark, path)
    check_header(header, path)
    df = (
        spark.read.schema(raw_history_schema(header))
        .option("header", True)
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", CORRUPT_RECORD_COLUMN)
        .option("enforceSchema", True)
        .option("multiLine", multi_line)
        .option("maxColumns", MAX_PARSED_COLUMNS)
        .csv(path)
    )
    # File order breaks ties in the notebooks' frequency ranking; this id is monotonic in file order.
    return df.withColumn(ROW_ORDER, F.monotonically_increasing_id())
