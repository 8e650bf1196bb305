"""Stable segment ids across retrains, and who moved where.

Why: K-Means numbers its clusters arbitrarily, so a retrain can call last month's "VIP" cluster 3
and this month's 0. Downstream tables, dashboards and CRM campaigns key on the segment id, so a
new model's clusters are matched to the old ones by centroid position (Hungarian assignment,
``scipy.optimize.linear_sum_assignment``) and inherit their ids. Clusters with no counterpart get
fresh ids; ids of vanished clusters are simply not used.

Centroids are compared in the ORIGINAL feature space (per-segment means of the raw features, see
:func:`centroids_in_feature_space`), not in the model's transformed/PCA space: the transform is
refitted on every retrain, so its coordinates are not comparable between models, while raw
feature means are. Each feature is divided by the standard deviation of the pooled (old + new)
centroids so that a feature measured in dollars does not drown one measured in years; distances
(and ``max_distance``) are therefore in units of "typical spread between segment centres".
"""

from __future__ import annotations


import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from segmentation_pipeline.core.naming import segment_sums
from segmentation_pipeline.core.plots import new_figure, png_bytes
from segmentation_pipeline.core.rows import ROW_BLOCK, distinct_labels


def centroids_in_feature_space(
    frame: pd.DataFrame, labels: npt.ArrayLike, features: list[str]
) -> tuple[np.ndarray, list[int]]:
    """Per-segment mean of the raw ``features``, rows sorted by label, plus the sorted labels.

    ``labels`` is positional (row i of ``frame`` has ``labels[i]``), whatever ``frame``'s index.
    """
    label_array = np.asarray(labels)
    if label_array.ndim != 1 or len(label_array) != len(frame):
        raise ValueError(f"labels must be 1-D with one entry per row: got {label_array.shape} for {len(frame)} rows")
    if len(frame) == 0:
        raise ValueError("frame has no rows")
    ids, counts, sums = segment_sums(frame, label_array, features)
    return sums / counts[:, None], [int(label) for label in ids]


def standardised_distances(
    old_centroids: np.ndarray, new_centroids: np.ndarray, *, scale: npt.ArrayLike | None = None
) -> np.ndarray:
    """Euclidean distances old x new after dividing each feature by ``scale``.

    ``scale`` defaults to the per-feature std of all centroids pooled; features on which every
    centroid agrees (std 0) get scale 1 so they contribute nothing rather than dividing by zero.
    """
    old = np.asarray(old_centroids, dtype=float)
    new = np.asarray(new_centroids, dtype=float)
    if old.ndim != 2 or new.ndim != 2 or old.shape[1] != new.shape[1]:
        raise ValueError(f"centroids must be 2-D with the same number of features: {old.shape} vs {new.shape}")
    if scale is None:
        pooled = np.vstack([old, new])
        spread = pooled.std(axis=0) if len(pooled) else np.ones(old.shape[1])
    else:
        spread = np.asarray(scale, dtype=float)
        if spread.shape != (old.shape[1],):
            raise ValueError(f"scale must have one entry per feature ({old.shape[1]}), got shape {spread.shape}")
    spread = np.where(np.isfinite(spread) & (spread > 0), spread, 1.0)
    return cdist(old / spread, new / spread, metric="euclidean")


