"""History validation: parse raw string rows, give every untrustworthy row one reason, dedupe customers."""

from __future__ import annotations

import datetime as dt

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from schemas.history import (
    CATEGORIES,
    CHANNELS,
    CORRUPT_RECORD_COLUMN,
    EARLIEST_DATE,
    HISTORY_COLUMN_NAMES,
    IDENTIFIER_PATTERN,
    MAX_CUSTOMER_VALUE,
    MAX_FIELD_CHARS,
    MAX_ORDERS_PER_CHANNEL,
    columns_of_kind,
    spark_regex,
)

ROW_ORDER = "row_order"
REASON = "reason"
DETAIL = "detail"

# One reason per row, the first that applies, so counts by reason add up to the rows quarantined.
REASONS: tuple[str, ...] = (
    "malformed_row",
    "oversized_field",
    "missing_master_id",
    "bad_master_id",
    "bad_date",
    "date_out_of_range",
    "bad_number",
    "no_orders",
    "last_before_first",
    "inconsistent_channel",
    "unknown_channel",
    "malformed_categories",
    "duplicate_master_id",
)

# Character classes only: a nested repeated group makes Java's regex engine recurse once per character.
# No higher-order functions (transform, filter, forall) on the hot path: Spark interprets them row by row.
_CATEGORY_TEXT = r"^\[[A-Za-z\s,]*\]$"
_EMPTY_ITEM = r"(^|,)\s*(,|$)"
_SPACED_ITEM = r"[A-Za-z]\s+[A-Za-z]"
# The quarantine keeps this much of a rejected row's raw record.
MAX_RAW_RECORD_CHARS = 65_536
_DATE_TEXT = r"^\d{4}-\d{2}-\d{2}$"
# No sign: every count and value is >= 0, and "-0" would slip past a `< 0` check.
_NUMBER_TEXT = r"^\s*\d+(\.\d+)?\s*$"


def parse_date(raw_col: Column) -> Column:
    """A strict yyyy-MM-dd date, null when absent or unparseable (never an exception under ANSI)."""
    text = F.trim(raw_col)
    return F.when(text.rlike(_DATE_TEXT), text.try_cast("date"))


def parse_number(raw_col: Column) -> Column:
    """A plain decimal number, null when absent or not a number."""
    return F.when(raw_col.rlike(_NUMBER_TEXT), F.trim(raw_col).try_cast("double"))


def parse_categories(raw_col: Column) -> Column:
    """`[A, B]` into an upper-case array; null when the text is not a list of words."""
    text = F.trim(raw_col)
    inner = F.trim(F.regexp_replace(text, r"^\[|\]$", ""))
    # Past the character check, a list is malformed only by an empty item or a space inside one.
    well_formed = (inner == "") | (~inner.rlike(_EMPTY_ITEM) & ~inner.rlike(_SPACED_ITEM))
    items = F.array_distinct(F.split(F.upper(inner), r"\s*,\s*"))
    return F.when(text.rlike(_CATEGORY_TEXT) & well_formed, F.when(inner == "", F.array()).otherwise(items))


def _is_oversized(raw_col: Column) -> Column:
    return F.coalesce(F.length(raw_col) > MAX_FIELD_CHARS, F.lit(False))


def with_master_id(raw_df: DataFrame) -> DataFrame:
    """master_id trimmed (null when blank or oversized), its text kept as `raw_master_id`."""
    raw = F.col("master_id")
    return raw_df.withColumns(
        {"raw_master_id": raw, "master_id": F.nullif(F.trim(F.when(~_is_oversized(raw), raw)), F.lit(""))}
    )


def with_parsed_fields(df: DataFrame) -> DataFrame:
    """Typed dates, numbers and categories in place of their text, null when unreadable; each raw text
    kept beside its field (`raw_<name>`).

    An oversized field is never parsed (it is quarantined): a regex over megabytes can exhaust the stack.
    """
    others = [name for name in HISTORY_COLUMN_NAMES if name != "master_id"]
    df = df.withColumns(
        {
            **{f"raw_{name}": F.col(name) for name in others},
            **{name: F.when(~_is_oversized(F.col(name)), F.col(name)) for name in others},
        }
    )
    parsed = {name: F.trim(F.col(name)) for name in columns_of_kind("channel")}
    parsed |= {name: parse_date(F.col(name)) for name in columns_of_kind("date")}
    parsed |= {name: parse_number(F.col(name)) for name in columns_of_kind("count") + columns_of_kind("amount")}
    parsed["interested_in_categories_12"] = parse_categories(F.col("interested_in_categories_12"))
    return df.withColumns(parsed)


