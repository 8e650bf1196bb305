"""Every registered algorithm on small planted data: groups recovered, canonical ids that do not
depend on row order, the served model assigning by the estimator's own predict, and the k rule
that ``gmm`` uses when k is not fixed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from segmentation_pipeline.config import ConfigError, ModelConfig, load_config
from segmentation_pipeline.core.algorithms import (
    ALGORITHM_NAMES,
    FitSettings,
    algorithm_of,
    build_estimator,
    check_algorithm,
    cluster_centres,
)
from segmentation_pipeline.core.k_evidence import select_k
from segmentation_pipeline.core.modeling import (
    build_model_pipeline,
    canonical_mapping,
    fit_clustering,
)
from segmentation_pipeline.core.promotion import bootstrap_stability

FAST = {"n_init": 2, "max_iter": 100, "random_state": 0}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with threadpool_limits(1):
        yield


def _planted(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Four separated groups of unequal size (so the canonical size order is unambiguous)."""
    X, y = make_blobs(n_samples=[300, 200, 120, 60], n_features=3, cluster_std=0.7, center_box=(-12, 12),
                      random_state=seed)
    return StandardScaler().fit_transform(X), y


def test_the_registry_is_the_configs_allowed_list() -> None:
    assert ALGORITHM_NAMES == ("kmeans", "gmm", "minibatch_kmeans", "bisecting_kmeans")
    assert ModelConfig().algorithm == "kmeans"
    for name in ALGORITHM_NAMES:
        assert ModelConfig(algorithm=name).algorithm == name
        assert algorithm_of(build_estimator(name, 3, FitSettings())) == name


def test_an_unknown_algorithm_names_the_value_and_the_allowed_names() -> None:
    with pytest.raises(ValueError, match=r"'dbscan' is not known; allowed: kmeans, gmm, minibatch_kmeans, bisecting_kmeans"):
        check_algorithm("dbscan")
    with pytest.raises(ConfigError, match=r"model\.algorithm 'k-means' is not known; allowed: kmeans, gmm"):
        load_config("configs/default.yaml", overrides={"model.algorithm": "k-means"})


@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
def test_each_algorithm_recovers_planted_groups(algorithm: str) -> None:
    X, y = _planted()
    model = fit_clustering(X, 4, algorithm, **FAST)
    labels = model.predict(X)
    assert adjusted_rand_score(y, labels) >= 0.95, algorithm
    assert cluster_centres(model).shape == (4, 3)


@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
def test_canonical_ids_survive_a_retrain_on_shuffled_rows(algorithm: str) -> None:
    X, _ = _planted()
    first = fit_clustering(X, 4, algorithm, **FAST)
    ids = canonical_mapping(first, first.predict(X))[first.predict(X)]
    order = np.random.default_rng(1).permutation(len(X))
    again = fit_clustering(X[order], 4, algorithm, **{**FAST, "random_state": 5})
    labels_again = again.predict(X)
    ids_again = canonical_mapping(again, labels_again[order])[labels_again]  # sizes on its own fit rows
    np.testing.assert_array_equal(ids, ids_again)
    # canonical order: segment 0 is the largest, sizes never increase with the id
    sizes = np.bincount(ids)
    assert (np.diff(sizes) <= 0).all(), sizes


@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
def test_the_served_pipeline_predicts_with_the_algorithms_own_model(algorithm: str) -> None:
    X, _ = _planted()
    model = fit_clustering(X, 4, algorithm, **FAST)
    served = build_model_pipeline(Pipeline([("identity", "passthrough")]), model)
    assert list(served.named_steps) == ["preprocess", algorithm]
    np.testing.assert_array_equal(served.predict(X), model.predict(X))
    if hasattr(model, "labels_"):  # no training label per fit row travels with the model
        assert len(served[-1].labels_) <= 4 * 5


def test_a_mixture_assigns_by_posterior_not_by_nearest_mean() -> None:
    """A wide and a narrow component: points nearer the narrow mean but out in the wide one's
    tails belong to the wide one. A nearest-centroid assigner would get them wrong."""
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 5, size=(600, 2)), rng.normal([6, 0], 0.3, size=(300, 2))])
    gmm = fit_clustering(X, 2, "gmm", **FAST)
    assert isinstance(gmm, GaussianMixture)
    probe = np.array([[3.5, 4.0], [3.5, -4.0], [4.0, 3.0]])
    served = build_model_pipeline(Pipeline([("identity", "passthrough")]), gmm)
    nearest = np.argmin(((probe[:, None, :] - gmm.means_[None]) ** 2).sum(axis=2), axis=1)
    wide = int(np.argmax(np.linalg.det(gmm.covariances_)))
    np.testing.assert_array_equal(served.predict(probe), np.full(3, wide))
    assert (nearest != wide).all()  # the nearest mean is the narrow component's


@pytest.mark.parametrize("algorithm", ["gmm", "bisecting_kmeans"])
def test_the_gate_refits_the_challengers_own_algorithm(algorithm: str) -> None:
    X, _ = _planted()
    assert bootstrap_stability(X, 4, rounds=2, sample=500, random_state=0, n_init=1, algorithm=algorithm) >= 0.9


def _config(**overrides: object):
    base = {"features": ["x", "y", "z"], "cleaning.ranges": {}, "transform.log1p": [], "naming.value_feature": None,
            "k_selection.silhouette_sample": 500, "k_selection.eval_rows": 500, "k_selection.gap_references": 2,
            "k_selection.stability_resamples": 2, "k_range": [2, 6]}
    return load_config("configs/default.yaml", overrides={**base, **overrides})


def test_gmm_without_a_fixed_k_takes_the_lowest_bic_and_says_so() -> None:
    X, _ = _planted()
    selection = select_k(X, _config(**{"model.algorithm": "gmm"}))
    evidence = selection.evidence
    assert selection.k == int(evidence.loc[evidence["bic"].idxmin(), "k"]) == 4
    assert "lowest Gaussian-mixture BIC" in selection.reason and "BIC decides" in selection.reason
    assert not selection.fixed and selection.structure in {"clear", "weak", "none"}
    fixed = select_k(X, _config(**{"model.algorithm": "gmm", "k": 3}))
    assert fixed.k == 3 and fixed.reason.startswith("fixed by config: k=3")


def test_gmm_bic_skips_a_k_with_a_segment_below_the_minimum_share() -> None:
    X, _ = _planted()  # the smallest planted group is 60 of 680 rows (8.8%)
    selection = select_k(X, _config(**{"model.algorithm": "gmm", "min_segment_share": 0.1}))
    marked = selection.evidence.loc[selection.evidence["below_min_share"], "k"].tolist()
    assert 4 in marked and selection.k not in marked
    evidence = pd.DataFrame(selection.evidence)
    allowed = evidence[~evidence["below_min_share"]]
    assert selection.k == int(allowed.loc[allowed["bic"].idxmin(), "k"])
