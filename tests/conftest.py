"""Shared fixtures: one local SparkSession for the whole run, the real FLO data where present."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "flo_data_20k.csv"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that needs the local Spark cluster belongs to `make test-integration`, which starts it."""
    for item in items:
        if item.get_closest_marker("cluster"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    """A small local Delta-enabled session: 2 shuffle partitions, no UI."""
    from flo_seg.settings import default_spark_settings
    from flo_seg.spark import build_session

    warehouse = tmp_path_factory.mktemp("warehouse")
    settings = replace(default_spark_settings("flo-seg-tests"), master="local[2]", shuffle_partitions=2, ui=False)
    session = build_session(settings, extra_conf={"spark.sql.warehouse.dir": str(warehouse)})
    yield session
    session.stop()


@pytest.fixture(scope="session")
def trained_lake(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One lake trained on 600 generated customers (k fixed to keep it quick) for every stream test.

    Shared by the whole run, so it is read only: a test that writes copies it first.
    """
    from streaming_support import train_small_lake

    return train_small_lake(tmp_path_factory.mktemp("trained"), spark)


@pytest.fixture(scope="session")
def real_data_path() -> Path:
    """The real FLO snapshot; tests that need it skip with the reason where it is absent."""
    if not REAL_DATA.exists():
        pytest.skip(f"real FLO data not found at {REAL_DATA} (it lives in the shared folder beside the repo)")
    return REAL_DATA


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """The broker that `make stack-up` starts; under `make test` (FLO_REQUIRE_KAFKA=1) it must answer."""
    from devstack.stack import broker_answers

    address = os.environ.get("FLO_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    if not broker_answers(address, timeout_s=3.0):
        message = f"Kafka broker not reachable at {address}; run `make stack-up` (make test starts it itself)"
        if os.environ.get("FLO_REQUIRE_KAFKA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return address
