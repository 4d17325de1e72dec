"""The order-event parser without a broker: every hostile value gets its reason, random JSON ends valid xor quarantined."""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pyspark.sql import DataFrame, SparkSession

from schemas.events import EARLIEST_ORDER, event_json_schema
from streaming.events import DETAIL, REASON, parse_order_events, quarantine_rows, valid_orders
from streaming.job import KAFKA_RECORD_SCHEMA

GOOD: dict[str, Any] = {
    "event_id": "e-1",
    "master_id": "cc294636-19f0-11eb-8d74-000d3a38a36f",
    "order_ts": "2021-06-01T10:15:00+03:00",
    "channel": "Android App",
    "amount": 129.99,
    "categories": ["KADIN", "AKTIFSPOR"],
    "schema_version": 1,
}


def kafka_frame(spark: SparkSession, records: list[tuple[bytes | None, bytes | None]]) -> DataFrame:
    """Rows shaped like the Kafka source's, at offsets 0.. of one partition."""
    rows = [(key, value, "orders", 0, offset) for offset, (key, value) in enumerate(records)]
    return spark.createDataFrame(rows, KAFKA_RECORD_SCHEMA)


def one(spark: SparkSession, value: str | bytes | None, key: str | None = GOOD["master_id"]) -> tuple[str, str]:
    """(reason, detail) of a single message; reason None when valid."""
    raw = value.encode() if isinstance(value, str) else value
    row = parse_order_events(kafka_frame(spark, [(None if key is None else key.encode(), raw)])).first()
    assert row is not None
    return row[REASON], row[DETAIL]


def event(**changes: Any) -> str:
    """The good event with some fields changed (None removes one)."""
    body = {k: v for k, v in {**GOOD, **changes}.items() if v is not None}
    return json.dumps(body)


def test_a_good_event_is_valid(spark: SparkSession) -> None:
    assert one(spark, event()) == (None, None)


HOSTILE: list[tuple[str | bytes | None, str, str]] = [
    # amounts a cents cast cannot hold, or that are no number at all
    (event(amount=1e308), "amount_out_of_range", "1.0E308"),
    (event(amount=1e16), "amount_out_of_range", "1.0E16"),
    (event(amount=1_000_000.01), "amount_out_of_range", "1000000.01"),
    # NaN and Infinity are not JSON (Spark would read them); as strings they are the wrong number
    (event().replace("129.99", "NaN"), "malformed_json", "not one JSON object"),
    (event().replace("129.99", "Infinity"), "malformed_json", "not one JSON object"),
    (event(amount="Infinity"), "amount_out_of_range", "Infinity"),
    (event(amount="-Infinity"), "non_positive_amount", "-Infinity"),
    (event().replace("129.99", "1e400"), "amount_out_of_range", "Infinity"),
    (event(amount="NaN"), "amount_out_of_range", "NaN"),
    (event(amount=0), "non_positive_amount", "<= 0"),
    (event(amount=0.004999), "amount_out_of_range", "from 0.005 (0.01 in cents)"),
    (event(amount=1e-320), "amount_out_of_range", "from 0.005"),
    (event(amount="12.5"), "missing_or_mistyped_field", "amount"),
    # order times without an offset, or not a time
    (event(order_ts="2021-06-01T10:15:00"), "bad_order_ts", '"2021-06-01T10:15:00"'),
    (event(order_ts="2021-06-01"), "bad_order_ts", "2021-06-01"),
    (event(order_ts="2021"), "bad_order_ts", "2021"),
    (event(order_ts="2021-06-01T10:15+03:00"), "bad_order_ts", "10:15+03:00"),
    (event(order_ts="2021-02-30T10:15:00+03:00"), "bad_order_ts", "2021-02-30"),
    (event(order_ts="2021-06-01T10:15:00+03:00\n"), "bad_order_ts", "\\n"),
    (event(order_ts="1999-12-31T23:00:00Z"), "absurd_order_ts", EARLIEST_ORDER),
    # identifiers that would make a second, fake customer
    (event(master_id=" cc294636-19f0-11eb-8d74-000d3a38a36f"), "bad_master_id", '" cc294636'),
    (event(master_id="cc294636\n"), "bad_master_id", "\\n"),
    (event(master_id="a" * 129), "bad_master_id", "a" * 129),
    (event(master_id="a" * 300), "bad_master_id", "a" * 199 + "…"),
    (event(event_id="e 1"), "bad_event_id", '"e 1"'),
    (event(master_id=""), "missing_or_mistyped_field", "master_id"),
    (event(event_id=123), "missing_or_mistyped_field", "of the wrong type: event_id"),
    (event(event_id=True), "missing_or_mistyped_field", "event_id"),
    (event(master_id=42), "missing_or_mistyped_field", "master_id"),
    (event(event_id=None, master_id=None), "missing_or_mistyped_field", "type: event_id, master_id"),
    # categories
    ('{"categories": ["KADIN", null], ' + event(categories=None)[1:], "unknown_category", "null"),
    (event(categories=["SHOES"]), "unknown_category", "SHOES"),
    (event(categories="KADIN"), "missing_or_mistyped_field", "categories"),
    # not one JSON object
    ('{"a":' + "[" * 5000 + "]" * 5000 + ", " + event()[1:], "malformed_json", "nested deeper"),
    (event() + " trailing", "malformed_json", "not one JSON object"),
    (event() + '{"amount": 999999}', "malformed_json", "not one JSON object"),
    (event() + "\n" + event(), "malformed_json", "not one JSON object"),
    (event() + " xyz}", "malformed_json", "not one JSON object"),
    (event() + ',{"a": 1}', "malformed_json", "not one JSON object"),
    (event().replace('"', "'"), "malformed_json", "not one JSON object"),
    (event(categories=["X" * 50] * 100), "unknown_category", "…"),
    (event()[:-5], "malformed_json", "not one JSON object"),
    ("[" + event() + "]", "malformed_json", "not one JSON object"),
    ("null", "malformed_json", "not one JSON object"),
    (b"\xff\xfe\x00", "malformed_json", "not one JSON object"),
    (None, "malformed_json", "not one JSON object"),
    (event(schema_version=2), "unsupported_schema_version", "got 2"),
    (event(channel="Carrier Pigeon"), "unknown_channel", "Carrier Pigeon"),
]


