"""`python -m benchmarks.driver_start`: a fresh process's Spark start-up, with and without the class archive.

Each round starts two fresh Python processes one after the other: one whose session factory passes the
driver JVM the class archive (`spark.class_archive`, written by `make class-archive`) and, as the baseline
measured in the same run, one with the setting pointing nowhere. Each builds the product's session, counts
a Delta table (the first Delta read, as every command does early) and stops. Prints per variant the
median of the session start, the first read, and the whole process's wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.toolkit import markdown_table, uptime
from flo_seg.settings import default_spark_settings

_CHILD = textwrap.dedent(
    """
    import json, sys, time
    started = time.monotonic()
    from flo_seg.settings import default_spark_settings
    from flo_seg.spark import build_session
    spark = build_session(default_spark_settings("driver-start"))
    session = time.monotonic() - started
    spark.read.format("delta").load(sys.argv[1]).count()
    print(json.dumps({"session": session, "read": time.monotonic() - started - session}))
    spark.stop()
    """
)


def one_process(table: str, archive: str) -> dict[str, float]:
    """Seconds to the session, to the end of the first read, and of the whole process."""
    env = {**os.environ, "FLO_SPARK_CLASS_ARCHIVE": archive}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, table], env=env, capture_output=True, text=True, check=True, timeout=600
    )
    wall = time.monotonic() - started
    line = next(x for x in reversed(done.stdout.splitlines()) if x.startswith("{"))
    return {**json.loads(line), "wall": wall}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.driver_start", description=__doc__)
    parser.add_argument("--archive", type=Path, default=default_spark_settings("x").class_archive)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="also write the runs as JSON here")
    args = parser.parse_args(argv)
    if args.archive is None or not args.archive.is_file():
        parser.error(f"no class archive at {args.archive}: run `make class-archive` first")
    with tempfile.TemporaryDirectory(prefix="flo-driver-start-") as folder:
        table = str(Path(folder) / "table")
        subprocess.run(
            [
                sys.executable,
                "-c",
                "from flo_seg.settings import default_spark_settings; from flo_seg.spark import build_session; "
                f"build_session(default_spark_settings('x')).range(1000).write.format('delta').save({table!r})",
            ],
            check=True,
            capture_output=True,
        )
        load_before = uptime()
        runs: dict[str, list[dict[str, float]]] = {"without (baseline)": [], "with the archive": []}
        for n in range(args.rounds):
            for name, archive in (("without (baseline)", "/nonexistent.jsa"), ("with the archive", str(args.archive))):
                result = one_process(table, archive)
                runs[name].append(result)
                print(f"round {n + 1} {name}: {result['wall']:.2f}s", file=sys.stderr)
    rows = []
    for name, results in runs.items():
        rows.append(
            [name]
            + [f"{statistics.median(r[key] for r in results):.2f}" for key in ("session", "read", "wall")]
            + [", ".join(f"{r['wall']:.1f}" for r in results)]
        )
    print(f"load before: {load_before}; after: {uptime()}")
    print(
        markdown_table(
            ["driver", "session s (median)", "first Delta read s", "process wall s", "walls"],
            rows,
            align="lrrrl",
        )
    )
    if args.out:
        args.out.write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
