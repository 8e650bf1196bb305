"""Writing frames back: atomic table replacement, idempotent run history, CSV/demo loads.

Readers (dashboards, the next pipeline step) must never see a half-written table, so a
replacement is built in ``<table>__staging``, verified, and swapped in with one atomic
statement. MySQL bulk loads go through ``LOAD DATA LOCAL INFILE`` (an order of magnitude
faster than INSERTs from Python), with executemany as the fallback when the server or
client refuses LOCAL INFILE.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from segmentation_pipeline.config import validate_identifier
from segmentation_pipeline.storage.database import (
    ProgressFn,
    SourceError,
    is_mysql,
    is_sqlite,
    masked_url,
    quote_identifier,
    table_columns,
    table_exists,
    write_lock,
)

log = logging.getLogger(__name__)

__all__ = [
    "FramePlan",
    "HistoryCopy",
    "WriteError",
    "copy_history",
    "ensure_history_table",
    "load_frame",
    "plan_frame",
    "plan_table",
    "write_table_atomic",
    "write_tables_atomic",
]

STAGING_SUFFIX = "__staging"
OLD_SUFFIX = "__old"
DEFAULT_WRITE_CHUNK = 100_000

# MySQL/MariaDB error codes meaning "LOAD DATA LOCAL is not allowed here".
_LOCAL_INFILE_REFUSED = {1148, 2068, 3948, 3950, 4166}
# LOAD DATA's default escaping (ESCAPED BY '\\'): backslash first, or the others double-escape.
_TSV_ESCAPES = (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r"), ("\x00", "\\0"))
_TSV_NULL = "\\N"
_VARCHAR = 255
_MAX_KEY_VARCHAR = 768  # utf8mb4 x 768 = 3072 bytes, InnoDB's index key limit
_RUN_KEY_VARCHAR = 64  # Dagster run ids have 36 characters; leaves room for the id in a (run, id) key


class WriteError(RuntimeError):
    """A write could not be completed or verified; the previous table is left untouched."""


# --------------------------------------------------------------------------- frame -> schema


@dataclass(frozen=True)
class FramePlan:
    """How each frame column becomes Arrow (for serialising) and SQL (for DDL)."""

    names: list[str]
    arrow_types: dict[str, pa.DataType]
    sql_types: dict[str, sa.types.TypeEngine[Any]]
    primary_key: str | tuple[str, ...] | None

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


def _series_to_arrow(series: pd.Series) -> pa.Array:
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
    array = _series_to_arrow(series if needs_values else series.iloc[:0])
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


def _sql_type(name: str, t: pa.DataType, max_len: int, is_key: bool) -> sa.types.TypeEngine[Any]:
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
        if max_len > _MAX_KEY_VARCHAR:
            raise ValueError(
                f"primary key column {name!r} has values of {max_len} characters; at most {_MAX_KEY_VARCHAR}"
            )
        return sa.String(max(_VARCHAR, max_len))
    if max_len <= _VARCHAR:
        return sa.String(_VARCHAR)  # also all-NULL columns: the most useful guess
    return sa.Text(max_len)  # MySQL picks TEXT/MEDIUMTEXT/LONGTEXT for this many characters


def _plan_frame(
    frame: pd.DataFrame,
    column_types: dict[str, sa.types.TypeEngine[Any]] | None,
    primary_key: str | None,
) -> FramePlan:
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
        sql_types[name] = overrides.get(name) or _sql_type(name, t, max_len, name == primary_key)
    return FramePlan(names, arrow_types, sql_types, primary_key)


def _chunk_arrays(frame: pd.DataFrame, plan: FramePlan, start: int, stop: int) -> list[pa.Array]:
    arrays = []
    for name in plan.names:
        array = _series_to_arrow(frame[name].iloc[start:stop])
        target = plan.arrow_types[name]
        if array.type != target:
            # unit changes truncate sub-microsecond digits (DATETIME(6) cannot hold them anyway)
            array = array.cast(target, safe=not pa.types.is_timestamp(target))
        arrays.append(array)
    return arrays


# --------------------------------------------------------------------------- serialisers


def _tsv_field(array: pa.Array, name: str) -> pa.Array:
    """One column as LOAD DATA text: escaped per ESCAPED BY '\\', NULL as \\N."""
    t = array.type
    if pa.types.is_null(t):
        return pa.array(np.full(len(array), _TSV_NULL, dtype=object), pa.string())
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        text = array
        for old, new in _TSV_ESCAPES:  # a cheap scan first: most columns need no escaping
            if len(text) and pc.any(pc.match_substring(text, old)).as_py():
                text = pc.replace_substring(text, old, new)
    elif pa.types.is_boolean(t):
        text = array.cast(pa.int8()).cast(pa.string())
    elif pa.types.is_floating(t):
        if len(array) and pc.any(pc.is_inf(array)).as_py():
            raise ValueError(f"column {name!r} holds infinite values, which MySQL cannot store")
        text = array.cast(pa.string())
    elif pa.types.is_timestamp(t):
        # cast renders "YYYY-MM-DD HH:MM:SS.ffffff" for naive us timestamps, 10x faster than strftime
        text = array.cast(pa.timestamp("us"), safe=False).cast(pa.string())
    else:  # integers, dates
        text = array.cast(pa.string())
    return pc.fill_null(text.cast(pa.string()), _TSV_NULL)


def _write_tsv(path: Path, arrays: Sequence[pa.Array], names: Sequence[str]) -> int:
    """Join fields with tabs and rows with newlines in Arrow, then write the bytes as-is."""
    fields = [_tsv_field(array, name) for array, name in zip(arrays, names, strict=True)]
    fields[-1] = pc.binary_join_element_wise(fields[-1], "", "\n")  # last field + "\n"
    lines = pc.binary_join_element_wise(*fields, "\t") if len(fields) > 1 else fields[0]
    if isinstance(lines, pa.ChunkedArray):
        lines = lines.combine_chunks()
    offsets_dtype = np.int64 if pa.types.is_large_string(lines.type) else np.int32
    offsets = np.frombuffer(lines.buffers()[1], dtype=offsets_dtype)
    start, stop = int(offsets[lines.offset]), int(offsets[lines.offset + len(lines)])
    with open(path, "wb") as handle:
        if stop > start:
            handle.write(memoryview(lines.buffers()[2])[start:stop])
    return len(lines)


def _python_rows(arrays: Sequence[pa.Array], *, sqlite: bool) -> list[tuple[Any, ...]]:
    """Driver-native tuples for executemany (SQLite gets SQLAlchemy's text datetime format)."""
    columns = []
    for array in arrays:
        t = array.type
        if sqlite and pa.types.is_timestamp(t):
            array = array.cast(pa.timestamp("us"), safe=False).cast(pa.string())  # "...HH:MM:SS.ffffff"
        elif sqlite and pa.types.is_date(t):
            array = array.cast(pa.string())
        elif pa.types.is_boolean(t):
            array = array.cast(pa.int8())
        columns.append(array.to_pylist())
    return list(zip(*columns, strict=True)) if columns else []


# --------------------------------------------------------------------------- bulk insert


@contextlib.contextmanager
def _transaction(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A real transaction on both backends, DDL included.

    Engines from create_db_engine emit BEGIN for SQLite; for any other SQLite engine pysqlite
    would autocommit DDL, so BEGIN is emitted here.

    When the connection died mid-statement (KILL, server restart, network), the rollback fails
    too; the original error (naming the table) is raised, not the driver's bare ``(0, '')``.
    """
    with engine.connect() as conn:
        trans = conn.begin()
        try:
            if is_sqlite(conn) and not conn.connection.dbapi_connection.in_transaction:  # type: ignore[union-attr]
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            yield conn
        except BaseException:
            try:
                trans.rollback()
            except Exception as rollback_error:  # noqa: BLE001 - the first error is the one to report
                log.warning("rollback failed after an error (%s); discarding the connection", rollback_error)
                conn.invalidate()
            raise
        trans.commit()


def _load_data_sql(
    conn: sa.Connection, table: str, names: Sequence[str | None], set_columns: Sequence[str] = ()
) -> str:
    """``names[i]`` receives the file's field i (None: the field is read and dropped); each of
    ``set_columns`` is set from a bound parameter after the file name."""
    columns = ", ".join("@_" if n is None else quote_identifier(conn, n, "column") for n in names)
    assignments = ", ".join(f"{quote_identifier(conn, c, 'column')} = %s" for c in set_columns)
    return (
        f"LOAD DATA LOCAL INFILE %s INTO TABLE {quote_identifier(conn, table, 'table')} CHARACTER SET utf8mb4 "
        # hex literals, because backslash escapes in SQL strings change meaning under NO_BACKSLASH_ESCAPES
        f"FIELDS TERMINATED BY X'09' ESCAPED BY X'5C' LINES TERMINATED BY X'0A' ({columns})"
        + (f" SET {assignments}" if assignments else "")
    )


def _insert_sql(conn: sa.Connection, table: str, names: Sequence[str]) -> str:
    columns = ", ".join(quote_identifier(conn, n, "column") for n in names)
    marker = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    return (
        f"INSERT INTO {quote_identifier(conn, table, 'table')} ({columns}) VALUES ({', '.join([marker] * len(names))})"
    )


def _refused_local_infile(exc: BaseException) -> bool:
    """Server or client said no to LOCAL INFILE (nothing was loaded, the connection is fine)."""
    orig = getattr(exc, "orig", exc)
    code = orig.args[0] if getattr(orig, "args", None) else None
    return code in _LOCAL_INFILE_REFUSED or "LOAD_LOCAL packet" in str(orig)


@contextlib.contextmanager
def _load_errors(conn: sa.Connection, raw: Any, table: str, *, refusable: bool) -> Iterator[None]:
    """Driver errors of a LOAD DATA as WriteError naming the table; a refused LOCAL INFILE is
    re-raised as is when ``refusable`` (the caller falls back to INSERTs)."""
    driver_error: type[Exception] = conn.dialect.loaded_dbapi.Error
    try:
        yield
    except driver_error as exc:
        if refusable and _refused_local_infile(exc):
            raise
        raise WriteError(f"LOAD DATA into {table!r} failed ({masked_url(conn)}): {exc}") from exc
    except WriteError:
        raise
    except Exception as exc:
        # PyMySQL: when the server drops the connection during the file upload, its
        # cleanup writes to the closed socket and raises AttributeError instead
        if getattr(raw, "open", True):
            raise
        lost = exc.__context__ if isinstance(exc.__context__, driver_error) else exc
        raise WriteError(f"LOAD DATA into {table!r} failed ({masked_url(conn)}): connection lost: {lost}") from exc


@contextlib.contextmanager
def _settled(current: Any) -> Iterator[None]:
    """On the way out (also on errors), wait for the in-flight ``current()`` future, if any."""
    try:
        yield
    finally:
        future = current()
        if future is not None:
            with contextlib.suppress(Exception):
                future.result()


@dataclass
class _Mirror:
    """A second table loaded from the same LOAD DATA files, on its own connection and thread.

    The server inserts into both tables at once (one core each) while the rows are rendered and
    sent once. ``fields[i]`` names the mirror column for file field i (None: dropped);
    ``set_values`` fills the remaining columns. ``loaded`` counts the server-reported rows;
    ``complete`` is False when the main load fell back to INSERTs (the caller then copies the
    rows on the server instead).
    """

    conn: sa.Connection
    table: str
    fields: list[str | None]
    set_values: dict[str, Any]
    loaded: int = 0
    complete: bool = False


def _insert_frame(
    conn: sa.Connection,
    table: str,
    frame: pd.DataFrame,
    plan: FramePlan,
    *,
    chunk_size: int,
    progress: ProgressFn | None,
    method: Literal["auto", "load_data", "executemany"] = "auto",
    mirror: _Mirror | None = None,
) -> int:
    """Insert all rows on ``conn`` (inside the caller's transaction), and into ``mirror`` too.

    Returns the rows the server reports inserted (LOAD DATA: checked per chunk, warning-free), so
    callers verify a load without a COUNT(*) scan.
    """
    total = len(frame)
    use_load_data = is_mysql(conn) and method != "executemany"
    raw = conn.connection.dbapi_connection
    assert raw is not None
    # the driver cursor is used directly (LOAD DATA warnings, executemany speed), so its
    # errors arrive unwrapped: turn them into WriteError naming the table
    driver_error: type[Exception] = conn.dialect.loaded_dbapi.Error
    starts = list(range(0, total, chunk_size))
    inserted = 0
    done = 0  # chunks inserted
    with tempfile.TemporaryDirectory(prefix="segmentation-load-") as tmp:
        if use_load_data and starts:
            # Pipeline: Arrow renders chunk k+1 (GIL released) while the server loads chunk k.
            def prepare(k: int) -> tuple[Path, int]:
                path = Path(tmp) / f"chunk{k % 2}.tsv"
                start = starts[k]
                return path, _write_tsv(
                    path, _chunk_arrays(frame, plan, start, min(start + chunk_size, total)), plan.names
                )

            mirrored: Future[int] | None = None
            mirror_raw = mirror.conn.connection.dbapi_connection if mirror is not None else None

            def load_mirror(path: Path, rows: int) -> int:
                assert mirror is not None
                with _load_errors(mirror.conn, mirror_raw, mirror.table, refusable=False):
                    return _load_data_chunk(
                        mirror.conn, mirror_raw, mirror.table, path, mirror.fields, rows, mirror.set_values
                    )

            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tsv") as pool, ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="mirror"
            ) as mirror_pool, _settled(lambda: mirrored):
                pending = pool.submit(prepare, 0)
                while done < len(starts):
                    path, rows = pending.result()
                    if mirrored is not None:  # the file prepare(done + 1) overwrites fed it
                        assert mirror is not None
                        mirror.loaded += mirrored.result()
                        mirrored = None
                    if done + 1 < len(starts):
                        pending = pool.submit(prepare, done + 1)
                    if mirror is not None:
                        mirrored = mirror_pool.submit(load_mirror, path, rows)
                    try:
                        with _load_errors(conn, raw, table, refusable=method != "load_data"):
                            inserted += _load_data_chunk(conn, raw, table, path, plan.names, rows)
                    except driver_error as exc:  # LOCAL INFILE refused
                        log.warning(
                            "LOAD DATA LOCAL refused by %s (%s); falling back to batched INSERTs",
                            masked_url(conn),
                            exc,
                        )
                        break
                    done += 1
                    if progress is not None:
                        progress(inserted, total)
                if mirrored is not None and done == len(starts):  # else: fell back to INSERTs
                    assert mirror is not None
                    mirror.loaded += mirrored.result()
                    mirrored = None
        if mirror is not None:  # every chunk (none, for an empty frame) went through LOAD DATA
            mirror.complete = use_load_data and done == len(starts)
        for start in starts[done:]:
            rows_ = _python_rows(
                _chunk_arrays(frame, plan, start, min(start + chunk_size, total)), sqlite=is_sqlite(conn)
            )
            cursor = raw.cursor()
            try:
                cursor.executemany(_insert_sql(conn, table, plan.names), rows_)
                # the server's count, not ours: the caller compares it with the frame
                inserted += cursor.rowcount if cursor.rowcount >= 0 else len(rows_)
            except driver_error as exc:
                raise WriteError(f"INSERT into {table!r} failed ({masked_url(conn)}): {exc}") from exc
            finally:
                cursor.close()
            if progress is not None:
                progress(inserted, total)
    return inserted


def _load_data_chunk(
    conn: sa.Connection,
    raw: Any,
    table: str,
    path: Path,
    names: Sequence[str | None],
    expected: int,
    set_values: dict[str, Any] | None = None,
) -> int:
    """One LOAD DATA; warnings (truncation, bad numbers, duplicate keys) are errors here.

    With LOCAL the server downgrades data errors to warnings and skips duplicate keys, so a
    load that "succeeded" with warnings has silently changed data.
    """
    values = dict(set_values or {})
    cursor = raw.cursor()
    try:
        cursor.execute(_load_data_sql(conn, table, names, list(values)), (str(path), *values.values()))
        loaded, warnings = int(cursor.rowcount), int(getattr(cursor, "warning_count", 0))
        if warnings:
            cursor.execute("SHOW WARNINGS LIMIT 5")
            shown = [f"{row[0]} {row[1]}: {row[2]}" for row in cursor.fetchall()]
            raise WriteError(
                f"LOAD DATA into {table!r} ({masked_url(conn)}) raised {warnings} warning(s), e.g. {shown}"
            )
    finally:
        cursor.close()
    if loaded != expected:
        raise WriteError(f"LOAD DATA into {table!r} loaded {loaded} of {expected} rows ({masked_url(conn)})")
    return loaded


# --------------------------------------------------------------------------- DDL helpers


def _create_table(
    conn: sa.Connection,
    table: str,
    plan: FramePlan,
    *,
    comment: str | None = None,
    index: tuple[str, Sequence[str]] | None = None,
) -> None:
    metadata = sa.MetaData()
    kwargs: dict[str, Any] = {"mysql_charset": "utf8mb4"} if is_mysql(conn) else {}
    if comment is not None and conn.dialect.supports_comments:
        kwargs["comment"] = comment
    tbl = sa.Table(table, metadata, *plan.columns(), **kwargs)
    if index is not None:
        sa.Index(index[0], *(tbl.c[c] for c in index[1]))
    metadata.create_all(conn, checkfirst=False)


def _drop_if_exists(conn: sa.Connection, table: str) -> None:
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {quote_identifier(conn, table, 'table')}")


def _derived_name(table: str, suffix: str) -> str:
    return validate_identifier(table + suffix, f"derived table name ({suffix} of {table!r})")


def _swap(engine: sa.Engine, swaps: Sequence[tuple[str, str, str]]) -> None:
    """Make each ``staging`` become its ``table`` in one atomic step; readers see all old or all
    new, never neither and never a mix. ``swaps`` holds ``(table, staging, old)`` triples."""
    if is_mysql(engine):
        with engine.connect() as conn:
            q = lambda name: quote_identifier(conn, name, "table")  # noqa: E731 - local shorthand
            renames, replaced = [], []
            for table, staging, old in swaps:
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {q(old)}")
                if sa.inspect(conn).has_table(table):
                    renames.append(f"{q(table)} TO {q(old)}")
                    replaced.append(old)
                renames.append(f"{q(staging)} TO {q(table)}")
            conn.exec_driver_sql("RENAME TABLE " + ", ".join(renames))  # one statement: atomic
            for old in replaced:
                try:
                    conn.exec_driver_sql(f"DROP TABLE {q(old)}")
                except sa.exc.DBAPIError as exc:  # the swap succeeded; the next write drops it
                    log.warning("could not drop %r after swap: %s", old, getattr(exc, "orig", exc))
            conn.commit()
        return
    with _transaction(engine) as conn:  # SQLite DDL is transactional: all or nothing
        for table, staging, _old in swaps:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {quote_identifier(conn, table, 'table')}")
            conn.exec_driver_sql(
                f"ALTER TABLE {quote_identifier(conn, staging, 'table')} RENAME TO {quote_identifier(conn, table, 'table')}"
            )


# --------------------------------------------------------------------------- public API


def write_table_atomic(
    engine: sa.Engine,
    table: str,
    frame: pd.DataFrame,
    *,
    column_types: dict[str, sa.types.TypeEngine[Any]] | None = None,
    primary_key: str | None = None,
    progress: ProgressFn | None = None,
    lock_name: str | None = None,
    lock_timeout_s: int = 600,
    chunk_size: int = DEFAULT_WRITE_CHUNK,
    method: Literal["auto", "load_data", "executemany"] = "auto",
) -> int:
    """Replace ``table`` with ``frame`` so that readers see the old or the new table, never a mix.

    Loads ``<table>__staging`` (dropping any leftover from a crashed run), checks its row
    count, then swaps: MySQL ``RENAME TABLE t TO t__old, t__staging TO t`` (atomic),
    SQLite ``DROP`` + ``ALTER TABLE RENAME`` in one transaction. On any failure the old table
    is untouched and the staging table dropped. Concurrent writers of the same table must
    share ``lock_name`` (they share the staging name). The frame index is not written.
    Returns the number of rows written.
    """
    plan = _plan_frame(frame, column_types, primary_key)
    write_tables_atomic(
        engine, [(table, frame, plan)], progress=progress, lock_name=lock_name, lock_timeout_s=lock_timeout_s,
        chunk_size=chunk_size, method=method,
    )
    return len(frame)


@dataclass(frozen=True)
class HistoryCopy:
    """Also record the rows of replaced table ``source`` in history ``table`` as run ``run_key``
    (the run's earlier history rows are replaced: re-runs are idempotent)."""

    table: str
    source: str
    columns: Sequence[str]
    run_key_column: str
    run_key: str
    id_column: str


def write_tables_atomic(
    engine: sa.Engine,
    tables: Sequence[tuple[str, pd.DataFrame, str | None | FramePlan]],
    *,
    progress: ProgressFn | None = None,
    lock_name: str | None = None,
    lock_timeout_s: int = 600,
    chunk_size: int = DEFAULT_WRITE_CHUNK,
    method: Literal["auto", "load_data", "executemany"] = "auto",
    history: HistoryCopy | None = None,
) -> list[int]:
    """Replace several tables as one unit: ``(table, frame, primary_key)`` items are all staged
    and verified first, then swapped together (one MySQL ``RENAME TABLE``, one SQLite
    transaction). On any failure none of the tables changes. Returns the rows written per table.

    ``history``: on MySQL the history is loaded from the same LOAD DATA files as its source, on a
    second connection, in parallel, and committed right after the swap; elsewhere (or when
    LOCAL INFILE is refused) it is copied on the server from the swapped-in table. Either way a
    history failure after the swap leaves the new tables published and raises.
    """
    items = []
    for table, frame, key in tables:
        validate_identifier(table, "table")
        plan = key if isinstance(key, FramePlan) else _plan_frame(frame, None, key)
        items.append((table, frame, plan, _derived_name(table, STAGING_SUFFIX), _derived_name(table, OLD_SUFFIX)))
    source = None
    if history is not None:
        source = next((item for item in items if item[0] == history.source), None)
        if source is None:
            raise ValueError(f"history source {history.source!r} is not one of the replaced tables")
        _check_run_key(history.run_key)
    started = time.perf_counter()
    lock = write_lock(engine, lock_name, lock_timeout_s) if lock_name else contextlib.nullcontext()
    with lock, contextlib.ExitStack() as stack:
        mirror: _Mirror | None = None
        if history is not None and source is not None:
            hist_plan = ensure_history_table(
                engine, history.table, source[2], history.columns, run_key_column=history.run_key_column,
                id_column=history.id_column,
            )
            if is_mysql(engine) and method != "executemany":
                hconn = stack.enter_context(engine.connect())
                hconn.begin()
                _delete_run(hconn, history.table, history.run_key_column, history.run_key)
                fields = [n if n in hist_plan.names and n != history.run_key_column else None for n in source[2].names]
                mirror = _Mirror(hconn, history.table, fields, {history.run_key_column: history.run_key})
        with engine.connect() as conn:
            for *_, staging, _old in items:
                _drop_if_exists(conn, staging)
            conn.commit()
        try:
            for table, frame, plan, staging, _old in items:
                with _transaction(engine) as conn:
                    # the comment changes the table's identity token, so chunked readers notice a swap
                    _create_table(conn, staging, plan, comment=f"segmentation-pipeline write {uuid.uuid4().hex}")
                with _transaction(engine) as conn:
                    # server-reported counts of this transaction: no COUNT(*) scan of the staging table
                    loaded = _insert_frame(
                        conn, staging, frame, plan, chunk_size=chunk_size, progress=progress, method=method,
                        mirror=mirror if source is not None and table == source[0] else None,
                    )
                if loaded != len(frame):
                    raise WriteError(
                        f"staging table {staging!r} holds {loaded} rows but the frame has {len(frame)} "
                        f"({masked_url(engine)}); {table!r} left unchanged"
                    )
            if mirror is not None and mirror.complete and source is not None and mirror.loaded != len(source[1]):
                raise WriteError(
                    f"history {mirror.table!r} got {mirror.loaded} rows for run {history.run_key!r}, expected "
                    f"{len(source[1])} ({masked_url(engine)}); nothing replaced"
                )
            _swap(engine, [(table, staging, old) for table, _f, _p, staging, old in items])
        except BaseException:
            if mirror is not None:
                _abandon(mirror.conn)
            with contextlib.suppress(Exception), engine.connect() as conn:
                for *_, staging, _old in items:
                    _drop_if_exists(conn, staging)
                conn.commit()
            raise
        if history is not None and source is not None:
            try:
                if mirror is not None and mirror.complete:
                    mirror.conn.commit()
                else:
                    if mirror is not None:
                        _abandon(mirror.conn)
                    copy_history(
                        engine, history.table, history.source, source[2], history.columns,
                        run_key_column=history.run_key_column, run_key=history.run_key,
                        id_column=history.id_column, expected_rows=len(source[1]),
                    )
            except Exception as exc:
                raise WriteError(
                    f"published {[item[0] for item in items]} but recording run {history.run_key!r} in history "
                    f"{history.table!r} failed ({masked_url(engine)}): {getattr(exc, 'orig', exc)}; a re-run of "
                    "the same run records it"
                ) from exc
    for table, frame, *_ in items:
        log.info(
            "replaced %r with %d rows in %.2fs (%s)", table, len(frame), time.perf_counter() - started,
            masked_url(engine),
        )
    return [len(frame) for _t, frame, *_ in items]


def _abandon(conn: sa.Connection) -> None:
    """Roll back; a connection that died mid-statement cannot, so it is discarded instead."""
    try:
        conn.rollback()
    except Exception:  # noqa: BLE001 - the original error is the one being raised
        conn.invalidate()


def _check_existing_columns(engine: sa.Engine, table: str, names: Sequence[str]) -> None:
    existing = table_columns(engine, table)
    missing = [n for n in names if n not in existing]
    if missing:
        raise SourceError(
            f"table {table!r} ({masked_url(engine)}) has no column(s) {missing} for the frame; "
            f"existing columns: {existing}. Migrate the table or drop it to let it be recreated."
        )


def _index_name(table: str, suffix: str) -> str:
    name = f"ix_{table}_{suffix}"
    if len(name) > 64:
        import hashlib

        name = f"ix_{table[:40]}_{hashlib.sha256(name.encode()).hexdigest()[:12]}"
    return name


def _create_if_missing(
    engine: sa.Engine, table: str, plan: FramePlan, index: tuple[str, Sequence[str]] | None = None
) -> None:
    """CREATE once; losing a creation race to a concurrent run is fine."""
    if table_exists(engine, table):
        _check_existing_columns(engine, table, plan.names)
    else:
        try:
            with _transaction(engine) as conn:
                _create_table(conn, table, plan, index=index)
        except sa.exc.DBAPIError:
            if not table_exists(engine, table):
                raise
            _check_existing_columns(engine, table, plan.names)
    if index is not None:
        _ensure_index(engine, table, plan, index)


def _ensure_index(engine: sa.Engine, table: str, plan: FramePlan, index: tuple[str, Sequence[str]]) -> None:
    """The index must exist: MySQL commits CREATE TABLE before CREATE INDEX, so a CREATE INDEX
    that failed (e.g. no INDEX privilege) used to leave the table without it, silently, for good."""
    name, columns = index
    if any(ix.get("name") == name for ix in sa.inspect(engine).get_indexes(table)):
        return
    tbl = sa.Table(table, sa.MetaData(), *(sa.Column(c, plan.sql_types[c]) for c in columns))
    try:
        with _transaction(engine) as conn:
            sa.Index(name, *(tbl.c[c] for c in columns)).create(conn)
    except sa.exc.DBAPIError:
        if not any(ix.get("name") == name for ix in sa.inspect(engine).get_indexes(table)):  # not a race
            raise


def plan_table(engine: sa.Engine, table: str) -> FramePlan:
    """The plan of an existing table, from the database's own column types (for copies made on
    the server, e.g. :func:`copy_history` from a table another writer loaded)."""
    columns = sa.inspect(engine).get_columns(table)
    return FramePlan([c["name"] for c in columns], {}, {c["name"]: c["type"] for c in columns}, None)


def plan_frame(frame: pd.DataFrame, primary_key: str | None = None) -> FramePlan:
    """The frame's column plan, validated once; pass it to :func:`write_tables_atomic` and
    :func:`copy_history` instead of a key so neither re-infers types over every value."""
    return _plan_frame(frame, None, primary_key)


def _history_plan(source: FramePlan, columns: Sequence[str], run_key_column: str, id_column: str) -> FramePlan:
    """History columns typed like the source's; keyed by (run, id) where the key fits InnoDB's limit."""
    missing = [c for c in (*columns, id_column) if c != run_key_column and c not in source.names]
    if missing:
        raise ValueError(f"history columns {missing} are not columns of the source table; it has {source.names}")
    names = [run_key_column, *(c for c in columns if c != run_key_column)]
    if id_column not in names:
        names.append(id_column)
    sql_types = {c: source.sql_types[c] for c in names if c != run_key_column}
    sql_types[run_key_column] = sa.String(_RUN_KEY_VARCHAR)
    arrow_types = {c: source.arrow_types.get(c, pa.string()) for c in names}
    id_type = sql_types[id_column]
    fits = not isinstance(id_type, sa.String) or (id_type.length or _VARCHAR) <= _MAX_KEY_VARCHAR - _RUN_KEY_VARCHAR
    return FramePlan(names, arrow_types, sql_types, (run_key_column, id_column) if fits else None)


def ensure_history_table(
    engine: sa.Engine, table: str, source_plan: FramePlan, columns: Sequence[str], *, run_key_column: str,
    id_column: str,
) -> FramePlan:
    """Create the history table on first use (typed like the source); returns its plan.

    New tables are keyed ``(run_key_column, id_column)``: one B-tree instead of rows + an index.
    """
    validate_identifier(table, "history table")
    validate_identifier(run_key_column, "run key column")
    validate_identifier(id_column, "id column")
    plan = _history_plan(source_plan, columns, run_key_column, id_column)
    index = None if plan.primary_key else (_index_name(table, "run"), [run_key_column, id_column])
    _create_if_missing(engine, table, plan, index=index)
    return plan


def _check_run_key(run_key: str) -> None:
    if not isinstance(run_key, str) or not run_key:
        raise ValueError(f"run_key must be a non-empty string, got {run_key!r}")
    if len(run_key) > _RUN_KEY_VARCHAR:
        raise ValueError(f"run_key {run_key[:80]!r} has {len(run_key)} characters; at most {_RUN_KEY_VARCHAR}")


def _delete_run(conn: sa.Connection, table: str, run_key_column: str, run_key: str) -> None:
    tbl = sa.table(table, sa.column(run_key_column))
    conn.execute(sa.delete(tbl).where(tbl.c[run_key_column] == run_key))


def copy_history(
    bind: sa.Engine | sa.Connection,
    table: str,
    source_table: str,
    source_plan: FramePlan,
    columns: Sequence[str],
    *,
    run_key_column: str,
    run_key: str,
    id_column: str,
    expected_rows: int,
) -> int:
    """Record ``source_table``'s rows as run ``run_key`` of the history, on the server.

    ``INSERT ... SELECT``: rows already in the database never travel through Python again.
    Idempotent: the run's earlier rows are replaced. Given an Engine, the table is created when
    missing and the copy runs in its own transaction; given a Connection, it runs inside the
    caller's transaction (the scoring upsert commits segments and history together) and
    :func:`ensure_history_table` must have run first. The server's row count must equal
    ``expected_rows`` or nothing is recorded.
    """
    validate_identifier(source_table, "history source table")
    _check_run_key(run_key)
    if isinstance(bind, sa.Engine):
        ensure_history_table(bind, table, source_plan, columns, run_key_column=run_key_column, id_column=id_column)
        with _transaction(bind) as conn:
            return copy_history(conn, table, source_table, source_plan, columns, run_key_column=run_key_column,
                                run_key=run_key, id_column=id_column, expected_rows=expected_rows)
    conn = bind
    names = _history_plan(source_plan, columns, run_key_column, id_column).names
    q = lambda name: quote_identifier(conn, name, "column")  # noqa: E731 - local shorthand
    target, source = quote_identifier(conn, table, "history table"), quote_identifier(conn, source_table, "table")
    selected = ", ".join(":run_key" if c == run_key_column else q(c) for c in names)
    try:
        _delete_run(conn, table, run_key_column, run_key)
        copied = conn.execute(
            sa.text(f"INSERT INTO {target} ({', '.join(q(c) for c in names)}) SELECT {selected} FROM {source}"),
            {"run_key": run_key},
        ).rowcount
    except sa.exc.DBAPIError as exc:
        raise WriteError(
            f"history {table!r} copy from {source_table!r} for run {run_key!r} failed ({masked_url(conn)}): "
            f"{getattr(exc, 'orig', exc)}; rolled back"
        ) from exc
    if copied != expected_rows:
        raise WriteError(
            f"history {table!r} got {copied} rows for run {run_key!r} from {source_table!r}, "
            f"expected {expected_rows}; rolled back"
        )
    return copied


def load_frame(
    engine: sa.Engine,
    table: str,
    frame: pd.DataFrame,
    *,
    if_exists: Literal["replace", "append"] = "replace",
    primary_key: str | None = None,
    progress: ProgressFn | None = None,
    lock_timeout_s: int = 600,
) -> int:
    """Load a frame for ``segmentation load-csv`` / demo data.

    ``replace`` is an atomic swap (readers never see a partial load); ``append`` creates the
    table when missing and inserts all rows in one transaction (all or nothing).
    """
    if if_exists == "replace":
        return write_table_atomic(
            engine,
            table,
            frame,
            primary_key=primary_key,
            progress=progress,
            lock_name=f"load:{table}",
            lock_timeout_s=lock_timeout_s,
        )
    if if_exists != "append":
        raise ValueError(f"if_exists must be 'replace' or 'append', got {if_exists!r}")
    validate_identifier(table, "table")
    plan = _plan_frame(frame, None, primary_key)
    _create_if_missing(engine, table, plan)
    with _transaction(engine) as conn:
        inserted = _insert_frame(conn, table, frame, plan, chunk_size=DEFAULT_WRITE_CHUNK, progress=progress)
    if inserted != len(frame):
        raise WriteError(f"appended {inserted} of {len(frame)} rows to {table!r} ({masked_url(engine)})")
    return inserted


def swap_in_staging(engine: sa.Engine, tables: Sequence[str]) -> None:
    """Swap ``<table>__staging`` in as ``table`` for every table, all in one atomic step.

    For writers that load and verify the staging tables themselves (the Spark engine's JDBC
    write-back); the caller holds the write lock. Readers see all old or all new tables.
    """
    _swap(engine, [(t, _derived_name(t, STAGING_SUFFIX), _derived_name(t, OLD_SUFFIX)) for t in tables])
