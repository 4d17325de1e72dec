"""`flo-seg train`: history (or the lake's customer_state) → validated state → model → segments → tables."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import pandas as pd
from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from batch.audiences import CLASSIC_AUDIENCES, rebuild_members
from batch.clv import CLV_INPUTS, ClvModel, clv_inputs, fit_clv
from batch.compact import append_segments, compact_lake, reset_logs
from batch.drift import DRIFT_FEATURES, drift_reference
from batch.explore import CORRELATED, data_profile, profile_frame
from batch.features import CLUSTER_FEATURES, with_customer_features
from batch.lake import (
    append_table,
    ensure_table,
    latest_commit,
    overwrite_table,
    read_table,
    table_exists,
    write_concurrently,
)
from batch.load import read_history
from batch.migrations import retrain_change_rows
from batch.model import best_k, feature_caps, fit_pipeline, sample_points, score_candidate, score_clusters, select_k
from batch.registry import ModelRecord, artifact_path, new_version, publish_model
from batch.rfm import training_rfm_edges, with_training_rfm_scores
from batch.score import ScoringModel, resolve_as_of, with_segments
from batch.segments import (
    campaign_targets,
    cluster_profiles_z,
    name_segments,
    population,
    recommend_action,
    segment_profiles,
)
from batch.validate import DETAIL, REASON, ROW_ORDER, raw_record, validate_history
from flo_seg.progress import progress
from flo_seg.settings import LakeSettings, TrainSettings
from schemas.tables import (
    AUDIENCE_MEMBERS,
    CAMPAIGN_TARGETS,
    CUSTOMER_SEGMENTS,
    CUSTOMER_STATE,
    CUSTOMER_STATE_SCHEMA,
    DATA_PROFILE,
    QUARANTINE,
    SEGMENT_CHANGES,
    SEGMENT_LOG,
    SEGMENT_PROFILES,
    STATE_LOG,
    STREAM_CLOCK,
)

log = logging.getLogger(__name__)

# A Spark start within this share of the driver's best cost for the chosen k ends the restarts. Two
# starts converged on the same optimum differ by far less; a local optimum 0.07% worse on the real data
# named 5% of the customers differently.
COST_SLACK = 0.0002


@contextmanager
def step(name: str) -> Iterator[None]:
    """Log the start and duration of a long step, so a user sees progress."""
    log.info("%s ...", name)
    started = time.monotonic()
    yield
    log.info("%s done in %.1fs", name, time.monotonic() - started)


@dataclass(kw_only=True)
class TrainSummary:
    """What a training run read, kept, rejected and produced."""

    rows_read: int = 0
    rows_kept: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    model_version: str = ""
    k: int = 0
    silhouette: float | None = None
    as_of: dt.date | None = None
    segments: dict[str, int] = field(default_factory=dict)


def state_from_history(validated_df: DataFrame) -> DataFrame:
    """Customer-state rows from validated history rows (integers for counts, stamped now)."""
    kept = validated_df.where(F.col(REASON).isNull())
    stamped = (
        kept.withColumn("updated_at", F.current_timestamp())
        .withColumn("last_order_ts", F.lit(None).cast("timestamp"))
        .withColumn("state_seq", F.lit(0).cast("long"))
    )
    return stamped.select(*[F.col(f.name).cast(f.dataType) for f in CUSTOMER_STATE_SCHEMA.fields], ROW_ORDER)


def quarantine_rows(validated_df: DataFrame, source: str) -> DataFrame:
    """Rejected history rows with their raw record and reason."""
    return validated_df.where(F.col(REASON).isNotNull()).select(
        F.lit(source).alias("source"),
        raw_record().alias("raw_record"),
        F.col(REASON).alias("reason"),
        F.col(DETAIL).alias("detail"),
        F.lit(None).cast("string").alias("kafka_topic"),
        F.lit(None).cast("int").alias("kafka_partition"),
        F.lit(None).cast("long").alias("kafka_offset"),
        F.current_timestamp().alias("detected_at"),
    )


class StreamedStateWouldBeLost(ValueError):
    """`train --history` would replace a customer_state the stream has added orders to."""


def streamed_into(spark: SparkSession, lake: LakeSettings) -> str | None:
    """How the stream has changed this lake's customer_state, or None if it never has."""
    if not table_exists(spark, lake, CUSTOMER_STATE):
        return None
    if table_exists(spark, lake, STATE_LOG):
        updates = read_table(spark, lake, STATE_LOG).count()
        if updates:
            return f"{updates} stream state update(s) in {STATE_LOG}"
    history = DeltaTable.forPath(spark, lake.table(CUSTOMER_STATE)).history().select("operation")
    merges = history.where(F.col("operation") == "MERGE").count()
    if merges:
        return f"{merges} stream MERGE commit(s)"
    if table_exists(spark, lake, STREAM_CLOCK):
        return "a stream clock (the stream has run on it)"
    return None