def _any(cols: list[Column]) -> Column:
    out = F.lit(False)
    for c in cols:
        out = out | c
    return out


def _rejection_checks(latest_date: Column) -> list[tuple[str, Column, Column]]:
    """(reason, failed?, detail) in priority order; each check may assume the earlier ones passed."""
    counts, amounts = columns_of_kind("count"), columns_of_kind("amount")
    dates = columns_of_kind("date")
    # Each list holds one text per failing field or rule, null for the others (concat_ws skips nulls).
    oversized = [F.when(_is_oversized(F.col(f"raw_{n}")), F.lit(n)) for n in HISTORY_COLUMN_NAMES]
    earliest = F.lit(EARLIEST_DATE).cast("date")
    out_of_range = [
        F.when((F.col(d) < earliest) | (F.col(d) > latest_date), F.concat(F.lit(f"{d} "), F.col(d).cast("string")))
        for d in dates
    ]
    dates_required = ("first_order_date", "last_order_date")
    channel_dates = {
        "last_order_date_online": "order_num_total_ever_online",
        "last_order_date_offline": "order_num_total_ever_offline",
    }
    # A channel's totals and last-order date agree with each other and with the customer's dates.
    inconsistent = [
        *[
            F.when((F.col(c) == 0) & (F.col(v) > 0), F.lit(f"{c} is 0 but {v} is not"))
            for c, v in (
                ("order_num_total_ever_online", "customer_value_total_ever_online"),
                ("order_num_total_ever_offline", "customer_value_total_ever_offline"),
            )
        ],
        *[
            F.when(
                (F.col(d) < F.col("first_order_date")) | (F.col(d) > F.col("last_order_date")),
                F.lit(f"{d} outside first_order_date..last_order_date"),
            )
            for d in channel_dates
        ],
    ]
    bad_date_checks = [F.col(d).isNull() for d in dates_required]
    # A channel's last-order date may only be empty when the customer never ordered on that channel.
    bad_date_checks += [
        F.col(d).isNull() & (F.col(f"raw_{d}").isNotNull() | (F.coalesce(F.col(c), F.lit(1.0)) > 0))
        for d, c in channel_dates.items()
    ]
    bad_number_checks = [
        F.col(c).isNull() | (F.col(c) < 0) | (F.col(c) > MAX_ORDERS_PER_CHANNEL) | (F.col(c) != F.floor(F.col(c)))
        for c in counts
    ]
    bad_number_checks += [F.col(a).isNull() | (F.col(a) < 0) | (F.col(a) > MAX_CUSTOMER_VALUE) for a in amounts]
    known = F.array(*[F.lit(c) for c in CATEGORIES])
    category_ok = F.size(F.array_except(F.col("interested_in_categories_12"), known)) == 0
    return [
        ("malformed_row", F.col(CORRUPT_RECORD_COLUMN).isNotNull(), F.lit("column count or quoting")),
        (
            "oversized_field",
            F.coalesce(*oversized).isNotNull(),
            F.concat(F.lit(f"longer than {MAX_FIELD_CHARS} characters: "), F.concat_ws(", ", *oversized)),
        ),
        ("missing_master_id", F.col("master_id").isNull(), F.lit(None)),
        (
            "bad_master_id",
            ~F.col("master_id").rlike(spark_regex(IDENTIFIER_PATTERN)),
            F.concat(F.lit("not a plain identifier: "), F.to_json(F.array("master_id"))),
        ),
        ("bad_date", _any(bad_date_checks), F.lit("missing or not yyyy-MM-dd")),
        (
            "date_out_of_range",
            F.coalesce(*out_of_range).isNotNull(),
            F.concat(
                F.lit(f"before {EARLIEST_DATE} or after "),
                latest_date.cast("string"),
                F.lit(": "),
                F.concat_ws(", ", *out_of_range),
            ),
        ),
        (
            "bad_number",
            _any(bad_number_checks),
            F.lit(
                f"count or value missing, non-numeric or negative, or over {MAX_ORDERS_PER_CHANNEL} orders "
                f"or {MAX_CUSTOMER_VALUE:.0f} in value"
            ),
        ),
        ("no_orders", (F.col(counts[0]) + F.col(counts[1])) <= 0, F.lit("online + offline orders = 0")),
        (
            "last_before_first",
            F.col("last_order_date") < F.col("first_order_date"),
            F.concat_ws(" < ", F.col("raw_last_order_date"), F.col("raw_first_order_date")),
        ),
        (
            "inconsistent_channel",
            F.coalesce(*inconsistent).isNotNull(),
            F.concat_ws("; ", *inconsistent),
        ),
        (
            "unknown_channel",
            _any([~F.coalesce(F.col(c).isin(list(CHANNELS)), F.lit(False)) for c in columns_of_kind("channel")]),
            F.concat_ws(" / ", *[F.col(c) for c in columns_of_kind("channel")]),
        ),
        (
            "malformed_categories",
            F.col("interested_in_categories_12").isNull() | ~category_ok,
            F.col("raw_interested_in_categories_12"),
        ),
    ]


