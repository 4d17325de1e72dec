"""Helpers for the streaming tests: a trained lake, hand-made order events, an independent recomputation."""

from __future__ import annotations

import datetime as dt
import json
import random
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from kafka import KafkaProducer
from pyspark.sql import SparkSession

from batch.compact import compact_lake
from batch.drift import Measurement
from batch.generate import write_history_csv
from batch.train import run_train
from devstack.stack import TopicSpec, ensure_topics
from flo_seg.settings import LakeSettings, TrainSettings
from streaming.job import StreamSettings, start_stream
from streaming.monitor import Check

CHANNELS = ("Android App", "Ios App", "Desktop", "Mobile", "Offline")
TZ = dt.timezone(dt.timedelta(hours=3))


def fresh_topics(bootstrap: str) -> tuple[str, str]:
    """New order and change topics (2 partitions each) that no other test writes to."""
    suffix = uuid.uuid4().hex[:8]
    topics = (f"test.orders.{suffix}", f"test.changes.{suffix}")
    ensure_topics(bootstrap, [TopicSpec(name=t, partitions=2) for t in topics])
    return topics


def stream_command(lake_root: str, checkpoint: Path, topics: tuple[str, str], bootstrap: str, *flags: str) -> list[str]:
    """The `flo-seg stream` command line a user would run, on the given lake, checkpoint and topics."""
    return [
        sys.executable,
        "-m",
        "flo_seg.cli",
        "--lake",
        lake_root,
        "stream",
        "--bootstrap-servers",
        bootstrap,
        "--topic",
        topics[0],
        "--changes-topic",
        topics[1],
        "--checkpoint",
        str(checkpoint),
        *flags,
    ]


def train_small_lake(root: Path, spark: SparkSession, customers: int = 600, seed: int = 5) -> Path:
    """`root/lake` trained on generated customers, k fixed to 3 to keep it quick: where stream tests start."""
    history = root / "history.csv"
    write_history_csv(history, customers=customers, seed=seed)
    run_train(spark, LakeSettings(root=str(root / "lake")), TrainSettings(k=3, seed=1), history_path=str(history))
    return root / "lake"


@dataclass
class EventSet:
    """What a test sent: every message, and which were valid, duplicate or malformed (and why)."""

    messages: list[tuple[bytes, bytes]] = field(default_factory=list)
    valid: list[dict[str, Any]] = field(default_factory=list)
    malformed: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0


def make_events(
    master_ids: list[str], start: dt.datetime, n: int, seed: int, minutes: tuple[int, int] = (30, 600)
) -> EventSet:
    """Valid orders for known and new customers, with re-sends, late orders and every malformed kind;
    event time advances by a random number of `minutes` from one order to the next."""
    rng = random.Random(seed)
    out = EventSet()
    new_ids = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(5)]
    clock = start
    for i in range(n):
        clock += dt.timedelta(minutes=rng.randint(*minutes))
        customer = rng.choice(new_ids) if rng.random() < 0.1 else rng.choice(master_ids)
        order_ts = clock - dt.timedelta(days=rng.randint(5, 40)) if rng.random() < 0.1 else clock
        event = {
            "event_id": f"e-{seed}-{i}",
            "master_id": customer,
            "order_ts": order_ts.astimezone(TZ).isoformat(),
            "channel": rng.choice(CHANNELS),
            "amount": round(rng.uniform(20, 400), 2),
            "categories": rng.sample(["KADIN", "ERKEK", "COCUK", "AKTIFSPOR"], rng.randint(0, 2)),
            "schema_version": 1,
        }
        out.valid.append(event)
        out.messages.append((customer.encode(), json.dumps(event).encode()))
        if rng.random() < 0.08:  # a producer retry: same event, same id
            out.messages.append((customer.encode(), json.dumps(event).encode()))
            out.duplicates += 1
    base = {
        "event_id": "bad",
        "master_id": master_ids[0],
        "order_ts": start.isoformat(),
        "channel": "Mobile",
        "amount": 10.0,
        "schema_version": 1,
    }
    malformed: dict[str, Any] = {
        "malformed_json": b"this is not json",
        "missing_or_mistyped_field": [
            {k: v for k, v in base.items() if k != "event_id"},
            {k: v for k, v in base.items() if k != "master_id"},
            {**base, "amount": "12.5"},
        ],
        "unknown_channel": {**base, "channel": "Carrier Pigeon"},
        "non_positive_amount": [{**base, "amount": -5.0}, {**base, "amount": 0}],
        "bad_order_ts": {**base, "order_ts": "yesterday"},
        "absurd_order_ts": {**base, "order_ts": "1970-01-01T00:00:00+00:00"},
        "unsupported_schema_version": {**base, "schema_version": 2},
        "unknown_category": {**base, "categories": ["SHOES"]},
    }
    for reason, payloads in malformed.items():
        items = payloads if isinstance(payloads, list) else [payloads]
        for j, payload in enumerate(items):
            value = (
                payload
                if isinstance(payload, bytes)
                else json.dumps(
                    {**payload, "event_id": f"bad-{reason}-{j}"} if "event_id" in payload else payload
                ).encode()
            )
            out.messages.insert(rng.randint(0, len(out.messages)), (b"bad", value))
            out.malformed[reason] = out.malformed.get(reason, 0) + 1
    return out


