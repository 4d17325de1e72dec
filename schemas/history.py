"""The customer-history contract: one row per customer, the 12 FLO columns."""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import types as T

CHANNELS: tuple[str, ...] = ("Android App", "Ios App", "Desktop", "Mobile", "Offline")
ONLINE_CHANNELS: tuple[str, ...] = ("Android App", "Ios App", "Desktop", "Mobile")
CATEGORIES: tuple[str, ...] = ("KADIN", "ERKEK", "COCUK", "AKTIFSPOR", "AKTIFCOCUK")

# The valid ranges of a history row, stated once (README, validation and the stream's state all follow them).
EARLIEST_DATE = "2000-01-01"
MAX_ORDERS_PER_CHANNEL = 100_000
MAX_CUSTOMER_VALUE = 1_000_000_000.0
# Customer (and event) ids are plain identifiers: no spaces, quotes, newlines or control characters.
IDENTIFIER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
# No FLO value is longer; a longer field is refused before any parsing looks at it.
MAX_FIELD_CHARS = 1_000
# A header or row with more fields than this cannot be the 12 FLO columns (the CSV parser's own cap is higher).
MAX_HEADER_COLUMNS = 1_000
# Fields per record the CSV parser accepts; a record with more is quarantined, not a failed job.
MAX_PARSED_COLUMNS = 1_000_000


@dataclass(frozen=True, kw_only=True)
class HistoryColumn:
    """One column of the history CSV and the type it is parsed into after validation."""

    name: str
    kind: str  # "id" | "channel" | "date" | "count" | "amount" | "categories"


HISTORY_COLUMNS: tuple[HistoryColumn, ...] = (
    HistoryColumn(name="master_id", kind="id"),
    HistoryColumn(name="order_channel", kind="channel"),
    HistoryColumn(name="last_order_channel", kind="channel"),
    HistoryColumn(name="first_order_date", kind="date"),
    HistoryColumn(name="last_order_date", kind="date"),
    HistoryColumn(name="last_order_date_online", kind="date"),
    HistoryColumn(name="last_order_date_offline", kind="date"),
    HistoryColumn(name="order_num_total_ever_online", kind="count"),
    HistoryColumn(name="order_num_total_ever_offline", kind="count"),
    HistoryColumn(name="customer_value_total_ever_offline", kind="amount"),
    HistoryColumn(name="customer_value_total_ever_online", kind="amount"),
    HistoryColumn(name="interested_in_categories_12", kind="categories"),
)

HISTORY_COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in HISTORY_COLUMNS)
CORRUPT_RECORD_COLUMN = "_corrupt_record"

_SPARK_TYPES: dict[str, T.DataType] = {
    "id": T.StringType(),
    "channel": T.StringType(),
    "date": T.DateType(),
    "count": T.DoubleType(),
    "amount": T.DoubleType(),
    "categories": T.ArrayType(T.StringType()),
}


def spark_regex(pattern: str) -> str:
    """A JSON Schema pattern for Spark's `rlike`: Java's `$` also matches before a final newline, `\\z` does not."""
    return pattern[:-1] + r"\z" if pattern.endswith("$") else pattern


def columns_of_kind(kind: str) -> tuple[str, ...]:
    """Names of the history columns parsed the same way, so validation rules stay data-driven."""
    return tuple(c.name for c in HISTORY_COLUMNS if c.kind == kind)


def raw_history_schema(header: list[str]) -> T.StructType:
    """All-string schema in the file's own column order: values are parsed later, never inferred."""
    fields = [T.StructField(name, T.StringType(), True) for name in header]
    fields.append(T.StructField(CORRUPT_RECORD_COLUMN, T.StringType(), True))
    return T.StructType(fields)


def typed_history_schema() -> T.StructType:
    """The history columns as validation parses them (counts stay doubles, as FLO ships them)."""
    return T.StructType([T.StructField(c.name, _SPARK_TYPES[c.kind], True) for c in HISTORY_COLUMNS])


def missing_columns(header: list[str]) -> list[str]:
    """Required history columns absent from a file header."""
    present = {h.strip() for h in header}
    return [name for name in HISTORY_COLUMN_NAMES if name not in present]
