"""`flo-seg`: one command line for generating data, training, scoring, reporting and querying."""

from __future__ import annotations

import argparse
import datetime as dt
import difflib
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from batch.maintain import DEFAULT_RETAIN_HOURS, MAINTAINED_TABLES, run_maintenance
from flo_seg.logs import setup_logging
from flo_seg.settings import LakeSettings, TrainSettings, default_lake, default_spark_settings
from streaming.events import DEFAULT_DEDUPE_WINDOW

log = logging.getLogger("flo_seg")


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a yyyy-mm-dd date: {text!r}") from exc


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 0.5:
        raise argparse.ArgumentTypeError(f"must be a share in [0, 0.5), got {value}")
    return value


_INTERVAL = re.compile(r"(\d+) *(second|minute|hour|day)s?")


def _interval(text: str) -> str:
    """A positive duration such as `24 hours` or `30 minutes`, in the form Spark's watermark takes."""
    match = _INTERVAL.fullmatch(text.strip().lower())
    if match is None or int(match[1]) <= 0:
        raise argparse.ArgumentTypeError(f"expected a duration like '24 hours' or '30 minutes', got {text!r}")
    return f"{int(match[1])} {match[2]}s"


_INVALID_CHOICE = re.compile(r"invalid choice: '(?P<given>[^']*)' \(choose from (?P<choices>.*)\)")


class _Parser(argparse.ArgumentParser):
    """argparse that suggests the nearest command, choice or flag when one is mistyped."""

    _given: tuple[str, ...] = ()

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self._given = tuple(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            # The subcommand's own parser knows its flags, and its usage line is the one to show.
            command = self._commands().get(getattr(parsed, "command", None) or "", self)
            command.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def error(self, message: str) -> NoReturn:
        match = _INVALID_CHOICE.search(message)
        if match:
            message += _did_you_mean(match["given"], [c.strip("'\" ") for c in match["choices"].split(",")])
        if not self._commands():  # a command's parser: every flag it was given should be one of its own
            flags = list(self._option_string_actions)
            for token in self._given:
                name = token.split("=", 1)[0]
                if name.startswith("--") and not any(flag.startswith(name) for flag in flags):
                    message += _did_you_mean(name, flags, given=name)
        super().error(message)

    def _commands(self) -> dict[str, argparse.ArgumentParser]:
        return {
            name: sub
            for action in self._actions
            if isinstance(action, argparse._SubParsersAction)
            for name, sub in action.choices.items()
        }


def _did_you_mean(word: str, candidates: Sequence[str], given: str | None = None) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.75)
    if not close:
        return ""
    return f" (did you mean {close[0]} for {given}?)" if given else f" (did you mean {close[0]}?)"


