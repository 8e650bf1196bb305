"""Scoring without retraining: the registered champion assigns new or changed customers."""


import dagster as dg

from segmentation_pipeline.assets.metadata import jsonable
from segmentation_pipeline.assets.retries import WRITE_RETRY, retry_only_transient
from segmentation_pipeline.assets.sources import CUSTOMERS_SOURCE
from segmentation_pipeline.core.cleaning import clean_customers
from segmentation_pipeline.core.segment_tables import build_rejects_table, build_segments_table
from segmentation_pipeline.resources import DatabaseResource, MlflowResource, SettingsResource
from segmentation_pipeline.storage import mlflow_registry as registry
from segmentation_pipeline.storage.segment_store import publish_segments, upsert_segments
from segmentation_pipeline.storage.source import high_water_mark, read_customers


class ScoreConfig(dg.Config):
    """Which customers to score: all of them, or only those past a high-water mark."""

    after_id: str | None = None
    after_updated_at: str | None = None


@dg.asset(
    group_name="scoring",
    kinds={"mlflow", "sql"},
    pool="customer_db",
    # what it reads: the source table and the champion (named by the promotion gate)
    deps=[CUSTOMERS_SOURCE, "model_promotion"],
    retry_policy=WRITE_RETRY,
    description="Assign segments with models:/<name>@champion (no refit) and upsert them atomically.",
)
def scored_customers(
    context: dg.AssetExecutionContext,
    config: ScoreConfig,
    settings: SettingsResource,
    database: DatabaseResource,
    mlflow_tracking: MlflowResource,
) -> dg.MaterializeResult:
    with retry_only_transient():
        cfg = settings.load()
        engine = database.engine()
        where = None
        if config.after_updated_at and cfg.source.updated_at_column:
            where = {"column": cfg.source.updated_at_column, "value": config.after_updated_at}
        elif config.after_id is not None:
            where = {"column": cfg.source.id_column, "value": config.after_id}
        raw = read_customers(engine, cfg, where_after=where)
        incremental = where is not None
        if raw.empty:
            context.log.info(f"no customers to score past {where}")
            return dg.MaterializeResult(metadata={"n_input": 0, "n_segmented": 0, "n_rejected": 0})
        target = mlflow_tracking.target()
        assigner, version = registry.load_assigner(target.tracking_uri, cfg.model.name, cfg.model.alias)
        # The same validation as training: rows that cannot be segmented are recorded as rejected.
        # IQR fences belong to training: on a handful of new rows they would mean nothing.
        no_fences = cfg.cleaning.model_copy(
            update={"outliers": cfg.cleaning.outliers.model_copy(update={"enabled": False})}
        )
        result = clean_customers(
            raw, cfg.model_copy(update={"cleaning": no_fences}), table=cfg.source.table, allow_all_rejected=incremental
        )
        segment_ids = assigner.assign(result.clean)["segment_id"].to_numpy() if len(result.clean) else []
        run_ids = {"mlflow_run_id": "", "dagster_run_id": context.run.run_id}
        segments = build_segments_table(
            result.clean, cfg.source.id_column, segment_ids, assigner.segment_names,
            model_name=cfg.model.name, model_version=version, **run_ids,
        )
        rejects = build_rejects_table(result.rejects, **run_ids)
        write = upsert_segments if incremental else publish_segments
        written = write(
            engine, cfg.output, segments, rejects, run_key=context.run.run_id,
            lock_timeout_s=cfg.database.lock_timeout_s,
        )
        src = cfg.source
        mark = high_water_mark(
            engine, src.table, src.id_column, src.updated_at_column if src.updated_at_column in raw.columns else None,
            where_after=where,
        )
        return dg.MaterializeResult(
            metadata={
                "n_input": dg.MetadataValue.int(len(raw)),
                "n_segmented": dg.MetadataValue.int(len(segments)),
                "n_rejected": dg.MetadataValue.int(len(rejects)),
                "mode": dg.MetadataValue.text("incremental" if incremental else "full"),
                "model": dg.MetadataValue.text(f"{cfg.model.name} v{version} ({cfg.model.alias})"),
                "max_id": dg.MetadataValue.text(str(mark["max_id"])),
                "tables": dg.MetadataValue.json(jsonable(written)),
            }
        )
