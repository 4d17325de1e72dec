"""Stopping a long-running loop cleanly: SIGINT / SIGTERM end it after its current round."""

from __future__ import annotations

import logging
import signal
import threading


def stop_requested(what: str, log: logging.Logger) -> threading.Event:
    """An event that SIGINT or SIGTERM sets, logging `signal N: stopping <what>`; call from the main thread."""
    stopping = threading.Event()

    def stop(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping %s", signum, what)
        stopping.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    return stopping