@pytest.fixture(scope="module")
def parsed_hostile(spark: SparkSession) -> list[tuple[str, str]]:
    """(reason, detail) of every hostile value, parsed together in one frame (one Spark job, not one each)."""
    raws = [value.encode() if isinstance(value, str) else value for value, _, _ in HOSTILE]
    rows = parse_order_events(kafka_frame(spark, [(GOOD["master_id"].encode(), raw) for raw in raws])).collect()
    assert len(rows) == len(HOSTILE)
    return [(r[REASON], r[DETAIL]) for r in sorted(rows, key=lambda r: r["kafka_offset"])]


@pytest.mark.parametrize(("value", "reason", "detail_part"), HOSTILE)
def test_hostile_event_is_quarantined_with_its_reason(
    parsed_hostile: list[tuple[str, str]], value: str | bytes | None, reason: str, detail_part: str
) -> None:
    got_reason, got_detail = parsed_hostile[HOSTILE.index((value, reason, detail_part))]
    assert got_reason == reason
    assert detail_part in got_detail


def test_the_kafka_key_must_be_the_master_id(spark: SparkSession) -> None:
    assert one(spark, event(), key="someone-else") == ("key_mismatch", 'Kafka key "someone-else" is not master_id')
    assert one(spark, event(), key=None) == ("key_mismatch", "Kafka key null is not master_id")


def test_a_repeated_category_counts_once(spark: SparkSession) -> None:
    events = parse_order_events(
        kafka_frame(spark, [(GOOD["master_id"].encode(), event(categories=["KADIN", "KADIN"]).encode())])
    )
    assert [r["categories"] for r in valid_orders(events).collect()] == [["KADIN", "KADIN"]]
    assert events.first()[REASON] is None  # type: ignore[index]


