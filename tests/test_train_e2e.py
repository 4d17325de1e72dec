"""End to end on generated data: train → tables → rescore → retrain from the lake → query, via the CLI too."""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import logging
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.ml import PipelineModel
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from batch.clv import CLV_COLUMNS, ClvModel, clv_scores
from batch.generate import write_history_csv
from batch.lake import read_table
from batch.migrations import RETRAIN_BATCH_ID
from batch.query import run_query
from batch.rescore import run_rescore
from batch.train import guard_streamed_state, run_train, streamed_into
from flo_seg import cli
from flo_seg.settings import LakeSettings, TrainSettings
from schemas.history import HISTORY_COLUMN_NAMES

CUSTOMERS = 1500
BAD_ROWS = [
    ",Android App,Offline,2020-10-30,2021-02-26,2021-02-21,2021-02-26,4.0,1.0,139.99,799.38,[KADIN]",
    "bad-1,Android App,Offline,2020-10-30,yesterday,2021-02-21,2021-02-26,4.0,1.0,139.99,799.38,[KADIN]",
    "bad-2,Fax,Offline,2020-10-30,2021-02-26,2021-02-21,2021-02-26,4.0,1.0,139.99,799.38,[KADIN]",
    "bad-3,Android App,Offline,2020-10-30,2021-02-26,2021-02-21,2021-02-26,4.0,1.0,-5,799.38,[KADIN]",
]
# One quarantine row each: BAD_ROWS and the duplicate the history fixture appends.
QUARANTINED = ("bad_date", "bad_number", "duplicate_master_id", "missing_master_id", "unknown_channel")


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("history") / "history.csv"
    write_history_csv(path, customers=CUSTOMERS, seed=3)
    lines = path.read_text().splitlines()
    duplicate = lines[1]  # the first customer again, with an older last order: quarantined as duplicate
    fields = duplicate.split(",")
    fields[4] = "2013-01-15"
    fields[3] = "2013-01-14"
    fields[5:7] = ["2013-01-15" if d else d for d in fields[5:7]]  # channel dates within first..last
    with path.open("a") as out:
        out.write("\n".join([*BAD_ROWS, ",".join(fields)]) + "\n")
    return path


@pytest.fixture(scope="module")
def lake(spark: SparkSession, history: Path, tmp_path_factory: pytest.TempPathFactory) -> LakeSettings:
    lake = LakeSettings(root=str(tmp_path_factory.mktemp("lake")))
    summary = run_train(spark, lake, TrainSettings(k_min=2, k_max=4, seed=7, sample=5000), history_path=str(history))
    assert (summary.rows_read, summary.rows_kept) == (CUSTOMERS + 5, CUSTOMERS)
    assert summary.quarantined == dict.fromkeys(QUARANTINED, 1)
    return lake


def test_state_and_quarantine(spark: SparkSession, lake: LakeSettings, history: Path) -> None:
    state = read_table(spark, lake, "customer_state")
    assert state.count() == CUSTOMERS
    assert state.select("master_id").distinct().count() == CUSTOMERS
    assert state.where(F.col("first_order_date") == dt.date(2013, 1, 14)).count() == 0  # the duplicate lost
    quarantine = read_table(spark, lake, "quarantine").collect()
    assert sorted(r["reason"] for r in quarantine) == list(QUARANTINED)
    bad2 = next(r for r in quarantine if r["reason"] == "unknown_channel")
    assert json.loads(bad2["raw_record"])["order_channel"] == "Fax"
    assert bad2["source"] == f"history:{history}"


