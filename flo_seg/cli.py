"""`flo-seg`: one command line for generating data, training, scoring, reporting and querying."""

from __future__ import annotations

import argparse
import datetime as dt
import difflib
import functools
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from batch.maintain import DEFAULT_RETAIN_HOURS, MAINTAINED_TABLES
from batch.migrations import NEW as NEW_SEGMENT
from batch.migrations import PERIODS
from flo_seg.logs import setup_logging
from flo_seg.settings import (
    CONFIG_ENV,
    ENV_PREFIX,
    LakeSettings,
    LoadedSettings,
    Settings,
    SparkSettings,
    choices_of,
    default_of,
    env_name,
    kafka_client_options,
    leaves,
    load_settings,
    parse_setting,
)

if TYPE_CHECKING:  # the stream's modules load only when a stream command runs
    from streaming.audiences import AudienceSettings
    from streaming.job import StreamSettings

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


class _KafkaOption(argparse.Action):
    """`--kafka-option KEY=VALUE`, repeatable, into the `kafka.options` setting."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value: Any, _: Any = None
    ) -> None:
        key, sep, text = str(value).partition("=")
        if not sep or not key.strip():
            parser.error(f"argument --kafka-option: expected KEY=VALUE, got {value!r}")
        options = dict(getattr(namespace, self.dest, None) or {})
        options[key.strip()] = text.strip()
        setattr(namespace, self.dest, options)


def _setting(parser: argparse.ArgumentParser, *flags: str, key: str, help: str, **kwargs: Any) -> None:
    """A flag that sets one setting of the tree (flo_seg/settings.py): its check, choices and default come
    from there, and it is left out of the namespace unless given, so a file or FLO_* value stands."""
    default = default_of(key)
    choices = choices_of(key)
    if choices:
        kwargs.setdefault("choices", choices)
    elif "action" not in kwargs:
        kwargs.setdefault("type", functools.partial(_setting_value, key))
        kwargs.setdefault("metavar", flags[0].lstrip("-").upper().replace("-", "_"))
    shown = "not set" if default is None else (default or "''")
    parser.add_argument(
        *flags, dest=key, default=argparse.SUPPRESS, help=f"{help} (default {shown}; {env_name(key)})", **kwargs
    )


def _setting_value(key: str, text: str) -> Any:
    try:
        return parse_setting(key, text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def given_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str]]:
    """The settings the command line gave (dotted key -> value) and the flag each came from."""
    parsers = [parser, *_Parser._commands(parser).values()]  # type: ignore[arg-type]
    names = {
        action.dest: action.option_strings[-1] if action.dest == "lake" else action.option_strings[0]
        for p in parsers
        for action in p._actions
        if action.option_strings and (action.dest == "lake" or "." in action.dest)
    }
    given = {key: value for key, value in vars(args).items() if key in names}
    return given, names


def build_parser() -> argparse.ArgumentParser:
    """All subcommands and their flags; `--help` works on each."""
    parser = _Parser(
        prog="flo-seg",
        description="FLO customer segmentation: batch RFM + clustering on Spark, Delta tables under a lake. "
        "Every setting has a default, and can be set in a TOML file (--config), by a FLO_* variable or by a "
        "flag, the later winning; `flo-seg config` shows them and where each came from.",
    )
    config_help = f"TOML file of settings, e.g. [spark] master = ... ({CONFIG_ENV}; default none)"
    _setting(parser, "--lake", key="lake", help="lake root for the Delta tables")
    parser.add_argument("--config", default=None, metavar="FILE", help=config_help)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    # The global options are accepted after the command too (`flo-seg train --history X --lake Y`); there
    # they only override what was given before it.
    verbose = _Parser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    lake = _Parser(add_help=False, parents=[verbose])
    _setting(lake, "--lake", key="lake", help="lake root for the Delta tables")
    lake.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE", help=config_help)
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
    _setting(train, "--algorithm", key="train.algorithm", help="clustering algorithm")
    _setting(train, "--k", key="train.k", help="force the number of segments instead of choosing by silhouette")
    _setting(train, "--k-min", key="train.k_min", help="smallest k tried")
    _setting(train, "--k-max", key="train.k_max", help="largest k tried")
    _setting(
        train,
        "--min-segment-share",
        key="train.min_segment_share",
        help="a k whose smallest segment holds less than this share of the sampled customers is refused",
    )
    _setting(train, "--seed", key="train.seed", help="clustering seed")
    _setting(
        train,
        "--sample",
        "--selection-sample",
        key="train.sample",
        help="customers sampled to choose k and fit the model on; every customer is scored",
    )
    _setting(train, "--max-iter", key="train.max_iter", help="clustering iterations at most")
    _setting(
        train,
        "--restarts",
        key="train.restarts",
        help="fits from different starts per k, lowest cost kept (k-means on the driver takes at least 10, "
        "and Spark's k-means then starts from the best)",
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
    migrations = command(
        "migrations",
        help="print the segment migration matrix: who moved from which segment to which",
        description="Count the recorded segment changes (segment_changes: the stream's changes and sweeps) by "
        "previous and new segment, per period. The table format prints one from x to matrix per period (each "
        "cell: changes and their share of the row); csv and json print one row per (period, from, to) with "
        "changes, distinct customers, share of the period and share of the from segment. A customer without a "
        f"segment before comes from {NEW_SEGMENT}.",
    )
    migrations.add_argument("--since", type=_date, help="first day counted (UTC; default: the first change)")
    migrations.add_argument("--until", type=_date, help="first day not counted (UTC; default: none)")
    migrations.add_argument(
        "--period",
        choices=PERIODS,
        default="all",
        help="one matrix for the whole window (default), or per day/week/month",
    )
    migrations.add_argument("--format", choices=("table", "csv", "json"), default="table")
    migrations.add_argument(
        "--engine", choices=("native", "spark"), default="native", help="as for query (default native, no JVM)"
    )
    audience = command(
        "audience",
        help="list the audiences or export one's current members as CSV",
        description="Audiences are the two classic campaign lists and the [audiences] of the settings file "
        "(name = SQL predicate over customer_segments). train rebuilds their members, the stream keeps them "
        "current and records every join and leave in audience_changes.",
    )
    audience_sub = audience.add_subparsers(dest="audience_command", required=True, metavar="ACTION")
    audience_sub.add_parser("list", parents=[lake], help="each audience, its predicate and its members now")
    export = audience_sub.add_parser(
        "export", parents=[lake], help="the current members of one audience as CSV (no JVM)"
    )
    export.add_argument("name", help="the audience")
    export.add_argument("--out", type=Path, default=None, help="CSV file to write (default: standard output)")
    dashboard = command(
        "dashboard",
        help="serve a live web page over the lake for the marketing team (no JVM)",
        description="Segment sizes now and over time, changes per minute, the migration matrix, profiles and "
        "actions, lifetime value and churn risk, the latest changes, quarantine counts and the current model, "
        "read through delta-rs and read again every --refresh-seconds. Listens on 127.0.0.1 unless told "
        "otherwise: put it behind a proxy with authentication before opening it wider (README).",
    )
    dashboard.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    dashboard.add_argument("--port", type=_positive_int, default=8050, help="port (default 8050)")
    dashboard.add_argument(
        "--refresh-seconds", type=_positive_float, default=5.0, help="how often the page reads the lake (default 5)"
    )
    maintain = command(
        "maintain",
        help="OPTIMIZE and VACUUM the tables the stream writes (run it regularly, e.g. daily)",
        description="Compact the small files every micro-batch and compaction adds (OPTIMIZE), then delete "
        "data files older than the retention (VACUUM). Safe while the stream runs.",
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
    _kafka_flags(stream)
    _setting(
        stream,
        "--changes-topic",
        key="kafka.changes_topic",
        help="segment changes topic ('' to not publish)",
    )
    _setting(stream, "--checkpoint", key="stream.checkpoint", help="checkpoint location (not set: beside the lake)")
    _setting(stream, "--query-name", key="stream.query_name", help="streaming query name")
    _setting(
        stream,
        "--trigger-seconds",
        key="stream.trigger_seconds",
        help="micro-batch interval (0: the next batch starts as soon as the last one ended)",
    )
    stream.add_argument("--available-now", action="store_true", help="process what the topic holds, then stop")
    stream.add_argument(
        "--no-audiences",
        action="store_true",
        help="do not run the audience follower that keeps audience_members current (default: it runs)",
    )
    _setting(stream, "--max-offsets-per-trigger", key="stream.max_offsets_per_trigger", help="events per batch at most")
    _setting(
        stream, "--starting-offsets", key="stream.starting_offsets", help="earliest | latest | JSON, first start only"
    )
    _setting(
        stream,
        "--aging-days",
        key="stream.aging_days",
        help="re-score customers whose segment is older than this in event time",
    )
    _setting(
        stream,
        "--dedupe-window",
        key="stream.dedupe_window",
        help="a re-sent event_id is dropped within this much stream time of its first copy",
    )
    _setting(
        stream,
        "--compact-seconds",
        key="stream.compact_seconds",
        help="bring customer_state and customer_segments current from the stream's logs this often "
        "(0: not in this process, run `flo-seg compact --every N` beside the stream instead)",
    )
    _setting(
        stream,
        "--compaction",
        key="stream.compaction",
        help="where the compaction runs: a thread of the stream's session, or `flo-seg compact --every` in "
        "a child process at the lowest CPU priority; auto: the process under a local master, the thread on a cluster",
    )
    _setting(
        stream,
        "--state-partitions",
        key="stream.state_partitions",
        help="state store partitions, fixed by a new checkpoint (not set: the cores Spark has)",
    )
    stream.add_argument("--duration", type=float, default=None, help="stop after this many seconds")

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
    _kafka_flags(produce)
    produce.add_argument("--events", type=_positive_int, default=None, help="stop after this many events")
    produce.add_argument("--duration", type=_positive_float, default=None, help="stop after this many seconds")
    _setting(produce, "--rate", key="produce.rate", help="events per second (not set: as fast as possible)")
    _setting(produce, "--seed", key="produce.seed", help="random seed")
    _setting(produce, "--new-customer-share", key="produce.new_customer_share", help="share of brand-new customers")
    _setting(produce, "--duplicate-share", key="produce.duplicate_share", help="share re-sent with the same event_id")
    _setting(produce, "--malformed-share", key="produce.malformed_share", help="share of invalid events")
    _setting(produce, "--late-share", key="produce.late_share", help="share of late, out-of-order events")
    _setting(
        produce,
        "--basket-factor",
        key="produce.basket_factor",
        help="multiply every basket by this (a shifted stream, e.g. a sale season: 3)",
    )
    _setting(
        produce,
        "--channel",
        key="produce.channel",
        help="send every order through this channel (a shifted stream; not set: each customer's own mix)",
    )
    _setting(
        produce,
        "--event-seconds",
        key="produce.event_seconds",
        help="mean event-time gap between orders, in simulated seconds",
    )
    produce.add_argument(
        "--customers-sample",
        type=_positive_int,
        default=None,
        help="draw from a sample of this many customers (default all)",
    )

    monitor = command(
        "monitor",
        help="check for drift beside the stream: alarms to drift_alarms and Kafka, retrain with --auto-retrain",
    )
    _kafka_client_flags(monitor)
    _setting(monitor, "--alarms-topic", key="kafka.drift_alarms_topic", help="drift alarms topic ('' to not publish)")
    _setting(monitor, "--interval-seconds", key="monitor.interval_seconds", help="seconds between two checks")
    monitor.add_argument("--once", action="store_true", help="check once, print the measurements and stop")
    _setting(
        monitor,
        "--window-minutes",
        key="monitor.window_minutes",
        help="compare the customers the stream updated within this many minutes (and since the model was trained)",
    )
    _setting(
        monitor,
        "--psi-threshold",
        key="monitor.psi_threshold",
        help="alarm when a feature's population stability index exceeds this",
    )
    _setting(
        monitor,
        "--share-threshold",
        key="monitor.share_threshold",
        help="alarm when a segment's share of all customers moved more than this (absolute)",
    )
    _setting(
        monitor,
        "--min-customers",
        key="monitor.min_customers",
        help="judge features on at least this many recently updated customers",
    )
    _setting(
        monitor,
        "--auto-retrain",
        key="monitor.auto_retrain",
        help="retrain from the lake after an alarm (the running stream reloads the new model)",
        action="store_const",
        const=True,
    )
    _setting(
        monitor,
        "--retrain-cooldown-minutes",
        key="monitor.retrain_cooldown_minutes",
        help="retrain at most once per this many minutes, counted from the current model's training or the "
        "monitor's last attempt",
    )

    config = command(
        "config",
        help="print the effective settings and where each came from (default, file, FLO_* variable, flag)",
    )
    config.add_argument("--format", choices=("table", "json"), default="table")
    return parser


def _kafka_flags(parser: argparse.ArgumentParser) -> None:
    """The client flags and the order events topic."""
    _kafka_client_flags(parser)
    _setting(parser, "--topic", key="kafka.orders_topic", help="order events topic")


def _kafka_client_flags(parser: argparse.ArgumentParser) -> None:
    """Where the brokers are and how to connect to them."""
    _setting(parser, "--bootstrap-servers", key="kafka.bootstrap_servers", help="Kafka brokers, host:port[,...]")
    _setting(
        parser,
        "--kafka-option",
        key="kafka.options",
        action=_KafkaOption,
        metavar="KEY=VALUE",
        help="extra Kafka client setting, e.g. security.protocol=SASL_SSL (repeatable)",
    )
    _setting(
        parser,
        "--kafka-options-file",
        key="kafka.options_file",
        help="properties file of Kafka client settings (keeps secrets out of the command line)",
    )


def _spark_kafka_options(settings: Settings) -> dict[str, str]:
    """The Kafka client settings as Spark's Kafka source and sink take them (`kafka.` before each name)."""
    return {f"kafka.{k}": v for k, v in kafka_client_options(settings.kafka).items()}


