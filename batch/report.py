"""`flo-seg report`: a self-contained HTML page and a Markdown file on the current model and its segments.

Spark does a handful of small aggregations and collects one seeded sample; everything else (tables,
plots, PCA, rendering) is plain pandas / numpy / matplotlib on the driver, testable without Spark.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import logging
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullFormatter, PercentFormatter, StrMethodFormatter
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from batch.explore import (
    COLUMNS,
    CORRELATIONS,
    DATE_COLUMNS,
    DISTRIBUTION_COLUMNS,
    DISTRIBUTIONS,
    MIX,
    OUTLIERS,
    QUANTILE_NAMES,
    as_date,
)
from batch.features import with_customer_features
from batch.lake import read_table, table_exists
from batch.migrations import COLUMNS as MIGRATION_COLUMNS
from batch.migrations import NEW, matrix_cells, migration_sql, read_migrations_spark
from batch.model import PREDICTION, SCALED, SILHOUETTE_TOLERANCE, score_clusters
from batch.registry import ModelRecord
from batch.rfm import RFM_SEGMENTS
from batch.score import ScoringModel, load_current_model
from batch.segments import CAMPAIGNS
from batch.train import sample_customers
from flo_seg.settings import LakeSettings
from schemas.history import CHANNELS
from schemas.tables import (
    CAMPAIGN_TARGETS,
    CUSTOMER_SEGMENTS,
    CUSTOMER_STATE,
    DATA_PROFILE,
    MODELS,
    QUARANTINE,
    SEGMENT_CHANGES,
    SEGMENT_PROFILES,
)

log = logging.getLogger(__name__)

REPORT_TABLES: tuple[str, ...] = (
    MODELS,
    CUSTOMER_STATE,
    CUSTOMER_SEGMENTS,
    SEGMENT_PROFILES,
    QUARANTINE,
    CAMPAIGN_TARGETS,
)
TITLE = "FLO customer segmentation report"
PROJECTION_SAMPLE = 5_000
DISTRIBUTION_METRICS: tuple[str, ...] = ("recency", "frequency", "monetary", "tenure")
# Counts and spend are heavy-tailed (a few customers order hundreds of times); days are not.
LOG_SCALE_METRICS: frozenset[str] = frozenset({"frequency", "monetary"})
METRIC_UNITS = {
    "recency": "days since last order",
    "frequency": "orders",
    "monetary": "total spend (TRY)",
    "tenure": "days since first order",
}
QUANTILES: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)
QUANTILE_COLUMNS: tuple[str, ...] = ("q05", "q25", "q50", "q75", "q95")
_NUMBER_TEXT = re.compile(r"^[-+]?(\d{1,3}(,\d{3})*|\d+)(\.\d+)?%?$")


# ------------------------------------------------------------------------------------- report model
@dataclass(frozen=True)
class Table:
    """A table block; cells are rendered with `format_cell`, so builders pre-format domain values."""

    frame: pd.DataFrame


@dataclass(frozen=True)
class Plot:
    """A figure block: saved as `plots/<name>.png` beside the Markdown, embedded in the HTML."""

    name: str
    caption: str
    png: bytes


Block = str | Table | Plot


@dataclass(frozen=True, kw_only=True)
class Section:
    """One numbered report section, rendered the same way to HTML and Markdown."""

    title: str
    blocks: tuple[Block, ...]


@dataclass(frozen=True, kw_only=True)
class ReportData:
    """Everything the report shows, collected from the lake once so the rest runs without Spark."""

    record: ModelRecord
    customers: int
    as_of: dt.date
    version_rows: pd.DataFrame  # model_version, customers, as_of over all of customer_segments
    quarantine: pd.DataFrame  # source, reason, count
    distributions: pd.DataFrame  # segment, metric, customers, q05 .. q95 (approximate)
    crosstab_counts: pd.DataFrame  # rfm_segment, segment, count
    profiles: pd.DataFrame  # segment_profiles rows of the current model version
    campaigns: pd.DataFrame  # campaign, customers
    sample_features: np.ndarray  # scaled feature vectors of the projection sample, one row per customer
    sample_segments: tuple[str, ...]
    data_profile: pd.DataFrame = field(default_factory=pd.DataFrame)  # section, item, statistic, value
    migrations: pd.DataFrame = field(default_factory=pd.DataFrame)  # batch.migrations.COLUMNS, one period


@dataclass(frozen=True)
class Projection:
    """A 2-D PCA projection: coordinates, unit component vectors and their share of the variance."""

    coords: np.ndarray
    components: np.ndarray
    explained: np.ndarray


# ----------------------------------------------------------------------------------- pure helpers
def format_cell(value: object) -> str:
    """One table cell as text: thousands separators, two decimals, lists joined, missing as blank."""
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else f"{float(value):,.2f}"
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat(sep=" ", timespec="seconds") if isinstance(value, dt.datetime) else value.isoformat()
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(format_cell(v) for v in value)
    return str(value)


def percent(share: float | None, digits: int = 1) -> str:
    """A share as a percentage string, blank when unknown."""
    return "" if share is None or math.isnan(share) else f"{share:.{digits}%}"


def is_numeric_column(series: pd.Series) -> bool:
    """Right-align numbers, including pre-formatted ones like `1,234` or `34.8%`."""
    if pd.api.types.is_bool_dtype(series):
        return False
    if pd.api.types.is_numeric_dtype(series):
        return True
    cells = [format_cell(v) for v in series]
    return any(cells) and all(_NUMBER_TEXT.match(c) for c in cells if c)


def _markdown_cell(value: object) -> str:
    """A cell that cannot break the table row or be read as inline HTML."""
    text = format_cell(value).replace("\r", " ").replace("\n", " ")
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table; numeric columns right-aligned, pipes escaped."""
    header = "| " + " | ".join(_markdown_cell(c) for c in frame.columns) + " |"
    rule = "| " + " | ".join("---:" if is_numeric_column(frame[c]) else "---" for c in frame.columns) + " |"
    rows = ["| " + " | ".join(_markdown_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def _html_cell(text: str, is_numeric: bool) -> str:
    """An escaped cell; sentences (actions, rules) get a minimum width so wide tables scroll, not squeeze."""
    css = "num" if is_numeric else "long" if len(text) > 60 else ""
    return f"<td{f' class={css}' if css else ''}>{html.escape(text)}</td>"


def html_table(frame: pd.DataFrame) -> str:
    """An HTML table with every cell escaped; numeric columns get the `num` class."""
    numeric = [is_numeric_column(frame[c]) for c in frame.columns]
    head = "".join(
        f"<th{' class=num' if n else ''}>{html.escape(str(c))}</th>"
        for c, n in zip(frame.columns, numeric, strict=True)
    )
    body = "".join(
        "<tr>" + "".join(_html_cell(format_cell(v), n) for v, n in zip(row, numeric, strict=True)) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def pca_2d(matrix: np.ndarray) -> Projection:
    """PCA by SVD on the driver: a small sample does not need a Spark job."""
    x = np.asarray(matrix, dtype=float)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"PCA needs a non-empty 2-D matrix, got shape {x.shape}")
    centred = x - x.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    # SVD signs are arbitrary: make each component's largest loading positive so reruns plot alike.
    signs = np.sign(vt[np.arange(vt.shape[0]), np.abs(vt).argmax(axis=1)])
    vt = vt * np.where(signs == 0, 1.0, signs)[:, None]
    variance = singular**2
    total = float(variance.sum())
    explained = variance / total if total > 0 else np.zeros_like(variance)
    components = np.zeros((2, x.shape[1]))
    shares = np.zeros(2)
    kept = min(2, vt.shape[0])
    components[:kept], shares[:kept] = vt[:kept], explained[:kept]
    return Projection(coords=centred @ components.T, components=components, explained=shares)


def segment_order(names: Mapping[int, str], present: Sequence[str] = ()) -> list[str]:
    """Segments by cluster id (the model's own order), then any unexpected names found in the data."""
    ordered = [names[c] for c in sorted(names)]
    return ordered + sorted({s for s in present if s not in ordered})


def segment_colors(order: Sequence[str]) -> dict[str, str]:
    """One stable colour per segment, shared by every plot."""
    cmap = colormaps["tab10" if len(order) <= 10 else "tab20"]
    return {name: to_hex(cmap(i % cmap.N)) for i, name in enumerate(order)}


def quantile_frame(aggregated: pd.DataFrame) -> pd.DataFrame:
    """Spark's per-segment quantile arrays as long rows: segment, metric, customers, q05 .. q95."""
    rows = []
    for rec in aggregated.to_dict("records"):
        for metric in DISTRIBUTION_METRICS:
            values = [float(v) for v in rec[metric]]
            rows.append(
                {
                    "segment": rec["segment"],
                    "metric": metric,
                    "customers": int(rec["customers"]),
                    **dict(zip(QUANTILE_COLUMNS, values, strict=True)),
                }
            )
    return pd.DataFrame(rows, columns=["segment", "metric", "customers", *QUANTILE_COLUMNS])


def segment_sizes(distributions: pd.DataFrame, order: Sequence[str]) -> pd.DataFrame:
    """Customers and share per segment, in segment order, zero for segments without customers."""
    counts = distributions.drop_duplicates("segment").set_index("segment")["customers"]
    customers = [int(counts.get(s, 0)) for s in order]
    total = sum(customers)
    return pd.DataFrame(
        {
            "segment": list(order),
            "customers": customers,
            "share": [c / total if total else 0.0 for c in customers],
        }
    )


def rfm_crosstab(counts: pd.DataFrame, order: Sequence[str]) -> pd.DataFrame:
    """Customers per classic RFM segment (rows, notebook order) and model segment (columns)."""
    rows = list(RFM_SEGMENTS) + sorted(set(counts["rfm_segment"]) - set(RFM_SEGMENTS))
    table = counts.pivot_table(index="rfm_segment", columns="segment", values="count", aggfunc="sum", fill_value=0)
    return table.reindex(index=rows, columns=list(order), fill_value=0).astype("int64")


def figure_png(fig: Figure) -> bytes:
    """PNG bytes without the Software metadata, so files carry no URL and depend only on the data."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------ plots
def k_selection_figure(k_table: pd.DataFrame, chosen_k: int) -> Figure:
    """Silhouette (left axis) and cost (right axis) against k, the chosen k marked."""
    fig = Figure(figsize=(8, 4.2), layout="constrained")
    ax = fig.add_subplot()
    lines = ax.plot(k_table["k"], k_table["silhouette"], marker="o", color="C0", label="silhouette (higher is better)")
    ax.set_xlabel("k (number of segments)")
    ax.set_ylabel("silhouette", color="C0")
    ax.set_xticks(list(k_table["k"]))
    cost = pd.to_numeric(k_table["cost"], errors="coerce")
    if cost.notna().any():
        ax2 = ax.twinx()
        lines += ax2.plot(k_table["k"], cost, marker="s", linestyle="--", color="C1", label="cost (within-cluster)")
        ax2.set_ylabel("cost", color="C1")
    ax.axvline(chosen_k, color="0.4", linestyle=":", linewidth=1.5)
    chosen = k_table.loc[k_table["k"] == chosen_k, "silhouette"]
    if not chosen.empty:
        y = float(chosen.iloc[0])
        ax.plot([chosen_k], [y], marker="o", markersize=13, markerfacecolor="none", color="C0")
        ax.annotate(
            f"chosen k = {chosen_k}",
            (chosen_k, y),
            xytext=(12, -18),
            textcoords="offset points",
            fontweight="bold",
        )
    ax.legend(lines, [str(line.get_label()) for line in lines], loc="upper right", frameon=False)
    ax.set_title("Choosing k by silhouette")
    ax.grid(alpha=0.3)
    return fig


def labelled_bars(
    segments: Sequence[str],
    values: Sequence[float],
    labels: Sequence[str],
    colors: Mapping[str, str],
    *,
    xlabel: str,
    title: str,
    headroom: float,
) -> Figure:
    """Horizontal bars, one per segment from the top down, each labelled at its end."""
    fig = Figure(figsize=(8, 0.6 * len(segments) + 1.4), layout="constrained")
    ax = fig.add_subplot()
    names = list(segments)[::-1]
    ax.barh(names, list(values)[::-1], color=[colors[s] for s in names])
    for y, (value, label) in enumerate(zip(list(values)[::-1], list(labels)[::-1], strict=True)):
        ax.text(value, y, f"  {label}", va="center")
    ax.set_xlim(0, max([*values, 1]) * headroom)
    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def segment_sizes_figure(sizes: pd.DataFrame, colors: Mapping[str, str]) -> Figure:
    """Horizontal bars of customers per segment, labelled with count and share."""
    labels = [f"{value:,} ({share:.1%})" for value, share in zip(sizes["customers"], sizes["share"], strict=True)]
    return labelled_bars(
        list(sizes["segment"]),
        list(sizes["customers"]),
        labels,
        colors,
        xlabel="customers",
        title="Segment sizes",
        headroom=1.3,
    )


def box_stats(distributions: pd.DataFrame, metric: str, order: Sequence[str]) -> list[dict[str, Any]]:
    """matplotlib `bxp` inputs from precomputed quantiles: box 25–75 %, whiskers 5–95 %."""
    rows = distributions[distributions["metric"] == metric].set_index("segment")
    return [
        {
            "label": s,
            "whislo": rows.at[s, "q05"],
            "q1": rows.at[s, "q25"],
            "med": rows.at[s, "q50"],
            "q3": rows.at[s, "q75"],
            "whishi": rows.at[s, "q95"],
            "fliers": [],
        }
        for s in order
        if s in rows.index
    ]


def distributions_figure(distributions: pd.DataFrame, order: Sequence[str], colors: Mapping[str, str]) -> Figure:
    """Box plots of recency, frequency, monetary and tenure per segment, log scale for the heavy tails."""
    fig = Figure(figsize=(11, 8), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True)
    for ax, metric in zip(axes.flat, DISTRIBUTION_METRICS, strict=True):
        stats = box_stats(distributions, metric, order)
        if not stats:
            continue
        boxes = ax.bxp(stats, patch_artist=True, showfliers=False, medianprops={"color": "black"})
        for patch, s in zip(boxes["boxes"], stats, strict=True):
            patch.set_facecolor(colors[s["label"]])
            patch.set_alpha(0.75)
        if metric in LOG_SCALE_METRICS:
            is_positive = all(s["whislo"] > 0 for s in stats)
            ax.set_yscale("log" if is_positive else "symlog")
            # Plain numbers at 1-2-5 steps read better than 2×10^1 on axes spanning one or two decades.
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"{metric} ({'log scale' if metric in LOG_SCALE_METRICS else 'linear'})")
        ax.set_ylabel(METRIC_UNITS[metric])
        ax.grid(axis="y", alpha=0.3)
        ax.tick_params(axis="x", labelrotation=25)
    fig.suptitle("Distributions per segment (box: 25th–75th percentile, whiskers: 5th–95th)")
    return fig


def projection_figure(projection: Projection, segments: Sequence[str], colors: Mapping[str, str]) -> Figure:
    """Scatter of the sample on the first two principal components, coloured by segment."""
    fig = Figure(figsize=(9, 6.5), layout="constrained")
    ax = fig.add_subplot()
    labels = np.asarray(segments)
    marker_size = max(4.0, min(20.0, 30_000 / max(len(labels), 1)))  # bigger dots when there are few
    for name in colors:
        mask = labels == name
        if mask.any():
            ax.scatter(
                projection.coords[mask, 0],
                projection.coords[mask, 1],
                s=marker_size,
                alpha=0.45,
                color=colors[name],
                label=f"{name} ({int(mask.sum()):,})",
                linewidths=0,
            )
    ax.set_xlabel(f"PC1 ({projection.explained[0]:.0%} of variance)")
    ax.set_ylabel(f"PC2 ({projection.explained[1]:.0%} of variance)")
    ax.set_title(f"Customers on the first two principal components of the scaled features (n = {len(labels):,})")
    ax.legend(markerscale=3, frameon=False, loc="best")
    ax.grid(alpha=0.3)
    return fig


def channel_mix_frame(profiles: pd.DataFrame, order: Sequence[str]) -> pd.DataFrame:
    """Share of each segment's customers by last-order channel (rows: segments, columns: channels)."""
    mixes = {p["segment"]: dict(p["channel_mix"] or {}) for p in profiles.to_dict("records")}
    extra = sorted({c for mix in mixes.values() for c in mix} - set(CHANNELS))
    columns = [*CHANNELS, *extra]
    return pd.DataFrame(
        [[float(mixes[s].get(c) or 0.0) for c in columns] for s in order if s in mixes],
        index=[s for s in order if s in mixes],
        columns=columns,
    )


def channel_mix_figure(mix: pd.DataFrame) -> Figure:
    """Stacked horizontal bars: where each segment placed its last order."""
    fig = Figure(figsize=(9, 0.6 * len(mix) + 1.8), layout="constrained")
    ax = fig.add_subplot()
    cmap = colormaps["Set2"]
    labels = list(mix.index)[::-1]
    left = np.zeros(len(labels))
    for i, channel in enumerate(mix.columns):
        values = mix.loc[labels, channel].to_numpy(dtype=float)
        ax.barh(labels, values, left=left, color=cmap(i % cmap.N), label=channel)
        for y, (x0, v) in enumerate(zip(left, values, strict=True)):
            if v >= 0.06:
                ax.text(x0 + v / 2, y, f"{v:.0%}", ha="center", va="center", fontsize=8)
        left += values
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_xlabel("share of the segment's customers by last-order channel")
    ax.legend(ncols=len(mix.columns), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    return fig


def crosstab_figure(crosstab: pd.DataFrame) -> Figure:
    """Heatmap of the RFM × segment crosstab: colour is the share of the segment, numbers are customers."""
    counts = crosstab.to_numpy(dtype=float)
    totals = counts.sum(axis=0)
    shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    fig = Figure(figsize=(2.5 + 1.5 * crosstab.shape[1], 0.45 * crosstab.shape[0] + 1.8), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=max(float(shares.max()), 1e-9), aspect="auto")
    ax.set_xticks(range(crosstab.shape[1]), [str(c) for c in crosstab.columns], rotation=25, ha="right")
    ax.set_yticks(range(crosstab.shape[0]), [str(r) for r in crosstab.index])
    for (i, j), count in np.ndenumerate(counts):
        ax.text(
            j,
            i,
            f"{int(count):,}",
            ha="center",
            va="center",
            fontsize=8,
            color="white" if shares[i, j] > 0.6 * shares.max() else "black",
        )
    fig.colorbar(image, ax=ax, label="share of the segment's customers", format=PercentFormatter(1.0, decimals=0))
    ax.set_title("Classic RFM segment × model segment")
    return fig


# -------------------------------------------------------------------------------------- sections
def summary_section(data: ReportData) -> Section:
    """What was analysed and which model produced the segments."""
    record = data.record
    facts = [
        ("Customers in customer_state", f"{data.customers:,}"),
        (
            "Customers segmented by this model",
            f"{int(data.distributions.drop_duplicates('segment')['customers'].sum()):,}",
        ),
        ("Analysis date (as_of)", format_cell(data.as_of)),
        ("Model version", record.version),
        ("Algorithm", record.algorithm),
        ("k (segments)", str(record.k)),
        (
            "Silhouette",
            "not computed (k was fixed)" if record.silhouette is None else f"{record.silhouette:.4f}",
        ),
        ("Trained at (UTC)", format_cell(record.trained_at)),
        ("Training analysis date", format_cell(record.as_of)),
        ("Training rows", f"{record.training_rows:,}"),
        ("Clustering features", ", ".join(record.features)),
    ]
    other = data.version_rows[data.version_rows["model_version"] != record.version]
    if not other.empty:
        facts.append(("customer_segments rows from other model versions", f"{int(other['customers'].sum()):,}"))
    return Section(title="Data summary", blocks=(Table(pd.DataFrame(facts, columns=["Item", "Value"])),))


def _stats(profile: pd.DataFrame, section: str) -> dict[str, dict[str, float]]:
    """One section of `data_profile` as item → statistic → value, items in stored order."""
    out: dict[str, dict[str, float]] = {}
    for row in profile[profile["section"] == section].itertuples(index=False):
        out.setdefault(str(row.item), {})[str(row.statistic)] = float(row.value)  # type: ignore[arg-type]
    return out


def _amount(value: float) -> str:
    return f"{value:,.2f}" if abs(value - round(value)) > 1e-9 else f"{round(value):,}"


def channel_spend_figure(distributions: Mapping[str, Mapping[str, float]]) -> Figure:
    """Orders and spend per customer, online against offline, from the stored quantiles (log scale)."""
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    axes = fig.subplots(1, 2)
    panels = (
        ("orders per customer", "order_num_total_ever_online", "order_num_total_ever_offline"),
        ("spend per customer (TRY)", "customer_value_total_ever_online", "customer_value_total_ever_offline"),
    )
    for ax, (title, online, offline) in zip(axes, panels, strict=True):
        # A log axis cannot show 0 (a customer with no orders in a channel): such quantiles sit at 0.5.
        stats = [
            {
                "label": label,
                **{key: max(distributions[column][q], 0.5) for key, q in _BOX_KEYS.items()},
                "fliers": [],
            }
            for label, column in (("online", online), ("offline", offline))
        ]
        ax.bxp(stats, showfliers=False, orientation="horizontal")
        ax.set_xscale("log")
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="x")
    return fig


_BOX_KEYS = {"whislo": "q05", "q1": "q25", "med": "q50", "q3": "q75", "whishi": "q95"}


def exploration_section(profile: pd.DataFrame) -> Section:
    """The brief's first look at the history: gaps, distributions, mixes, correlations, outliers."""
    title = "Exploratory analysis of the history"
    if profile.empty:
        note = "not recorded: this model version was trained before `train` profiled its data."
        return Section(title=title, blocks=(note,))
    blocks: list[Block] = [
        "Computed by `train` from the same pass over its input (table `data_profile`); the quantiles are "
        "approximate (relative error 0.1%), the correlations come from the training sample."
    ]
    columns = _stats(profile, COLUMNS)
    rows_seen = columns.pop("rows", {})
    if columns:
        blocks.append(
            f"{int(rows_seen.get('read', 0)):,} rows read, {int(rows_seen.get('kept', 0)):,} customers kept. "
            "Missing and invalid values per column:"
        )
        checks = [(name, int(v["missing"]), int(v["invalid"])) for name, v in columns.items()]
        blocks.append(Table(pd.DataFrame(checks, columns=["column", "missing", "invalid"])))
    distributions = _stats(profile, DISTRIBUTIONS)
    shown = [
        [item, *[as_date(v[q]).isoformat() if item in DATE_COLUMNS else _amount(v[q]) for q in QUANTILE_NAMES]]
        for item, v in distributions.items()
    ]
    blocks.append("Distributions of the raw columns (kept customers):")
    blocks.append(Table(pd.DataFrame(shown, columns=["column", *QUANTILE_NAMES])))
    if all(c in distributions for c in DISTRIBUTION_COLUMNS):
        blocks.append(
            Plot(
                "channel_spend",
                "Orders and spend per customer online and offline: box 25–75 %, whiskers 5–95 %, log scale.",
                figure_png(channel_spend_figure(distributions)),
            )
        )
    mix = _stats(profile, MIX)
    if mix:
        total = sum(v["customers"] for item, v in mix.items() if item.startswith("last_order_channel=")) or 1.0
        rows = [(*item.split("=", 1), int(v["customers"]), percent(v["customers"] / total)) for item, v in mix.items()]
        blocks.append("Channel and category mix (a customer counts once per category of interest):")
        blocks.append(Table(pd.DataFrame(rows, columns=["of", "value", "customers", "share"])))
    pairs = {tuple(item.split("~", 1)): v["pearson"] for item, v in _stats(profile, CORRELATIONS).items()}
    if pairs:
        names = list(dict.fromkeys(name for pair in pairs for name in pair))
        matrix = [
            [a, *[f"{1.0 if a == b else pairs.get((a, b), pairs.get((b, a), math.nan)):+.2f}" for b in names]]
            for a in names
        ]
        blocks.append("Pearson correlations of the features (training sample):")
        blocks.append(Table(pd.DataFrame(matrix, columns=["feature", *names])))
    outliers = _stats(profile, OUTLIERS)
    if outliers:
        kept = rows_seen.get("kept")
        rows_out = [
            (
                item,
                _amount(v["cap"]),
                int(v["customers_above_cap"]),
                percent(v["customers_above_cap"] / kept) if kept else "",
                _amount(v["mean_excess"]),
                _amount(v["max"]),
            )
            for item, v in outliers.items()
        ]
        blocks.append(
            "Outliers: each heavy-tailed feature is capped at its 99th percentile before clustering; the customers "
            "above the cap and by how much (the tables keep the raw values):"
        )
        blocks.append(
            Table(pd.DataFrame(rows_out, columns=["feature", "cap", "customers above", "share", "mean excess", "max"]))
        )
    return Section(title=title, blocks=tuple(blocks))


def quarantine_section(quarantine: pd.DataFrame) -> Section:
    """Rows that never reached the model, so readers know what the segments leave out."""
    if quarantine.empty:
        return Section(title="Quarantine by reason", blocks=("none: no rows were quarantined.",))
    table = quarantine.sort_values(["count", "source", "reason"], ascending=[False, True, True])
    table = table[["reason", "source", "count"]].rename(columns={"count": "rows"}).astype({"rows": "int64"})
    total = int(table["rows"].sum())
    return Section(title="Quarantine by reason", blocks=(f"{total:,} rows quarantined in total.", Table(table)))


def k_selection_section(record: ModelRecord) -> Section:
    """Why this k: the silhouette curve, or a note that k was forced."""
    if not record.k_selection:
        note = f"k was fixed at {record.k} when training (--k), so no k-selection curve was computed."
        return Section(title="k selection", blocks=(note,))
    k_table = pd.DataFrame(
        [
            {
                "k": c.k,
                "silhouette": c.silhouette,
                "cost": c.cost,
                "calinski_harabasz": c.calinski_harabasz,
                "min_share": c.min_share,
                "refused": c.refused,
            }
            for c in record.k_selection
        ]
    )
    criterion = (
        f"k = {record.k} was chosen: among the candidates whose every segment holds enough customers, the "
        f"smallest k whose silhouette (squared Euclidean, on the training sample) is within {SILHOUETTE_TOLERANCE} "
        "of the best, since fewer segments are easier to act on. Cost (the elbow) and Calinski-Harabasz are "
        "shown beside it."
    )
    plot = Plot(
        "k_selection",
        f"Silhouette and cost per k; k = {record.k} was chosen.",
        figure_png(k_selection_figure(k_table, record.k)),
    )
    shown = pd.DataFrame(
        {
            "k": k_table["k"].astype("int64"),
            "silhouette": ["n/a" if pd.isna(v) else f"{v:.4f}" for v in k_table["silhouette"]],
            "cost": [format_cell(v) for v in k_table["cost"]],
            "Calinski-Harabasz": ["n/a" if pd.isna(v) else f"{v:,.0f}" for v in k_table["calinski_harabasz"]],
            "smallest segment": ["n/a" if pd.isna(v) else percent(v) for v in k_table["min_share"]],
            "verdict": [
                "chosen" if k == record.k else (reason if isinstance(reason, str) else "")
                for k, reason in zip(k_table["k"], k_table["refused"], strict=True)
            ],
        }
    )
    return Section(title="k selection", blocks=(criterion, plot, Table(shown)))


def sizes_section(sizes: pd.DataFrame, names: Mapping[int, str], colors: Mapping[str, str]) -> Section:
    """How the customer base splits across segments."""
    cluster_of = {n: c for c, n in names.items()}
    shown = pd.DataFrame(
        {
            "segment": sizes["segment"],
            "cluster": [format_cell(cluster_of.get(s)) for s in sizes["segment"]],
            "customers": sizes["customers"].astype("int64"),
            "share": [percent(v) for v in sizes["share"]],
        }
    )
    plot = Plot("segment_sizes", "Customers per segment.", figure_png(segment_sizes_figure(sizes, colors)))
    return Section(title="Segment sizes", blocks=(plot, Table(shown)))


def distributions_section(distributions: pd.DataFrame, order: Sequence[str], colors: Mapping[str, str]) -> Section:
    """How segments differ in recency, frequency, monetary value and tenure."""
    plot = Plot(
        "distributions",
        "Recency, frequency, monetary and tenure per segment (approximate percentiles over all segmented "
        "customers; frequency and monetary on a log scale).",
        figure_png(distributions_figure(distributions, order, colors)),
    )
    return Section(title="Recency, frequency, monetary and tenure by segment", blocks=(plot,))


def projection_section(
    features: np.ndarray, segments: Sequence[str], feature_names: Sequence[str], colors: Mapping[str, str]
) -> Section:
    """Whether the segments separate in the model's own feature space."""
    title = "2-D projection of the scaled features"
    if len(segments) == 0:
        return Section(title=title, blocks=("no customers to project.",))
    projection = pca_2d(features)
    loadings = pd.DataFrame(
        {
            "feature": list(feature_names),
            "PC1 loading": [f"{v:+.2f}" for v in projection.components[0]],
            "PC2 loading": [f"{v:+.2f}" for v in projection.components[1]],
        }
    )
    plot = Plot(
        "projection",
        f"PCA of the model's scaled features for a seeded sample of {len(segments):,} customers, "
        f"coloured by segment (PC1 + PC2 explain {projection.explained.sum():.0%} of the variance).",
        figure_png(projection_figure(projection, segments, colors)),
    )
    return Section(title=title, blocks=(plot, Table(loadings)))


def channel_mix_section(profiles: pd.DataFrame, order: Sequence[str]) -> Section:
    """Which channel each segment buys through, which decides where to reach it."""
    mix = channel_mix_frame(profiles, order)
    if mix.empty:
        return Section(title="Channel mix per segment", blocks=("no segment profiles for this model version.",))
    shown = mix.map(percent).reset_index(names="segment")
    plot = Plot("channel_mix", "Last-order channel mix per segment.", figure_png(channel_mix_figure(mix)))
    return Section(title="Channel mix per segment", blocks=(plot, Table(shown)))


def profile_frame(profiles: pd.DataFrame, order: Sequence[str]) -> pd.DataFrame:
    """The profile and action table, one row per segment in segment order."""
    by_segment = {p["segment"]: p for p in profiles.to_dict("records")}
    rows = []
    for s in (s for s in order if s in by_segment):
        p = by_segment[s]
        rows.append(
            {
                "segment": s,
                "customers": int(p["customers"]),
                "share": percent(p["share"]),
                "median recency (days)": format_cell(p["recency_median"]).removesuffix(".00"),
                "median frequency": format_cell(p["frequency_median"]).removesuffix(".00"),
                "median monetary": format_cell(p["monetary_median"]),
                "median tenure (days)": format_cell(p["tenure_median"]).removesuffix(".00"),
                "online share": percent(p["online_share_mean"]),
                "top categories": format_cell(p["top_categories"]),
                "action": p["action"],
            }
        )
    return pd.DataFrame(rows)


def profile_section(profiles: pd.DataFrame, order: Sequence[str]) -> Section:
    """What each segment looks like and what marketing should do with it."""
    frame = profile_frame(profiles, order)
    if frame.empty:
        return Section(title="Segment profiles and actions", blocks=("no segment profiles for this model version.",))
    return Section(title="Segment profiles and actions", blocks=(Table(frame),))


def lifetime_value_frame(profiles: pd.DataFrame, order: Sequence[str]) -> pd.DataFrame:
    """Per segment: mean P(alive), churn risk, expected orders and value, in segment order (numbers)."""
    by_segment = {p["segment"]: p for p in profiles.to_dict("records")}
    rows = []
    for s in (s for s in order if s in by_segment):
        p = by_segment[s]
        alive = p.get("p_alive_mean")
        rows.append(
            {
                "segment": s,
                "customers": int(p["customers"]),
                "mean P(alive)": alive,
                "churn risk": None if alive is None or pd.isna(alive) else 1 - alive,
                "P(alive) < 0.5": p.get("at_risk_share"),
                "expected orders, 90 days": p.get("expected_orders_90d_mean"),
                "expected value, 12 months": p.get("expected_value_12m_mean"),
                "segment's expected value, 12 months": p.get("expected_value_12m_total"),
            }
        )
    return pd.DataFrame(rows)


def lifetime_value_figure(frame: pd.DataFrame, colors: Mapping[str, str]) -> Figure:
    """Bars of each segment's total expected 12-month value, labelled with its mean P(alive)."""
    values = [float(v) for v in frame["segment's expected value, 12 months"]]
    alive = [float(v) for v in frame["mean P(alive)"]]
    return labelled_bars(
        list(frame["segment"]),
        values,
        [f"{value:,.0f} (P(alive) {p:.4f})" for value, p in zip(values, alive, strict=True)],
        colors,
        xlabel="expected spend in the next 12 months, all the segment's customers",
        title="Lifetime value per segment",
        headroom=1.45,
    )


def lifetime_value_section(
    profiles: pd.DataFrame, order: Sequence[str], colors: Mapping[str, str], record: ModelRecord
) -> Section:
    """What each segment is worth over the next year and how likely its customers are still buying."""
    title = "Lifetime value and churn risk"
    frame = lifetime_value_frame(profiles, order)
    if record.clv is None or frame.empty or frame["mean P(alive)"].isna().all():
        return Section(title=title, blocks=("This model version has no lifetime value model (retrain to fit one).",))
    orders, spend = record.clv.orders, record.clv.spend
    note = (
        "BG/NBD (purchases and dropout) and Gamma-Gamma (spend per order), fitted at training on the model's "
        f"sample: r={orders.r:.3g}, alpha={orders.alpha:.3g} days, a={orders.a:.3g}, b={orders.b:.3g} (a "
        f"customer drops out after an order with mean probability {orders.a / (orders.a + orders.b):.2%}); "
        f"p={spend.p:.3g}, q={spend.q:.3g}, gamma={spend.gamma:.3g}. Churn risk is 1 - P(alive); expected "
        "value is undiscounted. Every customer's values are in `customer_segments` (p_alive, "
        "expected_orders_90d, expected_value_12m), kept current by the stream."
    )
    plot = Plot(
        "lifetime_value",
        "Total expected spend of each segment's customers in the next 12 months, with their mean P(alive).",
        figure_png(lifetime_value_figure(frame, colors)),
    )
    shown = frame.copy()
    for column in ("mean P(alive)", "churn risk"):
        shown[column] = [f"{v:.4f}" for v in shown[column]]
    shown["P(alive) < 0.5"] = [percent(v, 2) for v in shown["P(alive) < 0.5"]]
    for column in ("expected orders, 90 days", "expected value, 12 months", "segment's expected value, 12 months"):
        shown[column] = [format_cell(float(v)) for v in shown[column]]
    return Section(title=title, blocks=(note, plot, Table(shown)))


def crosstab_section(counts: pd.DataFrame, order: Sequence[str]) -> Section:
    """How the model's segments relate to the classic RFM segments marketing already knows."""
    crosstab = rfm_crosstab(counts, order)
    shown = crosstab.copy()
    shown["total"] = shown.sum(axis=1)
    shown.loc["total"] = shown.sum(axis=0)
    shown = shown.reset_index(names="RFM segment")
    shown.columns = [str(c) for c in shown.columns]
    plot = Plot(
        "rfm_crosstab",
        "Classic RFM segment × model segment: colour is the share of the model segment, numbers are customers.",
        figure_png(crosstab_figure(crosstab)),
    )
    return Section(title="Classic RFM × segment", blocks=(plot, Table(shown)))


def migration_section(moves: pd.DataFrame) -> Section:
    """Who moved where: the matrix of every segment change recorded so far."""
    title = "Segment migration"
    if moves.empty:
        return Section(title=title, blocks=("No segment changes recorded yet: the stream records them.",))
    changes = int(moves["changes"].sum())
    first = moves["period"].iloc[0]
    table = matrix_cells(moves).reset_index()
    table.columns = [str(c) for c in table.columns]
    note = (
        f"{changes:,} segment changes recorded since {first} (the stream's, its aging and model sweeps "
        f"included), from the segment a customer had (rows; {NEW} for a new customer) to the one they moved "
        "to (columns). Each cell: changes and their share of the row. Per day or week: "
        "`flo-seg migrations --period day`."
    )
    return Section(title=title, blocks=(note, Table(table)))


def campaign_section(campaigns: pd.DataFrame, segmented: int) -> Section:
    """How many customers each classic campaign list reaches."""
    counts = dict(zip(campaigns["campaign"], campaigns["customers"], strict=True))
    names = [*CAMPAIGNS, *sorted(set(counts) - set(CAMPAIGNS))]
    rows = []
    for name in names:
        rule = ""
        if name in CAMPAIGNS:
            rfm, categories = CAMPAIGNS[name]
            rule = f"RFM segment in {', '.join(rfm)}; interested in {', '.join(categories)}"
        customers = int(counts.get(name, 0))
        rows.append(
            {
                "campaign": name,
                "rule": rule,
                "customers": customers,
                "share of segmented customers": percent(customers / segmented if segmented else math.nan),
            }
        )
    return Section(title="Campaign target lists", blocks=(Table(pd.DataFrame(rows)),))


def build_sections(data: ReportData) -> list[Section]:
    """All thirteen sections, in reading order, from collected data only."""
    order = segment_order(data.record.segment_names, list(data.distributions["segment"]))
    colors = segment_colors(order)
    sizes = segment_sizes(data.distributions, order)
    builders = [
        lambda: summary_section(data),
        lambda: exploration_section(data.data_profile),
        lambda: quarantine_section(data.quarantine),
        lambda: k_selection_section(data.record),
        lambda: sizes_section(sizes, data.record.segment_names, colors),
        lambda: distributions_section(data.distributions, order, colors),
        lambda: projection_section(data.sample_features, data.sample_segments, data.record.features, colors),
        lambda: channel_mix_section(data.profiles, order),
        lambda: profile_section(data.profiles, order),
        lambda: lifetime_value_section(data.profiles, order, colors, data.record),
        lambda: crosstab_section(data.crosstab_counts, order),
        lambda: migration_section(data.migrations),
        lambda: campaign_section(data.campaigns, int(sizes["customers"].sum())),
    ]
    sections = []
    for i, build in enumerate(builders, start=1):
        section = build()
        log.info("report section %d/%d: %s", i, len(builders), section.title)
        sections.append(section)
    return sections


# -------------------------------------------------------------------------------------- rendering
_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#1f2328;margin:0}
main{max-width:1150px;margin:0 auto;padding:24px 32px 64px}
h1{font-size:1.8em;margin-bottom:.2em}
h2{font-size:1.35em;border-bottom:1px solid #d0d7de;padding-bottom:.3em;margin-top:2em}
.meta{color:#57606a;margin-top:0}
nav ol{columns:2;color:#0969da;padding-left:1.4em}
nav a{color:#0969da;text-decoration:none}
.table-wrap{overflow-x:auto;margin:1em 0}
table{border-collapse:collapse;font-size:.9em}
th,td{border:1px solid #d0d7de;padding:5px 10px;text-align:left;vertical-align:top}
th{background:#f6f8fa}
tbody tr:nth-child(even){background:#fafbfc}
.num{text-align:right;font-variant-numeric:tabular-nums}
td.num{white-space:nowrap}
td.long{min-width:20em}
figure{margin:1em 0}
figure img{max-width:100%;height:auto;border:1px solid #eaeef2}
figcaption{color:#57606a;font-size:.9em;margin-top:.3em}
"""


def iter_plots(sections: Sequence[Section]) -> Iterator[Plot]:
    """Every plot of the report, in order."""
    for section in sections:
        yield from (b for b in section.blocks if isinstance(b, Plot))


def render_html(sections: Sequence[Section], subtitle: str) -> str:
    """One self-contained page: inline CSS, plots as base64 PNG data URIs, no scripts or external links."""
    toc = "".join(f'<li><a href="#s{i}">{html.escape(s.title)}</a></li>' for i, s in enumerate(sections, start=1))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(TITLE)}</title><style>{_CSS}</style></head><body><main>",
        f'<h1>{html.escape(TITLE)}</h1><p class="meta">{html.escape(subtitle)}</p>',
        f"<nav><ol>{toc}</ol></nav>",
    ]
    for i, section in enumerate(sections, start=1):
        parts.append(f'<section id="s{i}"><h2>{i}. {html.escape(section.title)}</h2>')
        for block in section.blocks:
            if isinstance(block, Table):
                parts.append(html_table(block.frame))
            elif isinstance(block, Plot):
                data = base64.b64encode(block.png).decode("ascii")
                caption = html.escape(block.caption)
                parts.append(
                    f'<figure><img src="data:image/png;base64,{data}" alt="{caption}">'
                    f"<figcaption>{caption}</figcaption></figure>"
                )
            else:
                parts.append(f"<p>{html.escape(block)}</p>")
        parts.append("</section>")
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


def render_markdown(sections: Sequence[Section], subtitle: str, plots_dir: str = "plots") -> str:
    """The same report as Markdown, with plots referenced as PNG files beside it."""
    parts = [f"# {TITLE}", subtitle]
    for i, section in enumerate(sections, start=1):
        parts.append(f"## {i}. {section.title}")
        for block in section.blocks:
            if isinstance(block, Table):
                parts.append(markdown_table(block.frame))
            elif isinstance(block, Plot):
                parts.append(f"![{block.caption}]({plots_dir}/{block.name}.png)\n\n*{block.caption}*")
            else:
                parts.append(block)
    return "\n\n".join(parts) + "\n"


def subtitle_of(data: ReportData, generated_at: dt.datetime) -> str:
    """The line under the title: which model, which date, when generated."""
    r = data.record
    return (
        f"Model {r.version} ({r.algorithm}, k = {r.k}) · analysis date {data.as_of.isoformat()} · "
        f"generated {generated_at.isoformat(sep=' ', timespec='seconds')} UTC"
    )


def write_report(sections: Sequence[Section], subtitle: str, out_dir: str) -> list[str]:
    """Write report.html, report.md and plots/*.png; returns the paths written."""
    out = Path(out_dir)
    plots_dir = out / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    plot_paths = []
    for plot in iter_plots(sections):
        path = plots_dir / f"{plot.name}.png"
        path.write_bytes(plot.png)
        plot_paths.append(str(path))
    html_path, md_path = out / "report.html", out / "report.md"
    html_path.write_text(render_html(sections, subtitle), encoding="utf-8")
    md_path.write_text(render_markdown(sections, subtitle, plots_dir.name), encoding="utf-8")
    return [str(html_path), str(md_path), *plot_paths]


# ------------------------------------------------------------------------------------- Spark edge
def projection_sample(state_df: DataFrame, model: ScoringModel, as_of: dt.date, *, rows: int, size: int) -> DataFrame:
    """A seeded sample of customers with their cluster and scaled feature vector as an array."""
    sample = sample_customers(state_df, rows, size, model.record.seed)
    features = sample.transform(lambda df: with_customer_features(df, F.lit(as_of)))
    return score_clusters(model.pipeline, features).select(
        F.col(PREDICTION), vector_to_array(F.col(SCALED)).alias(SCALED)
    )


def collect_report_data(spark: SparkSession, lake: LakeSettings) -> ReportData:
    """The few small aggregations and the one sample the report needs, as pandas on the driver."""
    tables = {name: read_table(spark, lake, name) for name in REPORT_TABLES}  # a missing table fails first
    model = load_current_model(spark, lake)
    record = model.record
    log.info("report on model %s (%s, k=%d)", record.version, record.algorithm, record.k)
    is_current = F.col("model_version") == F.lit(record.version)

    customers = tables[CUSTOMER_STATE].count()
    version_rows = (
        tables[CUSTOMER_SEGMENTS]
        .groupBy("model_version")
        .agg(F.count(F.lit(1)).alias("customers"), F.max("as_of").alias("as_of"))
        .toPandas()
    )
    current_rows = version_rows[version_rows["model_version"] == record.version]
    as_of: dt.date = current_rows["as_of"].iloc[0] if not current_rows.empty else record.as_of

    log.info("collecting segment distributions and the RFM crosstab")
    segments = tables[CUSTOMER_SEGMENTS].where(is_current)
    quantiles = [
        F.percentile_approx(F.col(m).cast("double"), list(QUANTILES), 10_000).alias(m) for m in DISTRIBUTION_METRICS
    ]
    distributions = quantile_frame(
        segments.groupBy("segment").agg(F.count(F.lit(1)).alias("customers"), *quantiles).toPandas()
    )
    crosstab_counts = segments.groupBy("rfm_segment", "segment").count().toPandas()
    profiles = tables[SEGMENT_PROFILES].where(is_current).toPandas()
    quarantine = tables[QUARANTINE].groupBy("source", "reason").count().toPandas()
    campaigns = tables[CAMPAIGN_TARGETS].groupBy("campaign").agg(F.count(F.lit(1)).alias("customers")).toPandas()
    data_profile = (
        read_table(spark, lake, DATA_PROFILE).where(is_current).toPandas()
        if table_exists(spark, lake, DATA_PROFILE)
        else pd.DataFrame(columns=["section", "item", "statistic", "value"])
    )

    migrations = (
        read_migrations_spark(spark, lake, migration_sql())
        if table_exists(spark, lake, SEGMENT_CHANGES)
        else pd.DataFrame(columns=list(MIGRATION_COLUMNS))
    )
    log.info("scoring a sample of at most %d customers for the 2-D projection", PROJECTION_SAMPLE)
    sample = projection_sample(tables[CUSTOMER_STATE], model, as_of, rows=customers, size=PROJECTION_SAMPLE).toPandas()
    features = np.array([list(v) for v in sample[SCALED]], dtype=float).reshape(len(sample), len(record.features))
    names = record.segment_names
    return ReportData(
        record=record,
        customers=customers,
        as_of=as_of,
        version_rows=version_rows,
        quarantine=quarantine,
        distributions=distributions,
        crosstab_counts=crosstab_counts,
        profiles=profiles,
        campaigns=campaigns,
        sample_features=features,
        sample_segments=tuple(names.get(int(c), f"cluster_{c}") for c in sample[PREDICTION]),
        data_profile=data_profile,
        migrations=migrations,
    )


def run_report(spark: SparkSession, lake: LakeSettings, out_dir: str) -> list[str]:
    """Write the HTML and Markdown report on the current model into `out_dir`; returns the paths written."""
    data = collect_report_data(spark, lake)
    sections = build_sections(data)
    generated_at = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    paths = write_report(sections, subtitle_of(data, generated_at), out_dir)
    log.info("report written to %s (%d files)", out_dir, len(paths))
    return paths
