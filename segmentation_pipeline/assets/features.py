"""Stage 3: log1p on skewed columns, scaling and PCA, fitted on non-outlier rows only."""


import dagster as dg
import mlflow
import numpy as np
import pandas as pd

from segmentation_pipeline.assets._metadata import table
from segmentation_pipeline.core.features import FeatureMatrix, build_features
from segmentation_pipeline.resources import MlflowResource, SettingsResource
from segmentation_pipeline.storage import mlflow_registry as registry
from segmentation_pipeline.storage.tables import read_columns


@dg.asset(
    group_name="features",
    kinds={"scikitlearn"},
    description="Scaled (and PCA-projected) feature matrix; the fitted preprocessor rides along.",
)
def customer_features(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    mlflow_tracking: MlflowResource,
    clean_customers: pd.DataFrame,
) -> dg.Output[FeatureMatrix]:
    cfg = settings.load()
    if cfg.engine == "spark":  # MLlib features, the same MLflow records (assets/spark_stages.py)
        from segmentation_pipeline.assets import spark_stages

        return spark_stages.customer_features(context, cfg, mlflow_tracking.target(), clean_customers)
    clean = read_columns(clean_customers, [cfg.source.id_column, *cfg.features, "is_outlier"])
    matrix = build_features(clean, cfg, cfg.source.id_column, fit_mask=~clean["is_outlier"].to_numpy(dtype=bool))
    del clean
    variance = pd.DataFrame(
        {
            "component": matrix.component_names,
            "explained_variance_ratio": matrix.explained_variance_ratio,
            "cumulative": np.cumsum(matrix.explained_variance_ratio),
        }
    )
    loadings = matrix.loadings.reset_index().rename(columns={"index": "feature"})
    with registry.training_run(mlflow_tracking.target(), context.run.run_id):
        for i, ratio in enumerate(matrix.explained_variance_ratio, start=1):
            mlflow.log_metric("pca_explained_variance_ratio", float(ratio), step=i)
        mlflow.log_metric("pca_n_components", len(matrix.component_names))
        registry.log_frame(loadings, "features/pca_loadings.csv")
    return dg.Output(
        matrix,
        metadata={
            "row_count": dg.MetadataValue.int(int(matrix.X.shape[0])),
            "fit_rows": dg.MetadataValue.int(int(matrix.fit_mask.sum())),
            "n_components": dg.MetadataValue.int(int(matrix.X.shape[1])),
            "dtype": dg.MetadataValue.text(str(matrix.X.dtype)),
            "explained_variance": table(variance),
            "loadings": table(loadings),
        },
    )
