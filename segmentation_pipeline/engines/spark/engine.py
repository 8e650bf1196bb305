"""The Spark engine behind :class:`~segmentation_pipeline.engines.base.ComputeEngine`.

Only compute lives here: no Dagster, no MLflow, no registry. The assets keep the records, the
champion lookup, stable ids, naming and registration in engine-neutral code and call these
methods for the work Spark does on every row (the JDBC read, cleaning, MLlib fits, assignment and
write-back on the executors).

The evaluation rows (``Features.X_eval``) are a seeded sample of the fit rows collected to the
driver; ``fit_clusters`` and ``assign_eval`` label exactly those rows, with the exported sklearn
model, so driver-side checks read what serving would answer. The first model's segment ids are
MLlib's clusters in the canonical order (:func:`model.fit_kmeans`), which the exported sklearn
KMeans already numbers that way: ``canonical`` is the identity.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from segmentation_pipeline.core.segment_tables import check_row_accounting
from segmentation_pipeline.storage.source import customer_columns
from segmentation_pipeline.config import PipelineConfig
from segmentation_pipeline.core.assigner import SegmentAssigner
from segmentation_pipeline.core.k_selection import KSelection, check_k_against_rows, distinct_rows_needed
from segmentation_pipeline.core.modeling import build_model_pipeline
from segmentation_pipeline.engines.base import Cleaned, Clusters, Extracted, Features, Progress, Published, RunIds
from segmentation_pipeline.engines.spark import cleaning, export, extract, model, writeback
from segmentation_pipeline.engines.spark.handoff import SparkFeaturePayload, SparkFeatureRecord, SparkFrame
from segmentation_pipeline.storage.source import high_water_mark

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["POPULATION_SAMPLE", "SparkEngine", "assign_with"]

#: Clean rows collected to the driver for naming z-scores, the profile plot and the drift reference.
POPULATION_SAMPLE = 100_000


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


def _payload(features: Features) -> SparkFeaturePayload:
    if not isinstance(features.payload, SparkFeaturePayload):
        raise TypeError(f"features were not fitted by the Spark engine (payload {type(features.payload).__name__})")
    return features.payload


def _frame(value: Any, what: str) -> SparkFrame:
    if not isinstance(value, SparkFrame):
        raise TypeError(f"the Spark engine needs the {what} as a SparkFrame, got {type(value).__name__}")
    return value


class SparkEngine:
    """:class:`ComputeEngine` on a SparkSession: MLlib fits, exported to the served sklearn model."""

    name = "spark"

    def __init__(self, session: "SparkSession") -> None:
        self.session = session

    def extract(self, cfg: PipelineConfig, db: sa.Engine, *, progress: Progress | None = None) -> Extracted:
        """A partitioned JDBC read (planned, not yet run) of the columns the local engine reads."""
        src = cfg.source
        columns = customer_columns(db, cfg)
        ex = extract.read_customers(
            self.session, db, src.table, columns, id_column=src.id_column, num_partitions=cfg.spark.num_partitions
        )
        max_updated = None
        if src.updated_at_column in columns and ex.row_count:
            max_updated = high_water_mark(db, src.table, src.id_column, src.updated_at_column)["max_updated_at"]
        return Extracted(
            table=SparkFrame(ex.frame, ex.row_count), row_count=ex.row_count, columns=list(ex.columns),
            source=ex.source, max_id=None if not ex.row_count or ex.max_id is None else str(ex.max_id),
            max_updated_at=None if max_updated is None else str(max_updated),
            details={"engine": "spark", "partitions": ex.num_partitions, "partitioning": ex.partitioning},
        )

    def clean(self, raw: Any, cfg: PipelineConfig) -> Cleaned:
        """The Spark SQL cleaning; ``clean``/``rejects`` come back as counted SparkFrames."""
        result = cleaning.clean_customers(_frame(raw, "raw table").frame, cfg)
        report = result.report
        # before any feature or sweep work: the data cannot hold the asked k (one capped distinct
        # job); fewer than two fit rows are the feature step's own error (nothing can be fitted)
        if report["n_fit"] >= 2:
            fit_rows = result.clean.where("NOT is_outlier").select(*cfg.features)
            try:
                check_k_against_rows(
                    cfg.k_range, cfg.k, fit_rows.distinct().limit(distinct_rows_needed(cfg.k_range, cfg.k)).count()
                )
            except ValueError:
                result.clean.unpersist()
                result.rejects.unpersist()
                raise
        return Cleaned(
            clean=SparkFrame(result.clean, report["n_clean"]),
            rejects=SparkFrame(result.rejects, report["n_rejected"]),
            report=report,
        )

    def fit_features(self, clean: Any, cfg: PipelineConfig) -> Features:
        """MLlib log1p -> StandardScaler -> PCA fitted on the non-outliers; every fit row stays in Spark."""
        from pyspark import StorageLevel

        clean = _frame(clean, "clean table")
        fitted = model.fit_features(clean.frame, cfg)
        fit_rows = clean.frame.where("NOT is_outlier")
        X_fit = model.compact(fitted.transform(fit_rows).select(model.FEATURES_COL), fitted.n_fit)
        sample, X = model.eval_sample(fit_rows, fitted, cfg)
        return SparkFeatureRecord(
            preprocessor=export.to_sklearn_preprocessor(fitted, cfg),
            component_names=list(fitted.component_names),
            explained_variance_ratio=fitted.explained_variance_ratio,
            loadings=fitted.loadings,
            n_rows=len(clean),
            n_fit=fitted.n_fit,
            dtype="float32" if cfg.transform.float32 else "float64",
            X_eval=X,
            eval_fit_mask=np.ones(len(X), dtype=bool),
            payload=SparkFeaturePayload(fitted, X_fit.persist(StorageLevel.MEMORY_AND_DISK), sample),
            details={"engine": "spark", "driver_sample_rows": len(sample)},
        )

    def sweep_k(self, features: Features, cfg: PipelineConfig, *, progress: Progress | None = None) -> KSelection:
        """MLlib KMeans per candidate k; k chosen by the local engine's rule."""
        return model.sweep_k(
            _payload(features).X_fit, cfg, n_rows=features.n_fit, progress=progress, n_init=cfg.spark.kmeans_n_init
        )

    def fit_clusters(self, clean: Any, features: Features, k: int, cfg: PipelineConfig) -> Clusters:
        """The final MLlib KMeans (or Gaussian mixture, ``model.algorithm: gmm``) on every fit row;
        profile over every clean row, aggregated in Spark."""
        clean, payload = _frame(clean, "clean table"), _payload(features)
        fitted = model.fit_model(payload.X_fit, k, cfg, n_init=cfg.spark.kmeans_n_init)
        estimator = export.to_sklearn_model(fitted, cfg)
        served = build_model_pipeline(features.preprocessor, estimator)  # what serving will answer
        if fitted.algorithm == "gmm":
            # MLlib floors each weighted density (EPSILON) before its argmax, so on far-out rows its
            # labels can differ from the served mixture's posterior: profile with the served model
            first = SegmentAssigner(
                pipeline=served, features=list(cfg.features), label_to_segment=np.arange(k), segment_names={}
            )
            assigned = assign_with(clean.frame, first, list(cfg.features))
        else:
            assigned = model.assign_segments(clean.frame, payload.fitted, fitted)
        label_profile = model.profile_segments(assigned, cfg.features, cfg.naming.value_feature)
        categorical = [c for c in cfg.cleaning.categorical if c in clean.frame.columns]
        sample = model.population_sample(
            clean.frame, [*cfg.features, *categorical], POPULATION_SAMPLE, cfg.model.random_state
        )
        population = sample[list(cfg.features)]

        def labels(frame: pd.DataFrame) -> np.ndarray:
            return served.predict(frame[list(cfg.features)].astype("float64")).astype(np.int64)

        return Clusters(
            model=estimator,
            canonical=np.arange(k, dtype=np.int64),
            label_profile=label_profile,
            population=population,
            population_labels=labels(population),
            eval_labels=labels(payload.sample),
            metrics=model.quality_metrics(payload.X_fit, fitted, cfg, n_rows=features.n_fit),
            categories=sample[categorical] if categorical else None,
        )

    def assign_eval(self, clean: Any, features: Features, clusters: Clusters, assigner: SegmentAssigner) -> np.ndarray:
        """``assigner``'s segment ids for the evaluation rows (the sample behind ``X_eval``)."""
        return assigner.assign(_payload(features).sample)["segment_id"].to_numpy()

    def publish(
        self,
        db: sa.Engine,
        cfg: PipelineConfig,
        cleaned: Cleaned,
        assigner: SegmentAssigner,
        model_version: str,
        eval_segment_ids: np.ndarray,
        run_ids: RunIds,
        *,
        progress: Progress | None = None,
    ) -> Published:
        """Every clean row assigned by ``assigner`` on the executors (``eval_segment_ids`` cover a
        sample only, so they are not reused), rejects with their reasons, both tables swapped in
        atomically through JDBC, after the row accounting holds."""
        from pyspark import StorageLevel
        from pyspark.sql import functions as F

        clean, rejected = _frame(cleaned.clean, "clean table"), _frame(cleaned.rejects, "rejects")
        ids = {"mlflow_run_id": run_ids.mlflow_run_id, "dagster_run_id": run_ids.dagster_run_id}
        keep = [c for c in (cfg.source.id_column, "is_outlier", "outlier_reason") if c in clean.columns]
        segments = writeback.segments_frame(
            assign_with(clean.frame, assigner, keep), cfg.source.id_column, assigner.segment_names,
            model_name=cfg.model.name, model_version=str(model_version), **ids,
        ).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            shares = segments.groupBy("segment_id", "segment_name").agg(
                F.count(F.lit(1)).alias("count"), F.sum(F.col("is_outlier").cast("int")).alias("outliers")
            ).toPandas().sort_values("segment_id", ignore_index=True)
            n_segmented, n_input = int(shares["count"].sum()), len(clean) + len(rejected)
            check_row_accounting(n_segmented, len(rejected), n_input)
            if progress is not None:
                progress(n_segmented, n_input)
            written = writeback.publish_segments(
                db, cfg.output, segments, writeback.rejects_frame(rejected.frame, **ids),
                run_key=run_ids.dagster_run_id, lock_timeout_s=cfg.database.lock_timeout_s,
                num_partitions=cfg.spark.num_partitions,
            )
        finally:
            segments.unpersist()
        n_outliers = int(shares.pop("outliers").sum())
        shares["count"] = shares["count"].astype(np.int64)
        shares["share_pct"] = 100 * shares["count"] / max(n_segmented, 1)
        return Published(
            written=written, n_segmented=n_segmented, n_rejected=written[cfg.output.rejects_table],
            n_outliers=n_outliers, shares=shares,
        )
