"""BG/NBD and Gamma-Gamma: the fit recovers known parameters, and the closed forms behave as published."""

from __future__ import annotations

import numpy as np
import pytest

from batch.clv import (
    BgNbd,
    GammaGamma,
    bgnbd_log_likelihood,
    expected_orders,
    expected_spend,
    fit_bgnbd,
    fit_gamma_gamma,
    gamma_gamma_log_likelihood,
    p_alive,
    simulate_bgnbd,
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


def test_expected_orders_match_a_simulation_of_the_next_days() -> None:
    # Customers observed 300 days: their expected orders over the next 90 from the formula, averaged, against
    # the mean orders of simulated customers in days 300..390 (two independent samples of 50,000: within 4
    # standard errors of their difference).
    n = 50_000
    x_390, _ = simulate_bgnbd(TRUE_BGNBD, np.full(n, 390.0), seed=11)
    x_300, t_300 = simulate_bgnbd(TRUE_BGNBD, np.full(n, 300.0), seed=12)
    predicted = expected_orders(TRUE_BGNBD, 90, x_300, t_300, np.full(n, 300.0)).mean()
    observed = x_390.mean() - x_300.mean()
    standard_error = np.sqrt(x_390.var() / n + x_300.var() / n)
    assert observed > 0.1
    assert abs(predicted - observed) < 4 * standard_error, (predicted, observed, standard_error)


def test_expected_spend_shrinks_each_customer_toward_the_population_mean() -> None:
    spend = expected_spend(TRUE_GG, np.array([0.0, 1.0, 20.0]), np.array([0.0, 400.0, 400.0]))
    assert spend[0] == pytest.approx(120.0)
    assert 120.0 < spend[1] < spend[2] < 400.0