def _lake(settings: Settings) -> LakeSettings:
    """The lake of the settings; a local path that is a file is refused before any work."""
    lake = settings.lake_settings()
    if "://" not in lake.root and Path(lake.root).exists() and not Path(lake.root).is_dir():
        raise NotADirectoryError(f"lake {lake.root} is a file, not a folder; pass --lake DIR (or set FLO_LAKE)")
    return lake


def _spark(settings: Settings, command: str) -> SparkSettings:
    """The `[spark]` settings under this command's app name (flo-seg-train, ...)."""
    return replace(settings.spark, app_name=f"{settings.spark.app_name}-{command}")


def cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
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


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    """Train, publish and segment; print the run summary."""
    from batch.audiences import audience_definitions, check_audiences
    from batch.segments import ARCHETYPES
    from batch.train import run_train
    from flo_seg.progress import spark_progress
    from flo_seg.spark import build_session

    if args.replace_state and not args.history:
        raise SystemExit("flo-seg train: --replace-state goes with --history")
    lake = _lake(settings)
    chosen = settings.train
    if chosen.k is not None and chosen.k > len(ARCHETYPES):
        raise SystemExit(f"flo-seg train: --k must be between 2 and {len(ARCHETYPES)}")
    if chosen.k_max > len(ARCHETYPES):
        raise SystemExit(f"flo-seg train: --k-max must be at most {len(ARCHETYPES)}, got {chosen.k_max}")
    spark = build_session(_spark(settings, "train"))
    with spark_progress(spark, "train"):
        audiences = audience_definitions(settings.audiences)
        check_audiences(spark, audiences)
        summary = run_train(
            spark,
            lake,
            chosen,
            history_path=args.history,
            as_of=args.as_of,
            replace_state=args.replace_state,
            audiences=audiences,
        )
    if args.history:
        print(
            f"rows read {summary.rows_read}, kept {summary.rows_kept}, quarantined {sum(summary.quarantined.values())}"
        )
        for reason, n in summary.quarantined.items():
            print(f"  quarantined {reason}: {n}")
    print(
        f"model {summary.model_version}: {chosen.algorithm}, k={summary.k}, silhouette={summary.silhouette}, "
        f"as of {summary.as_of}, tables under {lake.root}"
    )
    for name, n in sorted(summary.segments.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<28} {n:>9}")
    return 0


