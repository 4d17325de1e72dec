"""The `flo-seg stream` edge: start the query and its compaction, log, stop cleanly on Ctrl-C / SIGTERM or after a
duration (then compact once more, so the tables hold everything the stream did)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from pyspark.sql import SparkSession
from pyspark.sql.streaming import StreamingQuery

from batch.compact import Compactor, compact_lake
from flo_seg.settings import LakeSettings
from streaming.audiences import AudienceSettings, start_audiences
from streaming.job import BatchLogger, StreamSettings, start_stream
from streaming.lease import checkpoint_lease

log = logging.getLogger(__name__)


def default_checkpoint(lake: LakeSettings, query_name: str) -> str:
    """`checkpoints/<query>` beside the lake folder (or under the lake URI's parent)."""
    root = lake.root.rstrip("/")
    if "://" in root:
        return f"{root.rsplit('/', 1)[0]}/checkpoints/{query_name}"
    return str(Path(root).resolve().parent / "checkpoints" / query_name)


def stop_between_batches(query: StreamingQuery, timeout_s: float = 120.0) -> None:
    """Stop the query once no micro-batch runs (or after `timeout_s`): `stop()` interrupts a running batch.

    Spark starts a batch without new data right after one that moved the de-duplication watermark, so
    a stop right after a batch would often interrupt that one (it logs a failure, and is replayed on
    the next start); waiting for the trigger to go idle avoids it.
    """
    deadline = time.monotonic() + timeout_s
    while query.isActive and query.status["isTriggerActive"] and time.monotonic() < deadline:
        time.sleep(0.1)
    if query.isActive:
        query.stop()


# Where `flo-seg stream` runs its compaction (`--compaction`).
AUTO, THREAD, PROCESS = "auto", "thread", "process"
COMPACTION_PLACES = (AUTO, THREAD, PROCESS)


def compaction_place(place: str, master: str) -> str:
    """`auto`: a process of its own under a local master (one machine), a thread of the stream otherwise."""
    if place != AUTO:
        return place
    return PROCESS if master.startswith("local") else THREAD


class CompactionProcess:
    """The compaction as `flo-seg compact --every` in a child process at the lowest CPU priority.

    On one machine the micro-batches and the compaction's MERGEs share the cores. As a thread of the
    stream's own session the compaction made the changes' p99 1.3-1.9x later (docs/benchmarks.md, "Where
    the compaction runs"); as a `nice`d process the OS gives it only what the stream leaves, so the
    tables fall further behind. The child stops by itself if the stream dies (`--parent-pid`); `stop()`
    ends it and compacts once more here.
    """

    def __init__(
        self,
        spark: SparkSession,
        lake: LakeSettings,
        interval_s: float,
        *,
        niceness: int = 19,
        child_flags: Sequence[str] = (),
    ) -> None:
        self.spark, self.lake = spark, lake
        # child_flags: the stream's own global flags the child needs too (its --config file).
        command = [sys.executable, "-m", "flo_seg.cli", *child_flags, "--lake", lake.root, "compact"]
        command += ["--every", f"{interval_s:g}", "--parent-pid", str(os.getpid())]
        nice = shutil.which("nice")
        if nice is not None:
            command = [nice, "-n", str(niceness), *command]
        # The child imports what this process imports (a --py-files zip under spark-submit included).
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.process = subprocess.Popen(command, env=env)
        niced = f" (nice {niceness})" if nice else ""
        log.info("compaction every %gs in process %d%s", interval_s, self.process.pid, niced)

    def exit_code(self) -> int | None:
        """The child's exit code once it has ended, None while it runs."""
        return self.process.poll()

    def stop(self, *, final: bool = True) -> None:
        """End the child (it finishes its round, no more); with `final`, compact once more in this session."""
        self.process.terminate()
        try:
            code = self.process.wait(timeout=600)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        if code not in (0, -signal.SIGTERM):
            log.warning("the compaction process exited with %d", code)
        if final:
            compact_lake(self.spark, self.lake)


def start_compaction(
    spark: SparkSession, lake: LakeSettings, settings: StreamSettings, child_flags: Sequence[str] = ()
) -> Compactor | CompactionProcess | None:
    """The stream's compaction, where `settings.compaction` says; None when `compact_seconds` is 0."""
    if not settings.compact_seconds:
        return None
    if compaction_place(settings.compaction, spark.sparkContext.master or "") == PROCESS:
        return CompactionProcess(spark, lake, settings.compact_seconds, child_flags=child_flags)
    return Compactor(spark, lake, settings.compact_seconds).start()


def keep_compacting(
    compactor: Compactor | CompactionProcess | None, spark: SparkSession, lake: LakeSettings, interval_s: float
) -> Compactor | CompactionProcess | None:
    """The same compactor while it runs; a thread of the stream in place of a child process that ended."""
    if not isinstance(compactor, CompactionProcess) or compactor.exit_code() is None:
        return compactor
    log.warning(
        "the compaction process exited with %s; compacting in a thread of the stream instead", compactor.exit_code()
    )
    return Compactor(spark, lake, interval_s).start()


def run_stream(
    spark: SparkSession,
    lake: LakeSettings,
    settings: StreamSettings,
    *,
    duration_s: float | None = None,
    child_flags: Sequence[str] = (),
    audiences: AudienceSettings | None = None,
) -> int:
    """Run until stopped (signal), finished (available-now) or `duration_s` elapsed; returns an exit code.

    `child_flags` go to a compaction child process before its command (e.g. `--config FILE`). With
    `audiences`, the audience follower runs beside the query (after it, for an available-now run)."""
    stopping = {"signal": False}
    lost: list[str] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping the stream after the current micro-batch", signum)
        stopping["signal"] = True

    # The lease is taken before the query starts (CheckpointInUse when another stream holds the
    # checkpoint) and released only after the query has stopped.
    with checkpoint_lease(spark, settings.checkpoint, on_lost=lost.append):
        # From here on a signal must stop the query and release the lease, never kill the process.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, stop)
        query = start_stream(spark, lake, settings, BatchLogger())
        follower = None
        if audiences is not None and not audiences.available_now:
            follower = start_audiences(spark, lake, audiences)
        compactor = start_compaction(spark, lake, settings, child_flags)
        deadline = None if duration_s is None else time.monotonic() + duration_s
        try:
            while query.isActive and not stopping["signal"] and not lost:
                if deadline is not None and time.monotonic() >= deadline:
                    log.info("duration reached: stopping the stream")
                    break
                if follower is not None and not follower.isActive:
                    log.error("the audience follower stopped: stopping the stream")
                    break
                query.awaitTermination(timeout=1)
                if not stopping["signal"]:  # a Ctrl-C reaches the child too, which then ends first
                    compactor = keep_compacting(compactor, spark, lake, settings.compact_seconds)
            if audiences is not None and audiences.available_now and query.exception() is None and not lost:
                # Everything the query appended to segment_log, then done.
                follower = start_audiences(spark, lake, audiences)
                while follower.isActive and not stopping["signal"] and not lost:
                    follower.awaitTermination(timeout=1)
        finally:
            stop_between_batches(query)
            if follower is not None:
                stop_between_batches(follower)
            if compactor is not None:
                compactor.stop(final=not lost)
    for name, finished in (("stream", query), ("audience follower", follower)):
        error = None if finished is None else finished.exception()
        if error is not None:
            log.error("%s failed: %s", name, error)
            return 1
    if lost:
        log.error("stream stopped: %s", lost[0])
        return 1
    log.info("stream stopped")
    return 0
