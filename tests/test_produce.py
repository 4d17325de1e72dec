"""The order-event producer: events drawn from each customer's history, and the broken ones really broken.

Generation is tested purely on a tiny inline customer frame; two `kafka` tests send to a throw-away topic
of the broker that `make stack-up` starts and read everything back.
"""

from __future__ import annotations

import json
import os
import re
import signal
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from jsonschema import Draft202012Validator, FormatChecker
from kafka import KafkaConsumer
from pyspark.sql import SparkSession

from batch.lake import overwrite_table
from devstack import stack
from flo_seg.settings import LakeSettings
from schemas.events import JSON_SCHEMA_PATH
from schemas.tables import CUSTOMER_STATE, CUSTOMER_STATE_SCHEMA
from streaming.produce import (
    DUPLICATE,
    MALFORMED_KINDS,
    VALID,
    CustomerProfiles,
    Produced,
    ProduceProgress,
    ProduceSettings,
    customer_profiles,
    generate_events,
    load_profiles,
    producer_configs,
    run_produce,
)

TURKEY = timezone(timedelta(hours=3))
START = datetime(2021, 6, 1, 10, 0, tzinfo=TURKEY)
UUID_SHAPE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
ORDER_TS_SHAPE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+03:00$")
# The stream quarantines orders before this day (streaming/events.py); JSON Schema cannot say it.
EARLIEST_ORDER = datetime(2000, 1, 1, tzinfo=UTC)

# One row per behaviour under test; counts are longs and values doubles as in CUSTOMER_STATE_SCHEMA.
STATE_COLUMNS = [
    "master_id",
    "order_channel",
    "last_order_channel",
    "last_order_date",
    "order_num_total_ever_online",
    "order_num_total_ever_offline",
    "customer_value_total_ever_offline",
    "customer_value_total_ever_online",
    "interested_in_categories_12",
]
STATE_ROWS = [
    # A store-only customer (first seen in a store by the stream): only Offline orders, ~100 per basket.
    ("store-only", "Offline", "Offline", date(2021, 5, 1), 0, 5, 500.0, 0.0, ["KADIN"]),
    # An iPhone-only heavy buyer: 40 of the 52 past orders in this frame, ~300 per basket.
    ("ios-only", "Ios App", "Ios App", date(2021, 5, 20), 40, 0, 0.0, 12_000.0, ["ERKEK", "AKTIFSPOR"]),
    # Half online (Desktop), half in stores; last order in a store. No categories at all.
    ("desktop-and-store", "Desktop", "Offline", date(2021, 5, 30), 2, 2, 100.0, 100.0, None),
    # Started on Android, now on the mobile web; an empty category list.
    ("android-then-mobile", "Android App", "Mobile", date(2021, 4, 2), 3, 0, 0.0, 150.0, []),
]
INTERESTS = {row[0]: set(row[8] or []) for row in STATE_ROWS}
ALLOWED_CHANNELS = {
    "store-only": {"Offline"},
    "ios-only": {"Ios App"},
    "desktop-and-store": {"Desktop", "Offline"},
    "android-then-mobile": {"Android App", "Mobile"},
}
AVG_BASKET = {"store-only": 100.0, "ios-only": 300.0, "desktop-and-store": 50.0, "android-then-mobile": 50.0}
ORDERS = {row[0]: row[4] + row[5] for row in STATE_ROWS}


def state_pdf() -> pd.DataFrame:
    """The inline customers as `customer_state` rows arrive from `toPandas`."""
    return pd.DataFrame(STATE_ROWS, columns=STATE_COLUMNS)


@pytest.fixture(scope="module")
def profiles() -> CustomerProfiles:
    """Profiles of the inline customers."""
    return customer_profiles(state_pdf())


def generate(profiles: CustomerProfiles, n: int, **overrides: Any) -> list[Produced]:
    """n events from one fresh generator: seed 42 unless overridden, clock from START."""
    settings = ProduceSettings(**{"new_customer_share": 0.0, **overrides})
    rng = np.random.default_rng(settings.seed)
    return generate_events(profiles, settings, n, rng=rng, start_ts=START, seq_start=0)


