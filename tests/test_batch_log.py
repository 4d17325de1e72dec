"""The stream's one log line per micro-batch, from the handler's counts and the query's progress."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from streaming.job import BatchLogger, BatchMetrics


def _progress(batch_id: int) -> SimpleNamespace:
    # The stream's two sources: Kafka, and its own segment_log coming back (not events: not counted).
    sources = [
        SimpleNamespace(description="KafkaV2[Subscribe[flo.orders]]", numInputRows=1_000),
        SimpleNamespace(description="DeltaSource[file:/lake/segment_log]", numInputRows=300),
    ]
    return SimpleNamespace(
        progress=SimpleNamespace(batchId=batch_id, numInputRows=1_300, batchDuration=2_000, sources=sources)
    )


def test_batch_line_tells_re_sends_from_conflicting_duplicates(caplog: pytest.LogCaptureFixture) -> None:
    logger = BatchLogger()
    logger.record(
        BatchMetrics(
            batch_id=7, valid=988, quarantined=4, resent=6, conflicting=2, customers_updated=800, model_version="v1"
        )
    )
    with caplog.at_level(logging.INFO, logger="streaming.job"):
        logger.onQueryProgress(_progress(7))
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(
        "batch 7: events in 1000, valid 988, quarantined 4, duplicates dropped 6, conflicting duplicates dropped 2, "
        "customers updated 800"
    )
    assert line.endswith("2.00s, 500 events/s")


def test_progress_of_a_batch_the_handler_did_not_record_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="streaming.job"):
        BatchLogger().onQueryProgress(_progress(3))
    assert caplog.records == []
