"""Drift of features and segment shares against the data the champion was trained on."""



import dagster as dg
import mlflow

from segmentation_pipeline.assets.metadata import image, jsonable, table
from segmentation_pipeline.assets.sources import CUSTOMERS_SOURCE
from segmentation_pipeline.core.cleaning import clean_customers
from segmentation_pipeline.core.drift import DriftThresholds, compute_drift, drift_plot
from segmentation_pipeline.core.features import logged_columns
from segmentation_pipeline.core.skew import with_log1p
from segmentation_pipeline.resources import DatabaseResource, MlflowResource, SettingsResource
from segmentation_pipeline.storage import mlflow_registry as registry
from segmentation_pipeline.storage.source import read_customers

DRIFT_CHECK = "drift_within_thresholds"


@dg.asset(
    group_name="monitoring",
    kinds={"evidently", "mlflow"},
    pool="customer_db",
    # what it reads: the source table and the champion (named by the promotion gate)
    deps=[CUSTOMERS_SOURCE, "model_promotion"],
    check_specs=[dg.AssetCheckSpec(DRIFT_CHECK, asset="segment_drift", description="Evidently feature drift and segment-share PSI within configured thresholds")],
    description="Evidently report: current customers vs the champion's training reference.",
)
def segment_drift(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    database: DatabaseResource,
    mlflow_tracking: MlflowResource,
) -> dg.MaterializeResult:
    cfg = settings.load()
    target = mlflow_tracking.target()
    engine = database.engine()
    assigner, version = registry.load_assigner(target.tracking_uri, cfg.model.name, cfg.model.alias)
    reference = registry.load_reference(target.tracking_uri, cfg.model.name, version)
    raw = read_customers(engine, cfg)
    # cleaned (and fenced) on the champion's log1p columns, not a new transform.log1p: auto decision
    trained = with_log1p(cfg, logged_columns(assigner.pipeline.named_steps["preprocess"]))
    current = clean_customers(raw, trained, table=cfg.source.table).clean
    current = current.assign(segment_id=assigner.assign(current)["segment_id"].to_numpy())
    thresholds = DriftThresholds(**cfg.drift.model_dump(exclude={"sample"}))
    result = compute_drift(
        reference, current, cfg.features, segment_column="segment_id", thresholds=thresholds,
        sample=cfg.drift.sample, random_state=cfg.model.random_state,
    )
    png = drift_plot(result)
    passed = result.severity == "ok"
    severity = dg.AssetCheckSeverity.ERROR if result.severity == "error" else dg.AssetCheckSeverity.WARN
    summary_md = {
        "severity": dg.MetadataValue.text(result.severity),
        "drifted_features": dg.MetadataValue.json(result.drifted_features),
        "share_drifted": dg.MetadataValue.float(float(result.share_drifted)),
        "segment_psi": dg.MetadataValue.float(float(result.segment_psi or 0.0)),
    }
    details = {
        "champion_version": dg.MetadataValue.text(version),
        "segment_shares": table(result.segment_shares),
        "feature_scores": dg.MetadataValue.json(jsonable(result.feature_scores)),
        "plot": image(png, "drift"),
    }
    # Everything above only reads. The report file and the MLflow run are written last, and a
    # failure while writing them removes the file and marks the MLflow run FAILED: no half result.
    report_dir = cfg.data_path / "drift_reports"
    report_dir.mkdir(parents=True, exist_ok=True)
    html_path = (report_dir / f"drift_{context.run.run_id}.html").resolve()
    try:
        html_path.write_text(result.html)
        with registry.training_run(target, context.run.run_id, run_name=f"drift-{context.run.run_id[:8]}") as run_id:
            mlflow.set_tag("kind", "drift")
            mlflow.set_tag("champion_version", version)
            mlflow.log_metrics({"drift_share_drifted": result.share_drifted,
                                "drift_segment_psi": float(result.segment_psi or 0.0)})
            mlflow.log_artifact(str(html_path), "drift")
            registry.log_json(jsonable(result.summary), "drift/summary.json")
            registry.log_png(png, "drift/drift.png")
    except BaseException:
        html_path.unlink(missing_ok=True)
        raise
    return dg.MaterializeResult(
        metadata={
            **summary_md,
            **details,
            "report_path": dg.MetadataValue.path(str(html_path)),
            "mlflow_run_id": dg.MetadataValue.text(run_id),
        },
        check_results=[
            dg.AssetCheckResult(check_name=DRIFT_CHECK, passed=passed, severity=severity, metadata=summary_md)
        ],
    )
