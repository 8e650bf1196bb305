"""Stage 1: read the configured customer table (MySQL, or the embedded SQLite file)."""

from typing import Any

import dagster as dg

from segmentation_pipeline.assets.metadata import frame_columns, plain_metadata, table_facts
from segmentation_pipeline.assets.sources import CUSTOMERS_SOURCE
from segmentation_pipeline.resources import DatabaseResource, EngineResource, SettingsResource


@dg.asset(
    group_name="extraction",
    kinds={"sql"},
    pool="customer_db",
    deps=[CUSTOMERS_SOURCE],
    description="The configured customer table, read in keyset-paginated chunks (or planned as a partitioned read).",
)
def raw_customers(
    context: dg.AssetExecutionContext, settings: SettingsResource, database: DatabaseResource, compute: EngineResource
) -> dg.Output[Any]:
    cfg = settings.load()

    def progress(done: int, total: int) -> None:
        context.log.info(f"extracted {done:,} / ~{total:,} rows from {cfg.source.table}")

    extracted = compute.get().extract(cfg, database.engine(), progress=progress)
    return dg.Output(
        extracted.table,
        metadata=table_facts(extracted.row_count, frame_columns(extracted.table) or dict.fromkeys(extracted.columns, "")) | plain_metadata(
            source=extracted.source, columns=extracted.columns,
            max_id=str(extracted.max_id), max_updated_at=str(extracted.max_updated_at), **extracted.details,
        ),
    )
