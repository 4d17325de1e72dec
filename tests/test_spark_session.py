"""The one SparkSession factory: what it sets for a local master."""

from __future__ import annotations

from dataclasses import replace

from pyspark.sql import SparkSession

from flo_seg.settings import default_spark_settings
from flo_seg.spark import LISTING_PARALLELISM, build_session


def test_a_local_session_lists_files_with_one_task_per_core(spark: SparkSession) -> None:
    # Spark's 10000 would make each VACUUM run 10000 listing tasks on this one machine.
    assert spark.sparkContext.master == "local[2]"
    assert spark.conf.get(LISTING_PARALLELISM) == "2"


def test_a_listing_parallelism_the_caller_gives_wins(spark: SparkSession) -> None:
    settings = replace(default_spark_settings("flo-seg-tests"), master="local[2]", shuffle_partitions=2, ui=False)
    try:
        joined = build_session(settings, extra_conf={LISTING_PARALLELISM: "7"})
        assert joined is spark  # the process's session, joined
        assert spark.conf.get(LISTING_PARALLELISM) == "7"
    finally:
        spark.conf.set(LISTING_PARALLELISM, "2")
