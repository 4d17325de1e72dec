"""Simulated FLO order events onto Kafka, drawn from each customer's own history.

Valid events look like the customers in `customer_state` (who orders, where, how much, what), with
late, duplicate and malformed events mixed in on demand, so the stream can be exercised end to end and
under load. Generation is pure and seeded (`generate_events`); the Kafka side is `run_produce`.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta, timezone
from types import FrameType
from typing import Annotated, Any

import numpy as np
import pandas as pd
from kafka import KafkaProducer
from kafka.errors import KafkaTimeoutError
from kafka.partitioner.default import DefaultPartitioner, murmur2
from pydantic import ConfigDict, Field, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from batch.features import CATEGORY_LIST, OFFLINE_ORDERS, OFFLINE_VALUE, ONLINE_ORDERS, ONLINE_VALUE
from batch.lake import read_table
from flo_seg.settings import DEFAULT_BOOTSTRAP, ORDERS_TOPIC, LakeSettings, PositiveFinite, ProduceOptions
from schemas.events import SCHEMA_VERSION
from schemas.history import CATEGORIES, CHANNELS, ONLINE_CHANNELS
from schemas.tables import CUSTOMER_STATE

log = logging.getLogger(__name__)

# Order times are written in Turkey's offset, where FLO's stores and customers are.
TURKEY = timezone(timedelta(hours=3))
TURKEY_OFFSET = "+03:00"

VALID = "valid"
DUPLICATE = "duplicate"
MALFORMED_KINDS: tuple[str, ...] = tuple(
    f"malformed:{what}"
    for what in (
        "not_json",
        "truncated_json",
        "amount_string",
        "unknown_channel",
        "negative_amount",
        "zero_amount",
        "missing_event_id",
        "missing_master_id",
        "missing_order_ts",
        "bad_order_ts",
        "order_ts_1970",
        "wrong_schema_version",
        "unknown_category",
    )
)
KINDS: tuple[str, ...] = (VALID, DUPLICATE, *MALFORMED_KINDS)

# The customer_state columns a profile is built from.
PROFILE_COLUMNS: tuple[str, ...] = (
    "master_id",
    "order_channel",
    "last_order_channel",
    "last_order_date",
    ONLINE_ORDERS,
    OFFLINE_ORDERS,
    ONLINE_VALUE,
    OFFLINE_VALUE,
    CATEGORY_LIST,
)

OFFLINE_CODE = CHANNELS.index("Offline")
ONLINE_CODES = np.array([CHANNELS.index(c) for c in ONLINE_CHANNELS], dtype=np.int8)
CATEGORY_BITS: dict[str, int] = {c: 1 << i for i, c in enumerate(CATEGORIES)}
# Every subset of CATEGORIES by bitmask, in contract order, as a list and as its JSON text.
CATEGORY_SUBSETS: tuple[tuple[str, ...], ...] = tuple(
    tuple(c for c in CATEGORIES if mask & CATEGORY_BITS[c]) for mask in range(1 << len(CATEGORIES))
)
CATEGORY_SUBSETS_JSON: tuple[str, ...] = tuple(json.dumps(list(s), separators=(",", ":")) for s in CATEGORY_SUBSETS)

# Spread of one basket around the customer's average: lognormal, mean-preserving.
AMOUNT_LOG_SIGMA = 0.35
# Used when a customer has no usable spend history (no orders, no value).
FALLBACK_BASKET = 100.0
LATE_DAYS_MIN, LATE_DAYS_MAX = 1.0, 30.0
# Duplicates repeat one of this many most recent valid events, as a producer retry would.
DUPLICATE_WINDOW = 1_000
# Events generated per call of the send loop; fixed, so a seed gives the same stream at any rate.
CHUNK_EVENTS = 2_000
PROGRESS_EVERY_S = 1.0
# Most keys are repeat customers: their murmur2 hash is computed once (it is pure Python).
PARTITION_CACHE_KEYS = 1_000_000

# Salts that keep event ids and new-customer ids apart although both hash (seed, seq).
_EVENT_ID_SALT = 0x6576656E74
_CUSTOMER_ID_SALT = 0x637573746F6D6572
_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_UUID_HEX_COLUMNS = [i for i in range(36) if i not in (8, 13, 18, 23)]
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))


@pydantic_dataclass(frozen=True, kw_only=True, config=ConfigDict(extra="forbid"))
class ProduceSettings(ProduceOptions):
    """What `flo-seg produce` sends (the `[produce]` settings), where, and for how long."""

    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    topic: str = ORDERS_TOPIC
    events: Annotated[int, Field(ge=0)] | None = None  # stop after this many (None: until duration / forever)
    duration_s: PositiveFinite | None = None
    start_ts: datetime | None = None  # event-time start (tz-aware); default: latest last order + 1 day
    kafka_options: dict[str, str] = Field(default_factory=dict)  # extra producer configs (security etc.)

    @model_validator(mode="after")
    def _possible(self) -> ProduceSettings:
        """Reject impossible settings here, before a broker connection is made."""
        if self.duplicate_share + self.malformed_share > 1.0:
            raise ValueError("duplicate_share + malformed_share must not exceed 1")
        if self.start_ts is not None and self.start_ts.utcoffset() is None:
            raise ValueError("start_ts must be timezone-aware")
        return self


@dataclass(frozen=True, kw_only=True, eq=False)
class CustomerProfiles:
    """Per-customer arrays (row i = one customer), so drawing a batch of events is a few gathers."""

    master_id: np.ndarray  # object: str
    master_id_json: np.ndarray  # object: the id as a JSON string literal, quoted and escaped
    cum_orders: np.ndarray  # float64: cumulative past order counts, for frequency-weighted choice
    online_share: np.ndarray  # float64: online orders / all orders
    online_channels: np.ndarray  # int8 (n, 2): codes into CHANNELS, order_channel and last online channel
    avg_basket: np.ndarray  # float64 > 0: monetary / frequency
    category_mask: np.ndarray  # uint8: bitmask over CATEGORIES of interested_in_categories_12
    latest_order_date: date

    def __len__(self) -> int:
        """Number of customers."""
        return len(self.master_id)

    @property
    def default_start_ts(self) -> datetime:
        """Midnight in Turkey the day after the latest last order: the stream continues the history."""
        day = self.latest_order_date + timedelta(days=1)
        return datetime(day.year, day.month, day.day, tzinfo=TURKEY)


@dataclass(frozen=True, kw_only=True, slots=True)
class Produced:
    """One Kafka record as generated, with what it is meant to test."""

    key: bytes
    value: bytes
    kind: str  # VALID, DUPLICATE or one of MALFORMED_KINDS
    event: dict[str, Any] | None  # the event as sent, for valid events and duplicates
    clock_ts: datetime  # the simulated time at which it is sent (order_ts differs for late events)


@dataclass(frozen=True, kw_only=True)
class ProduceProgress:
    """A heartbeat of the send loop, for a CLI to print."""

    sent: int
    elapsed_s: float
    rate: float  # events/s since the start
    clock_ts: datetime  # simulated time of the latest event


@dataclass(frozen=True, kw_only=True)
class ProduceSummary:
    """What a run sent: enough to check the stream's counts against."""

    counts: dict[str, int]  # events by kind, as handed to the producer
    sent: int
    failed: int  # records the broker never acknowledged
    elapsed_s: float  # start of sending to the end of the final flush
    rate: float  # sent / elapsed_s
    first_event_ts: datetime | None  # simulated time of the first and last event sent
    last_event_ts: datetime | None
    is_interrupted: bool  # stopped by Ctrl-C


