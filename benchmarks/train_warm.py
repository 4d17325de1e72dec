"""`python -m benchmarks.train_warm`: `train` repeated in one driver, to see what a warm JVM changes.

Builds the product's session once and runs `run_train` on the same history `--trains` times (default 2),
each on a fresh lake. The first train pays the JVM's class loading and JIT warm-up, the later ones find
the code loaded and compiled: the difference is what a driver that stays up between commands would
save. The table writes run one after another, each timed on its own (train writes them concurrently,
so their log times overlap); that is the only thing changed from the product's train. Prints, per
train, the wall time and the step times from train's own log lines ("... done in Ns").
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

from benchmarks.toolkit import markdown_table, uptime
from benchmarks.train_ab import steps
from flo_seg.settings import LakeSettings, TrainSettings, default_spark_settings
from flo_seg.spark import build_session


class _Lines(logging.Handler):
    """Keeps the log lines of the `batch` loggers in train_ab's format, for its step parser."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def one_at_a_time(
    writes: dict[str, Callable[[], object]], timed: Callable[[str], AbstractContextManager[object]]
) -> None:
    """train's writes in turn, each inside train's own step timer as "write <table>"."""
    for name, write in writes.items():
        with timed(f"write {name}"):
            write()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_warm", description=__doc__)
    parser.add_argument("--history", required=True, help="history CSV to train on")
    parser.add_argument("--trains", type=int, default=2, help="trains in the one session (default 2)")
    args = parser.parse_args(argv)
    import batch.train as train

    train.write_concurrently = one_at_a_time
    handler = _Lines()
    batch_log = logging.getLogger("batch")
    batch_log.addHandler(handler)
    batch_log.setLevel(logging.INFO)
    load_before = uptime()
    spark = build_session(default_spark_settings("flo-seg-train-warm"))
    walls: list[float] = []
    found: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="flo-train-warm-") as folder:
        for n in range(args.trains):
            handler.lines.clear()
            started = time.monotonic()
            train.run_train(
                spark, LakeSettings(root=str(Path(folder) / f"lake-{n}")), TrainSettings(), history_path=args.history
            )
            walls.append(time.monotonic() - started)
            found.append(steps("\n".join(handler.lines)))
            print(f"train {n + 1}: {walls[-1]:.1f}s", file=sys.stderr)
    names = list(dict.fromkeys(name for run in found for name in run))
    rows = [["whole train (session already up)", *[f"{w:.1f}" for w in walls]]]
    rows += [[name, *[f"{run[name]:.2f}" if name in run else "" for run in found]] for name in names]
    print(f"load before: {load_before}; after: {uptime()}")
    print(
        markdown_table(["step", *[f"train {n + 1} s" for n in range(args.trains)]], rows, align="l" + "r" * args.trains)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
