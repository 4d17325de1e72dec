"""Progress on long work: a bar when stderr is a terminal, the same progress as plain log lines when not."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


class Progress:
    """Work counted toward a total (or open-ended); see `progress`."""

    def __init__(self, bar: tqdm | None, log: logging.Logger) -> None:
        self._bar, self._log = bar, log

    def update(self, done: int, line: str, **postfix: str) -> None:
        """`done` units so far; `line` is what a log shows instead of the bar, `postfix` what the bar adds."""
        if self._bar is None:
            self._log.info(line)
            return
        self._bar.update(done - self._bar.n)
        if postfix:
            self._bar.set_postfix(postfix, refresh=False)

    def one_done(self, line: str) -> None:
        """One more unit done, and `line` a result worth keeping: logged (above the bar on a terminal)."""
        self._log.info(line)
        if self._bar is not None:
            self._bar.update(1)


@contextmanager
def progress(desc: str, total: int | None, unit: str, log: logging.Logger) -> Iterator[Progress]:
    """A tqdm bar on a terminal (log lines go above it); elsewhere each update is one INFO line of `log`."""
    if not sys.stderr.isatty():
        yield Progress(None, log)
        return
    # 3.00k/50.0k customers, but 3/7 k: a handful of units is shown as it is.
    scaled = total is None or total >= 1000
    bar_args = {"total": total, "desc": desc, "unit": f" {unit}", "unit_scale": scaled, "file": sys.stderr}
    with logging_redirect_tqdm(), tqdm(**bar_args) as bar:
        yield Progress(bar, log)


@contextmanager
def spark_progress(spark: SparkSession, desc: str, *, interval_s: float = 0.5) -> Iterator[None]:
    """On a terminal, a bar of the tasks of the Spark stages running now, under the step logs; elsewhere
    nothing (the steps log their start and duration). Spark's console progress bar stays off."""
    if not sys.stderr.isatty():
        yield
        return
    tracker = spark.sparkContext.statusTracker()
    stopped = threading.Event()
    with logging_redirect_tqdm(), tqdm(desc=desc, total=0, unit=" tasks", file=sys.stderr, leave=False) as bar:

        def poll() -> None:
            while not stopped.wait(interval_s):
                stages = [s for s in map(tracker.getStageInfo, tracker.getActiveStageIds()) if s is not None]
                bar.total = sum(s.numTasks for s in stages)
                bar.n = sum(s.numCompletedTasks for s in stages)
                names = sorted({s.name.split(" at ")[0] for s in stages})
                bar.set_postfix_str(f"stages {','.join(str(s.stageId) for s in stages)} {' '.join(names)}"[:60])

        thread = threading.Thread(target=poll, name="spark-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stopped.set()
            thread.join()