# ---------------------------------------------------------------- profiles


def _category_mask(value: Any) -> int:
    """Bitmask of a category list; also reads FLO's CSV text "[KADIN, ERKEK]". Unknown names are dropped."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return 0
    names: Iterable[Any] = value.strip("[]").split(",") if isinstance(value, str) else value
    mask = 0
    for name in names:
        mask |= CATEGORY_BITS.get(str(name).strip(), 0)
    return mask


def customer_profiles(state_pdf: pd.DataFrame) -> CustomerProfiles:
    """Profiles from customer_state rows (pandas, columns as in CUSTOMER_STATE_SCHEMA)."""
    missing = [c for c in PROFILE_COLUMNS if c not in state_pdf.columns]
    if missing:
        raise ValueError(f"customer state lacks columns {missing}")
    if state_pdf.empty:
        raise ValueError("no customers to draw events from; train a model first (`flo-seg train`)")

    def numbers(col_name: str) -> np.ndarray:
        values = pd.to_numeric(state_pdf[col_name], errors="coerce").fillna(0.0)
        return np.clip(values.to_numpy(dtype=np.float64), 0.0, None)

    online, offline = numbers(ONLINE_ORDERS), numbers(OFFLINE_ORDERS)
    frequency = online + offline
    monetary = numbers(ONLINE_VALUE) + numbers(OFFLINE_VALUE)

    codes = {name: i for i, name in enumerate(CHANNELS)}
    first = state_pdf["order_channel"].map(codes).fillna(-1).to_numpy(dtype=np.int8)
    last = state_pdf["last_order_channel"].map(codes).fillna(-1).to_numpy(dtype=np.int8)
    is_first_online, is_last_online = np.isin(first, ONLINE_CODES), np.isin(last, ONLINE_CODES)
    # A customer with online orders but no known online channel gets the population's usual one.
    known = np.concatenate([first[is_first_online], last[is_last_online]])
    usual = int(np.bincount(known).argmax()) if known.size else int(ONLINE_CODES[0])
    channel_a = np.where(is_first_online, first, np.where(is_last_online, last, usual))
    channel_b = np.where(is_last_online, last, channel_a)

    has_orders = frequency > 0
    online_share = np.divide(online, frequency, out=np.zeros_like(online), where=has_orders)
    online_share = np.where(has_orders, online_share, (is_first_online | is_last_online).astype(np.float64))

    has_spend = has_orders & (monetary > 0)
    basket = np.divide(monetary, frequency, out=np.zeros_like(monetary), where=has_spend)
    fallback = float(np.median(basket[has_spend])) if has_spend.any() else FALLBACK_BASKET
    basket = np.where(has_spend, basket, fallback)

    weights = frequency if frequency.sum() > 0 else np.ones_like(frequency)
    latest = pd.to_datetime(state_pdf["last_order_date"]).max()
    if pd.isna(latest):
        raise ValueError("customer state has no last_order_date")
    ids = state_pdf["master_id"].astype(str).to_numpy(dtype=object)
    return CustomerProfiles(
        master_id=ids,
        master_id_json=np.array([json.dumps(i) for i in ids], dtype=object),
        cum_orders=np.cumsum(weights),
        online_share=online_share,
        online_channels=np.stack([channel_a, channel_b], axis=1).astype(np.int8),
        avg_basket=basket,
        category_mask=np.array([_category_mask(v) for v in state_pdf[CATEGORY_LIST]], dtype=np.uint8),
        latest_order_date=latest.date(),
    )


def load_profiles(spark: SparkSession, lake: LakeSettings, sample: int | None = None) -> CustomerProfiles:
    """Profiles of the lake's customers; `sample` keeps a fixed pseudo-random subset for driver memory."""
    state_df = read_table(spark, lake, CUSTOMER_STATE).select(*PROFILE_COLUMNS)
    if sample is None:
        return customer_profiles(state_df.toPandas())
    latest = state_df.agg(F.max("last_order_date")).first()
    sampled_df = state_df.orderBy(F.xxhash64("master_id")).limit(sample)
    profiles = customer_profiles(sampled_df.toPandas())
    # The clock starts after the whole lake's last order, not just the sample's.
    return replace(profiles, latest_order_date=latest[0]) if latest and latest[0] else profiles


