"""`flo-seg query`: read-only Spark SQL over the lake's tables, registered under their own names."""

from __future__ import annotations

import csv
import json
import logging
import sys
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import TextIO

from py4j.java_gateway import JavaObject
from py4j.protocol import Py4JJavaError
from pyspark.errors import PySparkException
from pyspark.sql import DataFrame, Row, SparkSession

from batch.lake import read_table, table_exists
from flo_seg.errors import first_line
from flo_seg.settings import LakeSettings
from schemas.tables import TABLE_SCHEMAS

FORMATS = ("table", "csv", "json")

REFUSED = "only read-only queries over the lake's tables are allowed"
_LOGICAL = "org.apache.spark.sql.catalyst.plans.logical."
_ANALYSIS = "org.apache.spark.sql.catalyst.analysis."
_EXPRESSIONS = "org.apache.spark.sql.catalyst.expressions."
# Every operator Spark 4.2's parser builds for a read-only query. An allow-list, because Delta's RESTORE,
# CLONE and DESCRIBE HISTORY, EXECUTE IMMEDIATE and `TRANSFORM ... USING 'script'` are neither a
# `Command` nor a `ParsedStatement`.
_QUERY_NODES = frozenset(
    [
        *(
            _LOGICAL + name
            for name in (
                "Aggregate",
                "Distinct",
                "Except",
                "Filter",
                "Generate",
                "GlobalLimit",
                "Intersect",
                "Join",
                "LateralJoin",
                "LocalLimit",
                "LocalRelation",
                "Offset",
                "OneRowRelation",
                "Pivot",
                "Project",
                "RepartitionByExpression",
                "Sample",
                "Sort",
                "SubqueryAlias",
                "Union",
                "Unpivot",
                "UnresolvedHint",
                "UnresolvedWith",
                "WithWindowDefinition",
            )
        ),
        *(
            _ANALYSIS + name
            for name in (
                "UnresolvedHaving",
                "UnresolvedInlineTable",
                "UnresolvedRelation",
                "UnresolvedSubqueryColumnAliases",
                "UnresolvedTVFAliases",
                "UnresolvedTableValuedFunction",
            )
        ),
        _EXPRESSIONS + "PipeOperator",
    ]
)
_NODE_REASONS = {
    _LOGICAL + "ScriptTransformation": "TRANSFORM ... USING runs a program",
    _ANALYSIS + "RelationTimeTravel": "time travel (VERSION / TIMESTAMP AS OF) is not supported over the lake's views",
    _ANALYSIS + "PlanWithUnresolvedIdentifier": "IDENTIFIER(...) names are resolved too late to be checked",
}
# Table functions that only generate rows from their arguments; Delta's table_changes_by_path reads any path.
_ROW_GENERATORS = frozenset(
    {
        "explode",
        "explode_outer",
        "inline",
        "inline_outer",
        "json_tuple",
        "posexplode",
        "posexplode_outer",
        "range",
        "stack",
        "variant_explode",
        "variant_explode_outer",
    }
)
# Built-ins that reach outside the query: they call Java methods or read files named in their arguments.
_OUTSIDE_FUNCTIONS = {
    "reflect": "calls Java methods",
    "java_method": "calls Java methods",
    "try_reflect": "calls Java methods",
    "from_protobuf": "reads a descriptor file",
    "to_protobuf": "reads a descriptor file",
    "from_avro": "can read a schema file named in its options",
    "to_avro": "can read a schema file named in its options",
    "schema_of_avro": "can read a schema file named in its options",
    "from_xml": "can read an XSD file named in its options",
    "schema_of_xml": "can read an XSD file named in its options",
}


class QueryRefused(ValueError):
    """A statement that is not a read-only query over the lake's tables; it is refused before Spark runs it."""


def register_tables(spark: SparkSession, lake: LakeSettings) -> list[str]:
    """Temp views for every table that exists; returns their names."""
    names = []
    for name in TABLE_SCHEMAS:
        if table_exists(spark, lake, name):
            read_table(spark, lake, name).createOrReplaceTempView(name)
            names.append(name)
    return names


def query_session(spark: SparkSession) -> SparkSession:
    """A child session that cannot read files by path; its views and settings never reach the caller's."""
    session = spark.newSession()
    # Second layer behind the plan check: relations such as text.`/etc/hostname` no longer resolve.
    session.conf.set("spark.sql.runSQLOnFiles", "false")
    return session


