"""Table layout and upkeep: the customer tables open in every Delta reader; `flo-seg maintain` compacts them."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from delta.tables import DeltaTable
from deltalake import DeltaTable as DeltaLakeTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from batch.compact import prepare_logs
from batch.lake import (
    append_table,
    ensure_table,
    latest_commit,
    overwrite_table,
    read_table,
    table_detail,
    table_properties,
)
from batch.maintain import run_maintenance
from flo_seg import cli
from flo_seg.settings import LakeSettings
from schemas.tables import (
    CUSTOMER_STATE,
    CUSTOMER_STATE_SCHEMA,
    DATA_PROFILE,
    QUARANTINE,
    SEGMENT_CHANGES,
    SEGMENT_CHANGES_SCHEMA,
    SEGMENT_LOG,
    STATE_LOG,
)
from streaming.state import customer_order_deltas, merge_state

DV = "delta.enableDeletionVectors"
UPDATED = dt.datetime(2021, 5, 31)


def state_rows(spark: SparkSession, n: int) -> DataFrame:
    """`n` customers with one offline order each, as history loads them."""
    day = dt.date(2021, 1, 1)
    rows = [
        (f"c{i:03d}", "Offline", "Offline", day, day, None, day, 0, 1, 100.0, 0.0, ["KADIN"], None, UPDATED, 0)
        for i in range(n)
    ]
    return spark.createDataFrame(rows, CUSTOMER_STATE_SCHEMA)


def orders(spark: SparkSession, ids: list[str]) -> DataFrame:
    """One 50.00 online order for each id, shaped like the stream's valid orders."""
    when = dt.datetime(2021, 6, 1, 12, 0)
    return spark.createDataFrame(
        [(f"e-{m}", m, when, when.date(), "Android App", True, 50.0, ["ERKEK"]) for m in ids],
        "event_id string, master_id string, order_time timestamp, order_date date, channel string, "
        "is_online boolean, amount double, categories array<string>",
    )


def described(spark: SparkSession, path: str) -> tuple[dict[str, str], set[str]]:
    """A table's properties and features as Delta's DESCRIBE DETAIL gives them (what table_detail avoids)."""
    row = DeltaTable.forPath(spark, path).detail().select("properties", "tableFeatures").first()
    assert row is not None
    return dict(row["properties"]), set(row["tableFeatures"])


def last_commit(spark: SparkSession, path: str) -> dict[str, str]:
    row = DeltaTable.forPath(spark, path).history(1).select("operation", "operationMetrics").first()
    assert row is not None
    return {"operation": row["operation"], **(row["operationMetrics"] or {})}


@pytest.fixture
def lake(spark: SparkSession, tmp_path: Path) -> LakeSettings:
    lake = LakeSettings(root=str(tmp_path / "lake"))
    overwrite_table(state_rows(spark, 40).repartition(4), lake, CUSTOMER_STATE)
    return lake


def test_state_is_created_without_deletion_vectors_and_keeps_it_on_overwrite(
    spark: SparkSession, lake: LakeSettings
) -> None:
    assert table_properties(spark, lake, CUSTOMER_STATE).get(DV) == "false"
    overwrite_table(state_rows(spark, 5), lake, CUSTOMER_STATE)
    properties, features = table_detail(spark, lake, CUSTOMER_STATE)
    assert properties.get(DV) == "false" and "deletionVectors" not in features
    assert read_table(spark, lake, CUSTOMER_STATE).count() == 5
    # Append-only tables carry no such property.
    ensure_table(spark, lake, SEGMENT_CHANGES)
    assert DV not in table_properties(spark, lake, SEGMENT_CHANGES)


def test_deletion_vectors_from_an_earlier_version_are_dropped_and_delta_rs_opens_the_table(
    spark: SparkSession, tmp_path: Path
) -> None:
    lake = LakeSettings(root=str(tmp_path / "old"))
    path = lake.table(CUSTOMER_STATE)
    # As earlier versions left customer_state: deletion vectors on, rows hidden by them.
    state_rows(spark, 6).write.format("delta").option(DV, "true").save(path)
    spark.sql(f"DELETE FROM delta.`{path}` WHERE master_id IN ('c001', 'c004')")
    assert list(Path(path).glob("deletion_vector_*.bin"))
    with pytest.raises(Exception, match="deletionVectors"):
        DeltaLakeTable(path).to_pandas()
    assert table_detail(spark, lake, CUSTOMER_STATE) == described(spark, path)
    assert "deletionVectors" in table_detail(spark, lake, CUSTOMER_STATE)[1]

    ensure_table(spark, lake, CUSTOMER_STATE)
    properties, features = table_detail(spark, lake, CUSTOMER_STATE)
    assert properties.get(DV) == "false" and "deletionVectors" not in features
    assert (properties, features) == described(spark, path)
    expected = ["c000", "c002", "c003", "c005"]
    assert sorted(DeltaLakeTable(path).to_pandas()["master_id"]) == expected
    assert sorted(r["master_id"] for r in read_table(spark, lake, CUSTOMER_STATE).collect()) == expected
    ensure_table(spark, lake, CUSTOMER_STATE)  # a second start finds nothing to drop
    assert table_detail(spark, lake, CUSTOMER_STATE) == (properties, features)