# ---------------------------------------------------------------- pure generation


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection on 64-bit words, so distinct inputs keep distinct outputs."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hashed_uuids(seed: int, seq: np.ndarray, salt: int) -> list[str]:
    """UUID-shaped ids hashed from (seed, seq): the same for a seed, and never equal for two seqs."""
    base = np.uint64((seed * _GOLDEN + salt) & _MASK64)
    high = _mix64(seq.astype(np.uint64) + base)  # a bijection of seq: this half alone keeps ids unique
    low = _mix64(high ^ np.uint64(_GOLDEN))
    raw = np.stack([high, low], axis=1).astype(">u8").view(np.uint8).reshape(-1, 16)
    nibbles = np.empty((len(raw), 32), dtype=np.uint8)
    nibbles[:, 0::2], nibbles[:, 1::2] = raw >> 4, raw & 0x0F
    text = np.full((len(raw), 36), ord("-"), dtype=np.uint8)
    text[:, _UUID_HEX_COLUMNS] = _HEX[nibbles]
    return [t.decode("ascii") for t in text.view("S36").ravel().tolist()]


def _turkey_timestamps(epoch_s: np.ndarray) -> list[str]:
    """ISO-8601 seconds with the +03:00 offset, formatted for the whole batch at once."""
    local = (np.floor(epoch_s).astype(np.int64) + 3 * 3600).astype("datetime64[s]")
    return [f"{text}{TURKEY_OFFSET}" for text in np.datetime_as_string(local, unit="s").tolist()]


