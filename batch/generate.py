"""Seeded FLO-like customer histories: the product's built-in demo data, calibrated to the real snapshot.

One latent Gaussian vector per customer (a Gaussian copula) carries the joint shape of the real data:
order channel, online and offline order counts, first and last order dates, spend per order, category
list and whether the last order was offline. Each latent goes through a marginal fitted on the real
file; the per-channel last-order dates are then placed so that every invariant of the real file holds.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy.special import ndtr

from schemas.history import CHANNELS, HISTORY_COLUMN_NAMES, ONLINE_CHANNELS

# Rows drawn from one child generator. Fixed, so a file depends on (seed, customers), never on chunk_size.
BLOCK_SIZE = 10_000
LINE_TERMINATOR = "\n"

# ---------------------------------------------------------------------------------------------------
# Parameters fitted on the real FLO snapshot (shared/data/flo_data_20k.csv, 19,945 customers). Only
# aggregate shares, quantiles and fitted coefficients are kept here; no row or id of that file is.
# ---------------------------------------------------------------------------------------------------

# Dates are handled as whole days since this origin.
DATE_ORIGIN = np.datetime64("2013-01-01", "D")
# The real file has no offline order before this day (last_order_date_offline >= 2019-01-22).
OFFLINE_START_DAY = int((np.datetime64("2019-01-22", "D") - DATE_ORIGIN).astype(np.int64))

# order_channel shares (never Offline), listed by increasing mean online order count so that one
# latent normal can carry the channel's association with the counts (Desktop customers order least).
CHANNEL_SHARES: tuple[tuple[str, float], ...] = (
    ("Desktop", 0.1371),
    ("Mobile", 0.2448),
    ("Ios App", 0.1420),
    ("Android App", 0.4761),
)
# Channel of the last online order given order_channel, over schemas.history.ONLINE_CHANNELS
# (Android App, Ios App, Desktop, Mobile): app users drift to the web, never to the other app.
LAST_ONLINE_CHANNEL_SHARES: tuple[tuple[str, tuple[float, float, float, float]], ...] = (
    ("Desktop", (0.0, 0.0, 1.0, 0.0)),
    ("Mobile", (0.0, 0.0, 0.0807, 0.9193)),
    ("Ios App", (0.0674, 0.8527, 0.0277, 0.0523)),
    ("Android App", (0.9316, 0.0, 0.0263, 0.0420)),
)
# Share of customers whose last order was in a store (last_order_channel == "Offline").
LAST_OFFLINE_SHARE = 0.3313

# Order counts: P(count = 1..10) as observed, then a Pareto tail (MLE above 10.5) up to MAX_ORDERS.
ONLINE_COUNT_PMF: tuple[float, ...] = (
    0.43083, 0.20175, 0.11311, 0.07230, 0.04808, 0.03144, 0.02311, 0.01645, 0.01208, 0.00918,
)  # fmt: skip
ONLINE_COUNT_TAIL_ALPHA = 2.403
OFFLINE_COUNT_PMF: tuple[float, ...] = (
    0.54084, 0.25224, 0.10609, 0.05174, 0.02397, 0.01018, 0.00572, 0.00291, 0.00241, 0.00100,
)  # fmt: skip
OFFLINE_COUNT_TAIL_ALPHA = 1.837
# Caps the Pareto tail so that millions of customers keep counts "in the hundreds" like the real file.
MAX_ORDERS = 500

# Spend per order is lognormal with a median that does not move with the count, so totals scale with
# counts; its log-variance is between + within / count, as an average over more orders varies less
# (maximum likelihood fit).
ONLINE_SPEND_LOG_MEAN = 4.9589
ONLINE_SPEND_LOG_VAR_BETWEEN, ONLINE_SPEND_LOG_VAR_WITHIN = 0.1440, 0.2688
OFFLINE_SPEND_LOG_MEAN = 4.7278
OFFLINE_SPEND_LOG_VAR_BETWEEN, OFFLINE_SPEND_LOG_VAR_WITHIN = 0.1244, 0.3703

# Percentiles 0, 1, ..., 100 of last_order_date and first_order_date in days since DATE_ORIGIN (days
# jittered within the day, so the tables strictly increase). The last order is drawn first, then the
# first order from its table truncated to the days the row allows; the first-order table was adjusted
# by simulation (quantile mapping) so that the generated dates, after truncation, match the real ones.
FIRST_ORDER_DAY_QUANTILES: tuple[float, ...] = (
    13.0, 469.4, 665.6, 756.1, 846.6, 976.4, 1103.8, 1214.7, 1330.2, 1422.5, 1492.9, 1554.9, 1614.8,
    1677.5, 1741.5, 1786.6, 1830.4, 1887.2, 1933.8, 1970.9, 2012.5, 2063.9, 2111.7, 2131.6, 2153.5,
    2183.2, 2218.7, 2235.3, 2239.6, 2243.4, 2247.5, 2253.9, 2259.4, 2265.2, 2271.5, 2276.1, 2281.3,
    2287.7, 2294.3, 2300.7, 2312.2, 2333.7, 2361.0, 2373.9, 2381.6, 2386.9, 2393.0, 2399.7, 2404.7,
    2410.0, 2418.5, 2426.3, 2432.1, 2436.4, 2440.8, 2446.1, 2450.8, 2457.1, 2464.1, 2471.2, 2478.2,
    2483.5, 2490.0, 2495.6, 2501.1, 2507.0, 2513.1, 2518.7, 2523.8, 2529.5, 2537.2, 2545.3, 2553.1,
    2562.4, 2572.2, 2580.2, 2588.8, 2597.7, 2608.1, 2619.6, 2629.8, 2659.5, 2680.3, 2692.9, 2709.6,
    2729.4, 2745.4, 2761.4, 2792.1, 2829.6, 2862.7, 2883.7, 2909.9, 2934.4, 2957.4, 2980.9, 3009.5,
    3038.2, 3055.8, 3064.7, 3069.0,
)  # fmt: skip
LAST_ORDER_DAY_QUANTILES: tuple[float, ...] = (
    2706.0, 2713.4, 2720.6, 2726.5, 2732.0, 2738.1, 2742.7, 2748.3, 2753.5, 2759.1, 2765.3, 2775.2,
    2785.0, 2795.5, 2804.7, 2812.3, 2818.3, 2825.5, 2830.8, 2836.0, 2840.8, 2847.9, 2856.3, 2864.0,
    2868.7, 2871.4, 2873.6, 2877.8, 2882.7, 2885.5, 2887.2, 2888.3, 2890.8, 2896.9, 2901.6, 2906.8,
    2911.0, 2914.1, 2919.3, 2924.7, 2928.4, 2932.6, 2936.2, 2938.6, 2940.9, 2944.1, 2948.0, 2952.1,
    2955.4, 2959.2, 2962.1, 2964.5, 2967.6, 2969.0, 2971.9, 2975.3, 2978.5, 2982.3, 2984.9, 2987.4,
    2990.0, 2992.6, 2995.2, 2998.0, 3000.5, 3003.2, 3006.1, 3009.0, 3011.9, 3014.5, 3017.7, 3019.7,
    3022.8, 3025.4, 3027.5, 3030.3, 3032.2, 3034.2, 3037.5, 3039.4, 3040.7, 3042.8, 3044.6, 3046.1,
    3047.3, 3048.6, 3050.0, 3051.4, 3053.1, 3055.2, 3057.9, 3059.0, 3060.2, 3061.2, 3062.5, 3064.7,
    3066.0, 3067.3, 3068.5, 3069.6, 3072.0,
)  # fmt: skip

# interested_in_categories_12 as the file writes it, listed by increasing mean order count so that
# one latent normal carries "more orders, more categories" (empty lists belong to the lightest buyers).
CATEGORY_LIST_SHARES: tuple[tuple[str, float], ...] = (
    ("[]", 0.10704),
    ("[AKTIFSPOR]", 0.17368),
    ("[COCUK]", 0.04192),
    ("[ERKEK]", 0.09892),
    ("[AKTIFCOCUK]", 0.03404),
    ("[KADIN]", 0.10820),
    ("[AKTIFCOCUK, COCUK]", 0.01750),
    ("[ERKEK, COCUK]", 0.01078),
    ("[ERKEK, KADIN]", 0.04252),
    ("[KADIN, AKTIFSPOR]", 0.06779),
    ("[COCUK, AKTIFSPOR]", 0.01589),
    ("[COCUK, KADIN]", 0.02221),
    ("[ERKEK, AKTIFSPOR]", 0.05906),
    ("[AKTIFCOCUK, AKTIFSPOR]", 0.01589),
    ("[AKTIFCOCUK, KADIN]", 0.01053),
    ("[AKTIFCOCUK, ERKEK]", 0.00762),
    ("[AKTIFCOCUK, ERKEK, KADIN]", 0.00446),
    ("[AKTIFCOCUK, ERKEK, COCUK]", 0.00612),
    ("[AKTIFCOCUK, KADIN, AKTIFSPOR]", 0.00923),
    ("[AKTIFCOCUK, COCUK, KADIN]", 0.01068),
    ("[ERKEK, COCUK, KADIN]", 0.01023),
    ("[COCUK, KADIN, AKTIFSPOR]", 0.01208),
    ("[AKTIFCOCUK, COCUK, AKTIFSPOR]", 0.01013),
    ("[AKTIFCOCUK, ERKEK, AKTIFSPOR]", 0.00712),
    ("[ERKEK, COCUK, AKTIFSPOR]", 0.00782),
    ("[ERKEK, KADIN, AKTIFSPOR]", 0.03886),
    ("[AKTIFCOCUK, ERKEK, COCUK, KADIN]", 0.00577),
    ("[AKTIFCOCUK, COCUK, KADIN, AKTIFSPOR]", 0.01018),
    ("[AKTIFCOCUK, ERKEK, COCUK, AKTIFSPOR]", 0.00526),
    ("[ERKEK, COCUK, KADIN, AKTIFSPOR]", 0.01068),
    ("[AKTIFCOCUK, ERKEK, KADIN, AKTIFSPOR]", 0.00662),
    ("[AKTIFCOCUK, ERKEK, COCUK, KADIN, AKTIFSPOR]", 0.01118),
)

# Correlation of the latent normals, in this order. Target: correlations of randomised-rank normal
# scores of the real columns (channel and category list in the orders above, spend per order, last
# channel offline or not); the matrix was adjusted by simulation until the generator's own output
# reproduces them within 0.005, which undoes the attenuation that ties and truncation cause.
LATENTS: tuple[str, ...] = (
    "channel", "online_count", "offline_count", "first_day", "last_day",
    "online_spend", "offline_spend", "categories", "last_offline",
)  # fmt: skip
LATENT_CORRELATION: tuple[tuple[float, ...], ...] = (
    (1.000, 0.252, -0.002, 0.202, 0.096, 0.085, -0.054, 0.120, -0.308),
    (0.252, 1.000, 0.035, -0.297, 0.141, 0.011, -0.065, 0.316, -0.282),
    (-0.002, 0.035, 1.000, -0.227, 0.075, -0.020, 0.049, 0.248, 0.300),
    (0.202, -0.297, -0.227, 1.000, 0.042, 0.143, 0.100, 0.047, -0.038),
    (0.096, 0.141, 0.075, 0.042, 1.000, 0.079, 0.047, -0.038, -0.173),
    (0.085, 0.011, -0.020, 0.143, 0.079, 1.000, 0.118, 0.046, -0.173),
    (-0.054, -0.065, 0.049, 0.100, 0.047, 0.118, 1.000, 0.005, 0.164),
    (0.120, 0.316, 0.248, 0.047, -0.038, 0.046, 0.005, 1.000, 0.079),
    (-0.308, -0.282, 0.300, -0.038, -0.173, -0.173, 0.164, 0.079, 1.000),
)

# P(the other channel's last order falls on first_order_date), indexed by [other channel is offline]
# [min(other count, 3) - 1][min(last channel's count, 4) - 1]; measured where first_order_date is on or
# after OFFLINE_START_DAY. A 1.0 is forced: one order on each side makes the other one the first order.
SAME_DAY_AS_FIRST_ORDER: tuple[tuple[tuple[float, ...], ...], ...] = (
    ((1.0, 0.348, 0.206, 0.153), (0.205, 0.057, 0.030, 0.013), (0.107, 0.033, 0.018, 0.0)),
    ((1.0, 0.885, 0.804, 0.738), (0.127, 0.097, 0.099, 0.066), (0.018, 0.008, 0.0, 0.002)),
)
# Otherwise the other channel's last order sits at fraction V ** (1 / (shape * count)) of the way from
# the day after the first order to the day before the last one: the more orders, the later (MLE fit).
ORDER_POSITION_SHAPE = 0.41


class _Customers(NamedTuple):
    """Column arrays of generated customers as codes, days and cents: cheap to slice, join and format."""

    uuid: np.ndarray  # uint8 (n, 36), the id's ASCII text
    channel: np.ndarray  # index into CHANNEL_SHARES
    last_channel: np.ndarray  # index into schemas.history.CHANNELS
    first_day: np.ndarray  # days since DATE_ORIGIN, like the three below
    last_day: np.ndarray
    online_day: np.ndarray
    offline_day: np.ndarray
    online_count: np.ndarray
    offline_count: np.ndarray
    offline_cents: np.ndarray
    online_cents: np.ndarray
    categories: np.ndarray  # index into CATEGORY_LIST_SHARES


def _categorical(u: np.ndarray, shares: tuple[float, ...]) -> np.ndarray:
    """Index of the category each uniform falls in; shares are renormalised against rounding."""
    cumulative = np.cumsum(shares)
    return np.minimum(np.searchsorted(cumulative / cumulative[-1], u, side="right"), len(shares) - 1)


def _order_counts(u: np.ndarray, pmf: tuple[float, ...], alpha: float) -> np.ndarray:
    """Counts from uniforms: the observed head, then a truncated Pareto tail for the heavy buyers."""
    cumulative = np.cumsum(pmf)
    head = np.searchsorted(cumulative, u, side="right") + 1
    x_min, x_max = len(pmf) + 0.5, MAX_ORDERS + 0.5
    tail_u = np.clip((u - cumulative[-1]) / (1.0 - cumulative[-1]), 0.0, 1.0)
    tail = np.rint(x_min * (1.0 - tail_u * (1.0 - (x_min / x_max) ** alpha)) ** (-1.0 / alpha))
    return np.where(u < cumulative[-1], head, np.minimum(tail, MAX_ORDERS)).astype(np.int64)


def _days_between(u: np.ndarray, table: tuple[float, ...], low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Whole days through a percentile table truncated per row to [low, high], so rows obey their bounds."""
    # Truncating the quantile function, rather than clipping, keeps each latent's rank and the
    # marginal's shape inside the allowed range.
    grid = np.linspace(0.0, 1.0, len(table))
    c_low = np.interp(low, table, grid)
    c_high = np.interp(high + 1.0, table, grid)
    days = np.floor(np.interp(c_low + u * (c_high - c_low), grid, table)).astype(np.int64)
    return np.clip(days, low, high)


