"""Lifetime value and churn risk: BG/NBD (purchases and dropout) and Gamma-Gamma (spend per order).

The published likelihoods (Fader, Hardie & Lee 2005, "Counting your customers the easy way"; Fader,
Hardie & Lee 2005, "RFM and CLV", the Gamma-Gamma spend model), fitted by maximum likelihood with
scipy on a sample of customers. Why not a library: `lifetimes` and `btyd` are unmaintained, and
pymc-marketing's CLV models bring PyMC and PyTensor (a C compiler at run time, minutes of installation
on every fresh clone and CI run) for what is here a two-function maximum-likelihood fit; scipy is
already installed (scikit-learn's dependency).

The FLO summary columns give each customer's inputs, in days:
- `x`: repeat orders, total orders - 1;
- `t_x`: last order - first order;
- `T`: analysis date - first order;
- `m`: average order value (total spend / total orders).
Scoring is closed form: P(alive) and the expected orders in the next `t` days (the latter through the
Gauss hypergeometric function, `scipy.special.hyp2f1`), and the expected spend per order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from scipy import optimize, special

ArrayLike = np.ndarray


@dataclass(frozen=True)
class BgNbd:
    """BG/NBD parameters: purchase rates ~ Gamma(r, alpha) per day, dropout probability ~ Beta(a, b)."""

    r: float
    alpha: float
    a: float
    b: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class GammaGamma:
    """Gamma-Gamma parameters: spend per order ~ Gamma(p, nu), nu ~ Gamma(q, gamma) per customer."""

    p: float
    q: float
    gamma: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def bgnbd_log_likelihood(params: BgNbd, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> ArrayLike:
    """Each customer's log-likelihood of (x, t_x, T) under the BG/NBD model."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    x = np.asarray(x, dtype=float)
    a1 = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
    a2 = special.gammaln(a + b) + special.gammaln(b + x) - special.gammaln(b) - special.gammaln(a + b + x)
    a3 = -(r + x) * np.log(alpha + np.asarray(T, dtype=float))
    repeat = x > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        a4 = np.log(a) - np.log(np.where(repeat, b + x - 1, 1.0)) - (r + x) * np.log(alpha + np.asarray(t_x, float))
    tail = np.where(repeat, np.logaddexp(a3, a4), a3)
    return a1 + a2 + tail


def gamma_gamma_log_likelihood(params: GammaGamma, x: ArrayLike, m: ArrayLike) -> ArrayLike:
    """Each customer's log-likelihood of an average spend `m` over `x` orders (x >= 1)."""
    p, q, gamma = params.p, params.q, params.gamma
    x = np.asarray(x, dtype=float)
    m = np.asarray(m, dtype=float)
    return (
        special.gammaln(p * x + q)
        - special.gammaln(p * x)
        - special.gammaln(q)
        + q * np.log(gamma)
        + (p * x - 1) * np.log(m)
        + p * x * np.log(x)
        - (p * x + q) * np.log(gamma + m * x)
    )


def _fit(negative_log_likelihood: Callable[[ArrayLike], float], start: ArrayLike) -> ArrayLike:
    """Minimise over log parameters (so they stay positive); the fitted parameters."""
    result = optimize.minimize(
        negative_log_likelihood,
        np.log(start),
        method="Nelder-Mead",
        options={"maxiter": 4000, "xatol": 1e-6, "fatol": 1e-8},
    )
    if not result.success:
        raise RuntimeError(f"the fit did not converge: {result.message}")
    return np.exp(result.x)


