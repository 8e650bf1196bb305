"""The tables the pipeline reads but does not produce, as external assets in the lineage graph."""

import dagster as dg

from segmentation_pipeline.config import PipelineConfig

#: The customer table named by ``source.table``: written by the business (or ``demo-data``).
CUSTOMERS_SOURCE = dg.AssetKey("source_customers")


def customers_source_spec(cfg: PipelineConfig) -> dg.AssetSpec:
    """The source table as an external asset; the key is fixed so assets can name it at import."""
    return dg.AssetSpec(
        CUSTOMERS_SOURCE,
        group_name="sources",
        kinds={"sql"},
        description=f"Customer table {cfg.source.table!r} at {cfg.database.safe_url()} (not written by this pipeline).",
        metadata={"table": cfg.source.table, "database": cfg.database.safe_url()},
    )
