"""Spark's part of the write-back: the segment/reject frames, and a JDBC :class:`JdbcLoader`.

Rows never travel through the driver: each Spark partition inserts into ``<table>__staging`` over
its own JDBC connection (batched; ``rewriteBatchedStatements`` makes the MariaDB driver send
multi-row INSERTs) and the staging row count is checked with one ``COUNT(*)``. Everything else
-- the database lock, the staging table (the local engine's column types and per-write comment),
the verification, the ``segment_assignments`` history (copied on the server from the swapped-in
table: the rows cross JDBC once) and the atomic ``RENAME TABLE`` -- is the storage layer's
:func:`~segmentation_pipeline.storage.segment_store.publish_tables`, shared with the local engine.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import sqlalchemy as sa

from segmentation_pipeline.config import OutputConfig, validate_identifier
from segmentation_pipeline.core.segment_tables import REJECT_COLUMNS, SEGMENT_COLUMNS
from segmentation_pipeline.engines.spark.extract import JdbcTarget, jdbc_target, scrub
from segmentation_pipeline.storage.connection import is_mysql, masked_url, quote_identifier
from segmentation_pipeline.storage.errors import WriteError
from segmentation_pipeline.storage.history import HistoryMirror
from segmentation_pipeline.storage.schema import FramePlan, sql_type
from segmentation_pipeline.storage.segment_store import publish_tables

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "JdbcLoader",
    "jdbc_loader",
    "publish_segments",
    "rejects_frame",
    "segments_frame",
]

DEFAULT_BATCH_SIZE = 10_000


def _F():  # noqa: N802
    from pyspark.sql import functions

    return functions


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


# --------------------------------------------------------------------------- loader


def _arrow_type(spark_type: Any) -> pa.DataType | None:
    """The Arrow type the local engine would see for a Spark column (None: not supported)."""
    from pyspark.sql import types as T

    if isinstance(spark_type, T.BooleanType):
        return pa.bool_()
    if isinstance(spark_type, (T.ByteType, T.ShortType, T.IntegerType)):
        return pa.int32()
    if isinstance(spark_type, T.LongType):
        return pa.int64()
    if isinstance(spark_type, (T.FloatType, T.DoubleType)):
        return pa.float64()
    if isinstance(spark_type, (T.TimestampType, T.TimestampNTZType)):
        return pa.timestamp("us")
    if isinstance(spark_type, T.DateType):
        return pa.date32()
    if isinstance(spark_type, T.StringType):
        return pa.string()
    return None


def _plan(df: "DataFrame", primary_key: str | None) -> tuple[FramePlan, int]:
    """The local engine's column plan for ``df`` (same SQL types), and its row count (one Spark job)."""
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
    arrow_types: dict[str, pa.DataType] = {}
    sql_types: dict[str, sa.types.TypeEngine[Any]] = {}
    for f in fields:
        t = f.dataType
        if isinstance(t, T.DecimalType):  # kept exact: DECIMAL(p, s), as Spark holds it
            arrow_types[f.name], sql_types[f.name] = pa.decimal128(t.precision, t.scale), sa.Numeric(t.precision, t.scale)
            continue
        arrow = _arrow_type(t)
        if arrow is None:
            raise TypeError(f"column {f.name!r} has unsupported type {t.simpleString()}; cast it first")
        longest = int(row[f.name] or 0) if f.name in strings else 0
        arrow_types[f.name] = arrow
        sql_types[f.name] = sql_type(f.name, arrow, longest, f.name == primary_key)
    # a keyed table is the segments table: its ids compare byte for byte, as the cleaning compares them
    return FramePlan(names, arrow_types, sql_types, primary_key, binary_key=primary_key is not None), int(row["_n"])


@dataclass(frozen=True)
class JdbcLoader:
    """A Spark DataFrame as a :class:`~segmentation_pipeline.storage.swap.TableLoader`: partitions
    INSERT over JDBC, then one ``COUNT(*)`` of the staging table is the verified row count."""

    df: "DataFrame"
    plan: FramePlan
    rows: int
    target: JdbcTarget
    batch_size: int = DEFAULT_BATCH_SIZE
    num_partitions: int | None = None

    def feeds_mirror(self, engine: sa.Engine) -> bool:
        return False  # the history is copied on the server after the swap

    def load(self, engine: sa.Engine, staging: str, mirror: HistoryMirror | None) -> int:
        writer_target = self.target.with_url_options(rewriteBatchedStatements="true")
        extra: dict[str, Any] = {"batchsize": self.batch_size}
        if self.num_partitions:
            extra["numPartitions"] = self.num_partitions
        quoted = quote_identifier(engine, staging, "table")
        try:
            self.df.write.jdbc(writer_target.url, quoted, mode="append", properties=writer_target.properties(**extra))
        except Exception as exc:  # noqa: BLE001 - py4j wraps every JVM error
            raise WriteError(
                f"Spark JDBC write into {staging!r} failed ({self.target.safe_url}): "
                f"{scrub(str(exc), self.target)[:2000]}"
            ) from None
        with engine.connect() as conn:
            return int(conn.exec_driver_sql(f"SELECT COUNT(*) FROM {quoted}").scalar_one())


def jdbc_loader(
    df: "DataFrame",
    primary_key: str | None,
    target: JdbcTarget,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_partitions: int | None = None,
) -> JdbcLoader:
    """Plan ``df`` (one Spark job: row count and longest strings) into a loader; persist it first,
    so the rows counted are the rows written."""
    plan, rows = _plan(df, primary_key)
    return JdbcLoader(df, plan, rows, target, batch_size, num_partitions)


@contextlib.contextmanager
def _persisted(*frames: "DataFrame") -> Iterator[list["DataFrame"]]:
    from pyspark import StorageLevel

    cached = [df.persist(StorageLevel.MEMORY_AND_DISK) for df in frames]
    try:
        yield cached
    finally:
        for df in cached:
            df.unpersist()


# --------------------------------------------------------------------------- public API


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
    if not is_mysql(engine):
        raise ValueError(f"Spark write-back needs MySQL/MariaDB; {masked_url(engine)} is {engine.dialect.name}")
    target = target or jdbc_target(engine.url)
    options = {"batch_size": batch_size, "num_partitions": num_partitions}
    with _persisted(segments, rejects) as (cached_segments, cached_rejects):
        n_segments, n_rejects = publish_tables(
            engine, output,
            jdbc_loader(cached_segments, "customer_id", target, **options),
            jdbc_loader(cached_rejects, None, target, **options),
            run_key=run_key, lock_timeout_s=lock_timeout_s,
        )
    # the history holds exactly the published segments (verified by the copy)
    return {output.segments_table: n_segments, output.rejects_table: n_rejects, output.history_table: n_segments}
