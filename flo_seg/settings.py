"""The one typed settings tree: every default is written here once.

A value comes from, lowest first: the defaults below, a TOML file (`--config FILE` or `FLO_CONFIG`), the
environment (`FLO_<SECTION>_<NAME>`, e.g. `FLO_SPARK_MASTER`, `FLO_TRAIN_K_MIN`; `FLO_LAKE` for the lake),
then command-line flags. `load_settings()` is the only place that reads a file or the environment; the
CLI (and the scripts beside it) call it, and pass the sections down.
"""

from __future__ import annotations

import functools
import math
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass as plain_dataclass
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass
from pydantic_settings import EnvSettingsSource

REPO_ROOT = Path(__file__).resolve().parents[1]

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
ORDERS_TOPIC = "flo.orders"
SEGMENT_CHANGES_TOPIC = "flo.segment-changes"
AUDIENCE_CHANGES_TOPIC = "flo.audience-changes"
DRIFT_ALARMS_TOPIC = "flo.drift-alarms"
DEFAULT_DEDUPE_WINDOW = "24 hours"

ENV_PREFIX = "FLO_"
CONFIG_ENV = "FLO_CONFIG"
# Variables of earlier releases, refused with their new name rather than silently ignored.
RENAMED_ENV = {
    "FLO_JARS_DIR": "FLO_SPARK_JARS_DIR",
    "FLO_SHUFFLE_PARTITIONS": "FLO_SPARK_SHUFFLE_PARTITIONS",
    "FLO_DRIVER_MEMORY": "FLO_SPARK_DRIVER_MEMORY",
    "FLO_EXECUTOR_MEMORY": "FLO_SPARK_EXECUTOR_MEMORY",
    "FLO_KAFKA_BOOTSTRAP": "FLO_KAFKA_BOOTSTRAP_SERVERS",
}

# Sections refuse names they do not have, so a typo in a file, a variable or a flag is an error.
_STRICT = ConfigDict(extra="forbid")

Positive = Annotated[int, Field(gt=0)]
Share = Annotated[float, Field(ge=0.0, le=1.0)]


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value}")
    return value


NonNegative = Annotated[float, Field(ge=0.0), AfterValidator(_finite)]
PositiveFinite = Annotated[float, Field(gt=0.0), AfterValidator(_finite)]

_INTERVAL = re.compile(r"(\d+) *(second|minute|hour|day)s?")


def _interval(text: str) -> str:
    """A positive duration such as `24 hours` or `30 minutes`, in the form Spark's watermark takes."""
    match = _INTERVAL.fullmatch(text.strip().lower())
    if match is None or int(match[1]) <= 0:
        raise ValueError(f"expected a duration like '24 hours' or '30 minutes', got {text!r}")
    return f"{int(match[1])} {match[2]}s"


Interval = Annotated[str, AfterValidator(_interval)]

_UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def interval_seconds(text: str) -> int:
    """An Interval (`24 hours`) in seconds."""
    count, unit = _interval(text).split()
    return int(count) * _UNIT_SECONDS[unit.removesuffix("s")]