def cmd_rescore(args: argparse.Namespace, settings: Settings) -> int:
    """Re-score all customers with the current model."""
    from batch.rescore import run_rescore
    from flo_seg.progress import spark_progress
    from flo_seg.spark import build_session

    spark = build_session(_spark(settings, "rescore"))
    started = time.monotonic()
    with spark_progress(spark, "rescore"):
        sizes = run_rescore(spark, _lake(settings), as_of=args.as_of)
    print(f"re-scored {sum(sizes.values())} customers in {time.monotonic() - started:.1f}s")
    for name, n in sorted(sizes.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<28} {n:>9}")
    return 0


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    """Write the report files and print their paths."""
    from batch.report import run_report
    from flo_seg.progress import spark_progress
    from flo_seg.spark import build_session

    spark = build_session(_spark(settings, "report"))
    with spark_progress(spark, "report"):
        paths = run_report(spark, _lake(settings), args.out)
    for path in paths:
        print(f"wrote {path}")
    return 0


def cmd_migrations(args: argparse.Namespace, settings: Settings) -> int:
    """Print the migration matrix of the recorded segment changes."""
    from batch.migrations import matrix_text, migration_sql, read_migrations_native, read_migrations_spark
    from batch.query import write_rows

    sql = migration_sql(since=args.since, until=args.until, period=args.period)
    if args.engine == "native":
        moves = read_migrations_native(_lake(settings), sql)
    else:
        from flo_seg.spark import build_session

        moves = read_migrations_spark(build_session(_spark(settings, "migrations")), _lake(settings), sql)
    if args.format == "table":
        print(matrix_text(moves), end="")
    else:
        write_rows(list(moves.columns), moves.to_dict("split")["data"], args.format)
    return 0


