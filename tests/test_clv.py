"""BG/NBD and Gamma-Gamma: the fit recovers known parameters, and the closed forms behave as published."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import SparkSession

from batch.clv import (
    CLV_COLUMNS,
    BgNbd,
    ClvModel,
    GammaGamma,
    bgnbd_log_likelihood,
    clv_scores,
    expected_orders,
    expected_spend,
    fit_bgnbd,
    fit_gamma_gamma,
    gamma_gamma_log_likelihood,
    p_alive,
    simulate_bgnbd,
    with_clv,
)

TRUE_BGNBD = BgNbd(r=0.8, alpha=40.0, a=1.6, b=6.0)  # about FLO's scale: days, a few orders a year
TRUE_GG = GammaGamma(p=6.0, q=4.0, gamma=60.0)  # mean spend per order 120


def test_the_bgnbd_fit_recovers_the_parameters_it_was_drawn_from() -> None:
    ages = np.random.default_rng(1).uniform(60, 900, 10_000)
    x, t_x = simulate_bgnbd(TRUE_BGNBD, ages, seed=7)
    fitted = fit_bgnbd(x, t_x, ages)
    for name, true in TRUE_BGNBD.as_dict().items():  # tolerance: 15% of each parameter at 10,000 customers
        assert fitted.as_dict()[name] == pytest.approx(true, rel=0.15), (name, fitted)
    # The maximum: the fitted parameters explain the sample at least as well as the true ones.
    assert bgnbd_log_likelihood(fitted, x, t_x, ages).sum() >= bgnbd_log_likelihood(TRUE_BGNBD, x, t_x, ages).sum()


def test_the_gamma_gamma_fit_recovers_the_mean_spend_and_q() -> None:
    rng = np.random.default_rng(3)
    nu = rng.gamma(TRUE_GG.q, 1 / TRUE_GG.gamma, 20_000)
    orders = rng.integers(1, 10, 20_000)
    m = np.array([rng.gamma(TRUE_GG.p, 1 / n, k).mean() for n, k in zip(nu, orders, strict=True)])
    fitted = fit_gamma_gamma(orders, m)
    # p and gamma trade off against each other (a wide ridge of the likelihood); their mean does not.
    assert fitted.gamma * fitted.p / (fitted.q - 1) == pytest.approx(120.0, rel=0.05)
    assert fitted.q == pytest.approx(TRUE_GG.q, rel=0.15)
    assert fitted.p == pytest.approx(TRUE_GG.p, rel=0.3) and fitted.gamma == pytest.approx(TRUE_GG.gamma, rel=0.3)
    assert gamma_gamma_log_likelihood(fitted, orders, m).sum() >= gamma_gamma_log_likelihood(TRUE_GG, orders, m).sum()


def test_p_alive_is_one_without_repeat_orders_and_falls_with_time_since_the_last() -> None:
    x = np.array([0.0, 3.0, 3.0, 3.0])
    t_x = np.array([0.0, 100.0, 100.0, 100.0])
    T = np.array([300.0, 110.0, 300.0, 900.0])
    alive = p_alive(TRUE_BGNBD, x, t_x, T)
    assert alive[0] == 1.0
    assert 1.0 > alive[1] > alive[2] > alive[3] > 0.0


def test_expected_orders_grow_with_the_horizon_and_the_past_orders() -> None:
    x = np.array([1.0, 5.0, 10.0])
    t_x = np.array([150.0, 150.0, 150.0])
    T = np.array([160.0, 160.0, 160.0])
    in_90 = expected_orders(TRUE_BGNBD, 90, x, t_x, T)
    in_365 = expected_orders(TRUE_BGNBD, 365, x, t_x, T)
    assert np.all(in_365 > in_90) and np.all(np.diff(in_90) > 0)
    # A new customer (x = 0, T = 0) expects what the population does: r/alpha per day at first.
    tiny = expected_orders(TRUE_BGNBD, 1.0, np.array([0.0]), np.array([0.0]), np.array([0.0]))[0]
    assert tiny == pytest.approx(TRUE_BGNBD.r / TRUE_BGNBD.alpha, rel=0.05)


@pytest.mark.parametrize(
    "params",
    [TRUE_BGNBD, BgNbd(r=0.3, alpha=60.0, a=0.24, b=0.9)],  # a > 1, and a < 1 as on the real data
)
def test_expected_orders_match_a_simulation_of_the_next_days(params: BgNbd) -> None:
    # Customers observed 300 days: their expected orders over the next 90 from the formula, averaged, against
    # the mean orders of simulated customers in days 300..390 (two independent samples of 50,000: within 4
    # standard errors of their difference).
    n = 50_000
    x_390, _ = simulate_bgnbd(params, np.full(n, 390.0), seed=11)
    x_300, t_300 = simulate_bgnbd(params, np.full(n, 300.0), seed=12)
    predicted = expected_orders(params, 90, x_300, t_300, np.full(n, 300.0)).mean()
    observed = x_390.mean() - x_300.mean()
    standard_error = np.sqrt(x_390.var() / n + x_300.var() / n)
    assert observed > 0.1
    assert abs(predicted - observed) < 4 * standard_error, (predicted, observed, standard_error)


def test_expected_spend_shrinks_each_customer_toward_the_population_mean() -> None:
    spend = expected_spend(TRUE_GG, np.array([0.0, 1.0, 20.0]), np.array([0.0, 400.0, 400.0]))
    assert spend[0] == pytest.approx(120.0)
    assert 120.0 < spend[1] < spend[2] < 400.0


def test_on_the_real_data_champions_are_likelier_alive_and_value_rises_with_past_spend(real_data_path: Path) -> None:
    from test_rfm import pandas_reference

    history = pd.read_csv(real_data_path, parse_dates=["first_order_date", "last_order_date"])
    rfm = pandas_reference(real_data_path).set_index("master_id")
    as_of = history["last_order_date"].max() + pd.Timedelta(days=2)
    frame = history.set_index("master_id").join(rfm[["frequency", "monetary", "m_score", "rfm_segment"]])
    x = frame["frequency"].to_numpy() - 1
    t_x = (frame["last_order_date"] - frame["first_order_date"]).dt.days.to_numpy(dtype=float)
    age = (as_of - frame["first_order_date"]).dt.days.to_numpy(dtype=float)
    spend = (frame["monetary"] / frame["frequency"]).to_numpy()
    sample = np.random.default_rng(42).choice(len(frame), 10_000, replace=False)  # fitted on a seeded sample
    orders_model = fit_bgnbd(x[sample], t_x[sample], age[sample])
    spend_model = fit_gamma_gamma(frame["frequency"].to_numpy()[sample], spend[sample])
    frame["p_alive"] = p_alive(orders_model, x, t_x, age)
    frame["value_12m"] = expected_orders(orders_model, 365, x, t_x, age) * expected_spend(
        spend_model, frame["frequency"].to_numpy(), spend
    )
    alive = frame.groupby("rfm_segment")["p_alive"].mean()
    # The order holds, by little: the FLO snapshot holds customers who ordered within about a year, so the
    # fit finds almost no dropout (a / (a + b) about 0.0002 on 2026-12-06) and P(alive) is 0.994-0.9998
    # in every RFM segment; churn risk from BG/NBD alone says little on this data (see the session note).
    assert alive["champions"] > alive["hibernating"], alive.to_dict()
    by_past_spend = frame.groupby("m_score")["value_12m"].mean()
    assert list(by_past_spend.index) == [1, 2, 3, 4, 5]
    assert by_past_spend.is_monotonic_increasing, by_past_spend.to_dict()
    assert frame["p_alive"].between(0, 1).all() and (frame["value_12m"] >= 0).all()


FITTED = ClvModel(BgNbd(r=2.7, alpha=500.0, a=0.24, b=1300.0), GammaGamma(p=4.0, q=9.0, gamma=300.0))


def test_the_parameters_round_trip_through_the_models_table_map() -> None:
    assert ClvModel.from_map(FITTED.as_map()) == FITTED
    assert ClvModel.from_map(None) is None and ClvModel.from_map({}) is None


def test_spark_scores_every_customer_with_the_closed_forms(spark: SparkSession) -> None:
    # Featurised customers (batch/features.py): total orders, first and last order, age and order value.
    rows = [
        ("a", 2, dt.date(2020, 1, 1), dt.date(2020, 3, 1), 500, 80.0),
        ("b", 12, dt.date(2019, 1, 1), dt.date(2021, 5, 1), 880, 150.0),
        ("c", 12, dt.date(2019, 1, 1), dt.date(2019, 3, 1), 880, 150.0),  # same orders, long silent since
        ("d", 1, dt.date(2021, 5, 20), dt.date(2021, 5, 20), 12, 40.0),
    ]
    frame = spark.createDataFrame(
        rows,
        "master_id string, frequency long, first_order_date date, last_order_date date, tenure int, "
        "avg_order_value double",
    )
    got = {r["master_id"]: r for r in with_clv(frame, FITTED).collect()}
    orders = np.array([r[1] for r in rows], dtype=float)
    t_x = np.array([(r[3] - r[2]).days for r in rows], dtype=float)
    ages = np.array([r[4] for r in rows], dtype=float)
    expected = clv_scores(FITTED, orders, t_x, ages, np.array([r[5] for r in rows]))
    for i, (master_id, *_) in enumerate(rows):
        for column in CLV_COLUMNS:
            assert got[master_id][column] == pytest.approx(expected[column][i], rel=1e-9), (master_id, column)
    assert got["b"]["p_alive"] > got["c"]["p_alive"]  # a long silence after many orders: likelier gone
    assert got["d"]["p_alive"] == 1.0  # no repeat order yet: BG/NBD cannot have seen a dropout
    assert got["b"]["expected_value_12m"] > got["a"]["expected_value_12m"] > 0
    assert set(got["a"].asDict()) == {*frame.columns, *CLV_COLUMNS}


def test_a_model_version_without_clv_scores_nulls(spark: SparkSession) -> None:
    frame = spark.createDataFrame([("a", 2)], "master_id string, frequency long")
    row = with_clv(frame, None).first()
    assert row is not None and all(row[c] is None for c in CLV_COLUMNS)
