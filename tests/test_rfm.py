"""Classic RFM: column helpers on tiny frames, and customer-by-customer parity with the pandas notebooks."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from batch.features import with_customer_features
from batch.load import read_history
from batch.rfm import (
    FrequencyRanks,
    RfmEdges,
    frequency_rank_bins,
    quantile_bin,
    rfm_segment,
    training_rfm_edges,
    with_rfm_scores,
    with_training_rfm_scores,
)
from batch.train import state_from_history
from batch.validate import ROW_ORDER, validate_history


def test_quantile_bin_is_right_closed_and_clamps(spark: SparkSession) -> None:
    df = spark.createDataFrame([(v,) for v in (-5.0, 1.0, 1.5, 2.0, 4.0, 4.01, 99.0)], "v double")
    got = [r[0] for r in df.select(quantile_bin(F.col("v"), (1.0, 2.0, 3.0, 4.0))).collect()]
    assert got == [1, 1, 2, 2, 4, 5, 5]


@pytest.mark.parametrize(
    ("r", "f", "segment"),
    [
        (1, 1, "hibernating"),
        (2, 2, "hibernating"),
        (1, 3, "at_risk"),
        (2, 4, "at_risk"),
        (2, 5, "cant_lose"),
        (3, 2, "about_to_sleep"),
        (3, 3, "need_attention"),
        (3, 4, "loyal_customers"),
        (4, 5, "loyal_customers"),
        (4, 1, "promising"),
        (5, 1, "new_customers"),
        (4, 2, "potential_loyalists"),
        (5, 3, "potential_loyalists"),
        (5, 4, "champions"),
        (5, 5, "champions"),
    ],
)
def test_rfm_segment_map(spark: SparkSession, r: int, f: int, segment: str) -> None:
    df = spark.createDataFrame([(r, f)], "r int, f int")
    assert df.select(rfm_segment(F.col("r"), F.col("f"))).first()[0] == segment  # type: ignore[index]


def test_frequency_ranks_match_rank_first() -> None:
    # frequencies 1,1,1,2,2,3,5,5,5,5 -> qcut(rank(first), 5) edges over ranks 1..10
    ranks = FrequencyRanks(counts=((1, 3), (2, 2), (3, 1), (5, 4)))
    assert ranks.total == 10
    assert ranks.ranks_before() == {1: 0, 2: 3, 3: 5, 5: 6}
    assert ranks.rank_edges() == pytest.approx((2.8, 4.6, 6.4, 8.2))
    # last rank inside each bin: 2 -> freq 1, 4 -> freq 2, 6 -> freq 3, 8 -> freq 5
    assert ranks.value_edges() == (1.0, 2.0, 3.0, 5.0)


def test_rank_edges_fall_inside_few_frequencies() -> None:
    # Same ranks as above: bins by rank are 1,1,2 | 2,3 | 3 | 4,4,5,5 for frequencies 1 | 2 | 3 | 5.
    ranks = FrequencyRanks(counts=((1, 3), (2, 2), (3, 1), (5, 4)))
    above, splits = frequency_rank_bins(ranks)
    # Every customer of frequency 5 is above three edges; edge 8.2 splits it after its 2nd customer.
    assert above == {1: 0, 2: 1, 3: 2, 5: 3}
    assert splits == [(1, 2), (2, 1), (5, 2)]


def test_fixed_edge_scores_and_ties_take_the_lower_bin(spark: SparkSession) -> None:
    edges = RfmEdges(
        recency=(10.0, 20.0, 30.0, 40.0),
        frequency=(1.0, 2.0, 3.0, 5.0),
        monetary=(100.0, 200.0, 300.0, 400.0),
    )
    df = spark.createDataFrame(
        [("a", 5, 1, 50.0), ("b", 40, 5, 400.0), ("c", 41, 6, 401.0), ("d", 25, 3, 250.0)],
        "master_id string, recency int, frequency long, monetary double",
    )
    got = with_rfm_scores(df, edges).select("master_id", "r_score", "f_score", "m_score", "rfm_segment")
    expected = spark.createDataFrame(
        [
            ("a", 5, 1, 1, "new_customers"),
            ("b", 2, 4, 4, "at_risk"),
            ("c", 1, 5, 5, "cant_lose"),
            ("d", 3, 3, 3, "need_attention"),
        ],
        "master_id string, r_score int, f_score int, m_score int, rfm_segment string",
    )
    assertDataFrameEqual(got, expected)


def test_training_scores_break_frequency_ties_by_input_order(spark: SparkSession) -> None:
    # Ten customers with equal recency/monetary structure; frequency ties split across quintiles by order.
    rows = [(f"c{i}", i, 10 * i, 2, float(100 * i)) for i in range(10)]
    df = spark.createDataFrame(rows, "master_id string, row_order long, recency int, frequency long, monetary double")
    edges, ranks = training_rfm_edges(df)
    got = {r["master_id"]: r["f_score"] for r in with_training_rfm_scores(df, edges, ranks, "row_order").collect()}
    assert got == {f"c{i}": i // 2 + 1 for i in range(10)}
    pdf = pd.DataFrame({"frequency": [2] * 10})
    assert [int(x) for x in pd.qcut(pdf["frequency"].rank(method="first"), 5, labels=[1, 2, 3, 4, 5])] == [
        i // 2 + 1 for i in range(10)
    ]


SEGMENT_MAP = {
    r"[1-2][1-2]": "hibernating",
    r"[1-2][3-4]": "at_risk",
    r"[1-2]5": "cant_lose",
    r"3[1-2]": "about_to_sleep",
    r"33": "need_attention",
    r"[3-4][4-5]": "loyal_customers",
    r"41": "promising",
    r"51": "new_customers",
    r"[4-5][2-3]": "potential_loyalists",
    r"5[4-5]": "champions",
}


def pandas_reference(path: Path) -> pd.DataFrame:
    """The FLO RFM notebooks' computation, written independently of the product code."""
    df = pd.read_csv(path)
    for c in [c for c in df.columns if "date" in c]:
        df[c] = pd.to_datetime(df[c])
    as_of = df["last_order_date"].max() + pd.Timedelta(days=2)
    out = pd.DataFrame({"master_id": df["master_id"]})
    out["recency"] = (as_of - df["last_order_date"]).dt.days
    out["frequency"] = df["order_num_total_ever_online"] + df["order_num_total_ever_offline"]
    out["monetary"] = df["customer_value_total_ever_online"] + df["customer_value_total_ever_offline"]
    out["r_score"] = pd.qcut(out["recency"], 5, labels=[5, 4, 3, 2, 1]).astype(int)
    out["f_score"] = pd.qcut(out["frequency"].rank(method="first"), 5, labels=[1, 2, 3, 4, 5]).astype(int)
    out["m_score"] = pd.qcut(out["monetary"], 5, labels=[1, 2, 3, 4, 5]).astype(int)
    rf = out["r_score"].astype(str) + out["f_score"].astype(str)
    out["rfm_segment"] = rf.replace(SEGMENT_MAP, regex=True)
    return out