def _other_channel_days(
    rng: np.random.Generator,
    first_day: np.ndarray,
    last_day: np.ndarray,
    is_last_offline: np.ndarray,
    online_count: np.ndarray,
    offline_count: np.ndarray,
) -> np.ndarray:
    """Last-order day of the channel that did not take the last order, strictly before last_day."""
    n = first_day.shape[0]
    other_count = np.where(is_last_offline, online_count, offline_count)
    last_count = np.where(is_last_offline, offline_count, online_count)
    p_same_day = np.asarray(SAME_DAY_AS_FIRST_ORDER)[
        (~is_last_offline).astype(np.int64), np.minimum(other_count, 3) - 1, np.minimum(last_count, 4) - 1
    ]
    # Before OFFLINE_START_DAY the first order can only have been an online one.
    is_early = first_day < OFFLINE_START_DAY
    p_same_day = np.where(is_early & ~is_last_offline, 0.0, p_same_day)
    p_same_day = np.where(is_early & is_last_offline & (other_count == 1), 1.0, p_same_day)
    is_same_day = rng.random(n) < p_same_day

    low = np.where(is_last_offline, first_day + 1, np.maximum(first_day + 1, OFFLINE_START_DAY))
    span = last_day - low
    position = rng.random(n) ** (1.0 / (ORDER_POSITION_SHAPE * other_count))
    other_day = np.minimum(low + np.floor(position * span).astype(np.int64), last_day - 1)
    return np.where(is_same_day | (span <= 0), first_day, other_day)


