"""The state store's bootstrap: one snapshot of the customer tables per new checkpoint, then nothing."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pyspark.sql import SparkSession
from test_compact import segment_row, state_row

from batch.lake import append_table, overwrite_table
from flo_seg.settings import LakeSettings
from schemas.tables import CUSTOMER_SEGMENTS, CUSTOMER_SEGMENTS_SCHEMA, CUSTOMER_STATE, CUSTOMER_STATE_SCHEMA
from streaming.job import BOOTSTRAP_SNAPSHOT, bootstrap


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