def send(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    """Produce and wait for every ack."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    for key, value in messages:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()


def expected_state(initial: pd.DataFrame, events: list[dict[str, Any]]) -> pd.DataFrame:
    """Customer state recomputed from the initial state and the valid events, without the product's code."""
    state = {r["master_id"]: dict(r) for r in initial.to_dict("records")}
    last_ts = {m: pd.Timestamp(s["last_order_date"]).tz_localize("UTC") for m, s in state.items()}
    ordered = sorted(events, key=lambda e: (pd.Timestamp(e["order_ts"]).tz_convert("UTC"), e["event_id"]))
    for e in ordered:
        ts = pd.Timestamp(e["order_ts"]).tz_convert("UTC")
        day = ts.date()
        online = e["channel"] != "Offline"
        s = state.get(e["master_id"])
        if s is None:
            s = state[e["master_id"]] = {
                "master_id": e["master_id"],
                "order_channel": e["channel"],
                "last_order_channel": e["channel"],
                "first_order_date": day,
                "last_order_date": day,
                "last_order_date_online": None,
                "last_order_date_offline": None,
                "order_num_total_ever_online": 0,
                "order_num_total_ever_offline": 0,
                "customer_value_total_ever_online": 0.0,
                "customer_value_total_ever_offline": 0.0,
            }
            last_ts[e["master_id"]] = ts
        elif ts > last_ts[e["master_id"]]:
            s["last_order_channel"] = e["channel"]
            last_ts[e["master_id"]] = ts
        side = "online" if online else "offline"
        s[f"order_num_total_ever_{side}"] += 1
        s[f"customer_value_total_ever_{side}"] += e["amount"]
        s["first_order_date"] = min(s["first_order_date"], day)
        s["last_order_date"] = max(s["last_order_date"], day)
        key = f"last_order_date_{side}"
        s[key] = day if s[key] is None else max(s[key], day)
    return pd.DataFrame(list(state.values()))


def run_available_now(spark: SparkSession, lake: LakeSettings, settings: StreamSettings) -> None:
    """An in-process `flo-seg stream --available-now` to the end of what the topic holds, then its compaction."""
    query = start_stream(spark, lake, settings)
    try:
        query.awaitTermination(timeout=600)
        assert query.exception() is None
    finally:
        query.stop()
        compact_lake(spark, lake)  # what a stopping `flo-seg stream` does


def one_alarm(model_version: str, kind: str, name: str, value: float, detected_at: dt.datetime) -> Check:
    """A drift check of `model_version` that found one alarm (psi for a feature, share_shift for a segment)."""
    statistic, threshold = ("psi", 0.25) if kind == "feature" else ("share_shift", 0.1)
    alarm = Measurement(kind=kind, name=name, statistic=statistic, value=value, threshold=threshold, customers=321)
    return Check(
        model_version=model_version,
        window_start=detected_at - dt.timedelta(hours=1),
        detected_at=detected_at,
        recent_customers=321,
        measurements=(alarm,),
    )
