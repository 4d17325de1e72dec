"""History validation: each bad-input kind gets its reason, good rows pass untouched."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from batch.load import HistoryFileError, read_history
from batch.validate import REASON, parse_categories, validate_history
from schemas.history import HISTORY_COLUMN_NAMES

HEADER = ",".join(HISTORY_COLUMN_NAMES)
GOOD = "{id},Android App,Offline,2020-10-30,2021-02-26,2021-02-21,2021-02-26,4.0,1.0,139.99,799.38,{cats}"


def write_csv(tmp_path: Path, lines: list[str], header: str = HEADER) -> str:
    path = tmp_path / "history.csv"
    path.write_text(header + "\n" + "\n".join(lines) + "\n")
    return str(path)


def reasons(spark: SparkSession, path: str) -> dict[str | None, str | None]:
    rows = validate_history(read_history(spark, path)).select("raw_master_id", REASON).collect()
    return {r["raw_master_id"]: r[REASON] for r in rows}


def test_each_bad_input_kind_gets_its_reason(spark: SparkSession, tmp_path: Path) -> None:
    lines = [
        GOOD.format(id="ok1", cats="[KADIN]"),
        GOOD.format(id="ok2", cats="[]"),
        GOOD.format(id="ok3", cats='"[ERKEK, COCUK, AKTIFSPOR]"'),
        GOOD.format(id="", cats="[KADIN]"),
        "bad_date,Android App,Offline,2020-13-30,2021-02-26,2021-02-21,2021-02-26,4.0,1.0,139.99,799.38,[KADIN]",
        "no_date,Android App,Offline,,2021-02-26,2021-02-21,2021-02-26,4.0,1.0,139.99,799.38,[KADIN]",
        "text_count,Android App,Offline,2020-10-30,2021-02-26,2021-02-21,2021-02-26,four,1.0,139.99,799.38,[KADIN]",
        "neg_count,Android App,Offline,2020-10-30,2021-02-26,2021-02-21,2021-02-26,-4.0,1.0,139.99,799.38,[KADIN]",
        "frac_count,Android App,Offline,2020-10-30,2021-02-26,2021-02-21,2021-02-26,1.5,1.0,139.99,799.38,[KADIN]",
        "neg_value,Android App,Offline,2020-10-30,2021-02-26,2021-02-21,2021-02-26,4.0,1.0,-1,799.38,[KADIN]",
        "zero,Android App,Offline,2020-10-30,2021-02-26,,,0.0,0.0,0,0,[KADIN]",
        "backwards,Android App,Offline,2021-10-30,2021-02-26,2021-02-21,2021-02-26,4.0,1.0,139.99,799.38,[KADIN]",
        "pigeon,Carrier Pigeon,Offline,2020-10-30,2021-02-26,2021-02-21,2021-02-26,4.0,1.0,139.99,799.38,[KADIN]",
        GOOD.format(id="no_brackets", cats='"KADIN, ERKEK"'),
        GOOD.format(id="unknown_cat", cats='"[KADIN, SHOES]"'),
        "short,Android App,Offline,2020-10-30",
    ]
    got = reasons(spark, write_csv(tmp_path, lines))
    assert got == {
        "ok1": None,
        "ok2": None,
        "ok3": None,
        None: "missing_master_id",
        "bad_date": "bad_date",
        "no_date": "bad_date",
        "text_count": "bad_number",
        "neg_count": "bad_number",
        "frac_count": "bad_number",
        "neg_value": "bad_number",
        "zero": "no_orders",
        "backwards": "last_before_first",
        "pigeon": "unknown_channel",
        "no_brackets": "malformed_categories",
        "unknown_cat": "malformed_categories",
        "short": "malformed_row",
    }


def test_channel_date_may_be_empty_only_without_orders_on_that_channel(spark: SparkSession, tmp_path: Path) -> None:
    lines = [
        "store_only,Offline,Offline,2020-10-30,2021-02-26,,2021-02-26,0.0,3.0,139.99,0,[KADIN]",
        "missing_online,Android App,Offline,2020-10-30,2021-02-26,,2021-02-26,2.0,3.0,139.99,80,[KADIN]",
    ]
    assert reasons(spark, write_csv(tmp_path, lines)) == {"store_only": None, "missing_online": "bad_date"}


def test_duplicates_keep_the_most_recent_record(spark: SparkSession, tmp_path: Path) -> None:
    lines = [
        "dup,Android App,Offline,2020-10-30,2021-02-26,2021-02-21,2021-02-26,4.0,1.0,139.99,799.38,[KADIN]",
        "dup,Android App,Offline,2020-10-30,2021-03-26,2021-02-21,2021-03-26,4.0,1.0,139.99,799.38,[KADIN]",
        "dup,Android App,Offline,2020-10-30,2021-03-26,2021-02-21,2021-03-26,4.0,1.0,139.99,799.38,[ERKEK]",
        "dup,Pigeon,Offline,2020-10-30,2021-05-26,2021-02-21,2021-05-26,4.0,1.0,139.99,799.38,[KADIN]",
    ]
    rows = (
        validate_history(read_history(spark, write_csv(tmp_path, lines)))
        .orderBy("row_order")
        .select("last_order_date", "interested_in_categories_12", REASON)
        .collect()
    )
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (dt.date(2021, 2, 26), ["KADIN"], "duplicate_master_id"),
        (dt.date(2021, 3, 26), ["KADIN"], None),  # latest date, first in the file among equals
        (dt.date(2021, 3, 26), ["ERKEK"], "duplicate_master_id"),
        (dt.date(2021, 5, 26), ["KADIN"], "unknown_channel"),  # invalid rows never win a duplicate
    ]


def test_parse_categories_normalises_and_rejects(spark: SparkSession) -> None:
    df = spark.createDataFrame(
        [("[KADIN]",), ("[ kadin ,ERKEK ]",), ("[]",), ("KADIN",), (None,), ("[KADIN,,ERKEK]",)], "raw string"
    )
    got = [r[0] for r in df.select(parse_categories(F.col("raw"))).collect()]
    assert got == [["KADIN"], ["KADIN", "ERKEK"], [], None, None, None]


def test_categories_with_an_item_spaced_inside_or_empty_are_refused(spark: SparkSession) -> None:
    df = spark.createDataFrame(
        [("[KAD IN]",), ("[,KADIN]",), ("[KADIN,]",), ("[ , ]",), ("[KADIN, KADIN]",)], "raw string"
    )
    got = [r[0] for r in df.select(parse_categories(F.col("raw"))).collect()]
    assert got == [None, None, None, None, ["KADIN"]]


def test_validation_shuffles_once_and_evaluates_no_lambdas(spark: SparkSession, tmp_path: Path) -> None:
    # Spread by master_id once, before the checks: the de-duplication window reuses that partitioning.
    # Higher-order functions (transform, filter, forall) run interpreted, row by row: none in the checks.
    validated = validate_history(read_history(spark, write_csv(tmp_path, [GOOD.format(id="a", cats="[KADIN]")])))
    plan = validated._jdf.queryExecution().executedPlan().toString()
    assert plan.count("Exchange") == 1, plan
    assert "REPARTITION_BY_COL" in plan, plan  # the spread itself, not a shuffle the window asked for
    assert "lambdafunction" not in plan.lower(), plan


def test_header_without_required_columns_is_refused(spark: SparkSession, tmp_path: Path) -> None:
    header = HEADER.replace("last_order_channel,", "").replace(",interested_in_categories_12", "")
    path = write_csv(tmp_path, ["x"], header=header)
    with pytest.raises(HistoryFileError, match="last_order_channel, interested_in_categories_12"):
        read_history(spark, path)


def test_columns_are_matched_by_name_not_position(spark: SparkSession, tmp_path: Path) -> None:
    names = list(reversed(HISTORY_COLUMN_NAMES))
    values = dict(zip(HISTORY_COLUMN_NAMES, GOOD.format(id="rev", cats="[KADIN]").split(","), strict=True))
    path = write_csv(tmp_path, [",".join(values[n] for n in names)], header=",".join(names))
    row = validate_history(read_history(spark, path)).first()
    assert row is not None
    assert (row["master_id"], row[REASON], row["order_num_total_ever_online"]) == ("rev", None, 4.0)


# ----------------------------------------------------------------------------- hostile files
def hostile_lines() -> list[str]:
    """Good rows around rows that used to kill the job or make fake customers."""
    lines = [GOOD.format(id=f"ok{i}", cats="[KADIN]") for i in range(5)]
    lines += [
        "future,Android App,Offline,2020-10-30,2099-01-01,2021-02-21,2099-01-01,4.0,1.0,139.99,799.38,[KADIN]",
        "ancient,Android App,Offline,1970-01-01,2021-02-26,2021-02-21,2021-02-26,4.0,1.0,139.99,799.38,[KADIN]",
        GOOD.format(id="huge_field", cats='"[' + "KADIN," * 900_000 + 'KADIN]"'),
        "wide," + ",".join(["x"] * 30_000),
        GOOD.format(id='"line1\nline2"', cats="[KADIN]"),
        GOOD.format(id='"has space"', cats="[KADIN]"),
        GOOD.format(id='"quo\'te"', cats="[KADIN]"),
        "many_orders,Android App,Offline,2020-10-30,2021-02-26,2021-02-21,2021-02-26,4000000.0,1.0,139.99,799.38,[KADIN]",
        "rich,Android App,Offline,2020-10-30,2021-02-26,2021-02-21,2021-02-26,4.0,1.0,139.99,1e308,[KADIN]",
        "richer,Android App,Offline,2020-10-30,2021-02-26,2021-02-21,2021-02-26,4.0,1.0,139.99,99999999999999,[KADIN]",
        "minus_zero,Android App,Offline,2020-10-30,2021-02-26,2021-02-21,2021-02-26,-0,1.0,139.99,799.38,[KADIN]",
        "free_online,Android App,Offline,2020-10-30,2021-02-26,,2021-02-26,0,1.0,139.99,799.38,[KADIN]",
        "early_online,Android App,Offline,2020-10-30,2021-02-26,2019-01-01,2021-02-26,4.0,1.0,139.99,799.38,[KADIN]",
    ]
    return lines


def test_hostile_rows_are_quarantined_and_the_others_kept(spark: SparkSession, tmp_path: Path) -> None:
    path = write_csv(tmp_path, hostile_lines())
    rows = validate_history(read_history(spark, path)).select("raw_master_id", REASON, "detail").collect()
    got = {r["raw_master_id"]: r[REASON] for r in rows}
    assert len(rows) == 18  # one record per CSV record: the quoted newline does not split a row
    assert got == {
        **{f"ok{i}": None for i in range(5)},
        "future": "date_out_of_range",
        "ancient": "date_out_of_range",
        "huge_field": "oversized_field",
        "wide": "malformed_row",
        "line1\nline2": "bad_master_id",
        "has space": "bad_master_id",
        "quo'te": "bad_master_id",
        "many_orders": "bad_number",
        "rich": "bad_number",
        "richer": "bad_number",
        "minus_zero": "bad_number",
        "free_online": "inconsistent_channel",
        "early_online": "inconsistent_channel",
    }
    details = {r["raw_master_id"]: r["detail"] for r in rows}
    assert details["future"].startswith(f"before 2000-01-01 or after {dt.date.today()}: ")
    assert "last_order_date 2099-01-01" in details["future"]
    assert details["huge_field"] == "longer than 1000 characters: interested_in_categories_12"
    assert details["free_online"] == "order_num_total_ever_online is 0 but customer_value_total_ever_online is not"
    assert details["early_online"] == "last_order_date_online outside first_order_date..last_order_date"


def test_a_date_after_the_analysis_date_is_quarantined(spark: SparkSession, tmp_path: Path) -> None:
    path = write_csv(
        tmp_path,
        [
            GOOD.format(id="before", cats="[KADIN]"),
            GOOD.format(id="x", cats="[KADIN]").replace("2021-02-26", "2021-03-26"),
        ],
    )
    rows = validate_history(read_history(spark, path), latest_date=dt.date(2021, 3, 1)).collect()
    assert {r["raw_master_id"]: r[REASON] for r in rows} == {"before": None, "x": "date_out_of_range"}
    assert next(r["detail"] for r in rows if r[REASON]) == (
        "before 2000-01-01 or after 2021-03-01: last_order_date 2021-03-26, last_order_date_offline 2021-03-26"
    )


def test_a_quarantined_raw_record_is_cut_to_a_bounded_size(spark: SparkSession, tmp_path: Path) -> None:
    from batch.validate import MAX_RAW_RECORD_CHARS, raw_record

    path = write_csv(tmp_path, [GOOD.format(id="huge", cats='"[' + "KADIN," * 100_000 + 'KADIN]"')])
    record = validate_history(read_history(spark, path)).select(raw_record()).first()[0]  # type: ignore[index]
    assert len(record) < MAX_RAW_RECORD_CHARS + 100
    assert record.endswith(" characters in all]")


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (HEADER.replace(",", ";"), "looks semicolon-separated"),
        (HEADER + ",master_id", r"names column\(s\) more than once: master_id"),
        ("x" * 200_000, "lacks required column"),
        (HEADER + "," + ",".join(f"c{i}" for i in range(5_000)), "header of 5012 columns"),
        ('"' + "x" * 200_000, "cannot be read as CSV|lacks required"),
        ("\x1b[2J\x1b[31mmaster_id,x", r"header was: \\x1b\[2J\\x1b\[31mmaster_id, x"),
    ],
)
def test_an_unusable_header_is_refused_in_one_line(
    spark: SparkSession, tmp_path: Path, header: str, message: str
) -> None:
    path = write_csv(tmp_path, [GOOD.format(id="a", cats="[KADIN]")], header=header)
    with pytest.raises(HistoryFileError, match=message) as refused:
        read_history(spark, path)
    assert "\n" not in str(refused.value) and len(str(refused.value)) < 2_000
    assert "\x1b" not in str(refused.value)