def _valid_value(
    event_id: str, master_id_json: str, order_ts: str, channel: str, amount: float, categories_json: str
) -> bytes:
    """Compact JSON of a valid event; faster than json.dumps and what json.loads reads back to the dict."""
    return (
        f'{{"event_id":"{event_id}","master_id":{master_id_json},"order_ts":"{order_ts}",'
        f'"channel":"{channel}","amount":{amount!r},"categories":{categories_json},'
        f'"schema_version":{SCHEMA_VERSION}}}'
    ).encode()


def _malformed_value(kind: str, event: dict[str, Any], u: float) -> bytes:
    """The event broken in one way a real producer breaks it; `u` picks the variant."""
    bad = dict(event)
    what = kind.removeprefix("malformed:")
    if what == "not_json":
        fields = (bad["event_id"], bad["master_id"], bad["order_ts"], bad["channel"], bad["amount"])
        return ("ORDER;" + ";".join(str(f) for f in fields)).encode()
    if what == "amount_string":
        bad["amount"] = f"{bad['amount']:.2f}"
    elif what == "unknown_channel":
        bad["channel"] = ("Call Center", "android app", "WhatsApp")[int(u * 3)]
    elif what == "negative_amount":
        bad["amount"] = -bad["amount"]
    elif what == "zero_amount":
        bad["amount"] = 0.0
    elif what.startswith("missing_"):
        del bad[what.removeprefix("missing_")]
    elif what == "bad_order_ts":
        ts = bad["order_ts"]  # the Turkish way of writing it: dd.mm.yyyy hh:mm
        bad["order_ts"] = f"{ts[8:10]}.{ts[5:7]}.{ts[0:4]} {ts[11:16]}"
    elif what == "order_ts_1970":
        bad["order_ts"] = f"1970-01-01T03:00:00{TURKEY_OFFSET}"  # Unix time 0: an unset clock
    elif what == "wrong_schema_version":
        bad["schema_version"] = SCHEMA_VERSION + 1
    elif what == "unknown_category":
        bad["categories"] = [*bad["categories"], ("OUTDOOR", "kadin", "SPOR")[int(u * 3)]]
    text = _COMPACT_JSON.encode(bad)
    if what == "truncated_json":
        # Any proper prefix of a JSON object is invalid; cut in the second half, like a lost tail.
        text = text[: len(text) // 2 + int(u * (len(text) // 2 - 1))]
    return text.encode()


def generate_events(
    profiles: CustomerProfiles,
    settings: ProduceSettings,
    n: int,
    *,
    rng: np.random.Generator,
    start_ts: datetime,
    seq_start: int,
) -> list[Produced]:
    """n records following `start_ts` in simulated time: pure, so a seed always gives the same stream."""
    if n <= 0:
        return []
    if start_ts.utcoffset() is None:
        raise ValueError("start_ts must be timezone-aware")
    seq = np.arange(seq_start, seq_start + n, dtype=np.int64)
    # All draws happen up front with shapes that depend on n only, so every event consumes the same.
    u = rng.random((9, n))
    z = rng.standard_normal(n)
    category_bits = rng.integers(0, 1 << len(CATEGORIES), n, dtype=np.uint8)
    malformed_pick = rng.integers(0, len(MALFORMED_KINDS), n)

    is_malformed = u[0] < settings.malformed_share
    is_duplicate = ~is_malformed & (u[0] < settings.malformed_share + settings.duplicate_share)
    # A duplicate needs an earlier valid event of this batch; those before the first one are valid instead.
    candidates = np.flatnonzero(~is_malformed & ~is_duplicate)
    is_duplicate &= np.arange(n) > (candidates[0] if candidates.size else n)
    is_valid = ~is_malformed & ~is_duplicate

    customers = len(profiles)
    is_new = u[1] < settings.new_customer_share
    existing = np.searchsorted(profiles.cum_orders, u[2] * profiles.cum_orders[-1], side="right")
    # A new customer behaves like a customer picked at random, without the frequency weighting
    # (u[2] is free to reuse: whether an event is new does not depend on it).
    who = np.minimum(np.where(is_new, (u[2] * customers).astype(np.int64), existing), customers - 1)

    is_online = u[3] < profiles.online_share[who]
    online_channel = profiles.online_channels[who, (u[4] < 0.5).astype(np.int64)]
    channel = np.where(is_online, online_channel, OFFLINE_CODE)
    if settings.channel is not None:
        channel = np.full(n, CHANNELS.index(settings.channel))
    noise = np.exp(AMOUNT_LOG_SIGMA * z - AMOUNT_LOG_SIGMA**2 / 2)
    amount = np.maximum(np.round(profiles.avg_basket[who] * noise * settings.basket_factor, 2), 0.01)
    interests = profiles.category_mask[who]
    basket = interests & category_bits
    basket = np.where(basket == 0, interests, basket)

    clock_s = start_ts.timestamp() + np.cumsum(-np.log1p(-u[5]) * settings.event_seconds)
    is_late = u[6] < settings.late_share
    lateness_s = (LATE_DAYS_MIN + (LATE_DAYS_MAX - LATE_DAYS_MIN) * u[7]) * 86_400.0
    order_ts = _turkey_timestamps(np.where(is_late, clock_s - lateness_s, clock_s))

    event_ids = hashed_uuids(settings.seed, seq, _EVENT_ID_SALT)
    master_ids = profiles.master_id[who]
    master_ids_json = profiles.master_id_json[who]
    new_at = np.flatnonzero(is_new)
    if new_at.size:
        new_ids = hashed_uuids(settings.seed, seq[new_at], _CUSTOMER_ID_SALT)
        master_ids[new_at] = new_ids
        master_ids_json[new_at] = [f'"{i}"' for i in new_ids]

    valid_at = np.flatnonzero(is_valid)
    duplicate_at = np.flatnonzero(is_duplicate)
    valid_before = np.searchsorted(valid_at, duplicate_at)
    back = (u[8][duplicate_at] * np.minimum(valid_before, DUPLICATE_WINDOW)).astype(np.int64)
    source = np.full(n, -1, dtype=np.int64)
    source[duplicate_at] = valid_at[valid_before - 1 - back]

    kinds = np.where(is_valid, VALID, np.where(is_duplicate, DUPLICATE, np.asarray(MALFORMED_KINDS)[malformed_pick]))
    clocks = [datetime.fromtimestamp(s, TURKEY) for s in clock_s.tolist()]
    out: list[Produced] = []
    append = out.append
    for kind, eid, mid, mid_json, ts, ch, amt, cats, src, clock, variant in zip(
        kinds.tolist(),
        event_ids,
        master_ids.tolist(),
        master_ids_json.tolist(),
        order_ts,
        channel.tolist(),
        amount.tolist(),
        basket.tolist(),
        source.tolist(),
        clocks,
        u[8].tolist(),
        strict=True,
    ):
        if kind == DUPLICATE:
            original = out[src]
            append(replace(original, kind=DUPLICATE, clock_ts=clock))
            continue
        channel_name = CHANNELS[ch]
        event = {
            "event_id": eid,
            "master_id": mid,
            "order_ts": ts,
            "channel": channel_name,
            "amount": amt,
            "categories": list(CATEGORY_SUBSETS[cats]),
            "schema_version": SCHEMA_VERSION,
        }
        if kind == VALID:
            value = _valid_value(eid, mid_json, ts, channel_name, amt, CATEGORY_SUBSETS_JSON[cats])
            append(Produced(key=mid.encode(), value=value, kind=kind, event=event, clock_ts=clock))
        else:
            value = _malformed_value(kind, event, variant)
            append(Produced(key=mid.encode(), value=value, kind=kind, event=None, clock_ts=clock))
    return out


# ---------------------------------------------------------------- Kafka edge


class _KeyPartitioner:
    """The Java client's murmur2 partitioning, memoised per key: customers repeat and murmur2 is slow here."""

    def __init__(self) -> None:
        self._hashes: dict[bytes, int] = {}
        self._fallback = DefaultPartitioner()

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        """Same partition as DefaultPartitioner (and Java's) for every key."""
        if key is None:
            return int(self._fallback(key, all_partitions, available))
        hashed = self._hashes.get(key)
        if hashed is None:
            if len(self._hashes) >= PARTITION_CACHE_KEYS:
                self._hashes.clear()
            hashed = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return all_partitions[hashed % len(all_partitions)]


def producer_configs(settings: ProduceSettings) -> dict[str, Any]:
    """KafkaProducer configs: durable (acks=all) and batched for throughput, then the user's options.

    Options may use Java names (`security.protocol`) and are typed like kafka-python's defaults.
    """
    configs: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": "flo-seg-produce",
        "acks": "all",
        "linger_ms": 20,
        "batch_size": 256 * 1024,
        "buffer_memory": 64 * 1024 * 1024,
        "max_block_ms": 30_000,
        "partitioner": _KeyPartitioner(),
        # kafka-python's per-record metrics cost more than they tell here.
        "metrics_enabled": False,
    }
    defaults = KafkaProducer.DEFAULT_CONFIG
    unknown = sorted(k for k in settings.kafka_options if k.replace(".", "_") not in defaults)
    if unknown:
        raise ValueError(f"unknown Kafka producer options {unknown}")
    for name, text in settings.kafka_options.items():
        key = name.replace(".", "_")
        default = defaults[key]
        if isinstance(default, bool):
            value: Any = text.strip().lower() in ("1", "true", "yes")
        elif isinstance(default, int):
            value = int(text)
        elif isinstance(default, float):
            value = float(text)
        else:
            value = text
        configs[key] = value
    return configs