def guard_streamed_state(spark: SparkSession, lake: LakeSettings, history_path: str, replace_state: bool) -> None:
    """Refuse to rebuild customer_state from a CSV over orders only the stream knows, unless told to."""
    streamed = streamed_into(spark, lake)
    if streamed is None:
        return
    if not replace_state:
        raise StreamedStateWouldBeLost(
            f"customer_state under {lake.root} holds orders the stream added ({streamed}); `train --history "
            f"{history_path}` would discard them. Retrain on the lake with `train --from-lake`, or pass "
            "--replace-state to deliberately reset the state to the CSV"
        )
    log.warning(
        "--replace-state: customer_state is rebuilt from %s, discarding what the stream added (%s). The stream's "
        "checkpoint still holds those events as seen: start the stream on a new --checkpoint to apply events again",
        history_path,
        streamed,
    )


def sample_customers(features_df: DataFrame, rows: int, size: int, seed: int) -> DataFrame:
    """A seeded sample of about `size` customers to choose k and fit on (all of them when fewer).

    In one partition: fits on it run one task per iteration. A plan of its own, so caching and
    unpersisting it leaves the customers' cache alone.
    """
    if rows <= size:
        return features_df.coalesce(1)
    return features_df.sample(fraction=min(1.0, 1.1 * size / rows), seed=seed).limit(size).coalesce(1)


