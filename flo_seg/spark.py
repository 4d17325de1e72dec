"""The one SparkSession factory: Delta enabled, local jars only, quiet, cluster-ready."""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession

from flo_seg.settings import SparkSettings

log = logging.getLogger(__name__)

_LOG4J = Path(__file__).with_name("log4j2.properties").as_uri()
_DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}
LISTING_PARALLELISM = "spark.sql.sources.parallelPartitionDiscovery.parallelism"
DRIVER_JAVA_OPTIONS = f"-Duser.timezone=UTC -Dlog4j2.configurationFile={_LOG4J}"
_LOCAL_DEFAULTS = {
    # Small-machine defaults; a cluster's spark-defaults or --conf flags win because they are set first.
    "spark.sql.shuffle.partitions": "8",
    "spark.sql.adaptive.enabled": "true",
    "spark.databricks.delta.snapshotPartitions": "2",
    "spark.databricks.delta.autoCompact.enabled": "false",
    "spark.sql.session.timeZone": "UTC",
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.extraJavaOptions": DRIVER_JAVA_OPTIONS,
    "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
}


def class_archive_options(archive: Path | None) -> str:
    """JVM flags that map the driver's classes from `archive` (a CDS archive), or "" when there is none.

    The JVM checks that the archive was written by the same JVM build for the same class path; one that
    does not fit (another JDK, other Spark jars) is skipped without a message and classes load as usual.
    """
    if archive is None or not archive.is_file():
        return ""
    return f"-XX:SharedArchiveFile={shlex.quote(str(archive))} -Xshare:auto -Xlog:cds=off -Xlog:cds+dynamic=off"


def local_jars(jars_dir: Path | None) -> list[str]:
    """Jar files resolved by `make setup`; an empty list when the folder is absent."""
    if jars_dir is None or not jars_dir.is_dir():
        return []
    return sorted(str(p) for p in jars_dir.glob("*.jar"))


def submitted_conf() -> dict[str, str]:
    """The SparkConf that spark-submit already gave this driver; empty when Python starts the JVM."""
    if "PYSPARK_GATEWAY_PORT" not in os.environ and SparkContext._gateway is None:
        return {}
    SparkContext._ensure_initialized()
    return dict(SparkConf().getAll())


def session_conf(
    settings: SparkSettings, submitted: dict[str, str], extra_conf: dict[str, str] | None = None
) -> dict[str, str]:
    """The conf a session is built with, given what spark-submit already set (`submitted`).

    Defaults only fill gaps: a cluster's spark-defaults and spark-submit flags always win.
    """
    conf = {k: v for k, v in _LOCAL_DEFAULTS.items() if k not in submitted}
    archive = class_archive_options(settings.class_archive)
    if archive and not submitted:
        # A driver JVM this process starts (under spark-submit the JVM already runs): about 3 s less to
        # the first Delta read (docs/benchmarks.md, "Driver start-up").
        conf["spark.driver.extraJavaOptions"] += f" {archive}"
    conf.update(_DELTA_CONF)
    conf.setdefault("spark.ui.enabled", "true" if settings.ui else "false")
    if settings.shuffle_partitions:
        conf["spark.sql.shuffle.partitions"] = str(settings.shuffle_partitions)
    if settings.driver_memory:
        conf["spark.driver.memory"] = settings.driver_memory
    if settings.executor_memory:
        conf["spark.executor.memory"] = settings.executor_memory
    jars = [] if "spark.jars" in submitted else local_jars(settings.jars_dir)
    if jars:
        conf["spark.jars"] = ",".join(jars)
    conf.update(extra_conf or {})
    return conf


def build_session(settings: SparkSettings, extra_conf: dict[str, str] | None = None) -> SparkSession:
    """Create (or join) the process's SparkSession; nothing is downloaded at run time."""
    submitted = submitted_conf()
    builder = SparkSession.builder.appName(settings.app_name)
    if settings.master and "spark.master" not in submitted:
        builder = builder.master(settings.master)
    conf = session_conf(settings, submitted, extra_conf)
    master = submitted.get("spark.master") or settings.master or "local[*]"  # PySpark's own default
    if master.startswith("local") and "PYSPARK_PYTHON" not in os.environ:
        # Python workers (the lifetime-value UDF) run this interpreter, whose environment has the product's
        # packages, not the first `python3` on the PATH; PySpark reads the variable when the context starts.
        # On a cluster the deployment names the executors' Python (docs/deploy.md).
        os.environ["PYSPARK_PYTHON"] = sys.executable
    for key, value in conf.items():
        builder = builder.config(key, value)
    log.debug(
        "SparkSession %s: %d local jars, submitted conf keys %s",
        settings.app_name,
        len(conf.get("spark.jars", "").split(",")) if "spark.jars" in conf else 0,
        sorted(submitted),
    )
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel(settings.log_level)
    fit_listing_to_local_cores(session)
    return session


def fit_listing_to_local_cores(session: SparkSession) -> None:
    """Under a local master, list files with as many tasks as there are cores.

    Delta's VACUUM lists the table's folders in `parallelPartitionDiscovery.parallelism` tasks, 10000 by
    default: on one machine that is 10000 nearly empty tasks, about 25 s on 2 cores for a table of a
    dozen files (4 s with 4 tasks). A cluster keeps Spark's default, where the tasks spread; a value set
    anywhere (spark-submit, spark-defaults, the caller's conf) stands.
    """
    context = session.sparkContext
    if (context.master or "").startswith("local") and session.conf.get(LISTING_PARALLELISM, None) is None:
        session.conf.set(LISTING_PARALLELISM, str(context.defaultParallelism))
