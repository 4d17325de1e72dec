"""The clustering pipeline: cap → log → assemble → scale → cluster, with k chosen by silhouette."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from pyspark.ml import Estimator, Pipeline, PipelineModel, Transformer
from pyspark.ml.clustering import BisectingKMeans, GaussianMixture, KMeans, KMeansModel
from pyspark.ml.feature import SQLTransformer, StandardScaler, VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from batch.features import CAPPED_FEATURES, CLUSTER_FEATURES

log = logging.getLogger(__name__)

ALGORITHMS: tuple[str, ...] = ("kmeans", "bisecting", "gmm")
PREDICTION = "cluster"
SCALED = "scaled_features"
# Spark's BisectingKMeans splits a cluster by nudging its center by a step proportional to the center's
# norm, so on mean-centred features (root center at the origin) it never splits. It clusters the same
# scaled features without the centring (Euclidean clustering does not depend on a translation), while
# SCALED stays the z-scores that segment naming and the report read.
UNCENTRED = "uncentred_features"


# Silhouettes closer than this to the best are a tie, which the smaller k wins (best_k).
SILHOUETTE_TOLERANCE = 0.005
# Starts of each driver-side candidate fit: cheap there, and enough that a candidate's silhouette no
# longer depends on the seed (with 3, the real data's k = 7 scored 0.339 or 0.373 by seed).
CANDIDATE_STARTS = 10


@dataclass(frozen=True, kw_only=True)
class KCandidate:
    """One row of the k-selection table: the criterion's inputs and, if refused, why."""

    k: int
    silhouette: float | None
    cost: float | None
    calinski_harabasz: float | None = None
    min_share: float | None = None
    refused: str | None = None
    # The driver's k-means centers (k × features): where the Spark fit of the chosen k starts. In memory only.
    centers: np.ndarray | None = field(default=None, repr=False, compare=False)


def feature_caps(features_df: DataFrame, quantile: float) -> dict[str, float]:
    """Upper caps of the heavy-tailed features at a training quantile (the documented outlier rule)."""
    values = features_df.approxQuantile(list(CAPPED_FEATURES), [quantile], 0.001)
    return {name: float(v[0]) for name, v in zip(CAPPED_FEATURES, values, strict=True)}


def capped_log_sql(caps: dict[str, float]) -> str:
    """SQL of the first pipeline stage, so the caps travel inside the saved PipelineModel."""
    parts = [f"log1p(least(greatest(CAST({n} AS DOUBLE), 0D), {caps[n]!r}D)) AS x_{n}" for n in CAPPED_FEATURES]
    plain = [f"CAST({n} AS DOUBLE) AS x_{n}" for n in CLUSTER_FEATURES if n not in CAPPED_FEATURES]
    return f"SELECT *, {', '.join(parts + plain)} FROM __THIS__"


def fit_features(algorithm: str) -> str:
    """The vector column the clusterer of `algorithm` is fitted on."""
    return UNCENTRED if algorithm == "bisecting" else SCALED


def clusterer(algorithm: str, k: int, seed: int, max_iter: int) -> KMeans | BisectingKMeans | GaussianMixture:
    """The Spark ML estimator behind `--algorithm`."""
    if algorithm == "kmeans":
        return KMeans(
            featuresCol=fit_features(algorithm),
            predictionCol=PREDICTION,
            k=k,
            seed=seed,
            maxIter=max_iter,
            initSteps=2,
            tol=1e-4,
        )
    if algorithm == "bisecting":
        return BisectingKMeans(
            featuresCol=fit_features(algorithm), predictionCol=PREDICTION, k=k, seed=seed, maxIter=max_iter
        )
    if algorithm == "gmm":
        return GaussianMixture(
            featuresCol=fit_features(algorithm),
            predictionCol=PREDICTION,
            k=k,
            seed=seed,
            maxIter=max_iter,
            probabilityCol="cluster_probability",
            tol=0.01,
        )
    raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")


def preprocessing_stages(caps: dict[str, float], algorithm: str) -> list[Transformer | Estimator]:
    """Cap + log, assemble and scale: shared by k selection and the final pipeline."""
    stages: list[Transformer | Estimator] = [
        SQLTransformer(statement=capped_log_sql(caps)),
        VectorAssembler(inputCols=[f"x_{n}" for n in CLUSTER_FEATURES], outputCol="raw_features"),
        StandardScaler(inputCol="raw_features", outputCol=SCALED, withMean=True, withStd=True),
    ]
    if fit_features(algorithm) == UNCENTRED:
        stages.append(StandardScaler(inputCol="raw_features", outputCol=UNCENTRED, withMean=False, withStd=True))
    return stages


