"""Error text for people: the first meaningful line of a Spark, JVM or Python error, never its stack."""

from __future__ import annotations


def first_line(text: object, default: str) -> str:
    """The first non-blank line of `text` (stripped), or `default` when there is none."""
    return next((line.strip() for line in str(text or "").splitlines() if line.strip()), default)
