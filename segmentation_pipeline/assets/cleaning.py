"""Stage 2: pandera validation, rejects with reasons, and outlier flags (issue 8 guard)."""


import dagster as dg
import mlflow
import pandas as pd

from segmentation_pipeline.assets._metadata import jsonable, table
from segmentation_pipeline.core.cleaning import clean_customers, clean_owned_customers
from segmentation_pipeline.resources import MlflowResource, SettingsResource
from segmentation_pipeline.storage import mlflow_registry as registry
from segmentation_pipeline.storage.tables import owns_rows, read_columns


@dg.multi_asset(
    outs={
        "clean_customers": dg.AssetOut(
            group_name="cleaning",
            kinds={"pandas", "pandera"},
            description="Valid customers (features as float64) with is_outlier / outlier_reason flags.",
        ),
        "rejected_customers": dg.AssetOut(
            group_name="cleaning",
            kinds={"pandas"},
            description="One row per input row that cannot be segmented, with its reason.",
        ),
    },
    name="clean_and_reject",
)
def clean_and_reject(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    mlflow_tracking: MlflowResource,
    raw_customers: pd.DataFrame,
):
    cfg = settings.load()
    if cfg.engine == "spark":  # Spark SQL cleaning; clean/rejects are counted SparkFrames (spark_stages.py)
        from segmentation_pipeline.assets.spark_stages import clean_customers as clean_in_spark

        result = clean_in_spark(raw_customers, cfg, table=cfg.source.table)
    else:  # a private copy read from the hand-off file may be consumed column by column as it is cleaned
        clean = clean_owned_customers if owns_rows(raw_customers) else clean_customers
        result = clean(read_columns(raw_customers), cfg, table=cfg.source.table)
    report = result.report
    outliers = report.get("outliers", {})
    if outliers.get("warning"):
        context.log.warning(outliers["warning"])
    with registry.training_run(mlflow_tracking.target(), context.run.run_id):
        registry.log_params(cfg.params())
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
    by_reason = report.get("rejected_by_reason", {})
    yield dg.Output(
        result.clean,
        output_name="clean_customers",
        metadata={
            "row_count": dg.MetadataValue.int(len(result.clean)),
            "n_input": dg.MetadataValue.int(report["n_input"]),
            "n_outliers": dg.MetadataValue.int(report["n_outliers"]),
            "outlier_method": dg.MetadataValue.text(str(outliers.get("method_used"))),
            "outlier_guard": dg.MetadataValue.text(outliers.get("warning") or "within cap"),
            "outliers_by_feature": dg.MetadataValue.json(jsonable(outliers.get("outliers_by_feature", {}))),
            "outliers_by_cluster": dg.MetadataValue.json(jsonable(outliers.get("outliers_by_cluster", {}))),
            "cleaning_report": dg.MetadataValue.json(jsonable(report)),
        },
    )
    yield dg.Output(
        result.rejects,
        output_name="rejected_customers",
        metadata={
            "row_count": dg.MetadataValue.int(len(result.rejects)),
            "by_reason": dg.MetadataValue.json(jsonable(by_reason)),
            "sample": table(result.rejects, max_rows=20),
        },
    )
