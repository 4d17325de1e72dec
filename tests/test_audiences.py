"""Audiences: predicates over customer_segments, joins and leaves, train's rebuild and the stream's follower."""

from __future__ import annotations

import csv
import datetime as dt
import json
import shutil
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from batch.audiences import (
    CLASSIC_AUDIENCES,
    AudienceError,
    audience_definitions,
    check_audiences,
    export_audience,
    membership_changes,
    memberships,
)
from batch.lake import read_table
from batch.segments import campaign_targets
from flo_seg import cli
from flo_seg.settings import LakeSettings
from streaming.audiences import AudienceSettings, start_audiences

CUSTOMERS = "master_id string, segment string, rfm_segment string, interested_in_categories_12 array<string>"


def test_the_classic_audiences_are_the_campaign_lists(spark: SparkSession) -> None:
    customers = spark.createDataFrame(
        [
            ("a", "s1", "champions", ["KADIN"]),
            ("b", "s1", "loyal_customers", ["ERKEK"]),
            ("c", "s2", "at_risk", ["COCUK", "KADIN"]),
            ("d", "s2", "new_customers", None),
            ("e", "s3", "hibernating", ["ERKEK"]),
            ("f", "s1", "champions", ["AKTIFSPOR", "KADIN"]),
            ("g", "s2", "cant_lose", ["ERKEK"]),
        ],
        CUSTOMERS,
    )
    got = {(r["audience"], r["master_id"]) for r in memberships(customers, CLASSIC_AUDIENCES).collect()}
    want = {(r["campaign"], r["master_id"]) for r in campaign_targets(customers).collect()}
    assert (
        got
        == want
        == {
            ("new_womens_shoe_brand", "a"),
            ("new_womens_shoe_brand", "f"),
            ("men_children_40pct_off", "c"),
            ("men_children_40pct_off", "g"),
        }
    )


def test_a_configured_audience_is_a_predicate_over_customer_segments(spark: SparkSession) -> None:
    definitions = audience_definitions({"big_and_slipping": "monetary > 1000 AND p_alive < 0.9"})
    assert set(definitions) == {*CLASSIC_AUDIENCES, "big_and_slipping"}
    check_audiences(spark, definitions)
    rows = spark.createDataFrame(
        [("a", "s", 2000.0, 0.5), ("b", "s", 2000.0, 0.95), ("c", "s", 10.0, 0.1), ("d", "s", 2000.0, None)],
        "master_id string, segment string, monetary double, p_alive double",
    )
    members = memberships(rows, {"big_and_slipping": definitions["big_and_slipping"]})
    assert [r["master_id"] for r in members.collect()] == ["a"]  # an unknown P(alive) is not < 0.9


@pytest.mark.parametrize(
    ("predicate", "message"),
    [
        ("monetry > 1000", "not an expression over customer_segments' columns"),
        ("monetary * 2", "is a double, not a true/false predicate"),
    ],
)
def test_a_bad_predicate_is_refused_naming_its_audience(spark: SparkSession, predicate: str, message: str) -> None:
    with pytest.raises(AudienceError, match=message) as raised:
        check_audiences(spark, {"vip": predicate})
    assert "'vip'" in str(raised.value)


def test_an_audience_name_must_be_a_plain_word() -> None:
    with pytest.raises(AudienceError, match="use letters"):
        audience_definitions({"vip list; drop": "true"})


def test_joins_and_leaves_between_two_memberships(spark: SparkSession) -> None:
    schema = "audience string, master_id string, segment string"
    previous = spark.createDataFrame([("women", "a", "s1"), ("women", "b", "s1"), ("men", "a", "s1")], schema)
    current = spark.createDataFrame([("women", "a", "s2"), ("men", "c", "s3"), ("men", "a", "s2")], schema)
    at = dt.datetime(2021, 6, 1, 12)
    changes = membership_changes(current, previous, changed_at=F.lit(at), batch_id=7, id_tag=F.lit("q-7"))
    got = {(r["audience"], r["master_id"], r["change"], r["segment"], r["batch_id"]) for r in changes.collect()}
    assert got == {("women", "b", "left", None, 7), ("men", "c", "joined", "s3", 7)}
    assert {r["change_id"] for r in changes.collect()} == {"q-7:women:b:left", "q-7:men:c:joined"}


