"""The asset bodies under ``engine: spark``: same inputs, outputs, checks, MLflow names and
write-back contract as the local bodies in the stage modules; only the compute is Spark's.

Each stage module dispatches here on ``cfg.engine`` (imported lazily, so ``engine: local`` never
imports pyspark). Where an asset's reporting code only needs row counts and small pandas
results, the Spark stage returns duck-compatible values (:class:`SparkFrame`, the cleaning
report, a :class:`KSelection`) and the local reporting code runs unchanged; the other stages
return their Dagster output from here.

Hand-offs are :mod:`segmentation_pipeline.engines.spark.handoff` values. Driver-side steps work on
seeded samples collected from Spark (naming z-scores, plots, the drift reference, the promotion
gate); every customer is still assigned and written back by Spark.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
import sqlalchemy as sa

from segmentation_pipeline.assets._metadata import image, jsonable, table
from segmentation_pipeline.assets.training import PromotionOutcome, TrainedSegmentation, _stable_ids
from segmentation_pipeline.config import PipelineConfig
from segmentation_pipeline.core.assigner import SegmentAssigner
from segmentation_pipeline.core.identity import migration_matrix, migration_plot
from segmentation_pipeline.core.k_selection import KSelection
from segmentation_pipeline.core.naming import name_segments
from segmentation_pipeline.core.plots import profile_plot
from segmentation_pipeline.engines.spark import cleaning, export, extract, model, writeback
from segmentation_pipeline.engines.spark.cleaning import SparkCleaningResult
from segmentation_pipeline.engines.spark.handoff import SparkFeatureSet, SparkFrame
from segmentation_pipeline.storage import mlflow_registry as registry
from segmentation_pipeline.storage.source import customer_columns, high_water_mark

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

__all__ = [
    "POPULATION_SAMPLE",
    "assign_with",
    "clean_customers",
    "customer_features",
    "customer_segments",
    "raw_customers",
    "segmentation_model",
    "select_k",
]

#: Clean rows collected to the driver for naming z-scores, the profile plot and the drift reference.
POPULATION_SAMPLE = 100_000


def _md(**values: Any) -> dict[str, dg.MetadataValue]:
    """Dagster metadata from plain values (ints, floats, bools, text; anything else as JSON)."""
    out: dict[str, dg.MetadataValue] = {}
    for key, value in values.items():
        if isinstance(value, dg.MetadataValue):
            out[key] = value
        elif isinstance(value, bool):
            out[key] = dg.MetadataValue.bool(value)
        elif isinstance(value, (int, np.integer)):
            out[key] = dg.MetadataValue.int(int(value))
        elif isinstance(value, str):
            out[key] = dg.MetadataValue.text(value)
        else:
            out[key] = dg.MetadataValue.json(jsonable(value))
    return out


# --------------------------------------------------------------------------- extraction, cleaning


def raw_customers(cfg: PipelineConfig, engine: sa.Engine, spark: "SparkSession") -> dg.Output[SparkFrame]:
    """A partitioned JDBC read (planned, not yet run) of the columns the local engine reads."""
    src = cfg.source
    columns = customer_columns(engine, cfg)
    ex = extract.read_customers(
        spark, engine, src.table, columns, id_column=src.id_column, num_partitions=cfg.spark.num_partitions
    )
    max_updated = None
    if src.updated_at_column in columns and ex.row_count:
        max_updated = high_water_mark(engine, src.table, src.id_column, src.updated_at_column)["max_updated_at"]
    return dg.Output(
        SparkFrame(ex.frame, ex.row_count),
        metadata=_md(
            row_count=ex.row_count, source=ex.source, columns=ex.columns,
            max_id=str(ex.max_id if ex.row_count else None), max_updated_at=str(max_updated),
            engine="spark", partitions=ex.num_partitions, partitioning=ex.partitioning,
        ),
    )


def clean_customers(raw: SparkFrame, cfg: PipelineConfig, table: str | None = None) -> SparkCleaningResult:
    """The Spark SQL cleaning; ``clean``/``rejects`` come back as counted :class:`SparkFrame`s."""
    result = cleaning.clean_customers(raw.frame, cfg, table)
    report = result.report
    return replace(
        result, clean=SparkFrame(result.clean, report["n_clean"]), rejects=SparkFrame(result.rejects, report["n_rejected"])
    )


# --------------------------------------------------------------------------- features, k


def _fit_sample(fit_rows: "DataFrame", features: model.SparkFeatures, cfg: PipelineConfig) -> tuple[pd.DataFrame, np.ndarray]:
    """A seeded sample of the fit rows: raw features (+ id) and the same rows in feature space."""
    from pyspark.ml.functions import vector_to_array

    size = max(cfg.promotion.sample, cfg.k_selection.silhouette_sample)
    fraction = min(1.0, size / max(features.n_fit, 1))
    rows = fit_rows.sample(False, fraction, cfg.model.random_state) if fraction < 1 else fit_rows
    picked = features.transform(rows).select(
        cfg.source.id_column, *cfg.features, vector_to_array(model.FEATURES_COL).alias("_x")
    ).toPandas()
    dtype = np.float32 if cfg.transform.float32 else np.float64
    X = np.asarray(picked.pop("_x").tolist(), dtype=dtype).reshape(len(picked), -1)
    return picked, X


def customer_features(
    context: dg.AssetExecutionContext, cfg: PipelineConfig, target: registry.TrackingTarget, clean: SparkFrame
) -> dg.Output[SparkFeatureSet]:
    """MLlib log1p -> StandardScaler -> PCA fitted on the non-outliers; the same MLflow records."""
    from pyspark import StorageLevel

    fitted = model.fit_features(clean.frame, cfg)
    fit_rows = clean.frame.where("NOT is_outlier")
    X_fit = model._compact(fitted.transform(fit_rows).select(model.FEATURES_COL), fitted.n_fit)  # noqa: SLF001
    sample, X = _fit_sample(fit_rows, fitted, cfg)
    result = SparkFeatureSet(
        X=X, fit_mask=np.ones(len(sample), dtype=bool),
        preprocessor=export.to_sklearn_preprocessor(fitted, cfg), component_names=fitted.component_names,
        explained_variance_ratio=fitted.explained_variance_ratio, loadings=fitted.loadings, features=fitted,
        spark_X_fit=X_fit.persist(StorageLevel.MEMORY_AND_DISK), n_clean=len(clean), sample=sample,
    )
    ratio = fitted.explained_variance_ratio
    variance = pd.DataFrame({"component": fitted.component_names, "explained_variance_ratio": ratio,
                             "cumulative": np.cumsum(ratio)})
    loadings = fitted.loadings.reset_index().rename(columns={"index": "feature"})
    with registry.training_run(target, context.run.run_id):
        for step, value in enumerate(ratio, start=1):
            mlflow.log_metric("pca_explained_variance_ratio", float(value), step=step)
        mlflow.log_metric("pca_n_components", len(fitted.component_names))
        registry.log_frame(loadings, "features/pca_loadings.csv")
    return dg.Output(
        result,
        metadata=_md(
            row_count=len(clean), fit_rows=fitted.n_fit, n_components=len(fitted.component_names),
            dtype="float32" if cfg.transform.float32 else "float64", engine="spark", driver_sample_rows=len(sample),
            explained_variance=table(variance), loadings=table(loadings),
        ),
    )


def select_k(X_fit: "DataFrame", cfg: PipelineConfig, progress: Callable[[int, dict], None] | None = None) -> KSelection:
    """MLlib KMeans per candidate k; k chosen by the local engine's rule (:func:`model.sweep_k`)."""
    return model.sweep_k(X_fit, cfg, progress=progress, n_init=cfg.spark.kmeans_n_init)