def build_parser() -> argparse.ArgumentParser:
    """All subcommands and their flags; `--help` works on each."""
    parser = _Parser(
        prog="flo-seg",
        description="FLO customer segmentation: batch RFM + clustering on Spark, Delta tables under a lake.",
    )
    lake_help = "lake root for the Delta tables (env FLO_LAKE, default ./lake)"
    parser.add_argument("--lake", default=None, help=lake_help)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    # The global options are accepted after the command too (`flo-seg train --history X --lake Y`); there
    # they only override what was given before it.
    verbose = _Parser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    lake = _Parser(add_help=False, parents=[verbose])
    lake.add_argument("--lake", default=argparse.SUPPRESS, help=lake_help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[verbose if name == "generate" else lake], **kwargs)

    gen = command("generate", help="write a synthetic history CSV calibrated to the FLO data")
    gen.add_argument("--customers", type=_positive_int, default=50_000, help="rows to write (default 50000)")
    gen.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    gen.add_argument("--out", required=True, help="CSV path to write")
    gen.add_argument("--chunk-size", type=_positive_int, default=250_000, help="rows per chunk held in memory")

    train = command("train", help="validate history, train a model version, segment every customer")
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--history", help="customer history CSV (the 12 FLO columns)")
    source.add_argument("--from-lake", action="store_true", help="retrain on the lake's current customer_state")
    train.add_argument(
        "--as-of",
        type=_date,
        help="analysis date (default: latest last order + 2 days); history dated after it is quarantined",
    )
    train.add_argument(
        "--replace-state",
        action="store_true",
        help="with --history: rebuild customer_state from the CSV even if the stream has added orders to it "
        "(they are discarded; start the stream on a new checkpoint afterwards)",
    )
    chosen = TrainSettings()
    train.add_argument("--algorithm", choices=("kmeans", "bisecting", "gmm"), default=chosen.algorithm)
    train.add_argument("--k", type=int, help="force the number of segments instead of choosing by silhouette")
    train.add_argument("--k-min", type=int, default=chosen.k_min, help=f"smallest k tried (default {chosen.k_min})")
    train.add_argument("--k-max", type=int, default=chosen.k_max, help=f"largest k tried (default {chosen.k_max})")
    train.add_argument(
        "--min-segment-share",
        type=_share,
        default=chosen.min_segment_share,
        help="a k whose smallest segment holds less than this share of the sampled customers is refused "
        f"(default {chosen.min_segment_share})",
    )
    train.add_argument("--seed", type=int, default=chosen.seed, help=f"clustering seed (default {chosen.seed})")
    train.add_argument(
        "--sample",
        "--selection-sample",
        dest="sample",
        type=_positive_int,
        default=chosen.sample,
        help=f"customers sampled to choose k and fit the model on; every customer is scored (default {chosen.sample})",
    )
    train.add_argument(
        "--max-iter",
        type=_positive_int,
        default=chosen.max_iter,
        help=f"clustering iterations at most (default {chosen.max_iter})",
    )
    train.add_argument(
        "--restarts",
        type=_positive_int,
        default=chosen.restarts,
        help=f"fits from different starts per k, lowest cost kept (default {chosen.restarts})",
    )

    rescore = command("rescore", help="apply the current model to every customer (recency ages)")
    rescore.add_argument("--as-of", type=_date, help="analysis date (default: latest last order + 2 days)")

    report = command("report", help="write the HTML + Markdown report with plots")
    report.add_argument("--out", default="reports", help="output folder (default ./reports)")

    query = command(
        "query",
        help="run one read-only SQL query over the lake's tables (registered by name)",
        description="Print the result of one read-only SQL query over the lake's Delta tables, each registered "
        "under its own name. Statements that write, drop, set or read anything else are refused unrun. The native "
        "engine (DataFusion through delta-rs) answers in about a second without a JVM; --engine spark runs Spark "
        "SQL in a Spark session instead (a lake only Spark can open, or Spark's SQL dialect).",
    )
    query.add_argument("sql", help='e.g. "SELECT segment, count(*) FROM customer_segments GROUP BY segment"')
    query.add_argument(
        "--engine",
        choices=("native", "spark"),
        default="native",
        help="native: DataFusion SQL through delta-rs, no JVM (default); spark: Spark SQL in a Spark session",
    )
    query.add_argument("--format", choices=("table", "csv", "json"), default="table")
    query.add_argument("--limit", type=_positive_int, default=1000, help="rows printed at most (default 1000)")
    maintain = command(
        "maintain",
        help="OPTIMIZE and VACUUM the tables the stream writes (run it regularly, e.g. daily)",
        description="Compact the small files every micro-batch adds and rewrite files whose deletion vectors "
        "hide many rows (OPTIMIZE), then delete data files older than the retention (VACUUM). Safe while the "
        "stream runs.",
    )
    maintain.add_argument(
        "--table",
        action="append",
        dest="tables",
        choices=MAINTAINED_TABLES,
        help="a table to maintain (repeatable; default all of them)",
    )
    maintain.add_argument(
        "--retain-hours",
        type=float,
        default=DEFAULT_RETAIN_HOURS,
        help=f"VACUUM keeps files newer versions or this many hours need (default {DEFAULT_RETAIN_HOURS:g})",
    )
    maintain.add_argument("--no-vacuum", action="store_true", help="only OPTIMIZE")

    stream = command("stream", help="consume order events from Kafka and keep segments current")
    stream.add_argument("--bootstrap-servers", default=None, help="Kafka (env FLO_KAFKA_BOOTSTRAP, 127.0.0.1:9092)")
    stream.add_argument("--topic", default="flo.orders", help="order events topic (default flo.orders)")
    stream.add_argument(
        "--changes-topic",
        default="flo.segment-changes",
        help="segment changes topic (default flo.segment-changes; '' to not publish)",
    )
    stream.add_argument(
        "--checkpoint", default=None, help="checkpoint location (default ./checkpoints beside the lake)"
    )
    stream.add_argument("--query-name", default="flo-seg-stream", help="streaming query name")
    stream.add_argument(
        "--trigger-seconds",
        type=float,
        default=0.0,
        help="micro-batch interval (default 0: the next batch starts as soon as the last one ended)",
    )
    stream.add_argument("--available-now", action="store_true", help="process what the topic holds, then stop")
    stream.add_argument(
        "--max-offsets-per-trigger",
        type=_positive_int,
        default=200_000,
        help="events per micro-batch at most (default 200000)",
    )
    stream.add_argument("--starting-offsets", default="earliest", help="earliest | latest | JSON, first start only")
    stream.add_argument(
        "--aging-days",
        type=_positive_int,
        default=7,
        help="re-score customers whose segment is older than this in event time (default 7)",
    )
    stream.add_argument(
        "--dedupe-window",
        type=_interval,
        default=DEFAULT_DEDUPE_WINDOW,
        help=f"a re-sent event_id is dropped within this much stream time of its first copy "
        f"(default {DEFAULT_DEDUPE_WINDOW!r})",
    )
    stream.add_argument(
        "--compact-seconds",
        type=_non_negative,
        default=10.0,
        help="bring customer_state and customer_segments current from the stream's logs this often (default 10; "
        "0: not in this process, run `flo-seg compact --every N` beside the stream instead)",
    )
    stream.add_argument(
        "--compaction",
        choices=("auto", "thread", "process"),
        default="auto",
        help="where the compaction runs: a thread of the stream's session, or `flo-seg compact --every` in "
        "a child process at the lowest CPU priority; auto (default): the process under a local master, "
        "the thread on a cluster",
    )
    stream.add_argument(
        "--state-partitions",
        type=_positive_int,
        default=None,
        help="state store partitions, fixed by a new checkpoint (default: the cores Spark has)",
    )
    stream.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    _kafka_option_flags(stream)

    compact = command(
        "compact",
        help="bring customer_state and customer_segments current from the stream's logs (the stream does it too)",
    )
    compact.add_argument(
        "--every",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="keep compacting at this interval until stopped (Ctrl-C / SIGTERM), then once more; "
        "default: once. Beside `flo-seg stream --compact-seconds 0`, in a process (or job) of its own",
    )
    compact.add_argument(
        "--parent-pid",
        type=_positive_int,
        default=None,
        metavar="PID",
        help="with --every: also stop once process PID (the stream that started this one) has exited; a signal "
        "then ends the current round only, since that stream compacts once more itself",
    )

    produce = command("produce", help="send order events for the lake's customers to Kafka")
    produce.add_argument("--bootstrap-servers", default=None, help="Kafka (env FLO_KAFKA_BOOTSTRAP, 127.0.0.1:9092)")
    produce.add_argument("--topic", default="flo.orders", help="topic (default flo.orders)")
    produce.add_argument("--events", type=_positive_int, default=None, help="stop after this many events")
    produce.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    produce.add_argument("--rate", type=float, default=None, help="events per second (default: as fast as possible)")
    produce.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    produce.add_argument("--new-customer-share", type=float, default=0.05, help="share of brand-new customers")
    produce.add_argument("--duplicate-share", type=float, default=0.0, help="share re-sent with the same event_id")
    produce.add_argument("--malformed-share", type=float, default=0.0, help="share of invalid events")
    produce.add_argument("--late-share", type=float, default=0.0, help="share of late, out-of-order events")
    produce.add_argument(
        "--event-seconds",
        type=float,
        default=60.0,
        help="mean event-time gap between orders, in simulated seconds (default 60)",
    )
    produce.add_argument(
        "--customers-sample",
        type=_positive_int,
        default=None,
        help="draw from a sample of this many customers (default all)",
    )
    _kafka_option_flags(produce)
    return parser


