"""Drift: how far recently updated customers and today's segment shares are from a model's training snapshot.

Training stores a reference with each model version (`models.drift_bins`, `models.segment_shares`): for
each drift feature, its bins over the trained customers and the share of them in each bin, and the
share of customers in each segment. A check (`flo-seg monitor`, streaming/monitor.py) compares:

- the features of the customers the stream updated since the model was trained (and within a window),
  by their population stability index (PSI) against the stored bins;
- each segment's share of all customers now against its share at training.

Which features: those a customer's order does not move by itself. A just-updated customer has recency 0
and one order more than before, so her recency, frequency, monetary and tenure differ from the whole
base's even when nothing changed: on the real FLO data an unshifted simulated stream gave a frequency
PSI of 2.4, monetary 0.38, online share 0.44 (docs/benchmarks.md, "Drift"). The basket
size (average order value) and the channel of the last order are what the stream's orders carry; the
same check gave them 0.005 and 0.028, and 0.700 and 5.153 for orders all offline with baskets four times
the usual (2,000 orders on the real data; a pandas spike before it: 0.006-0.037 and 0.025-0.053).

Everything here is pure (numpy / pandas); the Spark reads and the writes are in streaming/monitor.py.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

# Numeric features are cut at their training deciles; categorical ones count each value.
NUMERIC_DRIFT_FEATURES: tuple[str, ...] = ("avg_order_value",)
CATEGORICAL_DRIFT_FEATURES: tuple[str, ...] = ("last_order_channel",)
DRIFT_FEATURES: tuple[str, ...] = (*NUMERIC_DRIFT_FEATURES, *CATEGORICAL_DRIFT_FEATURES)
BINS = 10
# Added to every bin's count before shares are taken, so an empty bin has a finite log (a pseudo-count).
SMOOTHING = 0.5
# A categorical value the reference never saw counts in this bin.
OTHER = "(other)"

PSI = "psi"
SHARE_SHIFT = "share_shift"
FEATURE = "feature"
SEGMENT = "segment"


@dataclass(frozen=True, kw_only=True)
class FeatureBins:
    """One feature's training distribution: numeric `edges` (bin i holds edges[i-1] <= x < edges[i]) or
    `categories` (plus OTHER last), and the smoothed share of training customers per bin."""

    feature: str
    proportions: tuple[float, ...]
    edges: tuple[float, ...] | None = None
    categories: tuple[str, ...] | None = None

    def counts(self, values: pd.Series) -> np.ndarray:
        """How many of `values` fall in each bin (missing values are left out)."""
        present = values.dropna()
        if self.edges is not None:
            index = np.searchsorted(np.asarray(self.edges), present.to_numpy(dtype=np.float64), side="right")
            return np.bincount(index, minlength=len(self.edges) + 1)
        assert self.categories is not None
        codes = {c: i for i, c in enumerate(self.categories)}
        category = present.astype(str).map(codes).fillna(len(self.categories)).to_numpy(dtype=np.int64)
        return np.bincount(category, minlength=len(self.categories) + 1)


def smoothed_shares(counts: np.ndarray) -> np.ndarray:
    """Bin shares with SMOOTHING added to every count."""
    padded = counts.astype(np.float64) + SMOOTHING
    return padded / padded.sum()


def psi(reference: Sequence[float], counts: np.ndarray) -> float:
    """Population stability index of observed bin counts against reference shares: sum (q - p) ln(q / p)."""
    p = np.asarray(reference, dtype=np.float64)
    q = smoothed_shares(counts)
    return float(np.sum((q - p) * np.log(q / p)))


def feature_bins(values: pd.Series, feature: str) -> FeatureBins:
    """A feature's bins from the training customers' values: deciles for a number, each value for a category.

    A ValueError when the values cannot be binned (none, or a number that never varies: every later value
    above it would share its bin).
    """
    present = values.dropna()
    if present.nunique() < (1 if feature in CATEGORICAL_DRIFT_FEATURES else 2):
        raise ValueError(f"{feature}: {present.nunique()} distinct value(s) among the training customers")
    if feature in CATEGORICAL_DRIFT_FEATURES:
        categories = tuple(sorted(present.astype(str).unique()))
        bins = FeatureBins(feature=feature, categories=categories, proportions=())
    else:
        quantiles = np.quantile(present.to_numpy(dtype=np.float64), np.linspace(0, 1, BINS + 1)[1:-1])
        bins = FeatureBins(feature=feature, edges=tuple(float(e) for e in np.unique(quantiles)), proportions=())
    counts = bins.counts(present)
    if feature not in CATEGORICAL_DRIFT_FEATURES and np.count_nonzero(counts) < 2:
        # e.g. 95% of the values equal: the deciles collapse to one edge, every larger value shares its bin.
        raise ValueError(f"{feature}: the training values fill only one bin (edges {bins.edges})")
    shares = smoothed_shares(counts)
    return FeatureBins(
        feature=feature,
        edges=bins.edges,
        categories=bins.categories,
        proportions=tuple(float(s) for s in shares),
    )


@dataclass(frozen=True, kw_only=True)
class DriftReference:
    """What a model version's customers looked like when it was trained."""

    bins: tuple[FeatureBins, ...]
    segment_shares: dict[str, float]


