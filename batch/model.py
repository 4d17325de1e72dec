"""The clustering pipeline: cap → log → assemble → scale → cluster, with k chosen by silhouette."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from pyspark.ml import Estimator, Pipeline, PipelineModel, Transformer
from pyspark.ml.clustering import BisectingKMeans, GaussianMixture, KMeans
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.feature import SQLTransformer, StandardScaler, VectorAssembler
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


@dataclass(frozen=True, kw_only=True)
class KCandidate:
    """One row of the k-selection table."""

    k: int
    silhouette: float | None
    cost: float | None


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


def select_k(
    sample_df: DataFrame,
    caps: dict[str, float],
    *,
    algorithm: str,
    k_values: range,
    seed: int,
    max_iter: int,
    progress: Callable[[str], None] = log.info,
) -> list[KCandidate]:
    """Silhouette and cost for each k on a cached sample (the full data is only used for the final fit)."""
    # A sample fits in a couple of partitions; more would only add task overhead to every iteration.
    prepared = (
        Pipeline(stages=preprocessing_stages(caps, algorithm))
        .fit(sample_df)
        .transform(sample_df)
        .select(fit_features(algorithm))
        .coalesce(2)
        .cache()
    )
    prepared.count()
    # Silhouette does not change under a translation either, so it reads the clusterer's own features.
    evaluator = ClusteringEvaluator(
        featuresCol=fit_features(algorithm), predictionCol=PREDICTION, metricName="silhouette"
    )
    table = []
    try:
        for k in k_values:
            started = time.monotonic()
            model = clusterer(algorithm, k, seed, max_iter).fit(prepared)
            predicted = model.transform(prepared)
            # A clusterer (GMM in particular) may return fewer than k non-empty clusters; silhouette needs two.
            found = predicted.select(PREDICTION).distinct().count()
            silhouette = float(evaluator.evaluate(predicted)) if found > 1 else None
            candidate = KCandidate(k=k, silhouette=silhouette, cost=_cost(model))
            table.append(candidate)
            took = time.monotonic() - started
            shown = "n/a (fewer than 2 clusters)" if silhouette is None else f"{silhouette:.4f}"
            progress(f"k={k:>2}  clusters={found}  silhouette={shown}  cost={candidate.cost}  ({took:.1f}s)")
    finally:
        prepared.unpersist()
    return table


def best_k(table: list[KCandidate]) -> int:
    """Highest silhouette; ties go to the smaller k (fewer segments are easier to act on)."""
    scored = [c for c in table if c.silhouette is not None]
    if not scored:
        raise ValueError("no k produced two or more clusters; pass --k or use another --algorithm")
    return max(scored, key=lambda c: (round(c.silhouette or 0.0, 6), -c.k)).k


def restart_seeds(seed: int, restarts: int) -> list[int]:
    """Seeds of the restarts: derived from the user's seed, so a run is reproducible."""
    return [seed + i * 7919 for i in range(restarts)]


def fit_pipeline(
    train_df: DataFrame,
    caps: dict[str, float],
    *,
    algorithm: str,
    k: int,
    seed: int,
    max_iter: int,
    restarts: int = 1,
) -> PipelineModel:
    """Fit the final pipeline on all training customers, keeping the lowest-cost of `restarts` fits.

    Clustering from one random start often stops in a local optimum, and a different seed then gives
    different segments; the best of a few starts lands in the same optimum far more often.
    """
    prep = Pipeline(stages=preprocessing_stages(caps, algorithm)).fit(train_df)
    prepared = prep.transform(train_df).select(fit_features(algorithm)).cache()
    try:
        best, best_cost = None, float("inf")
        for s in restart_seeds(seed, restarts):
            model = clusterer(algorithm, k, s, max_iter).fit(prepared)
            cost = _cost(model)
            log.info("fit k=%d seed=%d cost=%s", k, s, cost)
            if best is None or (cost is not None and cost < best_cost):
                best, best_cost = model, cost if cost is not None else best_cost
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
