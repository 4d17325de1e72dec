"""flo-seg on the local Spark standalone cluster gives what local mode gives: same segments, same state."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from streaming_support import make_events, run_available_now, send

from batch.generate import write_history_csv
from batch.lake import read_table
from batch.train import run_train
from devstack import cluster as cl
from devstack.stack import TopicSpec, ensure_topics
from flo_seg.settings import LakeSettings, TrainSettings
from streaming.job import StreamSettings

# Same shuffle partitions as the `spark` fixture: the k-means start and the quantile sketches depend on
# how rows are partitioned, so both sides must partition alike for the results to be comparable.
SUBMIT_ENV = {"FLO_SPARK_SHUFFLE_PARTITIONS": "2", "FLO_SPARK_LOG_LEVEL": "WARN"}
SEGMENT_COLUMNS = [
    "segment",
    "cluster",
    "r_score",
    "f_score",
    "m_score",
    "rfm_segment",
    "recency",
    "frequency",
    "monetary",
    "tenure",
    "as_of",
]
APP_LINE = re.compile(r"flo-seg cluster: application (\S+) \((\S+)\) on (\S+)")


@dataclass(frozen=True)
class RunningCluster:
    """An already-running standalone cluster: where to submit and where its master reports."""

    url: str
    json_url: str

    def state(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.json_url, timeout=5) as response:
            state: dict[str, Any] = json.load(response)
            return state


@dataclass(frozen=True)
class Submitted:
    """What one `python -m devstack.cluster submit` printed, and the application it ran as."""

    output: str
    app_id: str
    app_name: str


@pytest.fixture(scope="module")
def spark_cluster() -> RunningCluster:
    """The cluster `make cluster-up` starts; under `make test-integration` (FLO_REQUIRE_CLUSTER=1) it must answer."""
    url = os.environ.get("FLO_STACK_SPARK_CLUSTER_URL", "spark://127.0.0.1:7077")
    host = url.removeprefix("spark://").rsplit(":", 1)[0]
    webui_port = os.environ.get("FLO_STACK_SPARK_MASTER_WEBUI_PORT", "8080")
    running = RunningCluster(url=url, json_url=f"http://{host}:{webui_port}/json/")
    try:
        state = running.state()
        problem = None if state.get("status") == "ALIVE" and cl.alive_workers(state) else f"master reports {state}"
    except OSError as exc:
        problem = f"no master web UI at {running.json_url} ({exc})"
    if problem is not None:
        message = f"Spark cluster {url} not usable: {problem}; run `make cluster-up`"
        if os.environ.get("FLO_REQUIRE_CLUSTER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return running


def submit(running: RunningCluster, args: list[str], cwd: Path) -> Submitted:
    """Run flo-seg on the cluster from an unrelated working directory, as a user would."""
    wait_until_idle(running)
    command = [sys.executable, "-m", "devstack.cluster", "submit", "--master", running.url, "--", *args]
    result = subprocess.run(
        command, cwd=cwd, env={**os.environ, **SUBMIT_ENV}, capture_output=True, text=True, timeout=850, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    match = APP_LINE.search(output)
    assert match, output[-5000:]
    assert match.group(3) == running.url
    # The driver imported the project from the shipped zip, not from the repo or the venv.
    assert re.search(r"running flo_seg from \S+\.zip/flo_seg/__init__\.py", output), output[-2000:]
    return Submitted(output=output, app_id=match.group(1), app_name=match.group(2))


def wait_until_idle(running: RunningCluster, timeout: float = 120) -> None:
    """Every worker free again: an executor of the previous application may take a while to go, and the
    master would then place the next application's executors on the other workers only."""
    deadline = time.monotonic() + timeout
    state = running.state()
    while state["activeapps"] or any(w["coresused"] for w in cl.alive_workers(state)):
        assert time.monotonic() < deadline, f"cluster still busy after {timeout:.0f} s: {state}"
        time.sleep(1)
        state = running.state()


