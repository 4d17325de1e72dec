"""Segment naming, actions and campaign lists; naming stability across seeds on the real data."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from batch import train
from batch.features import with_customer_features
from batch.lake import read_table
from batch.load import read_history
from batch.model import PREDICTION, feature_caps, fit_pipeline, score_clusters
from batch.segments import (
    ARCHETYPES,
    Population,
    campaign_targets,
    cluster_profiles_z,
    name_segments,
    recommend_action,
    segment_name,
    segment_profiles,
)
from batch.train import run_train, state_from_history
from batch.validate import validate_history
from flo_seg.settings import LakeSettings, TrainSettings
from schemas.history import CATEGORIES
from schemas.tables import CUSTOMER_SEGMENTS


def test_names_follow_profiles_not_cluster_numbers() -> None:
    profiles: dict[int, tuple[float, ...]] = {
        0: (1.0, -0.8, -0.8, 0.3, 0.0),  # old, rare, cheap
        1: (-0.9, 1.2, 1.2, 0.5, 0.0),  # recent, frequent, valuable
        2: (-0.6, -0.9, -0.8, -1.6, 0.0),  # new
    }
    names = name_segments(profiles)
    assert names == {0: "hibernating_low_value", 1: "high_value_recent", 2: "one_time_newcomers"}
    permuted = {2: profiles[0], 0: profiles[1], 1: profiles[2]}
    assert name_segments(permuted) == {
        2: "hibernating_low_value",
        0: "high_value_recent",
        1: "one_time_newcomers",
    }


def test_names_are_unique_even_for_identical_profiles() -> None:
    names = name_segments({i: (0.0, 0.0, 0.0, 0.0, 0.0) for i in range(5)})
    assert len(set(names.values())) == 5
    assert names == name_segments({i: (0.0, 0.0, 0.0, 0.0, 0.0) for i in range(5)})


def test_too_many_clusters_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="archetypes"):
        name_segments({i: (0.0,) * 5 for i in range(len(ARCHETYPES) + 1)})


def test_segment_name_column(spark: SparkSession) -> None:
    df = spark.createDataFrame([(0,), (1,), (7,)], "cluster int")
    got = [r[0] for r in df.select(segment_name({0: "a", 1: "b"}, F.col("cluster"))).collect()]
    assert got == ["a", "b", None]


POP = Population(recency_p40=60, recency_p60=150, monetary_p40=300, monetary_p60=500, frequency_p60=5, tenure_p25=200)


def profile(**kw: object) -> dict[str, object]:
    base = {
        "recency_median": 100.0,
        "monetary_median": 400.0,
        "frequency_median": 4.0,
        "tenure_median": 700.0,
        "channel_mix": {"Android App": 0.6, "Offline": 0.4},
        "top_categories": ["KADIN"],
    }
    return {**base, **kw}


def test_actions_follow_the_profile() -> None:
    assert "early access" in recommend_action(profile(recency_median=20.0, monetary_median=900.0), POP).offer
    lapsing = recommend_action(profile(recency_median=300.0, monetary_median=900.0), POP)
    assert "win-back" in lapsing.offer and "300 days" in lapsing.timing
    assert "40% off" in recommend_action(profile(recency_median=300.0, monetary_median=100.0), POP).offer
    newcomer = recommend_action(profile(tenure_median=30.0), POP)
    assert "second-purchase" in newcomer.offer and "KADIN" in newcomer.offer
    store = recommend_action(profile(channel_mix={"Offline": 0.7, "Mobile": 0.3}), POP)
    assert store.channel.startswith("SMS voucher")
    assert recommend_action(profile(), POP).channel.startswith("app push")


def test_a_valuable_segment_many_of_whom_have_probably_left_is_won_back() -> None:
    recent_and_valuable = profile(recency_median=20.0, monetary_median=900.0)
    assert "early access" in recommend_action({**recent_and_valuable, "at_risk_share": 0.02}, POP).offer
    many_gone = recommend_action({**recent_and_valuable, "at_risk_share": 0.25}, POP)
    assert "win-back" in many_gone.offer and "25% of them have probably stopped buying" in many_gone.timing
    # Low value: churn risk alone does not buy a personal offer.
    cheap = recommend_action(profile(recency_median=20.0, monetary_median=100.0, at_risk_share=0.25), POP)
    assert "win-back" not in cheap.offer
    # A model version without CLV (None) keeps the actions it had.
    assert "early access" in recommend_action({**recent_and_valuable, "at_risk_share": None}, POP).offer


def test_profiles_carry_mean_lifetime_value_and_churn_risk(spark: SparkSession) -> None:
    rows = [
        ("a", "loyal", 0, 0.99, 1.0, 400.0),
        ("b", "loyal", 0, 0.30, 0.2, 100.0),
        ("c", "loyal", 0, 0.95, 0.6, 250.0),
        ("d", "sleepy", 1, 0.45, 0.1, 20.0),
    ]
    scored = (
        spark.createDataFrame(
            rows,
            "master_id string, segment string, cluster int, p_alive double, expected_orders_90d double, "
            "expected_value_12m double",
        )
        .select(
            "*",
            *[F.lit(v).alias(c) for c, v in (("recency", 10), ("frequency", 2), ("monetary", 100.0), ("tenure", 300))],
            F.lit("Offline").alias("last_order_channel"),
            F.lit(0.5).alias("online_share"),
            F.lit(50.0).alias("avg_order_value"),
            F.lit("champions").alias("rfm_segment"),
            F.lit(dt.date(2021, 6, 1)).alias("as_of"),
            *[F.lit(0).alias(f"has_{c.lower()}") for c in CATEGORIES],
        )
        .withColumnRenamed("cluster", PREDICTION)
    )
    got = {r["segment"]: r for r in segment_profiles(scored).collect()}
    loyal = got["loyal"]
    assert loyal["p_alive_mean"] == pytest.approx((0.99 + 0.30 + 0.95) / 3)
    assert loyal["at_risk_share"] == pytest.approx(1 / 3)
    assert loyal["expected_orders_90d_mean"] == pytest.approx(0.6)
    assert loyal["expected_value_12m_mean"] == pytest.approx(250.0)
    assert loyal["expected_value_12m_total"] == pytest.approx(750.0)
    assert got["sleepy"]["at_risk_share"] == 1.0


def test_campaign_targets(spark: SparkSession) -> None:
    customers = spark.createDataFrame(
        [
            ("a", "champions", ["KADIN"]),
            ("b", "loyal_customers", ["ERKEK"]),
            ("c", "at_risk", ["COCUK", "KADIN"]),
            ("d", "new_customers", None),
            ("e", "hibernating", ["ERKEK"]),
            ("f", "champions", ["AKTIFSPOR", "KADIN"]),
        ],
        "master_id string, rfm_segment string, interested_in_categories_12 array<string>",
    )
    got = {(r["campaign"], r["master_id"]) for r in campaign_targets(customers).collect()}
    assert got == {
        ("new_womens_shoe_brand", "a"),
        ("new_womens_shoe_brand", "f"),
        ("men_children_40pct_off", "c"),
    }


@pytest.mark.slow
def test_default_training_is_actionable_and_stable_across_seeds_on_the_real_data(
    spark: SparkSession, real_data_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run_train` with the default settings, writing customer_segments only: the other tables and the model
    registry do not bear on k or the names (tests/test_train_e2e.py checks what train writes)."""

    def segments_only(writes: dict[str, Callable[[], object]], timed: Callable[[str], Any]) -> None:
        assert CUSTOMER_SEGMENTS in writes, sorted(writes)
        with timed(CUSTOMER_SEGMENTS):
            writes[CUSTOMER_SEGMENTS]()

    monkeypatch.setattr(train, "write_concurrently", segments_only)
    monkeypatch.setattr(train, "publish_model", lambda *args: None)
    named, ks = [], []
    for seed in (1, 2024):
        lake = LakeSettings(root=str(tmp_path / f"lake-{seed}"))
        summary = run_train(spark, lake, TrainSettings(seed=seed), history_path=str(real_data_path))
        ks.append(summary.k)
        total = sum(summary.segments.values())
        assert total == 19_945
        assert 4 <= summary.k <= 8 and len(summary.segments) == summary.k, summary.segments
        assert min(summary.segments.values()) / total >= 0.03 * 0.9, summary.segments  # sample vs all: a margin
        segments = read_table(spark, lake, CUSTOMER_SEGMENTS)
        rows = segments.select("master_id", "segment").collect()
        named.append({r["master_id"]: r["segment"] for r in rows})
        # Lifetime value on the real data: champions are likelier alive than hibernating customers (by
        # little: the FLO snapshot holds customers who ordered within about a year, tests/test_clv.py),
        # and the expected 12-month value rises with the RFM monetary score.
        alive = {r[0]: r[1] for r in segments.groupBy("rfm_segment").agg(F.avg("p_alive")).collect()}
        assert alive["champions"] > alive["hibernating"], alive
        value = segments.groupBy("m_score").agg(F.avg("expected_value_12m").alias("v")).orderBy("m_score")
        by_score = [r["v"] for r in value.collect()]
        assert len(by_score) == 5 and by_score == sorted(by_score), by_score
    assert ks[0] == ks[1]
    same = sum(named[0][m] == named[1][m] for m in named[0])
    assert same / len(named[0]) >= 0.95, f"only {same / len(named[0]):.1%} of customers kept their segment name"


@pytest.mark.slow
@pytest.mark.integration  # the default-training test above checks the same on its sample, in make test
@pytest.mark.parametrize("k", [6])
def test_names_are_stable_across_seeds_on_the_real_data(spark: SparkSession, real_data_path: Path, k: int) -> None:
    state = validate_history(read_history(spark, str(real_data_path))).transform(state_from_history)
    features = with_customer_features(state, F.lit(dt.date(2021, 6, 1))).cache()
    caps = feature_caps(features, 0.99)
    named = []
    for seed in (1, 2024):
        model = fit_pipeline(features, caps, algorithm="kmeans", k=k, seed=seed, max_iter=100, restarts=3)
        clustered = score_clusters(model, features)
        names = name_segments(cluster_profiles_z(clustered))
        rows = clustered.select("master_id", segment_name(names, F.col(PREDICTION)).alias("segment")).collect()
        named.append({r["master_id"]: r["segment"] for r in rows})
    assert len(named[0]) == len(named[1]) == 19_945
    same = sum(named[0][m] == named[1][m] for m in named[0])
    assert same / len(named[0]) >= 0.95, f"only {same / len(named[0]):.1%} of customers kept their segment name"
