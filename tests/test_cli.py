"""The command line takes a person's habits: global options after the command, suggestions for typos."""

from __future__ import annotations

import logging

import pytest

from flo_seg import cli
from flo_seg.logs import NOISY_LIBRARIES, setup_logging


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
    assert (args.lake, args.verbose) == (lake, verbose)


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
        assert logging.getLogger("flo_seg.demo").isEnabledFor(logging.INFO)
    finally:
        for logger, old in zip(loggers, before, strict=True):
            logger.setLevel(old)