# ----------------------------------------------------------------------------- generative
VALIDATOR = Draft202012Validator(event_json_schema())
json_scalars = st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats() | st.text(max_size=12)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
)
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "event_id": st.sampled_from(["e-1", "e-2", " e", "", "e\n", "a" * 200]) | json_values,
    "master_id": st.sampled_from([GOOD["master_id"], "m-2", " m", "", "m\n"]) | json_values,
    "order_ts": st.datetimes(dt.datetime(1990, 1, 1), dt.datetime(2030, 1, 1), timezones=st.just(dt.UTC)).map(
        lambda t: t.isoformat()
    )
    | st.sampled_from(["2021-06-01T10:15:00", "2021-06-01", "2021", "2021-06-01T10:15:00Z", "yesterday"])
    | json_values,
    "channel": st.sampled_from(["Android App", "Ios App", "Desktop", "Mobile", "Offline", "offline", ""]) | json_values,
    "amount": st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0.01, 129.99, 1e6, 1e308, -1.0])
    | json_values,
    "categories": st.lists(st.sampled_from(["KADIN", "ERKEK", "COCUK", "AKTIFSPOR", "AKTIFCOCUK", "SHOES"]), max_size=3)
    | st.lists(st.none() | st.text(max_size=5), max_size=2)
    | json_values,
    "schema_version": st.sampled_from([1, 2, "1"]) | json_values,
}


@st.composite
def messages(draw: st.DrawFn) -> tuple[bytes | None, bytes | None]:
    """A Kafka message: a near-valid event with some fields dropped or broken, random JSON, or random bytes."""
    kind = draw(st.sampled_from(["event", "event", "event", "json", "bytes"]))
    if kind == "bytes":
        value: bytes | None = draw(st.none() | st.binary(max_size=40))
    elif kind == "json":
        value = json.dumps(draw(json_values)).encode()
    else:
        body = {
            name: (GOOD[name] if draw(st.integers(0, 3)) else draw(strategy))
            for name, strategy in FIELD_VALUES.items()
            if draw(st.integers(0, 12))
        }
        text = json.dumps(body)
        value = (text[: draw(st.integers(0, len(text)))] if draw(st.integers(0, 15)) == 0 else text).encode()
    key = draw(st.sampled_from([GOOD["master_id"], "m-2", None]))
    return (None if key is None else key.encode(), value)


def contract_valid(key: bytes | None, value: bytes | None) -> bool:
    """The contract checked independently: JSON Schema, the key rule, finite amount, date range, real instant."""
    try:
        body = json.loads(value or b"", parse_constant=lambda c: float(c))
        order_ts = dt.datetime.fromisoformat(body["order_ts"])
    except (ValueError, TypeError, KeyError):
        return False
    if not isinstance(body, dict) or not VALIDATOR.is_valid(body):
        return False
    amount = body["amount"]
    return (
        key is not None
        and key.decode() == body["master_id"]
        and not isinstance(amount, bool)
        and math.isfinite(amount)
        and not body["master_id"].endswith("\n")
        and not body["event_id"].endswith("\n")
        and not body["order_ts"].endswith("\n")
        and dt.datetime.fromisoformat(EARLIEST_ORDER).replace(tzinfo=dt.UTC) <= order_ts
        and order_ts <= dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
        and type(body["schema_version"]) is int
    )


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(messages(), min_size=1, max_size=150))
def test_every_record_ends_valid_or_quarantined_never_both_never_neither(
    spark: SparkSession, records: list[tuple[bytes | None, bytes | None]]
) -> None:
    events = parse_order_events(kafka_frame(spark, records)).cache()
    try:
        valid_offsets = [r["kafka_offset"] for r in events.where(f"{REASON} IS NULL").select("kafka_offset").collect()]
        quarantined = quarantine_rows(events).select("kafka_offset", "reason").collect()
        assert valid_orders(events).count() == len(valid_offsets)
        assert all(r["reason"] for r in quarantined)
        assert sorted(valid_offsets + [r["kafka_offset"] for r in quarantined]) == list(range(len(records)))
        # The parser agrees with an independent reading of the contract, record by record.
        expected_valid = [i for i, (key, value) in enumerate(records) if contract_valid(key, value)]
        assert sorted(valid_offsets) == expected_valid
    finally:
        events.unpersist()
