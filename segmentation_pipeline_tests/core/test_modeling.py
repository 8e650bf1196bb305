"""Model fitting: the served Pipeline matches the parts, canonical ids do not depend on the seed."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.metrics import silhouette_score
from sklearn.pipeline import Pipeline

from segmentation_pipeline.config import load_config
from segmentation_pipeline.core.demo_data import generate_customers
from segmentation_pipeline.core.features import build_features
from segmentation_pipeline.core.modeling import (
    build_model_pipeline,
    canonical_order,
    canonical_relabel,
    canonicalize_kmeans,
    fit_kmeans,
    quality_metrics,
    release_fit_labels,
)


def _blobs(n: int = 3000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10], [10, 10, 10]], dtype=float)
    labels = rng.choice(5, size=n, p=[0.3, 0.25, 0.2, 0.15, 0.1])
    return (centers[labels] + rng.normal(size=(n, 3))).astype(np.float32)


def test_pipeline_predict_on_raw_frame_equals_kmeans_on_transformed() -> None:
    config = load_config("configs/default.yaml")
    frame, planted = generate_customers(3000, seed=3, dirty=False)
    fm = build_features(frame, config, "customer_id")
    kmeans = fit_kmeans(fm.X_fit, 5, n_init=3, max_iter=300, random_state=0)
    model = build_model_pipeline(fm.preprocessor, kmeans)

    expected = kmeans.predict(fm.preprocessor.transform(frame[config.features]))
    np.testing.assert_array_equal(model.predict(frame), expected)
    np.testing.assert_array_equal(expected, kmeans.labels_)
    # the raw frame may carry ids/categoricals in any column order
    reordered = frame[["gender", "spending_score", "customer_id", "annual_income", "age", "updated_at"]]
    np.testing.assert_array_equal(model.predict(reordered), expected)
    # it survives pickling (how MLflow stores it)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(model)).predict(frame), expected)


def test_canonical_ids_do_not_depend_on_random_state() -> None:
    X = _blobs()
    canonical = [fit_kmeans(X, 5, n_init=1, max_iter=300, random_state=seed) for seed in range(6)]
    raw = [fit_kmeans(X, 5, n_init=1, max_iter=300, random_state=seed, canonical=False) for seed in range(6)]
    # the test is only meaningful if KMeans' own numbering does change with the seed
    assert any(not np.array_equal(raw[0].labels_, other.labels_) for other in raw[1:])
    for model in canonical[1:]:
        np.testing.assert_array_equal(model.labels_, canonical[0].labels_)
        np.testing.assert_array_equal(model.predict(X), canonical[0].predict(X))
        np.testing.assert_allclose(model.cluster_centers_, canonical[0].cluster_centers_, atol=1e-4)
    sizes = np.bincount(canonical[0].labels_)
    assert (np.diff(sizes) <= 0).all()  # segment 0 is the largest


def test_canonical_relabel_mapping_matches_canonical_model() -> None:
    X = _blobs(seed=1)
    models = [fit_kmeans(X, 5, n_init=1, max_iter=300, random_state=seed, canonical=False) for seed in (3, 4)]
    canonical_labels = []
    for raw in models:
        mapping = canonical_relabel(raw)
        assert sorted(mapping.tolist()) == [0, 1, 2, 3, 4]  # a permutation: same groups, renamed
        labels = mapping[raw.predict(X)]
        canonical = canonicalize_kmeans(raw)
        np.testing.assert_array_equal(canonical.predict(X), labels)
        np.testing.assert_array_equal(canonical.labels_, labels)
        assert canonical.inertia_ == raw.inertia_
        assert canonical is not raw and canonical.cluster_centers_ is not raw.cluster_centers_
        canonical_labels.append(labels)
        # on an already canonical model the mapping is the identity
        np.testing.assert_array_equal(canonical_relabel(canonical), np.arange(5))
    np.testing.assert_array_equal(canonical_labels[0], canonical_labels[1])


def test_quality_metrics() -> None:
    X = _blobs(n=4000, seed=2)
    model = fit_kmeans(X, 5, n_init=2, max_iter=300, random_state=0)
    metrics = quality_metrics(X, model.labels_, sample=1500, random_state=0)
    assert set(metrics) >= {"silhouette", "davies_bouldin", "calinski_harabasz", "silhouette_sample_size"}
    assert metrics["silhouette_sample_size"] == 1500
    assert abs(metrics["silhouette"] - silhouette_score(X, model.labels_)) <= 0.02
    assert metrics["davies_bouldin"] < 0.5 and metrics["calinski_harabasz"] > 1000
    single = quality_metrics(X, np.zeros(len(X), dtype=int), sample=500, random_state=0)
    assert np.isnan(single["silhouette"]) and np.isnan(single["davies_bouldin"])


def test_fit_kmeans_rejects_impossible_k() -> None:
    with pytest.raises(ValueError, match="k=5 needs at least 5 rows"):
        fit_kmeans(np.zeros((3, 2)), 5, n_init=1, max_iter=10, random_state=0)


def test_spread_scores_match_sklearn_in_blocks() -> None:
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score

    from segmentation_pipeline.core.modeling import spread_scores

    rng = np.random.default_rng(5)
    X = rng.normal(size=(1001, 3)).astype(np.float32)
    X[:300] += 4.0
    gaps = np.where(X[:, 0] > 2, 7, rng.integers(0, 3, 1001))  # ids with gaps (segment ids can be sparse)
    negative = np.where(X[:, 1] > 0, -1, 2)  # labels that are not codes
    duplicated = np.r_[np.zeros(500, int), np.ones(501, int)]
    X_dup = np.repeat(X[:2].astype(np.float64), [500, 501], axis=0)  # zero scatter in both clusters: DB is 0
    for data, labels in ((X, gaps), (X, negative), (X, (X[:, 2] > 0).astype(int)), (X_dup, duplicated)):
        got = spread_scores(data, labels, block_rows=128)  # several blocks, the last one partial
        np.testing.assert_allclose(got["davies_bouldin"], davies_bouldin_score(data, labels), rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(got["calinski_harabasz"], calinski_harabasz_score(data, labels), rtol=1e-5)
    assert np.isnan(spread_scores(X, np.zeros(1001, int))["davies_bouldin"])  # one cluster: undefined


def test_silhouette_scores_match_sklearn_for_every_labeling_at_once() -> None:
    from segmentation_pipeline.core.modeling import silhouette_scores

    rng = np.random.default_rng(4)
    X = rng.normal(size=(700, 3))
    X[:250] += 3.0
    singleton = np.r_[np.zeros(300, int), np.ones(399, int), [2]]  # a cluster of one scores 0
    labelings = [rng.integers(0, 2, 700), (X[:, 0] > 1.5).astype(int), rng.integers(0, 6, 700), singleton]
    got = silhouette_scores(X, labelings, block_rows=64)  # several blocks, last one partial
    want = [silhouette_score(X, labels) for labels in labelings]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    assert np.isnan(silhouette_scores(X, [np.zeros(700, int)])[0])  # one cluster: undefined
    with pytest.raises(ValueError, match="699 labels for 700 rows"):
        silhouette_scores(X, [np.zeros(699, int)])


def test_served_model_keeps_no_label_per_fit_row_and_the_same_canonical_order() -> None:
    rng = np.random.default_rng(5)
    X = np.concatenate([rng.normal(c, 0.3, size=(n, 2)) for c, n in ((0, 400), (5, 250), (10, 100))])
    kmeans = fit_kmeans(X, 3, n_init=2, max_iter=100, random_state=0, canonical=False)
    served = build_model_pipeline(Pipeline([("identity", "passthrough")]), kmeans)[-1]
    assert len(served.labels_) == 6 < len(kmeans.labels_)  # k(k+1)/2 surrogate labels, whatever n is
    np.testing.assert_array_equal(canonical_order(served), canonical_order(kmeans))
    np.testing.assert_array_equal(served.predict(X), kmeans.predict(X))
    assert len(kmeans.labels_) == len(X)  # the fitted model itself is left alone


def test_released_fit_labels_keep_the_canonical_order_predictions_and_served_model() -> None:
    X = _blobs(seed=2)
    model = fit_kmeans(X, 5, n_init=1, max_iter=300, random_state=7, canonical=False)
    order, labels = canonical_order(model), model.predict(X)
    served = build_model_pipeline(Pipeline([("identity", "passthrough")]), model)[-1].labels_
    release_fit_labels(model)
    assert len(model.labels_) < len(X)
    np.testing.assert_array_equal(canonical_order(model), order)
    np.testing.assert_array_equal(model.predict(X), labels)
    np.testing.assert_array_equal(build_model_pipeline(Pipeline([("identity", "passthrough")]), model)[-1].labels_, served)


def test_restarts_on_a_sample_then_one_refinement_on_every_row_find_the_full_restarts_optimum(monkeypatch) -> None:
    from sklearn.cluster import KMeans
    from sklearn.datasets import make_blobs
    from sklearn.metrics import adjusted_rand_score

    from segmentation_pipeline.core import modeling

    X, planted = make_blobs(30_000, 4, centers=[[0, 0, 0, 0], [6, 0, 0, 0], [0, 6, 0, 0], [6, 6, 6, 0], [0, 0, 6, 6]],
                            cluster_std=1.2, random_state=3)
    fits: list[tuple[int, int]] = []  # (rows, n_init) of every KMeans fit

    class Counting(KMeans):
        def fit(self, X, y=None, sample_weight=None):  # noqa: N803 - scikit-learn's signature
            fits.append((len(X), self.n_init))
            return super().fit(X, y, sample_weight)

    monkeypatch.setattr(modeling, "KMeans", Counting)
    seeded = fit_kmeans(X, 5, n_init=10, max_iter=300, random_state=0, restart_rows=5_000)
    assert fits == [(5_000, 10), (30_000, 1)]  # ten restarts on the sample, one run on every row
    fits.clear()
    full = fit_kmeans(X, 5, n_init=10, max_iter=300, random_state=0)
    assert fits == [(30_000, 10)]
    assert seeded.inertia_ == pytest.approx(full.inertia_, rel=1e-3)
    assert adjusted_rand_score(planted, seeded.labels_) == pytest.approx(adjusted_rand_score(planted, full.labels_))
    # canonical ids either way: the same segment gets the same id
    assert adjusted_rand_score(seeded.labels_, full.labels_) == 1.0 and (seeded.labels_ == full.labels_).all()

    fits.clear()  # a table under twice the sample: every restart on every row, as before
    fit_kmeans(X[:9_000], 5, n_init=10, max_iter=300, random_state=0, restart_rows=5_000)
    assert fits == [(9_000, 10)]
