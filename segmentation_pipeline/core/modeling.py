"""KMeans fitting, the served model Pipeline, quality metrics and canonical cluster ids.

Canonical ids: KMeans numbers clusters in the order its random init happened to find them, so the
same customers can be "segment 2" in one run and "segment 4" in the next. The canonical order is
descending cluster size on the fit rows (ties: lexicographic centroid order), so ids depend only
on the partition, not on the seed; segment 0 is the largest.

* :func:`canonical_relabel` returns the mapping array ``mapping[kmeans_label] = canonical_id``
  (apply it as ``mapping[kmeans.predict(X)]``);
* :func:`canonicalize_kmeans` returns a KMeans copy whose own labels already are canonical;
  :func:`fit_kmeans` applies it by default, after which ``canonical_relabel`` is the identity.

The other algorithms (:mod:`~segmentation_pipeline.core.algorithms`) are fitted by
:func:`fit_clustering` and keep their own numbering (a Gaussian mixture or a bisection tree cannot
be renumbered by permuting centres); :func:`canonical_mapping` gives their ``raw label -> canonical
id`` from the centres (a mixture's means) and the cluster sizes, by the same rule.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
from scipy.spatial.distance import cdist
from sklearn.cluster import KMeans
from sklearn.pipeline import Pipeline

from segmentation_pipeline.core.algorithms import (
    FitSettings,
    algorithm_of,
    build_estimator,
    cluster_centres,
)
from segmentation_pipeline.core.rows import ROW_BLOCK, distinct_labels, label_codes
from segmentation_pipeline.core.threads import threads_for

__all__ = [
    "build_model_pipeline",
    "canonical_mapping",
    "canonical_order",
    "canonical_relabel",
    "canonicalize_kmeans",
    "cluster_scores",
    "fit_clustering",
    "fit_kmeans",
    "fit_metrics",
    "quality_metrics",
    "release_fit_labels",
    "sample_indices",
    "order_by_size",
    "silhouette_scores",
    "spread_from_cluster_stats",
    "spread_scores",
]

_DISTANCE_BLOCK_ROWS = 256  # distance rows per block: ~20 MB float64 scratch for a 10k sample


def sample_indices(n: int, size: int, seed: int | Sequence[int]) -> np.ndarray:
    """Sorted, seeded row sample (all rows when ``n <= size``): same seed, same rows, every time."""
    if n <= size:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=size, replace=False))


def spread_scores(X: np.ndarray, labels: np.ndarray, *, block_rows: int = ROW_BLOCK) -> dict[str, float]:
    """Davies-Bouldin and Calinski-Harabasz, as scikit-learn defines them, in two passes over
    row blocks: O(n k) time and O(block) scratch. scikit-learn's scorers copy every cluster and
    its distances (~85 B per row together), which at millions of rows is the run's peak memory.
    NaN when undefined (< 2 or > n - 1 clusters).
    """
    codes, _ = label_codes(labels)
    n, d = X.shape
    counts = np.bincount(codes).astype(np.float64)
    if not 2 <= int((counts > 0).sum()) <= n - 1:
        return {"davies_bouldin": float("nan"), "calinski_harabasz": float("nan")}
    k_max = len(counts)
    sums = np.zeros((k_max, d))
    for start in range(0, n, block_rows):
        block, code = np.asarray(X[start : start + block_rows], dtype=np.float64), codes[start : start + block_rows]
        for j in range(d):
            sums[:, j] += np.bincount(code, weights=block[:, j], minlength=k_max)
    present = counts > 0
    centroids = sums[present] / counts[present, None]
    k = len(centroids)
    position = np.cumsum(present) - 1  # label code -> row of ``centroids``
    intra_sq, intra_dist = np.zeros(k), np.zeros(k)
    for start in range(0, n, block_rows):
        block, code = np.asarray(X[start : start + block_rows], dtype=np.float64), position[codes[start : start + block_rows]]
        squared = ((block - centroids[code]) ** 2).sum(axis=1)
        intra_sq += np.bincount(code, weights=squared, minlength=k)
        intra_dist += np.bincount(code, weights=np.sqrt(squared), minlength=k)
    return spread_from_cluster_stats(counts[present], centroids, intra_sq, intra_dist)


def spread_from_cluster_stats(
    sizes: np.ndarray, centroids: np.ndarray, intra_sq: np.ndarray, intra_dist: np.ndarray
) -> dict[str, float]:
    """Davies-Bouldin and Calinski-Harabasz from per-cluster statistics (rows, centroid, sum of
    squared and of plain distances to the centroid): one formula for every engine, whoever
    computed the sums (numpy blocks here, a distributed aggregation elsewhere). NaN when undefined.
    """
    sizes = np.asarray(sizes, dtype=np.float64)
    centroids = np.asarray(centroids, dtype=np.float64)
    n, k = float(sizes.sum()), len(sizes)
    if not 2 <= k <= n - 1:
        return {"davies_bouldin": float("nan"), "calinski_harabasz": float("nan")}
    mean = (sizes[:, None] * centroids).sum(axis=0) / n
    extra = float((sizes * ((centroids - mean) ** 2).sum(axis=1)).sum())
    intra = float(np.sum(intra_sq))
    calinski = 1.0 if intra == 0 else extra * (n - k) / (intra * (k - 1))
    scatter = np.asarray(intra_dist, dtype=np.float64) / sizes
    between = cdist(centroids, centroids)
    if np.allclose(scatter, 0) or np.allclose(between, 0):
        davies = 0.0
    else:
        between[between == 0] = np.inf
        davies = float(np.max((scatter[:, None] + scatter[None, :]) / between, axis=1).mean())
    return {"davies_bouldin": davies, "calinski_harabasz": float(calinski)}


def cluster_scores(X: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Silhouette, Davies-Bouldin and Calinski-Harabasz on these rows; NaN when undefined.

    NaN (rather than an exception) for e.g. k=1 or a sample where every row fell in one cluster,
    so a sweep keeps going. To score many labelings of the same rows, :func:`silhouette_scores`
    pays for the distances once.
    """
    labels = np.asarray(labels)
    return {"silhouette": silhouette_scores(X, [labels])[0], **spread_scores(X, labels)}