def _kafka_option_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kafka-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra Kafka client setting, e.g. security.protocol=SASL_SSL (repeatable)",
    )
    parser.add_argument(
        "--kafka-options-file",
        default=None,
        help="properties file of Kafka client settings (keeps secrets out of the command line)",
    )


def _bootstrap(args: argparse.Namespace) -> str:
    return args.bootstrap_servers or os.environ.get("FLO_KAFKA_BOOTSTRAP") or "127.0.0.1:9092"


def _lake(args: argparse.Namespace) -> LakeSettings:
    """The lake from --lake or the environment; a local path that is a file is refused before any work."""
    if args.lake and "://" not in args.lake:
        # Executors resolve relative paths against their own working directory: pass absolute ones.
        lake = LakeSettings(root=str(Path(args.lake).resolve()))
    else:
        lake = LakeSettings(root=args.lake or default_lake())
    if "://" not in lake.root and Path(lake.root).exists() and not Path(lake.root).is_dir():
        raise NotADirectoryError(f"lake {lake.root} is a file, not a folder; pass --lake DIR (or set FLO_LAKE)")
    return lake


def cmd_generate(args: argparse.Namespace) -> int:
    """Write the built-in synthetic history."""
    from batch.generate import write_history_csv
    from flo_seg.progress import progress

    started = time.monotonic()
    with progress("generate", args.customers, "customers", log) as bar:

        def report(done: int, total: int) -> None:
            rate = done / max(time.monotonic() - started, 1e-9)
            bar.update(done, f"generated {done}/{total} customers ({rate:.0f} rows/s)")

        rows = write_history_csv(
            args.out, customers=args.customers, seed=args.seed, chunk_size=args.chunk_size, progress=report
        )
    print(f"wrote {rows} customers to {args.out} in {time.monotonic() - started:.1f}s")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train, publish and segment; print the run summary."""
    from batch.segments import ARCHETYPES
    from batch.train import run_train
    from flo_seg.spark import build_session

    if args.replace_state and not args.history:
        raise SystemExit("flo-seg train: --replace-state goes with --history")
    lake = _lake(args)
    settings = TrainSettings(
        algorithm=args.algorithm,
        k=args.k,
        k_min=args.k_min,
        k_max=args.k_max,
        min_segment_share=args.min_segment_share,
        seed=args.seed,
        sample=args.sample,
        max_iter=args.max_iter,
        restarts=args.restarts,
    )
    if settings.k is not None and not 2 <= settings.k <= len(ARCHETYPES):
        raise SystemExit(f"flo-seg train: --k must be between 2 and {len(ARCHETYPES)}")
    if not 2 <= settings.k_min <= settings.k_max <= len(ARCHETYPES):
        raise SystemExit(
            f"flo-seg train: need 2 <= --k-min <= --k-max <= {len(ARCHETYPES)}, got {settings.k_min}..{settings.k_max}"
        )
    spark = build_session(default_spark_settings("flo-seg-train"))
    summary = run_train(
        spark, lake, settings, history_path=args.history, as_of=args.as_of, replace_state=args.replace_state
    )
    if args.history:
        print(
            f"rows read {summary.rows_read}, kept {summary.rows_kept}, quarantined {sum(summary.quarantined.values())}"
        )
        for reason, n in summary.quarantined.items():
            print(f"  quarantined {reason}: {n}")
    print(
        f"model {summary.model_version}: {args.algorithm}, k={summary.k}, silhouette={summary.silhouette}, "
        f"as of {summary.as_of}, tables under {lake.root}"
    )
    for name, n in sorted(summary.segments.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<28} {n:>9}")
    return 0


def cmd_rescore(args: argparse.Namespace) -> int:
    """Re-score all customers with the current model."""
    from batch.rescore import run_rescore
    from flo_seg.spark import build_session

    spark = build_session(default_spark_settings("flo-seg-rescore"))
    sizes = run_rescore(spark, _lake(args), as_of=args.as_of)
    for name, n in sorted(sizes.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<28} {n:>9}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write the report files and print their paths."""
    from batch.report import run_report
    from flo_seg.spark import build_session

    spark = build_session(default_spark_settings("flo-seg-report"))
    for path in run_report(spark, _lake(args), args.out):
        print(f"wrote {path}")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    """Print a SQL result."""
    if args.engine == "native":
        from batch.query_native import run_native_query

        run_native_query(_lake(args), args.sql, fmt=args.format, limit=args.limit)
        return 0
    from batch.query import run_query
    from flo_seg.spark import build_session

    spark = build_session(default_spark_settings("flo-seg-query"))
    run_query(spark, _lake(args), args.sql, fmt=args.format, limit=args.limit)
    return 0


