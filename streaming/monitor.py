"""`flo-seg monitor`: drift checks beside the stream; alarms to `drift_alarms` and Kafka; retrain on demand.

At each interval it compares the customers the stream updated recently (since the current model was
trained, and within the window) and today's segment shares with the training snapshot stored with the
model (batch/drift.py). A statistic beyond its threshold is an alarm: a row in `drift_alarms` (once per
window while it lasts), a log line, a JSON message on the alarms topic. With `auto_retrain`, an alarm
runs `train --from-lake` in this process, at most once per cooldown (`Retrainer`); the running stream
picks up the new version by its hot reload and re-scores every customer with it.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
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
from flo_seg.stopping import stop_requested
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
    has_reference: bool = True  # False: the model was trained before drift snapshots, nothing to compare with

    @property
    def alarms(self) -> tuple[Measurement, ...]:
        """The measurements beyond their threshold."""
        return tuple(m for m in self.measurements if m.is_alarm)


def _utc(naive: dt.datetime) -> dt.datetime:
    """A naive UTC time as an aware one, so Spark takes it as that instant whatever the process's zone."""
    return naive.replace(tzinfo=dt.UTC)


def recent_customers(spark: SparkSession, lake: LakeSettings, since: dt.datetime) -> DataFrame:
    """The customers the stream updated since `since` (naive UTC), each in its newest state, with the drift
    features. Read from state_log's change feed from `since` on, so a check reads the window's commits only.
    """
    # A window that starts after the log's newest commit reads nothing instead of failing.
    spark.conf.set("spark.databricks.delta.changeDataFeed.timestampOutOfRange.enabled", "true")
    changes = (
        spark.read.format("delta")
        .option("readChangeFeed", "true")
        .option("startingTimestamp", _utc(since).isoformat())
        .load(lake.table(STATE_LOG))
    )
    rows = changes.where(
        (F.col("_change_type") == "insert")
        & (F.col("source") == "stream")
        & (F.col("updated_at") >= F.lit(_utc(since)))
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
            has_reference=False,
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


def alarm_rows(spark: SparkSession, check: Check, alarms: Sequence[Measurement]) -> DataFrame:
    """Alarms of a check as `drift_alarms` rows (its times are naive UTC; stored as such whatever the
    process's time zone)."""
    rows = [
        (
            str(uuid.uuid4()),
            _utc(check.detected_at),
            check.model_version,
            m.kind,
            m.name,
            m.statistic,
            float(m.value),
            float(m.threshold),
            m.customers,
            _utc(check.window_start),
        )
        for m in alarms
    ]
    return spark.createDataFrame(rows, DRIFT_ALARMS_SCHEMA)


def already_recorded(spark: SparkSession, lake: LakeSettings, check: Check, since: dt.datetime) -> set[tuple[str, str]]:
    """(kind, name) of the alarms recorded for the check's model from `since` (naive UTC) on."""
    if not table_exists(spark, lake, DRIFT_ALARMS):
        return set()
    recent = read_table(spark, lake, DRIFT_ALARMS).where(
        (F.col("model_version") == check.model_version) & (F.col("detected_at") >= F.lit(_utc(since)))
    )
    return {(r["kind"], r["name"]) for r in recent.select("kind", "name").distinct().collect()}


def record_alarms(spark: SparkSession, lake: LakeSettings, settings: MonitorSettings, check: Check) -> int:
    """Write the check's new alarms to drift_alarms, then publish them (keyed by model version); how many.

    An alarm already recorded for the same model and statistic within the window is not recorded again
    (one row per statistic per window while a drift lasts). A failed publish is logged: the Delta row is
    the record, and the monitor carries on (its retrain does not wait for Kafka).
    """
    window = dt.timedelta(minutes=settings.options.window_minutes)
    known = already_recorded(spark, lake, check, check.detected_at - window) if check.alarms else set()
    new = [m for m in check.alarms if (m.kind, m.name) not in known]
    for m in check.alarms:
        if (m.kind, m.name) in known:
            log.info(
                "%s %s still beyond its threshold (recorded within the last %g minutes)",
                m.kind,
                m.name,
                window.total_seconds() / 60,
            )
    if not new:
        return 0
    ensure_table(spark, lake, DRIFT_ALARMS)
    rows = alarm_rows(spark, check, new).cache()
    try:
        append_table(rows, lake, DRIFT_ALARMS)
        if settings.topic is not None and settings.bootstrap_servers is not None:
            try:
                publish_json(
                    rows,
                    topic=settings.topic,
                    bootstrap_servers=settings.bootstrap_servers,
                    kafka_options=settings.kafka_options,
                    key="model_version",
                )
            except Exception:
                log.exception(
                    "could not publish %d drift alarm(s) to %s (they are in %s)", len(new), settings.topic, DRIFT_ALARMS
                )
    finally:
        rows.unpersist()
    return len(new)


Retrain = Callable[[], str]


@dataclass(kw_only=True)
class Retrainer:
    """`train --from-lake` after an alarm, at most once per cooldown: counted from the later of the current
    model's training and this monitor's last attempt, so a failed retrain waits for the cooldown too."""

    retrain: Retrain
    cooldown: dt.timedelta
    last_attempt: dt.datetime | None = None
    failures: int = 0  # retrains that raised (logged); `flo-seg monitor` exits non-zero after one

    def __call__(self, record: ModelRecord, now: dt.datetime, why: str) -> str | None:
        """Retrain for `why` unless within the cooldown; the new version, or None."""
        since = max(record.trained_at, self.last_attempt or record.trained_at)
        if now - since < self.cooldown:
            log.warning(
                "%s: not retraining, the last training of the lake was %.0f minutes ago (cooldown %.0f minutes)",
                why,
                (now - since).total_seconds() / 60,
                self.cooldown.total_seconds() / 60,
            )
            return None
        log.warning(
            "%s: retraining from the lake (model %s was trained %s UTC)", why, record.version, record.trained_at
        )
        self.last_attempt = now
        try:
            version = self.retrain()
        except Exception:
            self.failures += 1
            log.exception("the retrain failed; the next attempt waits %.0f minutes", self.cooldown.total_seconds() / 60)
            return None
        log.info("retrained: model %s is current; the running stream reloads it and re-scores every customer", version)
        return version


def monitor_once(
    spark: SparkSession,
    lake: LakeSettings,
    settings: MonitorSettings,
    retrainer: Retrainer | None = None,
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
    if not check.has_reference:
        log.warning("model %s has no training snapshot: drift cannot be checked until a retrain", check.model_version)
    version = None
    if retrainer is not None and (check.alarms or not check.has_reference):
        why = "drift alarm" if check.alarms else "no training snapshot"
        version = retrainer(current_model_record(spark, lake), now, why)
    return check, version


def run_monitor(
    spark: SparkSession, lake: LakeSettings, settings: MonitorSettings, retrainer: Retrainer | None = None
) -> int:
    """Check at the interval until SIGINT / SIGTERM; a failed check is logged and the next one runs."""
    stopping = stop_requested("the monitor after the current check", log)
    log.info(
        "monitoring %s every %gs (window %g minutes%s)",
        lake.root,
        settings.options.interval_seconds,
        settings.options.window_minutes,
        ", auto-retrain" if retrainer else "",
    )
    failures = 0
    while not stopping.is_set():
        try:
            monitor_once(spark, lake, settings, retrainer)
        except Exception:
            failures += 1
            log.exception("drift check failed; trying again in %gs", settings.options.interval_seconds)
        stopping.wait(settings.options.interval_seconds)
    retrains_failed = retrainer.failures if retrainer else 0
    log.info("monitor stopped (%d failed checks, %d failed retrains)", failures, retrains_failed)
    return 1 if failures or retrains_failed else 0
