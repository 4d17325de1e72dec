"""The exploratory profile `train` records: column checks, mixes, caps, distributions, correlations."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from test_validate import GOOD, write_csv

from batch.explore import (
    COLUMNS,
    CORRELATED,
    CORRELATIONS,
    DISTRIBUTIONS,
    MIX,
    OUTLIERS,
    as_date,
    column_checks,
    correlations,
    distributions,
    mix_and_outliers,
)
from batch.features import with_customer_features
from batch.load import read_history
from batch.report import Table, exploration_section
from batch.train import state_from_history
from batch.validate import validate_history

LINES = [
    GOOD.format(id="a", cats="[KADIN]"),
    GOOD.format(id="b", cats='"[KADIN, ERKEK]"'),
    "c,Ios App,Ios App,2021-01-10,2021-05-01,2021-05-01,,3.0,0.0,0.0,450.0,[COCUK]",
    # a missing first order date, an unreadable last order date, an unknown channel, a text count
    "d,Android App,Offline,,2021-02-26,2021-02-21,2021-02-26,4.0,1.0,139.99,799.38,[KADIN]",
    "e,Android App,Offline,2020-10-30,2021-99-26,2021-02-21,2021-02-26,4.0,1.0,139.99,799.38,[KADIN]",
    "f,Fax,Offline,2020-10-30,2021-02-26,2021-02-21,2021-02-26,4.0,1.0,139.99,799.38,[KADIN]",
    "g,Android App,Offline,2020-10-30,2021-02-26,2021-02-21,2021-02-26,many,1.0,139.99,799.38,[KADIN]",
]


@pytest.fixture(scope="module")
def validated(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> object:
    path = write_csv(Path(tmp_path_factory.mktemp("explore")), LINES)
    return validate_history(read_history(spark, path), latest_date=dt.date(2021, 6, 1)).cache()


def by_key(stats: list[tuple[str, str, str, float]]) -> dict[tuple[str, str, str], float]:
    return {(section, item, statistic): value for section, item, statistic, value in stats}


def test_column_checks_count_missing_and_unreadable_values(validated: object) -> None:
    got = by_key(column_checks(validated))  # type: ignore[arg-type]
    assert got[(COLUMNS, "rows", "read")] == 7
    assert got[(COLUMNS, "rows", "kept")] == 3
    assert got[(COLUMNS, "first_order_date", "missing")] == 1
    assert got[(COLUMNS, "first_order_date", "invalid")] == 0
    assert got[(COLUMNS, "last_order_date", "invalid")] == 1
    assert got[(COLUMNS, "order_channel", "invalid")] == 1
    assert got[(COLUMNS, "order_num_total_ever_online", "invalid")] == 1
    # c has no offline orders, so no last offline order date: missing, as the FLO data allows.
    assert got[(COLUMNS, "last_order_date_offline", "missing")] == 1
    assert got[(COLUMNS, "master_id", "missing")] == 0


def test_mix_and_outliers_of_the_kept_customers(validated: object) -> None:
    features = with_customer_features(state_from_history(validated), F.lit(dt.date(2021, 6, 1)))  # type: ignore[arg-type]
    # a, b: 5 orders, 939.37 spent; c: 3 orders, 450 spent.
    caps = {"recency": 1000.0, "frequency": 4.0, "monetary": 500.0, "tenure": 1000.0}
    got = by_key(mix_and_outliers(features, caps))
    assert got[(MIX, "order_channel=Android App", "customers")] == 2
    assert got[(MIX, "last_order_channel=Ios App", "customers")] == 1
    assert got[(MIX, "category=KADIN", "customers")] == 2
    assert got[(MIX, "category=ERKEK", "customers")] == 1
    assert got[(OUTLIERS, "frequency", "customers_above_cap")] == 2
    assert got[(OUTLIERS, "frequency", "mean_excess")] == pytest.approx(1.0)
    assert got[(OUTLIERS, "monetary", "customers_above_cap")] == 2
    assert got[(OUTLIERS, "monetary", "mean_excess")] == pytest.approx(439.37)
    assert got[(OUTLIERS, "monetary", "max")] == pytest.approx(939.37)
    assert got[(OUTLIERS, "recency", "customers_above_cap")] == 0
    assert got[(OUTLIERS, "recency", "cap")] == 1000.0


def test_distributions_hold_raw_quantiles_and_dates(validated: object) -> None:
    features = with_customer_features(state_from_history(validated), F.lit(dt.date(2021, 6, 1)))  # type: ignore[arg-type]
    got = by_key(distributions(features))
    assert got[(DISTRIBUTIONS, "order_num_total_ever_online", "max")] == 4.0
    assert got[(DISTRIBUTIONS, "order_num_total_ever_offline", "min")] == 0.0
    assert as_date(got[(DISTRIBUTIONS, "first_order_date", "min")]) == dt.date(2020, 10, 30)
    assert as_date(got[(DISTRIBUTIONS, "last_order_date", "max")]) == dt.date(2021, 5, 1)


def test_correlations_are_pearsons_upper_triangle() -> None:
    sample = pd.DataFrame({name: [1.0, 2.0, 3.0, 4.0] for name in CORRELATED})
    sample["recency"] = [4.0, 3.0, 2.0, 1.0]
    got = by_key(correlations(sample))
    assert len(got) == len(CORRELATED) * (len(CORRELATED) - 1) // 2
    assert got[(CORRELATIONS, "recency~frequency", "pearson")] == pytest.approx(-1.0)
    assert got[(CORRELATIONS, "frequency~monetary", "pearson")] == pytest.approx(1.0)


def test_the_report_section_shows_the_profile() -> None:
    stats = [
        (COLUMNS, "rows", "read", 7.0),
        (COLUMNS, "rows", "kept", 3.0),
        (COLUMNS, "first_order_date", "missing", 1.0),
        (COLUMNS, "first_order_date", "invalid", 0.0),
        (MIX, "last_order_channel=Offline", "customers", 2.0),
        (MIX, "last_order_channel=Ios App", "customers", 1.0),
        (CORRELATIONS, "recency~frequency", "pearson", -0.5),
        (OUTLIERS, "monetary", "cap", 500.0),
        (OUTLIERS, "monetary", "customers_above_cap", 2.0),
        (OUTLIERS, "monetary", "mean_excess", 439.37),
        (OUTLIERS, "monetary", "max", 939.37),
    ]
    profile = pd.DataFrame(stats, columns=["section", "item", "statistic", "value"])
    tables = [b.frame for b in exploration_section(profile).blocks if isinstance(b, Table)]
    checks, _distributions, mix, matrix, outliers = tables
    assert checks.to_dict("list") == {"column": ["first_order_date"], "missing": [1], "invalid": [0]}
    assert mix.to_dict("list") == {
        "of": ["last_order_channel", "last_order_channel"],
        "value": ["Offline", "Ios App"],
        "customers": [2, 1],
        "share": ["66.7%", "33.3%"],
    }
    assert matrix.to_dict("list") == {
        "feature": ["recency", "frequency"],
        "recency": ["+1.00", "-0.50"],
        "frequency": ["-0.50", "+1.00"],
    }
    assert outliers.to_dict("records") == [
        {
            "feature": "monetary",
            "cap": "500",
            "customers above": 2,
            "share": "66.7%",
            "mean excess": "439.37",
            "max": "939.37",
        }
    ]


def test_a_model_without_a_profile_says_so() -> None:
    section = exploration_section(pd.DataFrame(columns=["section", "item", "statistic", "value"]))
    assert section.blocks == ("not recorded: this model version was trained before `train` profiled its data.",)
