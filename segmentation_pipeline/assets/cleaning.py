"""Stage 2: pandera validation, rejects with reasons, and outlier flags (the shared guard)."""

import dagster as dg
import mlflow

from segmentation_pipeline.assets.metadata import frame_columns, jsonable, plain_metadata, table, table_facts
from segmentation_pipeline.resources import EngineResource, MlflowResource, SettingsResource
from segmentation_pipeline.storage import mlflow_registry as registry


@dg.multi_asset(
    outs={
        "clean_customers": dg.AssetOut(
            group_name="cleaning",
            kinds={"pandera"},
            description="Valid customers (features as float64) with is_outlier / outlier_reason flags.",
        ),
        "rejected_customers": dg.AssetOut(
            group_name="cleaning",
            description="One row per input row that cannot be segmented, with its reason.",
        ),
    },
    name="clean_and_reject",
)
def clean_and_reject(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    mlflow_tracking: MlflowResource,
    compute: EngineResource,
    raw_customers,
):
    cfg = settings.load()
    result = compute.get().clean(raw_customers, cfg)
    report = result.report
    outliers = report.get("outliers", {})
    if outliers.get("warning"):
        context.log.warning(outliers["warning"])
    transform = report.get("transform", {})
    log1p = list(transform.get("log1p", []))
    context.log.info(f"log1p ({transform.get('log1p_mode')}): {log1p or 'no column'}")
    with registry.training_run(mlflow_tracking.target(), context.run.run_id):
        registry.log_params(cfg.params())
        # the run's resolved choice next to the configured value (transform.log1p may say "auto")
        registry.log_params({"transform.log1p_columns": ",".join(log1p)})
        mlflow.set_tags({"log1p_mode": str(transform.get("log1p_mode")), "log1p_columns": ",".join(log1p)})
        mlflow.log_metrics(
            {
                "n_input": report["n_input"],
                "n_clean": report["n_clean"],
                "n_outliers": report["n_outliers"],
                "n_rejected": report["n_rejected"],
                "outlier_share": float(outliers.get("final_share", 0.0)),
            }
        )
        mlflow.set_tag("outlier_method", str(outliers.get("method_used")))
        if outliers.get("warning"):
            mlflow.set_tag("outlier_warning", outliers["warning"])
        registry.log_json(jsonable(report), "cleaning/report.json")
    yield dg.Output(
        result.clean,
        output_name="clean_customers",
        metadata=table_facts(len(result.clean), frame_columns(result.clean)) | plain_metadata(
            n_input=report["n_input"],
            n_outliers=report["n_outliers"],
            outlier_method=str(outliers.get("method_used")),
            outlier_guard=outliers.get("warning") or "within cap",
            outliers_by_feature=outliers.get("outliers_by_feature", {}),
            outliers_by_cluster=outliers.get("outliers_by_cluster", {}),
            log1p=log1p,
            cleaning_report=report,
        ),
    )
    yield dg.Output(
        result.rejects,
        output_name="rejected_customers",
        metadata=table_facts(len(result.rejects), frame_columns(result.rejects)) | plain_metadata(
            by_reason=report.get("rejected_by_reason", {}),
            sample=table(result.rejects.head(20), max_rows=20),
        ),
    )