def test_segments_models_profiles_and_campaigns(spark: SparkSession, lake: LakeSettings) -> None:
    models = read_table(spark, lake, "models").collect()
    assert len(models) == 1 and models[0]["is_current"]
    model = models[0]
    assert [c["k"] for c in model["k_selection"]] == [2, 3, 4]
    assert model["k"] == max(model["k_selection"], key=lambda c: c["silhouette"])["k"]
    assert len(model["r_edges"]) == len(model["f_edges"]) == len(model["m_edges"]) == 4
    assert model["as_of"] == read_table(spark, lake, "customer_state").agg(F.max("last_order_date")).first()[
        0
    ] + dt.timedelta(days=2)  # type: ignore[index]
    assert PipelineModel.load(model["artifact_path"]) is not None

    segments = read_table(spark, lake, "customer_segments")
    assert segments.count() == CUSTOMERS
    assert {r[0] for r in segments.select("segment").distinct().collect()} == set(model["segment_names"].values())
    bounds = segments.agg(
        *[F.min(c) for c in ("r_score", "f_score", "m_score")],
        *[F.max(c) for c in ("r_score", "f_score", "m_score")],
    ).first()
    assert tuple(bounds) == (1, 1, 1, 5, 5, 5)  # type: ignore[arg-type]
    assert segments.where(F.col("model_version") != model["model_version"]).count() == 0

    # Lifetime value: the stored parameters score every customer with the closed forms.
    clv = ClvModel.from_map(model["clv_params"])
    assert clv is not None and set(model["clv_params"]) == {"r", "alpha", "a", "b", "p", "q", "gamma"}
    scored = segments.select("master_id", "frequency", "tenure", "monetary", *CLV_COLUMNS).toPandas()
    state = read_table(spark, lake, "customer_state").toPandas().set_index("master_id")
    scored = scored.join(state[["first_order_date", "last_order_date"]], on="master_id")
    t_x = (pd.to_datetime(scored["last_order_date"]) - pd.to_datetime(scored["first_order_date"])).dt.days
    expected = clv_scores(
        clv,
        scored["frequency"].to_numpy(float),
        t_x.to_numpy(float),
        scored["tenure"].to_numpy(float),
        (scored["monetary"] / scored["frequency"]).to_numpy(float),
    )
    for column in CLV_COLUMNS:
        assert np.allclose(scored[column].to_numpy(float), expected[column], rtol=1e-9), column
    assert scored["p_alive"].between(0, 1).all() and (scored["expected_value_12m"] > 0).all()

    profiles = read_table(spark, lake, "segment_profiles").collect()
    assert sum(p["expected_value_12m_total"] for p in profiles) == pytest.approx(scored["expected_value_12m"].sum())
    assert sum(p["customers"] for p in profiles) == CUSTOMERS
    assert sum(p["share"] for p in profiles) == pytest.approx(1.0)
    for p in profiles:
        assert sum(p["channel_mix"].values()) == pytest.approx(1.0)
        assert sum(p["rfm_mix"].values()) == pytest.approx(1.0)
        assert p["action"].startswith(p["action_offer"]) and p["action_channel"] in p["action"]

    targets = read_table(spark, lake, "campaign_targets")
    women = targets.where(F.col("campaign") == "new_womens_shoe_brand")
    assert women.count() > 0
    assert women.where(~F.array_contains("interested_in_categories_12", "KADIN")).count() == 0
    assert women.where(~F.col("rfm_segment").isin("loyal_customers", "champions")).count() == 0
    expected_women = segments.where(F.col("rfm_segment").isin("loyal_customers", "champions")).join(
        read_table(spark, lake, "customer_state").where(F.array_contains("interested_in_categories_12", "KADIN")),
        "master_id",
    )
    assert women.count() == expected_women.count()
    exported = spark.read.option("header", True).csv(lake.exports_dir)
    assert exported.count() == targets.count()


