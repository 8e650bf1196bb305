"""Spark JDBC write-back with the project's atomic table swap.

Rows never travel through the driver: each Spark partition inserts into ``<table>__staging`` over
its own JDBC connection (batched; ``rewriteBatchedStatements`` makes the MariaDB driver send
multi-row INSERTs), the staging row count is checked against the DataFrame, and then
:func:`~segmentation_pipeline.storage.writeback.swap_in_staging` -- the local engine's atomic
``RENAME TABLE`` -- puts it in place. On any failure the staging table is dropped and the live table is
untouched. The staging table is created here with the local engine's column types
(VARCHAR(255)/TEXT, BIGINT, DOUBLE, BOOLEAN, DATETIME(6), the primary key) and a per-write table
comment, so chunked readers notice the swap exactly as they do for local writes.

:func:`publish_segments` is the Spark twin of
:func:`segmentation_pipeline.storage.segment_store.publish_segments`: both tables swapped under the
same database lock, plus the idempotent ``segment_assignments`` history for the run, copied on
the server from the swapped-in segments table (the rows cross JDBC once).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from segmentation_pipeline.config import OutputConfig, validate_identifier
from segmentation_pipeline.core.segment_tables import REJECT_COLUMNS, SEGMENT_COLUMNS
from segmentation_pipeline.engines.spark.extract import JdbcTarget, jdbc_target, scrub
from segmentation_pipeline.storage.database import is_mysql, masked_url, write_lock
from segmentation_pipeline.storage.segment_store import HISTORY_COLUMNS, lock_name
from segmentation_pipeline.storage.writeback import (
    STAGING_SUFFIX,
    WriteError,
    copy_history,
    plan_table,
    swap_in_staging,
)

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "publish_segments",
    "rejects_frame",
    "segments_frame",
    "write_table_atomic",
    "write_tables_atomic",
]

DEFAULT_BATCH_SIZE = 10_000
_VARCHAR = 255
_MAX_KEY_VARCHAR = 768  # utf8mb4 x 768 = 3072 bytes, InnoDB's index key limit


def _F():  # noqa: N802
    from pyspark.sql import functions

    return functions


def _derived(table: str, suffix: str) -> str:
    return validate_identifier(table + suffix, f"derived table name ({suffix} of {table!r})")


def _now_text() -> str:
    return datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0).isoformat(sep=" ")


# --------------------------------------------------------------------------- frames


def segments_frame(
    assigned: "DataFrame",
    id_column: str,
    segment_names: dict[int, str],
    *,
    model_name: str,
    model_version: str,
    mlflow_run_id: str,
    dagster_run_id: str,
    segment_column: str = "segment_id",
) -> "DataFrame":
    """:func:`core.segment_tables.build_segments_table` in Spark: SEGMENT_COLUMNS, one row per clean customer."""
    F = _F()
    pairs = [item for s, name in sorted(segment_names.items()) for item in (F.lit(int(s)), F.lit(str(name)))]
    names = F.create_map(*pairs) if pairs else F.create_map().cast("map<bigint,string>")
    segment = F.col(segment_column).cast("long")
    columns = set(assigned.columns)
    return assigned.select(
        F.col(id_column).alias("customer_id"),
        segment.alias("segment_id"),
        F.coalesce(F.element_at(names, segment), F.lit("")).alias("segment_name"),
        (F.col("is_outlier").cast("boolean") if "is_outlier" in columns else F.lit(False)).alias("is_outlier"),
        (F.coalesce(F.col("outlier_reason").cast("string"), F.lit("")) if "outlier_reason" in columns
         else F.lit("")).alias("outlier_reason"),
        F.lit(model_name).alias("model_name"),
        F.lit(str(model_version)).alias("model_version"),
        F.lit(mlflow_run_id).alias("mlflow_run_id"),
        F.lit(dagster_run_id).alias("dagster_run_id"),
        F.lit(_now_text()).cast("timestamp").alias("scored_at"),
    ).select(*SEGMENT_COLUMNS)


def rejects_frame(rejects: "DataFrame", *, mlflow_run_id: str, dagster_run_id: str) -> "DataFrame":
    """:func:`core.segment_tables.build_rejects_table` in Spark: REJECT_COLUMNS."""
    F = _F()
    return rejects.select(
        F.col("customer_id").cast("string").alias("customer_id"),
        F.col("reason").cast("string").alias("reason"),
        (F.col("detail").cast("string") if "detail" in rejects.columns else F.lit("")).alias("detail"),
        F.lit(mlflow_run_id).alias("mlflow_run_id"),
        F.lit(dagster_run_id).alias("dagster_run_id"),
        F.lit(_now_text()).cast("timestamp").alias("rejected_at"),
    ).select(*REJECT_COLUMNS)


# --------------------------------------------------------------------------- DDL


_ColumnSpec = tuple[str, "sa.types.TypeEngine[Any]", bool]  # name, SQL type, is primary key


def _plan(df: "DataFrame", primary_key: str | None) -> tuple[list[_ColumnSpec], int]:
    """SQL columns mirroring the local engine's types, and the row count (one Spark job)."""
    from pyspark.sql import types as T

    F = _F()
    fields = df.schema.fields
    names = [f.name for f in fields]
    for name in names:
        validate_identifier(name, "column")
    if primary_key is not None and primary_key not in names:
        raise ValueError(f"primary key {primary_key!r} is not a frame column; frame columns: {names}")
    strings = [f.name for f in fields if isinstance(f.dataType, T.StringType)]
    row = df.agg(
        F.count(F.lit(1)).alias("_n"), *[F.max(F.length(F.col(name))).alias(name) for name in strings]
    ).first()
    count = int(row["_n"])
    columns: list[_ColumnSpec] = []
    for f in fields:
        t = f.dataType
        is_key = f.name == primary_key
        sql: sa.types.TypeEngine[Any]
        if isinstance(t, T.BooleanType):
            sql = sa.Boolean(create_constraint=False)
        elif isinstance(t, (T.ByteType, T.ShortType, T.IntegerType)):
            sql = sa.Integer()
        elif isinstance(t, T.LongType):
            sql = sa.BigInteger()
        elif isinstance(t, (T.FloatType, T.DoubleType)):
            sql = sa.Double()
        elif isinstance(t, T.DecimalType):
            sql = sa.Numeric(t.precision, t.scale)
        elif isinstance(t, (T.TimestampType, T.TimestampNTZType)):
            sql = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
        elif isinstance(t, T.DateType):
            sql = sa.Date()
        elif isinstance(t, T.StringType):
            longest = int(row[f.name] or 0)
            if is_key:
                if longest > _MAX_KEY_VARCHAR:
                    raise ValueError(
                        f"primary key {f.name!r} has values of {longest} characters; at most {_MAX_KEY_VARCHAR}"
                    )
                sql = sa.String(max(_VARCHAR, longest))
            else:
                sql = sa.String(_VARCHAR) if longest <= _VARCHAR else sa.Text(longest)
        else:
            raise TypeError(f"column {f.name!r} has unsupported type {t.simpleString()}; cast it first")
        columns.append((f.name, sql, is_key))
    return columns, count


