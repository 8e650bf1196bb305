"""Stable segment ids: Hungarian matching of raw-feature centroids across retrains."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from segmentation_pipeline.core.identity import (
    centroids_in_feature_space,
    match_segments,
    migration_matrix,
    migration_plot,
    relabel,
)

FEATURES = ["income", "age", "visits"]


@pytest.fixture(scope="module")
def blobs() -> tuple[pd.DataFrame, np.ndarray]:
    """Five customer groups on wildly different feature scales (dollars, years, counts)."""
    centers = np.array(
        [[20_000, 25, 2], [45_000, 35, 8], [80_000, 45, 4], [120_000, 55, 12], [60_000, 65, 1]], dtype=float
    )
    scale = np.array([8_000.0, 3.0, 0.8])
    unit, truth = make_blobs(n_samples=2500, centers=centers / scale, cluster_std=0.5, random_state=7)
    return pd.DataFrame(unit * scale, columns=FEATURES), truth


def _fit(frame: pd.DataFrame, k: int, seed: int) -> np.ndarray:
    standardised = (frame - frame.mean()) / frame.std()
    return KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(standardised.to_numpy())


def test_permuted_centroids_map_back_to_their_ids() -> None:
    rng = np.random.default_rng(0)
    old = rng.normal(size=(6, 4)) * np.array([1e4, 10, 1, 0.1])
    old_ids = [3, 7, 8, 11, 12, 20]
    perm = np.array([4, 0, 5, 2, 1, 3])
    new = old[perm] + rng.normal(scale=1e-3, size=old.shape) * np.array([1e4, 10, 1, 0.1])
    mapping = match_segments(old, new, old_ids=old_ids)
    assert mapping == {new_index: old_ids[perm[new_index]] for new_index in range(6)}


def test_different_kmeans_seed_gets_same_stable_ids(blobs: tuple[pd.DataFrame, np.ndarray]) -> None:
    frame, _ = blobs
    old_labels = _fit(frame, 5, seed=0)
    new_labels = _fit(frame, 5, seed=123)
    old_centroids, old_ids = centroids_in_feature_space(frame, old_labels, FEATURES)
    new_centroids, new_order = centroids_in_feature_space(frame, new_labels, FEATURES)
    assert old_ids == new_order == [0, 1, 2, 3, 4]
    mapping = match_segments(old_centroids, new_centroids, old_ids=old_ids)
    assert sorted(mapping.values()) == old_ids
    stable = relabel(new_labels, mapping)
    assert (stable == old_labels).mean() >= 0.95
    assert (new_labels == old_labels).mean() < 0.95  # the seeds really did number clusters differently


def test_extra_new_cluster_gets_fresh_id_and_dropped_cluster_disappears(
    blobs: tuple[pd.DataFrame, np.ndarray],
) -> None:
    frame, truth = blobs
    old_mask = truth != 4  # last month group 4 did not exist yet
    old_centroids, _ = centroids_in_feature_space(frame[old_mask], truth[old_mask], FEATURES)
    old_ids = [10, 11, 12, 13]
    new_centroids, _ = centroids_in_feature_space(frame, truth, FEATURES)  # 5 clusters, truth order
    mapping = match_segments(old_centroids, new_centroids, old_ids=old_ids)
    assert mapping == {0: 10, 1: 11, 2: 12, 3: 13, 4: 14}
    assert match_segments(old_centroids, new_centroids, old_ids=old_ids, next_id=30)[4] == 30

    # the other way round: a cluster vanished, its id is simply not used
    back = match_segments(new_centroids, old_centroids, old_ids=[10, 11, 12, 13, 14])
    assert back == {0: 10, 1: 11, 2: 12, 3: 13}


def test_far_match_counts_as_new_cluster() -> None:
    old = np.array([[0.0, 0.0], [10.0, 10.0], [20.0, 0.0]])
    new = np.array([[0.2, 0.1], [10.1, 9.9], [60.0, 60.0]])
    assert match_segments(old, new, old_ids=[1, 2, 3]) == {0: 1, 1: 2, 2: 3}
    assert match_segments(old, new, old_ids=[1, 2, 3], max_distance=0.5) == {0: 1, 1: 2, 2: 4}


def test_no_previous_model_numbers_from_zero() -> None:
    new = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert match_segments(np.empty((0, 2)), new, old_ids=[]) == {0: 0, 1: 1}


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="old_ids"):
        match_segments(np.zeros((2, 2)), np.zeros((2, 2)), old_ids=[1])
    with pytest.raises(ValueError, match="same number of features"):
        match_segments(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="one entry per row"):
        centroids_in_feature_space(pd.DataFrame({"a": [1.0, 2.0]}), np.array([0]), ["a"])


def test_centroids_are_sorted_label_means_regardless_of_index() -> None:
    frame = pd.DataFrame({"a": [1.0, 3.0, 10.0, 20.0], "b": [0.0, 2.0, 5.0, 7.0]}, index=[40, 10, 30, 20])
    centroids, labels = centroids_in_feature_space(frame, np.array([5, 5, 2, 2]), ["a", "b"])
    assert labels == [2, 5]
    np.testing.assert_allclose(centroids, [[15.0, 6.0], [2.0, 1.0]])


def test_migration_matrix_totals_and_plot() -> None:
    rng = np.random.default_rng(3)
    old = rng.integers(0, 4, size=1000)
    new = np.where(rng.random(1000) < 0.8, old, rng.integers(0, 5, size=1000))
    matrix = migration_matrix(old, new)
    assert matrix.loc["total", "total"] == 1000
    assert matrix.drop(index="total", columns="total").to_numpy().sum() == 1000
    for segment in range(4):
        assert matrix.loc[segment, "total"] == (old == segment).sum()
        assert matrix.loc[segment, segment] >= (old == segment).sum() * 0.7
    assert matrix.loc["total", 4] == (new == 4).sum()
    png = migration_plot(matrix)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    with pytest.raises(ValueError):
        migration_matrix(old, new[:-1])


@pytest.mark.parametrize("kind", ["ids", "negative", "text"])
def test_migration_matrix_equals_pandas_crosstab(kind: str, monkeypatch) -> None:
    import segmentation_pipeline.core.identity as identity

    monkeypatch.setattr(identity, "ROW_BLOCK", 64)  # several blocks, the last partial
    rng = np.random.default_rng(4)
    old = rng.choice([0, 2, 7], size=1000)  # ids with gaps, as after retrains
    new = rng.choice([1, 2, 3, 9], size=1000)
    if kind == "negative":
        old, new = old - 3, new - 5
    elif kind == "text":
        old, new = np.array([f"s{v}" for v in old]), np.array([f"s{v}" for v in new])
    expected = pd.crosstab(pd.Series(old, name="old_segment"), pd.Series(new, name="new_segment"),
                           margins=True, margins_name="total")
    pd.testing.assert_frame_equal(migration_matrix(old, new), expected, check_dtype=False)
