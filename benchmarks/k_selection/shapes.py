"""Planted tables for the k-selection benchmark: each returns (raw frame, planted labels, planted k).

Planted label -1 marks a gross outlier (left out of the ARI); planted k = 1 means no structure.
Groups are Gaussian with centres at least ``sep`` standard deviations apart unless a shape says
otherwise, so KMeans at the planted k can recover them (the benchmark asks whether a rule finds k,
not whether KMeans can separate touching groups).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from segmentation_pipeline.core.demo_data import generate_customers

__all__ = ["SHAPES", "Shape"]

Shape = Callable[[int, int], tuple[pd.DataFrame, np.ndarray, int]]


def _centers(rng: np.random.Generator, k: int, d: int, sep: float) -> np.ndarray:
    """k centres in a box, pairwise at least ``sep`` apart (rejection; the box grows if crowded)."""
    half = sep * max(1.0, k ** (1 / d))
    while True:
        for _ in range(200):
            centers = [rng.uniform(-half, half, d)]
            for _ in range(2000):
                c = rng.uniform(-half, half, d)
                if min(np.linalg.norm(c - o) for o in centers) >= sep:
                    centers.append(c)
                if len(centers) == k:
                    return np.asarray(centers)
        half *= 1.2


def _labels(rng: np.random.Generator, n: int, shares: list[float]) -> np.ndarray:
    counts = np.floor(np.asarray(shares) / sum(shares) * n).astype(int)
    counts[0] += n - counts.sum()
    return rng.permutation(np.repeat(np.arange(len(shares)), counts))


def _frame(X: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])


def _blobs(rng, n, shares, centers, sds) -> tuple[np.ndarray, np.ndarray]:
    labels = _labels(rng, n, shares)
    sds = np.broadcast_to(np.asarray(sds, dtype=float), (len(shares),))
    X = centers[labels] + rng.normal(size=(n, centers.shape[1])) * sds[labels, None]
    return X, labels


def balanced(k: int, d: int = 4, sep: float = 7.0) -> Shape:
    def make(n: int, seed: int):
        rng = np.random.default_rng(seed)
        X, y = _blobs(rng, n, [1.0] * k, _centers(rng, k, d, sep), 1.0)
        return _frame(X), y, k
    return make


def small_group(n: int, seed: int):
    """Five groups, one of them 3% of the rows (distinct, same spread)."""
    rng = np.random.default_rng(seed)
    X, y = _blobs(rng, n, [0.30, 0.26, 0.23, 0.18, 0.03], _centers(rng, 5, 4, 7.0), 1.0)
    return _frame(X), y, 5


def vip_pairs(n: int, seed: int):
    """The issue's case: four regular groups in two close pairs, plus a 5% VIP group far out on two
    money-like axes; the pairs pull silhouette toward 3 and the elbow toward 4 (true 5)."""
    rng = np.random.default_rng(seed)
    d = 4
    pair_a, pair_b = rng.normal(size=d), rng.normal(size=d)
    pair_a *= 9 / np.linalg.norm(pair_a)
    pair_b = -pair_a + rng.normal(scale=2.0, size=d)
    offsets = [rng.normal(size=d) for _ in range(2)]
    offsets = [3.0 * o / np.linalg.norm(o) for o in offsets]  # members of a pair 6 sd apart
    vip = np.zeros(d)
    vip[:2] = 16.0
    centers = np.array([pair_a + offsets[0], pair_a - offsets[0], pair_b + offsets[1], pair_b - offsets[1], vip])
    X, y = _blobs(rng, n, [0.26, 0.24, 0.23, 0.22, 0.05], centers, 1.0)
    return _frame(X), y, 5


def demo_vip(n: int, seed: int):
    """The project's demo customers (5 segments) with a 5% VIP segment: age, income, score (raw)."""
    frame, planted = generate_customers(n, seed=seed, dirty=False, vip_share=0.05)
    frame = frame[["age", "annual_income", "spending_score"]].astype(float)
    return frame, planted, 6


