"""Stage 1: read the configured customer table (MySQL, or the embedded SQLite file)."""


from collections.abc import Callable
from typing import Any

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from segmentation_pipeline.config import PipelineConfig
from segmentation_pipeline.resources import DatabaseResource, SettingsResource, SparkResource
from segmentation_pipeline.storage.database import read_table, table_columns


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
    optional = [*cfg.cleaning.categorical, *([cfg.source.updated_at_column] if cfg.source.updated_at_column else [])]
    columns = source_columns(table_columns(engine, cfg.source.table), cfg.source.id_column, cfg.features, optional)
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


def high_water_mark(frame: pd.DataFrame, id_column: str, updated_at: str | None) -> dict[str, str | None]:
    mark: dict[str, str | None] = {"max_id": None, "max_updated_at": None}
    if len(frame):
        mark["max_id"] = str(frame[id_column].max())
        if updated_at and updated_at in frame.columns:
            mark["max_updated_at"] = str(frame[updated_at].max())
    return mark


@dg.asset(
    group_name="extraction",
    kinds={"sql", "pandas"},
    pool="customer_db",
    description="The configured customer table, read in keyset-paginated chunks.",
)
def raw_customers(
    context: dg.AssetExecutionContext, settings: SettingsResource, database: DatabaseResource, spark: SparkResource
) -> dg.Output[pd.DataFrame]:
    cfg = settings.load()
    if cfg.engine == "spark":  # same asset, Spark's partitioned JDBC read (assets/spark_stages.py)
        from segmentation_pipeline.assets import spark_stages

        return spark_stages.raw_customers(cfg, database.engine(), spark.session())

    def progress(done: int, total: int) -> None:
        context.log.info(f"extracted {done:,} / ~{total:,} rows from {cfg.source.table}")

    frame = read_customers(database.engine(), cfg, progress=progress)
    mark = high_water_mark(frame, cfg.source.id_column, cfg.source.updated_at_column)
    return dg.Output(
        frame,
        metadata={
            "row_count": dg.MetadataValue.int(len(frame)),
            "source": dg.MetadataValue.text(f"{cfg.database.safe_url()} / {cfg.source.table}"),
            "columns": dg.MetadataValue.json(list(frame.columns)),
            "max_id": dg.MetadataValue.text(str(mark["max_id"])),
            "max_updated_at": dg.MetadataValue.text(str(mark["max_updated_at"])),
        },
    )
