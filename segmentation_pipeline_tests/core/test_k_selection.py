"""Choosing k: planted structure is recovered, every branch of the rule, errors, sampling."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from segmentation_pipeline.config import load_config
from segmentation_pipeline.core.k_evidence import select_k
from segmentation_pipeline.core.k_selection import (
    METRIC_COLUMNS,
    check_k_against_clean_rows,
    check_k_against_rows,
    choose_k,
    sweep_k,
)



def _config(**overrides):
    base = {
        "features": ["x", "y", "z"],
        "cleaning.ranges": {},
        "transform.log1p": [],
        "naming.value_feature": None,
        "k_selection.silhouette_sample": 1000,
        "k_selection.sweep_max_rows": 2000,
    }
    return load_config("configs/default.yaml", overrides={**base, **overrides})


def _blobs(k: int, n: int = 3000, std: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k spherical blobs on a 3-D grid with spacing 10 (well separated), unequal sizes."""
    rng = np.random.default_rng(seed)
    centers = np.array(list(itertools.product(range(3), repeat=3))[:k], dtype=float) * 10.0
    sizes = rng.dirichlet(np.full(k, 8.0))
    labels = rng.choice(k, size=n, p=sizes)
    X = centers[labels] + rng.normal(scale=std, size=(n, 3))
    return X.astype(np.float32), labels


def _metrics(inertia: list[float], silhouette: list[float]) -> pd.DataFrame:
    ks = list(range(2, 2 + len(inertia)))
    return pd.DataFrame(
        {
            "k": ks,
            "inertia": inertia,
            "silhouette": silhouette,
            "davies_bouldin": [0.5] * len(ks),
            "calinski_harabasz": [100.0] * len(ks),
        }
    )


@pytest.mark.parametrize("planted", [3, 5, 7])
def test_planted_blobs_choose_planted_k(planted: int) -> None:
    X, _ = _blobs(planted, seed=planted)
    selection = select_k(X, _config())
    assert selection.k == planted, selection.reason
    assert selection.best_silhouette_k == planted
    assert not selection.fixed
    assert list(selection.metrics.columns) == METRIC_COLUMNS
    assert selection.metrics["k"].tolist() == list(range(2, 11))
    assert selection.silhouette_sample_size == 1000
    assert "silhouette on a fixed seeded sample of 1,000 of 3,000 rows" in selection.reason


def test_knee_wins_within_tolerance() -> None:
    metrics = _metrics([1000, 300, 100, 80, 70, 65, 62], [0.50, 0.55, 0.60, 0.61, 0.55, 0.50, 0.45])
    selection = choose_k(metrics, tolerance=0.02)
    assert selection.knee == 4
    assert selection.best_silhouette_k == 5
    assert selection.k == 4
    assert selection.reason.startswith("knee of WCSS at k=4 (kneed)")


def test_silhouette_wins_when_knee_is_worse_than_tolerance() -> None:
    metrics = _metrics([1000, 300, 100, 80, 70, 65, 62], [0.50, 0.55, 0.60, 0.70, 0.55, 0.50, 0.45])
    selection = choose_k(metrics, tolerance=0.02)
    assert (selection.knee, selection.best_silhouette_k, selection.k) == (4, 5, 5)
    assert selection.reason.startswith("best silhouette 0.70 at k=5")
    # a looser tolerance lets the knee win again
    assert choose_k(metrics, tolerance=0.10).k == 4


def test_no_knee_falls_back_to_best_silhouette() -> None:
    metrics = _metrics([100, 90, 80, 70, 60], [0.40, 0.45, 0.52, 0.41, 0.30])
    selection = choose_k(metrics, tolerance=0.02)
    assert selection.knee is None
    assert selection.k == 4
    assert "no knee" in selection.reason


def test_nan_silhouette_is_ignored_for_best() -> None:
    metrics = _metrics([100, 90, 80, 70, 60], [np.nan, 0.45, 0.52, np.nan, 0.30])
    assert choose_k(metrics, tolerance=0.02).k == 4


def test_single_candidate_is_fixed() -> None:
    selection = choose_k(_metrics([100.0], [0.5]), tolerance=0.02)
    assert (selection.k, selection.fixed, selection.knee) == (2, True, None)


def test_fixed_k_in_config_still_scores_it() -> None:
    X, _ = _blobs(4, n=1500, seed=4)
    selection = select_k(X, _config(k=6))
    assert selection.k == 6 and selection.fixed
    assert selection.reason.startswith("fixed by config: k=6")
    assert selection.metrics["k"].tolist() == [6]
    assert np.isfinite(selection.metrics.loc[0, "silhouette"])


