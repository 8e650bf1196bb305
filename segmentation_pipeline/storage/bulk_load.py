"""Bulk loads of pandas frames: LOAD DATA LOCAL INFILE from Arrow-rendered TSV chunks on MySQL,
batched INSERTs elsewhere (or when the server or client refuses LOCAL INFILE).

LOAD DATA is an order of magnitude faster than INSERTs from Python. :class:`FrameLoader` is the
pandas engine's :class:`~segmentation_pipeline.storage.swap.TableLoader`; :func:`write_table_atomic`
and :func:`load_frame` are the frame-level entry points.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
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

from segmentation_pipeline.config import validate_identifier
from segmentation_pipeline.storage.connection import (
    ProgressFn,
    is_mysql,
    is_sqlite,
    masked_url,
    quote_identifier,
    transaction,
)
from segmentation_pipeline.storage.errors import WriteError
from segmentation_pipeline.storage.history import HistoryMirror
from segmentation_pipeline.storage.schema import FramePlan, create_table_if_missing, plan_frame, series_to_arrow
from segmentation_pipeline.storage.publication import scratch_prefix
from segmentation_pipeline.storage.swap import StagedTable, write_tables_atomic

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_WRITE_CHUNK", "FrameLoader", "LoadMethod", "load_frame", "write_table_atomic"]

DEFAULT_WRITE_CHUNK = 100_000
LoadMethod = Literal["auto", "load_data", "executemany"]

# MySQL/MariaDB error codes meaning "LOAD DATA LOCAL is not allowed here".
_LOCAL_INFILE_REFUSED = {1148, 2068, 3948, 3950, 4166}
# LOAD DATA's default escaping (ESCAPED BY '\\'): backslash first, or the others double-escape.
_TSV_ESCAPES = (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r"), ("\x00", "\\0"))
_TSV_NULL = "\\N"


def _chunk_arrays(frame: pd.DataFrame, plan: FramePlan, start: int, stop: int) -> list[pa.Array]:
    arrays = []
    for name in plan.names:
        array = series_to_arrow(frame[name].iloc[start:stop])
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


def _insert_frame(
    conn: sa.Connection,
    table: str,
    frame: pd.DataFrame,
    plan: FramePlan,
    *,
    chunk_size: int,
    progress: ProgressFn | None,
    method: LoadMethod = "auto",
    mirror: HistoryMirror | None = None,
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
    with tempfile.TemporaryDirectory(prefix=scratch_prefix()) as tmp:
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


# --------------------------------------------------------------------------- entry points


@dataclass(frozen=True)
class FrameLoader:
    """A pandas frame as a :class:`~segmentation_pipeline.storage.swap.TableLoader`: rows are
    rendered chunk by chunk straight from the frame (no copy of it), the count is the server's."""

    frame: pd.DataFrame
    plan: FramePlan
    chunk_size: int = DEFAULT_WRITE_CHUNK
    progress: ProgressFn | None = None
    method: LoadMethod = "auto"

    @property
    def rows(self) -> int:
        return len(self.frame)

    def feeds_mirror(self, engine: sa.Engine) -> bool:
        return is_mysql(engine) and self.method != "executemany"

    def load(self, engine: sa.Engine, staging: str, mirror: HistoryMirror | None) -> int:
        with transaction(engine) as conn:
            # server-reported counts of this transaction: no COUNT(*) scan of the staging table
            return _insert_frame(
                conn, staging, self.frame, self.plan, chunk_size=self.chunk_size, progress=self.progress,
                method=self.method, mirror=mirror,
            )


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
    method: LoadMethod = "auto",
) -> int:
    """Replace ``table`` with ``frame`` so that readers see the old or the new table, never a mix
    (:func:`~segmentation_pipeline.storage.swap.write_tables_atomic` for one frame).

    Concurrent writers of the same table must share ``lock_name``. The frame index is not
    written. Returns the number of rows written.
    """
    loader = FrameLoader(
        frame, plan_frame(frame, primary_key, column_types), chunk_size=chunk_size, progress=progress, method=method
    )
    write_tables_atomic(engine, [StagedTable(table, loader)], lock_name=lock_name, lock_timeout_s=lock_timeout_s)
    return len(frame)


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
    plan = plan_frame(frame, primary_key)
    create_table_if_missing(engine, table, plan)
    with transaction(engine) as conn:
        inserted = _insert_frame(conn, table, frame, plan, chunk_size=DEFAULT_WRITE_CHUNK, progress=progress)
    if inserted != len(frame):
        raise WriteError(f"appended {inserted} of {len(frame)} rows to {table!r} ({masked_url(engine)})")
    return inserted
