"""`flo-seg monitor`: drift checks beside the stream; alarms to `drift_alarms` and Kafka; retrain on demand.

At each interval it compares the customers the stream updated recently (since the current model was
trained, and within the window) and today's segment shares with the training snapshot stored with the
model (batch/drift.py). A statistic beyond its threshold is an alarm: a row in `drift_alarms`, a log
line, a JSON message on the alarms topic. With `auto_retrain`, an alarm runs `train --from-lake` in this
process, at most once per cooldown (counted from the current model's training); the running stream
picks up the new version by its hot reload and re-scores every customer with it.
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from batch.compact import newest_per_customer
from batch.drift import (
    DRIFT_FEATURES,
    Measurement,
    Thresholds,
    describe,
    feature_drift,
    share_drift,
)
from batch.features import with_customer_features
from batch.lake import append_table, ensure_table, read_table, table_exists
from batch.registry import ModelRecord, current_model_record
from flo_seg.settings import LakeSettings, MonitorOptions
from schemas.tables import CUSTOMER_SEGMENTS, DRIFT_ALARMS, DRIFT_ALARMS_SCHEMA, STATE_LOG
from streaming.sinks import publish_json

log = logging.getLogger(__name__)

# Segment shares are compared once this share of the customers is scored by the current version (after
# a retrain, the stream's sweep re-scores the rest).
SCORED_BY_CURRENT = 0.9


@dataclass(frozen=True, kw_only=True)
class MonitorSettings:
    """What a check compares and where its alarms go."""

    options: MonitorOptions = field(default_factory=MonitorOptions)
    bootstrap_servers: str | None = None
    topic: str | None = None  # None: alarms are not published
    kafka_options: Mapping[str, str] = field(default_factory=dict)  # kafka.* options of Spark's Kafka sink

    @property
    def thresholds(self) -> Thresholds:
        """The options' thresholds."""
        o = self.options
        return Thresholds(psi=o.psi_threshold, share_shift=o.share_threshold, min_customers=o.min_customers)


@dataclass(frozen=True, kw_only=True)
class Check:
    """One check's measurements, and why a part of it was not measured."""

    model_version: str
    window_start: dt.datetime
    detected_at: dt.datetime
    recent_customers: int
    measurements: tuple[Measurement, ...]
    skipped: tuple[str, ...] = ()

    @property
    def alarms(self) -> tuple[Measurement, ...]:
        """The measurements beyond their threshold."""
        return tuple(m for m in self.measurements if m.is_alarm)


def recent_customers(spark: SparkSession, lake: LakeSettings, since: dt.datetime) -> DataFrame:
    """The customers the stream updated since `since`, each in its newest state, with the drift features.

    Read from state_log's change feed from `since` on, so a check reads the window's commits only.
    """
    # A window that starts after the log's newest commit reads nothing instead of failing.
    spark.conf.set("spark.databricks.delta.changeDataFeed.timestampOutOfRange.enabled", "true")
    changes = (
        spark.read.format("delta")
        .option("readChangeFeed", "true")
        .option("startingTimestamp", since.strftime("%Y-%m-%d %H:%M:%S"))
        .load(lake.table(STATE_LOG))
    )
    rows = changes.where(
        (F.col("_change_type") == "insert") & (F.col("source") == "stream") & (F.col("updated_at") >= F.lit(since))
    ).drop("_change_type", "_commit_timestamp", "batch_id", "source")
    newest = newest_per_customer(rows, ("state_seq",))
    return newest.transform(lambda df: with_customer_features(df, F.current_date())).select(
        "master_id", *DRIFT_FEATURES
    )


def segment_sizes(spark: SparkSession, lake: LakeSettings, version: str) -> tuple[dict[str, int], int]:
    """Customers per segment among those scored by `version`, and all customers."""
    counts = read_table(spark, lake, CUSTOMER_SEGMENTS).groupBy("model_version", "segment").count().collect()
    sizes = {r["segment"]: r["count"] for r in counts if r["model_version"] == version}
    return sizes, sum(r["count"] for r in counts)


def window_start(record: ModelRecord, now: dt.datetime, window: dt.timedelta) -> dt.datetime:
    """Customers updated from here on are compared: within the window, and after the model was trained
    (those updated before are in its training snapshot already)."""
    return max(now - window, record.trained_at)