def order_time(record: Produced) -> datetime:
    """A valid event's order_ts, parsed."""
    assert record.event is not None
    return datetime.fromisoformat(record.event["order_ts"])


# JSON Schema's date-time format needs an extra package to be checked; this checker does it with the
# standard library, so an unparseable order_ts fails validation as the stream would reject it.
FORMATS = FormatChecker(formats=())


@FORMATS.checks("date-time", raises=ValueError)
def is_date_time(value: object) -> bool:
    """An ISO-8601 date-time with an offset."""
    return not isinstance(value, str) or ("T" in value and datetime.fromisoformat(value).tzinfo is not None)


VALIDATOR = Draft202012Validator(json.loads(JSON_SCHEMA_PATH.read_text()), format_checker=FORMATS)


def contract_violations(value: bytes) -> list[str]:
    """Why a Kafka value breaks the order-event contract (empty: it is a valid event)."""
    try:
        event = json.loads(value)
    except ValueError as exc:
        return [f"not JSON: {exc}"]
    problems = [error.message for error in VALIDATOR.iter_errors(event)]
    if not problems and datetime.fromisoformat(event["order_ts"]) < EARLIEST_ORDER:
        problems.append(f"order_ts {event['order_ts']} is before {EARLIEST_ORDER:%Y}")
    return problems


# ------------------------------------------------------------------------------- profiles


def test_profiles_read_the_customers_history(profiles: CustomerProfiles) -> None:
    assert list(profiles.master_id) == [row[0] for row in STATE_ROWS]
    assert profiles.online_share.tolist() == [0.0, 1.0, 0.5, 1.0]
    assert profiles.avg_basket.tolist() == [100.0, 300.0, 50.0, 50.0]
    assert profiles.cum_orders.tolist() == [5.0, 45.0, 49.0, 52.0]
    assert profiles.latest_order_date == date(2021, 5, 30)
    assert profiles.default_start_ts == datetime(2021, 5, 31, tzinfo=TURKEY)


def test_profiles_reject_missing_columns_and_no_customers() -> None:
    with pytest.raises(ValueError, match="interested_in_categories_12"):
        customer_profiles(state_pdf().drop(columns="interested_in_categories_12"))
    with pytest.raises(ValueError, match="no customers"):
        customer_profiles(state_pdf().iloc[0:0])


def test_profiles_accept_the_history_csv_category_text() -> None:
    csv_text = pd.Series(["[KADIN]", "[ERKEK, AKTIFSPOR]", None, "[]"], dtype=object)
    pdf = state_pdf().assign(interested_in_categories_12=csv_text)
    assert customer_profiles(pdf).category_mask.tolist() == customer_profiles(state_pdf()).category_mask.tolist()


# ------------------------------------------------------------------------------- valid events


def test_same_seed_same_events_other_seed_other_events(profiles: CustomerProfiles) -> None:
    settings = {"duplicate_share": 0.1, "malformed_share": 0.1, "late_share": 0.1, "new_customer_share": 0.1}
    first = generate(profiles, 500, **settings)
    again = generate(profiles, 500, **settings)
    other = generate(profiles, 500, seed=7, **settings)
    assert [(r.key, r.value, r.kind, r.clock_ts) for r in first] == [
        (r.key, r.value, r.kind, r.clock_ts) for r in again
    ]
    assert {r.value for r in first}.isdisjoint({r.value for r in other})


def test_valid_events_meet_the_contract_and_match_their_value(profiles: CustomerProfiles) -> None:
    records = generate(profiles, 1_000, new_customer_share=0.2)
    assert {r.kind for r in records} == {VALID}
    for record in records:
        assert record.event is not None
        assert contract_violations(record.value) == []
        assert json.loads(record.value) == record.event
        assert record.key == record.event["master_id"].encode()
        assert UUID_SHAPE.match(record.event["event_id"])
        assert ORDER_TS_SHAPE.match(record.event["order_ts"])
        assert record.event["schema_version"] == 1
    assert len({r.event["event_id"] for r in records if r.event}) == len(records)