# --------------------------------------------------------------------------- final model


def _champion(target: registry.TrackingTarget, cfg: PipelineConfig) -> tuple[SegmentAssigner | None, str | None]:
    version = registry.alias_version(target.tracking_uri, cfg.model.name, cfg.model.alias)
    if version is None:
        return None, None
    return registry.load_assigner(target.tracking_uri, cfg.model.name, cfg.model.alias)[0], version


def segmentation_model(
    context: dg.AssetExecutionContext,
    cfg: PipelineConfig,
    target: registry.TrackingTarget,
    clean: SparkFrame,
    features: SparkFeatureSet,
    selection: KSelection,
) -> dg.Output[TrainedSegmentation]:
    """The final MLlib KMeans, exported into the local engine's sklearn pyfunc and registered as
    challenger. Segment ids are matched to the champion's with the local code; ``segment_ids`` and
    ``champion_segment_ids`` are those of ``features.sample`` (what the promotion gate reads)."""
    kmeans = model.fit_kmeans(features.spark_X_fit, selection.k, cfg, n_init=cfg.spark.kmeans_n_init)
    champion, champion_version = _champion(target, cfg)
    by_label = model.profile_segments(
        model.assign_segments(clean.frame, features.features, kmeans), cfg.features, cfg.naming.value_feature
    )
    labels = by_label["segment_id"].to_numpy()
    centroid_rows = by_label[[f"mean_{f}" for f in cfg.features]].set_axis(cfg.features, axis=1)
    label_to_segment = _stable_ids(centroid_rows, cfg.features, labels, np.arange(kmeans.k), champion)
    profile = by_label.assign(segment_id=label_to_segment[labels]).sort_values("segment_id", ignore_index=True)
    population = model.population_sample(clean.frame, cfg.features, POPULATION_SAMPLE, cfg.model.random_state)
    naming = cfg.naming
    names = name_segments(profile, population, cfg.features, high_threshold=naming.high_threshold, tiers=naming.tiers,
                          value_feature=naming.value_feature, log_features=cfg.transform.log1p)
    profile.insert(1, "segment_name", profile["segment_id"].map(names))
    next_id = max(int(label_to_segment.max()) + 1, int(champion.metadata.get("next_segment_id", 0)) if champion else 0)
    assigner = export.to_segment_assigner(
        model.SparkTraining(features.features, selection, kmeans, {}), cfg,
        segment_names={int(s): v for s, v in names.items()}, label_to_segment=label_to_segment,
        centroids_original=profile[[f"mean_{f}" for f in cfg.features]].to_numpy(dtype=float),
        metadata={"next_segment_id": str(next_id), "engine": "spark"},
    )
    metrics = model.quality_metrics(features.spark_X_fit, kmeans, cfg, n_rows=features.features.n_fit)
    segment_ids = assigner.assign(features.sample)["segment_id"].to_numpy()
    champion_ids = None if champion is None else champion.assign(features.sample)["segment_id"].to_numpy()
    migration = None if champion_ids is None else migration_matrix(champion_ids, segment_ids)
    profile_png = profile_plot(profile, cfg.features, population=population, names=names)
    reference = population.assign(segment_id=assigner.assign(population)["segment_id"].to_numpy())
    if len(reference) > cfg.drift.sample:
        reference = reference.sample(cfg.drift.sample, random_state=cfg.model.random_state)

    with registry.training_run(target, context.run.run_id) as run_id:
        mlflow.log_metrics({f"final_{k}": float(v) for k, v in metrics.items()})
        mlflow.set_tag("engine", "spark")
        registry.log_frame(profile, "segments/profile.csv")
        registry.log_png(profile_png, "segments/profile.png")
        if migration is not None:
            registry.log_frame(migration.reset_index(), "segments/migration_vs_champion.csv")
            registry.log_png(migration_plot(migration), "segments/migration_vs_champion.png")
        registry.log_reference(reference)
        version = registry.log_segmentation_model(assigner, population, cfg.model.name)
    registry.set_alias(target.tracking_uri, cfg.model.name, cfg.model.challenger_alias, version)
    registry.tag_version(target.tracking_uri, cfg.model.name, version, {
        "dagster_run_id": context.run.run_id, "k": str(selection.k), "k_reason": selection.reason, "engine": "spark",
    })
    context.log.info(f"registered {cfg.model.name} v{version} (Spark MLlib) as {cfg.model.challenger_alias!r}")
    trained = TrainedSegmentation(
        assigner=assigner, segment_ids=segment_ids, model_name=cfg.model.name, model_version=version,
        mlflow_run_id=run_id, k=selection.k, k_reason=selection.reason, metrics=metrics, profile=profile,
        migration=migration, previous_champion=champion_version, champion=champion,
        champion_segment_ids=champion_ids,
    )
    extra = {} if migration is None else {"migration_vs_champion": table(migration.reset_index())}
    return dg.Output(trained, metadata=_md(
        model=f"{cfg.model.name} v{version}", mlflow_run_id=run_id, k=selection.k, metrics=metrics,
        profile=table(profile), segments=json.loads(profile.to_json(orient="records")),
        profile_plot=image(profile_png, "segment profiles"), engine="spark", **extra,
    ))


