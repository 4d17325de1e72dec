"""`flo-seg rescore`: the current model applied to every customer at a (later) analysis date."""

from __future__ import annotations

import datetime as dt
import logging

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from batch.lake import overwrite_table, read_table
from batch.score import load_current_model, resolve_as_of, score_customers
from flo_seg.settings import LakeSettings
from schemas.tables import CUSTOMER_SEGMENTS, CUSTOMER_STATE

log = logging.getLogger(__name__)


def run_rescore(spark: SparkSession, lake: LakeSettings, *, as_of: dt.date | None) -> dict[str, int]:
    """Rewrite customer_segments with the current model; recency and tenure age with `as_of`."""
    model = load_current_model(spark, lake)
    state = read_table(spark, lake, CUSTOMER_STATE)
    scored = score_customers(state, model, F.lit(resolve_as_of(state, as_of))).cache()
    overwrite_table(scored, lake, CUSTOMER_SEGMENTS)
    sizes = {r["segment"]: r["count"] for r in scored.groupBy("segment").count().collect()}
    scored.unpersist()
    log.info("re-scored %d customers with model %s", sum(sizes.values()), model.record.version)
    return sizes