def assert_ran_on_the_cluster(running: RunningCluster, submitted: Submitted, name: str) -> None:
    """The master lists the application as finished, and every worker ran an executor of it."""
    state = running.state()
    apps = {a["id"]: a for a in state["completedapps"]}
    assert submitted.app_id in apps, f"{submitted.app_id} not among {sorted(apps)}"
    assert (apps[submitted.app_id]["name"], apps[submitted.app_id]["state"]) == (name, "FINISHED")
    for worker in cl.alive_workers(state):
        seen = worker_apps(worker["webuiaddress"])
        # The master marks an application finished before each worker has reaped its executor: a worker
        # may still list it as running for a moment, so look at both lists and give the worker a while.
        deadline = time.monotonic() + 30
        while submitted.app_id not in seen and time.monotonic() < deadline:
            time.sleep(1)
            seen = worker_apps(worker["webuiaddress"])
        assert submitted.app_id in seen, f"{worker['webuiaddress']} ran executors of {sorted(seen)} only"


def worker_apps(webui: str) -> set[str]:
    """The applications a worker runs or ran an executor of."""
    with urllib.request.urlopen(f"{webui}/json/", timeout=5) as response:
        worker = json.load(response)
    return {e["appid"] for e in worker.get("executors", []) + worker.get("finishedexecutors", [])}


def copy_lake(source: Path, dest: Path) -> LakeSettings:
    shutil.copytree(source, dest)
    return LakeSettings(root=str(dest))


def table_rows(spark: SparkSession, lake: LakeSettings, name: str, drop: list[str]) -> list[tuple[object, ...]]:
    return sorted(tuple(r) for r in read_table(spark, lake, name).drop(*drop).collect())


# ---------------------------------------------------------------- without a cluster


def test_the_artifact_holds_every_package_and_is_reproducible(tmp_path: Path) -> None:
    first = cl.build_artifact(cl.SOURCE_DIR, tmp_path / "a")
    second = cl.build_artifact(cl.SOURCE_DIR, tmp_path / "b")
    assert first.name == second.name and first.read_bytes() == second.read_bytes()
    names = set(zipfile.ZipFile(first).namelist())
    assert {"flo_seg/cli.py", "batch/train.py", "streaming/job.py", "schemas/tables.py"} <= names
    assert {"flo_seg/log4j2.properties", "schemas/order_event.schema.json"} <= names
    assert not any("__pycache__" in n or n.startswith(("tests/", "devstack/")) for n in names)
    # Imported from the zip alone, as an executor's Python worker would (the zip first on sys.path).
    code = f"import sys; sys.path.insert(0, {str(first)!r}); import flo_seg.cli, batch.train, streaming.job; print(flo_seg.cli.__file__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert result.stdout.strip() == f"{first}/flo_seg/cli.py"


def test_the_submit_command_ships_artifact_jars_and_interpreter(tmp_path: Path) -> None:
    settings = cl.SubmitSettings(
        spark_home=Path("/spark"),
        master_url="spark://127.0.0.1:7077",
        python="/env/bin/python",
        jars_dir=tmp_path,
        dist_dir=tmp_path,
        conf=(("spark.pyspark.python", "./env/bin/python"),),
    )
    command = cl.submit_command(
        settings, Path("/d/a.zip"), Path("/d/launch.py"), ["/j/a.jar", "/j/b.jar"], ["train", "--k", "4"]
    )
    assert command[:3] == ["/spark/bin/spark-submit", "--master", "spark://127.0.0.1:7077"]
    assert command[command.index("--py-files") + 1] == "/d/a.zip"
    assert command[command.index("--jars") + 1] == "/j/a.jar,/j/b.jar"
    confs = dict(command[i + 1].split("=", 1) for i, arg in enumerate(command) if arg == "--conf")
    assert confs["spark.pyspark.python"] == "./env/bin/python"  # --conf given by the user wins
    assert confs["spark.pyspark.driver.python"] == "/env/bin/python"
    assert "-Duser.timezone=UTC" in confs["spark.executor.extraJavaOptions"]
    assert command[-4:] == ["/d/launch.py", "train", "--k", "4"]


# ---------------------------------------------------------------- on the cluster