def clustering_pipeline(caps: dict[str, float], algorithm: str, k: int, seed: int, max_iter: int) -> Pipeline:
    """The whole model as one Pipeline, saved and loaded as one PipelineModel."""
    return Pipeline(stages=[*preprocessing_stages(caps, algorithm), clusterer(algorithm, k, seed, max_iter)])


def _cost(model: object) -> float | None:
    summary = getattr(model, "summary", None)
    if summary is None:
        return None
    if hasattr(summary, "trainingCost"):
        return float(summary.trainingCost)
    if hasattr(summary, "logLikelihood"):
        return -float(summary.logLikelihood)
    return None


def squared_euclidean_silhouette(points: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette with squared Euclidean distances, exact in O(n·k), as Spark's ClusteringEvaluator.

    The mean squared distance from a point to a cluster's members is |x|² - 2·x·mean + mean of |y|², so
    no pairwise matrix is needed; a singleton cluster's point scores 0 (Spark's and scikit-learn's rule).
    """
    clusters, index, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    if len(clusters) < 2:
        raise ValueError("silhouette needs at least two clusters")
    norms = np.einsum("ij,ij->i", points, points)
    sums = np.zeros((len(clusters), points.shape[1]))
    np.add.at(sums, index, points)
    norm_sums = np.bincount(index, weights=norms, minlength=len(clusters))
    dist = norms[:, None] - 2.0 * points @ (sums / sizes[:, None]).T + (norm_sums / sizes)[None, :]
    rows = np.arange(len(points))
    own_size = sizes[index]
    own = dist[rows, index] * own_size / np.maximum(own_size - 1, 1)
    dist[rows, index] = np.inf
    nearest = dist.min(axis=1)
    scores = np.where(own_size > 1, (nearest - own) / np.maximum(np.maximum(own, nearest), 1e-300), 0.0)
    return float(scores.mean())


def driver_clusterer(algorithm: str, k: int, seed: int, max_iter: int, restarts: int) -> Any:
    """The scikit-learn counterpart of `--algorithm`, for scoring k candidates on the driver.

    scikit-learn is imported here, on the driver of `train` only: scoring (the stream, re-score and
    their executors) imports this module and should not pay a second of start-up for it.
    """
    from sklearn.cluster import BisectingKMeans as SkBisectingKMeans
    from sklearn.cluster import KMeans as SkKMeans
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    if algorithm == "kmeans":
        return SkKMeans(n_clusters=k, n_init=restarts, max_iter=max_iter, tol=1e-4, random_state=seed)
    if algorithm == "bisecting":
        return SkBisectingKMeans(n_clusters=k, n_init=restarts, max_iter=max_iter, random_state=seed)
    if algorithm == "gmm":
        return SkGaussianMixture(n_components=k, n_init=restarts, max_iter=max_iter, tol=0.01, random_state=seed)
    raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")


def vectors(df: DataFrame, col_name: str) -> np.ndarray:
    """A vector column as an n×d numpy matrix on the driver (one collect through Arrow)."""
    frame = df.select(vector_to_array(F.col(col_name)).alias("v")).toPandas()
    return np.array(frame["v"].tolist(), dtype=float).reshape(len(frame), -1)


def score_candidate(
    points: np.ndarray, k: int, *, algorithm: str, seed: int, max_iter: int, restarts: int
) -> KCandidate:
    """Fit one k on the driver and measure it: silhouette, cost, Calinski-Harabasz, smallest share.

    KMeans and bisecting fits take CANDIDATE_STARTS starts; a Gaussian mixture, slower per start, `restarts`.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import calinski_harabasz_score

    starts = restarts if algorithm == "gmm" else max(restarts, CANDIDATE_STARTS)
    with warnings.catch_warnings():
        # Fewer distinct points than k: the candidate says so itself (found < k clusters).
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = driver_clusterer(algorithm, k, seed, max_iter, starts).fit(points)
    labels = model.predict(points)
    found = len(np.unique(labels))
    shares = np.bincount(labels, minlength=k) / len(labels)
    if algorithm == "gmm":
        cost = -float(model.score(points)) * len(points)
    else:
        cost = float(((points - model.cluster_centers_[labels]) ** 2).sum())
    centers = np.asarray(model.cluster_centers_, dtype=float) if algorithm == "kmeans" else None
    if found < 2:
        return KCandidate(
            k=k,
            silhouette=None,
            cost=cost,
            min_share=float(shares.min()),
            refused="fewer than 2 clusters",
            centers=centers,
        )
    return KCandidate(
        k=k,
        silhouette=squared_euclidean_silhouette(points, labels),
        cost=cost,
        calinski_harabasz=float(calinski_harabasz_score(points, labels)),
        min_share=float(shares.min()),
        centers=centers,
    )


def sample_points(sample_df: DataFrame, caps: dict[str, float], algorithm: str) -> np.ndarray:
    """A sample through the model's own preprocessing in Spark, as the matrix its clusterer is fitted on."""
    prep = Pipeline(stages=preprocessing_stages(caps, algorithm)).fit(sample_df)
    return vectors(prep.transform(sample_df), fit_features(algorithm))


def select_k(
    points: np.ndarray,
    *,
    algorithm: str,
    k_values: range,
    seed: int,
    max_iter: int,
    restarts: int = 3,
    min_share: float = 0.0,
    progress: Callable[[str], None] = log.info,
) -> list[KCandidate]:
    """Score every k of `k_values` on a sample's points, on the driver; mark those the share rule refuses.

    Each candidate is a scikit-learn fit of the same algorithm: a Spark fit per candidate costs dozens
    of Spark jobs, about 0.1 s each here, against a fraction of a second for the whole scikit-learn fit.
    """
    table = []
    for k in k_values:
        started = time.monotonic()
        candidate = score_candidate(points, k, algorithm=algorithm, seed=seed, max_iter=max_iter, restarts=restarts)
        if candidate.refused is None and (candidate.min_share or 0.0) < min_share:
            candidate = replace(
                candidate, refused=f"smallest segment {candidate.min_share:.1%} < {min_share:.0%} of customers"
            )
        table.append(candidate)
        shown = "n/a" if candidate.silhouette is None else f"{candidate.silhouette:.4f}"
        chi = "n/a" if candidate.calinski_harabasz is None else f"{candidate.calinski_harabasz:,.0f}"
        verdict = f"  refused: {candidate.refused}" if candidate.refused else ""
        progress(
            f"k={k:>2}  silhouette={shown}  calinski_harabasz={chi}  cost={candidate.cost:,.1f}  "
            f"smallest={candidate.min_share:.1%}  ({time.monotonic() - started:.1f}s){verdict}"
        )
    return table


class NoAcceptableK(ValueError):
    """Every candidate k was refused."""


def best_k(table: list[KCandidate], tolerance: float = SILHOUETTE_TOLERANCE) -> int:
    """The smallest k not refused whose silhouette is within `tolerance` of the best one.

    Fewer segments are easier to act on, and silhouettes this close are a tie: on the real FLO data
    k = 6, 7 and 8 score 0.373-0.374 whatever the seed, so taking the maximum would pick k by noise.
    """
    kept = [c for c in table if c.refused is None and c.silhouette is not None]
    if not kept:
        reasons = "; ".join(f"k={c.k}: {c.refused}" for c in table)
        raise NoAcceptableK(
            f"no candidate k is acceptable ({reasons}); pass --k, widen --k-min/--k-max or lower --min-segment-share"
        )
    top = max(c.silhouette or 0.0 for c in kept)
    return min(c.k for c in kept if (c.silhouette or 0.0) >= top - tolerance)


def restart_seeds(seed: int, restarts: int) -> list[int]:
    """Seeds of the restarts: derived from the user's seed, so a run is reproducible."""
    return [seed + i * 7919 for i in range(restarts)]


def kmeans_from_centers(prepared: DataFrame, centers: np.ndarray, *, seed: int, max_iter: int) -> KMeansModel:
    """Spark's k-means on `prepared` (its one vector column), Lloyd's iterations started from `centers`.

    Spark ML's KMeans has no initial-model parameter and starts from k-means||, which on the real data
    needs 54-87 Lloyd iterations, one Spark job each. Spark's RDD-based KMeans takes initial centers: from
    the driver's best start for this k it converges in a few iterations to the same optimum. Its result
    becomes the Spark ML KMeansModel the pipeline saves and scoring loads, with the parameters set here.
    """
    from pyspark.mllib.common import callMLlibFunc
    from pyspark.mllib.linalg import DenseVector as RDDVector
    from pyspark.mllib.util import MLUtils

    started = time.monotonic()
    estimator = clusterer("kmeans", len(centers), seed, max_iter)
    assert isinstance(estimator, KMeans)
    column = prepared.columns[0]
    points = MLUtils.convertVectorColumnsFromML(prepared.select(column), column).rdd.map(lambda row: row[0])
    # The estimator's own settings, so both fits stop by the same rule.
    trained = callMLlibFunc(
        "trainKMeansModel",
        points,
        estimator.getK(),
        estimator.getMaxIter(),
        estimator.getInitMode(),
        estimator.getSeed(),
        estimator.getInitSteps(),
        estimator.getTol(),
        [RDDVector(c) for c in centers],
        estimator.getDistanceMeasure(),
    )
    log.info(
        "fit k=%d from the driver's centers: cost=%s iterations=%d (%.1fs)",
        len(centers),
        trained.trainingCost(),
        trained.numIter(),
        time.monotonic() - started,
    )
    jvm = prepared.sparkSession.sparkContext._jvm
    assert jvm is not None
    uid = jvm.org.apache.spark.ml.util.Identifiable.randomUID("KMeans")
    model = KMeansModel(jvm.org.apache.spark.ml.clustering.KMeansModel(uid, trained))
    for param, value in estimator.extractParamMap().items():
        if model.hasParam(param.name):
            model.set(model.getParam(param.name), value)
    return model


def fit_pipeline(
    train_df: DataFrame,
    caps: dict[str, float],
    *,
    algorithm: str,
    k: int,
    seed: int,
    max_iter: int,
    restarts: int = 1,
    good_enough: float | None = None,
    initial_centers: np.ndarray | None = None,
) -> PipelineModel:
    """Fit the final pipeline on `train_df` (train uses a sample), keeping the lowest-cost of `restarts` fits.

    Clustering from one random start often stops in a local optimum, and a different seed then gives
    different segments; the best of a few starts lands in the same optimum far more often. A start whose
    cost is at most `good_enough` (train: the driver's best cost for this k, plus a little) ends the
    restarts early. With `initial_centers` (train: the driver's best of its starts for this k), k-means
    takes one start from them instead. Centroids of a few features converge on tens of thousands of
    points, so the fit's cost does not grow with the customer base; scoring every customer is one pass.
    """
    centers = initial_centers if algorithm == "kmeans" else None
    if centers is not None and centers.shape[0] != k:
        raise ValueError(f"{centers.shape[0]} initial centers for k={k}")
    prep = Pipeline(stages=preprocessing_stages(caps, algorithm)).fit(train_df)
    prepared = prep.transform(train_df).select(fit_features(algorithm)).cache()
    try:
        if centers is not None:
            warm = kmeans_from_centers(prepared, centers, seed=seed, max_iter=max_iter)
            return PipelineModel(stages=[*prep.stages, warm])
        best, best_cost = None, float("inf")
        for s in restart_seeds(seed, restarts):
            started = time.monotonic()
            model = clusterer(algorithm, k, s, max_iter).fit(prepared)
            cost = _cost(model)
            iterations = getattr(getattr(model, "summary", None), "numIter", None)
            log.info(
                "fit k=%d seed=%d cost=%s iterations=%s (%.1fs)", k, s, cost, iterations, time.monotonic() - started
            )
            if best is None or (cost is not None and cost < best_cost):
                best, best_cost = model, cost if cost is not None else best_cost
            if good_enough is not None:
                if best_cost <= good_enough:
                    break
                log.info("cost over %.1f (the driver's best for k=%d, plus slack): another start", good_enough, k)
    finally:
        prepared.unpersist()
    if best is None:
        raise ValueError("no clustering fit succeeded")
    return PipelineModel(stages=[*prep.stages, best])


def score_clusters(model: PipelineModel, features_df: DataFrame) -> DataFrame:
    """Cluster id (`cluster`) for every customer, keeping the input columns, dropping helper columns."""
    scored = model.transform(features_df)
    helpers = [
        c for c in scored.columns if c.startswith("x_") or c in ("raw_features", UNCENTRED, "cluster_probability")
    ]
    return scored.drop(*helpers).withColumn(PREDICTION, F.col(PREDICTION).cast("int"))