def fit_bgnbd(x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> BgNbd:
    """Maximum-likelihood BG/NBD parameters for customers with `x` repeat orders, recency `t_x`, age `T`."""
    x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
    if len(x) == 0:
        raise ValueError("no customers to fit BG/NBD on")
    scale = float(np.mean(T)) or 1.0

    def nll(log_params: ArrayLike) -> float:
        r, alpha, a, b = np.exp(log_params)
        return -float(np.sum(bgnbd_log_likelihood(BgNbd(r, alpha * scale, a, b), x, t_x, T))) / len(x)

    r, alpha, a, b = _fit(nll, np.array([1.0, 1.0, 1.0, 1.0]))
    return BgNbd(r=float(r), alpha=float(alpha * scale), a=float(a), b=float(b))


def fit_gamma_gamma(x: ArrayLike, m: ArrayLike) -> GammaGamma:
    """Maximum-likelihood Gamma-Gamma parameters from customers' order counts `x` (>= 1) and mean spend `m`."""
    x, m = np.asarray(x, dtype=float), np.asarray(m, dtype=float)
    keep = (x >= 1) & (m > 0)
    x, m = x[keep], m[keep]
    if len(x) == 0:
        raise ValueError("no customers with orders and spend to fit Gamma-Gamma on")
    scale = float(np.mean(m))

    def nll(log_params: ArrayLike) -> float:
        p, q, gamma = np.exp(log_params)
        return -float(np.sum(gamma_gamma_log_likelihood(GammaGamma(p, q, gamma * scale), x, m))) / len(x)

    p, q, gamma = _fit(nll, np.array([1.0, 2.0, 1.0]))
    return GammaGamma(p=float(p), q=float(q), gamma=float(gamma * scale))


def p_alive(params: BgNbd, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> ArrayLike:
    """P(still a customer | x, t_x, T): 1 for x = 0 under BG/NBD (dropout happens only after a repeat order)."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    x = np.asarray(x, dtype=float)
    repeat = x > 0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        odds = (a / np.where(repeat, b + x - 1, 1.0)) * np.exp(
            (r + x) * (np.log(alpha + np.asarray(T, float)) - np.log(alpha + np.asarray(t_x, float)))
        )
    return np.where(repeat, 1.0 / (1.0 + odds), 1.0)


def expected_orders(params: BgNbd, t: float, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> ArrayLike:
    """Expected orders in the next `t` days given (x, t_x, T) (the published formula; a = 1 exactly is its pole)."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    if abs(a - 1) < 1e-9:
        raise ValueError("BG/NBD a = 1: the conditional expectation's closed form has a pole there")
    x, T = np.asarray(x, dtype=float), np.asarray(T, dtype=float)
    z = t / (alpha + T + t)
    hyper = special.hyp2f1(r + x, b + x, a + b + x - 1, z)
    head = (a + b + x - 1) / (a - 1)
    body = 1.0 - np.exp((r + x) * (np.log(alpha + T) - np.log(alpha + T + t))) * hyper
    return head * body * p_alive(params, x, t_x, T)


def expected_spend(params: GammaGamma, x: ArrayLike, m: ArrayLike) -> ArrayLike:
    """Expected spend per future order: the population mean shrunk toward each customer's own `m`."""
    p, q, gamma = params.p, params.q, params.gamma
    x, m = np.asarray(x, dtype=float), np.asarray(m, dtype=float)
    population_mean = gamma * p / (q - 1) if q > 1 else float("nan")
    weight = p * x / (p * x + q - 1)
    return np.where(x > 0, (1 - weight) * population_mean + weight * m, population_mean)


def simulate_bgnbd(params: BgNbd, ages: ArrayLike, seed: int) -> tuple[ArrayLike, ArrayLike]:
    """(x, t_x) for customers observed `ages` days after their first order, drawn from the BG/NBD process."""
    rng = np.random.default_rng(seed)
    ages = np.asarray(ages, dtype=float)
    rates = rng.gamma(params.r, 1.0 / params.alpha, size=len(ages))
    drop = rng.beta(params.a, params.b, size=len(ages))
    x = np.zeros(len(ages))
    t_x = np.zeros(len(ages))
    for i, (age, rate, p) in enumerate(zip(ages, rates, drop, strict=True)):
        now = 0.0
        while True:
            now += rng.exponential(1.0 / rate)
            if now > age:
                break
            x[i] += 1
            t_x[i] = now
            if rng.random() < p:
                break
    return x, t_x


# ------------------------------------------------------------------------------------- the model pair
ORDERS_HORIZON_DAYS = 90  # expected_orders_90d
VALUE_HORIZON_DAYS = 365  # expected_value_12m (undiscounted)
CLV_COLUMNS: tuple[str, ...] = ("p_alive", "expected_orders_90d", "expected_value_12m")


@dataclass(frozen=True)
class ClvModel:
    """The fitted pair a model version stores and scores every customer with."""

    orders: BgNbd
    spend: GammaGamma

    def as_map(self) -> dict[str, float]:
        """The parameters as the `models` table's `clv_params` map."""
        return {**self.orders.as_dict(), **self.spend.as_dict()}

    @classmethod
    def from_map(cls, params: dict[str, float] | None) -> ClvModel | None:
        """Parse `clv_params`; None for a version trained without it (or whose fit failed)."""
        if not params:
            return None
        return cls(
            BgNbd(params["r"], params["alpha"], params["a"], params["b"]),
            GammaGamma(params["p"], params["q"], params["gamma"]),
        )


def fit_clv(orders: ArrayLike, t_x: ArrayLike, T: ArrayLike, order_value: ArrayLike) -> ClvModel:
    """Both models from customers' total orders, days between first and last order, age, average order value."""
    orders = np.asarray(orders, dtype=float)
    return ClvModel(fit_bgnbd(orders - 1, t_x, T), fit_gamma_gamma(orders, order_value))


def clv_scores(
    model: ClvModel, orders: ArrayLike, t_x: ArrayLike, T: ArrayLike, order_value: ArrayLike
) -> dict[str, ArrayLike]:
    """P(alive), expected orders in the next 90 days and expected spend in the next 12 months, per customer."""
    orders = np.asarray(orders, dtype=float)
    x = np.maximum(orders - 1, 0.0)
    spend = expected_spend(model.spend, orders, order_value)
    return {
        "p_alive": p_alive(model.orders, x, t_x, T),
        "expected_orders_90d": expected_orders(model.orders, ORDERS_HORIZON_DAYS, x, t_x, T),
        "expected_value_12m": expected_orders(model.orders, VALUE_HORIZON_DAYS, x, t_x, T) * spend,
    }


# ------------------------------------------------------------------------------------------ Spark edge
def clv_inputs() -> dict[str, Column]:
    """The model inputs of featurised customers (batch/features.py): orders, t_x and T in days, and the
    average order value."""
    span = F.greatest(F.datediff(F.col("last_order_date"), F.col("first_order_date")), F.lit(0))
    return {
        "orders": F.col("frequency").cast("double"),
        "t_x": F.least(span, F.col("tenure")).cast("double"),
        "T": F.col("tenure").cast("double"),
        "order_value": F.col("avg_order_value").cast("double"),
    }


CLV_INPUTS = ("orders", "t_x", "T", "order_value")
_SCORES = T.StructType([T.StructField(name, T.DoubleType()) for name in CLV_COLUMNS])


def with_clv(features_df: DataFrame, model: ClvModel | None) -> DataFrame:
    """P(alive), expected orders (90 days) and expected value (12 months) per customer, in one vectorised
    UDF (the expected orders need scipy's hyp2f1); null for a model version without CLV parameters."""
    if model is None:
        return features_df.select("*", *[F.lit(None).cast("double").alias(c) for c in CLV_COLUMNS])

    def scores(inputs: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(clv_scores(model, *(inputs[c].to_numpy() for c in CLV_INPUTS)))

    udf = F.pandas_udf(scores, _SCORES)  # type: ignore[call-overload]
    packed = F.struct(*[column.alias(name) for name, column in clv_inputs().items()])
    scored = features_df.withColumn("_clv", udf(packed))
    return scored.select(*features_df.columns, *[F.col("_clv")[c].alias(c) for c in CLV_COLUMNS])
