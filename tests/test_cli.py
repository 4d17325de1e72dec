"""The command line takes a person's habits: global options after the command, suggestions for typos."""

from __future__ import annotations

import io
import logging
import re
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from flo_seg import cli
from flo_seg.logs import NOISY_LIBRARIES, setup_logging
from flo_seg.progress import progress, spark_progress


@pytest.mark.parametrize(
    ("argv", "lake", "verbose"),
    [
        (["--lake", "/a", "-v", "train", "--history", "h.csv"], "/a", True),
        (["train", "--history", "h.csv", "--lake", "/b", "-v"], "/b", True),
        (["train", "--lake=/b", "--history", "h.csv"], "/b", False),
        (["--lake", "/a", "query", "SELECT 1", "--lake", "/b"], "/b", False),  # the later one wins
        (["--lake", "/a", "query", "SELECT 1", "--format", "csv"], "/a", False),  # not given after: kept
        (["query", "SELECT 1"], None, False),
    ],
)
def test_global_options_go_before_or_after_the_command(argv: list[str], lake: str | None, verbose: bool) -> None:
    args = cli.build_parser().parse_args(argv)
    assert (getattr(args, "lake", None), args.verbose) == (lake, verbose)


def test_generate_takes_no_lake(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(["generate", "--out", "h.csv", "--lake", "/a"])
    assert exited.value.code == 2
    assert "flo-seg generate: error: unrecognized arguments: --lake /a" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["tarin", "--history", "h.csv"], "flo-seg: error: argument COMMAND: invalid choice: 'tarin' "),
        (["train", "--from-lake", "--k-mx", "4"], "flo-seg train: error: unrecognized arguments: --k-mx 4 "),
        (
            ["train", "--histroy", "h.csv"],
            "flo-seg train: error: one of the arguments --history --from-lake is required",
        ),
        (
            ["query", "SELECT 1", "--format", "tabel"],
            "flo-seg query: error: argument --format: invalid choice: 'tabel'",
        ),
        (["produce", "--durations=3"], "flo-seg produce: error: unrecognized arguments: --durations=3"),
    ],
)
def test_a_typo_gets_the_nearest_name(capsys: pytest.CaptureFixture[str], argv: list[str], error: str) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(argv)
    assert exited.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith(error)
    suggestions = {
        "tarin": "(did you mean train?)",
        "--k-mx": "(did you mean --k-max for --k-mx?)",
        "--histroy": "(did you mean --history for --histroy?)",
        "tabel": "(did you mean table?)",
        "--durations=3": "(did you mean --duration for --durations?)",
    }
    assert last.endswith(next(v for k, v in suggestions.items() if k in argv))


def test_no_suggestion_when_nothing_is_close(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--history", "h.csv", "--bogus"])
    assert capsys.readouterr().err.splitlines()[-1] == "flo-seg train: error: unrecognized arguments: --bogus"


@pytest.mark.parametrize(("verbose", "level"), [(False, logging.WARNING), (True, logging.DEBUG)])
def test_library_chatter_is_off_unless_verbose(verbose: bool, level: int) -> None:
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in NOISY_LIBRARIES)]
    before = [logger.level for logger in loggers]
    try:
        setup_logging(verbose)
        assert logging.getLogger("kafka.conn").getEffectiveLevel() == level
        assert logging.getLogger("py4j.clientserver").getEffectiveLevel() == level
        assert logging.getLogger("devstack.demo").isEnabledFor(logging.INFO)
    finally:
        for logger, old in zip(loggers, before, strict=True):
            logger.setLevel(old)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_generate_draws_a_bar_on_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with caplog.at_level(logging.INFO, logger="flo_seg"):
        assert (
            cli.main(["generate", "--customers", "3000", "--chunk-size", "1000", "--out", str(tmp_path / "h.csv")]) == 0
        )
    drawn = terminal.getvalue()
    assert "generate: 100%" in drawn
    assert "3.00k/3.00k" in drawn
    assert "generated" not in caplog.text  # the bar replaces the log lines


def test_generate_logs_plain_lines_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    elsewhere = io.StringIO()
    monkeypatch.setattr(sys, "stderr", elsewhere)
    with caplog.at_level(logging.INFO, logger="flo_seg"):
        assert (
            cli.main(["generate", "--customers", "3000", "--chunk-size", "1000", "--out", str(tmp_path / "h.csv")]) == 0
        )
    assert "%|" not in elsewhere.getvalue()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("generated")]
    assert [line.split(" (")[0] for line in lines] == [f"generated {n}/3000 customers" for n in (1000, 2000, 3000)]


def test_an_open_ended_bar_counts_and_shows_its_postfix(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with progress("produce", None, "events", logging.getLogger("flo_seg")) as bar:
        bar.update(1500, "sent 1500 events", rate="750/s", event_time="2021-06-01 10:00")
    drawn = terminal.getvalue()
    assert "produce: 1.50k events" in drawn
    assert "rate=750/s, event_time=2021-06-01 10:00" in drawn


# `flo-seg train` drawing a bar of its k candidates (each candidate's line kept above it) is checked on the
# `--from-lake` retrain of tests/test_train_e2e.py's stream guard test, which runs that train anyway.


def test_a_spark_step_draws_the_running_stages_tasks_on_a_terminal(
    spark: SparkSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)

    def slow(rows: Iterable[int]) -> Iterator[int]:
        time.sleep(0.4)
        yield sum(1 for _ in rows)

    with spark_progress(spark, "train", interval_s=0.05):
        counts = spark.sparkContext.parallelize(range(60), 6).mapPartitions(slow).collect()
    assert sum(counts) == 60
    drawn = terminal.getvalue()
    assert re.search(r"train: +\d+%\|.*\| [1-6]/6 \[", drawn), drawn[-500:]
    assert "stages " in drawn


def test_a_spark_step_draws_nothing_elsewhere(spark: SparkSession, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = io.StringIO()
    monkeypatch.setattr(sys, "stderr", elsewhere)
    with spark_progress(spark, "train", interval_s=0.05):
        spark.range(10).count()
    assert elsewhere.getvalue() == ""
