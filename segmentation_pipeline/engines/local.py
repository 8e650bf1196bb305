"""The local engine: pandas and scikit-learn on one machine (the default, ``engine: local``).

Tables travel as pandas frames or Parquet hand-off files (:class:`~segmentation_pipeline.storage.
tables.ParquetTable`), read a few columns at a time when a stage needs them. The evaluation rows
are every clean row, so the segment ids computed for the gate are also the ones written back.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import sqlalchemy as sa

from segmentation_pipeline.config import PipelineConfig
from segmentation_pipeline.core.assigner import SegmentAssigner
from segmentation_pipeline.core.cleaning import clean_customers, clean_owned_customers
from segmentation_pipeline.core.features import build_features
from segmentation_pipeline.core.k_evidence import select_k
from segmentation_pipeline.core.k_selection import KSelection, check_k_against_clean_rows
from segmentation_pipeline.core.modeling import (
    canonical_mapping,
    fit_clustering,
    fit_metrics,
    quality_metrics,
    release_fit_labels,
)
from segmentation_pipeline.core.naming import profile_segments, segment_sums
from segmentation_pipeline.core.rows import map_row_blocks
from segmentation_pipeline.core.segment_tables import (
    build_rejects_table,
    build_segments_table,
    check_row_accounting,
    segment_shares,
)
from segmentation_pipeline.engines.base import Cleaned, Clusters, Extracted, Features, Progress, Published, RunIds
from segmentation_pipeline.storage.segment_store import publish_segments
from segmentation_pipeline.storage.source import high_water_mark, read_customers
from segmentation_pipeline.storage.tables import owns_rows, read_columns

__all__ = ["LocalEngine"]


class LocalEngine:
    """Stage operations over pandas/numpy; see :class:`~segmentation_pipeline.engines.base.ComputeEngine`."""

    name = "local"

    def extract(self, cfg: PipelineConfig, db: sa.Engine, *, progress: Progress | None = None) -> Extracted:
        frame = read_customers(db, cfg, progress=progress)
        src = cfg.source
        updated_at = src.updated_at_column if src.updated_at_column in frame.columns else None
        mark = high_water_mark(db, src.table, src.id_column, updated_at)
        return Extracted(
            table=frame, row_count=len(frame), columns=list(frame.columns),
            source=f"{cfg.database.safe_url()} / {cfg.source.table}",
            max_id=None if mark["max_id"] is None else str(mark["max_id"]),
            max_updated_at=None if mark["max_updated_at"] is None else str(mark["max_updated_at"]),
        )

    def clean(self, raw: Any, cfg: PipelineConfig) -> Cleaned:
        # a private copy read from a hand-off file is handed over and consumed column by column
        clean = clean_owned_customers if owns_rows(raw) else clean_customers
        result = clean(read_columns(raw), cfg, table=cfg.source.table)
        frame = result.clean
        check_k_against_clean_rows(  # before any feature or sweep work: the data cannot hold the asked k
            {f: frame[f].to_numpy() for f in cfg.features}, ~frame["is_outlier"].to_numpy(dtype=bool),
            cfg.k_range, cfg.k,
        )
        return Cleaned(clean=result.clean, rejects=result.rejects, report=result.report)

    def fit_features(self, clean: Any, cfg: PipelineConfig) -> Features:
        frame = read_columns(clean, [cfg.source.id_column, *cfg.features, "is_outlier"])
        matrix = build_features(frame, cfg, cfg.source.id_column, fit_mask=~frame["is_outlier"].to_numpy(dtype=bool))
        return Features(
            preprocessor=matrix.preprocessor, component_names=matrix.component_names,
            explained_variance_ratio=matrix.explained_variance_ratio, loadings=matrix.loadings,
            n_rows=int(matrix.X.shape[0]), n_fit=int(matrix.fit_mask.sum()), dtype=str(matrix.X.dtype),
            X_eval=matrix.X, eval_fit_mask=matrix.fit_mask,
        )

    def sweep_k(self, features: Features, cfg: PipelineConfig, *, progress: Progress | None = None) -> KSelection:
        return select_k(features.X_eval_fit, cfg, progress=progress)

    def fit_clusters(self, clean: Any, features: Features, k: int, cfg: PipelineConfig) -> Clusters:
        X, fit_mask = features.X_eval, features.eval_fit_mask
        model_cfg = cfg.model
        estimator = fit_clustering(
            X[fit_mask],  # a copy already: centred in place rather than copied again
            k, model_cfg.algorithm, n_init=model_cfg.n_init, max_iter=model_cfg.max_iter,
            random_state=model_cfg.random_state, overwrite_input=True, restart_rows=model_cfg.restart_rows,
        )
        labels = estimator.predict(X)  # the algorithm's own assignment (a mixture's posterior, a bisection tree)
        fit_labels = labels[fit_mask]
        # the scores do not depend on which id a cluster gets: computed before the feature values are read
        metrics = quality_metrics(
            X[fit_mask], fit_labels, sample=cfg.k_selection.silhouette_sample, random_state=model_cfg.random_state
        )
        metrics.update(fit_metrics(estimator, X, fit_mask))  # no copy of the fit rows for KMeans
        canonical = canonical_mapping(estimator, fit_labels)
        del fit_labels  # freed before the feature values are read
        release_fit_labels(estimator)
        # read only now, after the fit: the feature values are not held while the model is fitted
        population = read_columns(clean, list(cfg.features))
        categorical = [c for c in cfg.cleaning.categorical if c in clean.columns]
        return Clusters(
            model=estimator, canonical=canonical,
            label_profile=profile_segments(population, labels, list(cfg.features), cfg.naming.value_feature),
            population=population, population_labels=labels, eval_labels=labels, metrics=metrics,
            categories=read_columns(clean, categorical) if categorical else None,
        )

    def assign_eval(self, clean: Any, features: Features, clusters: Clusters, assigner: SegmentAssigner) -> np.ndarray:
        population = clusters.population  # every clean row: the evaluation rows
        # block by block: a transform of every row at once costs ~100 B a row
        return map_row_blocks(
            lambda start, stop: assigner.assign(population.iloc[start:stop])["segment_id"].to_numpy(np.int32),
            len(population),
        )

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
        id_column = cfg.source.id_column
        keys = [c for c in (id_column, "is_outlier", "outlier_reason") if c in cleaned.clean.columns]
        clean = read_columns(cleaned.clean, keys)  # the write-back needs no feature values
        stamp = {"mlflow_run_id": run_ids.mlflow_run_id, "dagster_run_id": run_ids.dagster_run_id}
        segments = build_segments_table(
            clean, id_column, eval_segment_ids, assigner.segment_names,
            model_name=cfg.model.name, model_version=model_version, **stamp,
        )
        del clean
        rejects = build_rejects_table(read_columns(cleaned.rejects), **stamp)
        check_row_accounting(len(segments), len(rejects), len(cleaned.clean) + len(cleaned.rejects))
        tables = publish_segments(
            db, cfg.output, segments, rejects, run_key=run_ids.dagster_run_id,
            lock_timeout_s=cfg.database.lock_timeout_s, progress=progress,
        )
        ids, counts, _ = segment_sums(segments, segments["segment_id"].to_numpy(), [])  # no groupby copy of 5M rows
        written = dict(zip(tables, (len(segments), len(rejects), len(segments)), strict=True))
        return Published(
            written=written, n_segmented=len(segments), n_rejected=len(rejects),
            n_outliers=int(segments["is_outlier"].sum()), shares=segment_shares(ids, counts, assigner.segment_names),
        )