def _total_cents(
    z: np.ndarray, count: np.ndarray, log_mean: float, var_between: float, var_within: float
) -> np.ndarray:
    """Total spend in whole cents: the count times a lognormal spend per order, never zero."""
    per_order = np.exp(log_mean + np.sqrt(var_between + var_within / count) * z)
    return np.maximum(np.rint(count * per_order * 100.0), 1.0).astype(np.int64)


def _uuid_text(rng: np.random.Generator, n: int) -> np.ndarray:
    """Version-4-shaped UUIDs from the generator's bytes, so ids are reproducible for a seed."""
    raw = np.frombuffer(rng.bytes(16 * n), dtype=np.uint8).reshape(n, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    nibbles = np.empty((n, 32), dtype=np.uint8)
    nibbles[:, 0::2] = raw >> 4
    nibbles[:, 1::2] = raw & 0x0F
    text = np.full((n, 36), ord("-"), dtype=np.uint8)
    text[:, [i for i in range(36) if i not in (8, 13, 18, 23)]] = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)[
        nibbles
    ]
    return text


def _draw_customers(rng: np.random.Generator, n: int) -> _Customers:
    """n customers from one generator; the draw order is fixed, so a seed always gives the same rows."""
    # One row per latent keeps every latent's values contiguous for the vectorised steps below.
    latent = np.linalg.cholesky(np.asarray(LATENT_CORRELATION)) @ rng.standard_normal((len(LATENTS), n))
    z = dict(zip(LATENTS, latent, strict=True))
    u = {name: ndtr(values) for name, values in z.items()}

    channel = _categorical(u["channel"], tuple(share for _, share in CHANNEL_SHARES))
    online_count = _order_counts(u["online_count"], ONLINE_COUNT_PMF, ONLINE_COUNT_TAIL_ALPHA)
    offline_count = _order_counts(u["offline_count"], OFFLINE_COUNT_PMF, OFFLINE_COUNT_TAIL_ALPHA)
    # The latent's upper tail means "offline last", so its correlations read with that sign.
    is_last_offline = u["last_offline"] > 1.0 - LAST_OFFLINE_SHARE

    last_table, first_table = LAST_ORDER_DAY_QUANTILES, FIRST_ORDER_DAY_QUANTILES
    last_day = _days_between(
        u["last_day"], last_table, np.full(n, int(last_table[0])), np.full(n, int(last_table[-1]) - 1)
    )
    # A single online order that is not the last order: the first order was the offline one.
    first_low = np.where(~is_last_offline & (online_count == 1), OFFLINE_START_DAY, int(first_table[0]))
    first_day = _days_between(u["first_day"], first_table, first_low, last_day)
    # All orders on one day: a tie goes online, as "Offline" means the offline order came later.
    is_last_offline &= first_day < last_day
    other_day = _other_channel_days(rng, first_day, last_day, is_last_offline, online_count, offline_count)

    last_online_shares = dict(LAST_ONLINE_CHANNEL_SHARES)
    cumulative = np.cumsum([last_online_shares[name] for name, _ in CHANNEL_SHARES], axis=1)
    last_online = (rng.random(n)[:, None] >= cumulative[channel, :-1]).sum(axis=1)
    last_online_channel = np.array([CHANNELS.index(name) for name in ONLINE_CHANNELS])[last_online]

    return _Customers(
        uuid=_uuid_text(rng, n),
        channel=channel,
        last_channel=np.where(is_last_offline, CHANNELS.index("Offline"), last_online_channel),
        first_day=first_day,
        last_day=last_day,
        online_day=np.where(is_last_offline, other_day, last_day),
        offline_day=np.where(is_last_offline, last_day, other_day),
        online_count=online_count,
        offline_count=offline_count,
        offline_cents=_total_cents(
            z["offline_spend"],
            offline_count,
            OFFLINE_SPEND_LOG_MEAN,
            OFFLINE_SPEND_LOG_VAR_BETWEEN,
            OFFLINE_SPEND_LOG_VAR_WITHIN,
        ),
        online_cents=_total_cents(
            z["online_spend"],
            online_count,
            ONLINE_SPEND_LOG_MEAN,
            ONLINE_SPEND_LOG_VAR_BETWEEN,
            ONLINE_SPEND_LOG_VAR_WITHIN,
        ),
        categories=_categorical(u["categories"], tuple(share for _, share in CATEGORY_LIST_SHARES)),
    )