def cmd_maintain(args: argparse.Namespace) -> int:
    """OPTIMIZE and VACUUM the stream's tables; one line per table."""
    from flo_seg.spark import build_session

    spark = build_session(default_spark_settings("flo-seg-maintain"))
    results = run_maintenance(
        spark,
        _lake(args),
        tables=tuple(args.tables or MAINTAINED_TABLES),
        retain_hours=None if args.no_vacuum else args.retain_hours,
    )
    for r in results:
        vacuum = f", VACUUM {r.vacuum_seconds:.1f}s" if r.vacuum_seconds is not None else ""
        optimize = f"OPTIMIZE {r.optimize_seconds:.1f}s"
        print(f"  {r.table:<20} files {r.files_before:>6} -> {r.files_after:<6} {optimize}{vacuum}")
    return 0


def cmd_stream(args: argparse.Namespace) -> int:
    """Run the streaming job."""
    from flo_seg.spark import build_session
    from streaming.job import StreamSettings
    from streaming.run import default_checkpoint, read_kafka_options, run_stream

    lake = _lake(args)
    settings = StreamSettings(
        bootstrap_servers=_bootstrap(args),
        checkpoint=args.checkpoint or default_checkpoint(lake, args.query_name),
        topic=args.topic,
        changes_topic=args.changes_topic or None,
        query_name=args.query_name,
        trigger_seconds=args.trigger_seconds,
        available_now=args.available_now,
        max_offsets_per_trigger=args.max_offsets_per_trigger,
        starting_offsets=args.starting_offsets,
        aging_days=args.aging_days,
        dedupe_window=args.dedupe_window,
        compact_seconds=args.compact_seconds,
        compaction=args.compaction,
        state_partitions=args.state_partitions,
        kafka_options=read_kafka_options(args.kafka_option, args.kafka_options_file),
    )
    # FAIR: the background compaction gets its own pool, so it does not queue the micro-batches' jobs.
    spark = build_session(default_spark_settings("flo-seg-stream"), {"spark.scheduler.mode": "FAIR"})
    return run_stream(spark, lake, settings, duration_s=args.duration)


