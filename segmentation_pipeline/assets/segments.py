"""Stage 6: assign every clean customer with the champion and write segments back atomically."""


import dagster as dg
import mlflow
import pandas as pd

from segmentation_pipeline.assets._metadata import table
from segmentation_pipeline.assets.training import PromotionOutcome, TrainedSegmentation
from segmentation_pipeline.core.naming import segment_sums
from segmentation_pipeline.core.segment_tables import build_rejects_table, build_segments_table
from segmentation_pipeline.resources import DatabaseResource, MlflowResource, SettingsResource
from segmentation_pipeline.storage import mlflow_registry as registry
from segmentation_pipeline.storage.segment_store import publish_segments
from segmentation_pipeline.storage.tables import read_columns


@dg.asset(
    group_name="segments",
    kinds={"sql"},
    pool="customer_db",
    retry_policy=dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL),
    description="customer_segments and customer_rejects tables (swapped atomically) plus the segment_assignments history.",
)
def customer_segments(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    database: DatabaseResource,
    mlflow_tracking: MlflowResource,
    clean_customers: pd.DataFrame,
    rejected_customers: pd.DataFrame,
    segmentation_model: TrainedSegmentation,
    model_promotion: PromotionOutcome,
) -> dg.MaterializeResult:
    cfg = settings.load()
    target = mlflow_tracking.target()
    if cfg.engine == "spark":  # executors assign, Spark JDBC writes, same swap (assets/spark_stages.py)
        from segmentation_pipeline.assets import spark_stages

        return spark_stages.customer_segments(
            context, cfg, database.engine(), target, clean_customers, rejected_customers, segmentation_model,
            model_promotion,
        )
    trained = segmentation_model
    if model_promotion.champion_version == trained.model_version or trained.champion is None:
        assigner, version, segment_ids = trained.assigner, trained.model_version, trained.segment_ids
    else:  # the challenger lost: customers keep following the champion it was compared with
        assigner, version = trained.champion, str(trained.previous_champion)
        segment_ids = trained.champion_segment_ids
    run_ids = {"mlflow_run_id": trained.mlflow_run_id, "dagster_run_id": context.run.run_id}
    keys = [c for c in (cfg.source.id_column, "is_outlier", "outlier_reason") if c in clean_customers.columns]
    clean = read_columns(clean_customers, keys)  # the write-back needs no feature values
    segments = build_segments_table(
        clean,
        cfg.source.id_column,
        segment_ids,
        assigner.segment_names,
        model_name=cfg.model.name,
        model_version=version,
        **run_ids,
    )
    del clean
    rejects = build_rejects_table(read_columns(rejected_customers), **run_ids)
    n_input = len(clean_customers) + len(rejected_customers)
    if len(segments) + len(rejects) != n_input:
        raise RuntimeError(
            f"row accounting broken: {len(segments)} segmented + {len(rejects)} rejected != {n_input} input rows"
        )

    def progress(done: int, total: int) -> None:
        context.log.info(f"write-back: {done:,}/{total:,} rows staged")

    written = publish_segments(
        database.engine(), cfg.output, segments, rejects, run_key=context.run.run_id,
        lock_timeout_s=cfg.database.lock_timeout_s, progress=progress,
    )
    ids, counts, _ = segment_sums(segments, segments["segment_id"].to_numpy(), [])  # no groupby copy of 5M rows
    shares = pd.DataFrame({"segment_id": ids, "segment_name": [assigner.segment_names.get(int(i), "") for i in ids],
                           "count": counts, "share_pct": 100 * counts / max(len(segments), 1)})
    with registry.training_run(target, context.run.run_id):
        mlflow.log_metrics({"n_segmented": len(segments), "n_rejected_written": len(rejects)})
        mlflow.set_tag("segments_model_version", version)
    return dg.MaterializeResult(
        metadata={
            "row_count": dg.MetadataValue.int(len(segments)),
            "n_input": dg.MetadataValue.int(n_input),
            "n_segmented": dg.MetadataValue.int(len(segments)),
            "n_rejected": dg.MetadataValue.int(len(rejects)),
            "n_outliers_segmented": dg.MetadataValue.int(int(segments["is_outlier"].sum())),
            "model": dg.MetadataValue.text(f"{cfg.model.name} v{version} ({cfg.model.alias})"),
            "tables": dg.MetadataValue.json(written),
            "segment_shares": table(shares),
        }
    )
