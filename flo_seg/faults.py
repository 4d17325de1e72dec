"""Fault injection for the crash-safety tests: SIGKILL the process group at a chosen point."""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)


def crash_point(variable: str, at: int | str) -> None:
    """Kill this process group (as `kill -9` would) when the environment variable `variable` equals `at`."""
    if os.environ.get(variable) == str(at):
        log.warning("%s=%s: killing the process group now", variable, at)
        os.killpg(os.getpgid(0), signal.SIGKILL)
