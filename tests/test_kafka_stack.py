"""The local Kafka stack: the broker `make stack-up` starts, and the CLI's edge cases.

Tests that need the broker skip (with the command to run) when it does not answer; the CLI edge cases
run against a temporary state dir and a free port, so they never touch the real stack.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic

from devstack import stack
from devstack.procs import read_pid

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

REPO_DIR = Path(__file__).resolve().parents[1]


def run_stack(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it, so exit codes and messages are what is asserted."""
    return subprocess.run(
        [sys.executable, "-m", "devstack.stack", *args],
        cwd=REPO_DIR,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def free_port() -> int:
    """A port nothing listens on, for cases that must not meet the real broker."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def admin(kafka_bootstrap: str) -> Iterator[Any]:
    """One admin client for the module."""
    with stack.admin_client(kafka_bootstrap, timeout_s=10.0) as client:
        yield client


@pytest.fixture
def scratch_topic(admin: Any) -> Iterator[str]:
    """A throw-away 4-partition topic, so test records never reach the product's topics."""
    name = f"flo.test-{uuid.uuid4().hex[:10]}"
    admin.create_topics([NewTopic(name, num_partitions=4, replication_factor=1)], timeout_ms=10_000)
    yield name
    admin.delete_topics([name], timeout_ms=10_000)


def test_stack_topics_exist_with_their_partition_counts(admin: Any) -> None:
    assert stack.topic_partitions(admin, ["flo.orders", "flo.segment-changes"]) == {
        "flo.orders": 4,
        "flo.segment-changes": 4,
    }


def test_keyed_round_trip_keeps_values_and_key_partitioning(
    kafka_bootstrap: str, admin: Any, scratch_topic: str
) -> None:
    stack.ensure_topics(kafka_bootstrap, [stack.TopicSpec(name=scratch_topic, partitions=4)])
    sent = [(f"customer-{i % 6}".encode(), f"order-{i}".encode()) for i in range(30)]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5)
    try:
        sent_partition = [producer.send(scratch_topic, key=k, value=v).get(timeout=10).partition for k, v in sent]
    finally:
        producer.close()
    key_partitions: dict[bytes, set[int]] = {}
    for (key, _), partition in zip(sent, sent_partition, strict=True):
        key_partitions.setdefault(key, set()).add(partition)
    assert all(len(parts) == 1 for parts in key_partitions.values())

    group = f"flo-test-{uuid.uuid4().hex[:8]}"
    consumer = KafkaConsumer(
        scratch_topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=15_000,
    )
    try:
        received = []
        for record in consumer:
            received.append((record.key, record.value, record.partition))
            if len(received) == len(sent):
                break
        consumer.commit()
    finally:
        consumer.close()

    assert sorted((k, v) for k, v, _ in received) == sorted(sent)
    assert {k: {p} for k, _, p in received} == key_partitions
    committed = {tp.partition: meta.offset for tp, meta in admin.list_consumer_group_offsets(group).items()}
    per_partition = {p: sent_partition.count(p) for p in set(sent_partition)}
    assert {p: o for p, o in committed.items() if o > 0} == per_partition


@pytest.fixture(scope="module")
def stack_port(kafka_bootstrap: str) -> int:
    """The port of a broker this stack started; the CLI tests skip for a broker started otherwise."""
    port = int(kafka_bootstrap.rpartition(":")[2])
    if "held by a process this stack did not start" in run_stack("status", "--port", str(port)).stdout:
        pytest.skip(f"the broker at {kafka_bootstrap} was not started by `make stack-up`")
    return port


def test_status_reports_the_running_broker(stack_port: int) -> None:
    result = run_stack("status", "--port", str(stack_port))
    assert result.returncode == stack.EXIT_OK, result.stdout + result.stderr
    assert f"running (pid {read_stack_pid(stack_port)}) on 127.0.0.1:{stack_port}" in result.stdout
    assert "flo.orders  (4 partitions)" in result.stdout
    assert "flo.segment-changes  (4 partitions)" in result.stdout
    assert "broker.log" in result.stdout


def test_up_again_keeps_the_running_broker(stack_port: int) -> None:
    pid = read_stack_pid(stack_port)
    result = run_stack("up", "--port", str(stack_port))
    assert result.returncode == stack.EXIT_OK, result.stdout + result.stderr
    assert f"already running (pid {pid})" in result.stderr
    assert f"Kafka is up: bootstrap servers 127.0.0.1:{stack_port}" in result.stdout
    assert read_stack_pid(stack_port) == pid


def read_stack_pid(port: int) -> int | None:
    """The pid the stack recorded, found the way the CLI finds it (FLO_STACK_DIR or the default)."""
    args = stack.build_parser().parse_args(["status", "--port", str(port)])
    return read_pid(stack.settings_from(args, os.environ).pid_path)


def test_status_and_down_when_nothing_runs(tmp_path: Path) -> None:
    env = {"FLO_STACK_DIR": str(tmp_path), "FLO_STACK_KAFKA_PORT": str(free_port())}
    status = run_stack("status", env=env)
    assert status.returncode == stack.EXIT_NOT_RUNNING
    assert "not running" in status.stdout
    down = run_stack("down", env=env)
    assert down.returncode == stack.EXIT_OK
    assert "was not running" in down.stdout


def test_up_refuses_a_port_held_by_another_process(tmp_path: Path) -> None:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result = run_stack(
            "up", "--port", str(port), "--controller-port", str(free_port()), "--state-dir", str(tmp_path)
        )
    assert result.returncode == stack.EXIT_FAILED
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert not (tmp_path / "kafka" / "broker.pid").exists()


def test_server_properties_is_a_single_local_kraft_node(tmp_path: Path) -> None:
    settings = stack.StackSettings(jars_dir=tmp_path, state_dir=tmp_path, port=19092, controller_port=19093)
    props = dict(
        line.split("=", 1) for line in stack.server_properties(settings).splitlines() if not line.startswith("#")
    )
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:19093"
    assert props["auto.create.topics.enable"] == "false"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["log.dirs"] == str(tmp_path / "kafka" / "data")
