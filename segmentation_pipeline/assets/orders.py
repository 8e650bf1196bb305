"""Stage 0 of ``source.kind: transactions``: per-customer features aggregated from the orders table.

The aggregation runs on the database server (``storage.transactions``) and replaces the features
table atomically; the extraction then reads that table like any customer table.
"""

import dagster as dg

from segmentation_pipeline.assets.metadata import frame_columns, plain_metadata, table, table_facts
from segmentation_pipeline.assets.sources import ORDERS_SOURCE
from segmentation_pipeline.resources import DatabaseResource, SettingsResource
from segmentation_pipeline.storage.transactions import build_order_features

#: The asset writing the features table (``customer_features`` is the scaled feature matrix).
ORDER_FEATURES = dg.AssetKey("order_features")


@dg.asset(
    key=ORDER_FEATURES,
    group_name="extraction",
    kinds={"sql"},
    pool="customer_db",
    deps=[ORDERS_SOURCE],
    description="Per-customer RFM and order features, aggregated on the database server from the orders table.",
)
def order_features(
    context: dg.AssetExecutionContext, settings: SettingsResource, database: DatabaseResource
) -> dg.MaterializeResult:
    cfg = settings.load()
    orders = cfg.transactions
    if orders is None:
        raise dg.Failure("order_features needs source.kind: transactions")
    built = build_order_features(database.engine(), orders, lock_timeout_s=cfg.database.lock_timeout_s)
    excluded = {reason: n for reason, n in built.excluded_lines.items()}
    context.log.info(
        f"{len(built.frame):,} customers from {built.n_lines:,} order lines of {orders.table!r} "
        f"(as_of {built.as_of:%Y-%m-%d}); excluded lines: {excluded}"
    )
    return dg.MaterializeResult(
        metadata=table_facts(len(built.frame), frame_columns(built.frame)) | plain_metadata(
            table=orders.features_table,
            orders_table=orders.table,
            as_of=f"{built.as_of:%Y-%m-%d}",
            n_order_lines=built.n_lines,
            n_excluded_lines=sum(excluded.values()),
            excluded_lines=excluded,
            n_non_positive_monetary=built.n_non_positive,
            aggregate_seconds=dg.MetadataValue.float(round(built.query_seconds, 3)),
            rfm_segments=table(built.frame["rfm_segment"].value_counts(dropna=False).rename_axis("rfm_segment")
                               .reset_index()),
        )
    )
