"""Stage 6: assign every clean customer with the champion and write segments back atomically."""

import contextlib

import dagster as dg
import mlflow

from segmentation_pipeline.assets.metadata import SEGMENT_TABLE_COLUMNS, plain_metadata, table, table_facts
from segmentation_pipeline.assets.retries import WRITE_RETRY, retry_only_transient
from segmentation_pipeline.core.segment_model import PromotionOutcome, TrainedSegmentation, published_choice
from segmentation_pipeline.engines.base import Cleaned, RunIds
from segmentation_pipeline.resources import DatabaseResource, EngineResource, MlflowResource, SettingsResource
from segmentation_pipeline.storage import mlflow_registry as registry
from segmentation_pipeline.storage.publication import PublicationStep, publication_step


@dg.asset(
    group_name="segments",
    kinds={"sql"},
    pool="customer_db",
    retry_policy=WRITE_RETRY,
    description="customer_segments and customer_rejects tables (swapped atomically) plus the segment_assignments history.",
)
def customer_segments(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    database: DatabaseResource,
    mlflow_tracking: MlflowResource,
    compute: EngineResource,
    clean_customers,
    rejected_customers,
    segmentation_model: TrainedSegmentation,
    model_promotion: PromotionOutcome,
) -> dg.MaterializeResult:
    with retry_only_transient():
        cfg = settings.load()
        trained = segmentation_model
        assigner, version, eval_ids = published_choice(trained, model_promotion.champion_version)

        def progress(done: int, total: int) -> None:
            context.log.info(f"write-back: {done:,}/{total:,} rows staged")

        step: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
        if model_promotion.promoted:  # the alias moves with the swap (undone if the swap fails), never before
            uri, name, alias = mlflow_tracking.target().tracking_uri, cfg.model.name, cfg.model.alias
            previous = trained.previous_champion
            step = publication_step(PublicationStep(
                apply=lambda: registry.set_alias(uri, name, alias, version),
                undo=lambda: registry.move_alias(uri, name, alias, None if previous is None else str(previous)),
            ))
        with step:
            published = compute.get().publish(
                database.engine(), cfg, Cleaned(clean_customers, rejected_customers, {}), assigner, version, eval_ids,
                RunIds(mlflow_run_id=trained.mlflow_run_id, dagster_run_id=context.run.run_id), progress=progress,
            )
        with registry.training_run(mlflow_tracking.target(), context.run.run_id):
            mlflow.log_metrics({"n_segmented": published.n_segmented, "n_rejected_written": published.n_rejected})
            mlflow.set_tag("segments_model_version", version)
        return dg.MaterializeResult(
            metadata=table_facts(published.n_segmented, SEGMENT_TABLE_COLUMNS) | plain_metadata(
                n_input=published.n_segmented + published.n_rejected,
                n_segmented=published.n_segmented,
                n_rejected=published.n_rejected,
                n_outliers_segmented=published.n_outliers,
                model=f"{cfg.model.name} v{version} ({cfg.model.alias})",
                tables=published.written,
                segment_shares=table(published.shares),
            )
        )
