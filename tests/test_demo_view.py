"""The demo's live view: one summary line per interval of segment changes, not a line per change."""

from __future__ import annotations

from devstack.demo import LiveTally


def test_an_interval_reads_as_one_line_of_its_commonest_moves_and_lags() -> None:
    tally = LiveTally()
    for previous, segment, lag in [
        (None, "champions", 2.0),
        ("at_risk", "champions", 4.0),
        ("at_risk", "champions", 9.0),
        ("new", "loyal", None),
        (None, "champions", 3.0),
        ("loyal", "hibernating", 1.0),
        ("loyal", "hibernating", 5.0),
        ("promising", "loyal", 6.0),
    ]:
        tally.add(previous, segment, lag)

    assert tally.line(5.0) == (
        "  +8 changes in 5 s (total 8): (new) → champions 2, at_risk → champions 2, loyal → hibernating 2, "
        "2 more moves; median 4.0 s after the order, max 9.0 s"
    )


def test_the_next_interval_counts_only_its_own_changes_and_an_empty_one_prints_nothing() -> None:
    tally = LiveTally()
    tally.add(None, "champions", 1.0)
    assert (
        tally.line(5.0) == "  +1 changes in 5 s (total 1): (new) → champions 1; median 1.0 s after the order, max 1.0 s"
    )
    assert tally.line(5.0) is None

    tally.add("champions", "loyal", None)
    assert tally.line(4.6) == "  +1 changes in 5 s (total 2): champions → loyal 1"