def run_train(
    spark: SparkSession,
    lake: LakeSettings,
    settings: TrainSettings,
    *,
    history_path: str | None,
    as_of: dt.date | None = None,
    replace_state: bool = False,
    audiences: Mapping[str, str] = CLASSIC_AUDIENCES,
) -> TrainSummary:
    """Train a new model version, publish it, and rewrite segments, profiles and campaign lists.

    From a history CSV, customer_state is rebuilt from it: refused when the stream has added to it,
    unless `replace_state`. `audiences` (name: predicate) decide audience_members.
    """
    summary = TrainSummary()
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    if history_path is not None:
        guard_streamed_state(spark, lake, history_path, replace_state)
        with step(f"reading and validating {history_path}"):
            validated = validate_history(read_history(spark, history_path), latest_date=as_of).cache()
            counts = {r[REASON]: r["count"] for r in validated.groupBy(REASON).count().collect()}
            summary.rows_read = sum(counts.values())
            summary.rows_kept = counts.pop(None, 0)
            summary.quarantined = dict(sorted(counts.items()))
        if summary.rows_kept == 0:
            raise ValueError(f"{history_path}: no valid customers (quarantined: {summary.quarantined})")
        state = state_from_history(validated)
        order_col_name = ROW_ORDER
    else:
        compact_lake(spark, lake)  # what the stream added counts
        state = read_table(spark, lake, CUSTOMER_STATE)
        order_col_name = "master_id"
    summary.as_of = resolve_as_of(state, as_of)
    features = state.transform(lambda df: with_customer_features(df, F.lit(summary.as_of))).cache()
    rows = features.count()
    summary.rows_kept = summary.rows_kept or rows
    log.info("training on %d customers, analysis date %s", rows, summary.as_of)

    with step("classic RFM quintile edges"):
        edges, ranks = training_rfm_edges(features)
    caps = feature_caps(features, settings.cap_quantile)
    log.info("outlier caps at the %.0fth percentile: %s", settings.cap_quantile * 100, caps)

    sample = sample_customers(features, rows, settings.sample, settings.seed).cache()
    points = sample_points(sample, caps, settings.algorithm)
    # One collect of the sample for the driver's two uses: the feature correlations and the CLV fit.
    collected = sample.select(
        *CORRELATED,
        *[F.col(name).alias(f"_drift_{name}") for name in DRIFT_FEATURES],
        *[column.alias(f"_clv_{name}") for name, column in clv_inputs().items()],
    ).toPandas()
    sample_pdf = collected[list(CORRELATED)]
    drift_pdf = collected[[f"_drift_{name}" for name in DRIFT_FEATURES]].set_axis(list(DRIFT_FEATURES), axis=1)
    clv = fit_lifetime_value(collected[[f"_clv_{name}" for name in CLV_INPUTS]].set_axis(list(CLV_INPUTS), axis=1))
    if settings.k is not None:
        k, table = settings.k, []
        reference = score_candidate(
            points,
            k,
            algorithm=settings.algorithm,
            seed=settings.seed,
            max_iter=settings.max_iter,
            restarts=settings.restarts,
        )
    else:
        k_values = range(settings.k_min, settings.k_max + 1)
        with (
            step(
                f"choosing k in {settings.k_min}..{settings.k_max} by silhouette on {len(points)} customers "
                f"({settings.algorithm}, every segment at least {settings.min_segment_share:.0%})"
            ),
            progress("choosing k", len(k_values), "k", log) as candidates,
        ):
            table = select_k(
                points,
                algorithm=settings.algorithm,
                seed=settings.seed,
                max_iter=settings.max_iter,
                k_values=k_values,
                restarts=settings.restarts,
                min_share=settings.min_segment_share,
                progress=candidates.one_done,
            )
            k = best_k(table)
            reference = next(c for c in table if c.k == k)
    # The driver's best cost for this k is what a good Spark start reaches (GMM's costs are not comparable).
    good_enough = None if settings.algorithm == "gmm" or reference.cost is None else reference.cost * (1 + COST_SLACK)
    with step(f"fitting {settings.algorithm} with k={k} on {len(points)} of {rows} customers in Spark ML"):
        pipeline = fit_pipeline(
            sample,
            caps,
            algorithm=settings.algorithm,
            k=k,
            seed=settings.seed,
            max_iter=settings.max_iter,
            restarts=settings.restarts,
            good_enough=good_enough,
            initial_centers=reference.centers,
        )
        # Named from the sample's cluster profiles, so every customer is scored once, below.
        names = name_segments(cluster_profiles_z(score_clusters(pipeline, sample)))
        sample.unpersist()
    version = new_version(now)
    record = ModelRecord(
        version=version,
        artifact_path=artifact_path(lake, version),
        algorithm=settings.algorithm,
        k=k,
        silhouette=next((c.silhouette for c in table if c.k == k), None),
        k_selection=tuple(table),
        features=CLUSTER_FEATURES,
        caps=caps,
        edges=edges,
        segment_names=names,
        training_rows=rows,
        seed=settings.seed,
        as_of=summary.as_of,
        trained_at=now,
        clv=clv,
    )
    pipeline.write().overwrite().save(record.artifact_path)

    previous = segments_before(spark, lake)
    with step("scoring and writing tables"):
        scored = (
            features.transform(lambda df: with_segments(df, ScoringModel(record, pipeline)))
            .transform(lambda df: with_training_rfm_scores(df, edges, ranks, order_col_name))
            .withColumn("scored_at", F.lit(now))
            .cache()
        )
        # Scores every customer once, into the cache that every output below reads.
        summary.segments = {r["segment"]: r["count"] for r in scored.groupBy("segment").count().collect()}
        # What drift checks compare with: the sample's features, every customer's segment (before the table
        # writes, so a failure here does not leave them written under a version that never becomes current).
        record = replace(record, drift=drift_reference(drift_pdf, summary.segments))
        warn_small_segments(summary.segments, settings.min_segment_share)
        checked = validated if history_path is not None else None
        writes: dict[str, Callable[[], object]] = {
            SEGMENT_PROFILES: lambda: write_profiles(spark, lake, scored, version),
            CAMPAIGN_TARGETS: lambda: write_campaigns(lake, scored),
            AUDIENCE_MEMBERS: lambda: rebuild_members(spark, lake, scored, audiences, now),
            DATA_PROFILE: lambda: overwrite_table(
                profile_frame(spark, data_profile(checked, features, sample_pdf, caps), version),
                lake,
                DATA_PROFILE,
                replace_where=f"model_version = '{version}'",
            ),
        }
        if history_path is not None:
            source = f"history:{history_path}"
            writes[CUSTOMER_STATE] = lambda: replace_state_table(spark, lake, state)
            writes[CUSTOMER_SEGMENTS] = lambda: overwrite_table(scored, lake, CUSTOMER_SEGMENTS)
            writes[QUARANTINE] = lambda: append_table(quarantine_rows(validated, source), lake, QUARANTINE)
        else:
            # Through segment_log, like a re-score: a running stream's state learns the new segments.
            writes[CUSTOMER_SEGMENTS] = lambda: segments_through_log(spark, lake, scored)
        if previous is not None:
            writes[SEGMENT_CHANGES] = lambda: record_moves(spark, lake, previous, scored, now)
        write_concurrently(writes, step)
        # Last: the version becomes current only once its segments are written.
        with step("model registry"):
            publish_model(spark, lake, record)
    scored.unpersist()
    features.unpersist()
    if history_path is not None:
        validated.unpersist()
    summary.model_version, summary.k, summary.silhouette = version, k, record.silhouette
    return summary


