"""Progress on long work: a bar when stderr is a terminal, the same progress as plain log lines when not."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm


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


@contextmanager
def progress(desc: str, total: int | None, unit: str, log: logging.Logger) -> Iterator[Progress]:
    """A tqdm bar on a terminal (log lines go above it); elsewhere each update is one INFO line of `log`."""
    if not sys.stderr.isatty():
        yield Progress(None, log)
        return
    bar_args = {"total": total, "desc": desc, "unit": f" {unit}", "unit_scale": True, "file": sys.stderr}
    with logging_redirect_tqdm(), tqdm(**bar_args) as bar:
        yield Progress(bar, log)
