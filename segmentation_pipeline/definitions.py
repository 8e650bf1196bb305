"""The code location: assets, checks, jobs, schedules, sensors and typed resources in one place.

Built when Dagster asks for it (``@dg.definitions``), not at import: importing the package reads
no config file and opens no connection, and a CLI run that passes its own config never loads the
environment's.
"""

from __future__ import annotations

import os

import dagster as dg

from segmentation_pipeline.assets.checks import CHECKS
from segmentation_pipeline.assets.cleaning import clean_and_reject
from segmentation_pipeline.assets.export import segment_export
from segmentation_pipeline.assets.extraction import raw_customers
from segmentation_pipeline.assets.features import customer_features
from segmentation_pipeline.assets.monitoring import segment_drift
from segmentation_pipeline.assets.orders import ORDER_FEATURES, order_features
from segmentation_pipeline.assets.scoring import scored_customers
from segmentation_pipeline.assets.segments import customer_segments
from segmentation_pipeline.assets.sources import CUSTOMERS_SOURCE, source_specs
from segmentation_pipeline.assets.training import (
    k_selection,
    model_promotion,
    segmentation_model,
)
from segmentation_pipeline.automation import (
    build_schedules,
    build_sensors,
    drift_job,
    orders_score_job,
    score_job,
    segmentation_job,
)
from segmentation_pipeline.config import ENV_CONFIG, PipelineConfig
from segmentation_pipeline.resources import (
    AssetStoreIOManager,
    DatabaseResource,
    MlflowResource,
    SettingsResource,
    SparkEngineResource,
    engine_resource,
)

ASSETS = [
    raw_customers,
    clean_and_reject,
    customer_features,
    k_selection,
    segmentation_model,
    model_promotion,
    customer_segments,
    segment_export,
    scored_customers,
    segment_drift,
]


def _after_order_features(spec: dg.AssetSpec) -> dg.AssetSpec:
    """A reader of the customer table reads the table ``order_features`` writes instead."""
    deps = [dg.AssetDep(ORDER_FEATURES) if dep.asset_key == CUSTOMERS_SOURCE else dep for dep in spec.deps]
    return spec.replace_attributes(deps=deps)


def assets_for(cfg: PipelineConfig) -> list[dg.AssetsDefinition]:
    """The materialisable assets of this config: with ``source.kind: transactions`` the order
    features come first and every reader of the customer table depends on them; otherwise
    exactly :data:`ASSETS`."""
    if cfg.transactions is None:
        return list(ASSETS)
    readers = [
        a.map_asset_specs(_after_order_features) if any(d.asset_key == CUSTOMERS_SOURCE for s in a.specs for d in s.deps)
        else a
        for a in ASSETS
    ]
    return [order_features, *readers]


def build_resources(settings: SettingsResource, cfg: PipelineConfig, io_manager: object | None = None) -> dict:
    """Every resource the assets take; the compute engine is the one ``cfg.engine`` names."""
    compute = engine_resource(settings, cfg)  # starts a JVM only under engine: spark
    spark = compute if isinstance(compute, SparkEngineResource) else None
    return {
        "settings": settings,
        "database": DatabaseResource(settings=settings),
        "mlflow_tracking": MlflowResource(settings=settings),
        "compute": compute,
        "io_manager": io_manager or AssetStoreIOManager(base_dir=str(cfg.data_path / "dagster_storage"), spark=spark),
    }


def build_definitions(config_path: str | None = None) -> dg.Definitions:
    settings = SettingsResource(config_path=config_path)
    cfg = settings.load()
    jobs = [segmentation_job, score_job, drift_job, *([orders_score_job] if cfg.transactions is not None else [])]
    return dg.Definitions(
        assets=[*source_specs(cfg), *assets_for(cfg)],
        asset_checks=CHECKS,
        jobs=jobs,
        schedules=build_schedules(cfg),
        sensors=build_sensors(cfg),
        resources=build_resources(settings, cfg),
    )


@dg.definitions
def defs() -> dg.Definitions:
    """The code location Dagster loads (``$SEGMENTATION_CONFIG``, else configs/default.yaml)."""
    return build_definitions(os.environ.get(ENV_CONFIG))
