"""Delta table contracts under `<lake>/<name>`: what batch writes and streaming extends."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

CUSTOMER_STATE = "customer_state"
CUSTOMER_SEGMENTS = "customer_segments"
SEGMENT_PROFILES = "segment_profiles"
MODELS = "models"
QUARANTINE = "quarantine"
CAMPAIGN_TARGETS = "campaign_targets"
SEGMENT_CHANGES = "segment_changes"
STREAM_CLOCK = "stream_clock"
STATE_LOG = "state_log"
SEGMENT_LOG = "segment_log"
COMPACTIONS = "compactions"
DATA_PROFILE = "data_profile"
AUDIENCE_MEMBERS = "audience_members"
AUDIENCE_CHANGES = "audience_changes"
DRIFT_ALARMS = "drift_alarms"

_str, _dbl, _lng, _int = T.StringType(), T.DoubleType(), T.LongType(), T.IntegerType()
_date, _ts, _bool = T.DateType(), T.TimestampType(), T.BooleanType()


def _schema(*fields: tuple[str, T.DataType, bool]) -> T.StructType:
    return T.StructType([T.StructField(name, dtype, nullable) for name, dtype, nullable in fields])


CUSTOMER_STATE_SCHEMA = _schema(
    ("master_id", _str, False),
    ("order_channel", _str, True),
    ("last_order_channel", _str, True),
    ("first_order_date", _date, False),
    ("last_order_date", _date, False),
    ("last_order_date_online", _date, True),
    ("last_order_date_offline", _date, True),
    ("order_num_total_ever_online", _lng, False),
    ("order_num_total_ever_offline", _lng, False),
    ("customer_value_total_ever_offline", _dbl, False),
    ("customer_value_total_ever_online", _dbl, False),
    ("interested_in_categories_12", T.ArrayType(_str), True),
    # Time of the latest order seen by the stream (history only has dates, so it starts empty).
    ("last_order_ts", _ts, True),
    ("updated_at", _ts, False),
    # How many stream updates this state has seen (0 for a history row): latest wins when compacting.
    ("state_seq", _lng, True),
)

CUSTOMER_SEGMENTS_SCHEMA = _schema(
    ("master_id", _str, False),
    ("segment", _str, False),
    ("cluster", _int, False),
    ("model_version", _str, False),
    ("recency", _int, False),
    ("tenure", _int, False),
    ("frequency", _lng, False),
    ("monetary", _dbl, False),
    ("r_score", _int, False),
    ("f_score", _int, False),
    ("m_score", _int, False),
    ("rfm_segment", _str, False),
    ("as_of", _date, False),
    ("scored_at", _ts, False),
    # The state_seq of the state this row was scored on: (state_seq, model_version, as_of) orders rows.
    ("state_seq", _lng, True),
    # Lifetime value and churn risk (batch/clv.py): BG/NBD P(alive), expected orders in the next 90 days,
    # expected spend in the next 12 months (Gamma-Gamma spend per order). Null under a model without them.
    ("p_alive", _dbl, True),
    ("expected_orders_90d", _dbl, True),
    ("expected_value_12m", _dbl, True),
    # From customer_state: audiences (batch/audiences.py) are predicates over this table alone.
    ("interested_in_categories_12", T.ArrayType(_str), True),
)

# The exploratory analysis of the training data, one statistic per row (batch/explore.py).
DATA_PROFILE_SCHEMA = _schema(
    ("model_version", _str, False),
    ("section", _str, False),
    ("item", _str, False),
    ("statistic", _str, False),
    ("value", _dbl, True),
)

SEGMENT_PROFILES_SCHEMA = _schema(
    ("model_version", _str, False),
    ("segment", _str, False),
    ("cluster", _int, False),
    ("customers", _lng, False),
    ("share", _dbl, False),
    ("recency_mean", _dbl, True),
    ("recency_median", _dbl, True),
    ("frequency_mean", _dbl, True),
    ("frequency_median", _dbl, True),
    ("monetary_mean", _dbl, True),
    ("monetary_median", _dbl, True),
    ("tenure_mean", _dbl, True),
    ("tenure_median", _dbl, True),
    ("online_share_mean", _dbl, True),
    ("avg_order_value_mean", _dbl, True),
    ("channel_mix", T.MapType(_str, _dbl), True),
    ("top_categories", T.ArrayType(_str), True),
    ("rfm_mix", T.MapType(_str, _dbl), True),
    ("action_channel", _str, False),
    ("action_offer", _str, False),
    ("action_timing", _str, False),
    ("action", _str, False),
    ("as_of", _date, False),
    ("profiled_at", _ts, False),
    # Lifetime value and churn risk (batch/clv.py): mean P(alive), the share with P(alive) < 0.5, mean
    # expected orders in 90 days, mean and total expected value in 12 months.
    ("p_alive_mean", _dbl, True),
    ("at_risk_share", _dbl, True),
    ("expected_orders_90d_mean", _dbl, True),
    ("expected_value_12m_mean", _dbl, True),
    ("expected_value_12m_total", _dbl, True),
)

K_SELECTION_TYPE = T.ArrayType(
    _schema(
        ("k", _int, False),
        ("silhouette", _dbl, True),
        ("cost", _dbl, True),
        ("calinski_harabasz", _dbl, True),
        ("min_share", _dbl, True),
        ("refused", _str, True),
    )
)

MODELS_SCHEMA = _schema(
    ("model_version", _str, False),
    ("artifact_path", _str, False),
    ("algorithm", _str, False),
    ("k", _int, False),
    ("silhouette", _dbl, True),
    ("k_selection", K_SELECTION_TYPE, True),
    ("features", T.ArrayType(_str), False),
    ("caps", T.MapType(_str, _dbl), False),
    ("r_edges", T.ArrayType(_dbl), False),
    ("f_edges", T.ArrayType(_dbl), False),
    ("m_edges", T.ArrayType(_dbl), False),
    ("segment_names", T.MapType(_int, _str), False),
    ("training_rows", _lng, False),
    ("seed", _lng, False),
    ("as_of", _date, False),
    ("trained_at", _ts, False),
    ("is_current", _bool, False),
    # BG/NBD (r, alpha, a, b; days) and Gamma-Gamma (p, q, gamma) parameters the version scores CLV with.
    ("clv_params", T.MapType(_str, _dbl), True),
    # The training snapshot a drift check compares with (batch/drift.py): each drift feature's bins and the
    # share of trained customers per bin, and each segment's share of all customers.
    (
        "drift_bins",
        T.ArrayType(
            _schema(
                ("feature", _str, False),
                ("edges", T.ArrayType(_dbl), True),
                ("categories", T.ArrayType(_str), True),
                ("proportions", T.ArrayType(_dbl), False),
            )
        ),
        True,
    ),
    ("segment_shares", T.MapType(_str, _dbl), True),
)

QUARANTINE_SCHEMA = _schema(
    ("source", _str, False),
    ("raw_record", _str, True),
    ("reason", _str, False),
    ("detail", _str, True),
    ("kafka_topic", _str, True),
    ("kafka_partition", _int, True),
    ("kafka_offset", _lng, True),
    ("detected_at", _ts, False),
)

CAMPAIGN_TARGETS_SCHEMA = _schema(
    ("campaign", _str, False),
    ("master_id", _str, False),
    ("rfm_segment", _str, False),
    ("segment", _str, False),
    ("interested_in_categories_12", T.ArrayType(_str), True),
    ("model_version", _str, False),
    ("as_of", _date, False),
)

SEGMENT_CHANGES_SCHEMA = _schema(
    ("change_id", _str, False),
    ("master_id", _str, False),
    ("previous_segment", _str, True),
    ("segment", _str, False),
    ("model_version", _str, False),
    ("as_of", _date, False),
    ("changed_at", _ts, False),
    ("batch_id", _lng, False),
)

# Who is in each audience now (batch/audiences.py): rebuilt by train, kept current by the stream's
# audience follower (streaming/audiences.py).
AUDIENCE_MEMBERS_SCHEMA = _schema(
    ("audience", _str, False),
    ("master_id", _str, False),
    ("segment", _str, True),
    ("joined_at", _ts, False),
)

# Every join and leave; batch_id -1 for a retrain's.
AUDIENCE_CHANGES_SCHEMA = _schema(
    ("change_id", _str, False),
    ("audience", _str, False),
    ("master_id", _str, False),
    ("change", _str, False),  # joined | left
    ("segment", _str, True),
    ("changed_at", _ts, False),
    ("batch_id", _lng, False),
)

# What `flo-seg monitor` found beyond a threshold: one row per statistic per check (batch/drift.py).
DRIFT_ALARMS_SCHEMA = _schema(
    ("alarm_id", _str, False),
    ("detected_at", _ts, False),
    ("model_version", _str, False),
    ("kind", _str, False),  # feature | segment
    ("name", _str, False),  # the feature or the segment
    ("statistic", _str, False),  # psi | share_shift
    ("value", _dbl, False),
    ("threshold", _dbl, False),
    ("customers", _lng, False),  # how many customers it was measured on
    ("window_start", _ts, False),  # the recently updated customers: updated from here to detected_at
)

# The stream's event-time clock: one row, never moving backwards.
STREAM_CLOCK_SCHEMA = _schema(
    ("clock_ts", _ts, False),
    ("last_sweep_date", _date, True),
    ("model_version", _str, True),
    ("batch_id", _lng, False),
    ("updated_at", _ts, False),
)

# The stream's append-only logs: what each micro-batch (or a sweep, re-score, retrain) changed. A
# compaction brings customer_state and customer_segments current from them, latest wins per customer.
_LOG_FIELDS = (("batch_id", _lng, True), ("source", _str, False))
STATE_LOG_SCHEMA = T.StructType([*CUSTOMER_STATE_SCHEMA.fields, *_schema(*_LOG_FIELDS).fields])
SEGMENT_LOG_SCHEMA = T.StructType([*CUSTOMER_SEGMENTS_SCHEMA.fields, *_schema(*_LOG_FIELDS).fields])

# How far each compaction has read each log (one row per compaction run and log).
COMPACTIONS_SCHEMA = _schema(
    ("log", _str, False),
    ("target", _str, False),
    ("from_version", _lng, False),
    ("to_version", _lng, False),
    ("rows_read", _lng, False),
    ("customers", _lng, False),
    ("seconds", _dbl, False),
    ("compacted_at", _ts, False),
)

TABLE_SCHEMAS: dict[str, T.StructType] = {
    CUSTOMER_STATE: CUSTOMER_STATE_SCHEMA,
    CUSTOMER_SEGMENTS: CUSTOMER_SEGMENTS_SCHEMA,
    SEGMENT_PROFILES: SEGMENT_PROFILES_SCHEMA,
    MODELS: MODELS_SCHEMA,
    QUARANTINE: QUARANTINE_SCHEMA,
    CAMPAIGN_TARGETS: CAMPAIGN_TARGETS_SCHEMA,
    SEGMENT_CHANGES: SEGMENT_CHANGES_SCHEMA,
    STREAM_CLOCK: STREAM_CLOCK_SCHEMA,
    STATE_LOG: STATE_LOG_SCHEMA,
    SEGMENT_LOG: SEGMENT_LOG_SCHEMA,
    COMPACTIONS: COMPACTIONS_SCHEMA,
    DATA_PROFILE: DATA_PROFILE_SCHEMA,
    AUDIENCE_MEMBERS: AUDIENCE_MEMBERS_SCHEMA,
    AUDIENCE_CHANGES: AUDIENCE_CHANGES_SCHEMA,
    DRIFT_ALARMS: DRIFT_ALARMS_SCHEMA,
}


# Table properties that are part of a table's contract, set when the table is created (and added to an
# older table that lacks them). The two tables users read most, customer_state and customer_segments,
# are copy-on-write (no deletion vectors), so they open in every Delta reader: Spark, Polars and
# delta-rs' `DeltaTable(...).to_pandas()`, which refuses the `deletionVectors` reader feature. Their one
# writer is the compaction, off the stream's hot path; copy-on-write costs it 23-29% more per round
# (docs/benchmarks.md, "The customer tables' layout"). A table that has the feature from an older version
# has it dropped (`upgrade_table`).
_READER_FRIENDLY = {"delta.enableDeletionVectors": "false"}
# The stream appends to the logs and to segment_changes once per micro-batch: a Delta checkpoint every
# 100 commits instead of every 10 (at 10, every tenth batch wrote three checkpoints, and its appends took
# 2.5-2.8 s instead of 0.8; docs/benchmarks.md), so a reader's snapshot replays up to 100 commit files.
_PER_BATCH = {"delta.checkpointInterval": "100"}
# The logs are read by version range through the change data feed (appends only: no extra files), never
# filtered by column, so their appends collect no per-column statistics: a micro-batch's three appends
# at once took 0.30-0.39 s instead of 0.43-0.52 s (docs/benchmarks.md). The row count is still kept.
_LOG = {**_PER_BATCH, "delta.enableChangeDataFeed": "true", "delta.dataSkippingNumIndexedCols": "0"}
TABLE_PROPERTIES: dict[str, dict[str, str]] = {
    CUSTOMER_STATE: _READER_FRIENDLY,
    CUSTOMER_SEGMENTS: _READER_FRIENDLY,
    STATE_LOG: _LOG,
    SEGMENT_LOG: _LOG,
    SEGMENT_CHANGES: _PER_BATCH,
    AUDIENCE_CHANGES: _PER_BATCH,
    AUDIENCE_MEMBERS: _READER_FRIENDLY,
    DRIFT_ALARMS: _READER_FRIENDLY,
}


def conform(df: DataFrame, schema: T.StructType) -> DataFrame:
    """Select a table's columns in contract order with contract types; missing columns are an error."""
    missing = [f.name for f in schema.fields if f.name not in df.columns]
    if missing:
        raise ValueError(f"DataFrame lacks contract columns {missing}")
    return df.select([F.col(f.name).cast(f.dataType).alias(f.name) for f in schema.fields])
