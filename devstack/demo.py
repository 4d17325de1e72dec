"""`make demo`: the whole product on the built-in data, end to end, on this machine.

generate → train → stream (background) → produce a replay for about a minute while printing, every few
seconds, a summary of the live segment changes → stop the stream → final segment sizes → the migration
matrix → audiences and lifetime value → one drift check (`flo-seg monitor --once`) → report (the broker
stays up).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition

from flo_seg.logs import setup_logging
from flo_seg.settings import load_settings

log = logging.getLogger("devstack.demo")


@dataclass(frozen=True, kw_only=True)
class DemoSettings:
    """Sizes and places of the demo run."""

    workdir: Path
    customers: int
    produce_seconds: float
    rate: float
    bootstrap: str
    seed: int = 42
    event_seconds: float | None = None  # event time between orders; None: 1/rate, event time runs live

    @property
    def event_gap(self) -> float:
        """Seconds of event time from one order to the next."""
        return self.event_seconds if self.event_seconds is not None else 1.0 / self.rate

    @property
    def lake(self) -> Path:
        """The demo's lake (recreated each run)."""
        return self.workdir / "lake"

    @property
    def history(self) -> Path:
        """The generated history CSV (kept between runs)."""
        return self.workdir / "data" / f"history-{self.customers}-{self.seed}.csv"


def flo_seg(settings: DemoSettings, *args: str) -> list[str]:
    """A flo-seg command line against the demo lake."""
    return [sys.executable, "-m", "flo_seg.cli", "--lake", str(settings.lake), *args]


def run(cmd: list[str]) -> None:
    """Run a step in the foreground, failing the demo if it fails."""
    log.info("$ %s", " ".join(cmd[2:] if cmd[:2] == [sys.executable, "-m"] else cmd))
    subprocess.run(cmd, check=True)


@dataclass
class LiveTally:
    """What the live view says: the segment changes seen since its last line, summed by move, and how long
    after their customer's order they were published. `line` gives one summary and starts a new interval,
    so a few hundred changes a second read as one line a few seconds instead of a scroll of single changes."""

    total: int = 0
    moves: Counter[str] = field(default_factory=Counter)
    lags: list[float] = field(default_factory=list)

    def add(self, previous: str | None, segment: str, lag: float | None) -> None:
        self.total += 1
        self.moves[f"{previous or '(new)'} → {segment}"] += 1
        if lag is not None:
            self.lags.append(lag)

    def line(self, seconds: float, top: int = 3) -> str | None:
        """The interval's summary (None when it saw no change), then a fresh interval."""
        count = sum(self.moves.values())
        if not count:
            return None
        moves = ", ".join(f"{move} {n}" for move, n in self.moves.most_common(top))
        if len(self.moves) > top:
            moves += f", {len(self.moves) - top} more moves"
        lag = ""
        if self.lags:
            lags = sorted(self.lags)
            lag = f"; median {lags[len(lags) // 2]:.1f} s after the order, max {lags[-1]:.1f} s"
        self.moves.clear()
        self.lags.clear()
        return f"  +{count} changes in {seconds:.0f} s (total {self.total}): {moves}{lag}"


def watch_changes(
    bootstrap: str, stop: threading.Event, seen: Counter[str], lags: list[float], every: float = 5.0
) -> None:
    """Print, every few seconds, a summary of the segment changes that arrived on flo.segment-changes since
    the last one (from the moment the demo starts), with how long after their customer's latest order (both
    Kafka timestamps) they were published."""
    # No group: nothing to commit (kafka-python warns about auto-commit without a group unless it is off).
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, consumer_timeout_ms=500, group_id=None, enable_auto_commit=False
    )
    partitions = [
        TopicPartition(topic, p)
        for topic in ("flo.orders", "flo.segment-changes")
        for p in consumer.partitions_for_topic(topic) or []
    ]
    consumer.assign(partitions)
    consumer.seek_to_end()
    ordered_at: dict[bytes, int] = {}
    tally = LiveTally()
    printed_at = time.monotonic()

    def print_due(force: bool = False) -> None:
        nonlocal printed_at
        now = time.monotonic()
        if force or now - printed_at >= every:
            line = tally.line(now - printed_at)
            printed_at = now
            if line:
                print(line, flush=True)

    while not stop.is_set():
        for message in consumer:
            if message.topic == "flo.orders":
                if message.key is not None:
                    ordered_at[message.key] = message.timestamp
                continue
            change = json.loads(message.value)
            seen[change["segment"]] += 1
            order_ms = ordered_at.get(change["master_id"].encode())
            lag = None if order_ms is None else (message.timestamp - order_ms) / 1000
            if lag is not None:
                lags.append(lag)
            tally.add(change.get("previous_segment"), change["segment"], lag)
            print_due()
            if stop.is_set():
                break
        print_due()
    print_due(force=True)
    consumer.close()


