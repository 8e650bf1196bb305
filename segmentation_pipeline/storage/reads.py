"""Chunked table reads: keyset pages through connectorx (MySQL) or SQLAlchemy, one table version.

Pages stay Arrow until one final ``to_pandas``, so a read never materialises its rows twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.engine import URL

from segmentation_pipeline.config import validate_identifier
from segmentation_pipeline.storage.connection import (
    ProgressFn,
    check_columns,
    is_mysql,
    is_sqlite,
    masked_url,
    reflect_columns,
    scrub_password,
)
from segmentation_pipeline.storage.errors import SourceError

log = logging.getLogger(__name__)

__all__ = ["ReadBackend", "RowsAfter", "read_table", "rows_after", "table_version"]

ReadBackend = Literal["auto", "connectorx", "sqlalchemy"]

# Bounded retries when a writer swaps the table between two chunks of one read.
_MAX_READ_ATTEMPTS = 3


@dataclass(frozen=True)
class RowsAfter:
    """Keep rows whose ``column`` is greater than ``value`` (already of the column's type)."""

    column: str
    value: Any


def rows_after(where_after: dict[str, Any] | None, types: dict[str, sa.types.TypeEngine[Any]]) -> RowsAfter | None:
    """Validate a ``{"column": c, "value": v}`` filter and give ``v`` the column's type.

    Cursors arrive as JSON strings; comparing them as text would be wrong (see _coerce_bound).
    """
    if where_after is None:
        return None
    unknown = set(where_after) - {"column", "value"}
    if unknown or "column" not in where_after or "value" not in where_after:
        raise ValueError(f"where_after must be {{'column': ..., 'value': ...}}, got keys {sorted(where_after)}")
    column = validate_identifier(where_after["column"], "where_after column")
    value = _plain(where_after["value"])
    if column in types:
        value = _coerce_bound(value, types[column])
    return RowsAfter(column, value)


def _declared_unique_not_null(engine: sa.Engine, table: str, column: str, nullable: bool) -> bool:
    """True when the schema alone guarantees keyset pagination sees each row exactly once."""
    if nullable:
        return False
    inspector = sa.inspect(engine)
    if inspector.get_pk_constraint(table).get("constrained_columns") == [column]:
        return True
    for index in inspector.get_indexes(table):
        if index.get("unique") and list(index.get("column_names") or []) == [column]:
            return True
    return any(list(c.get("column_names") or []) == [column] for c in inspector.get_unique_constraints(table))


# --------------------------------------------------------------------------- reading


def _plain(value: Any) -> Any:
    """numpy/pandas scalars -> Python, so SQLAlchemy can type and render them."""
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _coerce_bound(value: Any, sa_type: sa.types.TypeEngine[Any]) -> Any:
    """Give a where_after bound the column's type: cursors arrive as strings ("1000", str(datetime)).

    Comparing as text would be wrong ("999" > "1000"), and on SQLite "2024-01-01 00:00:00" sorts
    below the stored "2024-01-01 00:00:00.000000", re-reading the high-water-mark row.
    """
    if not isinstance(value, str):
        return value
    affinity = _affinity(sa_type)
    try:
        if affinity == "int":
            return int(value)
        if affinity == "float":
            return float(value)
        if affinity == "datetime":
            return pd.Timestamp(value).to_pydatetime()
        if affinity == "date":
            return pd.Timestamp(value).date()
    except (ValueError, TypeError) as exc:
        raise ValueError(f"where_after value {value!r} does not fit column type {sa_type}") from exc
    return value


def _connectorx_uri(url: URL) -> str | None:
    """A connectorx connection string, or None when connectorx cannot honour this URL.

    URLs with extra options (TLS, sockets, ...) are not translated: silently dropping
    ``ssl_ca`` would send credentials in clear text, so those go through SQLAlchemy.
    """
    backend = url.get_backend_name()
    if backend in ("mysql", "mariadb"):
        if set(url.query) - {"charset", "local_infile"}:
            return None
        auth = quote(url.username or "", safe="")
        if url.password is not None:
            auth += ":" + quote(str(url.password), safe="")
        host = url.host or "localhost"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"mysql://{auth}@{host}:{url.port or 3306}/{quote(url.database or '', safe='')}"
    # SQLite is deliberately not read through connectorx: it links its own copy of SQLite, and
    # two SQLite copies in one process break POSIX locking. Measured here: connectorx reading a
    # WAL database this process has open returned stale rows, deleted the -wal/-shm files
    # (losing committed rows) and left "disk I/O error" for sqlite3. sqlite3 is fast enough.
    return None


@dataclass(frozen=True)
class _ReadPlan:
    table: str
    columns: list[str]  # selected, id column included
    keep: list[str]  # returned to the caller
    id_column: str
    types: dict[str, sa.types.TypeEngine[Any]]
    after: RowsAfter | None
    chunk_size: int

    def clause(self) -> sa.TableClause:
        names = dict.fromkeys([*self.columns, *([self.after.column] if self.after else [])])
        return sa.table(self.table, *(sa.column(c, self.types[c]) for c in names))

    def select(self, last: Any) -> sa.Select[Any]:
        """One keyset page; bounds are literals for connectorx, bound parameters otherwise."""
        tbl = self.clause()
        stmt = sa.select(*(tbl.c[c] for c in self.columns))
        if self.after is not None:
            stmt = stmt.where(tbl.c[self.after.column] > sa.literal(self.after.value))
        if last is not None:
            stmt = stmt.where(tbl.c[self.id_column] > sa.literal(last))
        return stmt.order_by(tbl.c[self.id_column]).limit(self.chunk_size)


def table_version(conn: sa.Connection, table: str) -> tuple[Any, ...]:
    """A token that changes when the table is swapped (see swap.py's per-write table comment)."""
    if is_mysql(conn):
        row = conn.execute(
            sa.text(
                "SELECT CREATE_TIME, TABLE_COMMENT FROM information_schema.TABLES "
                "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :t"
            ),
            {"t": table},
        ).first()
        return tuple(row) if row is not None else ()
    if is_sqlite(conn):
        return (conn.exec_driver_sql("PRAGMA schema_version").scalar(),)
    return ()


def _chunk_connectorx(engine: sa.Engine, uri: str, stmt: sa.Select[Any], backslash_escapes: bool) -> pa.Table:
    import connectorx

    return connectorx.read_sql(uri, _literal_sql(engine, stmt, backslash_escapes), return_type="arrow")


def _server_backslash_escapes(engine: sa.Engine) -> bool:
    """Whether connectorx's sessions (server default sql_mode) treat backslash as an escape."""
    with engine.connect() as conn:
        mode = conn.exec_driver_sql("SELECT @@GLOBAL.sql_mode").scalar() or ""
    return "NO_BACKSLASH_ESCAPES" not in str(mode).upper()


def _literal_sql(engine: sa.Engine, stmt: sa.Select[Any], backslash_escapes: bool) -> str:
    """The statement with its bounds inlined, exactly as connectorx's session must read it.

    PyMySQL's dialect doubles every '%' (its paramstyle is "format"), but connectorx sends text
    verbatim, so an id like '50%off' would become '50%%off'. Compile with a named-paramstyle
    twin, escaping backslashes per the server's default sql_mode (connectorx's sessions use it,
    whatever our own engine's sessions set).
    """
    dialect: Any = type(engine.dialect)(paramstyle="named")  # type: ignore[call-arg]
    dialect._backslash_escapes = backslash_escapes
    return str(stmt.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


def _chunk_sqlalchemy(engine: sa.Engine, stmt: sa.Select[Any], plan: _ReadPlan) -> pa.Table:
    with engine.connect() as conn:
        result = conn.execute(stmt)
        keys = list(result.keys())
        rows = result.fetchall()
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in keys]
    del rows
    arrays = []
    for name, values in zip(keys, columns, strict=True):
        try:
            arrays.append(pa.array(list(values), from_pandas=True))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
            raise SourceError(
                f"column {name!r} of table {plan.table!r} holds values of mixed types ({masked_url(engine)}): {exc}"
            ) from exc
    return pa.Table.from_arrays(arrays, names=keys)


def _affinity(sa_type: sa.types.TypeEngine[Any]) -> str:
    if isinstance(sa_type, sa.Boolean):
        return "bool"
    if isinstance(sa_type, sa.Integer):
        return "int"
    if isinstance(sa_type, sa.Numeric):  # includes Float/DOUBLE/DECIMAL
        return "float"
    if isinstance(sa_type, sa.DateTime):
        return "datetime"
    if isinstance(sa_type, sa.Date):
        return "date"
    if isinstance(sa_type, (sa.String, sa.Enum)):
        return "string"
    return "other"


def _normalise_chunk(table: pa.Table, types: dict[str, sa.types.TypeEngine[Any]]) -> pa.Table:
    """Give every chunk the same, pandas-friendly types whichever reader produced it.

    DECIMAL -> float64, integers and booleans -> int64 (float64 once NULLs appear in pandas),
    timestamps -> microseconds, and typeless (all-NULL) columns take their declared type.
    """
    columns = []
    for name, column in zip(table.column_names, table.columns, strict=True):
        t = column.type
        affinity = _affinity(types[name])
        target: pa.DataType | None = None
        if pa.types.is_decimal(t) or pa.types.is_floating(t):
            target = pa.float64()
        elif pa.types.is_integer(t) and t != pa.uint64():
            target = pa.int64()
        elif pa.types.is_boolean(t):
            target = pa.int64()  # MySQL has no boolean type: 0/1 on both backends
        elif pa.types.is_timestamp(t) and t.unit != "us":
            target = pa.timestamp("us", tz=t.tz)
        elif pa.types.is_null(t):
            target = {
                "int": pa.int64(),
                "float": pa.float64(),
                "bool": pa.int64(),
                "datetime": pa.timestamp("us"),
                "date": pa.date32(),
                "string": pa.string(),
            }.get(affinity)
        elif pa.types.is_string(t) and affinity in ("int", "float"):
            target = pa.float64()  # SQLite reports NUMERIC as text on empty results
        if target is not None and target != t:
            # on failure keep what the database gave; cleaning decides what to do with it
            with contextlib.suppress(pa.ArrowInvalid, pa.ArrowNotImplementedError):
                column = column.cast(target)
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.column_names)


