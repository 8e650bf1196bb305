"""Stage 3: log1p on skewed columns, scaling and PCA, fitted on non-outlier rows only."""

import dagster as dg
import numpy as np
import pandas as pd

from segmentation_pipeline.assets.metadata import plain_metadata, table, table_facts
from segmentation_pipeline.config import PipelineConfig
from segmentation_pipeline.core.skew import resolved_from_report
from segmentation_pipeline.engines.base import Features
from segmentation_pipeline.resources import EngineResource, MlflowResource, SettingsResource
from segmentation_pipeline.storage import mlflow_registry as registry


def cleaning_choice(context: dg.AssetExecutionContext, target: registry.TrackingTarget, cfg: PipelineConfig) -> PipelineConfig:
    """``cfg`` with the log1p columns the cleaning step chose (``transform.log1p: auto`` is decided
    once, there): from this run's cleaning report, else (the step ran in an earlier run) from the
    cleaning report of the clean table's latest materialization."""
    resolved = resolved_from_report(cfg, registry.run_json(target, context.run.run_id, "cleaning/report.json"))
    if resolved is None:
        event = context.instance.get_latest_materialization_event(dg.AssetKey("clean_customers"))
        materialization = None if event is None else event.asset_materialization
        recorded = None if materialization is None else materialization.metadata.get("cleaning_report")
        resolved = resolved_from_report(cfg, getattr(recorded, "value", None))
    if resolved is None:
        raise ValueError(
            "transform.log1p is 'auto' but no cleaning report records the run's choice: materialize "
            "clean_customers again (or list the columns under transform.log1p)"
        )
    return resolved


@dg.asset(
    group_name="features",
    kinds={"scikitlearn"},
    description="Scaled (and PCA-projected) feature matrix; the fitted preprocessor rides along.",
)
def customer_features(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    mlflow_tracking: MlflowResource,
    compute: EngineResource,
    clean_customers,
) -> dg.Output[Features]:
    target = mlflow_tracking.target()
    configured = settings.load()
    cfg = cleaning_choice(context, target, configured)
    log1p = cfg.transform.log1p_columns
    features = compute.get().fit_features(clean_customers, cfg)
    ratio = features.explained_variance_ratio
    variance = pd.DataFrame(
        {"component": features.component_names, "explained_variance_ratio": ratio, "cumulative": np.cumsum(ratio)}
    )
    loadings = features.loadings.reset_index().rename(columns={"index": "feature"})
    with registry.training_run(target, context.run.run_id):
        # per component its own share and the running total: the last step of the cumulative one
        # is what the variance target (transform.pca_components) is compared with
        points = []
        for i, (value, total) in enumerate(zip(ratio, np.cumsum(ratio), strict=True), start=1):
            points += [("pca_explained_variance_ratio", float(value), i),
                       ("pca_cumulative_explained_variance", float(total), i)]
        registry.log_metric_steps(points, pca_explained_variance_total=float(np.sum(ratio)),
                                  pca_n_components=len(features.component_names))
        registry.log_frame(loadings, "features/pca_loadings.csv")
    return dg.Output(
        features,
        metadata=table_facts(features.n_rows) | plain_metadata(
            fit_rows=features.n_fit, n_components=len(features.component_names),
            log1p=log1p, log1p_mode="auto" if configured.transform.log1p_auto else "list",
            dtype=features.dtype, explained_variance=table(variance), loadings=table(loadings), **features.details,
        ),
    )