def drift_reference(features_pdf: pd.DataFrame, segment_sizes: Mapping[str, int]) -> DriftReference:
    """The reference from the training customers' DRIFT_FEATURES columns and the segment sizes."""
    total = sum(segment_sizes.values())
    bins = []
    for feature in DRIFT_FEATURES:
        try:
            bins.append(feature_bins(features_pdf[feature], feature))
        except ValueError as exc:
            log.warning("no drift reference for %s, it is not checked under this model", exc)
    return DriftReference(
        bins=tuple(bins),
        segment_shares={name: n / total for name, n in sorted(segment_sizes.items())} if total else {},
    )


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    """Beyond these a measurement is an alarm; features are judged on at least `min_customers` customers."""

    psi: float = 0.25
    share_shift: float = 0.10
    min_customers: int = 200


@dataclass(frozen=True, kw_only=True)
class Measurement:
    """One statistic of one check: a feature's PSI or a segment's share shift."""

    kind: str  # FEATURE | SEGMENT
    name: str  # the feature or the segment
    statistic: str  # PSI | SHARE_SHIFT
    value: float
    threshold: float
    customers: int  # how many customers it was measured on
    reference: float | None = None  # a segment's training share
    current: float | None = None  # its share now

    @property
    def is_alarm(self) -> bool:
        """Beyond the threshold."""
        return self.value > self.threshold


def feature_drift(reference: DriftReference, recent_pdf: pd.DataFrame, thresholds: Thresholds) -> list[Measurement]:
    """PSI of each reference feature over the recently updated customers; none below min_customers."""
    if len(recent_pdf) < thresholds.min_customers:
        return []
    return [
        Measurement(
            kind=FEATURE,
            name=bins.feature,
            statistic=PSI,
            value=psi(bins.proportions, bins.counts(recent_pdf[bins.feature])),
            threshold=thresholds.psi,
            customers=int(recent_pdf[bins.feature].notna().sum()),
        )
        for bins in reference.bins
        if bins.feature in recent_pdf.columns
    ]


def share_drift(reference: DriftReference, sizes: Mapping[str, int], thresholds: Thresholds) -> list[Measurement]:
    """Each segment's share now minus its share at training, in absolute value."""
    total = sum(sizes.values())
    if not total or not reference.segment_shares:
        return []
    names = sorted(set(reference.segment_shares) | set(sizes))
    out = []
    for name in names:
        before, now = reference.segment_shares.get(name, 0.0), sizes.get(name, 0) / total
        out.append(
            Measurement(
                kind=SEGMENT,
                name=name,
                statistic=SHARE_SHIFT,
                value=abs(now - before),
                threshold=thresholds.share_shift,
                customers=total,
                reference=before,
                current=now,
            )
        )
    return out


def bins_rows(reference: DriftReference) -> list[dict[str, object]]:
    """The reference's bins as `models.drift_bins` values."""
    return [
        {
            "feature": b.feature,
            "edges": list(b.edges) if b.edges is not None else None,
            "categories": list(b.categories) if b.categories is not None else None,
            "proportions": list(b.proportions),
        }
        for b in reference.bins
    ]


def reference_from_columns(
    rows: Sequence[Mapping[str, Any]] | None, shares: Mapping[str, float] | None
) -> DriftReference | None:
    """The reference stored in a `models` row; None for a version trained before drift references (an empty
    `rows` is a reference whose features could not be binned: its segment shares are still checked)."""
    if rows is None and shares is None:
        return None
    bins = tuple(
        FeatureBins(
            feature=str(row["feature"]),
            edges=None if row.get("edges") is None else tuple(float(e) for e in row["edges"]),
            categories=None if row.get("categories") is None else tuple(str(c) for c in row["categories"]),
            proportions=tuple(float(p) for p in row["proportions"]),
        )
        for row in rows or ()
    )
    return DriftReference(bins=bins, segment_shares={k: float(v) for k, v in (shares or {}).items()})


def describe(m: Measurement) -> str:
    """One line for a log or a terminal."""
    flag = "ALARM" if m.is_alarm else "ok"
    shares = "" if m.reference is None else f" ({m.reference:.1%} at training, {m.current:.1%} now)"
    value = "nan" if math.isnan(m.value) else f"{m.value:.3f}"
    measured = f"{m.statistic} {value} (threshold {m.threshold:g}, {m.customers} customers)"
    return f"{flag:<5} {m.kind} {m.name}: {measured}{shares}"