def unequal_spreads(n: int, seed: int):
    rng = np.random.default_rng(seed)
    sds = np.array([0.4, 0.8, 1.5, 2.5])
    while True:
        centers = _centers(rng, 4, 4, 10.0)
        gaps = np.linalg.norm(centers[:, None] - centers[None], axis=2)
        need = 3.5 * (sds[:, None] + sds[None])
        if (gaps[~np.eye(4, dtype=bool)] >= need[~np.eye(4, dtype=bool)]).all():
            break
    X, y = _blobs(rng, n, [0.25] * 4, centers, sds)
    return _frame(X), y, 4


def elongated(n: int, seed: int):
    """Four groups with correlated, elongated covariances (axis sds 2.5, 0.6, 0.6, 0.6, random rotation)."""
    rng = np.random.default_rng(seed)
    d, k = 4, 4
    centers = _centers(rng, k, d, 13.0)
    y = _labels(rng, n, [0.25] * k)
    X = np.empty((n, d))
    for g in range(k):
        q, _ = np.linalg.qr(rng.normal(size=(d, d)))
        scale = np.diag([2.5, 0.6, 0.6, 0.6])
        m = y == g
        X[m] = centers[g] + rng.normal(size=(m.sum(), d)) @ scale @ q.T
    return _frame(X), y, k


def lognormal_money(n: int, seed: int):
    """Four groups where two money columns are log-normal: separated in log space, not in dollars."""
    rng = np.random.default_rng(seed)
    y = _labels(rng, n, [0.35, 0.3, 0.2, 0.15])
    log_mu = np.array([[8.0, 6.0], [9.3, 7.8], [10.6, 6.2], [10.4, 8.1]])
    age_mu = np.array([30.0, 45.0, 38.0, 60.0])
    income = np.exp(rng.normal(log_mu[y, 0], 0.22))
    spend = np.exp(rng.normal(log_mu[y, 1], 0.22))
    age = rng.normal(age_mu[y], 3.0)
    return pd.DataFrame({"income": income, "spend": spend, "age": age}), y, 4


def outliers(n: int, seed: int):
    """Balanced k=4 plus 1% gross outliers 15-30 sd from the data's centre in random directions."""
    rng = np.random.default_rng(seed)
    n_out = max(1, n // 100)
    X, y = _blobs(rng, n - n_out, [1.0] * 4, _centers(rng, 4, 4, 7.0), 1.0)
    direction = rng.normal(size=(n_out, 4))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    spread = np.linalg.norm(X - X.mean(axis=0), axis=1).max()
    far = X.mean(axis=0) + direction * rng.uniform(1.5, 3.0, (n_out, 1)) * spread
    return _frame(np.vstack([X, far])), np.concatenate([y, np.full(n_out, -1)]), 4


def noise_columns(informative: int, noise: int, sep: float) -> Shape:
    """Four groups in ``informative`` columns plus ``noise`` irrelevant Gaussian columns (after
    scaling every column weighs the same, so the ratio of the two counts is what matters)."""
    def make(n: int, seed: int):
        rng = np.random.default_rng(seed)
        X, y = _blobs(rng, n, [1.0] * 4, _centers(rng, 4, informative, sep), 1.0)
        return _frame(np.hstack([X, rng.normal(size=(n, noise))])), y, 4
    return make


def one_blob(n: int, seed: int):
    """No structure: one correlated Gaussian."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(4, 4))
    X = rng.normal(size=(n, 4)) @ a
    return _frame(X), np.zeros(n, dtype=int), 1


def uniform_box(n: int, seed: int):
    """No structure: uniform over a box."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 1, size=(n, 4)) * np.array([1.0, 2.0, 3.0, 1.5])
    return _frame(X), np.zeros(n, dtype=int), 1


SHAPES: dict[str, Shape] = {
    "balanced_k2": balanced(2),
    "balanced_k3": balanced(3),
    "balanced_k5": balanced(5),
    "balanced_k7": balanced(7),
    "balanced_k9": balanced(9),
    "small_group_3pct": small_group,
    "vip_pairs_5pct": vip_pairs,
    "demo_vip_5pct": demo_vip,
    "unequal_spreads": unequal_spreads,
    "elongated": elongated,
    "lognormal_money": lognormal_money,
    "outliers_1pct": outliers,
    "noise_columns": noise_columns(4, 2, 8.0),
    "noise_columns_heavy": noise_columns(3, 3, 8.0),
    "none_one_blob": one_blob,
    "none_uniform_box": uniform_box,
}