@pytest.mark.slow
def test_an_order_that_makes_a_customer_a_champion_interested_in_kadin_joins_the_womens_brand_audience(
    spark: SparkSession, trained_lake: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kafka_bootstrap: str
) -> None:
    from kafka import KafkaConsumer
    from streaming_support import fresh_topics
    from test_stream_files import run_stream, write_records

    shutil.copytree(trained_lake, tmp_path / "lake")
    lake = LakeSettings(root=str(tmp_path / "lake"))
    audience = "new_womens_shoe_brand"
    members = read_table(spark, lake, "audience_members")
    segments = read_table(spark, lake, "customer_segments")
    before = {r["master_id"] for r in members.where(F.col("audience") == audience).collect()}
    assert before == {r["master_id"] for r in memberships(segments, CLASSIC_AUDIENCES).collect() if r[0] == audience}
    # Frequent buyers who have not ordered for long (R 1-2, F 5): one order today makes them champions.
    lapsed = segments.where((F.col("f_score") == 5) & (F.col("r_score") <= 2)).orderBy("master_id").limit(3)
    chosen = [r["master_id"] for r in lapsed.collect()]
    assert chosen and not set(chosen) & before
    latest = segments.agg(F.max("as_of")).collect()[0][0]
    order_ts = dt.datetime.combine(latest, dt.time(10), tzinfo=dt.UTC)
    messages = [
        (
            m.encode(),
            json.dumps(
                {
                    "event_id": f"aud-{i}",
                    "master_id": m,
                    "order_ts": order_ts.isoformat(),
                    "channel": "Android App",
                    "amount": 250.0,
                    "categories": ["KADIN"],
                    "schema_version": 1,
                }
            ).encode(),
        )
        for i, m in enumerate(chosen)
    ]
    write_records(spark, tmp_path / "records", messages, files=1)
    run_stream(spark, lake, tmp_path / "records", tmp_path / "checkpoint")
    now = read_table(spark, lake, "customer_segments").where(F.col("master_id").isin(chosen)).collect()
    assert {r["rfm_segment"] for r in now} == {"champions"}, [(r["master_id"], r["rfm_segment"]) for r in now]

    topic = fresh_topics(kafka_bootstrap)[1]
    settings = AudienceSettings(
        audiences=CLASSIC_AUDIENCES,
        checkpoint=str(tmp_path / "checkpoint-audiences"),
        available_now=True,
        bootstrap_servers=kafka_bootstrap,
        topic=topic,
    )
    follower = start_audiences(spark, lake, settings)
    follower.awaitTermination(timeout=300)
    assert follower.exception() is None

    changes = read_table(spark, lake, "audience_changes").where(F.col("batch_id") >= 0).collect()
    joined = {(r["audience"], r["master_id"]) for r in changes if r["change"] == "joined"}
    assert {(audience, m) for m in chosen} <= joined
    # Nobody else's newest row changed audiences: each change is one of theirs.
    assert {r["master_id"] for r in changes} <= set(chosen)
    # The same rows on Kafka, keyed by master_id.
    consumer = KafkaConsumer(
        topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=5000, group_id=None
    )
    published = [(m.key.decode(), json.loads(m.value)) for m in consumer]
    consumer.close()
    assert sorted(p["change_id"] for _, p in published) == sorted(r["change_id"] for r in changes)
    assert all(key == p["master_id"] for key, p in published)
    after = read_table(spark, lake, "audience_members").where(F.col("audience") == audience)
    assert {r["master_id"] for r in after.collect()} == before | set(chosen)

    # Again over the same log: every change is already applied, nothing is recorded twice.
    follower = start_audiences(spark, lake, settings)
    follower.awaitTermination(timeout=300)
    assert read_table(spark, lake, "audience_changes").where(F.col("batch_id") >= 0).count() == len(changes)

    # The export: today's members, as CSV, without a JVM.
    out = tmp_path / "women.csv"
    assert export_audience(lake, audience, CLASSIC_AUDIENCES, out) == len(before) + len(chosen)
    with out.open() as f:
        exported = list(csv.DictReader(f))
    assert {r["master_id"] for r in exported} == before | set(chosen)
    assert cli.main(["audience", "export", "nobody", "--lake", lake.root]) == 2
    assert "no audience 'nobody'" in capsys.readouterr().err
    assert cli.main(["audience", "list", "--lake", lake.root]) == 0
    listed = capsys.readouterr().out
    assert f"{audience:<28} {len(before) + len(chosen):>9}" in listed


