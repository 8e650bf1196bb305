"""IQR outlier detection over pandas/numpy: the local engine's numbers for the outlier guard.

What to flag is decided in :mod:`segmentation_pipeline.core.outlier_guard` (shared with the Spark
engine); this module computes the quartiles, counts and provisional clusters it asks for,
column by column on the fence scale, and turns the final fences into per-row flags.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.preprocessing import StandardScaler

from segmentation_pipeline.config import PipelineConfig
from segmentation_pipeline.core.outlier_guard import (
    PROVISIONAL_FIT_ROWS,
    PROVISIONAL_K_SAMPLE,
    PROVISIONAL_N_INIT,
    ClusterCounts,
    Fences,
    OutlierPolicyError,
    OutsideCounts,
    choose_provisional_k,
    decide_outliers,
    dissolved_clusters,
    idle_report,
    outlier_features,
    provisional_facts,
    tukey,
)
from segmentation_pipeline.core.rows import ROW_BLOCK, map_row_blocks
from segmentation_pipeline.core.skew import resolve_log1p
from segmentation_pipeline.core.threads import threads_for

__all__ = ["OutlierPolicyError", "OutlierResult", "LocalOutlierBackend", "detect_outliers", "flag_labels", "iqr_fences"]


@dataclass(frozen=True)
class OutlierResult:
    mask: np.ndarray  # bool per row, True = outlier (kept out of fitting)
    reasons: pd.Series  # "" or "outlier:<feat>[,<feat>...]", same index as the input frame
    report: dict[str, Any]


def iqr_fences(values: np.ndarray, multiplier: float) -> tuple[float, float]:
    """Tukey fences (numpy's linear quantiles); no finite value means nothing can be fenced."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return -np.inf, np.inf
    low, high = tukey(*np.percentile(finite, [25, 75]), multiplier)
    return float(low), float(high)


def flag_labels(flags: np.ndarray, names: Sequence[str], prefix: str = "") -> pd.Categorical:
    """Turn an (n, f) bool matrix into ``prefix + "a,b"`` labels ("" for none), vectorised.

    Rows are encoded as a bitmask so only the few distinct combinations of the (few) flagged
    rows are ever formatted; the result is categorical (a byte per row, not a string each).
    """
    flags = np.asarray(flags, dtype=bool)
    if flags.ndim != 2 or flags.shape[1] != len(names):
        raise ValueError(f"flags of shape {flags.shape} do not match {len(names)} names")
    codes = np.zeros(flags.shape[0], dtype=np.int32)
    flagged = np.flatnonzero(flags.any(axis=1))
    categories = [""]
    if len(flagged):
        packed, inverse = np.unique(np.packbits(flags[flagged], axis=1, bitorder="little"), axis=0, return_inverse=True)
        bits = np.unpackbits(packed, axis=1, count=len(names), bitorder="little").astype(bool)
        categories += [prefix + ",".join(np.asarray(names)[row]) for row in bits]
        codes[flagged] = inverse.ravel() + 1
    return pd.Categorical.from_codes(codes, categories=categories)


class _Columns:
    """Features on the fence scale, one read-only array per column: only log1p columns are
    copied, and a row block is stacked into a matrix only when a step needs one."""

    def __init__(self, arrays: list[np.ndarray]) -> None:
        self.arrays = arrays
        self.n = len(arrays[0]) if arrays else 0

    def rows(self, index: Any) -> np.ndarray:
        """The rows at ``index`` (a slice, positions or a mask) as an (m, f) float64 matrix."""
        return np.column_stack([a[index] for a in self.arrays])

    def subset(self, columns: Sequence[int]) -> _Columns:
        return _Columns([self.arrays[j] for j in columns])


def _transformed(frame: pd.DataFrame, columns: Sequence[str], log1p: set[str]) -> _Columns:
    """The scale fences live on: log1p for skewed features, raw otherwise."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"outlier detection needs columns {missing}; frame has {list(frame.columns)}")
    arrays = []
    for col in columns:
        values = frame[col].to_numpy(dtype=np.float64, na_value=np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            scaled = np.log1p(values) if col in log1p else values  # never written to: no copy needed
        bad = ~np.isfinite(scaled)
        if bad.any():
            example = values[bad][0]
            scale = "log1p scale" if col in log1p else "raw scale"
            raise ValueError(
                f"column {col!r} has {int(bad.sum())} value(s) that are not finite on the {scale} "
                f"(e.g. {example!r}); clean the data first"
            )
        arrays.append(scaled)
    return _Columns(arrays)


def _outside(z: _Columns, low: np.ndarray, high: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """(n, f) flags of values outside their fences, one column at a time (fences per feature, or
    per (cluster, feature) indexed by ``labels``)."""
    flags = np.empty((z.n, len(z.arrays)), dtype=bool)
    for j, values in enumerate(z.arrays):
        lo, hi = (low[j], high[j]) if labels is None else (low[labels, j], high[labels, j])
        np.less(values, lo, out=flags[:, j])
        flags[:, j] |= values > hi
    return flags


def _sample(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= size else np.sort(rng.choice(n, size=size, replace=False))


class LocalOutlierBackend:
    """The outlier guard's numbers over in-memory columns (``outlier_guard.OutlierBackend``).

    The flags of the fences counted last are kept, so flagging the rows with the fences the
    guard settles on costs no second pass.
    """

    def __init__(self, frame: pd.DataFrame, config: PipelineConfig) -> None:
        self.config = config
        # Outlier features are a subset of the features (config validates it); clusters use them all.
        self.z_all = _transformed(frame, config.features, set(config.transform.log1p_columns))
        self.z = self.z_all.subset([config.features.index(c) for c in outlier_features(config)])
        self.labels: np.ndarray | None = None
        self._last: tuple[Fences, np.ndarray] | None = None

    def quartiles(self) -> tuple[np.ndarray, np.ndarray]:
        # column by column: the same quartiles as axis=0, without a partitioned copy of the whole matrix
        q1, q3 = np.array([np.percentile(values, [25, 75]) for values in self.z.arrays]).T
        return q1, q3

    def flags(self, fences: Fences) -> np.ndarray:
        """(n, f) flags of values outside ``fences`` (per cluster: each row's own cluster's)."""
        if self._last is not None and self._last[0] is fences:
            return self._last[1]
        if fences.per_cluster and self.labels is None:
            raise ValueError("per-cluster fences need provisional_clusters() first")
        flags = _outside(self.z, fences.low, fences.high, self.labels if fences.per_cluster else None)
        self._last = (fences, flags)
        return flags

    def count_outside(self, fences: Fences) -> OutsideCounts:
        flags = self.flags(fences)
        return OutsideCounts(int(flags.any(axis=1).sum()), flags.sum(axis=0))

    def provisional_clusters(self) -> dict[str, Any]:
        self.labels, facts = _provisional_labels(self.z_all, self.config)
        return facts

    def cluster_counts(self, fences: Fences) -> ClusterCounts:
        if self.labels is None:
            raise ValueError("cluster_counts needs provisional_clusters() first")
        flags = self.flags(fences)
        k = int(fences.low.shape[0]) if fences.per_cluster else 0
        sizes = np.bincount(self.labels, minlength=k)
        flagged = np.bincount(self.labels[flags.any(axis=1)], minlength=len(sizes))
        return ClusterCounts(sizes, flagged, flags.sum(axis=0))

    def cluster_quartiles(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        values = pd.DataFrame(dict(enumerate(self.z.arrays)), copy=False)
        quartiles = values.groupby(self.labels).quantile([0.25, 0.75])  # one pass: (cluster, q) rows
        q1, q3 = (quartiles.xs(q, level=1).reindex(range(k)).to_numpy() for q in (0.25, 0.75))
        return q1, q3


def _provisional_labels(z: _Columns, config: PipelineConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """Cluster once, cheaply: standardise, k by silhouette on a small sample, fit on a sample,
    predict all; clusters too small to be segments are dissolved into the nearest others."""
    seed = config.model.random_state
    rng = np.random.default_rng(seed)
    n = z.n
    scaler = StandardScaler()  # fitted block by block; rows are standardised when used, never all at once
    for start in range(0, n, ROW_BLOCK):
        scaler.partial_fit(z.rows(slice(start, start + ROW_BLOCK)))
    sample = np.empty((0, 0)) if config.k is not None else scaler.transform(z.rows(_sample(n, PROVISIONAL_K_SAMPLE, rng)))
    k, silhouettes = choose_provisional_k(sample, config, n)
    if k == 1:
        return np.zeros(n, dtype=np.int32), provisional_facts(k, silhouettes)
    fit_rows = scaler.transform(z.rows(_sample(n, PROVISIONAL_FIT_ROWS, rng)))
    with threads_for(len(fit_rows)):
        model = KMeans(k, n_init=PROVISIONAL_N_INIT, random_state=seed).fit(fit_rows)
    dissolved = dissolved_clusters(np.bincount(model.labels_, minlength=k))
    # block by block: predict's scratch stays small; int32 labels, no int64 copy
    labels = map_row_blocks(lambda start, stop: model.predict(scaler.transform(z.rows(slice(start, stop)))), n)
    moved = np.isin(labels, dissolved)
    if moved.any() and len(dissolved) < k:
        distance = model.transform(scaler.transform(z.rows(moved)))
        distance[:, dissolved] = np.inf
        labels[moved] = distance.argmin(axis=1)
    return labels, provisional_facts(k, silhouettes, dissolved.tolist())


def detect_outliers(frame: pd.DataFrame, config: PipelineConfig) -> OutlierResult:
    """Flag IQR outliers, guarding against fences that would remove whole segments.

    ``frame`` holds the cleaned rows with every configured feature as a number. The provisional
    clustering (segment-aware fences) uses all features; fences apply to the outlier features.
    Raises OutlierPolicyError under ``on_excess: fail``. A config still at ``transform.log1p: auto``
    (a direct call; the pipeline passes the run's resolved one) is resolved on ``frame``.
    """
    if config.transform.log1p_auto:
        config, _ = resolve_log1p(config, frame)
    n = len(frame)
    idle = idle_report(config, n)
    if idle is not None:
        none = pd.Categorical.from_codes(np.zeros(n, dtype=np.int32), categories=[""])
        return OutlierResult(np.zeros(n, dtype=bool), pd.Series(none, index=frame.index), idle)
    backend = LocalOutlierBackend(frame, config)
    decision = decide_outliers(backend, config, n)
    assert decision.fences is not None  # enabled, with rows: the guard always settles on fences
    flags = backend.flags(decision.fences)
    reasons = pd.Series(flag_labels(flags, outlier_features(config), prefix="outlier:"), index=frame.index)
    return OutlierResult(flags.any(axis=1), reasons, decision.report)