def test_a_new_table_is_created_by_its_first_write_in_one_commit(spark: SparkSession, lake: LakeSettings) -> None:
    # The fixture's overwrite created customer_state: data and contract properties in version 0.
    assert latest_commit(spark, lake, CUSTOMER_STATE) == 0
    assert last_commit(spark, lake.table(CUSTOMER_STATE))["operation"] == "WRITE"
    assert read_table(spark, lake, CUSTOMER_STATE).count() == 40
    # A replaceWhere write creates its table the same way, and the next one replaces only its rows.
    profiles = spark.createDataFrame(
        [("v1", "mix", "a", "customers", 1.0)],
        "model_version string, section string, item string, statistic string, value double",
    )
    overwrite_table(profiles, lake, DATA_PROFILE, replace_where="model_version = 'v1'")
    assert latest_commit(spark, lake, DATA_PROFILE) == 0
    overwrite_table(
        profiles.withColumn("model_version", F.lit("v2")), lake, DATA_PROFILE, replace_where="model_version = 'v2'"
    )
    assert sorted(r["model_version"] for r in read_table(spark, lake, DATA_PROFILE).collect()) == ["v1", "v2"]


def test_older_state_table_gets_the_property(spark: SparkSession, tmp_path: Path) -> None:
    lake = LakeSettings(root=str(tmp_path / "old"))
    # As an older version wrote it: no property, no state_seq column.
    state_rows(spark, 3).drop("state_seq").write.format("delta").save(lake.table(CUSTOMER_STATE))
    assert DV not in table_properties(spark, lake, CUSTOMER_STATE)
    ensure_table(spark, lake, CUSTOMER_STATE)
    assert table_properties(spark, lake, CUSTOMER_STATE)[DV] == "false"
    state = read_table(spark, lake, CUSTOMER_STATE)
    assert state.count() == 3
    assert state.columns == CUSTOMER_STATE_SCHEMA.fieldNames()  # the column it lacked is added, as null
    assert {r["state_seq"] for r in state.collect()} == {None}


def test_a_merge_rewrites_the_files_it_touches_and_leaves_no_deletion_vectors(
    spark: SparkSession, lake: LakeSettings
) -> None:
    merge_state(spark, lake, customer_order_deltas(orders(spark, ["c001", "c002", "new-1"])), "layout-test", 0)
    metrics = last_commit(spark, lake.table(CUSTOMER_STATE))
    assert metrics["operation"] == "MERGE"
    assert (metrics["numTargetRowsUpdated"], metrics["numTargetRowsInserted"]) == ("2", "1")
    # Copy-on-write: the untouched rows of the files holding c001 or c002 are copied, nothing is marked.
    assert int(metrics["numTargetRowsCopied"]) >= 1 and int(metrics["numTargetFilesRemoved"]) >= 1
    assert metrics.get("numTargetDeletionVectorsAdded", "0") == "0"
    assert not list(Path(lake.table(CUSTOMER_STATE)).glob("deletion_vector_*.bin"))
    state = {r["master_id"]: r for r in read_table(spark, lake, CUSTOMER_STATE).collect()}
    assert len(state) == 41
    assert state["c001"]["order_num_total_ever_online"] == 1
    assert state["c001"]["customer_value_total_ever_online"] == 50.0
    assert state["c003"]["order_num_total_ever_online"] == 0
    frame = DeltaLakeTable(lake.table(CUSTOMER_STATE)).to_pandas().set_index("master_id")
    assert len(frame) == 41 and frame.loc["c001", "customer_value_total_ever_online"] == 50.0


def test_maintain_compacts_and_keeps_every_row(spark: SparkSession, lake: LakeSettings) -> None:
    for batch_id, ids in enumerate((["c001", "c010"], ["c002", "new-1"], ["c001", "new-2"])):
        merge_state(spark, lake, customer_order_deltas(orders(spark, ids)), "maintain-test", batch_id)
    before = sorted(read_table(spark, lake, CUSTOMER_STATE).collect())
    results = run_maintenance(spark, lake, retain_hours=None)
    # Only customer_state exists in this lake: the other tables are skipped, not created.
    assert [r.table for r in results] == [CUSTOMER_STATE]
    (state,) = results
    assert state.files_before > 1 and state.files_after == 1
    assert state.files_removed == state.files_before and not state.vacuumed
    assert last_commit(spark, lake.table(CUSTOMER_STATE))["operation"] == "OPTIMIZE"
    assert sorted(read_table(spark, lake, CUSTOMER_STATE).collect()) == before
    assert len(before) == 42


def test_maintain_refuses_a_short_retention_and_unknown_tables(spark: SparkSession, lake: LakeSettings) -> None:
    with pytest.raises(ValueError, match="less than 168 h retention"):
        run_maintenance(spark, lake, retain_hours=1)
    with pytest.raises(ValueError, match="cannot maintain"):
        run_maintenance(spark, lake, tables=("models",))


