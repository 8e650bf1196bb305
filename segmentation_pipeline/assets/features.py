"""Stage 3: log1p on skewed columns, scaling and PCA, fitted on non-outlier rows only."""

import dagster as dg
import numpy as np
import pandas as pd

from segmentation_pipeline.assets.metadata import plain_metadata, table, table_facts
from segmentation_pipeline.engines.base import Features
from segmentation_pipeline.resources import EngineResource, MlflowResource, SettingsResource
from segmentation_pipeline.storage import mlflow_registry as registry


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
    cfg = settings.load()
    features = compute.get().fit_features(clean_customers, cfg)
    ratio = features.explained_variance_ratio
    variance = pd.DataFrame(
        {"component": features.component_names, "explained_variance_ratio": ratio, "cumulative": np.cumsum(ratio)}
    )
    loadings = features.loadings.reset_index().rename(columns={"index": "feature"})
    with registry.training_run(mlflow_tracking.target(), context.run.run_id):
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
            dtype=features.dtype, explained_variance=table(variance), loadings=table(loadings), **features.details,
        ),
    )