def test_parity_with_pandas_on_the_real_data(spark: SparkSession, real_data_path: Path) -> None:
    expected = pandas_reference(real_data_path)
    state = validate_history(read_history(spark, str(real_data_path))).transform(state_from_history)
    features = with_customer_features(state, F.lit(dt.date(2021, 6, 1))).cache()
    edges, ranks = training_rfm_edges(features)
    scored = with_training_rfm_scores(features, edges, ranks, ROW_ORDER).select(
        "master_id", "recency", "frequency", "monetary", "r_score", "f_score", "m_score", "rfm_segment"
    )
    got = scored.toPandas().set_index("master_id").sort_index()
    want = expected.set_index("master_id").sort_index()
    assert len(got) == len(want) == 19_945
    pd.testing.assert_series_equal(got["recency"].astype(int), want["recency"].astype(int))
    pd.testing.assert_series_equal(got["frequency"].astype(float), want["frequency"].astype(float))
    pd.testing.assert_series_equal(got["monetary"], want["monetary"], check_exact=False, rtol=1e-9)
    for col in ("r_score", "f_score", "m_score", "rfm_segment"):
        mismatches = (got[col] != want[col]).sum()
        assert mismatches == 0, f"{col}: {mismatches} customers differ from pandas"
    assert got["rfm_segment"].value_counts().to_dict()["champions"] == 1932
