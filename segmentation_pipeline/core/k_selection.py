"""Choosing the number of segments k from a KMeans sweep.

The rule (applied by :func:`choose_k`):

1. ``knee`` = elbow of WCSS (inertia) against k, found by ``kneed.KneeLocator(curve="convex",
   direction="decreasing")``; it may not exist.
2. ``best`` = the k with the highest silhouette (smallest k on ties; NaN silhouettes ignored).
3. If the knee exists and ``silhouette(knee) >= silhouette(best) - tolerance``, choose the knee
   (the simpler, elbow-justified model costs at most ``tolerance`` of separation); otherwise
   choose ``best``. No knee -> ``best``.
4. A single candidate k (``k`` fixed in the config) is taken as is, ``fixed=True``.

How the sweep measures (:func:`sweep_k`): each k is fitted on the same seeded sample of at most
``max_rows`` rows (inertia is therefore that sample's WCSS); silhouette, Davies-Bouldin and
Calinski-Harabasz are computed on one fixed seeded sample of ``silhouette_sample`` rows drawn
once and reused for every k, so differences between k are not sampling noise.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from segmentation_pipeline.core.modeling import fit_kmeans, sample_indices, silhouette_scores, spread_scores
from segmentation_pipeline.core.threads import threads_for

__all__ = [
    "KSelection",
    "METRIC_COLUMNS",
    "check_k_against_clean_rows",
    "check_k_against_rows",
    "choose_k",
    "count_distinct_rows",
    "distinct_rows_needed",
    "sample_note",
    "sweep_k",
]

METRIC_COLUMNS = ["k", "inertia", "silhouette", "davies_bouldin", "calinski_harabasz"]
# Distinct rows are first counted on this many leading rows; the full count is only needed
# when that prefix is too repetitive to prove there are enough distinct customers.
_DISTINCT_PREFIX = 10_000


@dataclass
class KSelection:
    """The chosen k, why, and the evidence (one metrics row per candidate k)."""

    k: int
    reason: str
    metrics: pd.DataFrame
    knee: int | None
    best_silhouette_k: int
    silhouette_sample_size: int
    fixed: bool
    evidence: pd.DataFrame | None = None  # per-k evidence (core.k_evidence.PUBLIC_COLUMNS), when computed
    structure: str | None = None  # clear / weak / none (core.k_evidence.grade_structure)
    too_small: list[int] = field(default_factory=list)  # k with a segment below min_segment_share


def _n_distinct(X: np.ndarray) -> int:
    return int((~pd.DataFrame(X).duplicated()).sum())


def count_distinct_rows(X: np.ndarray, at_least: int) -> int:
    """Number of distinct rows, computed on a prefix when that already proves ``at_least``."""
    prefix = _n_distinct(X[:_DISTINCT_PREFIX])
    if prefix >= at_least or len(X) <= _DISTINCT_PREFIX:
        return prefix
    return _n_distinct(X)


def check_k_against_rows(k_range: tuple[int, int], k: int | None, distinct: int) -> None:
    """Stop before the sweep when the data cannot hold the asked k: a fixed k needs at most as many
    distinct customers as segments; a swept range needs k <= distinct - 1 (with k = distinct every
    customer is its own segment and the silhouette is undefined). The error names the value and
    the allowed range."""
    if k is not None:
        if k > distinct:
            raise ValueError(
                f"k={k} is larger than the {distinct} distinct customers after cleaning; allowed: 1 <= k <= {distinct}"
            )
        return
    low, high = k_range
    if high > distinct - 1:
        raise ValueError(
            f"k_range {[low, high]} is outside the allowed range [2, {distinct - 1}] "
            f"(2 to the {distinct} distinct customers after cleaning, minus 1)"
        )


def distinct_rows_needed(k_range: tuple[int, int], k: int | None) -> int:
    """Distinct rows that prove every candidate k possible (counting can stop there)."""
    return (k if k is not None else k_range[1]) + 1


def check_k_against_clean_rows(
    columns: dict[str, np.ndarray], fit_mask: np.ndarray, k_range: tuple[int, int], k: int | None
) -> None:
    """:func:`check_k_against_rows` right after cleaning, on the raw feature values of the fit rows
    (``fit_mask``), before any feature or sweep work. Only the first fit rows are read when they
    already hold enough distinct customers; the whole table only when they do not. Fewer than two
    fit rows are left to the feature step's own error (nothing at all can be fitted)."""
    need = distinct_rows_needed(k_range, k)
    positions = np.flatnonzero(fit_mask)
    if len(positions) < 2:
        return

    def distinct(rows: np.ndarray) -> int:
        frame = pd.DataFrame({name: values[rows] for name, values in columns.items()}, copy=False)
        return int((~frame.duplicated()).sum())

    found = distinct(positions[:_DISTINCT_PREFIX])
    if found < need and len(positions) > _DISTINCT_PREFIX:
        found = distinct(positions)
    check_k_against_rows(k_range, k, found)


