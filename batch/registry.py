"""The model registry: versioned PipelineModel artifacts under the lake and the `models` table."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields

from pyspark.ml import PipelineModel
from pyspark.sql import Row, SparkSession
from pyspark.sql import functions as F

from batch.clv import ClvModel
from batch.drift import DriftReference, bins_rows, reference_from_columns
from batch.lake import overwrite_table, read_table, table_exists
from batch.model import KCandidate
from batch.rfm import RfmEdges
from flo_seg.settings import LakeSettings
from schemas.tables import MODELS, MODELS_SCHEMA

_CANDIDATE_FIELDS = tuple(f.name for f in fields(KCandidate))


@dataclass(frozen=True, kw_only=True)
class ModelRecord:
    """Everything needed to score with a model version, as stored in the `models` table."""

    version: str
    artifact_path: str
    algorithm: str
    k: int
    silhouette: float | None
    k_selection: tuple[KCandidate, ...]
    features: tuple[str, ...]
    caps: dict[str, float]
    edges: RfmEdges
    segment_names: dict[int, str]
    training_rows: int
    seed: int
    as_of: dt.date
    trained_at: dt.datetime
    # Lifetime value and churn risk (batch/clv.py); None for versions trained before them or a failed fit.
    clv: ClvModel | None = None
    # The training snapshot drift checks compare with (batch/drift.py); None for versions trained before it.
    drift: DriftReference | None = None

    def to_row(self, *, is_current: bool) -> Row:
        """The record as a `models` table row."""
        return Row(
            model_version=self.version,
            artifact_path=self.artifact_path,
            algorithm=self.algorithm,
            k=self.k,
            silhouette=self.silhouette,
            k_selection=[
                Row(
                    k=c.k,
                    silhouette=c.silhouette,
                    cost=c.cost,
                    calinski_harabasz=c.calinski_harabasz,
                    min_share=c.min_share,
                    refused=c.refused,
                )
                for c in self.k_selection
            ],
            features=list(self.features),
            caps=self.caps,
            r_edges=list(self.edges.recency),
            f_edges=list(self.edges.frequency),
            m_edges=list(self.edges.monetary),
            segment_names=self.segment_names,
            training_rows=self.training_rows,
            seed=self.seed,
            as_of=self.as_of,
            trained_at=self.trained_at,
            is_current=is_current,
            clv_params=None if self.clv is None else self.clv.as_map(),
            drift_bins=None if self.drift is None else [Row(**b) for b in bins_rows(self.drift)],
            segment_shares=None if self.drift is None else self.drift.segment_shares,
        )

    @classmethod
    def from_row(cls, row: Row) -> ModelRecord:
        """Parse a `models` table row."""
        return cls(
            version=row["model_version"],
            artifact_path=row["artifact_path"],
            algorithm=row["algorithm"],
            k=row["k"],
            silhouette=row["silhouette"],
            # Versions trained before the share rule lack its fields.
            k_selection=tuple(
                KCandidate(**{f: c.asDict().get(f) for f in _CANDIDATE_FIELDS}) for c in row["k_selection"] or []
            ),
            features=tuple(row["features"]),
            caps=dict(row["caps"]),
            edges=RfmEdges(
                recency=tuple(row["r_edges"]), frequency=tuple(row["f_edges"]), monetary=tuple(row["m_edges"])
            ),
            segment_names={int(k): v for k, v in row["segment_names"].items()},
            training_rows=row["training_rows"],
            seed=row["seed"],
            as_of=row["as_of"],
            trained_at=row["trained_at"],
            clv=ClvModel.from_map(row.asDict().get("clv_params")),
            drift=reference_from_columns(
                None if row.asDict().get("drift_bins") is None else [b.asDict() for b in row["drift_bins"]],
                row.asDict().get("segment_shares"),
            ),
        )


def new_version(now: dt.datetime) -> str:
    """A sortable, unique-enough version id from the training time, e.g. v20210601-120000-123."""
    return now.strftime("v%Y%m%d-%H%M%S-%f")[:-3]


def artifact_path(lake: LakeSettings, version: str) -> str:
    """Where a version's PipelineModel is saved; old versions are never overwritten."""
    return f"{lake.models_dir}/{version}"


def publish_model(spark: SparkSession, lake: LakeSettings, record: ModelRecord) -> None:
    """Add a version and make it the current one, in one atomic overwrite of the small `models` table."""
    rows = [record.to_row(is_current=True)]
    if table_exists(spark, lake, MODELS):
        rows += [
            ModelRecord.from_row(r).to_row(is_current=False)
            for r in read_table(spark, lake, MODELS).where(F.col("model_version") != record.version).collect()
        ]
    overwrite_table(spark.createDataFrame(rows, MODELS_SCHEMA), lake, MODELS)


def current_model_record(spark: SparkSession, lake: LakeSettings) -> ModelRecord:
    """The version marked current, or a clear error when none was trained."""
    rows = read_table(spark, lake, MODELS).where("is_current").orderBy(F.col("trained_at").desc()).limit(1).collect()
    if not rows:
        raise LookupError(f"no current model in {lake.table(MODELS)}; run `flo-seg train` first")
    return ModelRecord.from_row(rows[0])


def model_record(spark: SparkSession, lake: LakeSettings, version: str) -> ModelRecord:
    """One stored version, current or not."""
    rows = read_table(spark, lake, MODELS).where(F.col("model_version") == version).collect()
    if not rows:
        raise LookupError(f"model version {version!r} not found in {lake.table(MODELS)}")
    return ModelRecord.from_row(rows[0])


def load_pipeline(record: ModelRecord) -> PipelineModel:
    """The fitted PipelineModel of a version."""
    return PipelineModel.load(record.artifact_path)