@pytest.mark.integration
def test_maintain_cli_optimizes_and_vacuums(
    spark: SparkSession, lake: LakeSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    ensure_table(spark, lake, QUARANTINE)
    code = cli.main(["--lake", lake.root, "maintain", "--table", CUSTOMER_STATE, "--table", QUARANTINE])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [CUSTOMER_STATE, QUARANTINE]
    assert all("VACUUM" in line for line in lines)
    assert "files      4 -> 1" in lines[0]
    history = DeltaTable.forPath(spark, lake.table(CUSTOMER_STATE)).history().select("operation").collect()
    assert {"OPTIMIZE", "VACUUM START", "VACUUM END"} <= {r[0] for r in history}


def test_the_latest_commit_is_read_from_the_log_listing(spark: SparkSession, tmp_path: Path) -> None:
    lake = LakeSettings(root=str(tmp_path / "lake"))
    assert latest_commit(spark, lake, CUSTOMER_STATE) == -1  # no table yet
    overwrite_table(state_rows(spark, 2), lake, CUSTOMER_STATE)
    append_table(state_rows(spark, 1), lake, CUSTOMER_STATE)
    run_maintenance(spark, lake, tables=(CUSTOMER_STATE,))  # OPTIMIZE and VACUUM commits too
    newest = DeltaTable.forPath(spark, lake.table(CUSTOMER_STATE)).history(1).first()
    assert newest is not None and newest["version"] >= 2
    assert latest_commit(spark, lake, CUSTOMER_STATE) == newest["version"]


def test_a_models_table_from_before_the_share_rule_keeps_its_versions(spark: SparkSession, tmp_path: Path) -> None:
    from dataclasses import replace

    from pyspark.sql import types as T
    from test_report import model_record

    from batch.model import KCandidate
    from batch.registry import current_model_record, publish_model
    from batch.registry import model_record as stored_record
    from schemas.tables import MODELS, MODELS_SCHEMA

    lake = LakeSettings(root=str(tmp_path / "lake"))
    old_candidate = T.StructType(
        [
            T.StructField("k", T.IntegerType()),
            T.StructField("silhouette", T.DoubleType()),
            T.StructField("cost", T.DoubleType()),
        ]
    )
    old_schema = T.StructType(
        [
            T.StructField("k_selection", T.ArrayType(old_candidate)) if f.name == "k_selection" else f
            for f in MODELS_SCHEMA
        ]
    )
    old = model_record(k_selection=(KCandidate(k=2, silhouette=0.41, cost=9.0),)).to_row(is_current=True).asDict()
    old["k_selection"] = [(2, 0.41, 9.0)]
    spark.createDataFrame([tuple(old[f.name] for f in old_schema)], old_schema).write.format("delta").save(
        lake.table(MODELS)
    )
    new = replace(
        model_record(k_selection=(KCandidate(k=5, silhouette=0.37, cost=4.0, min_share=0.06, calinski_harabasz=9e3),)),
        version="v2",
        trained_at=dt.datetime(2021, 6, 3),
    )
    publish_model(spark, lake, new)
    assert current_model_record(spark, lake) == new
    assert stored_record(spark, lake, "v1").k_selection == (KCandidate(k=2, silhouette=0.41, cost=9.0),)


def _last_add_stats(table_dir: Path) -> list[dict[str, Any]]:
    """The statistics of the newest commit's added files, as Delta wrote them."""
    newest = sorted((table_dir / "_delta_log").glob("*.json"))[-1]
    adds = [json.loads(line)["add"] for line in newest.read_text().splitlines() if '"add"' in line]
    assert adds
    return [json.loads(add["stats"]) for add in adds]


def test_the_logs_keep_row_counts_but_no_column_statistics(spark: SparkSession, lake: LakeSettings) -> None:
    prepare_logs(spark, lake)
    ensure_table(spark, lake, SEGMENT_CHANGES)
    logged = state_rows(spark, 4).withColumn("batch_id", F.lit(7).cast("long")).withColumn("source", F.lit("stream"))
    append_table(logged, lake, STATE_LOG)
    stats = _last_add_stats(Path(lake.table(STATE_LOG)))
    assert sum(s["numRecords"] for s in stats) == 4
    assert not any(s.get("minValues") for s in stats)  # nothing per column: the logs are read by version
    assert table_properties(spark, lake, SEGMENT_LOG)["delta.dataSkippingNumIndexedCols"] == "0"
    # segment_changes, which users filter, keeps them.
    change = spark.createDataFrame(
        [("c1", "m1", None, "champions", "v1", UPDATED.date(), UPDATED, 7)], SEGMENT_CHANGES_SCHEMA
    )
    append_table(change, lake, SEGMENT_CHANGES)
    assert all(s["minValues"] for s in _last_add_stats(Path(lake.table(SEGMENT_CHANGES))))