def with_first_failure(df: DataFrame, checks: list[tuple[str, Column, Column]]) -> DataFrame:
    """`reason`/`detail` of the first check that fails (or cannot be evaluated), nulls when all pass.

    Each condition is evaluated once per row: the reason comes first, then only the failed check's
    detail. (One CASE chain per column would evaluate every condition of a valid row twice.)
    """
    reason: Column = F.lit(None).cast("string")
    detail: Column = F.lit(None).cast("string")
    for name, failed, why in reversed(checks):
        reason = F.when(F.coalesce(failed, F.lit(True)), F.lit(name)).otherwise(reason)
        detail = F.when(F.col(REASON) == F.lit(name), why.cast("string")).otherwise(detail)
    return df.withColumn(REASON, reason).withColumn(DETAIL, detail)


def with_rejection_reason(parsed_df: DataFrame, latest_date: Column) -> DataFrame:
    """`reason`/`detail` set to the first failed check, null for a trustworthy row."""
    return with_first_failure(parsed_df, _rejection_checks(latest_date))


def with_duplicates_flagged(df: DataFrame) -> DataFrame:
    """Among valid rows, keep the most recent record per master_id (then the earliest in the file)."""
    is_valid = F.col(REASON).isNull()
    order = Window.partitionBy("master_id", is_valid).orderBy(
        F.col("last_order_date").desc(),
        (F.col("order_num_total_ever_online") + F.col("order_num_total_ever_offline")).desc(),
        F.col(ROW_ORDER).asc(),
    )
    rank = F.when(is_valid, F.row_number().over(order))
    return (
        df.withColumn("_dup_rank", rank)
        .withColumn(
            REASON,
            F.when(is_valid & (F.col("_dup_rank") > 1), F.lit("duplicate_master_id")).otherwise(F.col(REASON)),
        )
        .withColumn(
            DETAIL,
            F.when(F.col(REASON) == "duplicate_master_id", F.lit("kept the most recent record")).otherwise(
                F.col(DETAIL)
            ),
        )
        .drop("_dup_rank")
    )


def validate_history(raw_df: DataFrame, *, latest_date: dt.date | None = None) -> DataFrame:
    """Parsed history with `reason` null for kept rows; duplicates of a kept customer are rejected.

    A date after `latest_date` (the analysis date; default the day of the run) cannot be history.
    """
    latest = F.current_date() if latest_date is None else F.lit(latest_date)
    return (
        raw_df.transform(with_master_id)
        # Spread by customer before the costly checks: they run in parallel even when the CSV came in one
        # task (multiLine reads a file whole), and the de-duplication below needs no shuffle of its own.
        .repartition("master_id")
        .transform(with_parsed_fields)
        .transform(with_rejection_reason, latest)
        .transform(with_duplicates_flagged)
    )


def raw_record() -> Column:
    """The row as it came in: the unparsed line for malformed rows, else its raw fields as JSON."""
    fields = F.struct(*[F.col(f"raw_{n}").alias(n) for n in HISTORY_COLUMN_NAMES])
    record = F.coalesce(F.col(CORRUPT_RECORD_COLUMN), F.to_json(fields))
    return F.when(
        F.length(record) > MAX_RAW_RECORD_CHARS,
        F.concat(
            F.substring(record, 1, MAX_RAW_RECORD_CHARS),
            F.lit("…[cut; "),
            F.length(record).cast("string"),
            F.lit(" characters in all]"),
        ),
    ).otherwise(record)
