"""The tables the pipeline reads but does not produce, as external assets in the lineage graph."""

import dagster as dg

from segmentation_pipeline.config import PipelineConfig

#: The customer table named by ``source.table``: written by the business (or ``demo-data``).
CUSTOMERS_SOURCE = dg.AssetKey("source_customers")
#: The orders table of ``source.kind: transactions``: written by the business (or ``demo-data --transactions``).
ORDERS_SOURCE = dg.AssetKey("source_orders")


def customers_source_spec(cfg: PipelineConfig) -> dg.AssetSpec:
    """The source table as an external asset; the key is fixed so assets can name it at import."""
    return dg.AssetSpec(
        CUSTOMERS_SOURCE,
        group_name="sources",
        kinds={"sql"},
        description=f"Customer table {cfg.source.table!r} at {cfg.database.safe_url()} (not written by this pipeline).",
        metadata={"table": cfg.source.table, "database": cfg.database.safe_url()},
    )


def orders_source_spec(cfg: PipelineConfig) -> dg.AssetSpec:
    """The orders table as an external asset (transactions mode)."""
    assert cfg.transactions is not None, "orders_source_spec needs source.kind: transactions"
    table = cfg.transactions.table
    return dg.AssetSpec(
        ORDERS_SOURCE,
        group_name="sources",
        kinds={"sql"},
        description=f"Orders table {table!r} at {cfg.database.safe_url()} (not written by this pipeline).",
        metadata={"table": table, "database": cfg.database.safe_url()},
    )


def source_specs(cfg: PipelineConfig) -> list[dg.AssetSpec]:
    """The external tables of this config: the customer table, or the orders table."""
    return [orders_source_spec(cfg)] if cfg.transactions is not None else [customers_source_spec(cfg)]
