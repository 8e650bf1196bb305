"""Champion/challenger gate: is a freshly trained segmentation good enough to replace the current one?

Why: a retrain always produces *a* clustering; promoting it blindly would churn every customer's
segment for no gain. Both models' labels are computed by the caller on the SAME current matrix X
(the caller's transformed features), so internal quality (silhouette up, Davies-Bouldin down) is
compared on equal terms. A challenger must also be stable (bootstrap refits agree, mean ARI), so a
k that merely fits noise is not promoted, and optionally must agree with the champion (ARI) so
segments do not reshuffle wholesale.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
from sklearn.metrics import adjusted_rand_score

from segmentation_pipeline.core.algorithms import (
    DEFAULT_ALGORITHM,
    FitSettings,
    build_estimator,
)
from segmentation_pipeline.core.identity import migration_matrix
from segmentation_pipeline.core.modeling import silhouette_scores, spread_scores
from segmentation_pipeline.core.threads import threads_for


@dataclass(frozen=True)
class PromotionGate:
    """Promotion thresholds (to be wired into ``config.py`` as a section).

    ``min_silhouette_gain`` is the allowed change challenger - champion (-0.01: may be at most
    0.01 worse); ``max_davies_bouldin_ratio`` caps challenger / champion DB (lower DB is better);
    ``min_stability`` is the mean pairwise bootstrap ARI; ``min_agreement`` (optional) is the ARI
    between champion and challenger labels; ``sample`` bounds the rows used for silhouette and
    per bootstrap fit.
    """

    min_silhouette_gain: float = -0.01
    max_davies_bouldin_ratio: float = 1.05
    min_stability: float = 0.8
    min_agreement: float | None = None
    bootstrap_rounds: int = 10
    sample: int = 10_000
    on_features_changed: Literal["promote", "refuse"] = "promote"

    def __post_init__(self) -> None:
        if self.bootstrap_rounds < 2:
            raise ValueError(f"bootstrap_rounds must be >= 2 to compare refits, got {self.bootstrap_rounds}")
        if self.sample < 10:
            raise ValueError(f"sample must be >= 10 rows, got {self.sample}")
        if self.max_davies_bouldin_ratio <= 0:
            raise ValueError(f"max_davies_bouldin_ratio must be > 0, got {self.max_davies_bouldin_ratio}")


@dataclass(frozen=True)
class PromotionDecision:
    """The verdict, one human-readable line per criterion, and the numbers behind it."""

    promote: bool
    reasons: list[str]
    evidence: dict[str, float] = field(default_factory=dict)

    def as_tags(self) -> dict[str, str]:
        """Flat string tags (e.g. for a model-registry version); values fit MLflow's 5000-char limit."""
        tags = {"promotion.promote": str(self.promote).lower(), "promotion.reasons": "; ".join(self.reasons)[:5000]}
        for key, value in self.evidence.items():
            tags[f"promotion.{key}"] = "nan" if value is None or math.isnan(value) else f"{value:.6g}"
        return tags


def _sample_indices(n: int, sample: int, rng: np.random.Generator) -> np.ndarray:
    """All rows when small enough, else a sorted uniform sample without replacement."""
    if n <= sample:
        return np.arange(n)
    return np.sort(rng.choice(n, size=sample, replace=False))


def bootstrap_stability(
    X: npt.ArrayLike, k: int, *, rounds: int, sample: int, random_state: int, n_init: int = 3,
    algorithm: str = DEFAULT_ALGORITHM,
) -> float:
    """Mean pairwise ARI of refits with k clusters on bootstrap resamples, scored on one reference sample.

    The refits use the challenger's own ``algorithm`` (core.algorithms): the question is whether
    that model's partition is a property of the data.

    Each round fits on a with-replacement resample of X (at most ``sample`` rows) and predicts the
    same fixed reference sample, so the partitions are directly comparable; ARI ignores the
    arbitrary cluster numbering. ~1 means the structure is real; well below 1 means k is carving
    noise.
    """
    data = np.asarray(X)
    n = len(data)
    if rounds < 2:
        raise ValueError(f"rounds must be >= 2, got {rounds}")
    if not 2 <= k < n:
        raise ValueError(f"k must satisfy 2 <= k < n_rows ({n}), got {k}")
    rng = np.random.default_rng(random_state)
    reference = data[_sample_indices(n, sample, rng)]
    size = min(n, sample)
    assignments: list[np.ndarray] = []
    with threads_for(size):
        for round_index in range(rounds):
            resample = data[rng.integers(0, n, size=size)]
            settings = FitSettings(n_init=n_init, max_iter=300, random_state=random_state + round_index)
            assignments.append(build_estimator(algorithm, k, settings).fit(resample).predict(reference))
    scores = [adjusted_rand_score(a, b) for a, b in itertools.combinations(assignments, 2)]
    return float(np.mean(scores))


