"""The order-event contract: JSON on Kafka, key = master_id. Spark schema and JSON Schema both come from here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyspark.sql import types as T

from schemas.history import CATEGORIES, CHANNELS, EARLIEST_DATE, IDENTIFIER_PATTERN

SCHEMA_VERSION = 1
JSON_SCHEMA_PATH = Path(__file__).with_name("order_event.schema.json")

# The valid ranges, stated once: the stream quarantines what falls outside, the JSON Schema says the same.
MAX_ORDER_AMOUNT = 1_000_000.0
# Money is counted in whole cents (half up): an amount below half a cent would be an order worth 0.00.
MIN_ORDER_AMOUNT = 0.005
EARLIEST_ORDER = EARLIEST_DATE
# RFC 3339 date-time: seconds and an offset (Z or +hh:mm) are required, so an order's instant is never a guess.
ORDER_TS_PATTERN = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$"


@dataclass(frozen=True, kw_only=True)
class EventField:
    """One field of an order event."""

    name: str
    spark_type: T.DataType
    json_schema: dict[str, Any]
    required: bool = True
    description: str = ""


EVENT_FIELDS: tuple[EventField, ...] = (
    EventField(
        name="event_id",
        spark_type=T.StringType(),
        json_schema={"type": "string", "pattern": IDENTIFIER_PATTERN},
        description=(
            "Unique per order; a re-sent order keeps its event_id and counts once. Two events with one "
            "event_id and different content: the first in offset order counts, the other is dropped and "
            "counted as a conflicting duplicate in the stream's log."
        ),
    ),
    EventField(
        name="master_id",
        spark_type=T.StringType(),
        json_schema={"type": "string", "pattern": IDENTIFIER_PATTERN},
        description="Customer id (a JSON string, never a number); the Kafka message key must equal it.",
    ),
    EventField(
        name="order_ts",
        spark_type=T.StringType(),
        json_schema={"type": "string", "format": "date-time", "pattern": ORDER_TS_PATTERN},
        description=(
            f"Order time, RFC 3339 with seconds and offset, e.g. 2021-06-01T10:15:00+03:00; from "
            f"{EARLIEST_ORDER} to at most a day after the stream's wall clock."
        ),
    ),
    EventField(
        name="channel",
        spark_type=T.StringType(),
        json_schema={"type": "string", "enum": list(CHANNELS)},
        description="Where the order was placed.",
    ),
    EventField(
        name="amount",
        spark_type=T.DoubleType(),
        json_schema={"type": "number", "minimum": MIN_ORDER_AMOUNT, "maximum": MAX_ORDER_AMOUNT},
        description=(
            f"Order value, a finite number from {MIN_ORDER_AMOUNT} to {MAX_ORDER_AMOUNT:,.0f}; counted in whole "
            "cents, half up."
        ),
    ),
    EventField(
        name="categories",
        spark_type=T.ArrayType(T.StringType()),
        json_schema={"type": "array", "items": {"type": "string", "enum": list(CATEGORIES)}},
        required=False,
        description="Categories in the basket (optional; no nulls; a repeated category counts once).",
    ),
    EventField(
        name="schema_version",
        spark_type=T.IntegerType(),
        json_schema={"type": "integer", "const": SCHEMA_VERSION},
        description="Contract version.",
    ),
)


def event_spark_schema() -> T.StructType:
    """The Spark schema `from_json` parses events with (order_ts stays text so bad values are caught)."""
    return T.StructType([T.StructField(f.name, f.spark_type, True) for f in EVENT_FIELDS])


def event_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) any producer can validate against."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "flo-seg/order_event/v1",
        "title": "FLO order event",
        "type": "object",
        "properties": {f.name: {**f.json_schema, "description": f.description} for f in EVENT_FIELDS},
        "required": [f.name for f in EVENT_FIELDS if f.required],
        "additionalProperties": True,
    }


def render_json_schema() -> str:
    """The checked-in file's exact text (a test keeps them equal)."""
    return json.dumps(event_json_schema(), indent=2) + "\n"


if __name__ == "__main__":
    JSON_SCHEMA_PATH.write_text(render_json_schema())
    print(f"wrote {JSON_SCHEMA_PATH}")
