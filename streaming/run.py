"""The `flo-seg stream` edge: start the query and its compaction, log, stop cleanly on Ctrl-C / SIGTERM or after a
duration (then compact once more, so the tables hold everything the stream did)."""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path
from types import FrameType

from pyspark.sql import SparkSession
from pyspark.sql.streaming import StreamingQuery

from batch.compact import Compactor
from flo_seg.settings import LakeSettings
from streaming.job import BatchLogger, StreamSettings, start_stream
from streaming.lease import checkpoint_lease

log = logging.getLogger(__name__)


def default_checkpoint(lake: LakeSettings, query_name: str) -> str:
    """`checkpoints/<query>` beside the lake folder (or under the lake URI's parent)."""
    root = lake.root.rstrip("/")
    if "://" in root:
        return f"{root.rsplit('/', 1)[0]}/checkpoints/{query_name}"
    return str(Path(root).resolve().parent / "checkpoints" / query_name)


def read_kafka_options(pairs: list[str], options_file: str | None) -> dict[str, str]:
    """Extra Kafka client settings (TLS/SASL...) from KEY=VALUE flags and a properties file, never from code."""
    options: dict[str, str] = {}
    lines = Path(options_file).read_text().splitlines() if options_file else []
    for raw in [*lines, *pairs]:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise ValueError(f"Kafka option {line!r} is not KEY=VALUE")
        key, value = (part.strip() for part in line.split("=", 1))
        options[key if key.startswith("kafka.") else f"kafka.{key}"] = value
    return options


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


def run_stream(
    spark: SparkSession, lake: LakeSettings, settings: StreamSettings, *, duration_s: float | None = None
) -> int:
    """Run until stopped (signal), finished (available-now) or `duration_s` elapsed; returns an exit code."""
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
        compactor = Compactor(spark, lake, settings.compact_seconds).start()
        deadline = None if duration_s is None else time.monotonic() + duration_s
        try:
            while query.isActive and not stopping["signal"] and not lost:
                if deadline is not None and time.monotonic() >= deadline:
                    log.info("duration reached: stopping the stream")
                    break
                query.awaitTermination(timeout=1)
        finally:
            stop_between_batches(query)
            compactor.stop(final=not lost)
    error = query.exception()
    if error is not None:
        log.error("stream failed: %s", error)
        return 1
    if lost:
        log.error("stream stopped: %s", lost[0])
        return 1
    log.info("stream stopped")
    return 0
