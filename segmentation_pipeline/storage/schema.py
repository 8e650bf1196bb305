"""Table schemas: how a frame's columns become SQL types, and the DDL that creates tables from them.

One type mapping for every engine (pandas frames here, Spark frames in engines/spark/writeback):
integers BIGINT/INT, floats DOUBLE, timestamps DATETIME(6), text VARCHAR(255) or TEXT, keys
VARCHAR long enough for their longest value within InnoDB's index limit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from segmentation_pipeline.config import validate_identifier
from segmentation_pipeline.storage.connection import (
    is_mysql,
    masked_url,
    quote_identifier,
    table_columns,
    table_exists,
    transaction,
)
from segmentation_pipeline.storage.errors import SourceError

__all__ = [
    "MAX_KEY_VARCHAR",
    "VARCHAR",
    "FramePlan",
    "IndexSpec",
    "create_table",
    "create_table_if_missing",
    "drop_table_if_exists",
    "id_collation",
    "index_name",
    "plan_frame",
    "plan_table",
    "series_to_arrow",
    "sql_type",
]

VARCHAR = 255
MAX_KEY_VARCHAR = 768  # utf8mb4 x 768 = 3072 bytes, InnoDB's index key limit


@dataclass(frozen=True)
class FramePlan:
    """How each frame column becomes Arrow (for serialising) and SQL (for DDL)."""

    names: list[str]
    arrow_types: dict[str, pa.DataType]
    sql_types: dict[str, sa.types.TypeEngine[Any]]
    primary_key: str | tuple[str, ...] | None
    binary_key: bool = False  # MySQL: text key columns compare byte for byte (the pipeline's id tables)

    @property
    def key_columns(self) -> tuple[str, ...]:
        if self.primary_key is None:
            return ()
        return (self.primary_key,) if isinstance(self.primary_key, str) else tuple(self.primary_key)

    def columns(self) -> list[sa.Column[Any]]:
        # autoincrement=False: an AUTO_INCREMENT key would turn an id of 0 into the next value
        keys = self.key_columns
        return [
            sa.Column(
                name,
                self.sql_types[name],
                primary_key=name in keys,
                nullable=name not in keys,
                autoincrement=False,
            )
            for name in self.names
        ]


def series_to_arrow(series: pd.Series) -> pa.Array:
    try:  # categoricals arrive as dictionary arrays, decoded below: no Python object per row
        array = pa.array(series, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
        raise TypeError(
            f"column {series.name!r} cannot be written: {exc}; make its values one type or pass column_types"
        ) from exc
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if pa.types.is_timestamp(array.type) and array.type.tz is not None:
        array = array.cast(pa.timestamp(array.type.unit))  # tz-aware -> naive UTC
    return array


def _arrow_type(series: pd.Series) -> tuple[pa.DataType, int]:
    """The column's Arrow type (and max string length), inferring object columns from all values."""
    if isinstance(series.dtype, pd.CategoricalDtype):  # the categories say it all
        series = pd.Series(series.cat.categories, name=series.name, dtype=series.cat.categories.dtype)
    needs_values = series.dtype == object or isinstance(series.dtype, pd.StringDtype)
    array = series_to_arrow(series if needs_values else series.iloc[:0])
    t = array.type
    max_len = 0
    if pa.types.is_large_string(t):
        t = pa.string()
    if pa.types.is_string(t) or pa.types.is_large_string(array.type):
        longest = pc.max(pc.utf8_length(array)).as_py() if len(array) else None
        max_len = int(longest or 0)
    if pa.types.is_decimal(t):
        t = pa.float64()
    if pa.types.is_timestamp(t):
        t = pa.timestamp("us")
    supported = (
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_boolean(t)
        or pa.types.is_string(t)
        or pa.types.is_timestamp(t)
        or pa.types.is_date(t)
        or pa.types.is_null(t)
    )
    if not supported:
        raise TypeError(f"column {series.name!r} has unsupported type {t}; convert it or pass column_types")
    return t, max_len


def sql_type(name: str, t: pa.DataType, max_len: int, is_key: bool) -> sa.types.TypeEngine[Any]:
    if pa.types.is_boolean(t):
        return sa.Boolean(create_constraint=False)
    if pa.types.is_integer(t):
        return sa.BigInteger() if t.bit_width == 64 else sa.Integer()
    if pa.types.is_floating(t):
        return sa.Double()
    if pa.types.is_timestamp(t):
        return sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
    if pa.types.is_date(t):
        return sa.Date()
    if is_key:
        if max_len > MAX_KEY_VARCHAR:
            raise ValueError(
                f"primary key column {name!r} has values of {max_len} characters; at most {MAX_KEY_VARCHAR}"
            )
        return sa.String(max(VARCHAR, max_len))
    if max_len <= VARCHAR:
        return sa.String(VARCHAR)  # also all-NULL columns: the most useful guess
    return sa.Text(max_len)  # MySQL picks TEXT/MEDIUMTEXT/LONGTEXT for this many characters