def match_segments(
    old_centroids: np.ndarray,
    new_centroids: np.ndarray,
    *,
    old_ids: list[int] | None = None,
    max_distance: float | None = None,
    scale: npt.ArrayLike | None = None,
    next_id: int | None = None,
) -> dict[int, int]:
    """Map each new cluster index (row of ``new_centroids``) to a stable segment id.

    Minimum-total-distance one-to-one matching between old and new centroids (standardised, see
    the module docstring). New clusters left over, or matched further than ``max_distance``
    (standardised units), are genuinely new and get fresh ids ``max(old_ids) + 1, ...`` in new
    index order; pass ``next_id`` (e.g. the registry's high-water mark) so that ids retired in an
    earlier retrain are never reused.
    """
    old = np.asarray(old_centroids, dtype=float)
    new = np.asarray(new_centroids, dtype=float)
    if old.ndim == 1 and old.size == 0:
        old = old.reshape(0, new.shape[1] if new.ndim == 2 else 0)
    ids = list(range(len(old))) if old_ids is None else [int(i) for i in old_ids]
    if len(ids) != len(old):
        raise ValueError(f"{len(ids)} old_ids for {len(old)} old centroids")
    if len(set(ids)) != len(ids):
        raise ValueError(f"old_ids are not unique: {ids}")
    if max_distance is not None and max_distance < 0:
        raise ValueError(f"max_distance must be >= 0, got {max_distance}")

    mapping: dict[int, int] = {}
    if len(old) and len(new):
        distances = standardised_distances(old, new, scale=scale)
        old_rows, new_cols = linear_sum_assignment(distances)
        for row, col in zip(old_rows, new_cols):
            if max_distance is None or distances[row, col] <= max_distance:
                mapping[int(col)] = ids[row]

    fresh = max(ids) + 1 if ids else 0
    if next_id is not None:
        fresh = max(fresh, int(next_id))
    for index in range(len(new)):
        if index not in mapping:
            mapping[index] = fresh
            fresh += 1
    return dict(sorted(mapping.items()))


def relabel(labels: npt.ArrayLike, mapping: dict[int, int]) -> np.ndarray:
    """Apply a :func:`match_segments` mapping to raw model labels (unknown labels raise)."""
    label_array = np.asarray(labels)
    unknown = sorted(set(np.unique(label_array).tolist()) - set(mapping))
    if unknown:
        raise ValueError(f"labels {unknown} have no entry in the mapping")
    keys = np.array(sorted(mapping), dtype=np.int64)
    values = np.array([mapping[int(k)] for k in keys], dtype=np.int64)
    return values[np.searchsorted(keys, label_array)]


def migration_matrix(old_labels: npt.ArrayLike, new_labels: npt.ArrayLike) -> pd.DataFrame:
    """Customers per (old segment, new segment) with ``total`` row/column margins.

    Both label arrays must be for the same customers in the same order (align on customer id
    before calling).
    """
    old = np.asarray(old_labels)
    new = np.asarray(new_labels)
    if old.shape != new.shape or old.ndim != 1:
        raise ValueError(f"label arrays must be 1-D and the same length: {old.shape} vs {new.shape}")
    # block-wise bincounts of pair codes: what pd.crosstab gives, without its groupby over every row
    old_values, new_values = distinct_labels(old), distinct_labels(new)
    width = len(new_values)
    counts = np.zeros(len(old_values) * width, dtype=np.int64)
    for start in range(0, len(old), ROW_BLOCK):
        stop = start + ROW_BLOCK
        pair = np.searchsorted(old_values, old[start:stop]) * width + np.searchsorted(new_values, new[start:stop])
        counts += np.bincount(pair, minlength=counts.size)
    body = pd.DataFrame(counts.reshape(len(old_values), width), index=pd.Index(old_values, name="old_segment"),
                        columns=pd.Index(new_values, name="new_segment"))
    body["total"] = body.sum(axis=1)
    body.loc["total"] = body.sum(axis=0)
    return body



def migration_plot(matrix: pd.DataFrame) -> bytes:
    """PNG heatmap of the migration matrix: colour = share of each old segment, text = counts."""
    body = matrix.drop(index="total", columns="total", errors="ignore")
    counts = body.to_numpy(dtype=float)
    row_totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, row_totals, out=np.zeros_like(counts), where=row_totals > 0)
    n_rows, n_cols = counts.shape
    fig = new_figure(figsize=(max(4.0, 0.8 * n_cols + 2.5), max(3.0, 0.6 * n_rows + 1.5)))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    fig.colorbar(image, ax=ax, label="share of old segment")
    ax.set_xticks(np.arange(n_cols), [str(c) for c in body.columns])
    ax.set_yticks(np.arange(n_rows), [str(r) for r in body.index])
    ax.set_xlabel(str(body.columns.name or "new segment"))
    ax.set_ylabel(str(body.index.name or "old segment"))
    ax.set_title("Segment migration")
    if n_rows * n_cols <= 400:
        for i in range(n_rows):
            for j in range(n_cols):
                ax.text(
                    j,
                    i,
                    f"{int(counts[i, j])}\n{shares[i, j]:.0%}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if shares[i, j] > 0.5 else "black",
                )
    fig.tight_layout()
    return png_bytes(fig)
