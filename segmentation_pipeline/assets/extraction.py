"""Stage 1: read the configured customer table (MySQL, or the embedded SQLite file)."""


import dagster as dg
import pandas as pd

from segmentation_pipeline.resources import DatabaseResource, SettingsResource, SparkResource
from segmentation_pipeline.storage.source import high_water_mark, read_customers


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

    engine = database.engine()
    frame = read_customers(engine, cfg, progress=progress)
    src = cfg.source
    mark = high_water_mark(
        engine, src.table, src.id_column, src.updated_at_column if src.updated_at_column in frame.columns else None
    )
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