def test_channels_amounts_and_categories_come_from_each_customers_history(profiles: CustomerProfiles) -> None:
    events = [r.event for r in generate(profiles, 4_000) if r.event]
    by_customer: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_customer.setdefault(event["master_id"], []).append(event)
    assert set(by_customer) == set(ALLOWED_CHANNELS)
    for customer, orders in by_customer.items():
        assert {o["channel"] for o in orders} <= ALLOWED_CHANNELS[customer], customer
        assert all(set(o["categories"]) <= INTERESTS[customer] for o in orders), customer
        assert all(o["categories"] or not INTERESTS[customer] for o in orders), customer
        amounts = np.array([o["amount"] for o in orders])
        assert (amounts > 0).all()
        assert amounts == pytest.approx(np.round(amounts, 2))
        assert np.median(amounts) == pytest.approx(AVG_BASKET[customer], rel=0.25), customer
    # Both channels of a mixed customer appear, in proportion to their counts (2 online, 2 offline).
    mixed = Counter(o["channel"] for o in by_customer["desktop-and-store"])
    assert mixed["Offline"] / mixed.total() == pytest.approx(0.5, abs=0.15)
    assert set(Counter(o["channel"] for o in by_customer["android-then-mobile"])) == {"Android App", "Mobile"}
    # Customers are chosen in proportion to their past orders.
    shares = {c: len(o) / len(events) for c, o in by_customer.items()}
    assert shares == pytest.approx({c: n / sum(ORDERS.values()) for c, n in ORDERS.items()}, abs=0.03)


def test_new_customers_get_fresh_uuid_shaped_ids(profiles: CustomerProfiles) -> None:
    events = [r.event for r in generate(profiles, 4_000, new_customer_share=0.3) if r.event]
    new_ids = [e["master_id"] for e in events if e["master_id"] not in ALLOWED_CHANNELS]
    assert len(new_ids) / len(events) == pytest.approx(0.3, abs=0.03)
    assert all(UUID_SHAPE.match(i) for i in new_ids)
    assert len(set(new_ids)) == len(new_ids)
    assert {e["channel"] for e in events} <= set().union(*ALLOWED_CHANNELS.values())


def test_event_time_advances_from_the_start(profiles: CustomerProfiles) -> None:
    records = generate(profiles, 2_000, event_seconds=30.0)
    clocks = [r.clock_ts for r in records]
    assert clocks[0] > START and clocks == sorted(clocks)
    for record in records:
        assert timedelta(0) <= record.clock_ts - order_time(record) < timedelta(seconds=1)
    mean_gap = (clocks[-1] - START).total_seconds() / len(records)
    assert mean_gap == pytest.approx(30.0, rel=0.1)


def test_late_events_are_days_before_the_current_time(profiles: CustomerProfiles) -> None:
    records = generate(profiles, 2_000, late_share=0.25)
    lateness = [r.clock_ts - order_time(r) for r in records]
    late = [d for d in lateness if d >= timedelta(seconds=1)]
    # order_ts is whole seconds, so a late order can be up to a second more than 30 days back.
    assert all(timedelta(days=1) <= d < timedelta(days=30, seconds=1) for d in late)
    assert len(late) / len(records) == pytest.approx(0.25, abs=0.04)


def test_chunks_continue_the_clock_and_never_reuse_an_event_id(profiles: CustomerProfiles) -> None:
    settings = ProduceSettings(new_customer_share=0.5)
    rng = np.random.default_rng(1)
    first = generate_events(profiles, settings, 300, rng=rng, start_ts=START, seq_start=0)
    second = generate_events(profiles, settings, 300, rng=rng, start_ts=first[-1].clock_ts, seq_start=300)
    records = first + second
    assert [r.clock_ts for r in records] == sorted(r.clock_ts for r in records)
    assert len({r.event["event_id"] for r in records if r.event}) == 600
    assert len({r.event["master_id"] for r in records if r.event}) == len({r.key for r in records})