def _to_frame(customers: _Customers) -> pd.DataFrame:
    """Typed rows in the history column order."""

    def dates(days: np.ndarray) -> np.ndarray:
        return DATE_ORIGIN + days.astype("timedelta64[D]")

    columns = {
        "master_id": customers.uuid.view("S36").ravel().astype("U36").astype(object),
        "order_channel": np.array([name for name, _ in CHANNEL_SHARES], dtype=object)[customers.channel],
        "last_order_channel": np.array(CHANNELS, dtype=object)[customers.last_channel],
        "first_order_date": dates(customers.first_day),
        "last_order_date": dates(customers.last_day),
        "last_order_date_online": dates(customers.online_day),
        "last_order_date_offline": dates(customers.offline_day),
        "order_num_total_ever_online": customers.online_count.astype(np.float64),
        "order_num_total_ever_offline": customers.offline_count.astype(np.float64),
        "customer_value_total_ever_offline": customers.offline_cents / 100.0,
        "customer_value_total_ever_online": customers.online_cents / 100.0,
        "interested_in_categories_12": np.array([text for text, _ in CATEGORY_LIST_SHARES], dtype=object)[
            customers.categories
        ],
    }
    return pd.DataFrame({name: columns[name] for name in HISTORY_COLUMN_NAMES})