# --------------------------------------------------------------------------- write-back


def assign_with(frame: "DataFrame", assigner: SegmentAssigner, keep: list[str]) -> "DataFrame":
    """``keep`` columns plus ``segment_id`` from the registered sklearn model itself, run on the
    executors (``mapInPandas``): write-back gives exactly the answer scoring and serving give.

    Only the sklearn pipeline and numpy arrays travel to the executors (they need scikit-learn,
    not this package).
    """
    from pyspark.sql import types as T

    pipeline, features = assigner.pipeline, list(assigner.features)
    mapping = np.asarray(assigner.label_to_segment, dtype=np.int64)
    schema = T.StructType([*[frame.schema[c] for c in keep], T.StructField("segment_id", T.LongType(), False)])

    def score(batches: Any) -> Any:
        for batch in batches:
            labels = pipeline.predict(batch[features].astype("float64")) if len(batch) else np.array([], dtype=int)
            yield batch[keep].assign(segment_id=mapping[labels])

    return frame.select(*dict.fromkeys([*keep, *features])).mapInPandas(score, schema)


def customer_segments(
    context: dg.AssetExecutionContext,
    cfg: PipelineConfig,
    engine: sa.Engine,
    target: registry.TrackingTarget,
    clean: SparkFrame,
    rejected: SparkFrame,
    trained: TrainedSegmentation,
    promotion: PromotionOutcome,
) -> dg.MaterializeResult:
    """Every clean row assigned by the champion (on the executors), rejects with their reasons,
    both tables swapped in atomically through Spark JDBC, and the same accounting check."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    follow_new = promotion.champion_version == trained.model_version or trained.champion is None
    assigner, version = (trained.assigner, trained.model_version) if follow_new else (
        trained.champion, str(trained.previous_champion))
    run_ids = {"mlflow_run_id": trained.mlflow_run_id, "dagster_run_id": context.run.run_id}
    keep = [c for c in (cfg.source.id_column, "is_outlier", "outlier_reason") if c in clean.columns]
    segments = writeback.segments_frame(
        assign_with(clean.frame, assigner, keep), cfg.source.id_column, assigner.segment_names,
        model_name=cfg.model.name, model_version=version, **run_ids,
    ).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        shares = segments.groupBy("segment_id", "segment_name").agg(
            F.count(F.lit(1)).alias("count"), F.sum(F.col("is_outlier").cast("int")).alias("outliers")
        ).toPandas().sort_values("segment_id", ignore_index=True)
        n_segmented, n_input = int(shares["count"].sum()), len(clean) + len(rejected)
        if n_segmented + len(rejected) != n_input:
            raise RuntimeError(
                f"row accounting broken: {n_segmented} segmented + {len(rejected)} rejected != {n_input} input rows"
            )
        rejects = writeback.rejects_frame(rejected.frame, **run_ids)
        written = writeback.publish_segments(
            engine, cfg.output, segments, rejects, run_key=context.run.run_id,
            lock_timeout_s=cfg.database.lock_timeout_s, num_partitions=cfg.spark.num_partitions,
        )
    finally:
        segments.unpersist()
    n_outliers = int(shares.pop("outliers").sum())
    shares["share_pct"] = 100 * shares["count"] / max(n_segmented, 1)
    with registry.training_run(target, context.run.run_id):
        mlflow.log_metrics({"n_segmented": n_segmented, "n_rejected_written": written[cfg.output.rejects_table]})
        mlflow.set_tag("segments_model_version", version)
    return dg.MaterializeResult(metadata=_md(
        row_count=n_segmented, n_input=n_input, n_segmented=n_segmented, n_rejected=written[cfg.output.rejects_table],
        n_outliers_segmented=n_outliers, model=f"{cfg.model.name} v{version} ({cfg.model.alias})", tables=written,
        segment_shares=table(shares), engine="spark",
    ))
