"""`flo-seg dashboard`: a live web page over the lake for the marketing team.

A Dash app (Plotly charts) that reads the Delta tables through delta-rs' SQL engine (no JVM, the same
read-only path as `flo-seg query`) and reads them again every `--refresh-seconds`: segment sizes now
and over the last hours, segment changes per minute, the migration matrix, profiles with their
actions, lifetime value and churn risk per segment, the latest changes, quarantine counts, the
drift alarms of `flo-seg monitor` and the current model. It serves on 127.0.0.1 by default (README:
behind a proxy with authentication).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field

import pandas as pd
import plotly.express as px
from dash import Dash, Input, Output, dcc, html
from dash.development.base_component import Component
from deltalake import DeltaTable
from plotly.graph_objects import Figure

from batch.migrations import matrix_frame, migration_sql
from batch.query_native import lake_tables, native_rows
from flo_seg.settings import LakeSettings
from schemas.tables import (
    CUSTOMER_SEGMENTS,
    DRIFT_ALARMS,
    MODELS,
    QUARANTINE,
    SEGMENT_CHANGES,
    SEGMENT_PROFILES,
)

log = logging.getLogger(__name__)

HOURS_SHOWN = 3  # segment changes and sizes over the last hours of changes
RECENT_CHANGES = 20
RECENT_ALARMS = 20
_ROWS = 1_000_000
PROFILE_COLUMNS = (
    "segment",
    "customers",
    "share",
    "recency_median",
    "frequency_median",
    "monetary_median",
    "p_alive_mean",
    "at_risk_share",
    "expected_orders_90d_mean",
    "expected_value_12m_mean",
    "expected_value_12m_total",
    "action",
)


def _frame(lake: LakeSettings, tables: dict[str, DeltaTable], sql: str) -> pd.DataFrame:
    columns, rows = native_rows(lake, sql, _ROWS, tables)
    return pd.DataFrame(rows, columns=columns)


@dataclass(frozen=True)
class Snapshot:
    """Everything the page shows, read at one time (empty frames for tables that do not exist yet)."""

    model: dict[str, object]
    sizes: pd.DataFrame  # segment, customers
    flows: pd.DataFrame  # minute, segment, previous_segment, changes
    moves: pd.DataFrame  # migration_sql rows
    profiles: pd.DataFrame
    recent: pd.DataFrame
    quarantine: pd.DataFrame
    alarms: pd.DataFrame = field(default_factory=pd.DataFrame)  # the latest drift alarms
    read_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC).replace(tzinfo=None))
    seconds: float = 0.0


def read_snapshot(lake: LakeSettings) -> Snapshot:
    """The page's data, one read-only statement per panel."""
    started = time.monotonic()
    opened = lake_tables(lake)  # once: every panel reads the same versions
    tables = set(opened)
    model: dict[str, object] = {}
    if MODELS in tables:
        current = _frame(
            lake,
            opened,
            "SELECT model_version, algorithm, k, trained_at, as_of FROM models WHERE is_current "
            "ORDER BY trained_at DESC LIMIT 1",
        )
        model = {str(k): v for k, v in current.iloc[0].items()} if not current.empty else {}
    empty = pd.DataFrame()
    sizes = (
        _frame(
            lake,
            opened,
            "SELECT segment, count(*) AS customers FROM customer_segments GROUP BY segment ORDER BY 2 DESC",
        )
        if CUSTOMER_SEGMENTS in tables
        else pd.DataFrame(columns=["segment", "customers"])
    )
    flows, moves, recent = empty, empty, empty
    if SEGMENT_CHANGES in tables:
        flows = _frame(
            lake,
            opened,
            "SELECT date_trunc('minute', changed_at) AS minute, segment, previous_segment, count(*) AS changes "
            "FROM segment_changes WHERE batch_id >= 0 AND changed_at >= "
            f"(SELECT max(changed_at) FROM segment_changes) - INTERVAL '{HOURS_SHOWN} hours' "
            "GROUP BY 1, 2, 3 ORDER BY 1",
        )
        moves = _frame(lake, opened, migration_sql())
        recent = _frame(
            lake,
            opened,
            "SELECT changed_at, master_id, previous_segment, segment, model_version FROM segment_changes "
            f"ORDER BY changed_at DESC, change_id LIMIT {RECENT_CHANGES}",
        )
    profiles = empty
    if SEGMENT_PROFILES in tables and model:
        everything = _frame(
            lake,
            opened,
            f"SELECT * FROM segment_profiles WHERE model_version = '{model['model_version']}' ORDER BY customers DESC",
        )
        # A version profiled before lifetime value lacks its columns.
        profiles = everything[[c for c in PROFILE_COLUMNS if c in everything.columns]]
    quarantine = (
        _frame(lake, opened, "SELECT reason, count(*) AS events FROM quarantine GROUP BY reason ORDER BY 2 DESC")
        if QUARANTINE in tables
        else empty
    )
    alarms = (
        _frame(
            lake,
            opened,
            "SELECT detected_at, model_version, kind, name, statistic, value, threshold, "
            f"customers FROM drift_alarms ORDER BY detected_at DESC, name LIMIT {RECENT_ALARMS}",
        )
        if DRIFT_ALARMS in tables
        else empty
    )
    return Snapshot(
        model, sizes, flows, moves, profiles, recent, quarantine, alarms=alarms, seconds=time.monotonic() - started
    )