# ------------------------------------------------------------------------------- duplicates, malformed


def test_duplicates_resend_an_earlier_valid_event_exactly(profiles: CustomerProfiles) -> None:
    records = generate(profiles, 2_000, duplicate_share=0.2, malformed_share=0.1)
    kinds = Counter(r.kind for r in records)
    assert kinds[DUPLICATE] / len(records) == pytest.approx(0.2, abs=0.03)
    seen: set[tuple[bytes, bytes]] = set()
    for record in records:
        if record.kind == DUPLICATE:
            assert (record.key, record.value) in seen
            assert record.event is not None and json.loads(record.value) == record.event
        elif record.kind == VALID:
            assert (record.key, record.value) not in seen
            seen.add((record.key, record.value))
    valid_ids = [r.event["event_id"] for r in records if r.kind == VALID and r.event]
    assert len(set(valid_ids)) == len(valid_ids)


@pytest.fixture(scope="module")
def malformed(profiles: CustomerProfiles) -> list[Produced]:
    """Only malformed events, enough for every kind to appear many times."""
    return generate(profiles, 2_000, malformed_share=1.0)


def test_every_malformed_kind_is_produced(malformed: list[Produced]) -> None:
    kinds = Counter(r.kind for r in malformed)
    assert set(kinds) == set(MALFORMED_KINDS)
    assert min(kinds.values()) > 2_000 / len(MALFORMED_KINDS) / 2


@pytest.mark.parametrize("kind", MALFORMED_KINDS)
def test_every_malformed_kind_breaks_the_contract(malformed: list[Produced], kind: str) -> None:
    records = [r for r in malformed if r.kind == kind]
    assert records
    for record in records:
        assert record.event is None
        assert contract_violations(record.value), record.value


def test_malformed_events_still_carry_a_customer_key(malformed: list[Produced]) -> None:
    assert {r.key.decode() for r in malformed} <= set(ALLOWED_CHANNELS)


