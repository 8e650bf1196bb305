"""The compute-engine interface: the stage operations the assets need, implemented once per engine.

Why an interface: the assets (extract → clean → features → choose k → model → publish) are written
once and never ask which engine runs them. An engine is handed to them by a Dagster resource chosen
from the config (``engine: local | spark``), the way a deployment swaps a compute backend. Each
stage returns an engine-neutral record below; what only the engine itself reads back later (a
Spark DataFrame, the local feature matrix) rides along in ``payload`` and is never inspected by
an asset.

The driver-side checks that need a matrix (silhouette, the promotion gate, the migration matrix,
naming z-scores, the drift reference) run on the engine's *evaluation rows*: every clean row for the
local engine, a seeded sample of the fit rows for Spark. Those rows are what ``Features.X_eval``,
``Clusters.eval_labels`` and :meth:`ComputeEngine.assign_eval` describe, so the core code that reads
them is the same for both engines.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sklearn.pipeline import Pipeline

from segmentation_pipeline.config import PipelineConfig
from segmentation_pipeline.core.assigner import SegmentAssigner
from segmentation_pipeline.core.k_selection import KSelection

__all__ = [
    "Cleaned",
    "Clusters",
    "ComputeEngine",
    "Extracted",
    "Features",
    "Progress",
    "Published",
    "RunIds",
]

#: ``progress(done, total)`` for long row-wise work, ``progress(k, row)`` for the k sweep.
Progress = Callable[[int, Any], None]


@dataclass(frozen=True)
class Extracted:
    """The source table as read (or planned) by the engine, with what the UI shows about it."""

    table: Any  # handed to ``clean``: a DataFrame/Parquet table (local) or a SparkFrame
    row_count: int
    columns: list[str]
    source: str  # masked URL and table: safe to log
    max_id: str | None
    max_updated_at: str | None
    details: Mapping[str, Any] = field(default_factory=dict)  # engine-specific facts (partitions, ...)


@dataclass(frozen=True)
class Cleaned:
    """Valid rows (with ``is_outlier``/``outlier_reason``), rejects with reasons, and the report."""

    clean: Any  # engine table handle; ``len()`` is its row count
    rejects: Any
    report: dict[str, Any]


@dataclass
class Features:
    """The fitted feature transform, as the served sklearn preprocessor, plus the evaluation rows."""

    preprocessor: Pipeline  # sklearn: log1p → scale → PCA → float32, the first stages of the served model
    component_names: list[str]
    explained_variance_ratio: np.ndarray
    loadings: pd.DataFrame
    n_rows: int  # clean rows
    n_fit: int  # rows the transform and the model are fitted on (not outliers)
    dtype: str
    X_eval: np.ndarray  # the evaluation rows in feature space
    eval_fit_mask: np.ndarray  # which evaluation rows are fit rows (the gate and silhouette read these)
    payload: Any = None  # the engine's own handle on every row (local FeatureMatrix, Spark feature set)
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def X_eval_fit(self) -> np.ndarray:
        return self.X_eval[self.eval_fit_mask]


@dataclass
class Clusters:
    """The final clustering of every fit row, as engine-neutral numbers.

    ``label_profile`` is :func:`core.naming.profile_segments` keyed by the model's raw cluster label
    (``segment_id`` = label), over every clean row; ``population`` holds raw feature values of
    clean rows (all of them locally, a seeded sample on Spark) for naming z-scores, plots, the model's
    input example and the drift reference, ``population_labels`` their raw labels; ``eval_labels`` are
    the raw labels of the evaluation rows (``Features.X_eval``). ``categories`` holds the
    configured categorical columns (``cleaning.categorical``) of the same rows as ``population``,
    for the per-segment profiles of attributes not clustered on (on Spark: collected with the
    population sample, so the shares are estimates from it); None when none is configured.
    """

    model: Any  # the fitted estimator in sklearn form (core.algorithms; served, assigns by its own predict)
    canonical: np.ndarray  # raw label -> segment id for a first model (deterministic order)
    label_profile: pd.DataFrame
    population: pd.DataFrame
    population_labels: np.ndarray
    eval_labels: np.ndarray
    metrics: dict[str, float]
    payload: Any = None
    categories: pd.DataFrame | None = None


@dataclass(frozen=True)
class RunIds:
    """Who produced a write-back: stamped on every segments/rejects row and the history."""

    mlflow_run_id: str
    dagster_run_id: str


@dataclass(frozen=True)
class Published:
    """What the write-back wrote: row counts per table and the segment shares."""

    written: dict[str, int]
    n_segmented: int
    n_rejected: int
    n_outliers: int
    shares: pd.DataFrame  # segment_id, segment_name, count, share_pct


@runtime_checkable
class ComputeEngine(Protocol):
    """The stage operations of one compute backend (``local``: pandas/scikit-learn; ``spark``)."""

    name: str

    def extract(self, cfg: PipelineConfig, db: sa.Engine, *, progress: Progress | None = None) -> Extracted:
        """Read (or plan the read of) the source columns the pipeline needs."""
        ...

    def clean(self, raw: Any, cfg: PipelineConfig) -> Cleaned:
        """Validate, reject with reasons, and flag outliers with the shared rules and guard."""
        ...

    def fit_features(self, clean: Any, cfg: PipelineConfig) -> Features:
        """Fit the feature transform on the non-outlier rows."""
        ...

    def sweep_k(self, features: Features, cfg: PipelineConfig, *, progress: Progress | None = None) -> KSelection:
        """Evidence per candidate k and the chosen k (the rule itself lives in core)."""
        ...

    def fit_clusters(self, clean: Any, features: Features, k: int, cfg: PipelineConfig) -> Clusters:
        """The final clustering with k clusters, fitted on every fit row."""
        ...

    def assign_eval(self, clean: Any, features: Features, clusters: Clusters, assigner: SegmentAssigner) -> np.ndarray:
        """Segment ids that ``assigner`` gives the evaluation rows (e.g. the champion's, for the gate)."""
        ...

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
        """Assign every clean row with ``assigner`` and swap segments, rejects and history in atomically.

        ``eval_segment_ids`` are ``assigner``'s ids for the evaluation rows, already computed: an
        engine whose evaluation rows are every clean row writes them without assigning again.
        """
        ...
