"""`python -m benchmarks.dashboard --lake PATH`: how long one dashboard refresh takes on a lake.

A refresh is what the page's callback does at each tick: `read_snapshot` (every panel's statement through
delta-rs, the tables opened once) and `panels` (the figures and tables). Runs `--rounds` refreshes in one
process after a cold first one and prints a Markdown table with the lake's size.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

from benchmarks.toolkit import markdown_table, uptime
from flo_seg.dashboard import panels, read_snapshot
from flo_seg.settings import LakeSettings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", required=True, help="the lake the dashboard would serve")
    parser.add_argument("--rounds", type=int, default=5, help="warm refreshes after the cold one (default 5)")
    args = parser.parse_args(argv)
    lake = LakeSettings(root=args.lake)
    print(f"load at start: {uptime()}")
    seconds = []
    for _ in range(args.rounds + 1):
        started = time.monotonic()
        snapshot = read_snapshot(lake)
        panels(snapshot)
        seconds.append(time.monotonic() - started)
    print(f"load at end: {uptime()}\n")
    customers = int(snapshot.sizes["customers"].sum()) if not snapshot.sizes.empty else 0
    changes = int(snapshot.moves["changes"].sum()) if not snapshot.moves.empty else 0
    rows = [(f"{customers:,}", f"{changes:,}", f"{seconds[0]:.2f}", f"{statistics.median(seconds[1:]):.2f}")]
    print(markdown_table(["customers", "segment changes recorded", "cold s", "warm s (median)"], rows, align="rrrr"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