# ------------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "overrides",
    [
        {"malformed_share": 1.5},
        {"late_share": -0.1},
        {"duplicate_share": 0.6, "malformed_share": 0.6},
        {"rate": 0.0},
        {"duration_s": -1.0},
        {"events": -1},
        {"start_ts": datetime(2021, 6, 1)},
    ],
)
def test_impossible_settings_are_rejected(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ProduceSettings(**overrides)


def test_kafka_options_take_java_names_and_kafka_python_types() -> None:
    configs = producer_configs(
        ProduceSettings(
            kafka_options={
                "security.protocol": "SSL",
                "request.timeout.ms": "5000",
                "ssl_check_hostname": "false",
            }
        )
    )
    assert configs["acks"] == "all"
    assert configs["security_protocol"] == "SSL"
    assert configs["request_timeout_ms"] == 5000
    assert configs["ssl_check_hostname"] is False
    with pytest.raises(ValueError, match=r"no\.such\.option"):
        producer_configs(ProduceSettings(kafka_options={"no.such.option": "1"}))


# ------------------------------------------------------------------------------- lake


def test_load_profiles_samples_the_lake_but_keeps_its_latest_order(spark: SparkSession, tmp_path: Path) -> None:
    lake = LakeSettings(root=str(tmp_path / "lake"))
    updated_at = datetime(2021, 6, 1)
    rows = [
        {
            **dict(zip(STATE_COLUMNS, row, strict=True)),
            "first_order_date": date(2020, 1, 1),
            "last_order_date_online": None,
            "last_order_date_offline": None,
            "updated_at": updated_at,
        }
        for row in STATE_ROWS
    ]
    overwrite_table(spark.createDataFrame(rows, CUSTOMER_STATE_SCHEMA), lake, CUSTOMER_STATE)

    everyone = load_profiles(spark, lake)
    assert sorted(everyone.master_id) == sorted(ALLOWED_CHANNELS)
    assert sorted(everyone.avg_basket.tolist()) == sorted(AVG_BASKET.values())
    assert sorted(everyone.category_mask.tolist()) == sorted(customer_profiles(state_pdf()).category_mask.tolist())

    sample = load_profiles(spark, lake, sample=2)
    assert len(sample) == 2 and set(sample.master_id) <= set(ALLOWED_CHANNELS)
    # The fixed sample leaves out the customer with the latest order; the clock still starts after it.
    assert "desktop-and-store" not in set(sample.master_id)
    assert sample.latest_order_date == date(2021, 5, 30)


# ------------------------------------------------------------------------------- Kafka


@pytest.fixture
def scratch_topic(kafka_bootstrap: str) -> Iterator[str]:
    """A throw-away 4-partition topic, so test events never reach flo.orders."""
    name = f"flo.test-produce-{uuid.uuid4().hex[:10]}"
    stack.ensure_topics(kafka_bootstrap, [stack.TopicSpec(name=name, partitions=4)])
    yield name
    with stack.admin_client(kafka_bootstrap, timeout_s=10.0) as admin:
        admin.delete_topics([name], timeout_ms=10_000)


def consume_all(bootstrap: str, topic: str, expected: int) -> list[Any]:
    """Every record of the topic, from the start (stops at `expected` or after 15 s of silence)."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"flo-test-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=15_000,
    )
    try:
        records = []
        for record in consumer:
            records.append(record)
            if len(records) >= expected:
                break
        return records
    finally:
        consumer.close()


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_produced_events_arrive_keyed_by_customer(
    kafka_bootstrap: str, scratch_topic: str, profiles: CustomerProfiles
) -> None:
    settings = ProduceSettings(
        bootstrap_servers=kafka_bootstrap,
        topic=scratch_topic,
        events=500,
        new_customer_share=0.1,
        duplicate_share=0.1,
        malformed_share=0.1,
        late_share=0.1,
    )
    summary = run_produce(settings, profiles)
    # The same seed regenerates what was sent: the first 500 events of one generator from the default start.
    expected = generate_events(
        profiles,
        settings,
        500,
        rng=np.random.default_rng(settings.seed),
        start_ts=profiles.default_start_ts,
        seq_start=0,
    )
    received = consume_all(kafka_bootstrap, scratch_topic, expected=500)

    assert summary.sent == len(received) == 500 and summary.failed == 0 and not summary.is_interrupted
    assert summary.counts == dict(Counter(r.kind for r in expected))
    assert {VALID, DUPLICATE} <= set(summary.counts) and len(summary.counts) > 8
    assert summary.first_event_ts == expected[0].clock_ts and summary.last_event_ts == expected[-1].clock_ts
    assert Counter((r.key, r.value) for r in received) == Counter((e.key, e.value) for e in expected)
    kind_of = {(e.key, e.value): e.kind for e in expected}
    for record in received:
        if kind_of[(record.key, record.value)] in (VALID, DUPLICATE):
            assert record.key.decode() == json.loads(record.value)["master_id"]
    partitions: dict[bytes, set[int]] = {}
    for record in received:
        partitions.setdefault(record.key, set()).add(record.partition)
    assert all(len(p) == 1 for p in partitions.values())


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_ctrl_c_stops_cleanly_after_flushing(
    kafka_bootstrap: str, scratch_topic: str, profiles: CustomerProfiles
) -> None:
    settings = ProduceSettings(bootstrap_servers=kafka_bootstrap, topic=scratch_topic, rate=200.0, duration_s=60.0)
    handler_before = signal.getsignal(signal.SIGINT)
    heartbeats: list[ProduceProgress] = []

    def press_ctrl_c(progress: ProduceProgress) -> None:
        heartbeats.append(progress)
        if len(heartbeats) == 1:
            os.kill(os.getpid(), signal.SIGINT)

    summary = run_produce(settings, profiles, progress=press_ctrl_c)
    received = consume_all(kafka_bootstrap, scratch_topic, expected=summary.sent)

    assert summary.is_interrupted and summary.failed == 0
    assert 0 < heartbeats[0].sent <= summary.sent < 60 * 200
    assert len(received) == summary.sent
    assert signal.getsignal(signal.SIGINT) is handler_before