def check_drift(spark: SparkSession, lake: LakeSettings, settings: MonitorSettings, now: dt.datetime) -> Check:
    """Measure the current model's drift at `now` (naive UTC)."""
    record = current_model_record(spark, lake)
    since = window_start(record, now, dt.timedelta(minutes=settings.options.window_minutes))
    thresholds = settings.thresholds
    reference = record.drift
    if reference is None:
        why = f"model {record.version} has no training snapshot to compare with (trained before drift checks): retrain"
        return Check(
            model_version=record.version,
            window_start=since,
            detected_at=now,
            recent_customers=0,
            measurements=(),
            skipped=(why,),
        )
    recent = (
        recent_customers(spark, lake, since).toPandas()
        if table_exists(spark, lake, STATE_LOG)
        else pd.DataFrame(columns=["master_id", *DRIFT_FEATURES])
    )
    skipped = []
    if len(recent) < thresholds.min_customers:
        skipped.append(
            f"features: {len(recent)} customers updated since {since:%Y-%m-%d %H:%M:%S} UTC, fewer than "
            f"{thresholds.min_customers} to judge on"
        )
    sizes, total = segment_sizes(spark, lake, record.version)
    scored = sum(sizes.values())
    shares: list[Measurement] = []
    if total and scored / total >= SCORED_BY_CURRENT:
        shares = share_drift(reference, sizes, thresholds)
    else:
        skipped.append(
            f"segment shares: {scored} of {total} customers are scored by {record.version} (the stream's sweep "
            "re-scores the rest after a new model)"
        )
    return Check(
        model_version=record.version,
        window_start=since,
        detected_at=now,
        recent_customers=len(recent),
        measurements=(*feature_drift(reference, recent, thresholds), *shares),
        skipped=tuple(skipped),
    )


def alarm_rows(spark: SparkSession, check: Check) -> DataFrame:
    """The check's alarms as `drift_alarms` rows."""
    rows = [
        (
            str(uuid.uuid4()),
            check.detected_at,
            check.model_version,
            m.kind,
            m.name,
            m.statistic,
            float(m.value),
            float(m.threshold),
            m.customers,
            check.window_start,
        )
        for m in check.alarms
    ]
    return spark.createDataFrame(rows, DRIFT_ALARMS_SCHEMA)


def record_alarms(spark: SparkSession, lake: LakeSettings, settings: MonitorSettings, check: Check) -> int:
    """Write the check's alarms to drift_alarms, then publish them (keyed by model version); how many."""
    if not check.alarms:
        return 0
    ensure_table(spark, lake, DRIFT_ALARMS)
    rows = alarm_rows(spark, check).cache()
    append_table(rows, lake, DRIFT_ALARMS)
    if settings.topic is not None and settings.bootstrap_servers is not None:
        publish_json(
            rows,
            topic=settings.topic,
            bootstrap_servers=settings.bootstrap_servers,
            kafka_options=settings.kafka_options,
            key="model_version",
        )
    rows.unpersist()
    return len(check.alarms)


Retrain = Callable[[], str]


def maybe_retrain(record: ModelRecord, now: dt.datetime, cooldown: dt.timedelta, retrain: Retrain) -> str | None:
    """Retrain unless the current model is younger than the cooldown; the new version, or None."""
    age = now - record.trained_at
    if age < cooldown:
        log.warning(
            "drift alarm: not retraining, model %s was trained %.0f minutes ago (cooldown %.0f minutes)",
            record.version,
            age.total_seconds() / 60,
            cooldown.total_seconds() / 60,
        )
        return None
    log.warning("drift alarm: retraining from the lake (model %s was trained %s)", record.version, record.trained_at)
    version = retrain()
    log.info("retrained: model %s is current; the running stream reloads it and re-scores every customer", version)
    return version


def monitor_once(
    spark: SparkSession,
    lake: LakeSettings,
    settings: MonitorSettings,
    retrain: Retrain | None = None,
    now: dt.datetime | None = None,
    *,
    log_each: bool = True,
) -> tuple[Check, str | None]:
    """One check: measure, log, record and publish the alarms, retrain if asked to. (check, new version).

    `log_each`: log every measurement (an alarm always is), for a caller that does not print them itself.
    """
    now = now or dt.datetime.now(dt.UTC).replace(tzinfo=None)
    check = check_drift(spark, lake, settings, now)
    log.info(
        "drift check of model %s: %d customers updated since %s UTC, %d alarm(s)",
        check.model_version,
        check.recent_customers,
        f"{check.window_start:%Y-%m-%d %H:%M:%S}",
        len(check.alarms),
    )
    for m in check.measurements:
        if m.is_alarm:
            log.warning("%s", describe(m))
        elif log_each:
            log.info("%s", describe(m))
    for why in check.skipped if log_each else ():
        log.info("not measured: %s", why)
    record_alarms(spark, lake, settings, check)
    version = None
    if check.alarms and retrain is not None:
        cooldown = dt.timedelta(minutes=settings.options.retrain_cooldown_minutes)
        version = maybe_retrain(current_model_record(spark, lake), now, cooldown, retrain)
    return check, version


def run_monitor(
    spark: SparkSession, lake: LakeSettings, settings: MonitorSettings, retrain: Retrain | None = None
) -> int:
    """Check at the interval until SIGINT / SIGTERM; a failed check is logged and the next one runs."""
    stopping = threading.Event()

    def stop(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping the monitor after the current check", signum)
        stopping.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    log.info(
        "monitoring %s every %gs (window %g minutes%s)",
        lake.root,
        settings.options.interval_seconds,
        settings.options.window_minutes,
        ", auto-retrain" if retrain else "",
    )
    failures = 0
    while not stopping.is_set():
        try:
            monitor_once(spark, lake, settings, retrain)
        except Exception:
            failures += 1
            log.exception("drift check failed; trying again in %gs", settings.options.interval_seconds)
        stopping.wait(settings.options.interval_seconds)
    log.info("monitor stopped (%d failed checks)", failures)
    return 1 if failures else 0