@pytest.mark.slow
def test_report_on_the_trained_lake(spark: SparkSession, lake: LakeSettings, history: Path, tmp_path: Path) -> None:
    """The whole report from the lake as train left it: every plot (k chosen, so the k-selection curve too),
    the tables it quotes equal to the lake's, self-contained HTML."""
    from test_report import DATA_URI, PNG_SIGNATURE

    from batch.report import run_report

    out = tmp_path / "out"
    paths = run_report(spark, lake, str(out))

    plot_paths = sorted((out / "plots").glob("*.png"))
    assert paths[:2] == [str(out / "report.html"), str(out / "report.md")]
    assert sorted(paths[2:]) == [str(p) for p in plot_paths]
    assert all(Path(p).is_file() and Path(p).stat().st_size > 0 for p in paths)
    assert [p.stem for p in plot_paths] == sorted(
        [
            "channel_spend",
            "segment_sizes",
            "distributions",
            "projection",
            "channel_mix",
            "lifetime_value",
            "rfm_crosstab",
            "k_selection",
        ]
    )
    page = (out / "report.html").read_text(encoding="utf-8")
    markdown = (out / "report.md").read_text(encoding="utf-8")
    model = read_table(spark, lake, "models").collect()[0]
    assert f"k = {model['k']} was chosen" in markdown
    # Lifetime value per segment: its expected values add up to the customers'.
    segments = read_table(spark, lake, "customer_segments")
    total = segments.agg(F.sum("expected_value_12m")).collect()[0][0]
    assert "## 10. Lifetime value and churn risk" in markdown and "mean P(alive)" in markdown
    value_section = markdown.split("## 10.")[1].split("## 11.")[0]
    segment_totals = re.findall(r"\| ([\d,]+\.\d\d) \|\n", value_section)
    assert len(segment_totals) == model["k"]
    assert sum(float(v.replace(",", "")) for v in segment_totals) == pytest.approx(total, abs=0.02)

    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == len(plot_paths) == page.count(DATA_URI)
    assert all(base64.b64decode(image).startswith(PNG_SIGNATURE) for image in images)
    assert not re.search(r"https?://", page, re.IGNORECASE)
    # The exploratory section counts BAD_ROWS' blank id, unreadable date and unknown channel, and every row.
    assert "| master_id | 1 | 0 |" in markdown
    assert "| last_order_date | 0 | 1 |" in markdown
    assert "| order_channel | 0 | 1 |" in markdown
    assert f"{CUSTOMERS + 5:,} rows read, {CUSTOMERS:,} customers kept." in markdown

    names = {r["segment"] for r in segments.select("segment").distinct().collect()}
    assert len(names) == model["k"]
    for name in names:
        assert html.escape(name) in page

    source = f"history:{history}"
    quarantine = read_table(spark, lake, "quarantine").groupBy("source", "reason").count().collect()
    assert {(r["source"], r["reason"], r["count"]) for r in quarantine} == {(source, r, 1) for r in QUARANTINED}
    for reason in QUARANTINED:
        cells = rf"<tr><td>{reason}</td><td[^>]*>{re.escape(html.escape(source))}</td><td class=num>1</td></tr>"
        assert re.search(cells, page)
        assert f"| {reason} | {source} | 1 |" in markdown

    profile_rows = read_table(spark, lake, "segment_profiles").collect()
    assert {r["segment"] for r in profile_rows} == names
    for row in profile_rows:
        line = next(ln for ln in markdown.splitlines() if ln.startswith(f"| {row['segment']} | {row['customers']:,} |"))
        assert line.endswith(f"| {row['action']} |")


def test_rescore_ages_recency(spark: SparkSession, lake: LakeSettings) -> None:
    before = {r["master_id"]: r for r in read_table(spark, lake, "customer_segments").collect()}
    as_of = next(iter(before.values()))["as_of"] + dt.timedelta(days=30)
    run_rescore(spark, lake, as_of=as_of)
    after = {r["master_id"]: r for r in read_table(spark, lake, "customer_segments").collect()}
    assert after.keys() == before.keys()
    assert all(after[m]["recency"] == before[m]["recency"] + 30 for m in before)
    assert all(after[m]["tenure"] == before[m]["tenure"] + 30 for m in before)
    assert {r["as_of"] for r in after.values()} == {as_of}
    # Older orders can only push R scores down with the edges fixed at training time.
    assert all(after[m]["r_score"] <= before[m]["r_score"] for m in before)


