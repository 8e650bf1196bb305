"""core.threads: small fits run on one thread, large ones keep the libraries' default."""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_info

from segmentation_pipeline.core.threads import SINGLE_THREAD_ROWS, threads_for


def _threads() -> set[int]:
    return {int(pool["num_threads"]) for pool in threadpool_info()}


def test_small_work_runs_on_one_thread_and_the_default_comes_back() -> None:
    before = _threads()
    with threads_for(SINGLE_THREAD_ROWS):
        assert _threads() == {1}
    assert _threads() == before


def test_large_work_keeps_the_default() -> None:
    before = _threads()
    with threads_for(SINGLE_THREAD_ROWS + 1):
        assert _threads() == before


def test_a_fit_on_one_thread_finds_the_same_clusters() -> None:
    X = np.random.default_rng(0).normal(size=(600, 3)) + np.repeat(np.eye(3) * 8, 200, axis=0)
    default = KMeans(3, n_init=3, random_state=0).fit(X)
    with threads_for(len(X)):
        single = KMeans(3, n_init=3, random_state=0).fit(X)
    np.testing.assert_array_equal(default.labels_, single.labels_)
    np.testing.assert_allclose(default.inertia_, single.inertia_, rtol=1e-9)