def cmd_audience(args: argparse.Namespace, settings: Settings) -> int:
    """List the audiences, or export one's members."""
    from batch.audiences import audience_definitions, audience_sizes, export_audience

    lake = _lake(settings)
    definitions = audience_definitions(settings.audiences)
    if args.audience_command == "export":
        members = export_audience(lake, args.name, definitions, args.out)
        where = f"to {args.out}" if args.out else "above"
        print(f"{members} members of {args.name} {where}", file=sys.stderr)
        return 0
    sizes = audience_sizes(lake)
    for name, predicate in definitions.items():
        print(f"{name:<28} {sizes.get(name, 0):>9}  {predicate}")
    return 0


def cmd_dashboard(args: argparse.Namespace, settings: Settings) -> int:
    """Serve the dashboard until interrupted."""
    from flo_seg.dashboard import serve

    serve(_lake(settings), host=args.host, port=args.port, refresh_seconds=args.refresh_seconds)
    return 0


def cmd_query(args: argparse.Namespace, settings: Settings) -> int:
    """Print a SQL result."""
    if args.engine == "native":
        from batch.query_native import run_native_query

        run_native_query(_lake(settings), args.sql, fmt=args.format, limit=args.limit)
        return 0
    from batch.query import run_query
    from flo_seg.spark import build_session

    spark = build_session(_spark(settings, "query"))
    run_query(spark, _lake(settings), args.sql, fmt=args.format, limit=args.limit)
    return 0


