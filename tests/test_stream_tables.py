"""The stream's reads of the compacted tables: the state store's bootstrap (one snapshot per new checkpoint,
then nothing) and a sweep's check for stale customers."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from test_compact import segment_row, state_row

from batch.compact import compact_lake, prepare_logs
from batch.lake import append_table, ensure_table, overwrite_table, table_properties
from flo_seg.settings import LakeSettings
from schemas.tables import (
    CUSTOMER_SEGMENTS,
    CUSTOMER_SEGMENTS_SCHEMA,
    CUSTOMER_STATE,
    CUSTOMER_STATE_SCHEMA,
    SEGMENT_CHANGES,
    SEGMENT_LOG,
    STATE_LOG,
)
from streaming.job import BOOTSTRAP_SNAPSHOT, anyone_stale, bootstrap


def held(spark: SparkSession, lake: LakeSettings, checkpoint: Path) -> dict[str, tuple[object, ...]]:
    rows = bootstrap(spark, lake, str(checkpoint)).collect()
    return {r["master_id"]: (r["online_orders"], r["segment"], r["segment_seq"]) for r in rows}


def test_a_new_checkpoint_bootstraps_from_one_snapshot_until_its_first_commit(
    spark: SparkSession, tmp_path: Path
) -> None:
    lake = LakeSettings(root=str(tmp_path / "lake"))
    states = [state_row("a", 0, 1), state_row("b", 0, 1)]
    overwrite_table(spark.createDataFrame(states, CUSTOMER_STATE_SCHEMA), lake, CUSTOMER_STATE)
    segments = [segment_row(m, "loyal", 0, "v1", dt.date(2021, 6, 1)) for m in ("a", "b")]
    overwrite_table(spark.createDataFrame(segments, CUSTOMER_SEGMENTS_SCHEMA), lake, CUSTOMER_SEGMENTS)
    checkpoint = tmp_path / "checkpoint"
    assert held(spark, lake, checkpoint) == {"a": (1, "loyal", 0), "b": (1, "loyal", 0)}
    assert (checkpoint / BOOTSTRAP_SNAPSHOT / "_SUCCESS").exists()

    # The tables move on (a compaction, a re-score) before the first batch commits: a restart still
    # starts from the snapshot its segment_log start version was fixed with.
    append_table(spark.createDataFrame([state_row("c", 3, 7)], CUSTOMER_STATE_SCHEMA), lake, CUSTOMER_STATE)
    segments = [segment_row("a", "at_risk", 2, "v1", dt.date(2021, 6, 2))]
    overwrite_table(spark.createDataFrame(segments, CUSTOMER_SEGMENTS_SCHEMA), lake, CUSTOMER_SEGMENTS)
    assert held(spark, lake, checkpoint) == {"a": (1, "loyal", 0), "b": (1, "loyal", 0)}

    # Once the first batch has committed the state is the checkpoint's: nothing to bootstrap, no snapshot.
    (checkpoint / "commits").mkdir()
    (checkpoint / "commits" / "0").write_text("v1\n{}")
    assert held(spark, lake, checkpoint) == {}
    assert not (checkpoint / BOOTSTRAP_SNAPSHOT).exists()


def test_a_sweep_knows_without_compacting_whether_anyone_can_be_stale(spark: SparkSession, tmp_path: Path) -> None:
    lake = LakeSettings(root=str(tmp_path / "lake"))
    states = [state_row("a", 0, 1), state_row("b", 0, 1)]
    overwrite_table(spark.createDataFrame(states, CUSTOMER_STATE_SCHEMA), lake, CUSTOMER_STATE)
    segments = [segment_row(m, "loyal", 0, "v1", dt.date(2021, 6, 1)) for m in ("a", "b")]
    overwrite_table(spark.createDataFrame(segments, CUSTOMER_SEGMENTS_SCHEMA), lake, CUSTOMER_SEGMENTS)
    prepare_logs(spark, lake)
    assert not anyone_stale(spark, lake, "v1", dt.date(2021, 6, 5), aging_days=7)
    assert anyone_stale(spark, lake, "v1", dt.date(2021, 6, 8), aging_days=7)  # a and b are a week old
    assert anyone_stale(spark, lake, "v2", dt.date(2021, 6, 5), aging_days=7)  # scored by another model

    # A customer only in the part of segment_log that no compaction has merged yet counts too.
    old = [segment_row("c", "loyal", 1, "v1", dt.date(2021, 5, 1))]
    frame = spark.createDataFrame(old, CUSTOMER_SEGMENTS_SCHEMA).withColumn("batch_id", F.lit(3).cast("long"))
    append_table(frame.withColumn("source", F.lit("stream")), lake, SEGMENT_LOG)
    assert anyone_stale(spark, lake, "v1", dt.date(2021, 6, 5), aging_days=7)
    compact_lake(spark, lake)
    assert anyone_stale(spark, lake, "v1", dt.date(2021, 6, 5), aging_days=7)


def test_the_tables_appended_per_batch_are_checkpointed_every_hundred_commits(
    spark: SparkSession, tmp_path: Path
) -> None:
    lake = LakeSettings(root=str(tmp_path / "lake"))
    prepare_logs(spark, lake)
    ensure_table(spark, lake, SEGMENT_CHANGES)
    for name in (STATE_LOG, SEGMENT_LOG):
        properties = table_properties(spark, lake, name)
        assert properties["delta.checkpointInterval"] == "100", name
        assert properties["delta.enableChangeDataFeed"] == "true", name
    changes = table_properties(spark, lake, SEGMENT_CHANGES)
    assert changes["delta.checkpointInterval"] == "100"
    assert "delta.enableChangeDataFeed" not in changes