def _create(
    engine: sa.Engine, table: str, columns: Sequence[_ColumnSpec], *, comment: str | None = None,
    index: tuple[str, Sequence[str]] | None = None,
) -> None:
    metadata = sa.MetaData()
    kwargs: dict[str, Any] = {"mysql_charset": "utf8mb4"}
    if comment is not None:
        kwargs["comment"] = comment
    # autoincrement=False: an AUTO_INCREMENT key would turn an id of 0 into the next value
    specs = [sa.Column(n, t, primary_key=key, nullable=not key, autoincrement=False) for n, t, key in columns]
    tbl = sa.Table(table, metadata, *specs, **kwargs)
    if index is not None:
        sa.Index(index[0], *(tbl.c[c] for c in index[1]))
    with engine.begin() as conn:
        metadata.create_all(conn, checkfirst=False)


def _drop(engine: sa.Engine, table: str) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {engine.dialect.identifier_preparer.quote(table)}")


def _count(engine: sa.Engine, table: str) -> int:
    with engine.connect() as conn:
        quoted = engine.dialect.identifier_preparer.quote(table)
        return int(conn.exec_driver_sql(f"SELECT COUNT(*) FROM {quoted}").scalar_one())


def _load(
    df: "DataFrame",
    engine: sa.Engine,
    staging: str,
    target: JdbcTarget,
    *,
    batch_size: int,
    num_partitions: int | None,
) -> None:
    """Spark partitions INSERT into the (existing) staging table; errors scrubbed of the password."""
    writer_target = target.with_url_options(rewriteBatchedStatements="true")
    extra: dict[str, Any] = {"batchsize": batch_size}
    if num_partitions:
        extra["numPartitions"] = num_partitions
    try:
        df.write.jdbc(
            writer_target.url, engine.dialect.identifier_preparer.quote(staging), mode="append",
            properties=writer_target.properties(**extra),
        )
    except Exception as exc:  # noqa: BLE001 - py4j wraps every JVM error
        raise WriteError(
            f"Spark JDBC write into {staging!r} failed ({target.safe_url}): {scrub(str(exc), target)[:2000]}"
        ) from None


# --------------------------------------------------------------------------- public API


