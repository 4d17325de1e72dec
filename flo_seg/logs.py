"""One logging set-up for the command line and the demo: the product's INFO lines, libraries only when asked."""

from __future__ import annotations

import logging
import sys

# Chatty below WARNING: py4j logs every gateway call, kafka-python every connection and offset reset.
NOISY_LIBRARIES = ("py4j", "kafka")


def setup_logging(verbose: bool) -> None:
    """INFO (DEBUG with `verbose`) to stderr; the noisy libraries at WARNING unless `verbose`."""
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger().setLevel(level)  # also when a host (a test runner, a notebook) set up handlers first
    for name in NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
