"""The dashboard: its data on tiny frames, and the page as headless Chromium renders it from a real lake."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from pyspark.sql import SparkSession
from streaming_support import one_alarm
from werkzeug.serving import make_server

from batch.lake import read_table
from flo_seg import dashboard
from flo_seg.settings import LakeSettings
from streaming.monitor import MonitorSettings, record_alarms

CHROMIUM = shutil.which("chromium")


def test_sizes_over_time_take_back_each_later_minutes_net_inflow() -> None:
    sizes = pd.DataFrame({"segment": ["a", "b"], "customers": [10, 5]})
    m1, m2 = dt.datetime(2021, 6, 1, 10, 0), dt.datetime(2021, 6, 1, 10, 1)
    flows = pd.DataFrame(
        {
            "minute": [m1, m2, m2],
            "segment": ["a", "a", "b"],
            "previous_segment": [None, "b", "a"],
            "changes": [2, 3, 1],
        }
    )
    got = dashboard.sizes_over_time(sizes, flows).set_index(["minute", "segment"])["customers"].to_dict()
    # After m2 the sizes are today's; m2 moved 3 b -> a and 1 a -> b (net a +2, b -2); m1 added 2 new to a.
    assert got == {(m2, "a"): 10, (m2, "b"): 5, (m1, "a"): 8, (m1, "b"): 7}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture()
def browser() -> str:
    if CHROMIUM is None:
        message = "Debian's chromium is not installed (`make test` installs it: `make browser`)"
        if os.environ.get("FLO_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{message} (FLO_REQUIRE_BROWSER=1)")
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture()
def served(trained_lake: Path, tmp_path: Path) -> Iterator[tuple[LakeSettings, str]]:
    """A copy of the trained lake and the dashboard serving it (refreshing every second) on a free port."""
    shutil.copytree(trained_lake, tmp_path / "lake")
    lake = LakeSettings(root=str(tmp_path / "lake"))
    port = _free_port()
    server = make_server("127.0.0.1", port, dashboard.build_app(lake, refresh_seconds=1.0).server, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield lake, f"http://127.0.0.1:{port}/"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def rendered(chromium: str, url: str, budget_ms: int = 8000) -> str:
    """The page's DOM after its scripts ran for `budget_ms` of virtual time (callbacks fetched)."""
    done = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--virtual-time-budget={budget_ms}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout


def sizes_shown(page: str) -> dict[str, int]:
    """The segment sizes table as the browser rendered it."""
    table = re.search(r'<table id="sizes".*?</table>', page, re.DOTALL)
    assert table is not None, page[:2000]
    return {m[0]: int(m[1]) for m in re.findall(r"<tr><td>([^<]+)</td><td>(\d+)</td></tr>", table.group(0))}


@pytest.mark.slow
def test_the_page_shows_the_lakes_segments_and_follows_its_changes(
    spark: SparkSession, browser: str, served: tuple[LakeSettings, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    lake, url = served
    segments = read_table(spark, lake, "customer_segments")
    counts = {r["segment"]: r["count"] for r in segments.groupBy("segment").count().collect()}
    reads: list[float] = []
    original = dashboard.read_snapshot

    def counted(lake: LakeSettings) -> dashboard.Snapshot:
        snapshot = original(lake)
        reads.append(snapshot.seconds)
        return snapshot

    monkeypatch.setattr(dashboard, "read_snapshot", counted)
    page = rendered(browser, url)
    assert sizes_shown(page) == counts
    model = read_table(spark, lake, "models").where("is_current").collect()[0]["model_version"]
    assert f"model {model}" in page and f"{sum(counts.values()):,} customers" in page
    for title in ("Who moved where", "Lifetime value and churn risk", "Profiles and actions", "Quarantine"):
        assert title in page
    assert "no drift alarms" in page
    assert len(reads) >= 2, "the page did not read the lake again by itself"

    # The stream's compaction rewrites customer_segments; the page shows the new counts.
    moved = sorted(counts)[0]
    target = sorted(counts)[-1]
    path = lake.table("customer_segments")
    spark.sql(f"UPDATE delta.`{path}` SET segment = '{target}' WHERE segment = '{moved}'")
    # And `flo-seg monitor` records a drift alarm: the page lists it.
    check = one_alarm(model, "feature", "avg_order_value", 0.61, dt.datetime(2021, 6, 1, 10, 0))
    record_alarms(spark, lake, MonitorSettings(), check)
    page = rendered(browser, url)
    after = sizes_shown(page)
    assert after == {**{s: n for s, n in counts.items() if s != moved}, target: counts[target] + counts[moved]}
    table = re.search(r'<table id="drift-table".*?</table>', page, re.DOTALL)
    assert table is not None, page[-3000:]
    assert re.search(
        rf"<td>{model}</td><td>feature</td><td>avg_order_value</td><td>psi</td><td>0.6100</td><td>0.2500</td><td>321</td>",
        table[0],
    )
