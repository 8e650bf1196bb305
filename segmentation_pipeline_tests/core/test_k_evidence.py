"""Evidence for k and the rules reading it, on small planted tables."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_blobs
from sklearn.cluster import KMeans
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from segmentation_pipeline.config import PipelineConfig, load_config
from segmentation_pipeline.core.k_evidence import (
    EVIDENCE_COLUMNS,
    PUBLIC_COLUMNS,
    RULES,
    EvidenceSettings,
    evidence_records,
    gap_rule,
    grade_structure,
    k_evidence,
    product_rule,
    reference_sample,
    select_k,
    today_rule,
)
from segmentation_pipeline.core.k_evidence_plots import evidence_plot
from segmentation_pipeline.core.k_selection import choose_k, sweep_k
from segmentation_pipeline.core.skew import auto_log1p_columns, column_skewness

FAST = EvidenceSettings(n_references=5, n_resamples=3, random_state=0)
KS = list(range(2, 8))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small fits: OpenMP threads only contend with each other (and other processes) here."""
    with threadpool_limits(1):
        yield


def _scaled(X: np.ndarray) -> np.ndarray:
    return StandardScaler().fit_transform(X)


@pytest.fixture(scope="module")
def easy() -> tuple[pd.DataFrame, int]:
    X, _ = make_blobs(n_samples=600, centers=4, n_features=3, cluster_std=0.6, center_box=(-12, 12), random_state=3)
    return k_evidence(_scaled(X), KS, FAST), 4


def _vip_table(seed: int, n: int = 1500) -> tuple[np.ndarray, np.ndarray]:
    """Four groups in two close pairs and a 5% VIP group far out (the issue's case, true k=5)."""
    rng = np.random.default_rng(seed)
    centers = np.array([[9, 3, 0], [9, -3, 0], [-9, 0, 3], [-9, 0, -3], [16, 16, 16]], dtype=float)
    labels = rng.choice(5, size=n, p=[0.26, 0.24, 0.23, 0.22, 0.05])
    return _scaled(centers[labels] + rng.normal(size=(n, 3))), labels


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


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_product_rule_keeps_the_five_percent_vip_group(seed: int) -> None:
    X, planted = _vip_table(seed)
    choice = product_rule(k_evidence(X, KS, FAST))
    assert choice.k == 5, choice.reason
    assert choice.structure != "none"
    labels = KMeans(choice.k, n_init=10, random_state=0).fit_predict(X)
    vip = planted == 4
    values, counts = np.unique(labels[vip], return_counts=True)
    assert counts.max() / vip.sum() >= 0.95
    assert (planted[labels == values[counts.argmax()]] == 4).mean() >= 0.95


