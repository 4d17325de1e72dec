"""Typed settings, filled from CLI flags and the environment in `main()` only."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def env_str(name: str, default: str) -> str:
    """An environment override with a default; empty strings count as unset."""
    return os.environ.get(name) or default


@dataclass(frozen=True, kw_only=True)
class SparkSettings:
    """How to build the one SparkSession of a process."""

    app_name: str = "flo-seg"
    # None: leave the master to spark-submit / PYSPARK_SUBMIT_ARGS / spark-defaults (local[*] when none).
    master: str | None = None
    # Local folder of Delta + Kafka connector jars; ignored when spark-submit already passes --jars.
    jars_dir: Path | None = None
    shuffle_partitions: int | None = None
    driver_memory: str | None = None
    ui: bool = False
    log_level: str = "WARN"


@dataclass(frozen=True, kw_only=True)
class LakeSettings:
    """Where the Delta tables and model artifacts live: `<lake>/<table name>`."""

    root: str

    def table(self, name: str) -> str:
        """Path of one Delta table; a URI scheme (s3a://, abfss://) is kept as is."""
        return f"{self.root.rstrip('/')}/{name}"

    @property
    def models_dir(self) -> str:
        """Folder of the versioned PipelineModel artifacts."""
        return self.table("_models")

    @property
    def exports_dir(self) -> str:
        """Folder of the campaign target list exports."""
        return self.table("_exports")


def default_lake() -> str:
    """`FLO_LAKE` or ./lake, as an absolute path when local so executors and driver agree."""
    lake = env_str("FLO_LAKE", "lake")
    return lake if "://" in lake else str(Path(lake).resolve())


def default_spark_settings(app_name: str) -> SparkSettings:
    """Spark settings from the environment (FLO_SPARK_MASTER, FLO_JARS_DIR, FLO_SHUFFLE_PARTITIONS)."""
    jars = os.environ.get("FLO_JARS_DIR")
    partitions = os.environ.get("FLO_SHUFFLE_PARTITIONS")
    return SparkSettings(
        app_name=app_name,
        master=os.environ.get("FLO_SPARK_MASTER") or None,
        jars_dir=Path(jars) if jars else REPO_ROOT / ".jars" / "spark",
        shuffle_partitions=int(partitions) if partitions else None,
        driver_memory=os.environ.get("FLO_DRIVER_MEMORY") or None,
        ui=os.environ.get("FLO_SPARK_UI", "0") == "1",
        log_level=env_str("FLO_SPARK_LOG_LEVEL", "WARN"),
    )


@dataclass(frozen=True, kw_only=True)
class TrainSettings:
    """Model selection and fitting knobs of `flo-seg train`."""

    algorithm: str = "kmeans"
    k: int | None = None
    k_min: int = 4
    k_max: int = 8
    min_segment_share: float = 0.03
    seed: int = 42
    sample: int = 50_000
    max_iter: int = 100
    restarts: int = 3
    cap_quantile: float = 0.99
    extra_columns: tuple[str, ...] = field(default_factory=tuple)
