"""The clustering pipeline for each `--algorithm`, on a small generated history."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import numpy as np
import pytest
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.clustering import KMeansModel
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.functions import vector_to_array
from pyspark.ml.linalg import DenseVector
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from sklearn.metrics import silhouette_score

from batch.features import CLUSTER_FEATURES, with_customer_features
from batch.generate import write_history_csv
from batch.load import read_history
from batch.model import (
    PREDICTION,
    SCALED,
    KCandidate,
    NoAcceptableK,
    best_k,
    driver_clusterer,
    feature_caps,
    fit_pipeline,
    preprocessing_stages,
    sample_points,
    score_candidate,
    score_clusters,
    select_k,
    squared_euclidean_silhouette,
    vectors,
)
from batch.segments import cluster_profiles_z, name_segments
from batch.train import state_from_history, warn_small_segments
from batch.validate import validate_history
from flo_seg import cli


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
    table = select_k(
        sample_points(features, caps, "bisecting"), algorithm="bisecting", k_values=range(2, 5), seed=42, max_iter=20
    )
    assert [c.k for c in table] == [2, 3, 4]
    assert all(c.silhouette is not None for c in table), table


def test_silhouette_is_scikit_learns_squared_euclidean_one() -> None:
    rng = np.random.default_rng(7)
    points = np.vstack([rng.normal(0, 1, (40, 3)), rng.normal(4, 1, (25, 3)), [[9.0, 9.0, 9.0]]])
    labels = np.array([0] * 40 + [1] * 25 + [2])  # a singleton cluster scores 0 in both
    expected = silhouette_score(points, labels, metric="sqeuclidean")
    assert squared_euclidean_silhouette(points, labels) == pytest.approx(expected, abs=1e-12)


def test_silhouette_on_the_driver_equals_sparks_on_the_same_sample(spark: SparkSession, features: DataFrame) -> None:
    caps = feature_caps(features, 0.99)
    prepared = Pipeline(stages=preprocessing_stages(caps, "kmeans")).fit(features).transform(features)
    points = vectors(prepared, SCALED)
    labels = driver_clusterer("kmeans", 4, seed=1, max_iter=50, restarts=2).fit_predict(points)
    frame = spark.createDataFrame(
        [(DenseVector(p), int(c)) for p, c in zip(points, labels, strict=True)], ["features", PREDICTION]
    )
    evaluator = ClusteringEvaluator(featuresCol="features", predictionCol=PREDICTION, metricName="silhouette")
    assert squared_euclidean_silhouette(points, labels) == pytest.approx(evaluator.evaluate(frame), abs=1e-9)


def test_a_k_with_a_segment_under_the_share_is_refused(features: DataFrame) -> None:
    caps = feature_caps(features, 0.99)
    table = select_k(
        sample_points(features, caps, "kmeans"),
        algorithm="kmeans",
        k_values=range(2, 4),
        seed=42,
        max_iter=50,
        min_share=0.34,
    )
    by_k = {c.k: c for c in table}
    # Three segments cannot all hold more than a third of the customers.
    assert by_k[3].refused is not None and "< 34%" in by_k[3].refused
    assert all(c.calinski_harabasz and c.calinski_harabasz > 0 for c in table)
    if by_k[2].refused is None:
        assert best_k(table) == 2
    else:
        with pytest.raises(NoAcceptableK, match="lower --min-segment-share"):
            best_k(table)


def test_best_k_takes_the_smallest_k_within_the_tolerance_of_the_best_silhouette_not_refused() -> None:
    table = [
        KCandidate(k=4, silhouette=0.30, cost=9.0),
        KCandidate(k=5, silhouette=0.346, cost=8.0),
        KCandidate(k=6, silhouette=0.35, cost=7.0),
        KCandidate(k=7, silhouette=0.50, cost=6.0, refused="smallest segment 1.0% < 3% of customers"),
    ]
    assert best_k(table) == 5
    assert best_k(table, tolerance=0.001) == 6
    with pytest.raises(NoAcceptableK, match=r"k=7: smallest segment 1\.0%"):
        best_k([table[3]])


def test_restarts_stop_at_the_first_start_that_is_good_enough(
    features: DataFrame, caplog: pytest.LogCaptureFixture
) -> None:
    caps = feature_caps(features, 0.99)
    with caplog.at_level(logging.INFO, logger="batch.model"):
        fit_pipeline(features, caps, algorithm="kmeans", k=3, seed=1, max_iter=10, restarts=3, good_enough=float("inf"))
        assert sum("fit k=3" in r.getMessage() for r in caplog.records) == 1
        caplog.clear()
        fit_pipeline(features, caps, algorithm="kmeans", k=3, seed=1, max_iter=10, restarts=3, good_enough=0.0)
        assert sum("fit k=3" in r.getMessage() for r in caplog.records) == 3


def test_the_spark_fit_starts_from_the_drivers_centers_and_saves_as_a_spark_ml_model(
    features: DataFrame, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caps = feature_caps(features, 0.99)
    points = sample_points(features, caps, "kmeans")
    driver = score_candidate(points, 4, algorithm="kmeans", seed=42, max_iter=100, restarts=3)
    assert driver.centers is not None and driver.centers.shape == (4, len(CLUSTER_FEATURES))
    with caplog.at_level(logging.INFO, logger="batch.model"):
        model = fit_pipeline(
            features, caps, algorithm="kmeans", k=4, seed=42, max_iter=100, initial_centers=driver.centers
        )
    fits = [r.getMessage() for r in caplog.records if "fit k=4" in r.getMessage()]
    assert len(fits) == 1 and "from the driver's centers" in fits[0], fits
    # From a converged start Lloyd's iterations only polish it: the same optimum, in a few Spark jobs.
    iterations = int(fits[0].split("iterations=")[1].split()[0])
    assert 1 <= iterations <= 10, fits
    kmeans = model.stages[-1]
    assert isinstance(kmeans, KMeansModel)
    centers = np.array(kmeans.clusterCenters())
    assert np.abs(centers - driver.centers).max() < 0.05
    labels = ((points[:, None, :] - centers[None]) ** 2).sum(axis=2).argmin(axis=1)
    cost = float(((points - centers[labels]) ** 2).sum())
    assert driver.cost is not None and cost <= driver.cost * (1 + 1e-9)
    # A Spark ML model like any other: its parameters are the estimator's, and it saves, loads and scores.
    assert (kmeans.getK(), kmeans.getFeaturesCol(), kmeans.getPredictionCol()) == (4, SCALED, PREDICTION)
    model.write().overwrite().save(str(tmp_path / "model"))
    loaded = PipelineModel.load(str(tmp_path / "model"))
    before = score_clusters(model, features).select("master_id", PREDICTION)
    after = score_clusters(loaded, features).select("master_id", PREDICTION)
    assert before.exceptAll(after).count() == 0 and before.count() == 1500
    assert sorted(r[PREDICTION] for r in before.select(PREDICTION).distinct().collect()) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="3 initial centers for k=4"):
        fit_pipeline(features, caps, algorithm="kmeans", k=4, seed=42, max_iter=10, initial_centers=driver.centers[:3])


def test_a_segment_under_the_share_on_the_whole_base_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="batch.train"):
        warn_small_segments({"big": 98, "tiny": 2}, 0.03)
    assert [r.getMessage() for r in caplog.records] == [
        "segment tiny holds 2.0% of all customers, under --min-segment-share 3% (the rule checks the sample)"
    ]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--k-min", "6", "--k-max", "4"], "flo-seg train: error: train (flag --k-min): need k_min <= k_max, got 6..4"),
        (["--k-max", "15"], "flo-seg train: --k-max must be at most 14, got 15"),
        (["--min-segment-share", "0.7"], "argument --min-segment-share: Input should be less than 0.5"),
    ],
)
def test_train_refuses_an_impossible_k_range_or_share(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    try:
        code: object = cli.main(
            ["--lake", str(tmp_path / "lake"), "train", "--history", str(tmp_path / "h.csv"), *flags]
        )
    except SystemExit as stopped:  # argparse's refusal, or a check after the settings are loaded
        code = stopped.code
    assert code != 0
    assert message in capsys.readouterr().err + str(code)
    assert not (tmp_path / "lake").exists()