def sweep_k(
    X: np.ndarray,
    k_values: list[int],
    *,
    n_init: int,
    random_state: int,
    silhouette_sample: int,
    max_rows: int,
    progress: Callable[[int, dict], None] | None = None,
) -> pd.DataFrame:
    """KMeans for every k on the same data; one metrics row per k (see module docstring).

    ``progress(k, {"k", "inertia"})`` is called after each k's fit. The returned frame's ``attrs`` record
    ``n_rows``, ``sweep_rows`` and ``silhouette_sample_size``.
    """
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-dimensional (rows x components), got shape {X.shape}")
    n = len(X)
    if n < 2:
        raise ValueError(f"need at least 2 customers to cluster; X has {n} row(s)")
    ks = [int(k) for k in k_values]
    if not ks:
        raise ValueError("no k values to sweep")
    if min(ks) < 1:
        raise ValueError(f"k values must be >= 1, got {sorted(ks)}")
    if not np.isfinite(X).all():
        raise ValueError("X contains NaN or infinite values; clean the features first")
    k_max = max(ks)
    distinct = count_distinct_rows(X, k_max)
    if distinct < k_max:
        raise ValueError(
            f"k={k_max} needs at least {k_max} distinct customers; "
            f"only {distinct} distinct rows after cleaning"
        )

    fit_idx = sample_indices(n, max_rows, (random_state, 1))
    X_fit = X[fit_idx]
    if len(fit_idx) < n and count_distinct_rows(X_fit, k_max) < k_max:
        X_fit = X  # a repetitive sample cannot hold k_max clusters; all rows can
    sil_idx = sample_indices(n, silhouette_sample, random_state)
    X_sil = X[sil_idx]

    # Fit every k first, on all cores (KMeans is OpenMP); then score all k in one pass over the
    # silhouette sample's distances (silhouette_scores), instead of an n x n matrix held for the
    # whole sweep or one distance pass per k.
    fitted: list[tuple[int, float, np.ndarray]] = []
    with threads_for(len(X_fit)):
        for k in ks:
            model = fit_kmeans(X_fit, k, n_init=n_init, max_iter=300, random_state=random_state, canonical=False)
            fitted.append((k, float(model.inertia_), model.predict(X_sil)))
            if progress is not None:
                progress(k, {"k": k, "inertia": float(model.inertia_)})
    silhouettes = silhouette_scores(X_sil, [labels for _k, _i, labels in fitted])
    rows = [
        {"k": k, "inertia": inertia, "silhouette": silhouette, **spread_scores(X_sil, labels)}
        for (k, inertia, labels), silhouette in zip(fitted, silhouettes, strict=True)
    ]
    metrics = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    metrics.attrs.update(
        {"n_rows": n, "sweep_rows": len(X_fit), "silhouette_sample_size": len(sil_idx)}
    )
    return metrics


def _knee(ks: np.ndarray, inertia: np.ndarray) -> int | None:
    """kneed's elbow of the decreasing, convex WCSS curve, or None (kneed warns when none)."""
    if len(ks) < 3:
        return None  # two points have no elbow
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from kneed import KneeLocator  # imports matplotlib.pyplot: only when a knee is sought

        knee = KneeLocator(ks, inertia, curve="convex", direction="decreasing").knee
    return None if knee is None else int(knee)


def sample_note(metrics: pd.DataFrame) -> str:
    size = metrics.attrs.get("silhouette_sample_size")
    n_rows = metrics.attrs.get("n_rows")
    if size is not None and n_rows is not None and size < n_rows:
        return f"; silhouette on a fixed seeded sample of {size:,} of {n_rows:,} rows"
    return ""


def choose_k(metrics: pd.DataFrame, tolerance: float) -> KSelection:
    """Apply the module's rule to a sweep's metrics (columns :data:`METRIC_COLUMNS`)."""
    missing = [c for c in ("k", "inertia", "silhouette") if c not in metrics.columns]
    if missing:
        raise ValueError(f"metrics lacks columns {missing}")
    if metrics.empty:
        raise ValueError("metrics has no rows; sweep at least one k")
    table = metrics.sort_values("k").reset_index(drop=True)
    ks = table["k"].to_numpy(dtype=int)
    if len(np.unique(ks)) != len(ks):
        raise ValueError(f"metrics has repeated k values: {ks.tolist()}")
    silhouette = table["silhouette"].to_numpy(dtype=float)
    sample_size = int(metrics.attrs.get("silhouette_sample_size", 0))
    note = sample_note(metrics)

    def pick(k: int, reason: str, knee: int | None, best: int, fixed: bool = False) -> KSelection:
        return KSelection(
            k=int(k),
            reason=reason + note,
            metrics=table,
            knee=knee,
            best_silhouette_k=int(best),
            silhouette_sample_size=sample_size,
            fixed=fixed,
        )

    if len(ks) == 1:
        k = int(ks[0])
        return pick(k, f"only one candidate: k={k}", None, k, fixed=True)

    knee = _knee(ks, table["inertia"].to_numpy(dtype=float))
    if np.isnan(silhouette).all():
        k = knee if knee is not None else int(ks[0])
        why = f"knee of WCSS at k={k} (kneed)" if knee is not None else f"no knee; smallest k={k}"
        return pick(k, f"{why}; silhouette undefined for every k", knee, k)

    best = int(ks[int(np.nanargmax(silhouette))])
    s_best = float(silhouette[ks == best][0])
    if knee is None:
        return pick(best, f"no knee in WCSS (kneed found none); best silhouette {s_best:.2f} at k={best}", None, best)
    s_knee = float(silhouette[ks == knee][0])
    if not math.isnan(s_knee) and s_knee >= s_best - tolerance:
        if knee == best:
            reason = f"knee of WCSS at k={knee} (kneed); its silhouette {s_knee:.2f} is also the best"
        else:
            reason = (
                f"knee of WCSS at k={knee} (kneed); silhouette {s_knee:.2f} is within "
                f"{tolerance:g} of the best ({s_best:.2f} at k={best})"
            )
        return pick(knee, reason, knee, best)
    reason = (
        f"best silhouette {s_best:.2f} at k={best}; the WCSS knee at k={knee} (kneed) scores "
        f"{s_knee:.2f}, more than {tolerance:g} below"
    )
    return pick(best, reason, knee, best)
