"""Segment migration from the recorded changes: one SQL definition, the same matrix in both engines."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest
from pyspark.sql import SparkSession

from batch.lake import append_table
from batch.migrations import (
    COLUMNS,
    NEW,
    RETRAIN_BATCH_ID,
    matrix_cells,
    matrix_frame,
    matrix_text,
    migration_sql,
    read_migrations_native,
    read_migrations_spark,
    retrain_change_rows,
)
from batch.report import Table, migration_section
from flo_seg import cli
from flo_seg.settings import LakeSettings
from schemas.tables import SEGMENT_CHANGES, SEGMENT_CHANGES_SCHEMA

D1, D2, D8 = dt.date(2021, 6, 1), dt.date(2021, 6, 2), dt.date(2021, 6, 8)  # D1, D2: Tue, Wed; D8 next Tue
# (master_id, previous_segment, segment, day): c1 joins and moves on, c2 and c5 move from a to b, c3 back.
CHANGES = [
    ("c1", None, "a", D1),
    ("c2", "a", "b", D1),
    ("c1", "a", "b", D2),
    ("c3", "b", "a", D2),
    ("c4", None, "b", D2),
    ("c5", "a", "b", D8),
]


@pytest.fixture(scope="module")
def lake(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> LakeSettings:
    lake = LakeSettings(root=str(tmp_path_factory.mktemp("migrations") / "lake"))
    rows = [
        (f"id{i}", m, before, after, "v1", day, dt.datetime.combine(day, dt.time(10, i)), i)
        for i, (m, before, after, day) in enumerate(CHANGES)
    ]
    append_table(spark.createDataFrame(rows, SEGMENT_CHANGES_SCHEMA), lake, SEGMENT_CHANGES)
    return lake


def as_tuples(frame: pd.DataFrame) -> list[tuple[object, ...]]:
    return [
        (str(r["period"]), r["from_segment"], r["to_segment"], r["changes"], r["customers"], round(r["share"], 4))
        for r in frame.to_dict("records")
    ]


def test_the_matrix_counts_each_change_once_with_its_shares(lake: LakeSettings) -> None:
    moves = read_migrations_native(lake, migration_sql())
    assert as_tuples(moves) == [
        ("2021-06-01", "a", "b", 3, 3, 0.5),
        ("2021-06-01", NEW, "a", 1, 1, round(1 / 6, 4)),
        ("2021-06-01", NEW, "b", 1, 1, round(1 / 6, 4)),
        ("2021-06-01", "b", "a", 1, 1, round(1 / 6, 4)),
    ]
    assert int(moves["changes"].sum()) == len(CHANGES)
    assert dict(zip(moves["from_segment"] + ">" + moves["to_segment"], moves["share_of_from"], strict=True)) == {
        "a>b": 1.0,
        f"{NEW}>a": 0.5,
        f"{NEW}>b": 0.5,
        "b>a": 1.0,
    }


def test_a_window_and_periods_split_the_changes(lake: LakeSettings) -> None:
    window = read_migrations_native(lake, migration_sql(since=D2, until=D8))
    assert as_tuples(window) == [
        ("2021-06-02", NEW, "b", 1, 1, round(1 / 3, 4)),
        ("2021-06-02", "a", "b", 1, 1, round(1 / 3, 4)),
        ("2021-06-02", "b", "a", 1, 1, round(1 / 3, 4)),
    ]
    daily = read_migrations_native(lake, migration_sql(period="day"))
    assert {(str(p), int(n)) for p, n in daily.groupby("period")["changes"].sum().items()} == {
        ("2021-06-01", 2),
        ("2021-06-02", 3),
        ("2021-06-08", 1),
    }
    weekly = read_migrations_native(lake, migration_sql(period="week"))  # weeks start on Monday
    assert {(str(p), int(n)) for p, n in weekly.groupby("period")["changes"].sum().items()} == {
        ("2021-05-31", 5),
        ("2021-06-07", 1),
    }


@pytest.mark.parametrize("period", ["all", "day", "week", "month"])
def test_spark_sql_computes_the_same_matrix(spark: SparkSession, lake: LakeSettings, period: str) -> None:
    sql = migration_sql(since=D1, period=period)
    native = read_migrations_native(lake, sql)
    on_spark = read_migrations_spark(spark, lake, sql)
    assert list(on_spark.columns) == list(native.columns)
    assert as_tuples(on_spark) == as_tuples(native)
    assert [round(x, 6) for x in on_spark["share_of_from"]] == [round(x, 6) for x in native["share_of_from"]]


def test_the_printed_matrix_has_rows_from_and_columns_to(lake: LakeSettings) -> None:
    moves = read_migrations_native(lake, migration_sql())
    matrix = matrix_frame(moves)
    assert list(matrix.index) == [NEW, "a", "b"] and list(matrix.columns) == ["a", "b", "total"]
    assert matrix.to_dict("index") == {
        NEW: {"a": 1, "b": 1, "total": 2},
        "a": {"a": 0, "b": 3, "total": 3},
        "b": {"a": 1, "b": 0, "total": 1},
    }
    text = matrix_text(moves)
    assert text.splitlines()[0] == "2021-06-01: 6 changes"
    assert "3 (100%)" in text and "1 (50%)" in text
    assert matrix_text(moves.iloc[0:0]) == "no segment changes in the window\n"
    many = pd.DataFrame(
        [("2021-06-01", "a", "b", 999, 999, 0.999, 0.999), ("2021-06-01", "a", "c", 1, 1, 0.001, 0.001)],
        columns=list(COLUMNS),
    )
    assert matrix_cells(many).to_dict("index")["a"] == {"a": ".", "b": "999 (100%)", "c": "1 (<1%)", "total": 1000}


def test_cli_prints_the_matrix_and_the_rows(lake: LakeSettings, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--lake", lake.root, "migrations", "--since", "2021-06-02", "--until", "2021-06-08"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("2021-06-02: 3 changes\n") and "(new)" in out
    assert cli.main(["migrations", "--lake", lake.root, "--period", "day", "--format", "json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sum(r["changes"] for r in records) == len(CHANGES)
    assert {r["period"] for r in records} == {"2021-06-01", "2021-06-02", "2021-06-08"}
    assert records[0]["changes"] == 1 and isinstance(records[0]["share"], float)


def test_cli_says_what_is_missing_or_wrong(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lake = tmp_path / "lake"
    lake.mkdir()
    assert cli.main(["--lake", str(lake), "migrations"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"flo-seg migrations: error: no segment_changes table under {lake}: the stream records the changes; "
        "run `flo-seg stream`"
    )
    assert cli.main(["--lake", str(lake), "migrations", "--since", "2021-06-02", "--until", "2021-06-01"]) == 2
    assert "--until 2021-06-01 must come after --since 2021-06-02" in capsys.readouterr().err


def test_the_report_shows_the_matrix_or_says_none_is_recorded(lake: LakeSettings) -> None:
    section = migration_section(read_migrations_native(lake, migration_sql()))
    note, table = section.blocks
    assert isinstance(note, str) and note.startswith("6 segment changes recorded since 2021-06-01")
    assert isinstance(table, Table)
    assert table.frame.to_dict("records") == [
        {"from \\ to": NEW, "a": "1 (50%)", "b": "1 (50%)", "total": 2},
        {"from \\ to": "a", "a": ".", "b": "3 (100%)", "total": 3},
        {"from \\ to": "b", "a": "1 (100%)", "b": ".", "total": 1},
    ]
    empty = migration_section(pd.DataFrame(columns=list(COLUMNS)))
    assert empty.blocks == ("No segment changes recorded yet: the stream records them.",)


def test_a_retrain_records_the_customers_it_moves(spark: SparkSession) -> None:
    previous = spark.createDataFrame([("c1", "a"), ("c2", "a"), ("c3", "b")], "master_id string, segment string")
    scored = spark.createDataFrame(
        [("c1", "a", "v2", D2), ("c2", "b", "v2", D2), ("c4", "b", "v2", D2)],
        "master_id string, segment string, model_version string, as_of date",
    )
    at = dt.datetime(2021, 6, 2, 9, 30)
    rows = retrain_change_rows(previous, scored, at).orderBy("master_id").collect()
    assert [(r["master_id"], r["previous_segment"], r["segment"], r["batch_id"]) for r in rows] == [
        ("c2", "a", "b", RETRAIN_BATCH_ID),  # c1 stays in a; c3 is not scored (no move to record)
        ("c4", None, "b", RETRAIN_BATCH_ID),
    ]
    assert {(r["model_version"], r["as_of"], r["changed_at"]) for r in rows} == {("v2", D2, at)}
    assert len({r["change_id"] for r in rows}) == 2 and all(len(r["change_id"]) == 32 for r in rows)
