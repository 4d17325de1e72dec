"""`flo-seg rescore`: the current model applied to every customer at a (later) analysis date."""

from __future__ import annotations

import datetime as dt
import logging

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from batch.compact import append_segments, compact_lake
from batch.lake import read_table
from batch.score import load_current_model, resolve_as_of, score_customers
from flo_seg.settings import LakeSettings
from schemas.tables import CUSTOMER_STATE

log = logging.getLogger(__name__)


def run_rescore(spark: SparkSession, lake: LakeSettings, *, as_of: dt.date | None) -> dict[str, int]:
    """Re-score every customer with the current model; recency and tenure age with `as_of`.

    The state is compacted first (so it holds what the stream added), and the new segments go through
    segment_log: a running stream takes them into its state, and the compaction that follows writes
    them to customer_segments, where a row scored on a newer state or model is never replaced.
    """
    compact_lake(spark, lake)
    model = load_current_model(spark, lake)
    state = read_table(spark, lake, CUSTOMER_STATE)
    scored = score_customers(state, model, F.lit(resolve_as_of(state, as_of))).cache()
    append_segments(scored, lake, "rescore")
    compact_lake(spark, lake)
    sizes = {r["segment"]: r["count"] for r in scored.groupBy("segment").count().collect()}
    scored.unpersist()
    log.info("re-scored %d customers with model %s", sum(sizes.values()), model.record.version)
    return sizes