def test_query_formats(spark: SparkSession, lake: LakeSettings, capsys: pytest.CaptureFixture[str]) -> None:
    n = run_query(spark, lake, "SELECT count(*) AS n FROM customer_state", fmt="json", limit=10)
    assert n == 1
    assert json.loads(capsys.readouterr().out) == {"n": CUSTOMERS}
    run_query(spark, lake, "SELECT reason FROM quarantine ORDER BY reason", fmt="csv", limit=2)
    assert capsys.readouterr().out.splitlines() == ["reason", "bad_date", "bad_number"]


def test_cli_refuses_a_file_without_required_columns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(",".join(HISTORY_COLUMN_NAMES[:-2]) + "\nx\n")
    lake = tmp_path / "lake"
    code = cli.main(["--lake", str(lake), "train", "--history", str(bad)])
    assert code == 2
    err = capsys.readouterr().err
    assert "lacks required column(s) customer_value_total_ever_online, interested_in_categories_12" in err
    assert not lake.exists()


def test_cli_help_for_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    for command in cli.COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            cli.main([command, "--help"])
        assert exit_info.value.code == 0
        assert f"usage: flo-seg {command}" in capsys.readouterr().out


def _stream_one_order(spark: SparkSession, lake: LakeSettings, master_id: str) -> None:
    """One order through the stream's own state step and into state_log, as a `flo-seg stream` batch does."""
    from streaming.customer_state import apply_customer_state, as_customer_state, bootstrap_state, order_inputs
    from streaming.events import parse_order_events, valid_orders
    from streaming.job import append_log, prepare_tables

    prepare_tables(spark, lake)  # as the stream does when it starts: it creates its logs

    event = {
        "event_id": "streamed-1",
        "master_id": master_id,
        "order_ts": "2021-06-01T10:15:00+03:00",
        "channel": "Offline",
        "amount": 10.5,
        "schema_version": 1,
    }
    kafka = spark.createDataFrame(
        [(master_id.encode(), json.dumps(event).encode(), "orders", 0, 0)],
        "key binary, value binary, topic string, partition int, offset long",
    )
    orders = order_inputs(valid_orders(parse_order_events(kafka)))
    out = apply_customer_state(orders, bootstrap_state(read_table(spark, lake, "customer_state")))
    append_log(as_customer_state(out), lake, "state_log", "stream", "test-app", 0)