def parse_plan(spark: SparkSession, sql: str) -> JavaObject:
    """The statement's unresolved plan; parsing runs nothing, whereas `spark.sql` executes commands at once."""
    try:
        with _one_line_errors():
            return spark._jsparkSession.sessionState().sqlParser().parsePlan(sql)
    except Py4JJavaError as exc:  # parser errors pyspark does not map, e.g. SQL scripting
        message = exc.java_exception.getMessage()
        name = exc.java_exception.getClass().getSimpleName()
        raise ValueError(first_line(message, f"the statement cannot be parsed ({name})")) from None


def check_read_only(spark: SparkSession, sql: str, tables: Collection[str]) -> None:
    """Raise `QueryRefused` unless `sql` only reads `tables` (or its own CTEs) with built-in functions."""
    _ReadOnlyCheck(spark, sql, tables).plan(parse_plan(spark, sql), frozenset())


class _ReadOnlyCheck:
    """Walks a parsed plan, its CTE definitions and the plans of subqueries inside expressions."""

    def __init__(self, spark: SparkSession, sql: str, tables: Collection[str]) -> None:
        self._head = statement_head(sql)
        # Relation names resolve as the analyzer will: case-insensitively unless the session says otherwise.
        self._is_case_sensitive = spark.conf.get("spark.sql.caseSensitive") == "true"
        self._tables = frozenset(self._key(t) for t in tables)
        class_for_name = spark._jvm.java.lang.Class.forName  # type: ignore[union-attr]
        self._commands = [
            class_for_name(_LOGICAL + "Command"),
            class_for_name(_LOGICAL + "ParsedStatement"),
        ]
        self._subquery = class_for_name(_EXPRESSIONS + "SubqueryExpression")
        self._builtins = spark._jsparkSession.sessionState().functionRegistry()
        jvm = spark._jvm
        function_id = jvm.org.apache.spark.sql.catalyst.FunctionIdentifier  # type: ignore[union-attr]
        # Spark 4.2's registry keys built-ins by their qualified name, system.builtin.<name>.
        self._builtin_id = lambda name: function_id(name, jvm.scala.Some("builtin"), jvm.scala.Some("system"))  # type: ignore[union-attr]
        self._known_functions: set[str] = set()

    def _key(self, name: str) -> str:
        return name if self._is_case_sensitive else name.lower()

    def _refuse(self, reason: str) -> QueryRefused:
        return QueryRefused(f"{REFUSED}; {reason}")

    def plan(self, node: JavaObject, ctes: frozenset[str]) -> None:
        """Check one plan node, then its expressions and children, with the CTE names in scope."""
        class_name = node.getClass().getName()
        if any(kind.isInstance(node) for kind in self._commands):
            raise self._refuse(f"`{self._head}` is a command ({node.nodeName()}), not a query")
        if class_name in _NODE_REASONS:
            raise self._refuse(_NODE_REASONS[class_name])
        if class_name not in _QUERY_NODES:
            raise self._refuse(f"`{self._head}` uses {node.nodeName()}, which is not part of a read-only query")
        if class_name == _ANALYSIS + "UnresolvedRelation":
            self._relation(node, ctes)
        elif class_name == _ANALYSIS + "UnresolvedTableValuedFunction":
            self._table_function(_scala_items(node.name()))
        elif class_name == _LOGICAL + "UnresolvedWith":
            # Each definition sees the ones before it; the body sees them all.
            for pair in _scala_items(node.cteRelations()):
                self.plan(pair._2(), ctes)
                ctes = ctes | {self._key(str(pair._1()))}
        elif class_name == _LOGICAL + "WithWindowDefinition":
            for spec in _scala_items(node.windowDefinitions().values()):
                self.expression(spec, ctes)
        for expr in _scala_items(node.expressions()):
            self.expression(expr, ctes)
        for child in _scala_items(node.children()):
            self.plan(child, ctes)

    def expression(self, expr: JavaObject, ctes: frozenset[str]) -> None:
        """Check the functions an expression calls and the plans of its subqueries."""
        class_name = expr.getClass().getName()
        if class_name == _ANALYSIS + "UnresolvedFunction":
            self._function([str(part) for part in _scala_items(expr.nameParts())])
        elif class_name == _ANALYSIS + "UnresolvedGenerator":
            self._function([str(part) for part in _scala_items(expr.name().nameParts())])
        elif class_name == _ANALYSIS + "ExpressionWithUnresolvedIdentifier":
            raise self._refuse(_NODE_REASONS[_ANALYSIS + "PlanWithUnresolvedIdentifier"])
        if self._subquery.isInstance(expr):
            self.plan(expr.plan(), ctes)
        for child in _scala_items(expr.children()):
            self.expression(child, ctes)

    def _relation(self, node: JavaObject, ctes: frozenset[str]) -> None:
        parts = [str(part) for part in _scala_items(node.multipartIdentifier())]
        name = ".".join(f"`{part}`" for part in parts)
        if len(parts) != 1 or self._key(parts[0]) not in self._tables | ctes:
            tables = ", ".join(sorted(self._tables))
            raise self._refuse(f"it reads {name}, which is not one of the lake's tables: {tables}")
        if node.isStreaming():
            raise self._refuse(f"it reads {name} as a stream")

    def _table_function(self, name_parts: Iterator[JavaObject]) -> None:
        parts = [str(part) for part in name_parts]
        if len(parts) != 1 or parts[0].lower() not in _ROW_GENERATORS:
            allowed = ", ".join(sorted(_ROW_GENERATORS))
            raise self._refuse(f"table function {'.'.join(parts)}() is not one of the row generators {allowed}")

    def _function(self, parts: list[str]) -> None:
        name = ".".join(parts)
        if len(parts) != 1:
            raise self._refuse(f"{name}() is not called by its plain built-in name")
        key = name.lower()
        if key in _OUTSIDE_FUNCTIONS:
            raise self._refuse(f"{key}() {_OUTSIDE_FUNCTIONS[key]}")
        if key in self._known_functions:
            return
        # Only built-ins: a bare name would otherwise fall through to the catalog's persistent functions.
        if not self._builtins.functionExists(self._builtin_id(key)):
            raise QueryRefused(f"unknown function {name}(); only Spark's built-in functions can be called")
        self._known_functions.add(key)