def test_train_rebuilds_the_members_and_records_who_a_retrain_moved(spark: SparkSession, tmp_path: Path) -> None:
    from batch.audiences import rebuild_members

    lake = LakeSettings(root=str(tmp_path / "lake"))
    first = spark.createDataFrame([("a", "s1", "champions", ["KADIN"]), ("b", "s1", "champions", ["KADIN"])], CUSTOMERS)
    rebuild_members(spark, lake, first, CLASSIC_AUDIENCES, dt.datetime(2021, 6, 1))
    second = spark.createDataFrame(
        [("a", "s2", "loyal_customers", ["KADIN"]), ("b", "s1", "hibernating", ["KADIN"])], CUSTOMERS
    )
    rebuild_members(spark, lake, second, CLASSIC_AUDIENCES, dt.datetime(2021, 7, 1))
    members = {(r["audience"], r["master_id"]): r for r in read_table(spark, lake, "audience_members").collect()}
    assert set(members) == {("new_womens_shoe_brand", "a")}
    assert members[("new_womens_shoe_brand", "a")]["joined_at"] == dt.datetime(2021, 6, 1)  # stayed: still then
    changes = [
        (r["audience"], r["master_id"], r["change"], r["batch_id"])
        for r in read_table(spark, lake, "audience_changes").collect()
    ]
    assert changes == [("new_womens_shoe_brand", "b", "left", -1)]


def test_flo_seg_stream_runs_the_follower_unless_told_not_to(tmp_path: Path) -> None:
    from streaming.job import StreamSettings

    config = tmp_path / "flo.toml"
    config.write_text('[audiences]\nvip = "monetary > 1000"\n[kafka]\naudience_changes_topic = "aud"\n')
    parser = cli.build_parser()
    settings = cli.load_settings({}, config_file=str(config)).settings
    stream = StreamSettings(bootstrap_servers="b:9092", checkpoint="/ck/flo-seg-stream/", topic="orders")
    follower = cli.follower_settings(parser.parse_args(["stream", "--available-now"]), settings, stream)
    assert follower is not None
    assert set(follower.audiences) == {*CLASSIC_AUDIENCES, "vip"}
    assert (follower.checkpoint, follower.topic, follower.available_now) == (
        "/ck/flo-seg-stream-audiences",
        "aud",
        True,
    )
    assert cli.follower_settings(parser.parse_args(["stream", "--no-audiences"]), settings, stream) is None


@pytest.mark.parametrize("command", [["train", "--history", "never-read.csv"], ["stream", "--available-now"]])
def test_a_bad_configured_audience_stops_train_and_stream_before_any_work(
    spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    config = tmp_path / "flo.toml"
    config.write_text('[audiences]\nvip = "monetry > 1000"\n')
    lake = tmp_path / "lake"
    assert cli.main([*command, "--lake", str(lake), "--config", str(config)]) == 2
    assert "audience 'vip'" in capsys.readouterr().err
    assert not lake.exists() or not any(lake.iterdir())  # nothing written
