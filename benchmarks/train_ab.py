"""`python -m benchmarks.train_ab`: `flo-seg train` of this checkout against an earlier revision.

Each round runs `flo-seg train --history CSV` in a fresh process (its own Python and JVM, session start
included) for the base revision, checked out in a temporary git worktree, and then for this checkout,
on a fresh lake each time; alternating rounds spread the machine's drift over both. Prints a Markdown
table of wall times and, for the last round, the step times from each run's log ("... done in Ns").
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_STEP = re.compile(r"INFO batch\.\w+: (?P<step>.+?) done in (?P<seconds>[\d.]+)s$")


def train_once(checkout: Path, history: str, lake: Path, env: dict[str, str]) -> tuple[float, str]:
    """Wall seconds and the log of one `flo-seg train` run from `checkout`."""
    shutil.rmtree(lake, ignore_errors=True)
    command = [sys.executable, "-m", "flo_seg.cli", "--lake", str(lake), "train", "--history", history]
    started = time.monotonic()
    done = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    shutil.rmtree(lake, ignore_errors=True)
    if done.returncode != 0:
        raise RuntimeError(f"train in {checkout} exited {done.returncode}: {done.stderr.strip()[-800:]}")
    return seconds, done.stderr


def steps(log_text: str) -> dict[str, float]:
    """Step name -> seconds, from train's progress lines."""
    found = {}
    for line in log_text.splitlines():
        match = _STEP.search(line)
        if match:
            found[match["step"]] = float(match["seconds"])
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """Alternate fresh-process trainings of the base revision and this checkout; print the table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_ab", description=__doc__)
    parser.add_argument("--base", required=True, help="git revision to compare against (e.g. a commit id)")
    parser.add_argument("--history", required=True, help="history CSV both revisions train on")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, each running base then this (default 2)")
    parser.add_argument("--driver-memory", default=None, help="FLO_SPARK_DRIVER_MEMORY for both (default: unset)")
    args = parser.parse_args(argv)
    history = str(Path(args.history).resolve())
    env = dict(os.environ)
    # The base worktree has no jars of its own: both use this checkout's, fetched by `make setup`.
    env.setdefault("FLO_SPARK_JARS_DIR", str(REPO / ".jars" / "spark"))
    if args.driver_memory:
        env["FLO_SPARK_DRIVER_MEMORY"] = args.driver_memory
    with tempfile.TemporaryDirectory(prefix="flo-train-ab-") as scratch:
        base = Path(scratch) / "base"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(base), args.base], check=True)
        try:
            print(f"load average before: {os.getloadavg()}", flush=True)
            runs: dict[str, list[float]] = {"base": [], "this": []}
            logs: dict[str, str] = {}
            for round_no in range(1, args.rounds + 1):
                for label, checkout in (("base", base), ("this", REPO)):
                    seconds, logs[label] = train_once(checkout, history, Path(scratch) / "lake", env)
                    runs[label].append(seconds)
                    print(f"round {round_no} {label}: {seconds:.1f}s (load {os.getloadavg()[0]:.2f})", flush=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)], check=False)
    print(f"\n`flo-seg train --history {args.history}`, fresh process; base {args.base}\n")
    print("| revision | median wall s | runs s |\n|---|---:|---|")
    for label, times in runs.items():
        print(f"| {label} | {statistics.median(times):.1f} | {', '.join(f'{t:.1f}' for t in times)} |")
    base_steps, this_steps = steps(logs["base"]), steps(logs["this"])
    print("\nLast round, step times from each log:\n\n| step | base s | this s |\n|---|---:|---:|")
    for name in dict.fromkeys([*base_steps, *this_steps]):
        cells = [f"{d[name]:.1f}" if name in d else "–" for d in (base_steps, this_steps)]
        print(f"| {name} | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
