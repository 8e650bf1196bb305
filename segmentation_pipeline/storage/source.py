"""Reading the configured customer source: the columns the pipeline needs, and its high-water mark."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import sqlalchemy as sa

from segmentation_pipeline.config import PipelineConfig
from segmentation_pipeline.storage.database import read_table, table_columns

__all__ = ["frame_high_water_mark", "optional_source_columns", "read_customers", "source_columns"]


def optional_source_columns(cfg: PipelineConfig) -> list[str]:
    """Columns read when the table has them: categoricals and the updated-at column."""
    updated_at = [cfg.source.updated_at_column] if cfg.source.updated_at_column else []
    return [*cfg.cleaning.categorical, *updated_at]


def source_columns(available: list[str], id_column: str, features: list[str], optional: list[str]) -> list[str]:
    """Required columns first; optional ones (categoricals, updated_at) only when the table has them."""
    wanted = [id_column, *features]
    return wanted + [c for c in optional if c in available and c not in wanted]


def read_customers(
    engine: sa.Engine,
    cfg: PipelineConfig,
    *,
    where_after: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """The source columns the pipeline needs, one read; shared by training, scoring and drift."""
    available = table_columns(engine, cfg.source.table)
    columns = source_columns(available, cfg.source.id_column, cfg.features, optional_source_columns(cfg))
    return read_table(
        engine,
        cfg.source.table,
        columns,
        id_column=cfg.source.id_column,
        chunk_size=cfg.database.chunk_size,
        progress=progress,
        where_after=where_after,
        categorical=list(cfg.cleaning.categorical),
    )


def frame_high_water_mark(frame: pd.DataFrame, id_column: str, updated_at: str | None) -> dict[str, str | None]:
    """Max id and max updated_at of rows already read (no second query)."""
    mark: dict[str, str | None] = {"max_id": None, "max_updated_at": None}
    if len(frame):
        mark["max_id"] = str(frame[id_column].max())
        if updated_at and updated_at in frame.columns:
            mark["max_updated_at"] = str(frame[updated_at].max())
    return mark