@dataclass(frozen=True, kw_only=True, config=_STRICT)
class SparkSettings:
    """How to build the one SparkSession of a process (`[spark]`, `FLO_SPARK_*`)."""

    # Commands add their own suffix: flo-seg-train, flo-seg-stream, ...
    app_name: str = "flo-seg"
    # None: leave the master to spark-submit / PYSPARK_SUBMIT_ARGS / spark-defaults (local[*] when none).
    master: str | None = None
    # Local folder of Delta + Kafka connector jars; ignored when spark-submit already passes --jars.
    jars_dir: Path | None = REPO_ROOT / ".jars" / "spark"
    # The driver JVM's class archive that `make setup` writes (flo_seg/class_archive.py): a driver this
    # process starts maps the classes from it instead of loading them, when it exists and fits this JVM.
    class_archive: Path | None = REPO_ROOT / ".jars" / "driver-classes.jsa"
    shuffle_partitions: Positive | None = None
    driver_memory: str | None = None
    executor_memory: str | None = None
    ui: bool = False
    log_level: Literal["ALL", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", "OFF"] = "WARN"


@plain_dataclass(frozen=True, kw_only=True)
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


@dataclass(frozen=True, kw_only=True, config=_STRICT)
class KafkaSettings:
    """The broker, the topics and the client's security settings (`[kafka]`, `FLO_KAFKA_*`)."""

    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    orders_topic: str = ORDERS_TOPIC
    # '' : the stream does not publish its segment changes.
    changes_topic: str = SEGMENT_CHANGES_TOPIC
    # '' : the stream does not publish who joins or leaves an audience.
    audience_changes_topic: str = AUDIENCE_CHANGES_TOPIC
    # '' : `flo-seg monitor` does not publish its drift alarms.
    drift_alarms_topic: str = DRIFT_ALARMS_TOPIC
    # Kafka client settings by their own names (security.protocol, sasl.mechanism, ...).
    options: dict[str, str] = Field(default_factory=dict)
    # A properties file of client settings, read when the client starts (keeps secrets out of flags);
    # `options` win over it.
    options_file: Path | None = None

    @field_validator("options")
    @classmethod
    def _client_names(cls, options: dict[str, str]) -> dict[str, str]:
        """`kafka.security.protocol` (the Spark source's spelling) and `security.protocol` are one setting."""
        return {key.removeprefix("kafka."): value for key, value in options.items()}


@dataclass(frozen=True, kw_only=True, config=_STRICT)
class TrainSettings:
    """Model selection and fitting knobs of `flo-seg train` (`[train]`, `FLO_TRAIN_*`)."""

    algorithm: Literal["kmeans", "bisecting", "gmm"] = "kmeans"
    # None: chosen between k_min and k_max by silhouette, refusing a k with a too small segment.
    k: Annotated[int, Field(ge=2)] | None = None
    k_min: Annotated[int, Field(ge=2)] = 4
    k_max: Annotated[int, Field(ge=2)] = 8
    # A k whose smallest segment holds less than this share of the sampled customers is refused.
    min_segment_share: Annotated[float, Field(ge=0.0, lt=0.5)] = 0.03
    seed: int = 42
    # Customers sampled to choose k and fit the model on; every customer is scored.
    sample: Positive = 50_000
    max_iter: Positive = 100
    # Fits from different starts per k, the lowest cost kept. K-means takes at least 10 on the driver
    # (batch.model.CANDIDATE_STARTS), and Spark's k-means then starts from the best of them.
    restarts: Positive = 3
    cap_quantile: Annotated[float, Field(gt=0.5, le=1.0)] = 0.99
    extra_columns: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _k_range(self) -> TrainSettings:
        if self.k_min > self.k_max:
            raise ValueError(f"need k_min <= k_max, got {self.k_min}..{self.k_max}")
        return self


@dataclass(frozen=True, kw_only=True, config=_STRICT)
class StreamOptions:
    """How `flo-seg stream` runs (`[stream]`, `FLO_STREAM_*`); `streaming.job.StreamSettings` adds where."""

    # None: checkpoints/<query_name> beside the lake folder.
    checkpoint: str | None = None
    query_name: str = "flo-seg-stream"
    # 0: the next micro-batch starts as soon as the last one ended.
    trigger_seconds: NonNegative = 0.0
    max_offsets_per_trigger: Positive | None = 200_000
    # earliest | latest | JSON offsets; a checkpoint's first start only.
    starting_offsets: str = "earliest"
    # Re-score customers whose segment is older than this in event time.
    aging_days: Positive = 7
    # A re-sent event_id is dropped within this much stream time of its first copy.
    dedupe_window: Interval = DEFAULT_DEDUPE_WINDOW
    # State store partitions; fixed by the checkpoint at its first start (None: the cores Spark has).
    state_partitions: Positive | None = None
    # Bring the tables current from the stream's logs this often (0: `flo-seg compact --every N` elsewhere).
    compact_seconds: NonNegative = 10.0
    # auto: a child process at low priority under a local master, a thread of the stream on a cluster.
    compaction: Literal["auto", "thread", "process"] = "auto"


@dataclass(frozen=True, kw_only=True, config=_STRICT)
class ProduceOptions:
    """What `flo-seg produce` sends (`[produce]`, `FLO_PRODUCE_*`); `streaming.produce` adds where and how long."""

    rate: PositiveFinite | None = None  # events/s; None = as fast as possible
    seed: int = 42
    new_customer_share: Share = 0.05
    duplicate_share: Share = 0.0  # re-send an already-sent event (same event_id, same payload)
    malformed_share: Share = 0.0  # one of MALFORMED_KINDS, uniformly
    late_share: Share = 0.0  # orders whose order_ts is 1-30 days before the current event time
    event_seconds: NonNegative = 60.0  # mean event-time gap between consecutive orders, simulated
    # A shifted stream (the drift alarm's test, a sale season): baskets times this, every order on `channel`.
    basket_factor: PositiveFinite = 1.0
    channel: Literal["Android App", "Ios App", "Desktop", "Mobile", "Offline"] | None = None


@dataclass(frozen=True, kw_only=True, config=_STRICT)
class MonitorOptions:
    """How `flo-seg monitor` checks for drift (`[monitor]`, `FLO_MONITOR_*`; batch/drift.py)."""

    # Seconds between two checks.
    interval_seconds: PositiveFinite = 300.0
    # Customers the stream updated within this many minutes (and since the model was trained) are compared.
    window_minutes: PositiveFinite = 60.0
    # A feature whose population stability index exceeds this raises an alarm (0.25: a significant shift).
    psi_threshold: PositiveFinite = 0.25
    # A segment whose share of all customers moved more than this (absolute) raises an alarm.
    share_threshold: Annotated[float, Field(gt=0.0, le=1.0)] = 0.10
    # Features are judged on at least this many recently updated customers.
    min_customers: Positive = 200
    # Retrain (`train --from-lake`) after an alarm, at most once per this many minutes (counted from the
    # current model's training or the last attempt): a day, so segments do not reshuffle by the hour.
    auto_retrain: bool = False
    retrain_cooldown_minutes: NonNegative = 1440.0


class Settings(BaseModel):
    """Everything a `flo-seg` command can be told; each section is also what the code below takes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lake: str = "lake"
    spark: SparkSettings = SparkSettings()
    kafka: KafkaSettings = KafkaSettings()
    train: TrainSettings = TrainSettings()
    stream: StreamOptions = StreamOptions()
    produce: ProduceOptions = ProduceOptions()
    monitor: MonitorOptions = MonitorOptions()
    # Audiences besides the two built-in campaign lists: name = SQL predicate over customer_segments'
    # columns (`[audiences]` in the file; batch/audiences.py).
    audiences: dict[str, str] = Field(default_factory=dict)

    def lake_settings(self) -> LakeSettings:
        """The lake; a local path is made absolute so executors and driver agree on it."""
        root = self.lake if "://" in self.lake else str(Path(self.lake).resolve())
        return LakeSettings(root=root)


def env_name(key: str) -> str:
    """The variable of a dotted setting: `spark.master` -> FLO_SPARK_MASTER."""
    return ENV_PREFIX + key.replace(".", "_").upper()


def leaves(values: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) for every setting in a nested dict or in the tree itself."""
    if isinstance(values, BaseModel):
        values = {name: getattr(values, name) for name in type(values).model_fields}
    elif is_dataclass(values) and not isinstance(values, type):
        values = {f.name: getattr(values, f.name) for f in fields(values)}
    if not isinstance(values, Mapping) or (prefix and _is_mapping_setting(prefix)):
        yield prefix, values
        return
    for name, value in values.items():
        yield from leaves(value, f"{prefix}.{name}" if prefix else name)


def _is_mapping_setting(key: str) -> bool:
    return key in ("kafka.options", "audiences")


@plain_dataclass(frozen=True)
class Source:
    """Where a value came from: default, file, env or flag, and the name it had there."""

    kind: Literal["default", "file", "env", "flag"]
    name: str = ""

    def __str__(self) -> str:
        return self.kind if self.kind == "default" else f"{self.kind} {self.name}"


@plain_dataclass(frozen=True)
class LoadedSettings:
    """The effective settings and, per dotted key, where its value came from."""

    settings: Settings
    sources: dict[str, Source]
    config_file: Path | None


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config file {path} is not valid TOML: {exc}") from None


def _read_env(environ: Mapping[str, str]) -> dict[str, Any]:
    renamed = sorted(f"{old} is now {new}" for old, new in RENAMED_ENV.items() if environ.get(old))
    if renamed:
        raise ValueError("renamed variables: " + "; ".join(renamed))
    source = EnvSettingsSource(
        Settings,  # type: ignore[arg-type]  # the source only reads its fields
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="_",
        env_nested_max_split=1,
    )
    source.env_vars = {k.lower(): v for k, v in environ.items() if v != ""}  # empty: unset
    return source()


def load_settings(
    flags: Mapping[str, Any] | None = None,
    *,
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    flag_names: Mapping[str, str] | None = None,
) -> LoadedSettings:
    """Defaults, then the TOML file, then FLO_* variables, then `flags` (dotted keys, e.g. "train.k_min").

    `flag_names` maps a dotted key to the flag that set it, for messages. A value a section refuses is
    a ValueError that names the setting and where it came from.
    """
    environ = os.environ if environ is None else environ
    path_text = config_file or environ.get(CONFIG_ENV) or None
    path = Path(path_text) if path_text else None
    layers: list[tuple[Literal["file", "env", "flag"], dict[str, Any]]] = [
        ("file", _read_file(path) if path else {}),
        ("env", _read_env(environ)),
        ("flag", _nested(flags or {})),
    ]
    merged: dict[str, Any] = {}
    sources: dict[str, Source] = {}
    for kind, values in layers:
        merged = _deep_merge(merged, values)
        for key, _ in leaves(values):
            name = {"file": str(path), "env": env_name(key), "flag": (flag_names or {}).get(key, key)}[kind]
            sources[key] = Source(kind, name)
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        raise ValueError(_explain(exc, sources)) from None
    for key, _ in leaves(settings):
        sources.setdefault(key, Source("default"))
    return LoadedSettings(settings=settings, sources=sources, config_file=path)


def _nested(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def _explain(exc: ValidationError, sources: Mapping[str, Source]) -> str:
    """One line per refused value: the setting, where it was given, and why."""
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        source = sources.get(key) or next(
            (s for k, s in sources.items() if key.startswith(k + ".") or k.startswith(key + ".")), None
        )
        where = f" ({source})" if source else ""
        if error["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
            section = key.rsplit(".", 1)[0] if "." in key else ""
            lines.append(f"{key}{where}: no such setting{_known(section)}")
        else:
            message = str(error["msg"]).removeprefix("Value error, ")
            lines.append(f"{key}{where}: {message}")
    return "; ".join(lines)


def _known(section: str) -> str:
    node = getattr(Settings(), section, None) if section else None
    if section and not is_dataclass(node):
        return ""
    names = [f.name for f in fields(node)] if node is not None else list(Settings.model_fields)
    return f" ({section or 'the top level'} has {', '.join(names)})"


@functools.cache
def _defaults() -> Settings:
    """The tree's defaults, built once: the parser asks for one per flag at every start."""
    return Settings()


def _field(key: str) -> Any:
    section, _, name = key.partition(".")
    if not name:
        return Settings.model_fields[section]
    return type(getattr(_defaults(), section)).__pydantic_fields__[name]


def default_of(key: str) -> Any:
    """The default of a dotted setting, for help texts."""
    node: Any = _defaults()
    for part in key.split("."):
        node = getattr(node, part)
    return node


def parse_setting(key: str, text: str) -> Any:
    """One value for a dotted setting, checked as the tree checks it; a ValueError gives the reason."""
    info = _field(key)
    annotation: Any = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
    adapter: TypeAdapter[Any] = TypeAdapter(annotation)
    try:
        return adapter.validate_python(text)
    except ValidationError as exc:
        raise ValueError(str(exc.errors()[0]["msg"]).removeprefix("Value error, ")) from None


def choices_of(key: str) -> tuple[str, ...] | None:
    """The values a Literal setting allows (argparse lists them and suggests the nearest), else None."""
    annotation = _field(key).annotation
    if get_origin(annotation) in (Union, UnionType):  # an optional one: `Literal[...] | None`
        annotation = next((a for a in get_args(annotation) if a is not type(None)), None)
    return tuple(get_args(annotation)) if get_origin(annotation) is Literal else None


def default_spark_settings(app_name: str) -> SparkSettings:
    """For scripts and tests beside the CLI: the effective `[spark]` section under their own app name."""
    return replace(load_settings().settings.spark, app_name=app_name)


def kafka_client_options(kafka: KafkaSettings) -> dict[str, str]:
    """The client settings by Kafka's names: the properties file's (if any), then `options` over them."""
    options: dict[str, str] = {}
    lines = kafka.options_file.read_text().splitlines() if kafka.options_file else []
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith(("#", "!")):
            continue
        if "=" not in line:
            raise ValueError(f"Kafka option {line!r} in {kafka.options_file} is not KEY=VALUE")
        key, value = (part.strip() for part in line.split("=", 1))
        options[key.removeprefix("kafka.")] = value
    options.update(kafka.options)
    return options
