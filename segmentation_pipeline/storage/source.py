"""The configured customer source: which columns the pipeline reads, the read, and its high-water mark."""

from __future__ import annotations

import decimal
from typing import Any

import pandas as pd
import sqlalchemy as sa

from segmentation_pipeline.config import PipelineConfig, validate_identifier
from segmentation_pipeline.core.cleaning_rules import MONETARY_COLUMN
from segmentation_pipeline.storage.connection import ProgressFn, check_columns, reflect_columns, table_columns
from segmentation_pipeline.storage.reads import read_table, rows_after

__all__ = ["customer_columns", "high_water_mark", "read_customers", "source_columns"]


def source_columns(available: list[str], id_column: str, features: list[str], optional: list[str]) -> list[str]:
    """Required columns first; optional ones (categoricals, updated_at) only when the table has them."""
    wanted = [id_column, *features]
    return wanted + [c for c in optional if c in available and c not in wanted]


def customer_columns(engine: sa.Engine, cfg: PipelineConfig) -> list[str]:
    """The source columns every engine reads: id, features, and the optional ones the table has."""
    src = cfg.source
    optional = [*cfg.cleaning.categorical, *([src.updated_at_column] if src.updated_at_column else [])]
    if src.kind == "transactions":
        optional.append(MONETARY_COLUMN)  # net <= 0 is a reject reason even when not a feature
    return source_columns(table_columns(engine, src.table), src.id_column, cfg.features, optional)


def read_customers(
    engine: sa.Engine,
    cfg: PipelineConfig,
    *,
    where_after: dict[str, Any] | None = None,
    progress: ProgressFn | None = None,
) -> pd.DataFrame:
    """The source columns the pipeline needs, one read; shared by training, scoring and drift."""
    return read_table(
        engine,
        cfg.source.table,
        customer_columns(engine, cfg),
        id_column=cfg.source.id_column,
        chunk_size=cfg.database.chunk_size,
        progress=progress,
        where_after=where_after,
        categorical=list(cfg.cleaning.categorical),
    )


def high_water_mark(
    engine: sa.Engine,
    table: str,
    id_column: str,
    updated_at_column: str | None = None,
    *,
    where_after: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Max id, max updated_at and row count in one aggregate: the cursor for incremental scoring.

    ``where_after`` (as for :func:`read_customers`) restricts it to the rows such a read returns.
    Empty: ``max_id``/``max_updated_at`` are None.
    """
    wanted = [id_column, *([updated_at_column] if updated_at_column else [])]
    for name in wanted:
        validate_identifier(name, "column")
    reflected = reflect_columns(engine, table)
    types = {c["name"]: c["type"] for c in reflected}
    after = rows_after(where_after, types)
    used = list(dict.fromkeys([*wanted, *([after.column] if after else [])]))
    check_columns(engine, table, list(types), used)
    tbl = sa.table(table, *(sa.column(c, types[c]) for c in used))
    aggregates: list[Any] = [
        sa.type_coerce(sa.func.max(tbl.c[id_column]), types[id_column]).label("max_id"),
        sa.func.count().label("row_count"),
    ]
    if updated_at_column:
        # type_coerce keeps SQLite's DATETIME text parsed into datetime objects
        aggregates.append(
            sa.type_coerce(sa.func.max(tbl.c[updated_at_column]), types[updated_at_column]).label("max_updated_at")
        )
    stmt = sa.select(*aggregates).select_from(tbl)
    if after is not None:
        stmt = stmt.where(tbl.c[after.column] > sa.literal(after.value))
    with engine.connect() as conn:
        row = conn.execute(stmt).one()._mapping
    value = row["max_id"]
    if isinstance(value, decimal.Decimal):
        value = float(value)
    return {
        "max_id": value,
        "max_updated_at": row["max_updated_at"] if updated_at_column else None,
        "row_count": int(row["row_count"]),
    }
