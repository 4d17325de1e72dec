"""Segment names from centroid profiles, segment profiles, marketing actions and campaign lists."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pyspark.ml.functions import vector_to_array
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from scipy.optimize import linear_sum_assignment

from batch.features import CLUSTER_FEATURES, category_flag_name
from batch.model import PREDICTION, SCALED
from schemas.history import CATEGORIES, CHANNELS

# Archetypes as standardised profiles over CLUSTER_FEATURES (recency, frequency, monetary, tenure,
# online share): + means above the customer base (for recency: longer ago). Clusters are matched to
# archetypes by an optimal one-to-one assignment, so names are unique, deterministic and follow the
# profile rather than the cluster number, which permutes between fits.
ARCHETYPES: dict[str, tuple[float, float, float, float, float]] = {
    "high_value_recent": (-0.9, 1.2, 1.2, 0.5, 0.0),
    "lapsing_big_spenders": (0.9, 1.0, 1.0, 0.6, 0.0),
    "one_time_newcomers": (-0.6, -0.9, -0.8, -1.6, 0.0),
    "store_loyalists": (0.0, 0.5, 0.3, 0.3, -1.3),
    "online_regulars": (0.0, 0.5, 0.3, 0.3, 1.0),
    "hibernating_low_value": (1.0, -0.8, -0.8, 0.3, 0.0),
    "recent_occasional_buyers": (-0.9, -0.6, -0.5, 0.3, 0.0),
    "new_big_spenders": (-0.6, 0.2, 0.8, -1.4, 0.0),
    "steady_mid_value": (0.0, 0.0, 0.0, 0.0, 0.0),
    "long_time_loyalists": (-0.2, 0.8, 0.6, 1.3, 0.0),
    "fading_newcomers": (0.8, -0.7, -0.6, -1.2, 0.0),
    "lapsing_store_shoppers": (0.9, -0.2, -0.2, 0.2, -1.2),
    # Coarse halves, for when silhouette prefers few segments.
    "regular_high_value": (-0.3, 0.9, 0.9, 0.4, 0.3),
    "occasional_low_value": (0.2, -0.5, -0.5, -0.2, -0.2),
}


def cluster_profiles_z(scored_df: DataFrame) -> dict[int, tuple[float, ...]]:
    """Mean standardised feature vector per cluster (the centroid in the model's own scale)."""
    values = vector_to_array(F.col(SCALED))
    aggs = [F.avg(values[i]).alias(name) for i, name in enumerate(CLUSTER_FEATURES)]
    rows = scored_df.groupBy(PREDICTION).agg(*aggs).collect()
    return {int(r[PREDICTION]): tuple(float(r[n]) for n in CLUSTER_FEATURES) for r in rows}


def name_segments(profiles: dict[int, tuple[float, ...]]) -> dict[int, str]:
    """Unique archetype name per cluster by minimum total squared distance (Hungarian assignment)."""
    clusters = sorted(profiles)
    names = list(ARCHETYPES)
    if len(clusters) > len(names):
        raise ValueError(f"{len(clusters)} clusters but only {len(names)} segment archetypes to name them")
    centroids = np.array([profiles[c] for c in clusters])
    prototypes = np.array([ARCHETYPES[n] for n in names])
    cost = ((centroids[:, None, :] - prototypes[None, :, :]) ** 2).sum(axis=2)
    rows, cols = linear_sum_assignment(cost)
    return {clusters[r]: names[c] for r, c in zip(rows, cols, strict=True)}


def segment_name(names: dict[int, str], cluster_col: Column) -> Column:
    """Segment name of a cluster id, from the model's stored mapping."""
    mapping = F.create_map(*[F.lit(x) for c, n in sorted(names.items()) for x in (c, n)])
    return F.element_at(mapping, cluster_col)


# ------------------------------------------------------------------------------------------ profiles
_STATS = ("recency", "frequency", "monetary", "tenure")
_CHANNEL_GROUPS = {
    "Android App": "app",
    "Ios App": "app",
    "Desktop": "web",
    "Mobile": "web",
    "Offline": "store",
}


def segment_profiles(scored_df: DataFrame) -> DataFrame:
    """Per segment: size, share, R/F/M/tenure means and medians, channel mix, top categories, RFM mix."""
    total = F.sum("customers").over(Window.partitionBy())
    stats = [F.avg(c).alias(f"{c}_mean") for c in _STATS]
    stats += [F.percentile_approx(c, 0.5, 10_000).cast("double").alias(f"{c}_median") for c in _STATS]
    channel_shares = [
        F.avg((F.col("last_order_channel") == c).cast("double")).alias(f"_ch_{i}") for i, c in enumerate(CHANNELS)
    ]
    category_shares = [F.avg(category_flag_name(c)).alias(f"_cat_{i}") for i, c in enumerate(CATEGORIES)]
    base = scored_df.groupBy("segment", PREDICTION).agg(
        F.count(F.lit(1)).alias("customers"),
        *stats,
        F.avg("online_share").alias("online_share_mean"),
        F.avg("avg_order_value").alias("avg_order_value_mean"),
        *channel_shares,
        *category_shares,
        F.first("as_of").alias("as_of"),
        *lifetime_value_stats(),
    )
    rfm = (
        scored_df.groupBy("segment", "rfm_segment")
        .count()
        .groupBy("segment")
        .agg(F.map_from_entries(F.collect_list(F.struct("rfm_segment", "count"))).alias("_rfm_counts"))
    )
    channel_mix = F.create_map(*[x for i, c in enumerate(CHANNELS) for x in (F.lit(c), F.col(f"_ch_{i}"))])
    category_entries = F.array(
        *[F.struct(F.col(f"_cat_{i}").alias("share"), F.lit(c).alias("category")) for i, c in enumerate(CATEGORIES)]
    )
    top = F.slice(F.sort_array(F.filter(category_entries, lambda e: e["share"] > 0), asc=False), 1, 3)
    return (
        base.join(rfm, "segment")
        .withColumn("share", F.col("customers") / total)
        .withColumn("channel_mix", channel_mix)
        .withColumn("top_categories", F.transform(top, lambda e: e["category"]))
        .withColumn(
            "rfm_mix",
            F.transform_values("_rfm_counts", lambda _, v: v / F.col("customers")),
        )
        .drop(
            "_rfm_counts",
            *[f"_ch_{i}" for i in range(len(CHANNELS))],
            *[f"_cat_{i}" for i in range(len(CATEGORIES))],
        )
    )


# A customer whose P(alive) is under this has probably stopped buying; a segment where at least
# AT_RISK_SEGMENT_SHARE of the customers have is one to win back.
PROBABLY_GONE = 0.5
AT_RISK_SEGMENT_SHARE = 0.10


def lifetime_value_stats() -> list[Column]:
    """Per-segment lifetime value and churn risk aggregates (null under a model version without CLV)."""
    gone = F.when(F.col("p_alive").isNotNull(), (F.col("p_alive") < PROBABLY_GONE).cast("double"))
    return [
        F.avg("p_alive").alias("p_alive_mean"),
        F.avg(gone).alias("at_risk_share"),
        F.avg("expected_orders_90d").alias("expected_orders_90d_mean"),
        F.avg("expected_value_12m").alias("expected_value_12m_mean"),
        F.sum("expected_value_12m").alias("expected_value_12m_total"),
    ]


@dataclass(frozen=True, kw_only=True)
class Population:
    """Customer-base reference points that turn a segment profile into 'high' or 'low'."""

    recency_p40: float
    recency_p60: float
    monetary_p40: float
    monetary_p60: float
    frequency_p60: float
    tenure_p25: float


def population(scored_df: DataFrame) -> Population:
    """Quantiles of the whole scored base (one Spark action)."""
    q = scored_df.approxQuantile(["recency", "monetary", "frequency", "tenure"], [0.25, 0.4, 0.6], 0.001)
    rec, mon, freq, ten = q
    return Population(
        recency_p40=rec[1],
        recency_p60=rec[2],
        monetary_p40=mon[1],
        monetary_p60=mon[2],
        frequency_p60=freq[2],
        tenure_p25=ten[0],
    )


@dataclass(frozen=True, kw_only=True)
class Action:
    """A concrete marketing action: where, what, when."""

    channel: str
    offer: str
    timing: str

    @property
    def text(self) -> str:
        """One sentence for the profile table."""
        return f"{self.offer} via {self.channel}, {self.timing}."


def recommend_action(profile: dict[str, Any], pop: Population) -> Action:
    """The action for one segment profile, from its value, recency, newness, churn risk and channel habits."""
    mix: dict[str, float] = profile.get("channel_mix") or {}
    groups: dict[str, float] = {}
    for channel, share in mix.items():
        groups[_CHANNEL_GROUPS.get(channel, "web")] = groups.get(_CHANNEL_GROUPS.get(channel, "web"), 0.0) + (
            share or 0.0
        )
    main_group = max(sorted(groups), key=lambda g: groups[g]) if groups else "web"
    channel = {
        "app": "app push notification and in-app banner",
        "web": "e-mail and mobile-web banner",
        "store": "SMS voucher redeemable in store",
    }[main_group]
    top = (profile.get("top_categories") or ["their favourite category"])[0]
    recency, monetary = profile["recency_median"], profile["monetary_median"]
    frequency, tenure = profile["frequency_median"], profile["tenure_median"]
    interval = max(round(tenure / max(frequency, 1.0)), 7)
    is_recent, is_lapsing = recency <= pop.recency_p40, recency >= pop.recency_p60
    is_high_value = monetary >= pop.monetary_p60
    is_new = tenure <= pop.tenure_p25
    at_risk = profile.get("at_risk_share")
    many_gone = at_risk is not None and at_risk >= AT_RISK_SEGMENT_SHARE
    if is_new:
        offer = f"second-purchase incentive (15% off the next {top} order)"
        timing = "within 30 days of the first order"
    elif many_gone and is_high_value:
        offer = f"personal win-back offer (20% off {top}) to the customers likely gone, perks to the rest"
        timing = f"now: {at_risk:.0%} of them have probably stopped buying (P(alive) < {PROBABLY_GONE})"
    elif is_recent and is_high_value:
        offer = f"early access to the new {top} collection and loyalty perks, no discount"
        timing = f"now, then every ~{interval} days (their usual purchase interval)"
    elif is_lapsing and is_high_value:
        offer = f"personal win-back offer (20% off {top})"
        timing = f"now: the median customer is {int(recency)} days past the last order"
    elif is_lapsing:
        offer = f"low-cost reactivation (40% off {top} in the seasonal sale)"
        timing = "at the next seasonal sale"
    elif frequency >= pop.frequency_p60:
        offer = f"loyalty points multiplier on {top}"
        timing = f"every ~{interval} days (their usual purchase interval)"
    else:
        offer = f"cross-sell bundle around {top}"
        timing = f"within the next {max(interval // 2, 7)} days"
    return Action(channel=channel, offer=offer, timing=timing)


# ----------------------------------------------------------------------------------------- campaigns
CAMPAIGNS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # campaign: (classic RFM segments, categories of interest, any of)
    "new_womens_shoe_brand": (("loyal_customers", "champions"), ("KADIN",)),
    "men_children_40pct_off": (("at_risk", "cant_lose", "new_customers"), ("ERKEK", "COCUK")),
}


def _sql_list(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


# The campaigns as SQL predicates over customer_segments' columns: what campaign_targets filters by and
# the built-in audiences (batch/audiences.py) are.
CAMPAIGN_PREDICATES: dict[str, str] = {
    name: f"rfm_segment IN ({_sql_list(rfm)}) AND "
    f"coalesce(arrays_overlap(interested_in_categories_12, array({_sql_list(categories)})), false)"
    for name, (rfm, categories) in CAMPAIGNS.items()
}


def campaign_targets(customers_df: DataFrame) -> DataFrame:
    """The two classic FLO campaign lists from customers' classic RFM segments and category interests.

    One frame holds both (train's scored customers): joining two projections of it would shuffle
    every customer twice.
    """
    lists = [
        customers_df.where(F.expr(predicate)).withColumn("campaign", F.lit(campaign))
        for campaign, predicate in CAMPAIGN_PREDICATES.items()
    ]
    out = lists[0]
    for other in lists[1:]:
        out = out.unionByName(other)
    return out
