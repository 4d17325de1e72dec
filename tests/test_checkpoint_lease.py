"""One stream per checkpoint: the lease's takeover rules, its file through Hadoop's FS API, and two real streams."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from streaming_support import fresh_topics, make_events, send, stream_command

from batch.lake import read_table
from flo_seg.settings import LakeSettings
from streaming.lease import (
    LEASE_FILE,
    CheckpointInUse,
    Lease,
    LeaseFile,
    LeaseKeeper,
    LeaseStore,
    Owner,
    Verdict,
    acquire_lease,
    current_owner,
    decide,
    in_use_message,
    is_process_running,
    process_start,
    read_lease,
)

NOW = 1_750_000_000.0
ME = Owner(host="node-1", machine="boot-a pid:[1]", pid=4242, pid_start="77")
IN_USE = re.compile(
    r"checkpoint \S+ is in use by another flo-seg stream \(host (?P<host>\S+), pid (?P<pid>\d+), "
    r"heartbeat \d+ s ago\); stop it first"
)


def lease_of(owner: Owner, *, heartbeat_at: float, run_id: str = "theirs") -> Lease:
    heartbeat_at = round(heartbeat_at, 3)  # the lease file's precision
    return Lease(owner=owner, run_id=run_id, started_at=heartbeat_at - 60, heartbeat_at=heartbeat_at)


@pytest.mark.parametrize(
    ("owner", "heartbeat_age", "running", "run_id", "want"),
    [
        (ME, 2.0, True, "mine", Verdict.OURS),
        (dataclasses.replace(ME, host="node-2", machine="boot-b pid:[1]"), 2.0, None, "theirs", Verdict.FRESH),
        (dataclasses.replace(ME, host="node-2", machine="boot-b pid:[1]"), 31.0, None, "theirs", Verdict.STALE),
        # Same host name on another kernel or in another container: its pids say nothing here.
        (dataclasses.replace(ME, machine="boot-z pid:[1]"), 2.0, None, "theirs", Verdict.FRESH),
        (dataclasses.replace(ME, pid=9), 2.0, False, "theirs", Verdict.DEAD),
        (dataclasses.replace(ME, pid=9), 2.0, True, "theirs", Verdict.ALIVE),
        (dataclasses.replace(ME, pid=9), 31.0, True, "theirs", Verdict.STALE),
    ],
    ids=[
        "our-own",
        "fresh-foreign",
        "stale-foreign",
        "same-name-other-machine",
        "same-machine-dead",
        "same-machine-alive",
        "same-machine-hung",
    ],
)
def test_decide(owner: Owner, heartbeat_age: float, running: bool | None, run_id: str, want: Verdict) -> None:
    """`running` None: the owner's liveness must not even be asked (its pids mean nothing on this machine)."""

    def is_running(_owner: Owner) -> bool:
        assert running is not None, "process liveness is only asked about this machine"
        return running

    lease = lease_of(owner, heartbeat_at=NOW - heartbeat_age, run_id=run_id)
    assert decide(lease, run_id="mine", me=ME, now=NOW, is_running=is_running, ttl_s=30.0) is want


def test_lease_json_round_trip_and_garbage() -> None:
    lease = Lease(
        owner=dataclasses.replace(ME, jvm_pid=4243, jvm_start="78"), run_id="r1", started_at=NOW, heartbeat_at=NOW + 5.5
    )
    assert Lease.from_json(lease.to_json()) == lease
    for garbage in (b"", b'{"run_id": "r1", "host": "h"', b"[1, 2]", b'{"run_id": 1}', lease.to_json()[:40]):
        with pytest.raises(ValueError):
            Lease.from_json(garbage)


