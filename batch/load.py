"""Reading the customer-history CSV: header checked first, every value read as text."""

from __future__ import annotations

import csv
import io

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from batch.validate import ROW_ORDER
from schemas.history import CORRUPT_RECORD_COLUMN, missing_columns, raw_history_schema


class HistoryFileError(ValueError):
    """The history file cannot be used at all (unreadable, empty, or required columns missing)."""


def read_header(spark: SparkSession, path: str) -> list[str]:
    """The CSV header, read through Spark so any path the cluster can read works (s3a://, hdfs://)."""
    try:
        first = spark.read.text(path).limit(1).collect()
    except Exception as exc:  # Spark raises AnalysisException and friends for absent paths
        raise HistoryFileError(f"cannot read history file {path}: {exc}") from exc
    if not first:
        raise HistoryFileError(f"history file {path} is empty")
    line = first[0][0].lstrip("\ufeff")
    return [h.strip() for h in next(csv.reader(io.StringIO(line)))]


def check_header(header: list[str], path: str) -> None:
    """Refuse a file whose header lacks required columns, naming them."""
    missing = missing_columns(header)
    if missing:
        raise HistoryFileError(
            f"history file {path} lacks required column(s) {', '.join(missing)}; header was: {', '.join(header)}"
        )


def read_history(spark: SparkSession, path: str) -> DataFrame:
    """Raw history rows as strings in file order (`row_order`), malformed lines kept for quarantine."""
    header = read_header(spark, path)
    check_header(header, path)
    df = (
        spark.read.schema(raw_history_schema(header))
        .option("header", True)
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", CORRUPT_RECORD_COLUMN)
        .option("enforceSchema", True)
        .csv(path)
    )
    # File order breaks ties in the notebooks' frequency ranking; this id is monotonic in file order.
    return df.withColumn(ROW_ORDER, F.monotonically_increasing_id())