def sizes_over_time(sizes: pd.DataFrame, flows: pd.DataFrame) -> pd.DataFrame:
    """(minute, segment, customers) for each minute with changes: today's sizes minus the net inflow of the
    minutes after it (a new customer comes from no segment)."""
    if flows.empty or sizes.empty:
        return pd.DataFrame(columns=["minute", "segment", "customers"])
    inflow = flows.groupby(["minute", "segment"])["changes"].sum()
    outflow = flows.dropna(subset=["previous_segment"]).groupby(["minute", "previous_segment"])["changes"].sum()
    outflow.index = outflow.index.set_names(["minute", "segment"])
    net = inflow.sub(outflow, fill_value=0).unstack("segment", fill_value=0).sort_index()
    segments = sorted({*net.columns, *sizes["segment"]})
    now = sizes.set_index("segment")["customers"].reindex(segments, fill_value=0)
    net = net.reindex(columns=now.index, fill_value=0)
    # The size at the end of each minute: now, less what every later minute added.
    later = net[::-1].cumsum()[::-1].shift(-1, fill_value=0)
    frame = pd.DataFrame((now - later).stack()).reset_index()
    frame.columns = ["minute", "segment", "customers"]
    return frame


def _number(value: float) -> str:
    if pd.isna(value):
        return ""
    return f"{value:,.4f}" if abs(value) < 1 else f"{value:,.2f}"


def _table(frame: pd.DataFrame, table_id: str) -> html.Table:
    """A plain HTML table of a small frame (numbers rounded for reading)."""
    shown = frame.copy()
    for column in shown.columns:
        if pd.api.types.is_float_dtype(shown[column]):
            shown[column] = shown[column].map(_number)
    head = html.Thead(html.Tr([html.Th(str(c)) for c in shown.columns]))
    body = html.Tbody([html.Tr([html.Td(str(v)) for v in row]) for row in shown.itertuples(index=False)])
    return html.Table([head, body], id=table_id, className="table")


def _note(text: str) -> html.P:
    return html.P(text, className="note")


def _figure(frame: pd.DataFrame, make: str, **kwargs: object) -> Figure:
    if frame.empty:
        return Figure()
    figure: Figure = getattr(px, make)(frame, **kwargs)
    figure.update_layout(margin={"l": 10, "r": 10, "t": 40, "b": 10}, height=360)
    return figure