def silhouette_scores(
    X: np.ndarray, labelings: Sequence[np.ndarray], *, block_rows: int = _DISTANCE_BLOCK_ROWS
) -> list[float]:
    """Mean silhouette of each labeling of the same rows, in one pass over the pairwise distances.

    Why not sklearn's ``silhouette_score`` per labeling: it recomputes (or needs a stored n x n
    matrix for) all distances every call. Here each block of distance rows is computed once and
    reduced to per-cluster distance sums for every labeling at once with one matrix product
    against the stacked one-hot labels, so the memory is one block (``block_rows`` x n) and the
    cost one distance pass, however many k are scored. Same definition as sklearn (mean of
    (b - a) / max(a, b), 0 for a point alone in its cluster); NaN where undefined (< 2 or
    > n - 1 clusters).
    """
    points = np.asarray(X, dtype=np.float64)
    n = len(points)
    codes, sizes, offsets, scored = [], [], [0], []
    for labels in labelings:
        labels = np.asarray(labels)
        if len(labels) != n:
            raise ValueError(f"a labeling has {len(labels)} labels for {n} rows")
        _, code = np.unique(labels, return_inverse=True)
        count = np.bincount(code)
        codes.append(code)
        sizes.append(count)
        offsets.append(offsets[-1] + len(count))
        scored.append(2 <= len(count) <= n - 1)
    if not any(scored):
        return [float("nan")] * len(codes)
    onehot = np.zeros((n, offsets[-1]), dtype=np.float64)
    rows = np.arange(n)
    for code, start in zip(codes, offsets, strict=False):
        onehot[rows, start + code] = 1.0
    totals = np.zeros(len(codes))
    for start in range(0, n, block_rows):
        stop = min(start + block_rows, n)
        sums = cdist(points[start:stop], points) @ onehot  # (block, all clusters of all labelings)
        for i, (code, count) in enumerate(zip(codes, sizes, strict=True)):
            if not scored[i]:
                continue
            own = code[start:stop]
            mean = sums[:, offsets[i] : offsets[i + 1]] / count
            a = sums[np.arange(stop - start), offsets[i] + own] / np.maximum(count[own] - 1, 1)
            mean[np.arange(stop - start), own] = np.inf
            b = mean.min(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                s = np.where(count[own] > 1, (b - a) / np.maximum(a, b), 0.0)
            totals[i] += float(np.nan_to_num(s).sum())
    return [float(t / n) if ok else float("nan") for t, ok in zip(totals, scored, strict=True)]


def fit_kmeans(
    X_fit: np.ndarray,
    k: int,
    *,
    n_init: int,
    max_iter: int,
    random_state: int,
    canonical: bool = True,
    overwrite_input: bool = False,
    restart_rows: int | None = None,
) -> KMeans:
    """Lloyd KMeans with k-means++ init; ids made canonical (see module docstring) by default.

    ``overwrite_input=True`` lets scikit-learn centre ``X_fit`` in place (and shift it back)
    instead of copying it: for callers whose ``X_fit`` is already a throwaway copy.

    ``restart_rows``: with more than twice as many fit rows, the ``n_init`` k-means++ restarts run
    on a seeded sample of that many rows, and only the best of them is refined by Lloyd on every
    row (restarts on a subsample, refinement on all: Bradley & Fayyad 1998). A restart is there to
    escape a poor start, which a sample of 100,000 rows shows as well as millions do; the model is
    still fitted to every row, for about one full-data run instead of ``n_init``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(X_fit) < k:
        raise ValueError(f"k={k} needs at least {k} rows to fit; got {len(X_fit)}")
    init: str | np.ndarray = "k-means++"
    runs = n_init
    if restart_rows is not None and len(X_fit) > 2 * restart_rows and n_init > 1:
        sample = X_fit[sample_indices(len(X_fit), restart_rows, (random_state, 5))]
        with threads_for(len(sample)):
            best = KMeans(
                n_clusters=k, init="k-means++", algorithm="lloyd", n_init=n_init, max_iter=max_iter,
                random_state=random_state,
            ).fit(sample)
        init, runs = best.cluster_centers_, 1
        del sample
    with threads_for(len(X_fit)):
        model = KMeans(
            n_clusters=k,
            init=init,
            algorithm="lloyd",
            n_init=runs,
            max_iter=max_iter,
            random_state=random_state,
            copy_x=not overwrite_input,
        ).fit(X_fit)
    return canonicalize_kmeans(model) if canonical else model


def fit_clustering(
    X_fit: np.ndarray,
    k: int,
    algorithm: str,
    *,
    n_init: int,
    max_iter: int,
    random_state: int,
    overwrite_input: bool = False,
    restart_rows: int | None = None,
) -> object:
    """The final model of ``algorithm`` (core.algorithms) fitted on ``X_fit``: KMeans through
    :func:`fit_kmeans` (canonical ids; ``restart_rows`` as there), the others as fitted; use
    :func:`canonical_mapping` on them."""
    if algorithm == "kmeans":
        return fit_kmeans(
            X_fit, k, n_init=n_init, max_iter=max_iter, random_state=random_state, overwrite_input=overwrite_input,
            restart_rows=restart_rows,
        )
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(X_fit) < k:
        raise ValueError(f"k={k} needs at least {k} rows to fit; got {len(X_fit)}")
    settings = FitSettings(n_init=n_init, max_iter=max_iter, random_state=random_state, copy_x=not overwrite_input)
    with threads_for(len(X_fit)):
        return build_estimator(algorithm, k, settings).fit(X_fit)


def fit_metrics(estimator: object, X: np.ndarray, fit_mask: np.ndarray) -> dict[str, float]:
    """What the algorithm itself reports about its fit: ``inertia`` (WCSS) and ``n_iter`` where it
    has them; a mixture's ``bic`` on the fit rows (``X[fit_mask]``, copied only then) and its
    ``converged`` flag instead of inertia."""
    out: dict[str, float] = {}
    inertia = getattr(estimator, "inertia_", None)
    if inertia is not None:
        out["inertia"] = float(inertia)
    n_iter = getattr(estimator, "n_iter_", None)
    if n_iter is not None:
        out["n_iter"] = float(n_iter)
    bic = getattr(estimator, "bic", None)
    if callable(bic):
        out["bic"] = float(bic(X[fit_mask]))
        out["converged"] = float(bool(getattr(estimator, "converged_", False)))
    return out


def canonical_mapping(estimator: object, fit_labels: np.ndarray) -> np.ndarray:
    """``mapping[raw_label] = canonical_id`` for any registered algorithm, from its centres (a
    mixture's means) and the sizes of ``fit_labels`` (its labels of the fit rows)."""
    centres = cluster_centres(estimator)
    order = order_by_size(centres, np.bincount(np.asarray(fit_labels), minlength=len(centres)))
    mapping = np.empty(len(order), dtype=np.int64)
    mapping[order] = np.arange(len(order))
    return mapping


def order_by_size(centers: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The canonical rule on its own: ``order[new_id] == old_id`` by size desc, then centroid
    coordinates; for engines that know the cluster sizes without a label per row."""
    centers = np.asarray(centers, dtype=np.float64)
    # np.lexsort sorts by the last key first: -size, then centroid coordinates left to right.
    keys = [centers[:, j] for j in range(centers.shape[1] - 1, -1, -1)] + [-np.asarray(sizes)]
    return np.lexsort(keys)


def canonical_order(kmeans: KMeans) -> np.ndarray:
    """Old cluster ids in canonical order: ``order[new_id] == old_id`` (size desc, then centroid).

    For any estimator that keeps ``labels_`` (every registered algorithm but ``gmm``)."""
    centers = cluster_centres(kmeans)
    return order_by_size(centers, np.bincount(kmeans.labels_, minlength=len(centers)))


def canonical_relabel(kmeans: KMeans) -> np.ndarray:
    """Mapping array ``mapping[kmeans_label] = canonical_id`` for a fitted KMeans (module docstring)."""
    order = canonical_order(kmeans)
    mapping = np.empty(len(order), dtype=np.int64)
    mapping[order] = np.arange(len(order))  # invert the permutation
    return mapping


def canonicalize_kmeans(kmeans: KMeans) -> KMeans:
    """A copy of a fitted KMeans whose cluster ids are canonical; the input is not modified.

    Only ``cluster_centers_`` drives ``predict``/``transform``, so permuting it (and ``labels_``)
    yields an ordinary KMeans whose ids are stable across seeds.
    """
    mapping = canonical_relabel(kmeans)
    order = np.argsort(mapping)  # canonical id -> old id
    labels = kmeans.labels_
    relabeled = copy.copy(kmeans)  # shallow: no deep copy of one label per fit row
    relabeled.cluster_centers_ = np.ascontiguousarray(kmeans.cluster_centers_[order])
    relabeled.labels_ = mapping[labels].astype(labels.dtype, copy=False)
    return relabeled


def surrogate_labels(order: np.ndarray) -> np.ndarray:
    """``labels_`` with strictly decreasing counts in ``order`` (``order[0]`` most frequent), so
    :func:`canonical_order` of a model holding them is ``order``: a few bytes instead of a label
    per fit row."""
    k = len(order)
    return np.repeat(np.asarray(order, dtype=np.int32), np.arange(k, 0, -1))


def release_fit_labels(estimator: object) -> None:
    """Replace a fitted estimator's ``labels_`` (one int per fit row) by the few-byte surrogate
    that keeps :func:`canonical_order` the same, in place: every later use of the model (its
    predict, the served copy of :func:`build_model_pipeline`) reads the centres and that order,
    and the labels held 4 bytes a fit row until the model was registered."""
    if getattr(estimator, "labels_", None) is not None:
        estimator.labels_ = surrogate_labels(canonical_order(estimator))  # type: ignore[attr-defined]


def build_model_pipeline(preprocessor: Pipeline, estimator: object) -> Pipeline:
    """The served model: raw feature DataFrame in, raw cluster labels out, from already-fitted steps.

    The last step is named after the algorithm (``kmeans``, ``gmm``, ...) and assigns by the
    estimator's own ``predict``. It carries no training label per fit row (``labels_`` made the
    registered model grow with the table: 12 MB at 3M rows); a surrogate keeps
    :func:`canonical_order` the same. A Gaussian mixture keeps no labels at all.
    """
    served = copy.copy(estimator)
    if getattr(estimator, "labels_", None) is not None:
        served.labels_ = surrogate_labels(canonical_order(estimator))  # type: ignore[arg-type]
    return Pipeline([("preprocess", preprocessor), (algorithm_of(estimator), served)])


def quality_metrics(
    X: np.ndarray, labels: np.ndarray, *, sample: int, random_state: int
) -> dict[str, float]:
    """Final-model scores: silhouette on a seeded sample (O(n^2)), DB and CH on all rows (O(n)).

    The silhouette sample uses the same seed rule as the k sweep, so for the same X the rows match.
    Also returns ``silhouette_sample_size`` and ``n_clusters`` for the record.
    """
    labels = np.asarray(labels)
    if len(labels) != len(X):
        raise ValueError(f"labels has {len(labels)} entries for {len(X)} rows")
    idx = sample_indices(len(X), sample, random_state)
    X_sample = X[idx]
    [silhouette] = silhouette_scores(X_sample, [labels[idx]])
    return {
        "silhouette": silhouette,
        **spread_scores(X, labels),
        "silhouette_sample_size": float(len(idx)),
        "n_clusters": float(len(distinct_labels(labels))),
    }