class _TokenBucket:
    """Paces sends to `rate` per second with bursts of at most ~50 ms worth, sleeping instead of spinning."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate * 0.05)
        self.tokens = 1.0
        self.updated = time.monotonic()

    def delay(self, now: float) -> float:
        """Seconds until the next send is allowed (0: now)."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate

    def take(self) -> None:
        """Spend one send."""
        self.tokens -= 1.0


class _Deliveries:
    """Counts records the broker never acknowledged; called from the producer's I/O thread."""

    def __init__(self) -> None:
        self.failed = 0
        self.first_error: BaseException | None = None
        self._lock = threading.Lock()

    def on_error(self, exc: BaseException) -> None:
        """Remember the failure, log only the first (one broken broker fails thousands of records)."""
        with self._lock:
            self.failed += 1
            if self.first_error is None:
                self.first_error = exc
                log.error("a record was not delivered: %s", exc)


@contextmanager
def _stop_on_sigint() -> Iterator[threading.Event]:
    """The first Ctrl-C asks the send loop to stop (it then flushes); a second one interrupts as usual."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def ask_to_stop(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        log.warning("stopping after the events sent so far are flushed (Ctrl-C again to abort)")
        stop.set()

    previous = signal.signal(signal.SIGINT, ask_to_stop)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def run_produce(
    settings: ProduceSettings,
    profiles: CustomerProfiles,
    *,
    progress: Callable[[ProduceProgress], None] | None = None,
) -> ProduceSummary:
    """Send generated events until `events` / `duration_s` / Ctrl-C, paced to `rate`, then flush."""
    producer = KafkaProducer(**producer_configs(settings))
    close_timeout_s = 10.0
    try:
        try:
            partitions = producer.partitions_for(settings.topic)
        except KafkaTimeoutError:
            raise RuntimeError(
                f"topic {settings.topic!r} not found on {settings.bootstrap_servers}; "
                "`make stack-up` creates flo.orders"
            ) from None
        log.info(
            "producing to %s (%d partitions) on %s",
            settings.topic,
            len(partitions),
            settings.bootstrap_servers,
        )
        with _stop_on_sigint() as stop:
            return _send_loop(producer, settings, profiles, stop, progress)
    except KeyboardInterrupt:
        close_timeout_s = 0.0  # a second Ctrl-C: leave now, dropping what is still buffered
        raise
    finally:
        producer.close(timeout=close_timeout_s)


def _send_loop(
    producer: KafkaProducer,
    settings: ProduceSettings,
    profiles: CustomerProfiles,
    stop: threading.Event,
    progress: Callable[[ProduceProgress], None] | None,
) -> ProduceSummary:
    """Generate a chunk, send it record by record, stop at events / duration / Ctrl-C, then flush."""
    rng = np.random.default_rng(settings.seed)
    clock = settings.start_ts or profiles.default_start_ts
    bucket = _TokenBucket(settings.rate) if settings.rate else None
    deliveries = _Deliveries()
    counts: Counter[str] = Counter()
    sent = 0
    first_ts: datetime | None = None
    started = time.monotonic()
    deadline = started + settings.duration_s if settings.duration_s else math.inf
    next_report = started + PROGRESS_EVERY_S
    is_done = False
    while not is_done:
        n = CHUNK_EVENTS if settings.events is None else min(CHUNK_EVENTS, settings.events - sent)
        if n <= 0:
            break
        batch = generate_events(profiles, settings, n, rng=rng, start_ts=clock, seq_start=sent)
        for record in batch:
            now = time.monotonic()
            if bucket is not None:
                wait = bucket.delay(now)
                while wait > 0 and not stop.is_set() and now < deadline:
                    time.sleep(min(wait, PROGRESS_EVERY_S, deadline - now))
                    now = time.monotonic()
                    wait = bucket.delay(now)
            if stop.is_set() or now >= deadline:
                is_done = True
                break
            if bucket is not None:
                bucket.take()
            producer.send(settings.topic, key=record.key, value=record.value).add_errback(deliveries.on_error)
            counts[record.kind] += 1
            sent += 1
            first_ts = first_ts or record.clock_ts
            clock = record.clock_ts
            if now >= next_report and progress is not None:
                elapsed = now - started
                progress(ProduceProgress(sent=sent, elapsed_s=elapsed, rate=sent / elapsed, clock_ts=clock))
                next_report = now + PROGRESS_EVERY_S
    producer.flush()
    elapsed = time.monotonic() - started
    summary = ProduceSummary(
        counts={kind: counts[kind] for kind in KINDS if counts[kind]},
        sent=sent,
        failed=deliveries.failed,
        elapsed_s=elapsed,
        rate=sent / elapsed if elapsed > 0 else 0.0,
        first_event_ts=first_ts,
        last_event_ts=clock if sent else None,
        is_interrupted=stop.is_set(),
    )
    log.info("sent %d events in %.1f s (%.0f/s), %d not delivered", sent, elapsed, summary.rate, summary.failed)
    return summary