def write_tables_atomic(
    engine: sa.Engine,
    tables: Sequence[tuple["DataFrame", str, str | None]],
    *,
    target: JdbcTarget | None = None,
    lock_name: str | None = None,
    lock_timeout_s: int = 600,
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_partitions: int | None = None,
) -> list[int]:
    """Replace several tables as one unit from ``(df, table, primary_key)`` items: each ``df`` is
    written by Spark JDBC into ``<table>__staging`` and its row count checked, then all staging
    tables are swapped in together (one ``RENAME TABLE``). On any failure no table changes.
    Returns the rows written per table.

    Each ``df`` is persisted for the duration, so the rows counted are the rows written.
    Concurrent writers of one table must share ``lock_name`` (they share the staging name).
    """
    from pyspark import StorageLevel

    if not is_mysql(engine):
        raise ValueError(f"Spark write-back needs MySQL/MariaDB; {masked_url(engine)} is {engine.dialect.name}")
    for _df, table, _key in tables:
        validate_identifier(table, "table")
    stagings = [_derived(table, STAGING_SUFFIX) for _df, table, _key in tables]
    target = target or jdbc_target(engine.url)
    started = time.perf_counter()
    lock = write_lock(engine, lock_name, lock_timeout_s) if lock_name else contextlib.nullcontext()
    cached = [df.persist(StorageLevel.MEMORY_AND_DISK) for df, _t, _k in tables]
    counts: list[int] = []
    try:
        plans = [_plan(df, key) for df, (_d, _t, key) in zip(cached, tables)]
        with lock:
            for staging in stagings:
                _drop(engine, staging)
            try:
                for df, (_d, table, _k), staging, (columns, expected) in zip(cached, tables, stagings, plans):
                    # the comment changes the table's identity token, so chunked readers notice the swap
                    _create(engine, staging, columns, comment=f"segmentation-pipeline write {uuid.uuid4().hex}")
                    _load(df, engine, staging, target, batch_size=batch_size, num_partitions=num_partitions)
                    loaded = _count(engine, staging)
                    if loaded != expected:
                        raise WriteError(
                            f"staging table {staging!r} holds {loaded} rows but the frame has {expected} "
                            f"({target.safe_url}); {table!r} left unchanged"
                        )
                    counts.append(expected)
                swap_in_staging(engine, [table for _d, table, _k in tables])
            except BaseException:
                for staging in stagings:
                    with contextlib.suppress(Exception):
                        _drop(engine, staging)
                raise
    finally:
        for df in cached:
            df.unpersist()
    for (_d, table, _k), rows in zip(tables, counts):
        log.info("replaced %r with %d rows via Spark JDBC in %.2fs (%s)", table, rows,
                 time.perf_counter() - started, target.safe_url)
    return counts


def write_table_atomic(
    df: "DataFrame",
    engine: sa.Engine,
    table: str,
    *,
    primary_key: str | None = None,
    target: JdbcTarget | None = None,
    lock_name: str | None = None,
    lock_timeout_s: int = 600,
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_partitions: int | None = None,
) -> int:
    """Replace ``table`` with the rows of ``df`` (:func:`write_tables_atomic` for one table)."""
    [rows] = write_tables_atomic(
        engine, [(df, table, primary_key)], target=target, lock_name=lock_name, lock_timeout_s=lock_timeout_s,
        batch_size=batch_size, num_partitions=num_partitions,
    )
    return rows


def publish_segments(
    engine: sa.Engine,
    output: OutputConfig,
    segments: "DataFrame",
    rejects: "DataFrame",
    *,
    run_key: str,
    lock_timeout_s: int,
    target: JdbcTarget | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_partitions: int | None = None,
) -> dict[str, int]:
    """Replace both tables (swapped together atomically) and record the run in the history, under
    the same lock as the local engine's ``publish_segments``. Returns rows written per table."""
    missing = [c for c in SEGMENT_COLUMNS if c not in segments.columns] + [
        c for c in REJECT_COLUMNS if c not in rejects.columns
    ]
    if missing:
        raise ValueError(
            f"segments/rejects frames lack columns {missing}; build them with segments_frame/rejects_frame"
        )
    target = target or jdbc_target(engine.url)
    options = {"target": target, "batch_size": batch_size, "num_partitions": num_partitions}
    with write_lock(engine, lock_name(output), lock_timeout_s):
        n_segments, n_rejects = write_tables_atomic(
            engine, [(segments, output.segments_table, "customer_id"), (rejects, output.rejects_table, None)], **options
        )
        written = {output.segments_table: n_segments, output.rejects_table: n_rejects}
        # the same history as the local engine, copied on the server from the swapped-in table:
        # the rows do not cross JDBC a second time
        written[output.history_table] = copy_history(
            engine, output.history_table, output.segments_table, plan_table(engine, output.segments_table),
            HISTORY_COLUMNS, run_key_column="dagster_run_id", run_key=run_key, id_column="customer_id",
            expected_rows=n_segments,
        )
    return written

