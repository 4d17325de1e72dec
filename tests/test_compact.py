"""Compaction of the stream's logs into customer_state and customer_segments, on tiny inline rows."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from batch.compact import (
    SEGMENTS,
    STATE,
    Compactor,
    append_segments,
    compact_lake,
    compact_log,
    compacted_version,
    reset_logs,
)
from batch.lake import append_table, overwrite_table, read_table
from flo_seg import cli
from flo_seg.settings import LakeSettings
from schemas.tables import (
    COMPACTIONS,
    CUSTOMER_SEGMENTS,
    CUSTOMER_SEGMENTS_SCHEMA,
    CUSTOMER_STATE,
    CUSTOMER_STATE_SCHEMA,
    SEGMENT_LOG,
    STATE_LOG,
)
from streaming.run import AUTO, PROCESS, THREAD, CompactionProcess, compaction_place, keep_compacting

D, TS = dt.date, dt.datetime


def state_row(master_id: str, seq: int, online_orders: int) -> dict[str, Any]:
    return {
        "master_id": master_id,
        "order_channel": "Offline",
        "last_order_channel": "Offline",
        "first_order_date": D(2020, 1, 1),
        "last_order_date": D(2021, 5, 1),
        "last_order_date_online": None,
        "last_order_date_offline": D(2021, 5, 1),
        "order_num_total_ever_online": online_orders,
        "order_num_total_ever_offline": 1,
        "customer_value_total_ever_offline": 10.0,
        "customer_value_total_ever_online": 5.0 * online_orders,
        "interested_in_categories_12": ["KADIN"],
        "last_order_ts": None,
        "updated_at": TS(2021, 6, 1),
        "state_seq": seq,
    }


def segment_row(master_id: str, segment: str, seq: int, model: str, as_of: dt.date) -> dict[str, Any]:
    return {
        "master_id": master_id,
        "segment": segment,
        "cluster": 0,
        "model_version": model,
        "recency": 1,
        "tenure": 1,
        "frequency": 1,
        "monetary": 1.0,
        "r_score": 1,
        "f_score": 1,
        "m_score": 1,
        "rfm_segment": "x",
        "as_of": as_of,
        "scored_at": TS(2021, 6, 1),
        "state_seq": seq,
        "p_alive": 0.99,
        "expected_orders_90d": 0.5,
        "expected_value_12m": 100.0 + seq,
        "interested_in_categories_12": ["KADIN"],
    }


@pytest.fixture()
def lake(spark: SparkSession, tmp_path: Path) -> LakeSettings:
    """customer_state and customer_segments as train leaves them: a and b at state_seq 0, model v1."""
    lake = LakeSettings(root=str(tmp_path / "lake"))
    states = [state_row("a", 0, 1), state_row("b", 0, 1)]
    overwrite_table(spark.createDataFrame(states, CUSTOMER_STATE_SCHEMA), lake, CUSTOMER_STATE)
    segments = [segment_row(m, "loyal", 0, "v1", D(2021, 6, 1)) for m in ("a", "b")]
    overwrite_table(spark.createDataFrame(segments, CUSTOMER_SEGMENTS_SCHEMA), lake, CUSTOMER_SEGMENTS)
    return lake


def log_rows(spark: SparkSession, lake: LakeSettings, name: str, rows: list[dict[str, Any]], batch_id: int) -> None:
    schema = CUSTOMER_STATE_SCHEMA if name == STATE_LOG else CUSTOMER_SEGMENTS_SCHEMA
    frame = spark.createDataFrame(rows, schema).withColumn("batch_id", F.lit(batch_id).cast("long"))
    append_table(frame.withColumn("source", F.lit("stream")), lake, name)


def by_id(spark: SparkSession, lake: LakeSettings, name: str) -> dict[str, Any]:
    return {r["master_id"]: r for r in read_table(spark, lake, name).collect()}


def test_the_newest_row_per_customer_wins_whatever_the_log_order(spark: SparkSession, lake: LakeSettings) -> None:
    compact_lake(spark, lake)  # creates the logs
    # Batch 1 updates a twice (seq 1 then 2) and inserts c; batch 2 replays a stale seq 1 of a.
    log_rows(spark, lake, STATE_LOG, [state_row("a", 2, 3), state_row("a", 1, 2), state_row("c", 1, 1)], 1)
    log_rows(spark, lake, STATE_LOG, [state_row("a", 1, 2)], 2)
    log_rows(
        spark,
        lake,
        SEGMENT_LOG,
        [
            segment_row("a", "champions", 2, "v1", D(2021, 6, 2)),
            # Same state, newer model: wins. Older state with a newer model: loses to b's newer state.
            segment_row("b", "at_risk", 0, "v2", D(2021, 6, 1)),
            segment_row("c", "new", 1, "v1", D(2021, 6, 2)),
        ],
        1,
    )
    log_rows(spark, lake, SEGMENT_LOG, [segment_row("a", "hibernating", 1, "v2", D(2021, 6, 9))], 2)
    done = compact_lake(spark, lake)
    assert [(d.log, d.rows_read, d.customers) for d in done] == [(STATE_LOG, 4, 2), (SEGMENT_LOG, 4, 3)]

    state = by_id(spark, lake, CUSTOMER_STATE)
    assert {m: (r["state_seq"], r["order_num_total_ever_online"]) for m, r in state.items()} == {
        "a": (2, 3),
        "b": (0, 1),
        "c": (1, 1),
    }
    segments = by_id(spark, lake, CUSTOMER_SEGMENTS)
    assert {m: (r["segment"], r["model_version"]) for m, r in segments.items()} == {
        "a": ("champions", "v1"),  # seq 2 beats the later-logged seq 1 of a newer model
        "b": ("at_risk", "v2"),
        "c": ("new", "v1"),
    }
    # Nothing new: nothing read, nothing changed.
    assert [d.rows_read for d in compact_lake(spark, lake)] == [0, 0]


def test_a_compaction_repeated_after_a_crash_changes_nothing(spark: SparkSession, lake: LakeSettings) -> None:
    compact_lake(spark, lake)
    log_rows(spark, lake, STATE_LOG, [state_row("a", 1, 5)], 1)
    compact_log(spark, lake, STATE)
    after_first = by_id(spark, lake, CUSTOMER_STATE)
    # As if killed between the MERGE and its record: the record is gone, the MERGE is redone.
    spark.sql(f"DELETE FROM delta.`{lake.table(COMPACTIONS)}` WHERE log = '{STATE_LOG}' AND rows_read > 0")
    assert compacted_version(spark, lake, STATE_LOG) < 1
    redone = compact_log(spark, lake, STATE)
    assert redone.rows_read == 1
    assert by_id(spark, lake, CUSTOMER_STATE) == after_first


def test_rescored_rows_go_through_the_log_and_a_reset_forgets_the_logs(spark: SparkSession, lake: LakeSettings) -> None:
    compact_lake(spark, lake)
    scored = spark.createDataFrame([segment_row("a", "cant_lose", 0, "v1", D(2022, 1, 1))], CUSTOMER_SEGMENTS_SCHEMA)
    append_segments(scored, lake, "rescore")
    assert by_id(spark, lake, CUSTOMER_SEGMENTS)["a"]["segment"] == "loyal"  # not yet compacted
    compact_lake(spark, lake)
    assert by_id(spark, lake, CUSTOMER_SEGMENTS)["a"]["segment"] == "cant_lose"  # a later as_of wins
    logged = read_table(spark, lake, SEGMENT_LOG).collect()
    assert [(r["source"], r["batch_id"]) for r in logged] == [("rescore", None)]

    log_rows(spark, lake, STATE_LOG, [state_row("a", 7, 9)], 3)
    reset_logs(spark, lake)
    assert read_table(spark, lake, STATE_LOG).count() == read_table(spark, lake, SEGMENT_LOG).count() == 0
    # The truncation itself is no update: the state keeps what it had.
    assert [d.rows_read for d in compact_lake(spark, lake)] == [0, 0]
    assert by_id(spark, lake, CUSTOMER_STATE)["a"]["state_seq"] == 0
    assert SEGMENTS.newer("s", "t").startswith("struct(coalesce(s.state_seq, 0), s.model_version, s.as_of)")


@pytest.mark.integration
def test_a_compaction_process_runs_rounds_until_its_parent_has_exited(spark: SparkSession, lake: LakeSettings) -> None:
    compact_lake(spark, lake)
    log_rows(spark, lake, STATE_LOG, [state_row("a", 1, 5)], 1)
    parent = subprocess.Popen(["sleep", "600"])
    command = [sys.executable, "-m", "flo_seg.cli", "--lake", lake.root, "compact", "--every", "1"]
    child = subprocess.Popen(
        [*command, "--parent-pid", str(parent.pid)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 180
        while by_id(spark, lake, CUSTOMER_STATE)["a"]["state_seq"] != 1:  # a round ran on its own
            assert child.poll() is None and time.monotonic() < deadline, child.stdout.read() if child.stdout else ""
            time.sleep(1)
        log_rows(spark, lake, STATE_LOG, [state_row("a", 2, 6)], 2)
        parent.kill()
        parent.wait()
        output, _ = child.communicate(timeout=180)
    finally:
        parent.kill()
        child.kill()
    assert child.returncode == 0, output
    assert f"process {parent.pid} has exited: stopping the compaction" in output
    # Its last round ran after the parent had gone: nothing logged is left behind.
    assert by_id(spark, lake, CUSTOMER_STATE)["a"]["state_seq"] == 2


@pytest.mark.parametrize(
    ("place", "master", "expected"),
    [
        (AUTO, "local[*]", PROCESS),
        (AUTO, "local-cluster[2,1,1024]", PROCESS),
        (AUTO, "spark://host:7077", THREAD),
        (AUTO, "yarn", THREAD),
        (THREAD, "local[2]", THREAD),
        (PROCESS, "k8s://https://host", PROCESS),
    ],
)
def test_auto_compacts_in_a_process_on_one_machine_only(place: str, master: str, expected: str) -> None:
    assert compaction_place(place, master) == expected


def test_a_stream_whose_compaction_process_ended_compacts_in_a_thread(spark: SparkSession, lake: LakeSettings) -> None:
    class Ended(CompactionProcess):
        def __init__(self) -> None:  # no child: one that has already exited with an error
            self.process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(2)"])
            self.process.wait()

    replaced = keep_compacting(Ended(), spark, lake, 3600)
    assert isinstance(replaced, Compactor) and replaced.thread.is_alive()
    replaced.stop(final=False)
    running = Compactor(spark, lake, 3600).start()
    assert keep_compacting(running, spark, lake, 3600) is running
    running.stop(final=False)
    assert keep_compacting(None, spark, lake, 3600) is None


def test_parent_pid_without_every_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--lake", str(tmp_path / "lake"), "compact", "--parent-pid", "1"]) == 2
    assert "--parent-pid only applies with --every" in capsys.readouterr().err
    assert not (tmp_path / "lake").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compact", "--every", "inf"], "must be a finite number > 0, got inf"),
        (["compact", "--every", "nan"], "must be a finite number > 0, got nan"),
        (["compact", "--every", "0"], "must be a finite number > 0, got 0"),
        (["stream", "--compact-seconds", "inf"], "argument --compact-seconds: must be a finite number, got inf"),
        (
            ["stream", "--compact-seconds", "-1"],
            "argument --compact-seconds: Input should be greater than or equal to 0",
        ),
    ],
)
def test_compaction_intervals_must_be_finite(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
