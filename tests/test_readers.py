"""The customer tables open in the common Delta readers (Spark, Polars, delta-rs) with the rows Spark reads."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import polars as pl
import pyarrow as pa
from deltalake import DeltaTable, QueryBuilder
from pyspark.sql import SparkSession

from batch.lake import overwrite_table, read_table
from flo_seg.settings import LakeSettings
from schemas.tables import CUSTOMER_SEGMENTS, CUSTOMER_SEGMENTS_SCHEMA

AS_OF = dt.date(2021, 6, 1)
SCORED = dt.datetime(2021, 5, 31, 12, 30)


def test_spark_polars_and_delta_rs_read_the_same_rows(spark: SparkSession, tmp_path: Path) -> None:
    lake = LakeSettings(root=str(tmp_path / "lake"))
    rows = [
        (
            f"c{i}",
            "champions",
            0,
            "v1",
            i,
            500,
            4,
            350.5 + i,
            5,
            4,
            5,
            "champions",
            AS_OF,
            SCORED,
            0,
            0.99,
            0.5,
            200.0 + i,
            ["KADIN"],
        )
        for i in range(8)
    ]
    overwrite_table(spark.createDataFrame(rows, CUSTOMER_SEGMENTS_SCHEMA), lake, CUSTOMER_SEGMENTS)
    path = lake.table(CUSTOMER_SEGMENTS)
    # Rows replaced and removed as the compaction's MERGE does: the files are rewritten, no deletion vectors.
    spark.sql(f"DELETE FROM delta.`{path}` WHERE recency IN (1, 6)")
    spark.sql(f"UPDATE delta.`{path}` SET segment = 'at_risk', state_seq = 1 WHERE recency = 3")
    assert not list(Path(path).glob("deletion_vector_*.bin"))

    columns = ["master_id", "segment", "monetary", "as_of", "scored_at", "state_seq"]
    spark_rows = [tuple(r) for r in read_table(spark, lake, CUSTOMER_SEGMENTS).select(*columns).collect()]
    expected = sorted(spark_rows)
    assert [r[0] for r in expected] == ["c0", "c2", "c3", "c4", "c5", "c7"]
    assert expected[2] == ("c3", "at_risk", 353.5, AS_OF, SCORED, 1)

    def as_spark_rows(frame: pd.DataFrame) -> list[tuple[object, ...]]:
        """A pandas frame's rows as Spark gives them: dates as dates, UTC timestamps without an offset."""
        found = []
        for record in frame[columns].to_dict("records"):
            scored = pd.Timestamp(record["scored_at"])
            scored = scored.tz_convert(None) if scored.tzinfo is not None else scored
            as_of = pd.Timestamp(record["as_of"]).date()
            found.append(
                (
                    record["master_id"],
                    record["segment"],
                    record["monetary"],
                    as_of,
                    scored.to_pydatetime(),
                    record["state_seq"],
                )
            )
        return sorted(found)

    assert as_spark_rows(DeltaTable(path).to_pandas()) == expected
    assert as_spark_rows(pl.read_delta(path).to_pandas()) == expected
    table = pa.table(QueryBuilder().register("t", DeltaTable(path)).execute("SELECT * FROM t"))
    # DataFusion hands text inside lists over as Arrow string_view, which pyarrow's to_pandas() cannot
    # convert yet (README): its rows as Python values.
    assert as_spark_rows(pd.DataFrame(table.to_pylist())) == expected
    assert {tuple(c) for c in table.column("interested_in_categories_12").to_pylist()} == {("KADIN",)}