def read_table(
    engine: sa.Engine,
    table: str,
    columns: Sequence[str] | None,
    *,
    id_column: str,
    chunk_size: int,
    progress: ProgressFn | None = None,
    where_after: dict[str, Any] | None = None,
    backend: ReadBackend = "auto",
    categorical: Sequence[str] = (),
) -> pd.DataFrame:
    """Read ``columns`` (None: all) of ``table`` by keyset pages on ``id_column``.

    Keyset pages (``WHERE id > :last ORDER BY id LIMIT n``) keep each query short, let us
    report progress, and never materialise the result twice: pages stay Arrow until one final
    ``to_pandas``. MySQL pages go through connectorx (~15x faster than PyMySQL), falling back to
    SQLAlchemy when it cannot handle a type; SQLite always uses SQLAlchemy (see _connectorx_uri).
    ``where_after={"column": c, "value": v}`` keeps rows with ``c > v`` (incremental scoring;
    string values such as cursor JSON are converted to the column's type). If a writer swaps
    the table mid-read, the read restarts, so the frame always comes from one table version.
    Booleans come back as 0/1 integers on both backends (MySQL has no boolean type).
    Text columns named in ``categorical`` come back as pandas categoricals (dictionary-encoded
    while still Arrow): a few distinct values then cost a byte per row, not a Python string each.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    validate_identifier(id_column, "id column")
    reflected = reflect_columns(engine, table)
    available = [c["name"] for c in reflected]
    types = {c["name"]: c["type"] for c in reflected}
    wanted = list(dict.fromkeys(columns)) if columns is not None else list(available)
    for name in wanted:
        validate_identifier(name, "column")
    after = rows_after(where_after, types)
    check_columns(engine, table, available, [*wanted, id_column, *([after.column] if after else [])])

    selected = wanted if id_column in wanted else [*wanted, id_column]
    plan = _ReadPlan(table, selected, wanted, id_column, types, after, chunk_size)
    nullable = next(bool(c.get("nullable", True)) for c in reflected if c["name"] == id_column)
    total, keyset_ok = _count_and_check_ids(
        engine, plan, check_ids=not _declared_unique_not_null(engine, table, id_column, nullable)
    )
    if not keyset_ok:
        plan = dataclasses.replace(plan, chunk_size=max(total, 1) + 1)

    uri = _connectorx_uri(engine.url) if backend != "sqlalchemy" else None
    if backend == "connectorx" and uri is None:
        raise ValueError(f"connectorx cannot read from {masked_url(engine)} (SQLite, or URL options it would ignore)")
    use_cx = uri is not None
    backslash_escapes = _server_backslash_escapes(engine) if use_cx else True

    for attempt in range(1, _MAX_READ_ATTEMPTS + 1):
        with engine.connect() as conn:
            version = table_version(conn, table)
        chunks: list[pa.Table] = []
        rows = 0
        last: Any = None
        started = time.perf_counter()
        while True:
            stmt = plan.select(last)
            chunk: pa.Table | None = None
            if use_cx:
                assert uri is not None
                try:
                    chunk = _chunk_connectorx(engine, uri, stmt, backslash_escapes)
                except Exception as exc:  # noqa: BLE001 - connectorx raises bare RuntimeErrors
                    if backend == "connectorx":
                        detail = scrub_password(str(exc), engine.url)
                        raise RuntimeError(
                            f"connectorx failed reading {table!r} from {masked_url(engine)}: {detail}"
                        ) from None
                    log.warning(
                        "connectorx failed reading %r from %s (%s); falling back to SQLAlchemy",
                        table,
                        masked_url(engine),
                        scrub_password(str(exc), engine.url)[:300],
                    )
                    use_cx = False
            if chunk is None:
                chunk = _chunk_sqlalchemy(engine, stmt, plan)
            chunk = _normalise_chunk(chunk, types)
            chunks.append(chunk)
            rows += chunk.num_rows
            if progress is not None and chunk.num_rows:
                progress(rows, max(total, rows))
            if chunk.num_rows < chunk_size:
                break
            last = _plain(chunk.column(id_column)[-1].as_py())
        if len(chunks) > 1:
            with engine.connect() as conn:
                if table_version(conn, table) != version:
                    log.warning("table %r was replaced during read (attempt %d); reading again", table, attempt)
                    if attempt == _MAX_READ_ATTEMPTS:
                        raise SourceError(
                            f"table {table!r} kept being replaced while reading it ({masked_url(engine)}); "
                            f"gave up after {attempt} attempts"
                        )
                    continue
        break

    if progress is not None and rows == 0:
        progress(0, 0)
    combined = pa.concat_tables(chunks, promote_options="permissive") if len(chunks) > 1 else chunks[0]
    del chunks
    if plan.keep != plan.columns:
        combined = combined.select(plan.keep)
    combined = _dictionary_encode(combined, categorical)
    frame = combined.to_pandas(split_blocks=True, self_destruct=True)
    del combined
    pa.default_memory_pool().release_unused()  # hand the freed page and chunk copies back to the OS
    log.info(
        "read %d rows x %d columns from %r in %.2fs via %s",
        len(frame),
        frame.shape[1],
        table,
        time.perf_counter() - started,
        "connectorx" if use_cx else "sqlalchemy",
    )
    return frame


def _dictionary_encode(table: pa.Table, columns: Sequence[str]) -> pa.Table:
    """Text columns among ``columns`` as Arrow dictionaries (pandas categoricals after to_pandas)."""
    for name in columns:
        if name not in table.column_names:
            continue
        column = table.column(name)
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            table = table.set_column(table.schema.get_field_index(name), name, pc.dictionary_encode(column))
    return table


def _count_and_check_ids(engine: sa.Engine, plan: _ReadPlan, *, check_ids: bool) -> tuple[int, bool]:
    """Row count for progress; when the schema does not promise unique non-NULL ids, prove it.

    Keyset pagination silently skips duplicate ids at page boundaries and never returns NULL
    ids, so an undeclared id column is checked with one aggregate instead of trusted.
    """
    tbl = plan.clause()
    id_col = tbl.c[plan.id_column]
    aggregates: list[Any] = [sa.func.count()]
    if check_ids:
        aggregates += [sa.func.count(id_col), sa.func.count(sa.distinct(id_col))]
    stmt = sa.select(*aggregates).select_from(tbl)
    if plan.after is not None:
        stmt = stmt.where(tbl.c[plan.after.column] > sa.literal(plan.after.value))
    with engine.connect() as conn:
        row = conn.execute(stmt).one()
    total = int(row[0])
    if check_ids:
        non_null, distinct = int(row[1]), int(row[2])
        if non_null != total or distinct != non_null:
            # Cleaning must see every row to reject it with a reason (duplicate_id, missing id),
            # so read in one page rather than fail or silently skip rows.
            log.warning(
                "id column %r of table %r (%s) has %d duplicate and %d NULL value(s); reading it in "
                "one page instead of keyset chunks (declare it PRIMARY KEY to enable chunking)",
                plan.id_column, plan.table, masked_url(engine), non_null - distinct, total - non_null,
            )
            return total, False
    return total, True