def cmd_maintain(args: argparse.Namespace, settings: Settings) -> int:
    """OPTIMIZE and VACUUM the stream's tables; one line per table."""
    from batch.maintain import MAINTAINED_TABLES, run_maintenance
    from flo_seg.progress import spark_progress
    from flo_seg.spark import build_session

    spark = build_session(_spark(settings, "maintain"))
    with spark_progress(spark, "maintain"):
        results = run_maintenance(
            spark,
            _lake(settings),
            tables=tuple(args.tables or MAINTAINED_TABLES),
            retain_hours=None if args.no_vacuum else args.retain_hours,
        )
    for r in results:
        vacuum = f", VACUUM {r.vacuum_seconds:.1f}s" if r.vacuum_seconds is not None else ""
        optimize = f"OPTIMIZE {r.optimize_seconds:.1f}s"
        print(f"  {r.table:<20} files {r.files_before:>6} -> {r.files_after:<6} {optimize}{vacuum}")
    return 0


def follower_settings(
    args: argparse.Namespace, settings: Settings, stream_settings: StreamSettings
) -> AudienceSettings | None:
    """The audience follower `flo-seg stream` runs beside its query; None with --no-audiences."""
    from batch.audiences import audience_definitions
    from streaming.audiences import AudienceSettings

    if args.no_audiences:
        return None
    assert stream_settings.checkpoint is not None
    return AudienceSettings(
        audiences=audience_definitions(settings.audiences),
        checkpoint=f"{stream_settings.checkpoint.rstrip('/')}-audiences",
        bootstrap_servers=settings.kafka.bootstrap_servers,
        topic=settings.kafka.audience_changes_topic or None,
        kafka_options=stream_settings.kafka_options,
        available_now=args.available_now,
        trigger_seconds=settings.stream.trigger_seconds,
    )