@pytest.mark.parametrize("table", ["uniform_box", "one_blob"])
@pytest.mark.parametrize("seed", [0, 1])
def test_product_rule_says_none_without_structure(table: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    if table == "uniform_box":
        X = rng.uniform(size=(1200, 4)) * [1, 2, 3, 1.5]
    else:
        X = rng.normal(size=(1200, 4)) @ rng.normal(size=(4, 4))
    choice = product_rule(k_evidence(_scaled(X), KS, FAST))
    assert choice.structure == "none", choice.reason
    assert choice.k >= 2  # segments are still produced; the grade says they are arbitrary


def test_product_rule_grades_overlapping_groups_weak_and_separated_ones_clear(easy) -> None:
    X, _ = make_blobs(n_samples=1200, centers=[[0, 0, 0], [4, 0, 0], [0, 4, 0]], cluster_std=1.0, random_state=5)
    weak = product_rule(k_evidence(_scaled(X), KS, FAST))
    assert weak.structure == "weak", weak.reason
    evidence, k_true = easy
    clear = product_rule(evidence)
    assert (clear.k, clear.structure) == (k_true, "clear"), clear.reason
    assert grade_structure(evidence, clear.k)[0] == "clear"


def _tiny_group_table(far: bool) -> np.ndarray:
    """Four groups and a fifth of 0.5% of the rows: far out, or just off the others."""
    rng = np.random.default_rng(0)
    tiny = [30, 30, 30] if far else [4, 4, 7]
    centers = np.array([[0, 0, 0], [8, 0, 0], [0, 8, 0], [8, 8, 0], tiny], dtype=float)
    planted = np.repeat(np.arange(5), [400, 400, 400, 392, 8])
    return _scaled(centers[planted] + rng.normal(size=(len(planted), 3)))


def test_a_k_with_a_segment_below_the_minimum_share_is_marked_and_not_chosen() -> None:
    evidence = k_evidence(_tiny_group_table(far=False), KS, FAST)
    choice = product_rule(evidence)
    assert choice.too_small  # some k isolates the 0.5% group or splits off a sliver
    assert choice.k not in choice.too_small
    assert not choice.needs_review
    assert evidence.loc[evidence["k"] == choice.k, "min_share"].iloc[0] >= 0.01


def test_when_every_k_has_a_tiny_segment_the_choice_needs_review() -> None:
    evidence = k_evidence(_tiny_group_table(far=True), KS, FAST)  # KMeans isolates it at every k
    default = product_rule(evidence)
    assert default.too_small == KS
    assert default.needs_review and "needs review" in default.reason
    permissive = product_rule(evidence, min_segment_share=0.001)
    assert not permissive.needs_review and permissive.too_small == []
    assert permissive.k == 5, permissive.reason


def test_evidence_plot_is_a_png(easy) -> None:
    evidence, k_true = easy
    png = evidence_plot(evidence, k_true, title="planted k=4")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(png) > 10_000


def _noise_column_evidence() -> pd.DataFrame:
    """Evidence as read on a table with planted k=4 and irrelevant noise columns (the benchmark's
    noise_columns, seed 1): every silhouette < 0.5, the indices prefer 3, the knee is at 4."""
    return pd.DataFrame({
        "k": [1, 2, 3, 4, 5, 6],
        "inertia": [np.nan, 2000.0, 1700.0, 400.0, 380.0, 370.0],
        "silhouette": [np.nan, 0.36, 0.381, 0.377, 0.33, 0.30],
        "davies_bouldin": [np.nan, 1.2, 1.0, 1.0, 1.1, 1.2],
        "calinski_harabasz": [np.nan, 1000.0, 1170.0, 1120.0, 950.0, 900.0],
        "log_w": [0.0] * 6,
        "gap": [0.82, 0.91, 1.08, 1.13, 1.14, 1.15],
        "gap_se": [0.01] * 6,
        "stability": [1.0, 0.7, 1.0, 1.0, 0.8, 0.8],
        "min_share": [1.0, 0.25, 0.25, 0.25, 0.12, 0.1],
        "bic": [27000.0, 20800.0, 16600.0, 16800.0, 16900.0, 17000.0],
    })


def test_when_structure_is_weak_the_knee_decides() -> None:
    evidence = _noise_column_evidence()
    assert today_rule(evidence)[0] == 4
    choice = product_rule(evidence)
    assert choice.k == 4, choice.reason
    assert choice.structure == "weak"
    assert "knee of WCSS at k=4" in choice.reason and "vote's k=3" in choice.reason


def test_the_knee_fallback_never_takes_a_k_with_a_too_small_segment() -> None:
    evidence = _noise_column_evidence()
    evidence.loc[evidence["k"] == 4, "min_share"] = 0.005
    choice = product_rule(evidence)
    assert choice.k == 3 and 4 in choice.too_small, choice.reason


def _config(**overrides: object) -> PipelineConfig:
    base = {"features": ["x", "y", "z"], "cleaning.ranges": {}, "transform.log1p": [], "naming.value_feature": None,
            "k_selection.silhouette_sample": 500, "k_selection.eval_rows": 500, "k_selection.gap_references": 3,
            "k_selection.stability_resamples": 2, "k_range": [2, 6]}
    return load_config("configs/default.yaml", overrides={**base, **overrides})


def test_select_k_carries_the_evidence_structure_and_reason() -> None:
    X, _ = make_blobs(n_samples=900, centers=4, n_features=3, cluster_std=0.6, center_box=(-12, 12), random_state=3)
    progress: list[int] = []
    selection = select_k(_scaled(X), _config(), progress=lambda k, _row: progress.append(k))
    assert selection.k == 4, selection.reason
    assert progress == [2, 3, 4, 5, 6]  # the k=1 fit the gap needs is not a candidate
    assert selection.structure == "clear"
    assert selection.evidence is not None
    assert list(selection.evidence.columns) == PUBLIC_COLUMNS
    assert selection.evidence["k"].tolist() == [2, 3, 4, 5, 6]
    assert selection.metrics["k"].tolist() == [2, 3, 4, 5, 6]
    assert "structure clear" in selection.reason
    records = evidence_records(selection.evidence)
    assert [r["k"] for r in records] == [2, 3, 4, 5, 6]
    assert all(isinstance(r["gap"], float) and isinstance(r["below_min_share"], bool) for r in records)
    json.dumps(records, allow_nan=False)


def test_select_k_marks_small_segments_and_keeps_a_fixed_k() -> None:
    X = _tiny_group_table(far=False)
    selection = select_k(X, _config(min_segment_share=0.2))
    marked = selection.evidence.loc[selection.evidence["below_min_share"], "k"].tolist()
    assert marked == selection.too_small and 5 in marked
    assert selection.k not in marked
    fixed = select_k(X, _config(k=5))
    assert fixed.k == 5 and fixed.fixed and fixed.reason.startswith("fixed by config: k=5")
    assert fixed.evidence["k"].tolist() == [5] and fixed.structure in {"clear", "weak", "none"}


def test_evidence_records_turn_nan_into_none() -> None:
    table = pd.DataFrame([{c: (2 if c == "k" else False if c == "below_min_share" else np.nan) for c in PUBLIC_COLUMNS}])
    [record] = evidence_records(table)
    assert record["k"] == 2 and record["silhouette"] is None and record["below_min_share"] is False
