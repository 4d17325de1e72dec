"""Scoring customers with a stored model version: the same code for re-scoring and the stream."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pyspark.ml import PipelineModel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from batch.clv import with_clv
from batch.features import default_as_of, with_customer_features
from batch.model import PREDICTION, SCALED, score_clusters
from batch.registry import ModelRecord, current_model_record, load_pipeline
from batch.rfm import with_rfm_scores
from batch.segments import segment_name
from flo_seg.settings import LakeSettings


@dataclass(frozen=True)
class ScoringModel:
    """A model version ready to score: its record (names, edges) and its fitted pipeline."""

    record: ModelRecord
    pipeline: PipelineModel


def load_current_model(spark: SparkSession, lake: LakeSettings) -> ScoringModel:
    """The current version from the registry."""
    record = current_model_record(spark, lake)
    return ScoringModel(record, load_pipeline(record))


def with_segments(features_df: DataFrame, model: ScoringModel) -> DataFrame:
    """Cluster, segment name, model version, P(alive) and expected orders and value for featurised customers."""
    return (
        score_clusters(model.pipeline, features_df)
        .drop(SCALED)
        .withColumn("segment", segment_name(model.record.segment_names, F.col(PREDICTION)))
        .withColumn("model_version", F.lit(model.record.version))
        .transform(lambda df: with_clv(df, model.record.clv))
    )


def score_customers(state_df: DataFrame, model: ScoringModel, as_of_col: Column) -> DataFrame:
    """Features, segment and RFM scores (edges fixed at training) for customer-state rows."""
    return (
        state_df.transform(lambda df: with_customer_features(df, as_of_col))
        .transform(lambda df: with_segments(df, model))
        .transform(lambda df: with_rfm_scores(df, model.record.edges))
        .withColumn("scored_at", F.current_timestamp())
    )


def resolve_as_of(state_df: DataFrame, as_of: dt.date | None) -> dt.date:
    """The analysis date: given, or two days after the latest last order (2021-06-01 on FLO data)."""
    if as_of is not None:
        return as_of
    row = state_df.agg(default_as_of(F.max("last_order_date")).alias("as_of")).first()
    if row is None or row["as_of"] is None:
        raise ValueError("no customers to score: customer_state is empty")
    resolved: dt.date = row["as_of"]
    return resolved
