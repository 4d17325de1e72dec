"""`flo-seg query` without a JVM: DataFusion SQL over the lake's Delta tables through delta-rs.

delta-rs' own query engine also reads deletion vectors (a lake from an earlier version may have them). Its
DataFusion session runs any statement it is given, COPY ... TO and CREATE EXTERNAL TABLE included, so
every statement is parsed first (sqlglot) and only a query over the lake's tables reaches it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

import pyarrow as pa
import sqlglot
from deltalake import DeltaTable, QueryBuilder
from deltalake.exceptions import DeltaError
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import TokenType

from batch.query import REFUSED, QueryRefused, statement_head, write_rows
from flo_seg.errors import first_line
from flo_seg.settings import LakeSettings
from schemas.tables import TABLE_SCHEMAS

# A query starts with one of these; everything DataFusion runs that is not a query (COPY, CREATE, SET,
# EXPLAIN, PREPARE...) starts with another keyword, whatever sqlglot makes of the rest.
_QUERY_STARTS = frozenset({TokenType.SELECT, TokenType.WITH, TokenType.VALUES, TokenType.L_PAREN})
# Table functions that only generate rows from their arguments (DataFusion reads no file without a DDL).
_ROW_GENERATORS = frozenset({"generate_series", "range", "unnest"})
_STATEMENTS = (exp.DDL, exp.DML, exp.Command, exp.Set, exp.Describe, exp.Pragma, exp.Use, exp.Transaction)


def lake_tables(lake: LakeSettings) -> dict[str, DeltaTable]:
    """The lake's Delta tables that exist, by name, at their latest version."""
    tables = {}
    for name in TABLE_SCHEMAS:
        path = lake.table(name)
        try:
            if DeltaTable.is_deltatable(path):
                tables[name] = DeltaTable(path)
        except (DeltaError, OSError) as exc:  # a scheme or a store delta-rs cannot reach
            raise ValueError(
                f"the native engine cannot open {path}: {first_line(exc, type(exc).__name__)}; try --engine spark"
            ) from None
    return tables


def check_read_only(sql: str, tables: frozenset[str]) -> None:
    """Raise `QueryRefused` unless `sql` is one query that reads only `tables` (or its own CTEs)."""
    head = statement_head(sql)
    try:
        tokens = [t for t in sqlglot.tokenize(sql) if t.token_type != TokenType.SEMICOLON]
        with _quiet_parser():
            statements = [s for s in sqlglot.parse(sql) if s is not None]
    except (ParseError, TokenError) as exc:
        raise ValueError(f"the statement cannot be parsed: {first_line(exc, type(exc).__name__)}") from None
    if not statements:
        raise ValueError("the statement is empty")
    if len(statements) > 1:
        raise QueryRefused(f"{REFUSED}; `{head}` holds {len(statements)} statements, one query is allowed")
    statement = statements[0]
    if isinstance(statement, _STATEMENTS) or tokens[0].token_type not in _QUERY_STARTS:
        kind = tokens[0].text if tokens[0].token_type not in _QUERY_STARTS else statement.key
        raise QueryRefused(f"{REFUSED}; `{head}` is a command ({kind.upper()}), not a query")
    if not isinstance(statement, (exp.Query, exp.Values)):
        raise QueryRefused(f"{REFUSED}; `{head}` is not a query")
    ctes = {_key(cte.args["alias"].this) for cte in statement.find_all(exp.CTE) if cte.args.get("alias")}
    for node in statement.walk():
        if isinstance(node, _STATEMENTS):
            raise QueryRefused(f"{REFUSED}; `{head}` holds a {node.key.upper()} statement")
        if isinstance(node, exp.Into):
            raise QueryRefused(f"{REFUSED}; SELECT ... INTO creates a table")
        if isinstance(node, exp.Table):
            _check_table(node, tables, ctes)


def _check_table(table: exp.Table, tables: frozenset[str], ctes: set[str]) -> None:
    source = table.this
    if isinstance(source, exp.Identifier):
        name = ".".join(part.sql() for part in table.parts)
        if table.args.get("db") or table.args.get("catalog") or _key(source) not in tables | ctes:
            listed = ", ".join(sorted(tables))
            raise QueryRefused(f"{REFUSED}; it reads {name}, which is not one of the lake's tables: {listed}")
        return
    function = source.sql_name() if isinstance(source, exp.Func) else type(source).__name__
    if isinstance(source, exp.Anonymous):
        function = str(source.this)
    if function.lower() not in _ROW_GENERATORS:
        allowed = ", ".join(sorted(_ROW_GENERATORS))
        raise QueryRefused(f"{REFUSED}; table function {function.lower()}() is not one of the row generators {allowed}")


def _key(identifier: exp.Identifier) -> str:
    """A name as DataFusion resolves it: unquoted names fold to lower case."""
    return identifier.this if identifier.quoted else identifier.this.lower()


@contextmanager
def _quiet_parser() -> Iterator[None]:
    """sqlglot warns when it falls back to an opaque command; the check says it in its own words."""
    parser_log = logging.getLogger("sqlglot")
    level = parser_log.level
    parser_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        parser_log.setLevel(level)


def run_native_query(lake: LakeSettings, sql: str, *, fmt: str, limit: int, out: TextIO | None = None) -> int:
    """Run one read-only statement over the lake's tables with delta-rs; anything else is refused unrun."""
    columns, rows = native_rows(lake, sql, limit)
    return write_rows(columns, rows, fmt, out)


def native_rows(
    lake: LakeSettings, sql: str, limit: int, tables: dict[str, DeltaTable] | None = None
) -> tuple[list[str], list[list[object]]]:
    """The column names and up to `limit` rows of one read-only statement over the lake's tables (`tables`:
    already opened by `lake_tables`, for a caller that runs several statements on one snapshot)."""
    tables = lake_tables(lake) if tables is None else tables
    if not tables:
        raise FileNotFoundError(f"no tables under {lake.root}; run `flo-seg train` first")
    check_read_only(sql, frozenset(tables))
    # Unquoted names fold to lower case, as in Spark SQL and in the check above.
    builder = QueryBuilder({"datafusion.sql_parser.enable_ident_normalization": "true"})
    for name, table in tables.items():
        builder.register(name, table)
    try:
        reader = pa.RecordBatchReader.from_stream(builder.execute(sql))
        columns = reader.schema.names
        rows = list(_first_rows(reader, limit))
    except (DeltaError, pa.ArrowException) as exc:  # planning errors, then errors while batches are computed
        raise ValueError(first_line(exc, "the statement failed")) from None
    return columns, rows


def _first_rows(reader: pa.RecordBatchReader, limit: int) -> Iterator[list[object]]:
    """Up to `limit` rows, by position (names may repeat); batches after the limit are never computed."""
    left = limit
    for batch in reader:
        head = batch.slice(0, left)
        for row in zip(*(column.to_pylist() for column in head.columns), strict=True):
            yield [_plain(value) for value in row]
        left -= head.num_rows
        if left == 0:
            return


def _plain(value: object) -> object:
    """A value as the Spark engine prints it: Delta timestamps in UTC without an offset."""
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC).replace(tzinfo=None)
    return value