def cmd_stream(args: argparse.Namespace, settings: Settings) -> int:
    """Run the streaming job."""
    from batch.audiences import check_audiences
    from flo_seg.spark import build_session
    from streaming.job import StreamSettings
    from streaming.run import default_checkpoint, run_stream

    lake = _lake(settings)
    options = settings.stream
    stream_settings = StreamSettings(
        **{**asdict(options), "checkpoint": options.checkpoint or default_checkpoint(lake, options.query_name)},
        bootstrap_servers=settings.kafka.bootstrap_servers,
        topic=settings.kafka.orders_topic,
        changes_topic=settings.kafka.changes_topic or None,
        available_now=args.available_now,
        kafka_options=_spark_kafka_options(settings),
    )
    # FAIR: the background compaction gets its own pool, so it does not queue the micro-batches' jobs.
    spark = build_session(_spark(settings, "stream"), {"spark.scheduler.mode": "FAIR"})
    # A compaction child inherits the FLO_* variables; a --config file it is given as this process was.
    config = getattr(args, "config", None)
    child_flags = ("--config", str(Path(config).resolve())) if config else ()
    audiences = follower_settings(args, settings, stream_settings)
    if audiences is not None:
        check_audiences(spark, audiences.audiences)
    return run_stream(
        spark, lake, stream_settings, duration_s=args.duration, child_flags=child_flags, audiences=audiences
    )


def cmd_monitor(args: argparse.Namespace, settings: Settings) -> int:
    """Check for drift once (printing the measurements) or at the interval until stopped."""
    from batch.audiences import audience_definitions, check_audiences
    from batch.drift import describe
    from batch.train import run_train
    from flo_seg.spark import build_session
    from streaming.monitor import MonitorSettings, Retrainer, monitor_once, run_monitor

    lake = _lake(settings)
    monitor_settings = MonitorSettings(
        options=settings.monitor,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        topic=settings.kafka.drift_alarms_topic or None,
        # A broker that does not answer fails the alarm's publish in 10 s (it is logged, the monitor carries
        # on), not in the client's default minute per attempt; a `max.block.ms` in the settings wins.
        kafka_options={"kafka.max.block.ms": "10000", **_spark_kafka_options(settings)},
    )
    spark = build_session(_spark(settings, "monitor"))
    retrainer = None
    if settings.monitor.auto_retrain:
        audiences = audience_definitions(settings.audiences)
        check_audiences(spark, audiences)

        def retrain() -> str:
            return run_train(spark, lake, settings.train, history_path=None, audiences=audiences).model_version

        cooldown = dt.timedelta(minutes=settings.monitor.retrain_cooldown_minutes)
        retrainer = Retrainer(retrain=retrain, cooldown=cooldown)
    if not args.once:
        return run_monitor(spark, lake, monitor_settings, retrainer)
    check, version = monitor_once(spark, lake, monitor_settings, retrainer, log_each=False)
    print(
        f"model {check.model_version}: {check.recent_customers} customers updated since "
        f"{check.window_start:%Y-%m-%d %H:%M:%S} UTC, {len(check.alarms)} alarm(s)"
    )
    for m in check.measurements:
        print(f"  {describe(m)}")
    for why in check.skipped:
        print(f"  not measured: {why}")
    if version is not None:
        print(f"retrained: model {version} is current")
    if retrainer is not None and retrainer.failures:
        print("the retrain failed (see the log above)", file=sys.stderr)
        return 1
    return 0


def cmd_compact(args: argparse.Namespace, settings: Settings) -> int:
    """Compact the stream's logs into the tables users read; one line per log."""
    from batch.compact import compact_lake, compact_until_stopped
    from flo_seg.progress import spark_progress
    from flo_seg.spark import build_session

    if args.parent_pid is not None and args.every is None:
        raise ValueError("--parent-pid only applies with --every (a compaction that runs until stopped)")
    spark = build_session(_spark(settings, "compact"))
    if args.every is not None:
        return compact_until_stopped(spark, _lake(settings), args.every, parent_pid=args.parent_pid)
    with spark_progress(spark, "compact"):
        compacted = compact_lake(spark, _lake(settings))
    for done in compacted:
        print(
            f"  {done.log:<12} versions {done.from_version}..{done.to_version}: {done.rows_read} rows, "
            f"{done.customers} customers, {done.seconds:.1f}s"
        )
    return 0