def test_train_from_history_refuses_to_discard_what_the_stream_added(
    spark: SparkSession,
    trained_lake: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """On a copy of the shared lake trained from its history. The `--from-lake` retrain is the CLI's on a
    terminal, choosing k, so it shows the bar of the k candidates too, and it keeps the first version loadable."""
    from test_cli import _Terminal

    shutil.copytree(trained_lake, tmp_path / "lake")
    lake = LakeSettings(root=str(tmp_path / "lake"))
    history = trained_lake.parent / "history.csv"  # what tests/streaming_support.py trained it on
    customers = read_table(spark, lake, "customer_state").count()
    assert customers == 600
    first = read_table(spark, lake, "models").collect()[0]
    assert streamed_into(spark, lake) is None  # a train's own writes are not the stream's: a retrain may go on
    guard_streamed_state(spark, lake, str(history), replace_state=False)
    new_customer = "streamed-new-customer"
    _stream_one_order(spark, lake, new_customer)
    streamed_count = read_table(spark, lake, "customer_state").count()

    code = cli.main(["--lake", lake.root, "train", "--history", str(history), "--k", "3"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "holds orders the stream added (1 stream state update(s) in state_log)" in err and "--from-lake" in err
    assert "\n" not in err and "--replace-state" in err
    assert read_table(spark, lake, "customer_state").count() == streamed_count == customers  # logged, not compacted

    terminal = _Terminal()
    with monkeypatch.context() as patched, caplog.at_level(logging.INFO, logger="batch"):
        patched.setattr(sys, "stderr", terminal)
        code = cli.main(["--lake", lake.root, "train", "--from-lake", "--k-min", "2", "--k-max", "4"])
    assert code == 0, terminal.getvalue()[-2000:]
    # The k candidates as a bar, each candidate's line kept above it.
    assert re.search(r"choosing k: 100%\|.*\| 3/3 ", terminal.getvalue()), terminal.getvalue()[-500:]
    tried = [re.match(r"k= *(\d+) +silhouette=", r.getMessage()) for r in caplog.records]
    assert [int(m[1]) for m in tried if m] == [2, 3, 4]
    state = read_table(spark, lake, "customer_state")  # --from-lake compacts, keeps the streamed order
    assert state.count() == customers + 1
    assert state.where(F.col("master_id") == new_customer).first()["state_seq"] == 1  # type: ignore[index]
    assert read_table(spark, lake, "customer_segments").where(F.col("master_id") == new_customer).count() == 1
    # A new current version; the first stays in the registry, loadable, with its profiles.
    models = {r["model_version"]: r for r in read_table(spark, lake, "models").collect()}
    assert len(models) == 2 and first["model_version"] in models
    retrained = next(m for v, m in models.items() if v != first["model_version"])
    assert retrained["is_current"] and not models[first["model_version"]]["is_current"]
    assert [c["k"] for c in retrained["k_selection"]] == [2, 3, 4]
    assert PipelineModel.load(first["artifact_path"]) is not None
    segments = read_table(spark, lake, "customer_segments")
    assert {r[0] for r in segments.select("model_version").distinct().collect()} == {retrained["model_version"]}
    versions = {r[0] for r in read_table(spark, lake, "segment_profiles").select("model_version").distinct().collect()}
    assert versions == {first["model_version"], retrained["model_version"]}
    # The retrain records whom it moved (batch_id -1): each customer whose segment differs from before it.
    trained_segments = read_table(spark, LakeSettings(root=str(trained_lake)), "customer_segments").collect()
    before = {r["master_id"]: r["segment"] for r in trained_segments}
    moved = {
        r["master_id"]: (before[r["master_id"]], r["segment"]) for r in segments.collect() if r["master_id"] in before
    }
    recorded = read_table(spark, lake, "segment_changes").where(F.col("batch_id") == RETRAIN_BATCH_ID).collect()
    assert {r["model_version"] for r in recorded} == {retrained["model_version"]}
    changed = {m: move for m, move in moved.items() if move[0] != move[1]}
    assert changed  # k 2..4 chosen against the lake's fixed k: some customers move
    assert {
        r["master_id"]: (r["previous_segment"], r["segment"]) for r in recorded if r["master_id"] in before
    } == changed

    summary = run_train(spark, lake, TrainSettings(k=3, seed=1), history_path=str(history), replace_state=True)
    assert read_table(spark, lake, "customer_state").where(F.col("master_id") == new_customer).count() == 0
    models = {r["model_version"]: r for r in read_table(spark, lake, "models").collect()}
    assert models[summary.model_version]["k"] == 3 and models[summary.model_version]["k_selection"] == []  # k given


def test_cli_refuses_a_lake_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    not_a_lake = tmp_path / "lake.txt"
    not_a_lake.write_text("hello\n")
    for command in (["query", "SELECT 1"], ["train", "--from-lake"], ["rescore"], ["stream"]):
        assert cli.main(["--lake", str(not_a_lake), *command]) == 2
        err = capsys.readouterr().err.strip()
        assert (
            err
            == f"flo-seg {command[0]}: error: lake {not_a_lake} is a file, not a folder; pass --lake DIR (or set FLO_LAKE)"
        )
    assert not_a_lake.read_text() == "hello\n"


def test_cli_train_on_a_hostile_file_quarantines_and_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from test_validate import HEADER, hostile_lines

    path = tmp_path / "hostile.csv"
    path.write_text(HEADER + "\n" + "\n".join(hostile_lines()) + "\n")
    assert cli.main(["--lake", str(tmp_path / "lake"), "train", "--history", str(path), "--k", "2"]) == 0
    out = capsys.readouterr().out
    assert "rows read 18, kept 5, quarantined 13" in out
    assert "quarantined date_out_of_range: 2" in out and "quarantined oversized_field: 1" in out