def test_process_identity_tells_dead_zombie_and_recycled_pids() -> None:
    me = os.getpid()
    assert is_process_running(me, process_start(me))
    assert not is_process_running(me, "1")  # this pid, but not the process that started at tick 1
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    assert not is_process_running(finished.pid, None)
    zombie = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the child never exited"
            time.sleep(0.05)
        assert not is_process_running(zombie.pid, None)  # exited, not yet reaped: a kill -9'd JVM looks so
    finally:
        zombie.wait()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def put(store: LeaseStore, lease: Lease) -> None:
    assert store.create(lease.to_json())


@pytest.mark.parametrize("as_uri", [False, True], ids=["path", "file-uri"])
def test_first_start_writes_the_lease_and_release_deletes_it(spark: SparkSession, tmp_path: Path, as_uri: bool) -> None:
    checkpoint = tmp_path / "checkpoint"
    store = LeaseFile(spark, f"file://{checkpoint}" if as_uri else str(checkpoint))
    owner = current_owner(spark)
    lease = acquire_lease(store, owner=owner, settle_s=0.0)
    assert read_lease(store) == lease
    assert (checkpoint / LEASE_FILE).is_file()
    assert sorted(p.name for p in checkpoint.iterdir()) == [LEASE_FILE]  # no .crc beside it for Spark to list
    assert (owner.host, owner.pid) == (socket.gethostname(), os.getpid())
    assert owner.jvm_pid is not None and is_process_running(owner.jvm_pid, owner.jvm_start)
    LeaseKeeper(store, lease, on_lost=pytest.fail).release()
    assert not (checkpoint / LEASE_FILE).exists()


def test_a_second_start_is_refused_while_the_holder_runs(spark: SparkSession, tmp_path: Path) -> None:
    store = LeaseFile(spark, str(tmp_path / "checkpoint"))
    owner = current_owner(spark)
    held = acquire_lease(store, owner=owner, settle_s=0.0)
    with pytest.raises(CheckpointInUse) as refused:
        acquire_lease(store, owner=owner, settle_s=0.0)
    match = IN_USE.fullmatch(str(refused.value))
    assert match is not None, str(refused.value)
    assert (match["host"], int(match["pid"])) == (owner.host, owner.pid)
    assert isinstance(refused.value, ValueError)  # what `flo-seg stream` turns into one line and exit 2
    assert read_lease(store) == held


@pytest.mark.parametrize("how", ["dead-pid", "recycled-pid"])
def test_a_gone_holder_on_this_machine_is_taken_over_at_once(spark: SparkSession, tmp_path: Path, how: str) -> None:
    store = LeaseFile(spark, str(tmp_path / "checkpoint"))
    owner = current_owner(spark)
    gone = (
        dataclasses.replace(owner, pid=dead_pid(), pid_start=None, jvm_pid=dead_pid(), jvm_start=None)
        if how == "dead-pid"
        else dataclasses.replace(owner, pid_start="1", jvm_start="1")  # our pids, other processes
    )
    put(store, lease_of(gone, heartbeat_at=time.time()))
    lease = acquire_lease(store, owner=owner, settle_s=0.0)
    assert lease.run_id != "theirs"
    assert read_lease(store) == lease