def panels(snapshot: Snapshot) -> dict[str, object]:
    """Each component's new content, by component id."""
    model = snapshot.model
    header = (
        f"model {model['model_version']} ({model['algorithm']}, k={model['k']}), trained {model['trained_at']}, "
        f"analysis date {model['as_of']}"
        if model
        else "no model yet: run `flo-seg train`"
    )
    status = (
        f"{int(snapshot.sizes['customers'].sum()) if not snapshot.sizes.empty else 0:,} customers; "
        f"read {snapshot.read_at:%Y-%m-%d %H:%M:%S} UTC in {snapshot.seconds:.2f} s"
    )
    per_minute = (
        pd.DataFrame(snapshot.flows.groupby(["minute", "segment"])["changes"].sum()).reset_index()
        if not snapshot.flows.empty
        else snapshot.flows
    )
    matrix = matrix_frame(snapshot.moves) if not snapshot.moves.empty else pd.DataFrame()
    value = snapshot.profiles
    return {
        "model": header,
        "status": status,
        "sizes-chart": _figure(snapshot.sizes, "bar", x="segment", y="customers", title="Customers per segment now"),
        "sizes-table": _table(snapshot.sizes, "sizes"),
        "sizes-over-time": _figure(
            sizes_over_time(snapshot.sizes, snapshot.flows),
            "line",
            x="minute",
            y="customers",
            color="segment",
            title=f"Segment sizes over the last {HOURS_SHOWN} hours of changes",
        ),
        "changes-per-minute": _figure(
            per_minute, "bar", x="minute", y="changes", color="segment", title="Segment changes per minute (to)"
        ),
        "migration": _figure(
            matrix,
            "imshow",
            text_auto=True,
            aspect="auto",
            labels={"x": "to", "y": "from", "color": "changes"},
            title="Migration matrix: changes from (rows) to (columns), all recorded",
        )
        if not matrix.empty
        else Figure(),
        "clv-chart": _figure(
            value,
            "bar",
            x="segment",
            y="expected_value_12m_total",
            hover_data=["p_alive_mean", "at_risk_share", "expected_value_12m_mean"],
            title="Expected spend in the next 12 months per segment (hover: P(alive), share likely gone)",
        )
        if "expected_value_12m_total" in value.columns and value["expected_value_12m_total"].notna().any()
        else Figure(),
        "profiles": _table(value, "profile-table") if not value.empty else _note("no profiles yet"),
        "recent": _table(snapshot.recent, "recent-table") if not snapshot.recent.empty else _note("no changes yet"),
        "quarantine": _table(snapshot.quarantine, "quarantine-table")
        if not snapshot.quarantine.empty
        else _note("nothing quarantined"),
        "drift": _table(snapshot.alarms, "drift-table")
        if not snapshot.alarms.empty
        else _note("no drift alarms (`flo-seg monitor` checks for them)"),
    }


_GRAPHS = ("sizes-chart", "sizes-over-time", "changes-per-minute", "migration", "clv-chart")
_BLOCKS = ("model", "status", "sizes-table", "profiles", "recent", "quarantine", "drift")


def build_app(lake: LakeSettings, refresh_seconds: float) -> Dash:
    """The Dash app: a static layout whose panels one callback refills at every tick."""
    app = Dash(__name__, title="FLO segments", update_title="FLO segments")

    def section(title: str, *children: Component) -> html.Section:
        return html.Section([html.H2(title), *children])

    app.layout = html.Main(
        [
            html.H1("FLO customer segments, live"),
            html.P(id="model"),
            html.P(id="status"),
            dcc.Interval(id="tick", interval=int(refresh_seconds * 1000)),
            section("Segments now", dcc.Graph(id="sizes-chart"), html.Div(id="sizes-table")),
            section("Over time", dcc.Graph(id="sizes-over-time"), dcc.Graph(id="changes-per-minute")),
            section("Who moved where", dcc.Graph(id="migration")),
            section("Lifetime value and churn risk", dcc.Graph(id="clv-chart")),
            section("Profiles and actions", html.Div(id="profiles")),
            section("Latest segment changes", html.Div(id="recent")),
            section("Quarantine", html.Div(id="quarantine")),
            section("Drift alarms", html.Div(id="drift")),
        ]
    )
    outputs = [Output(i, "figure") for i in _GRAPHS] + [Output(i, "children") for i in _BLOCKS]

    @app.callback(*outputs, Input("tick", "n_intervals"))
    def refresh(_: int | None) -> list[object]:
        try:
            content = panels(read_snapshot(lake))
        except (LookupError, ValueError, FileNotFoundError) as exc:
            log.warning("dashboard: could not read the lake: %s", exc)
            nothing = pd.DataFrame()
            sizes = pd.DataFrame(columns=["segment", "customers"])
            content = panels(Snapshot({}, sizes, nothing, nothing, nothing, nothing, nothing))
            content["status"] = f"could not read {lake.root}: {exc}"
        return [content[i] for i in (*_GRAPHS, *_BLOCKS)]

    return app


def serve(lake: LakeSettings, *, host: str, port: int, refresh_seconds: float) -> None:
    """Serve until interrupted."""
    log.info("dashboard on http://%s:%d/ (lake %s, refresh every %gs)", host, port, lake.root, refresh_seconds)
    build_app(lake, refresh_seconds).run(host=host, port=port, debug=False)