def fit_lifetime_value(inputs: pd.DataFrame) -> ClvModel | None:
    """BG/NBD and Gamma-Gamma fitted on the training sample's CLV_INPUTS columns; None (and a warning) when
    the fit fails, so that segments are still trained and the CLV columns stay empty for this version."""
    with step(f"fitting lifetime value (BG/NBD and Gamma-Gamma) on {len(inputs)} customers"):
        try:
            model = fit_clv(*(inputs[c].to_numpy() for c in CLV_INPUTS))
        except (RuntimeError, ValueError) as exc:
            log.warning("lifetime value not fitted (%s): p_alive and expected value stay empty for this model", exc)
            return None
    orders, spend = model.orders, model.spend
    log.info(
        "BG/NBD r=%.3g alpha=%.3g a=%.3g b=%.3g (mean dropout chance after an order %.2g%%); Gamma-Gamma "
        "p=%.3g q=%.3g gamma=%.3g (population mean order value %.2f)",
        orders.r,
        orders.alpha,
        orders.a,
        orders.b,
        100 * orders.a / (orders.a + orders.b),
        spend.p,
        spend.q,
        spend.gamma,
        spend.gamma * spend.p / (spend.q - 1) if spend.q > 1 else float("nan"),
    )
    return model


def segments_before(spark: SparkSession, lake: LakeSettings) -> DataFrame | None:
    """customer_segments as it is before this train writes it (pinned to its current version), if any."""
    if not table_exists(spark, lake, CUSTOMER_SEGMENTS):
        return None
    version = latest_commit(spark, lake, CUSTOMER_SEGMENTS)
    return spark.read.format("delta").option("versionAsOf", version).load(lake.table(CUSTOMER_SEGMENTS))


def record_moves(
    spark: SparkSession, lake: LakeSettings, previous: DataFrame, scored: DataFrame, now: dt.datetime
) -> None:
    """Append the customers this retrain moves to another segment to segment_changes (migration counts them)."""
    ensure_table(spark, lake, SEGMENT_CHANGES)
    moves = retrain_change_rows(previous, scored, now).cache()
    append_table(moves, lake, SEGMENT_CHANGES)
    log.info("the retrain moved %d customers to another segment (recorded in segment_changes)", moves.count())
    moves.unpersist()


def replace_state_table(spark: SparkSession, lake: LakeSettings, state: DataFrame) -> None:
    """customer_state from the history; the stream's logs, if any, are emptied: they no longer apply."""
    overwrite_table(state, lake, CUSTOMER_STATE)
    if table_exists(spark, lake, STATE_LOG) or table_exists(spark, lake, SEGMENT_LOG):
        reset_logs(spark, lake)


def segments_through_log(spark: SparkSession, lake: LakeSettings, scored: DataFrame) -> None:
    """New segments via segment_log and a compaction, as a re-score writes them."""
    append_segments(scored, lake, "train")
    compact_lake(spark, lake)


def warn_small_segments(sizes: dict[str, int], min_share: float) -> None:
    """Say so when a segment of the whole base ends up under the share the sample was held to."""
    total = sum(sizes.values())
    for name, n in sorted(sizes.items()):
        if total and n / total < min_share:
            log.warning(
                "segment %s holds %.1f%% of all customers, under --min-segment-share %.0f%% "
                "(the rule checks the sample)",
                name,
                100 * n / total,
                100 * min_share,
            )


def write_profiles(spark: SparkSession, lake: LakeSettings, scored: DataFrame, version: str) -> None:
    """Profiles with their marketing action, replacing this version's rows only."""
    profiles = segment_profiles(scored).withColumn("model_version", F.lit(version))
    pop = population(scored)
    rows: list[tuple[object, ...]] = []
    for p in profiles.collect():
        action = recommend_action(p.asDict(), pop)
        rows.append((*p, action.channel, action.offer, action.timing, action.text))
    frame = spark.createDataFrame(rows, schema=_profile_schema(profiles)).withColumn(
        "profiled_at", F.current_timestamp()
    )
    overwrite_table(frame, lake, SEGMENT_PROFILES, replace_where=f"model_version = '{version}'")


def _profile_schema(profiles: DataFrame) -> T.StructType:
    extra = [T.StructField(n, T.StringType()) for n in ("action_channel", "action_offer", "action_timing", "action")]
    return T.StructType([*profiles.schema.fields, *extra])


def write_campaigns(lake: LakeSettings, scored: DataFrame) -> None:
    """The two classic campaign lists as a Delta table and one CSV folder per campaign."""
    customers = scored.select(
        "master_id", "rfm_segment", "segment", "model_version", "as_of", "interested_in_categories_12"
    )
    targets = campaign_targets(customers).cache()
    overwrite_table(targets, lake, CAMPAIGN_TARGETS)
    (
        targets.select("campaign", "master_id", "rfm_segment", "segment")
        .repartition(1)
        .write.mode("overwrite")
        .partitionBy("campaign")
        .option("header", True)
        .csv(lake.exports_dir)
    )
    targets.unpersist()