def cmd_produce(args: argparse.Namespace, settings: Settings) -> int:
    """Send order events and print what was sent."""
    from flo_seg.progress import progress
    from flo_seg.spark import build_session
    from streaming.produce import ProduceProgress, ProduceSettings, load_profiles, run_produce

    produce_settings = ProduceSettings(
        **asdict(settings.produce),
        bootstrap_servers=settings.kafka.bootstrap_servers,
        topic=settings.kafka.orders_topic,
        events=args.events,
        duration_s=args.duration,
        kafka_options=kafka_client_options(settings.kafka),
    )
    spark = build_session(_spark(settings, "produce"))
    profiles = load_profiles(spark, _lake(settings), sample=args.customers_sample)
    spark.stop()

    with progress("produce", args.events, "events", log) as bar:

        def report(p: ProduceProgress) -> None:
            line = f"sent {p.sent} events ({p.rate:.0f}/s), event time {p.clock_ts}"
            bar.update(p.sent, line, rate=f"{p.rate:.0f}/s", event_time=f"{p.clock_ts:%Y-%m-%d %H:%M}")

        summary = run_produce(produce_settings, profiles, progress=report)
    print(f"sent {summary.sent} events in {summary.elapsed_s:.1f}s ({summary.rate:.0f}/s), {summary.failed} failed")
    for kind, n in sorted(summary.counts.items()):
        print(f"  {kind:<36} {n:>9}")
    print(f"event time {summary.first_event_ts} .. {summary.last_event_ts}")
    return 0 if summary.failed == 0 else 1


_SECRET = re.compile(r"password|secret|jaas|token|\.key$", re.IGNORECASE)


def _shown(key: str, value: Any) -> Any:
    """A setting's value for printing: secrets masked, paths as text, None as not set."""
    if key == "kafka.options":
        return {k: "****" if _SECRET.search(k) else v for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def cmd_config(args: argparse.Namespace, settings: Settings, loaded: LoadedSettings) -> int:
    """Print every setting, its value and where it came from."""
    rows = [("lake", _lake(settings).root, str(loaded.sources["lake"]))]
    rows += [(k, _shown(k, v), str(loaded.sources[k])) for k, v in leaves(settings) if k != "lake"]
    ignored = sorted(name for name in os.environ if name.startswith(ENV_PREFIX) and name not in _used_env(loaded))
    if args.format == "json":
        document = {
            "config_file": str(loaded.config_file) if loaded.config_file else None,
            "settings": {key: {"value": value, "from": source} for key, value, source in rows},
            "ignored_variables": ignored,
        }
        print(json.dumps(document, indent=2, default=str))
        return 0
    print(f"config file: {loaded.config_file or f'none (--config FILE or {CONFIG_ENV})'}")
    width = max(len(key) for key, _, _ in rows)
    for key, value, source in rows:
        text = "not set" if value is None else json.dumps(value) if isinstance(value, dict | list) else str(value)
        print(f"  {key:<{width}}  {text:<40}  {source}")
    if ignored:
        print(f"{ENV_PREFIX}* variables that set nothing here: {', '.join(ignored)}")
    return 0


def _used_env(loaded: LoadedSettings) -> set[str]:
    return {source.name for source in loaded.sources.values() if source.kind == "env"} | {CONFIG_ENV}


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "generate": cmd_generate,
    "train": cmd_train,
    "rescore": cmd_rescore,
    "report": cmd_report,
    "query": cmd_query,
    "migrations": cmd_migrations,
    "audience": cmd_audience,
    "dashboard": cmd_dashboard,
    "maintain": cmd_maintain,
    "stream": cmd_stream,
    "compact": cmd_compact,
    "produce": cmd_produce,
    "monitor": cmd_monitor,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `flo-seg` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        given, flag_names = given_settings(parser, args)
        loaded = load_settings(given, config_file=getattr(args, "config", None), flag_names=flag_names)
        if args.command == "config":
            return cmd_config(args, loaded.settings, loaded)
        if args.command != "generate":
            _lake(loaded.settings)  # a lake that cannot be one is refused before a Spark session starts
        return COMMANDS[args.command](args, loaded.settings)
    except (FileNotFoundError, NotADirectoryError, LookupError, ValueError) as exc:
        print(f"flo-seg {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
