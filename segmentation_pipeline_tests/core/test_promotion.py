"""Champion/challenger gate on synthetic data with a known answer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from segmentation_pipeline.core.promotion import (
    PromotionDecision,
    PromotionGate,
    bootstrap_stability,
    evaluate_promotion,
)

GATE = PromotionGate(bootstrap_rounds=5, sample=2000)


@pytest.fixture(scope="module")
def blobs() -> np.ndarray:
    """Five well-separated, equally spaced blobs (on a pentagon), so k=5 is unambiguously right."""
    angles = np.linspace(0, 2 * np.pi, 6)[:-1]
    centers = np.c_[10 * np.cos(angles), 10 * np.sin(angles)]
    X, _ = make_blobs(n_samples=3000, centers=centers, cluster_std=1.0, random_state=0)
    return X


def _labels(X: np.ndarray, k: int) -> np.ndarray:
    return KMeans(n_clusters=k, n_init=3, random_state=0).fit_predict(X)


def _failed(decision: PromotionDecision) -> list[str]:
    return [reason for reason in decision.reasons if reason.startswith("FAIL")]


def test_worse_k_is_not_promoted_and_silhouette_is_named(blobs: np.ndarray) -> None:
    decision = evaluate_promotion(blobs, _labels(blobs, 5), _labels(blobs, 2), 2, GATE)
    assert decision.promote is False
    assert any("silhouette" in reason for reason in _failed(decision))
    assert decision.evidence["challenger_silhouette"] < decision.evidence["champion_silhouette"] - 0.1
    assert decision.evidence["challenger_davies_bouldin"] > decision.evidence["champion_davies_bouldin"]


def test_random_labels_are_not_promoted(blobs: np.ndarray) -> None:
    random_labels = np.random.default_rng(1).integers(0, 5, size=len(blobs))
    decision = evaluate_promotion(blobs, _labels(blobs, 5), random_labels, 5, GATE)
    assert decision.promote is False
    failed = " ".join(_failed(decision))
    assert "silhouette" in failed and "Davies-Bouldin" in failed
    assert abs(decision.evidence["agreement_ari"]) < 0.05


def test_true_k_replaces_a_bad_champion(blobs: np.ndarray) -> None:
    decision = evaluate_promotion(blobs, _labels(blobs, 2), _labels(blobs, 5), 5, GATE)
    assert decision.promote is True, decision.reasons
    assert not _failed(decision)
    assert decision.evidence["challenger_silhouette"] > decision.evidence["champion_silhouette"]
    assert decision.evidence["challenger_stability"] > 0.9
    assert set(decision.evidence) >= {
        "champion_silhouette",
        "challenger_silhouette",
        "champion_davies_bouldin",
        "challenger_davies_bouldin",
        "agreement_ari",
        "challenger_stability",
    }


def test_agreement_gate_blocks_a_wholesale_reshuffle(blobs: np.ndarray) -> None:
    gate = PromotionGate(bootstrap_rounds=5, sample=2000, min_agreement=0.9)
    decision = evaluate_promotion(blobs, _labels(blobs, 2), _labels(blobs, 5), 5, gate)
    assert decision.promote is False
    failed = _failed(decision)
    assert len(failed) == 1 and failed[0].startswith("FAIL agreement")


def test_equal_model_is_promoted_within_tolerance(blobs: np.ndarray) -> None:
    labels = _labels(blobs, 5)
    relabelled = (labels + 1) % 5  # same partition, different numbering
    decision = evaluate_promotion(blobs, labels, relabelled, 5, GATE)
    assert decision.promote is True, decision.reasons
    assert decision.evidence["agreement_ari"] == pytest.approx(1.0)


def test_no_champion_promotes(blobs: np.ndarray) -> None:
    decision = evaluate_promotion(blobs, None, _labels(blobs, 5), 5, GATE)
    assert decision.promote is True
    assert decision.reasons[0].startswith("no champion yet")
    assert math.isnan(decision.evidence["champion_silhouette"])
    assert decision.evidence["challenger_silhouette"] > 0.7
    tags = decision.as_tags()
    assert tags["promotion.promote"] == "true"
    assert tags["promotion.champion_silhouette"] == "nan"
    assert all(isinstance(v, str) for v in tags.values())
    json.dumps(tags)


def test_stability_high_on_clean_blobs(blobs: np.ndarray) -> None:
    assert bootstrap_stability(blobs, 5, rounds=6, sample=2000, random_state=0) > 0.9


def test_stability_low_on_uniform_noise() -> None:
    noise = np.random.default_rng(0).uniform(size=(3000, 5))
    assert bootstrap_stability(noise, 6, rounds=6, sample=2000, random_state=0) < 0.6


def test_label_length_mismatch_raises(blobs: np.ndarray) -> None:
    with pytest.raises(ValueError, match="challenger_labels"):
        evaluate_promotion(blobs, None, np.zeros(10, dtype=int), 2, GATE)
    with pytest.raises(ValueError, match="bootstrap_rounds"):
        PromotionGate(bootstrap_rounds=1)


@pytest.mark.parametrize("case", ["noisy", "permuted", "identical", "one_cluster_each", "independent"])
def test_agreement_ari_equals_scikit_learn(case: str) -> None:
    from sklearn.metrics import adjusted_rand_score

    from segmentation_pipeline.core.promotion import agreement_ari

    rng = np.random.default_rng(8)
    a = rng.integers(0, 5, size=3000)
    b = {
        "noisy": np.where(rng.random(3000) < 0.7, a, rng.integers(0, 6, size=3000)),
        "permuted": (a + 2) % 5 + 10,
        "identical": a.copy(),
        "one_cluster_each": np.zeros(3000, dtype=int),
        "independent": rng.integers(0, 4, size=3000),
    }[case]
    if case == "one_cluster_each":
        a = np.ones(3000, dtype=int)
    assert agreement_ari(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)
