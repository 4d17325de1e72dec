"""The clustering pipeline for each `--algorithm`, on a small generated history."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from batch.features import CLUSTER_FEATURES, with_customer_features
from batch.generate import write_history_csv
from batch.load import read_history
from batch.model import PREDICTION, SCALED, feature_caps, fit_pipeline, score_clusters, select_k
from batch.segments import cluster_profiles_z, name_segments
from batch.train import state_from_history
from batch.validate import validate_history


@pytest.fixture(scope="module")
def features(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> DataFrame:
    path = Path(tmp_path_factory.mktemp("model")) / "history.csv"
    write_history_csv(path, customers=1500, seed=3)
    state = validate_history(read_history(spark, str(path))).transform(state_from_history)
    return with_customer_features(state, F.lit(dt.date(2021, 6, 1))).cache()


@pytest.mark.parametrize("algorithm", ["kmeans", "bisecting"])
def test_every_cluster_is_used_and_named(spark: SparkSession, features: DataFrame, algorithm: str) -> None:
    caps = feature_caps(features, 0.99)
    model = fit_pipeline(features, caps, algorithm=algorithm, k=4, seed=42, max_iter=20)
    scored = score_clusters(model, features)
    sizes = {r[PREDICTION]: r["count"] for r in scored.groupBy(PREDICTION).count().collect()}
    assert sorted(sizes) == [0, 1, 2, 3], sizes
    assert sum(sizes.values()) == 1500
    assert len(set(name_segments(cluster_profiles_z(scored)).values())) == 4
    # Naming reads z-scores whatever the clusterer was fitted on: the scaled features stay centred.
    values = vector_to_array(F.col(SCALED))
    means = scored.agg(*[F.avg(values[i]) for i in range(len(CLUSTER_FEATURES))]).first()
    assert means is not None
    assert all(abs(m) < 1e-9 for m in means), means
    assert "uncentred_features" not in scored.columns


def test_k_selection_with_bisecting_finds_several_clusters(features: DataFrame) -> None:
    caps = feature_caps(features, 0.99)
    table = select_k(features, caps, algorithm="bisecting", k_values=range(2, 5), seed=42, max_iter=20)
    assert [c.k for c in table] == [2, 3, 4]
    assert all(c.silhouette is not None for c in table), table
