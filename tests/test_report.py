"""The report: table, PCA and rendering helpers on tiny data (the whole report on a trained lake: test_train_e2e)."""

from __future__ import annotations

import datetime as dt
import html
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import SparkSession

from batch.model import KCandidate
from batch.registry import ModelRecord
from batch.report import (
    Plot,
    ReportData,
    Section,
    Table,
    box_stats,
    build_sections,
    channel_mix_frame,
    distributions_figure,
    figure_png,
    format_cell,
    html_table,
    k_selection_figure,
    k_selection_section,
    markdown_table,
    pca_2d,
    render_html,
    render_markdown,
    rfm_crosstab,
    run_report,
    segment_sizes,
)
from batch.rfm import RfmEdges
from flo_seg.settings import LakeSettings

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DATA_URI = "data:image/png;base64,"


# ----------------------------------------------------------------------------------- tiny inputs
def model_record(*, k_selection: tuple[KCandidate, ...] = ()) -> ModelRecord:
    return ModelRecord(
        version="v1",
        artifact_path="/nowhere",
        algorithm="kmeans",
        k=2,
        silhouette=0.41 if k_selection else None,
        k_selection=k_selection,
        features=("recency", "frequency", "monetary", "tenure", "online_share"),
        caps={},
        edges=RfmEdges(recency=(), frequency=(), monetary=()),
        segment_names={0: "loyal", 1: "lapsing"},
        training_rows=30,
        seed=1,
        as_of=dt.date(2021, 6, 1),
        trained_at=dt.datetime(2021, 6, 2, 12, 0, 0),
    )


def distributions() -> pd.DataFrame:
    rows = []
    for segment, customers, scale in (("loyal", 10, 1.0), ("lapsing", 20, 3.0)):
        for metric in ("recency", "frequency", "monetary", "tenure"):
            q = [scale * v for v in (1.0, 2.0, 3.0, 4.0, 5.0)]
            rows.append(
                {
                    "segment": segment,
                    "metric": metric,
                    "customers": customers,
                    **dict(zip(("q05", "q25", "q50", "q75", "q95"), q, strict=True)),
                }
            )
    return pd.DataFrame(rows)


def profiles() -> pd.DataFrame:
    base = {
        "recency_median": 20.0,
        "frequency_median": 5.0,
        "monetary_median": 812.5,
        "tenure_median": 400.0,
        "online_share_mean": 0.25,
        "top_categories": ["KADIN", "ERKEK"],
    }
    return pd.DataFrame(
        [
            {
                **base,
                "segment": "lapsing",
                "customers": 20,
                "share": 2 / 3,
                "action": "win back <now>",
                "channel_mix": {"Offline": 0.75, "Android App": 0.25},
            },
            {
                **base,
                "segment": "loyal",
                "customers": 10,
                "share": 1 / 3,
                "action": "perks & points",
                "channel_mix": {"Mobile": 1.0},
            },
        ]
    )


def report_data(*, k_selection: tuple[KCandidate, ...] = ()) -> ReportData:
    rng = np.random.default_rng(0)
    return ReportData(
        record=model_record(k_selection=k_selection),
        customers=31,
        as_of=dt.date(2021, 6, 1),
        version_rows=pd.DataFrame({"model_version": ["v1"], "customers": [30], "as_of": [dt.date(2021, 6, 1)]}),
        quarantine=pd.DataFrame({"source": ['history:<b>"odd" & co</b>.csv'], "reason": ["bad_date"], "count": [1]}),
        distributions=distributions(),
        crosstab_counts=pd.DataFrame(
            {
                "rfm_segment": ["champions", "hibernating", "hibernating"],
                "segment": ["loyal", "lapsing", "loyal"],
                "count": [9, 20, 1],
            }
        ),
        profiles=profiles(),
        campaigns=pd.DataFrame({"campaign": ["new_womens_shoe_brand"], "customers": [6]}),
        sample_features=rng.normal(size=(30, 5)),
        sample_segments=tuple(["loyal"] * 10 + ["lapsing"] * 20),
    )


# ------------------------------------------------------------------------------------ pure tests
def test_format_cell_formats_numbers_dates_lists_and_missing_values() -> None:
    assert format_cell(None) == ""
    assert format_cell(math.nan) == ""
    assert format_cell(1234567) == "1,234,567"
    assert format_cell(np.int64(42)) == "42"
    assert format_cell(1048.824) == "1,048.82"
    assert format_cell(True) == "yes"
    assert format_cell(dt.date(2021, 6, 1)) == "2021-06-01"
    assert format_cell(dt.datetime(2021, 6, 1, 8, 30, 5, 999)) == "2021-06-01 08:30:05"
    assert format_cell(["KADIN", "ERKEK"]) == "KADIN, ERKEK"