def cmd_compact(args: argparse.Namespace) -> int:
    """Compact the stream's logs into the tables users read; one line per log."""
    from batch.compact import compact_lake, compact_until_stopped
    from flo_seg.spark import build_session

    if args.parent_pid is not None and args.every is None:
        raise ValueError("--parent-pid only applies with --every (a compaction that runs until stopped)")
    spark = build_session(default_spark_settings("flo-seg-compact"))
    if args.every is not None:
        return compact_until_stopped(spark, _lake(args), args.every, parent_pid=args.parent_pid)
    for done in compact_lake(spark, _lake(args)):
        print(
            f"  {done.log:<12} versions {done.from_version}..{done.to_version}: {done.rows_read} rows, "
            f"{done.customers} customers, {done.seconds:.1f}s"
        )
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    """Send order events and print what was sent."""
    from flo_seg.progress import progress
    from flo_seg.spark import build_session
    from streaming.produce import ProduceProgress, ProduceSettings, load_profiles, run_produce
    from streaming.run import read_kafka_options

    options = read_kafka_options(args.kafka_option, args.kafka_options_file)
    settings = ProduceSettings(
        bootstrap_servers=_bootstrap(args),
        topic=args.topic,
        events=args.events,
        duration_s=args.duration,
        rate=args.rate,
        seed=args.seed,
        new_customer_share=args.new_customer_share,
        duplicate_share=args.duplicate_share,
        malformed_share=args.malformed_share,
        late_share=args.late_share,
        event_seconds=args.event_seconds,
        kafka_options={k.removeprefix("kafka."): v for k, v in options.items()},
    )
    spark = build_session(default_spark_settings("flo-seg-produce"))
    profiles = load_profiles(spark, _lake(args), sample=args.customers_sample)
    spark.stop()

    with progress("produce", args.events, "events", log) as bar:

        def report(p: ProduceProgress) -> None:
            line = f"sent {p.sent} events ({p.rate:.0f}/s), event time {p.clock_ts}"
            bar.update(p.sent, line, rate=f"{p.rate:.0f}/s", event_time=f"{p.clock_ts:%Y-%m-%d %H:%M}")

        summary = run_produce(settings, profiles, progress=report)
    print(f"sent {summary.sent} events in {summary.elapsed_s:.1f}s ({summary.rate:.0f}/s), {summary.failed} failed")
    for kind, n in sorted(summary.counts.items()):
        print(f"  {kind:<36} {n:>9}")
    print(f"event time {summary.first_event_ts} .. {summary.last_event_ts}")
    return 0 if summary.failed == 0 else 1


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "generate": cmd_generate,
    "train": cmd_train,
    "rescore": cmd_rescore,
    "report": cmd_report,
    "query": cmd_query,
    "maintain": cmd_maintain,
    "stream": cmd_stream,
    "compact": cmd_compact,
    "produce": cmd_produce,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `flo-seg` console script."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        if args.command != "generate":
            _lake(args)  # a lake that cannot be one is refused before a Spark session starts
        return COMMANDS[args.command](args)
    except (FileNotFoundError, NotADirectoryError, LookupError, ValueError) as exc:
        print(f"flo-seg {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