def main(argv: list[str] | None = None) -> int:
    """Run the demo; every step prints what it does."""
    parser = argparse.ArgumentParser(prog="python -m devstack.demo", description=__doc__)
    parser.add_argument("--workdir", default="demo", help="folder for the demo's data, lake and report")
    parser.add_argument("--customers", type=int, default=50_000, help="generated customers (default 50000)")
    parser.add_argument("--produce-seconds", type=float, default=60.0, help="how long to produce (default 60)")
    parser.add_argument("--rate", type=float, default=500.0, help="events per second (default 500)")
    parser.add_argument(
        "--event-seconds",
        type=float,
        default=None,
        help="event time from one order to the next (default 1/rate: live orders, event time runs with the "
        "clock; e.g. 120 replays a month a minute, and every new event day is an aging sweep)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, kafka-python's included")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    settings = DemoSettings(
        workdir=Path(args.workdir).resolve(),
        customers=args.customers,
        produce_seconds=args.produce_seconds,
        rate=args.rate,
        bootstrap=load_settings().settings.kafka.bootstrap_servers,
        event_seconds=args.event_seconds,
    )
    started = time.monotonic()
    if not settings.history.exists():
        run(
            flo_seg(
                settings,
                "generate",
                "--customers",
                str(settings.customers),
                "--seed",
                str(settings.seed),
                "--out",
                str(settings.history),
            )
        )
    shutil.rmtree(settings.lake, ignore_errors=True)
    shutil.rmtree(settings.workdir / "checkpoints", ignore_errors=True)
    run(flo_seg(settings, "train", "--history", str(settings.history)))

    stream_log = settings.workdir / "stream.log"
    log.info("starting the stream in the background (log: %s)", stream_log)
    with stream_log.open("w") as out:
        stream = subprocess.Popen(
            flo_seg(
                settings,
                "stream",
                "--starting-offsets",
                "latest",
                "--bootstrap-servers",
                settings.bootstrap,
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_log(stream_log, "stream flo-seg-stream started", stream, timeout=180)
        seen: Counter[str] = Counter()
        lags: list[float] = []
        stop = threading.Event()
        watcher = threading.Thread(target=watch_changes, args=(settings.bootstrap, stop, seen, lags), daemon=True)
        watcher.start()
        time.sleep(3)  # the first (empty) trigger pins the 'latest' offsets before anything is produced
        produced = subprocess.run(
            flo_seg(
                settings,
                "produce",
                "--duration",
                str(settings.produce_seconds),
                "--rate",
                str(settings.rate),
                "--duplicate-share",
                "0.02",
                "--malformed-share",
                "0.01",
                "--late-share",
                "0.05",
                "--event-seconds",
                str(settings.event_gap),
                "--bootstrap-servers",
                settings.bootstrap,
            ),
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        ).stdout
        print(produced, end="")
        sent = int(re.search(r"sent (\d+) events", produced).group(1))  # type: ignore[union-attr]
        log.info("producer sent %d events; waiting for the stream to consume them all", sent)
        wait_until_consumed(stream_log, sent, stream, timeout=600)
        stop.set()
        watcher.join(timeout=10)
        print(
            f"\nsegment changes seen live: {sum(seen.values())} " + ", ".join(f"{k} {v}" for k, v in seen.most_common())
        )
        if lags:
            lags.sort()
            print(
                f"published after their customer's order: median {lags[len(lags) // 2]:.1f} s, "
                f"95th percentile {lags[int(len(lags) * 0.95)]:.1f} s, max {lags[-1]:.1f} s"
            )
    finally:
        stream.send_signal(signal.SIGTERM)
        try:
            stream.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stream.kill()
    tail = stream_log.read_text().splitlines()
    print("\nlast micro-batches:")
    for line in [x for x in tail if " batch " in x][-3:]:
        print("  " + line)
    run(
        flo_seg(
            settings,
            "query",
            "SELECT segment, count(*) AS customers, round(avg(recency)) AS avg_recency, "
            "round(avg(monetary)) AS avg_monetary FROM customer_segments GROUP BY segment ORDER BY customers DESC",
        )
    )
    run(
        flo_seg(
            settings,
            "query",
            "SELECT reason, count(*) AS events FROM quarantine GROUP BY reason ORDER BY 2 DESC",
        )
    )
    run(flo_seg(settings, "migrations"))  # who moved where during the run
    run(
        flo_seg(
            settings,
            "query",
            "SELECT audience, change, count(*) AS customers FROM audience_changes WHERE batch_id >= 0 "
            "GROUP BY audience, change ORDER BY audience, change",
        )
    )  # who joined or left an audience during the run
    run(
        flo_seg(
            settings,
            "query",
            # How long after the segment row it follows (the stream's scored_at) each change was recorded.
            "SELECT count(*) AS audience_changes, round(approx_percentile_cont(delay, 0.5), 1) AS median_s, "
            "round(approx_percentile_cont(delay, 0.95), 1) AS p95_s, round(max(delay), 1) AS max_s FROM ("
            "SELECT a.change_id, extract(epoch FROM a.changed_at) - extract(epoch FROM max(s.scored_at)) AS delay "
            "FROM audience_changes a JOIN segment_log s ON s.master_id = a.master_id AND s.scored_at <= a.changed_at "
            "WHERE a.batch_id >= 0 GROUP BY a.change_id, a.changed_at)",
        )
    )
    run(flo_seg(settings, "audience", "list"))
    run(
        flo_seg(
            settings,
            "query",
            "SELECT segment, round(avg(p_alive), 4) AS p_alive, round(avg(expected_orders_90d), 2) AS orders_90d, "
            "round(avg(expected_value_12m)) AS value_12m FROM customer_segments "
            "GROUP BY segment ORDER BY value_12m DESC",
        )
    )
    # The drift check `flo-seg monitor` runs beside a stream, once over this run's orders. The demo replays
    # weeks of orders in a minute for most customers, so the segment shares are expected to move.
    run(flo_seg(settings, "monitor", "--once"))
    run(flo_seg(settings, "report", "--out", str(settings.workdir / "report")))
    print(
        f"\ndemo finished in {time.monotonic() - started:.0f}s. Report: {settings.workdir / 'report' / 'report.html'}"
    )
    print("The Kafka broker is still running: `make stack-down` stops it.")
    return 0


def wait_until_consumed(path: Path, sent: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait until the stream's batch log lines account for every event sent (duplicates included)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        consumed = sum(int(n) for n in re.findall(r"events in (\d+)", path.read_text()))
        if consumed >= sent:
            return
        if proc.poll() is not None:
            raise SystemExit(f"the stream exited early; see {path}")
        time.sleep(2)
    log.warning("the stream had not consumed all %d events after %.0fs; stopping it anyway", sent, timeout)


def wait_for_log(path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait until a background process logs `text`; fail with its log when it dies or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text():
            return
        if proc.poll() is not None:
            raise SystemExit(f"the stream exited early; see {path}:\n{path.read_text()[-3000:]}")
        time.sleep(1)
    raise SystemExit(f"the stream did not start within {timeout:.0f}s; see {path}")


if __name__ == "__main__":
    sys.exit(main())