def test_markdown_table_aligns_numbers_and_escapes_pipes() -> None:
    frame = pd.DataFrame(
        {
            "segment": ["a|b", "line\nbreak"],
            "customers": [1234, 5],
            "share": ["34.8%", "5.0%"],
            "note": ["x<y", None],
        }
    )
    assert markdown_table(frame) == (
        "| segment | customers | share | note |\n"
        "| --- | ---: | ---: | --- |\n"
        "| a\\|b | 1,234 | 34.8% | x&lt;y |\n"
        "| line break | 5 | 5.0% |  |"
    )


def test_html_table_escapes_every_cell_and_header() -> None:
    frame = pd.DataFrame({"<th>": ["<script>alert('x')</script>", "fish & chips"], "n": [1, 2000]})
    out = html_table(frame)
    assert "<script>" not in out and "<th><th>" not in out
    assert "<th>&lt;th&gt;</th>" in out
    assert "<td>&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;</td>" in out
    assert "<td>fish &amp; chips</td>" in out
    assert "<td class=num>2,000</td>" in out


def test_pca_recovers_the_known_principal_direction() -> None:
    # Points on the line through the origin along (1, 1)/√2: one component carries all the variance.
    matrix = np.array([[1.0, 1.0], [-1.0, -1.0], [2.0, 2.0], [-2.0, -2.0]])
    projection = pca_2d(matrix)
    np.testing.assert_allclose(projection.components[0], [math.sqrt(0.5), math.sqrt(0.5)], atol=1e-12)
    np.testing.assert_allclose(projection.explained, [1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(projection.coords[:, 0], np.array([1, -1, 2, -2]) * math.sqrt(2), atol=1e-12)
    np.testing.assert_allclose(projection.coords[:, 1], 0.0, atol=1e-12)


def test_pca_on_noisy_3d_data_orders_components_by_variance_and_centres() -> None:
    rng = np.random.default_rng(3)
    t = rng.normal(scale=5.0, size=400)
    direction, second = np.array([0.6, 0.8, 0.0]), np.array([0.0, 0.0, 1.0])
    matrix = np.outer(t, direction) + np.outer(rng.normal(scale=1.0, size=400), second) + [10.0, -3.0, 7.0]
    projection = pca_2d(matrix)
    assert abs(projection.components[0] @ direction) > 0.999
    assert abs(projection.components[1] @ second) > 0.99
    assert projection.components[0].max() > 0  # sign fixed: the largest loading is positive
    assert projection.explained[0] > 0.9 > projection.explained[1] > 0.0
    np.testing.assert_allclose(projection.coords.mean(axis=0), 0.0, atol=1e-9)


def test_pca_rejects_an_empty_matrix() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        pca_2d(np.zeros((0, 5)))


def test_segment_sizes_and_crosstab_follow_the_model_order_with_zeros() -> None:
    data = report_data()
    sizes = segment_sizes(data.distributions, ["loyal", "lapsing", "empty"])
    assert sizes.to_dict("list") == {
        "segment": ["loyal", "lapsing", "empty"],
        "customers": [10, 20, 0],
        "share": [1 / 3, 2 / 3, 0.0],
    }
    crosstab = rfm_crosstab(data.crosstab_counts, ["loyal", "lapsing"])
    assert list(crosstab.columns) == ["loyal", "lapsing"]
    assert crosstab.index[0] == "hibernating" and crosstab.index[-1] == "champions"  # the notebooks' order
    assert crosstab.to_dict("index")["hibernating"] == {"loyal": 1, "lapsing": 20}
    assert crosstab.to_dict("index")["champions"] == {"loyal": 9, "lapsing": 0}
    assert int(crosstab.to_numpy().sum()) == 30


def test_box_stats_and_channel_mix_come_from_the_collected_frames() -> None:
    stats = box_stats(distributions(), "monetary", ["lapsing", "loyal"])
    assert [s["label"] for s in stats] == ["lapsing", "loyal"]
    assert stats[0] | {"fliers": None} == {
        "label": "lapsing",
        "whislo": 3.0,
        "q1": 6.0,
        "med": 9.0,
        "q3": 12.0,
        "whishi": 15.0,
        "fliers": None,
    }
    mix = channel_mix_frame(profiles(), ["loyal", "lapsing"])
    assert list(mix.index) == ["loyal", "lapsing"]
    assert mix.at["lapsing", "Offline"] == 0.75 and mix.at["lapsing", "Mobile"] == 0.0
    assert sum(mix.to_dict("index")["loyal"].values()) == pytest.approx(1.0)


def test_plots_are_pngs_with_log_scales_for_heavy_tails_and_the_chosen_k_marked() -> None:
    figure = distributions_figure(distributions(), ["loyal", "lapsing"], {"loyal": "#1f77b4", "lapsing": "#ff7f0e"})
    scales = {ax.get_title().split(" ")[0]: ax.get_yscale() for ax in figure.axes}
    assert scales == {"recency": "linear", "frequency": "log", "monetary": "log", "tenure": "linear"}
    k_table = pd.DataFrame({"k": [2, 3, 4], "silhouette": [0.3, 0.5, 0.4], "cost": [90.0, 60.0, 50.0]})
    k_figure = k_selection_figure(k_table, chosen_k=3)
    assert any(t.get_text() == "chosen k = 3" for t in k_figure.axes[0].texts)
    assert figure_png(k_figure).startswith(PNG_SIGNATURE)


def test_a_forced_k_is_reported_instead_of_plotted() -> None:
    section = k_selection_section(model_record())
    assert section.blocks == ("k was fixed at 2 when training (--k), so no k-selection curve was computed.",)
    chosen = k_selection_section(model_record(k_selection=(KCandidate(k=2, silhouette=0.41, cost=9.0),)))
    assert [type(b) for b in chosen.blocks] == [str, Plot, Table]


def test_the_k_table_says_why_a_k_was_refused() -> None:
    candidates = (
        KCandidate(k=2, silhouette=0.41, cost=9.0, calinski_harabasz=1234.0, min_share=0.2),
        KCandidate(k=3, silhouette=0.5, cost=7.0, calinski_harabasz=1500.0, min_share=0.01, refused="too small"),
    )
    section = k_selection_section(model_record(k_selection=candidates))
    table = section.blocks[2]
    assert isinstance(table, Table)
    assert table.frame.to_dict("list") == {
        "k": [2, 3],
        "silhouette": ["0.4100", "0.5000"],
        "cost": ["9.00", "7.00"],
        "Calinski-Harabasz": ["1,234", "1,500"],
        "smallest segment": ["20.0%", "1.0%"],
        "verdict": ["chosen", "too small"],
    }


def test_rendered_report_is_self_contained_escaped_and_matches_the_markdown() -> None:
    sections = build_sections(report_data())
    assert [s.title for s in sections][:4] == [
        "Data summary",
        "Exploratory analysis of the history",
        "Quarantine by reason",
        "k selection",
    ]
    assert len(sections) == 13
    page = render_html(sections, "subtitle <&>")
    markdown = render_markdown(sections, "subtitle")
    plots = [b for s in sections for b in s.blocks if isinstance(b, Plot)]
    assert [p.name for p in plots] == [
        "segment_sizes",
        "distributions",
        "projection",
        "channel_mix",
        "rfm_crosstab",
    ]
    assert page.count(DATA_URI) == len(plots)
    assert not re.search(r"https?://|<script|<link", page, re.IGNORECASE)
    assert "subtitle &lt;&amp;&gt;" in page
    assert "history:&lt;b&gt;&quot;odd&quot; &amp; co&lt;/b&gt;.csv" in page and "<b>" not in page
    assert "<td>win back &lt;now&gt;</td>" in page and "<td>perks &amp; points</td>" in page
    for plot in plots:
        assert f"![{plot.caption}](plots/{plot.name}.png)" in markdown
    for i, section in enumerate(sections, start=1):
        assert f"## {i}. {section.title}" in markdown
        assert f"<h2>{i}. {html.escape(section.title)}</h2>" in page
    assert "| loyal | 10 | 33.3% | 20 | 5 | 812.50 | 400 | 25.0% | KADIN, ERKEK | perks & points |" in markdown
    rule = "RFM segment in loyal_customers, champions; interested in KADIN"
    assert f"| new_womens_shoe_brand | {rule} | 6 | 20.0% |" in markdown


def test_rendering_a_text_only_section() -> None:
    sections = [Section(title="Only text", blocks=("a < b",))]
    assert "<p>a &lt; b</p>" in render_html(sections, "s")
    assert render_markdown(sections, "s").endswith("## 1. Only text\n\na < b\n")


# ------------------------------------------------------------------------------ lake end to end
# The whole report on a trained lake: tests/test_train_e2e.py (test_report_on_the_trained_lake).


def test_report_without_a_trained_lake_says_to_train(spark: SparkSession, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="flo-seg train"):
        run_report(spark, LakeSettings(root=str(tmp_path / "empty")), str(tmp_path / "out"))
