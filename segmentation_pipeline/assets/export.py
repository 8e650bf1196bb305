"""Stage 7 (optional): the published segments as a file for marketing tools, after each write-back."""

from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from segmentation_pipeline.assets.metadata import SEGMENT_TABLE_COLUMNS, plain_metadata, table_facts
from segmentation_pipeline.resources import DatabaseResource, SettingsResource
from segmentation_pipeline.storage.export import EXPORT_COLUMNS, export_segments


@dg.asset(
    group_name="segments",
    kinds={"csv", "parquet"},
    deps=["customer_segments"],
    output_required=False,
    description="customer_id, segment_id, segment_name, is_outlier (plus tier) of the published segments, "
    "streamed to the file output.export names; not materialized when output.export is not set.",
)
def segment_export(
    context: dg.AssetExecutionContext, settings: SettingsResource, database: DatabaseResource
) -> Iterator[dg.Output[None]]:
    cfg = settings.load()
    export = cfg.output.export
    if export is None:
        context.log.info("output.export is not configured: no export file")
        return
    path = Path(export.path)
    path = path if path.is_absolute() else cfg.data_path / path
    n = export_segments(database.engine(), cfg.output.segments_table, path, fmt=export.format,
                        segments=export.segments, tiers=cfg.naming.tiers)
    context.log.info(f"exported {n:,} customers to {path}")
    columns = {c: SEGMENT_TABLE_COLUMNS[c] for c in EXPORT_COLUMNS} | ({"tier": "text"} if cfg.naming.tiers else {})
    yield dg.Output(None, metadata=table_facts(n, columns) | plain_metadata(
        path=dg.MetadataValue.path(str(path)), format=export.format, segments=export.segments or "all",
    ))