def plan_frame(
    frame: pd.DataFrame,
    primary_key: str | None = None,
    column_types: dict[str, sa.types.TypeEngine[Any]] | None = None,
    *,
    binary_key: bool = False,
) -> FramePlan:
    """The frame's column plan, validated once (names, key, types inferred from the values).
    ``binary_key``: on MySQL a text key compares byte for byte (ids, not words).

    Pass it to the writers and :func:`~segmentation_pipeline.storage.history.copy_history` instead
    of a key so none of them re-infers types over every value.
    """
    names = list(frame.columns)
    for name in names:
        validate_identifier(name, "column")
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"frame has duplicate column names: {duplicated}")
    overrides = dict(column_types or {})
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ValueError(f"column_types names columns not in the frame: {unknown}; frame columns: {names}")
    if primary_key is not None:
        validate_identifier(primary_key, "primary key")
        if primary_key not in names:
            raise ValueError(f"primary key {primary_key!r} is not a frame column; frame columns: {names}")
        key = frame[primary_key]
        if key.isna().any():
            raise ValueError(f"primary key {primary_key!r} has {int(key.isna().sum())} missing value(s)")
        dups = key[key.duplicated()]
        if len(dups):
            raise ValueError(f"primary key {primary_key!r} has duplicate values, e.g. {dups.head(5).tolist()}")
    arrow_types: dict[str, pa.DataType] = {}
    sql_types: dict[str, sa.types.TypeEngine[Any]] = {}
    for name in names:
        t, max_len = _arrow_type(frame[name])
        arrow_types[name] = t
        sql_types[name] = overrides.get(name) or sql_type(name, t, max_len, name == primary_key)
    return FramePlan(names, arrow_types, sql_types, primary_key, binary_key)


def plan_table(engine: sa.Engine, table: str) -> FramePlan:
    """The plan of an existing table, from the database's own column types (for copies made on
    the server, e.g. history copies from a table another writer loaded)."""
    columns = sa.inspect(engine).get_columns(table)
    return FramePlan([c["name"] for c in columns], {}, {c["name"]: c["type"] for c in columns}, None)


@dataclass(frozen=True)
class IndexSpec:
    """A secondary index: its name and columns, in order."""

    name: str
    columns: tuple[str, ...]


def id_collation(bind: sa.Engine | sa.Connection) -> str:
    """The collation of text key columns: byte for byte and without PAD SPACE ('abc0' and 'abc0 '
    are two customers), as the cleaning's duplicate check compares them."""
    return "utf8mb4_nopad_bin" if getattr(bind.dialect, "is_mariadb", False) else "utf8mb4_0900_bin"


def create_table(
    conn: sa.Connection,
    table: str,
    plan: FramePlan,
    *,
    comment: str | None = None,
    index: IndexSpec | None = None,
) -> None:
    """CREATE TABLE from a plan on ``conn`` (utf8mb4 on MySQL); ``comment`` marks a new table version."""
    metadata = sa.MetaData()
    kwargs: dict[str, Any] = {"mysql_charset": "utf8mb4"} if is_mysql(conn) else {}
    if comment is not None and conn.dialect.supports_comments:
        kwargs["comment"] = comment
    columns = plan.columns()
    if is_mysql(conn) and plan.binary_key:  # ids are opaque: 'abc0', 'ABC0', 'ábc0' are three customers
        for column in columns:
            if column.primary_key and isinstance(column.type, sa.String):
                column.type = sa.String(column.type.length, collation=id_collation(conn))
    tbl = sa.Table(table, metadata, *columns, **kwargs)
    if index is not None:
        sa.Index(index.name, *(tbl.c[c] for c in index.columns))
    metadata.create_all(conn, checkfirst=False)


def drop_table_if_exists(conn: sa.Connection, table: str) -> None:
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {quote_identifier(conn, table, 'table')}")


def _check_existing_columns(engine: sa.Engine, table: str, names: Sequence[str]) -> None:
    existing = table_columns(engine, table)
    missing = [n for n in names if n not in existing]
    if missing:
        raise SourceError(
            f"table {table!r} ({masked_url(engine)}) has no column(s) {missing} for the frame; "
            f"existing columns: {existing}. Migrate the table or drop it to let it be recreated."
        )


def index_name(table: str, suffix: str) -> str:
    """``ix_<table>_<suffix>``, hashed down to MySQL's 64 characters when longer."""
    name = f"ix_{table}_{suffix}"
    if len(name) > 64:
        name = f"ix_{table[:40]}_{hashlib.sha256(name.encode()).hexdigest()[:12]}"
    return name


def create_table_if_missing(engine: sa.Engine, table: str, plan: FramePlan, index: IndexSpec | None = None) -> None:
    """CREATE once; losing a creation race to a concurrent run is fine."""
    if table_exists(engine, table):
        _check_existing_columns(engine, table, plan.names)
    else:
        try:
            with transaction(engine) as conn:
                create_table(conn, table, plan, index=index)
        except sa.exc.DBAPIError:
            if not table_exists(engine, table):
                raise
            _check_existing_columns(engine, table, plan.names)
    if index is not None:
        _ensure_index(engine, table, plan, index)


def _ensure_index(engine: sa.Engine, table: str, plan: FramePlan, index: IndexSpec) -> None:
    """The index must exist: MySQL commits CREATE TABLE before CREATE INDEX, so a CREATE INDEX
    that failed (e.g. no INDEX privilege) used to leave the table without it, silently, for good."""
    name, columns = index.name, index.columns
    if any(ix.get("name") == name for ix in sa.inspect(engine).get_indexes(table)):
        return
    tbl = sa.Table(table, sa.MetaData(), *(sa.Column(c, plan.sql_types[c]) for c in columns))
    try:
        with transaction(engine) as conn:
            sa.Index(name, *(tbl.c[c] for c in columns)).create(conn)
    except sa.exc.DBAPIError:
        if not any(ix.get("name") == name for ix in sa.inspect(engine).get_indexes(table)):  # not a race
            raise

