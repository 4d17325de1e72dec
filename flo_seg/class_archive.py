"""`python -m flo_seg.class_archive [PATH]`: write the driver JVM's class archive (`make setup` runs it).

A Spark driver loads and links tens of thousands of classes (Spark SQL, Delta, Spark ML) before its first
job, on every `flo-seg` command that starts one. The JVM can instead map them from a class data sharing
(CDS) archive written by an earlier run of the same JVM on the same class path. This runs the work that
loads what the product's commands load (a Delta table written, merged and read, a Spark ML pipeline
fitted, rows to pandas) in a session built like theirs, and the JVM writes the classes it loaded when
it exits. The session factory passes the archive to every driver it starts (`spark.class_archive`);
a JVM it does not fit (another JDK build, other jars) ignores it. Nothing here is needed on a cluster:
executors never use it, and spark-submit starts the driver itself.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from pyspark import SparkContext
from pyspark.ml import Pipeline
from pyspark.ml.clustering import KMeans
from pyspark.ml.feature import StandardScaler, VectorAssembler
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from flo_seg.logs import setup_logging
from flo_seg.settings import default_spark_settings
from flo_seg.spark import DRIVER_JAVA_OPTIONS, build_session

log = logging.getLogger(__name__)


def exercise(spark: SparkSession, folder: Path) -> None:
    """What the commands' drivers load: Delta writes, MERGE, reads and history; an ML fit; Arrow."""
    from delta.tables import DeltaTable

    table = str(folder / "table")
    rows = spark.range(2_000).select(
        F.col("id").cast("string").alias("master_id"),
        (F.col("id") % 7).cast("double").alias("x"),
        (F.col("id") % 11).cast("double").alias("y"),
    )
    rows.write.format("delta").save(table)
    updates = rows.limit(100).withColumn("x", F.col("x") + 1)
    target = DeltaTable.forPath(spark, table)
    target.alias("t").merge(updates.alias("u"), "t.master_id = u.master_id").whenMatchedUpdateAll().execute()
    target.history().collect()
    frame = spark.read.format("delta").load(table)
    pipeline = Pipeline(
        stages=[
            VectorAssembler(inputCols=["x", "y"], outputCol="raw"),
            StandardScaler(inputCol="raw", outputCol="features"),
            KMeans(k=3, seed=1, maxIter=5),
        ]
    ).fit(frame)
    pipeline.transform(frame).groupBy("prediction").count().toPandas()


def write_archive(archive: Path) -> None:
    """Run `exercise` in a driver that writes its loaded classes to `archive` at exit (atomically)."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_name(archive.name + ".partial")
    partial.unlink(missing_ok=True)
    settings = replace(default_spark_settings("flo-seg-class-archive"), class_archive=None, master="local[2]")
    options = f"{DRIVER_JAVA_OPTIONS} -XX:ArchiveClassesAtExit={shlex.quote(str(partial))} -Xlog:cds=off"
    started = time.monotonic()
    spark = build_session(settings, extra_conf={"spark.driver.extraJavaOptions": options})
    with tempfile.TemporaryDirectory(prefix="flo-seg-class-archive-") as folder:
        exercise(spark, Path(folder))
    spark.stop()
    # The JVM writes the archive as it exits: close its gateway and wait for it.
    gateway = SparkContext._gateway
    assert gateway is not None
    process = gateway.proc
    gateway.shutdown()
    process.stdin.close()
    if process.wait(timeout=300) != 0 or not partial.is_file():
        raise RuntimeError(f"the driver JVM exited without writing {partial}")
    os.replace(partial, archive)
    log.info(
        "wrote the driver class archive %s (%.0f MB) in %.1fs",
        archive,
        archive.stat().st_size / 1e6,
        time.monotonic() - started,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flo_seg.class_archive", description=__doc__.splitlines()[0])
    default = default_spark_settings("flo-seg").class_archive
    parser.add_argument(
        "archive",
        nargs="?",
        type=Path,
        default=default,
        help=f"where to write it (default: the spark.class_archive setting, {default})",
    )
    args = parser.parse_args(argv)
    setup_logging(verbose=False)
    if args.archive is None:
        parser.error("no archive path: give one, or set spark.class_archive")
    write_archive(args.archive)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
