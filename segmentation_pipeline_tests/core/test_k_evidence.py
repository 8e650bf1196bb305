"""Evidence for k and the rules reading it, on small planted tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_blobs
from sklearn.preprocessing import StandardScaler

from segmentation_pipeline.core.k_evidence import (
    EVIDENCE_COLUMNS,
    RULES,
    EvidenceSettings,
    gap_rule,
    k_evidence,
    product_rule,
    reference_sample,
    today_rule,
)
from segmentation_pipeline.core.k_selection import choose_k, sweep_k
from segmentation_pipeline.core.skew import auto_log1p_columns, column_skewness

FAST = EvidenceSettings(n_references=5, n_resamples=3, random_state=0)
KS = list(range(2, 8))


def _scaled(X: np.ndarray) -> np.ndarray:
    return StandardScaler().fit_transform(X)


@pytest.fixture(scope="module")
def easy() -> tuple[pd.DataFrame, int]:
    X, _ = make_blobs(n_samples=600, centers=4, n_features=3, cluster_std=0.6, center_box=(-12, 12), random_state=3)
    return k_evidence(_scaled(X), KS, FAST), 4


def _vip_table(seed: int, n: int = 1500) -> tuple[np.ndarray, np.ndarray]:
    """Four groups in two close pairs and a 5% VIP group far out (the issue's case, true k=5)."""
    rng = np.random.default_rng(seed)
    centers = np.array([[9, 3, 0, 0], [9, -3, 0, 0], [-9, 0, 3, 0], [-9, 0, -3, 0], [16, 16, 0, 0]], dtype=float)
    labels = rng.choice(5, size=n, p=[0.26, 0.24, 0.23, 0.22, 0.05])
    return _scaled(centers[labels] + rng.normal(size=(n, 4))), labels


def test_evidence_has_one_row_per_k_including_one(easy) -> None:
    evidence, _ = easy
    assert list(evidence.columns) == EVIDENCE_COLUMNS
    assert evidence["k"].tolist() == [1, *KS]
    assert np.isnan(evidence.loc[evidence["k"] == 1, "silhouette"]).all()
    assert evidence["min_share"].between(0, 1).all()
    assert (evidence["gap_se"] > 0).all()
    assert set(evidence.attrs["seconds"]) == {"sweep", "eval_fits", "stability", "bic", "gap"}


def test_expensive_parts_run_on_a_bounded_sample() -> None:
    X, _ = make_blobs(n_samples=3000, centers=3, n_features=2, random_state=0)
    evidence = k_evidence(X, [2, 3, 4], EvidenceSettings(eval_rows=500, n_references=2, n_resamples=2, bic=False))
    assert evidence.attrs["eval_rows"] == 500
    assert evidence.attrs["n_rows"] == 3000
    assert evidence["bic"].isna().all()


@pytest.mark.parametrize("rule", sorted(RULES))
def test_every_rule_recovers_an_easy_planted_k(easy, rule: str) -> None:
    evidence, k_true = easy
    k, reason = RULES[rule](evidence)
    assert k == k_true, reason
    assert reason


def test_today_rule_is_the_products_current_choice() -> None:
    X, _ = _vip_table(0)
    evidence = k_evidence(X, KS, FAST)
    expected = choose_k(
        sweep_k(X, KS, n_init=FAST.n_init, random_state=FAST.random_state,
                silhouette_sample=FAST.silhouette_rows, max_rows=FAST.max_rows),
        0.02,
    )
    assert today_rule(evidence)[0] == expected.k


def test_pca_reference_follows_the_data_shape() -> None:
    rng = np.random.default_rng(0)
    angle = np.pi / 6
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    X = (rng.uniform(-1, 1, (4000, 2)) * [10, 1]) @ rotation.T  # a thin rotated box
    aligned = reference_sample(X, rng, "pca")
    box = reference_sample(X, rng, "box")
    # the aligned reference stays a thin box; the bounding box fills the corners around it
    thin = lambda Z: np.linalg.eigvalsh(np.cov(Z.T)).min()  # noqa: E731
    assert thin(aligned) < 2 * thin(X)
    assert thin(box) > 5 * thin(X)


@pytest.mark.parametrize("seed", [0, 1])
def test_gap_says_one_group_on_a_uniform_box(seed: int) -> None:
    X = np.random.default_rng(seed).uniform(size=(800, 3)) * [1, 2, 3]
    assert gap_rule(k_evidence(_scaled(X), KS, FAST))[0] == 1


def test_skew_picks_non_negative_long_tailed_columns() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({
        "income": np.exp(rng.normal(10, 0.8, 5000)),   # log-normal money
        "age": rng.normal(45, 10, 5000),               # symmetric
        "balance": np.exp(rng.normal(3, 1, 5000)) - 50,  # skewed but negative values
        "visits": rng.poisson(0.05, 5000).astype(float),  # mostly 0: log1p does not reduce the skew much
    })
    table = column_skewness(frame)
    assert table.loc["income", "skew"] > 1 > abs(table.loc["income", "skew_log1p"])
    chosen = auto_log1p_columns(frame)
    assert "income" in chosen
    assert "age" not in chosen and "balance" not in chosen
    expected_visits = table.loc["visits", "skew"] > 1 and abs(table.loc["visits", "skew_log1p"]) < table.loc["visits", "skew"]
    assert ("visits" in chosen) == expected_visits
    assert auto_log1p_columns(frame, threshold=1e9) == []