def generate_history_chunk(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """Demo customers in memory for callers that need no file: typed like validated history, lists as text."""
    return _to_frame(_draw_customers(rng, n))


def _csv_field(text: str) -> str:
    """A field quoted as the csv module's minimal quoting would, so lists with commas stay one field."""
    return f'"{text.replace(chr(34), chr(34) * 2)}"' if any(c in text for c in ',"\r\n') else text


class _CsvText(NamedTuple):
    """Byte lookup tables of the CSV field values, built once per file rather than once per chunk."""

    channel_pairs: np.ndarray  # "order_channel,last_order_channel" at channel * len(CHANNELS) + last
    days: np.ndarray  # YYYY-MM-DD by days since DATE_ORIGIN
    counts: np.ndarray  # "4.0" by count
    cents: np.ndarray  # "07" by cents % 100
    categories: np.ndarray  # the category list, quoted where it holds a comma


def _csv_text() -> _CsvText:
    """The lookup tables that format every field as the real file writes it."""
    order_names = [name for name, _ in CHANNEL_SHARES]
    return _CsvText(
        channel_pairs=np.array([f"{o},{last}" for o in order_names for last in CHANNELS], dtype="S"),
        days=np.datetime_as_string(
            DATE_ORIGIN + np.arange(int(LAST_ORDER_DAY_QUANTILES[-1]), dtype="timedelta64[D]")
        ).astype("S10"),
        counts=np.array([f"{k}.0" for k in range(MAX_ORDERS + 1)], dtype="S"),
        cents=np.array([f"{k:02d}" for k in range(100)], dtype="S2"),
        categories=np.array([_csv_field(text) for text, _ in CATEGORY_LIST_SHARES], dtype="S"),
    )


def _csv_bytes(customers: _Customers, text: _CsvText) -> bytes:
    """CSV rows formatted like the real file, without per-row Python work so millions of rows stay fast."""
    # Every field becomes NUL-padded bytes copied into its own columns of one fixed-width byte matrix;
    # dropping the NUL padding at the end leaves the variable-width rows.
    n = customers.channel.shape[0]

    def whole_units(cents: np.ndarray) -> np.ndarray:
        return (cents // 100).astype(f"S{len(str(int(cents.max(initial=0)) // 100))}")

    pieces: list[np.ndarray | bytes] = [
        customers.uuid.view("S36").ravel(), b",",
        text.channel_pairs[customers.channel * len(CHANNELS) + customers.last_channel], b",",
        text.days[customers.first_day], b",",
        text.days[customers.last_day], b",",
        text.days[customers.online_day], b",",
        text.days[customers.offline_day], b",",
        text.counts[customers.online_count], b",",
        text.counts[customers.offline_count], b",",
        whole_units(customers.offline_cents), b".", text.cents[customers.offline_cents % 100], b",",
        whole_units(customers.online_cents), b".", text.cents[customers.online_cents % 100], b",",
        text.categories[customers.categories], LINE_TERMINATOR.encode(),
    ]  # fmt: skip
    widths = [len(p) if isinstance(p, bytes) else p.dtype.itemsize for p in pieces]
    matrix = np.zeros((n, sum(widths)), dtype=np.uint8)
    column = 0
    for piece, width in zip(pieces, widths, strict=True):
        if isinstance(piece, bytes):
            matrix[:, column : column + width] = np.frombuffer(piece, dtype=np.uint8)
        else:
            matrix[:, column : column + width] = np.ascontiguousarray(piece).view(np.uint8).reshape(n, width)
        column += width
    return matrix.tobytes().translate(None, b"\0")


def _block_rng(seed: int, block: int) -> np.random.Generator:
    """The generator of one block: child `block` of SeedSequence(seed), as SeedSequence.spawn numbers it."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(block,)))


def _slice(customers: _Customers, start: int, stop: int) -> _Customers:
    """Rows [start, stop) of every column."""
    return _Customers(*(column[start:stop] for column in customers))


def _concat(parts: list[_Customers]) -> _Customers:
    """Columns of consecutive row ranges joined."""
    return _Customers(*(np.concatenate(columns) for columns in zip(*parts, strict=True)))


def _iter_chunks(seed: int, customers: int, chunk_size: int) -> Iterator[_Customers]:
    """Consecutive chunks of the file's rows, drawn block by block so that chunking never changes them."""
    drawn: tuple[int, _Customers] | None = None  # the last block, reused by a chunk that starts inside it
    for start in range(0, customers, chunk_size):
        stop = min(start + chunk_size, customers)
        parts = []
        for block in range(start // BLOCK_SIZE, (stop - 1) // BLOCK_SIZE + 1):
            block_start = block * BLOCK_SIZE
            if drawn is None or drawn[0] != block:
                size = min(BLOCK_SIZE, customers - block_start)
                drawn = (block, _draw_customers(_block_rng(seed, block), size))
            parts.append(_slice(drawn[1], max(start - block_start, 0), stop - block_start))
        yield _concat(parts)


def write_history_csv(
    out: str | Path,
    *,
    customers: int,
    seed: int,
    chunk_size: int = 250_000,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Write the demo history CSV chunk by chunk, so memory stays bounded at any size; return the rows."""
    if customers < 0:
        raise ValueError(f"customers must be >= 0, got {customers}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the target and renamed when complete: an interrupted run never leaves a partial file
    # under the final name.
    partial = target.with_name(f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}.partial")
    try:
        with partial.open("wb") as handle:
            handle.write((",".join(HISTORY_COLUMN_NAMES) + LINE_TERMINATOR).encode())
            text, done = _csv_text(), 0
            for chunk in _iter_chunks(seed, customers, chunk_size):
                handle.write(_csv_bytes(chunk, text))
                done += chunk.channel.shape[0]
                if progress is not None:
                    progress(done, customers)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return customers