@pytest.fixture(scope="module")
def history(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real FLO snapshot, or 3000 generated customers where it is absent."""
    try:
        return Path(request.getfixturevalue("real_data_path"))
    except pytest.skip.Exception:
        path = tmp_path_factory.mktemp("history") / "history.csv"
        write_history_csv(path, customers=3000, seed=11)
        return path


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.timeout(1800)  # a local run and a cluster run on the real data, on a small shared machine
def test_train_on_the_cluster_equals_local_mode(
    spark_cluster: RunningCluster, spark: SparkSession, history: Path, tmp_path: Path
) -> None:
    local = LakeSettings(root=str(tmp_path / "local-lake"))
    run_train(spark, local, TrainSettings(k=4, seed=7), history_path=str(history))
    remote = LakeSettings(root=str(tmp_path / "cluster-lake"))
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    submitted = submit(
        spark_cluster, ["--lake", remote.root, "train", "--history", str(history), "--k", "4", "--seed", "7"], workdir
    )
    assert submitted.app_name == "flo-seg-train"
    assert_ran_on_the_cluster(spark_cluster, submitted, "flo-seg-train")

    want = read_table(spark, local, "customer_segments").toPandas().set_index("master_id").sort_index()
    got = read_table(spark, remote, "customer_segments").toPandas().set_index("master_id").sort_index()
    assert len(want) > 0
    assert list(got.index) == list(want.index)
    for col in SEGMENT_COLUMNS:
        differing = got.index[got[col] != want[col]]
        assert len(differing) == 0, f"{col}: {len(differing)} customers differ, e.g. {list(differing[:3])}"
    assert table_rows(spark, remote, "customer_state", ["updated_at"]) == table_rows(
        spark, local, "customer_state", ["updated_at"]
    )


@pytest.mark.cluster
@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.timeout(1800)  # a training, a local stream and a cluster stream
def test_stream_on_the_cluster_equals_local_mode(
    spark_cluster: RunningCluster, kafka_bootstrap: str, spark: SparkSession, trained_lake: Path, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    orders, changes = f"test.cluster-orders.{suffix}", f"test.cluster-changes.{suffix}"
    ensure_topics(kafka_bootstrap, [TopicSpec(name=orders, partitions=2), TopicSpec(name=changes, partitions=2)])
    state = read_table(spark, LakeSettings(root=str(trained_lake)), "customer_state")
    ids = sorted(r[0] for r in state.select("master_id").limit(60).collect())
    start = dt.datetime.combine(state.agg(F.max("last_order_date")).first()[0], dt.time(), tzinfo=dt.UTC)  # type: ignore[index]
    send(kafka_bootstrap, orders, make_events(ids, start, 200, seed=13).messages)

    local = copy_lake(trained_lake, tmp_path / "local" / "lake")
    settings = StreamSettings(
        bootstrap_servers=kafka_bootstrap,
        checkpoint=str(tmp_path / "local" / "checkpoint"),
        topic=orders,
        changes_topic=changes,
        available_now=True,
        max_offsets_per_trigger=150,
        aging_days=7,
    )
    run_available_now(spark, local, settings)

    remote = copy_lake(trained_lake, tmp_path / "cluster" / "lake")
    args = [
        "--lake",
        remote.root,
        "stream",
        "--available-now",
        "--bootstrap-servers",
        kafka_bootstrap,
        "--topic",
        orders,
        "--changes-topic",
        changes,
        "--checkpoint",
        str(tmp_path / "cluster" / "checkpoint"),
        "--max-offsets-per-trigger",
        "150",
        "--aging-days",
        "7",
    ]
    submitted = submit(spark_cluster, args, tmp_path)
    assert_ran_on_the_cluster(spark_cluster, submitted, "flo-seg-stream")

    ignore = {
        "customer_state": ["updated_at"],
        "customer_segments": ["scored_at"],
        "segment_changes": ["changed_at"],
        "quarantine": ["detected_at"],
        "stream_clock": ["updated_at"],
    }
    for name, drop in ignore.items():
        assert table_rows(spark, remote, name, drop) == table_rows(spark, local, name, drop), name