def test_k_above_distinct_rows_is_a_clear_error() -> None:
    X = np.repeat(np.array([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]], dtype=np.float32), 10, axis=0)
    with pytest.raises(ValueError, match="k=5 needs at least 5 distinct customers; only 3 distinct rows"):
        sweep_k(X, [2, 3, 4, 5], n_init=1, random_state=0, silhouette_sample=100, max_rows=1000)
    # k up to the distinct count is fine
    metrics = sweep_k(X, [2, 3], n_init=1, random_state=0, silhouette_sample=100, max_rows=1000)
    assert metrics["k"].tolist() == [2, 3]


def test_distinct_rows_counted_beyond_a_repetitive_prefix() -> None:
    X = np.zeros((12_000, 2), dtype=np.float32)
    X[-5:] = np.arange(1, 11, dtype=np.float32).reshape(5, 2)  # 6 distinct rows, 5 at the very end
    metrics = sweep_k(X, [6], n_init=1, random_state=0, silhouette_sample=100, max_rows=1000)
    assert metrics["k"].tolist() == [6]


def test_fewer_than_two_rows_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least 2 customers"):
        sweep_k(np.zeros((1, 3)), [2], n_init=1, random_state=0, silhouette_sample=100, max_rows=1000)


def test_sampled_silhouette_is_close_to_full() -> None:
    X, _ = _blobs(4, n=5000, std=3.0, seed=11)  # overlapping enough that silhouette is not ~1
    metrics = sweep_k(X, [3, 4, 5], n_init=3, random_state=7, silhouette_sample=2000, max_rows=5000)
    assert metrics.attrs["silhouette_sample_size"] == 2000
    for k, sampled in zip(metrics["k"], metrics["silhouette"], strict=True):
        labels = KMeans(k, init="k-means++", algorithm="lloyd", n_init=3, random_state=7).fit_predict(X)
        full = silhouette_score(X, labels)
        assert 0.2 < full < 0.9
        assert abs(sampled - full) <= 0.02, (k, sampled, full)


def test_progress_is_reported_per_k_in_order_and_sweep_is_deterministic() -> None:
    X, _ = _blobs(3, n=1200, seed=3)
    seen: list[tuple[int, dict]] = []
    first = sweep_k(
        X, [2, 3, 4], n_init=2, random_state=5, silhouette_sample=500, max_rows=1000,
        progress=lambda k, row: seen.append((k, row)),
    )
    assert [k for k, _ in seen] == [2, 3, 4]
    assert set(seen[1][1]) == {"k", "inertia"}  # reported as each fit ends; scores come after all fits
    assert seen[1][1]["inertia"] == first.loc[1, "inertia"]
    assert first.attrs["sweep_rows"] == 1000
    second = sweep_k(X, [2, 3, 4], n_init=2, random_state=5, silhouette_sample=500, max_rows=1000)
    pd.testing.assert_frame_equal(first, second, rtol=1e-5)


def test_k_the_data_cannot_hold_stops_before_the_sweep_naming_the_allowed_range() -> None:
    X = np.repeat(np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [5.0, 5.0, 5.0], [9.0, 0.0, 9.0]]), 25, axis=0)
    calls: list[int] = []
    with pytest.raises(ValueError, match=r"k_range \[2, 10\] is outside the allowed range \[2, 3\]"):
        select_k(X, _config(), progress=lambda k, _row: calls.append(k))
    assert calls == []  # nothing was fitted
    with pytest.raises(ValueError, match=r"k=6 is larger than the 4 distinct customers after cleaning; allowed: 1 <= k <= 4"):
        select_k(X, _config(k=6))
    check_k_against_rows((2, 3), None, 4)  # the largest range the data allows
    check_k_against_rows((2, 10), 4, 4)  # a fixed k may use every distinct customer


def test_distinct_clean_rows_are_counted_past_a_repetitive_prefix_and_outliers_do_not_count() -> None:
    n = 25_000  # more than the prefix the count starts with
    x = np.zeros(n)
    x[-3:] = [1.0, 2.0, 3.0]  # the only other customers sit past the prefix
    fit = np.ones(n, dtype=bool)
    check_k_against_clean_rows({"x": x, "y": np.zeros(n)}, fit, (2, 3), None)  # 4 distinct: up to k=3
    fit[-1] = False  # an outlier is not a fit row
    with pytest.raises(ValueError, match=r"k_range \[2, 3\] is outside the allowed range \[2, 2\]"):
        check_k_against_clean_rows({"x": x, "y": np.zeros(n)}, fit, (2, 3), None)
    with pytest.raises(ValueError, match=r"k=4 is larger than the 3 distinct customers"):
        check_k_against_clean_rows({"x": x, "y": np.zeros(n)}, fit, (2, 10), 4)
    # a single fit row: left to the feature step's "need at least 2 rows" (nothing can be fitted)
    check_k_against_clean_rows({"x": np.zeros(1)}, np.ones(1, dtype=bool), (2, 10), None)