def test_a_stale_lease_is_taken_over_with_a_warning(
    spark: SparkSession, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = LeaseFile(spark, str(tmp_path / "checkpoint"))
    elsewhere = Owner(host="node-elsewhere", machine="other", pid=123)
    put(store, lease_of(elsewhere, heartbeat_at=time.time() - 120))
    with caplog.at_level(logging.WARNING, logger="streaming.lease"):
        lease = acquire_lease(store, owner=current_owner(spark), settle_s=0.0)
    assert read_lease(store) == lease
    assert any("stale lease (host node-elsewhere, pid 123" in r.getMessage() for r in caplog.records)


def test_a_beating_lease_from_another_machine_is_refused(spark: SparkSession, tmp_path: Path) -> None:
    store = LeaseFile(spark, str(tmp_path / "checkpoint"))
    theirs = lease_of(Owner(host="node-elsewhere", machine="other", pid=123), heartbeat_at=time.time())
    put(store, theirs)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(0.1):
            store.overwrite(dataclasses.replace(theirs, heartbeat_at=time.time()).to_json())

    beater = threading.Thread(target=beat, daemon=True)
    beater.start()
    try:
        with pytest.raises(CheckpointInUse) as refused:
            acquire_lease(store, owner=current_owner(spark), settle_s=0.0, poll_s=0.1)
    finally:
        stop.set()
        beater.join()
    match = IN_USE.fullmatch(str(refused.value))
    assert match is not None and (match["host"], match["pid"]) == ("node-elsewhere", "123")


def test_a_silent_lease_from_another_machine_is_taken_over_after_one_ttl(
    spark: SparkSession, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its clock may run ahead of ours (a heartbeat that looks fresh forever); silence is what counts."""
    store = LeaseFile(spark, str(tmp_path / "checkpoint"))
    put(store, lease_of(Owner(host="node-elsewhere", machine="other", pid=123), heartbeat_at=time.time() + 3600))
    with caplog.at_level(logging.WARNING, logger="streaming.lease"):
        lease = acquire_lease(store, owner=current_owner(spark), ttl_s=1.0, settle_s=0.0, poll_s=0.1)
    assert read_lease(store) == lease
    assert any("stale lease" in r.getMessage() for r in caplog.records)


def test_an_unreadable_lease_is_judged_by_its_age(spark: SparkSession, tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    garbled = checkpoint / LEASE_FILE
    store = LeaseFile(spark, str(checkpoint))
    garbled.write_bytes(b'{"run_id": "half-writ')
    old = time.time() - 120
    os.utime(garbled, (old, old))
    lease = acquire_lease(store, owner=current_owner(spark), settle_s=0.0)  # old: stale at once
    assert read_lease(store) == lease
    garbled.write_bytes(b"")
    lease = acquire_lease(store, owner=current_owner(spark), ttl_s=1.0, settle_s=0.0, poll_s=0.1)  # silent
    assert read_lease(store) == lease
    message = in_use_message("/ck", Lease.unreadable(time.time() - 3), time.time())
    assert message == (
        "checkpoint /ck is in use by another flo-seg stream (unreadable lease file written 3 s ago); stop it first"
    )


def test_racing_starters_leave_exactly_one_holder(spark: SparkSession, tmp_path: Path) -> None:
    checkpoint = str(tmp_path / "checkpoint")
    owner = current_owner(spark)
    gate = threading.Barrier(4)
    won: list[Lease] = []
    refused: list[str] = []

    def start() -> None:
        store = LeaseFile(spark, checkpoint)
        gate.wait()
        try:
            won.append(acquire_lease(store, owner=owner, settle_s=0.2))
        except CheckpointInUse as exc:
            refused.append(str(exc))

    for _ in range(3):
        won.clear()
        refused.clear()
        shutil.rmtree(checkpoint, ignore_errors=True)
        starters = [threading.Thread(target=start) for _ in range(4)]
        for t in starters:
            t.start()
        for t in starters:
            t.join()
        assert len(won) == 1 and len(refused) == 3, (won, refused)
        assert read_lease(LeaseFile(spark, checkpoint)) == won[0]


def test_the_keeper_refreshes_the_heartbeat_and_reports_a_lost_lease(spark: SparkSession, tmp_path: Path) -> None:
    store = LeaseFile(spark, str(tmp_path / "checkpoint"))
    lease = acquire_lease(store, owner=current_owner(spark), settle_s=0.0)
    lost: list[str] = []
    keeper = LeaseKeeper(store, lease, on_lost=lost.append, interval_s=0.1)
    keeper.start()
    wait_for(lambda: (read_lease(store) or lease).heartbeat_at > lease.heartbeat_at, 10, "a heartbeat")
    usurper = lease_of(Owner(host="node-elsewhere", machine="other", pid=123), heartbeat_at=time.time())
    store.overwrite(usurper.to_json())
    wait_for(lambda: bool(lost), 10, "the loss to be reported")
    assert "taken by host node-elsewhere pid 123" in lost[0]
    keeper.release()
    assert read_lease(store) == usurper  # released only if still ours


class FailingWrites:
    """A lease store whose heartbeat writes fail, as on storage that went away."""

    def __init__(self, inner: LeaseFile) -> None:
        self.inner = inner
        self.checkpoint = inner.checkpoint
        self.uri = inner.uri

    def read(self) -> tuple[bytes, float] | None:
        return self.inner.read()

    def create(self, data: bytes) -> bool:
        return self.inner.create(data)

    def overwrite(self, data: bytes) -> None:
        raise OSError("storage unavailable")

    def delete(self) -> None:
        self.inner.delete()


def test_a_holder_that_cannot_refresh_stops_before_others_may_take_over(spark: SparkSession, tmp_path: Path) -> None:
    store = FailingWrites(LeaseFile(spark, str(tmp_path / "checkpoint")))
    lease = acquire_lease(store, owner=current_owner(spark), settle_s=0.0)
    lost: list[str] = []
    keeper = LeaseKeeper(store, lease, on_lost=lost.append, interval_s=0.1, fence_after_s=0.5)
    keeper.start()
    wait_for(lambda: bool(lost), 10, "the fence")
    assert "could not be refreshed" in lost[0]
    keeper.release()
    assert read_lease(store) is None


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------- two real `flo-seg stream` processes


def lease_stream_command(
    lake: Path, checkpoint: Path, topics: tuple[str, str], bootstrap: str, *, available_now: bool
) -> list[str]:
    flags = ["--available-now"] if available_now else ["--trigger-seconds", "1"]
    return stream_command(str(lake), checkpoint, topics, bootstrap, *flags)


def start_stream_process(command: list[str], log_path: Path) -> subprocess.Popen[str]:
    """A long-running stream whose output goes to a file (a pipe nobody reads would block it)."""
    with log_path.open("w") as out:
        return subprocess.Popen(command, start_new_session=True, stdout=out, stderr=subprocess.STDOUT, text=True)


def run_to_end(command: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, start_new_session=True)


def last_commit(checkpoint: Path) -> int:
    commits = checkpoint / "commits"
    ids = [int(p.name) for p in commits.iterdir() if p.name.isdigit()] if commits.is_dir() else []
    return max(ids, default=-1)


def orders_total(spark: SparkSession, lake: Path) -> int:
    state = read_table(spark, LakeSettings(root=str(lake)), "customer_state")
    row = state.agg(F.sum(F.col("order_num_total_ever_online") + F.col("order_num_total_ever_offline"))).first()
    assert row is not None
    return int(row[0])


def orders_for(spark: SparkSession, lake: Path, n: int, seed: int) -> list[tuple[bytes, bytes]]:
    ids = [r[0] for r in read_table(spark, LakeSettings(root=str(lake)), "customer_state").limit(40).collect()]
    start = dt.datetime(2021, 6, 2, tzinfo=dt.UTC)
    return [m for m in make_events(ids, start, n, seed=seed).messages if m[0] != b"bad"]


def stop_process_group(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


@dataclasses.dataclass
class RunningStream:
    """A `flo-seg stream` process on a copy of the trained lake, past its first committed batch."""

    lake: Path
    checkpoint: Path
    topics: tuple[str, str]
    proc: subprocess.Popen[str]
    log_path: Path


def start_first_stream(
    spark: SparkSession, trained_lake: Path, bootstrap: str, tmp_path: Path, seed: int
) -> RunningStream:
    lake, checkpoint = tmp_path / "lake", tmp_path / "checkpoint"
    shutil.copytree(trained_lake, lake)
    topics = fresh_topics(bootstrap)
    send(bootstrap, topics[0], orders_for(spark, lake, 40, seed=seed))
    log_path = tmp_path / "first.log"
    proc = start_stream_process(
        lease_stream_command(lake, checkpoint, topics, bootstrap, available_now=False), log_path
    )
    try:
        wait_for(lambda: last_commit(checkpoint) >= 0 or proc.poll() is not None, 300, "the first batch", 1.0)
        assert proc.poll() is None, log_path.read_text()
    except BaseException:
        stop_process_group(proc)
        raise
    return RunningStream(lake=lake, checkpoint=checkpoint, topics=topics, proc=proc, log_path=log_path)


@pytest.mark.integration
@pytest.mark.kafka
@pytest.mark.slow
def test_a_second_stream_is_refused_and_the_first_keeps_running(
    spark: SparkSession, trained_lake: Path, kafka_bootstrap: str, tmp_path: Path
) -> None:
    running = start_first_stream(spark, trained_lake, kafka_bootstrap, tmp_path, seed=1)
    lake, checkpoint, topics, first, first_log = (
        running.lake,
        running.checkpoint,
        running.topics,
        running.proc,
        running.log_path,
    )
    try:
        held = read_lease(LeaseFile(spark, str(checkpoint)))
        assert held is not None and held.owner.pid == first.pid

        second = run_to_end(lease_stream_command(lake, checkpoint, topics, kafka_bootstrap, available_now=False), 300)
        errors = [line for line in second.stderr.splitlines() if line.startswith("flo-seg stream: error:")]
        assert second.returncode == 2, second.stderr
        assert len(errors) == 1, second.stderr
        match = IN_USE.search(errors[0])
        assert match is not None, errors[0]
        assert (match["host"], int(match["pid"])) == (socket.gethostname(), first.pid)

        # The first one was not harmed: still running, still processing what arrives.
        assert first.poll() is None, first_log.read_text()
        committed, total = last_commit(checkpoint), orders_total(spark, lake)
        more = orders_for(spark, lake, 30, seed=2)
        send(kafka_bootstrap, topics[0], more)
        # The commit log entry follows the batch's Delta writes: wait for both.
        wait_for(
            lambda: last_commit(checkpoint) > committed and orders_total(spark, lake) == total + len(set(more)),
            300,
            "the new orders to be committed",
            1.0,
        )
        assert first.poll() is None, first_log.read_text()

        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=120) == 0, first_log.read_text()
    finally:
        stop_process_group(first)
    output = first_log.read_text()
    assert "Multiple streaming queries" not in output and "ConcurrentModification" not in output, output
    assert not (checkpoint / LEASE_FILE).exists()

    # A restart on the same checkpoint (offsets, commits, state and now its own lease) is accepted.
    restart = run_to_end(lease_stream_command(lake, checkpoint, topics, kafka_bootstrap, available_now=True))
    assert restart.returncode == 0, restart.stderr
    assert "taken by run" in restart.stderr
    assert not (checkpoint / LEASE_FILE).exists()


@pytest.mark.integration
@pytest.mark.kafka
@pytest.mark.slow
def test_a_restart_right_after_kill_9_takes_the_lease_over(
    spark: SparkSession, trained_lake: Path, kafka_bootstrap: str, tmp_path: Path
) -> None:
    running = start_first_stream(spark, trained_lake, kafka_bootstrap, tmp_path, seed=3)
    lake, checkpoint, topics, killed = running.lake, running.checkpoint, running.topics, running.proc
    stop_process_group(killed)
    left = read_lease(LeaseFile(spark, str(checkpoint)))
    assert left is not None and left.owner.pid == killed.pid  # nothing released it

    restart = run_to_end(lease_stream_command(lake, checkpoint, topics, kafka_bootstrap, available_now=True))
    assert restart.returncode == 0, restart.stderr
    assert f"(pid {killed.pid} on this host) is gone; taking over its lease" in restart.stderr
    assert not (checkpoint / LEASE_FILE).exists()