def _internal_scores(silhouette: float, X: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(silhouette on the shared sample, Davies-Bouldin on all rows); NaN when fewer than 2 clusters."""
    if math.isnan(silhouette):
        return math.nan, math.nan
    davies_bouldin = spread_scores(X, labels)["davies_bouldin"]  # NaN when fewer than 2 clusters
    return (math.nan, math.nan) if math.isnan(davies_bouldin) else (silhouette, davies_bouldin)


def agreement_ari(champion: np.ndarray, challenger: np.ndarray) -> float:
    """``adjusted_rand_score(champion, challenger)``, computed from their contingency table.

    scikit-learn builds that table by sorting copies of both label arrays (~60 B a row at peak on
    millions of customers); :func:`migration_matrix` counts it block by block. The pair counts
    and the formula are scikit-learn's (``pair_confusion_matrix``), in exact integers.
    """
    table = migration_matrix(champion, challenger).drop(index="total", columns="total").to_numpy(np.int64)
    n = int(table.sum())
    sum_squares = int((table.astype(object) ** 2).sum())
    rows = sum(int(v) ** 2 for v in table.sum(axis=1))
    cols = sum(int(v) ** 2 for v in table.sum(axis=0))
    tp, fp, fn = sum_squares - n, cols - sum_squares, rows - sum_squares
    tn = n * n - fp - fn - sum_squares
    if fn == 0 and fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


class PromotionRefused(ValueError):
    """The champion was trained on other features and the configured policy refuses to replace it."""


def evaluate_promotion(
    X: npt.ArrayLike,
    champion_labels: npt.ArrayLike | None,
    challenger_labels: npt.ArrayLike,
    challenger_k: int,
    gate: PromotionGate,
    *,
    random_state: int = 0,
    model_change: str | None = None,
    algorithm: str = DEFAULT_ALGORITHM,
) -> PromotionDecision:
    """Decide whether the challenger replaces the champion; every criterion is reported.

    Silhouette (O(n^2)) is computed on one seeded sample of at most ``gate.sample`` rows shared
    by both models; Davies-Bouldin (O(n k)) and agreement ARI use all rows. With no champion the
    challenger is promoted, but its metrics are still recorded as evidence.

    ``model_change`` (the champion was trained on other features) makes the models incomparable:
    ``gate.on_features_changed`` decides: "promote" records why, "refuse" raises
    :class:`PromotionRefused` with the fix.
    """
    if model_change is not None and gate.on_features_changed == "refuse":
        raise PromotionRefused(
            f"{model_change}: the models cannot be compared, and promotion.on_features_changed is 'refuse'. "
            "Run with the champion's features, or set promotion.on_features_changed: promote to replace it"
        )
    data = np.asarray(X)
    challenger = np.asarray(challenger_labels)
    n = len(data)
    if challenger.shape != (n,):
        raise ValueError(f"challenger_labels must have one label per row of X ({n}), got shape {challenger.shape}")
    champion = None if champion_labels is None else np.asarray(champion_labels)
    if champion is not None and champion.shape != (n,):
        raise ValueError(f"champion_labels must have one label per row of X ({n}), got shape {champion.shape}")

    rng = np.random.default_rng(random_state)
    idx = _sample_indices(n, gate.sample, rng)
    # both models' silhouettes from one pass over the shared sample's distances
    labelings = [challenger[idx]] if champion is None else [challenger[idx], champion[idx]]
    silhouettes = silhouette_scores(data[idx], labelings)
    chal_sil, chal_db = _internal_scores(silhouettes[0], data, challenger)
    stability = bootstrap_stability(
        data, challenger_k, rounds=gate.bootstrap_rounds, sample=gate.sample, random_state=random_state,
        algorithm=algorithm,
    )
    evidence: dict[str, float] = {
        "champion_silhouette": math.nan,
        "challenger_silhouette": chal_sil,
        "champion_davies_bouldin": math.nan,
        "challenger_davies_bouldin": chal_db,
        "agreement_ari": math.nan,
        "challenger_stability": stability,
        "sample_rows": float(len(idx)),
    }

    if model_change is not None:
        return PromotionDecision(
            promote=True,
            reasons=[
                f"{model_change}: not compared with the champion; promoted by promotion.on_features_changed=promote "
                f"(silhouette {chal_sil:.4f}, Davies-Bouldin {chal_db:.4f}, stability {stability:.4f})"
            ],
            evidence={**evidence, "features_changed": 1.0},
        )
    if champion is None:
        return PromotionDecision(
            promote=True,
            reasons=[
                "no champion yet: promoting the first model "
                f"(silhouette {chal_sil:.4f}, Davies-Bouldin {chal_db:.4f}, stability {stability:.4f})"
            ],
            evidence=evidence,
        )

    champ_sil, champ_db = _internal_scores(silhouettes[1], data, champion)
    agreement = agreement_ari(champion, challenger)
    evidence.update(champion_silhouette=champ_sil, champion_davies_bouldin=champ_db, agreement_ari=agreement)

    checks: list[tuple[bool, str]] = []
    if math.isnan(chal_sil):
        checks.append((False, "silhouette: challenger has fewer than 2 clusters, silhouette undefined"))
    elif math.isnan(champ_sil):
        checks.append((True, f"silhouette: challenger {chal_sil:.4f}, champion undefined (fewer than 2 clusters)"))
    else:
        floor = champ_sil + gate.min_silhouette_gain
        checks.append(
            (
                chal_sil >= floor,
                f"silhouette: challenger {chal_sil:.4f} {'>=' if chal_sil >= floor else '<'} required {floor:.4f} "
                f"(champion {champ_sil:.4f} {gate.min_silhouette_gain:+.4f})",
            )
        )
    if math.isnan(chal_db):
        checks.append((False, "Davies-Bouldin: challenger has fewer than 2 clusters, index undefined"))
    elif math.isnan(champ_db):
        checks.append((True, f"Davies-Bouldin: challenger {chal_db:.4f}, champion undefined (fewer than 2 clusters)"))
    else:
        ceiling = champ_db * gate.max_davies_bouldin_ratio
        checks.append(
            (
                chal_db <= ceiling,
                f"Davies-Bouldin: challenger {chal_db:.4f} {'<=' if chal_db <= ceiling else '>'} allowed {ceiling:.4f} "
                f"(champion {champ_db:.4f} x {gate.max_davies_bouldin_ratio:g})",
            )
        )
    checks.append(
        (
            stability >= gate.min_stability,
            f"stability: challenger mean bootstrap ARI {stability:.4f} "
            f"{'>=' if stability >= gate.min_stability else '<'} required {gate.min_stability:.4f} "
            f"({gate.bootstrap_rounds} refits, k={challenger_k})",
        )
    )
    if gate.min_agreement is not None:
        checks.append(
            (
                agreement >= gate.min_agreement,
                f"agreement: ARI champion vs challenger {agreement:.4f} "
                f"{'>=' if agreement >= gate.min_agreement else '<'} required {gate.min_agreement:.4f}",
            )
        )
    else:
        checks.append((True, f"agreement: ARI champion vs challenger {agreement:.4f} (not gated)"))

    promote = all(passed for passed, _ in checks)
    reasons = [f"{'PASS' if passed else 'FAIL'} {text}" for passed, text in checks]
    return PromotionDecision(promote=promote, reasons=reasons, evidence=evidence)