def _scala_items(collection: JavaObject) -> Iterator[JavaObject]:
    """Elements of a Scala collection, one py4j round trip each (parsed plans are small)."""
    iterator = collection.iterator()
    while iterator.hasNext():
        yield iterator.next()


def statement_head(sql: str, width: int = 60) -> str:
    text = " ".join(sql.split())
    return text if len(text) <= width else text[: width - 3] + "..."


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """Spark's errors about the statement as one-line ValueErrors, without pyspark's JSON log of each."""
    context_log = logging.getLogger("SQLQueryContextLogger")
    was_disabled = context_log.disabled
    context_log.disabled = True
    try:
        yield
    except PySparkException as exc:  # syntax, names, ANSI casts and arithmetic, FAILFAST parses...
        raise ValueError(first_line(exc, "invalid statement")) from None
    except Py4JJavaError as exc:  # errors pyspark does not map: Jackson, OutOfMemoryError, StackOverflowError
        java = exc.java_exception
        message = java.getMessage()
        raise ValueError(first_line(message, f"the statement failed: {java.getClass().getName()}")) from None
    finally:
        context_log.disabled = was_disabled


def write_result(df: DataFrame, fmt: str, limit: int, out: TextIO | None = None) -> int:
    """Print up to `limit` rows of a Spark result; returns the rows printed."""
    return write_rows(df.columns, df.limit(limit).collect(), fmt, out)


def write_rows(columns: Sequence[str], rows: Sequence[Sequence[object]], fmt: str, out: TextIO | None = None) -> int:
    """Print rows as an aligned table, CSV or JSON lines; returns the rows printed."""
    out = out or sys.stdout
    if fmt == "json":
        for r in rows:
            record = dict(zip(columns, [_json(v) for v in r], strict=True))
            out.write(json.dumps(record, default=str, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(columns)
        writer.writerows([[_text(v) for v in r] for r in rows])
    else:
        cells = [[_text(v) for v in r] for r in rows]
        widths = [max([len(c), *[len(row[i]) for row in cells]]) for i, c in enumerate(columns)]
        out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip() + "\n")
        out.write("  ".join("-" * w for w in widths) + "\n")
        for row in cells:
            out.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() + "\n")
        out.write(f"({len(rows)} row{'s' if len(rows) != 1 else ''})\n")
    return len(rows)


def _json(value: object) -> object:
    """Nested Spark rows as objects, as `Row.asDict(recursive=True)` gives them."""
    if isinstance(value, Row):
        return {k: _json(v) for k, v in value.asDict().items()}
    if isinstance(value, list):
        return [_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    return value


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


def run_query(
    spark: SparkSession, lake: LakeSettings, sql: str, *, fmt: str, limit: int, out: TextIO | None = None
) -> int:
    """Run one read-only statement over the lake's tables and print its result; anything else is refused unrun."""
    session = query_session(spark)
    tables = register_tables(session, lake)
    if not tables:
        raise FileNotFoundError(f"no tables under {lake.root}; run `flo-seg train` first")
    with _one_line_errors():
        check_read_only(session, sql, tables)
        return write_result(session.sql(sql), fmt, limit, out)
