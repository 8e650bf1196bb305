"""Evidence for the number of segments k, and the rules that read it.

Why more than the elbow and the silhouette: the elbow merges a small distinct group whose removal
barely changes the WCSS, the silhouette favours few, compact, equal clusters, and neither can say
"there are no groups at all" (both are undefined or meaningless at k=1). The gap statistic compares
against a structureless reference (so it can choose k=1), resampling stability says whether a
partition is a property of the data or of one fit, and the smallest segment share keeps a rule from
choosing a partition with a near-empty segment.

Cost (why it stays bounded at millions of rows): :func:`k_evidence` runs the product's own sweep
(:func:`segmentation_pipeline.core.k_selection.sweep_k`: fits on <= ``max_rows`` rows, silhouette
on a fixed seeded sample) and computes everything else -- gap reference fits, stability refits,
the smallest segment share and the Gaussian-mixture BIC -- on one seeded sample of at most
``eval_rows`` rows (default 10,000), so that extra work does not grow with the table.

Every rule takes the evidence frame and returns ``(k, reason)``; :func:`product_rule` returns a
:class:`KChoice` that also grades the structure (clear / weak / none).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture

from segmentation_pipeline.config import PipelineConfig
from segmentation_pipeline.core.k_selection import (
    METRIC_COLUMNS,
    KSelection,
    check_k_against_rows,
    choose_k,
    count_distinct_rows,
    sample_note,
    sweep_k,
)
from segmentation_pipeline.core.modeling import sample_indices
from segmentation_pipeline.core.threads import threads_for

__all__ = [
    "EVIDENCE_COLUMNS",
    "EvidenceSettings",
    "KChoice",
    "PUBLIC_COLUMNS",
    "RULES",
    "SAMPLE_COLUMNS",
    "choose_from_evidence",
    "combine_evidence",
    "evidence_records",
    "evidence_settings",
    "bic_rule",
    "ch_rule",
    "elbow_rule",
    "gap_rule",
    "gap_statistic",
    "gmm_bic_rule",
    "grade_structure",
    "k_evidence",
    "product_rule",
    "public_evidence",
    "reference_sample",
    "sample_evidence",
    "select_k",
    "silhouette_rule",
    "stability_rule",
    "today_rule",
    "vote_rule",
]

EVIDENCE_COLUMNS = [
    "k",
    "inertia",
    "silhouette",
    "davies_bouldin",
    "calinski_harabasz",
    "log_w",
    "gap",
    "gap_se",
    "stability",
    "min_share",
    "bic",
]

Structure = Literal["clear", "weak", "none"]


@dataclass(frozen=True)
class EvidenceSettings:
    """How much work :func:`k_evidence` does; defaults keep the extra cost independent of n."""

    n_init: int = 3  # KMeans restarts for the sweep and the evaluation-sample fits (as the product's sweep)
    random_state: int = 42
    max_rows: int = 100_000  # the product sweep's fit sample
    silhouette_rows: int = 10_000  # the product sweep's silhouette sample
    eval_rows: int = 10_000  # gap, stability, smallest share and BIC are computed on this many rows
    n_references: int = 5  # B, reference draws for the gap statistic (5 keeps the 1M-row cost <= 2x the sweep)
    reference: Literal["pca", "box"] = "pca"
    n_resamples: int = 5  # stability refits per k
    resample_share: float = 0.8
    bic: bool = True


def reference_sample(X: np.ndarray, rng: np.random.Generator, method: Literal["pca", "box"] = "pca") -> np.ndarray:
    """One structureless draw shaped like X: uniform over X's bounding box, or over the box aligned
    with X's principal axes (Tibshirani, Walther & Hastie 2001, section 3, reference (b)), which
    follows the data's shape and is the one they recommend."""
    X = np.asarray(X, dtype=np.float64)
    if method == "box":
        return rng.uniform(X.min(axis=0), X.max(axis=0), size=X.shape)
    mean = X.mean(axis=0)
    _, _, vt = np.linalg.svd(X - mean, full_matrices=False)
    rotated = (X - mean) @ vt.T
    draw = rng.uniform(rotated.min(axis=0), rotated.max(axis=0), size=(len(X), rotated.shape[1]))
    return draw @ vt + mean


def _kmeans(X: np.ndarray, k: int, n_init: int, seed: int) -> KMeans:
    return KMeans(n_clusters=k, init="k-means++", algorithm="lloyd", n_init=n_init, random_state=seed).fit(X)


def gap_statistic(
    X: np.ndarray,
    k_values: Sequence[int],
    log_w: np.ndarray,
    *,
    n_references: int,
    random_state: int,
    method: Literal["pca", "box"] = "pca",
) -> tuple[np.ndarray, np.ndarray]:
    """Gap(k) = E*[log W_k] - log W_k and its standard error s_k = sd_k * sqrt(1 + 1/B)
    (Tibshirani, Walther & Hastie 2001); W_k is the KMeans within-cluster sum of squares.

    ``log_w`` holds log W_k of X for each k; the expectation is over ``n_references`` seeded
    reference draws, each clustered once per k (one restart: the reference has no structure to miss).
    """
    rng = np.random.default_rng((random_state, 7))
    ref_log_w = np.empty((n_references, len(k_values)))
    for b in range(n_references):
        Z = reference_sample(X, rng, method)
        for j, k in enumerate(k_values):
            ref_log_w[b, j] = np.log(max(_kmeans(Z, int(k), 1, random_state + b).inertia_, 1e-300))
    gap = ref_log_w.mean(axis=0) - np.asarray(log_w, dtype=np.float64)
    se = ref_log_w.std(axis=0) * np.sqrt(1 + 1 / n_references)
    return gap, se


def _stability(X: np.ndarray, labels: np.ndarray, k: int, settings: EvidenceSettings) -> float:
    """Mean ARI between the evaluation fit and refits on seeded subsamples, on the common points
    (resampling stability: Ben-Hur, Elisseeff & Guyon 2002; Lange et al. 2004)."""
    if k == 1:
        return 1.0
    rng = np.random.default_rng((settings.random_state, 11, k))
    size = max(int(round(settings.resample_share * len(X))), k)
    scores = []
    for r in range(settings.n_resamples):
        idx = np.sort(rng.choice(len(X), size=size, replace=False))
        refit = _kmeans(X[idx], k, settings.n_init, settings.random_state + 100 + r)
        scores.append(adjusted_rand_score(labels[idx], refit.labels_))
    return float(np.mean(scores))


SAMPLE_COLUMNS = ["k", "log_w", "gap", "gap_se", "stability", "min_share", "bic"]


def _sample_columns(
    S: np.ndarray, ks: list[int], settings: EvidenceSettings
) -> tuple[dict[str, Any], dict[str, float]]:
    """The per-k columns of :func:`sample_evidence` and the seconds each part took."""
    seconds = {"eval_fits": 0.0, "stability": 0.0, "bic": 0.0, "gap": 0.0}
    log_w, stability, min_share, bic = [], [], [], []
    for k in ks:
        started = time.perf_counter()
        fit = _kmeans(S, k, settings.n_init, settings.random_state)
        log_w.append(np.log(max(fit.inertia_, 1e-300)))
        min_share.append(float(np.bincount(fit.labels_, minlength=k).min() / len(S)))
        seconds["eval_fits"] += time.perf_counter() - started
        started = time.perf_counter()
        stability.append(_stability(S, fit.labels_, k, settings))
        seconds["stability"] += time.perf_counter() - started
        started = time.perf_counter()
        if settings.bic:
            gmm = GaussianMixture(k, covariance_type="full", random_state=settings.random_state)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                bic.append(float(gmm.fit(S).bic(S)))
        else:
            bic.append(float("nan"))
        seconds["bic"] += time.perf_counter() - started
    started = time.perf_counter()
    gap, gap_se = gap_statistic(
        S, ks, np.asarray(log_w), n_references=settings.n_references,
        random_state=settings.random_state, method=settings.reference,
    )
    seconds["gap"] = time.perf_counter() - started
    columns = {"log_w": log_w, "gap": gap, "gap_se": gap_se, "stability": stability, "min_share": min_share,
               "bic": bic}
    return columns, seconds


def sample_evidence(S: np.ndarray, k_values: Sequence[int], settings: EvidenceSettings) -> pd.DataFrame:
    """The evidence read on one bounded sample S (columns :data:`SAMPLE_COLUMNS`, k=1 always added):
    log W_k, gap and its SE, resampling stability, smallest segment share, Gaussian-mixture BIC.

    Written once for both engines: the local engine passes a seeded sample of its rows, the Spark
    engine the seeded sample it already collects to the driver. ``attrs["seconds"]`` per part.
    """
    S = np.asarray(S, dtype=np.float64)
    ks = sorted({1, *(int(k) for k in k_values)})
    with threads_for(len(S)):  # ~100 fits on a bounded sample: threads cost more than they save
        columns, seconds = _sample_columns(S, ks, settings)
    table = pd.DataFrame({"k": ks, **columns})
    table.attrs.update({"eval_rows": len(S), "seconds": seconds})
    return table


def combine_evidence(metrics: pd.DataFrame, sampled: pd.DataFrame) -> pd.DataFrame:
    """A sweep's metrics (any engine; extra columns such as Spark's ``silhouette_spark`` kept) joined
    with :func:`sample_evidence` on k; a k the sweep did not fit (k=1 for Spark) has NaN metrics."""
    table = metrics.merge(sampled, on="k", how="outer").sort_values("k").reset_index(drop=True)
    extra = [c for c in table.columns if c not in EVIDENCE_COLUMNS]
    table = table[[*EVIDENCE_COLUMNS, *extra]]
    table.attrs.update(metrics.attrs)
    table.attrs.update({"eval_rows": sampled.attrs["eval_rows"], "seconds": dict(sampled.attrs["seconds"])})
    return table


def k_evidence(
    X: np.ndarray,
    k_values: Sequence[int],
    settings: EvidenceSettings | None = None,
    progress: Callable[[int, dict], None] | None = None,
) -> pd.DataFrame:
    """One row of evidence per k (k=1 always added: the gap needs it), columns :data:`EVIDENCE_COLUMNS`.

    inertia / silhouette / davies_bouldin / calinski_harabasz come from the product's own sweep
    (:func:`sweep_k`), so :func:`today_rule` reproduces today's choice exactly. The other columns are
    :func:`sample_evidence` on a seeded sample of at most ``settings.eval_rows`` rows (module
    docstring). ``attrs`` record ``n_rows``, ``eval_rows`` and ``seconds`` per part (sweep,
    eval_fits, stability, bic, gap).
    """
    settings = settings or EvidenceSettings()
    X = np.asarray(X, dtype=np.float64)
    ks = sorted({1, *(int(k) for k in k_values)})
    started = time.perf_counter()
    swept = sweep_k(
        X,
        ks,
        n_init=settings.n_init,
        random_state=settings.random_state,
        silhouette_sample=settings.silhouette_rows,
        max_rows=settings.max_rows,
        progress=progress,
    )
    sweep_seconds = time.perf_counter() - started
    S = X[sample_indices(len(X), settings.eval_rows, (settings.random_state, 3))]
    table = combine_evidence(swept, sample_evidence(S, ks, settings))
    table.attrs["seconds"] = {"sweep": sweep_seconds, **table.attrs["seconds"]}
    return table


# --------------------------------------------------------------------------------------- rules


def _multi(evidence: pd.DataFrame) -> pd.DataFrame:
    """The rows with k >= 2 (indices other than the gap are undefined for one cluster)."""
    return evidence[evidence["k"] >= 2].sort_values("k").reset_index(drop=True)


def _argbest(table: pd.DataFrame, column: str, largest: bool = True) -> int:
    values = table[column].to_numpy(dtype=float)
    if np.isnan(values).all():
        return int(table["k"].iloc[0])
    i = int(np.nanargmax(values) if largest else np.nanargmin(values))
    return int(table["k"].iloc[i])


def elbow_rule(evidence: pd.DataFrame) -> tuple[int, str]:
    """The kneed knee (Satopaa et al. 2011) of WCSS over k >= 2; smallest k when there is none."""
    table = _multi(evidence)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from kneed import KneeLocator  # imports matplotlib.pyplot: only when a knee is sought

        knee = KneeLocator(table["k"], table["inertia"], curve="convex", direction="decreasing").knee
    if knee is None:
        return int(table["k"].iloc[0]), "no knee in WCSS; smallest k"
    return int(knee), f"knee of WCSS at k={int(knee)} (kneed)"


def silhouette_rule(evidence: pd.DataFrame) -> tuple[int, str]:
    """Highest mean silhouette (Rousseeuw 1987)."""
    table = _multi(evidence)
    k = _argbest(table, "silhouette")
    return k, f"best silhouette {table.loc[table['k'] == k, 'silhouette'].iloc[0]:.2f} at k={k}"


def today_rule(evidence: pd.DataFrame, tolerance: float = 0.02) -> tuple[int, str]:
    """The product's current rule, unchanged (:func:`segmentation_pipeline.core.k_selection.choose_k`)."""
    table = _multi(evidence)
    table.attrs.update(evidence.attrs)
    selection = choose_k(table[["k", "inertia", "silhouette", "davies_bouldin", "calinski_harabasz"]], tolerance)
    return selection.k, selection.reason


def _gap_k(evidence: pd.DataFrame) -> int:
    table = evidence.sort_values("k").reset_index(drop=True)
    gap, se, ks = table["gap"].to_numpy(), table["gap_se"].to_numpy(), table["k"].to_numpy()
    for i in range(len(ks) - 1):
        if gap[i] >= gap[i + 1] - se[i + 1]:
            return int(ks[i])
    return int(ks[-1])


def gap_rule(evidence: pd.DataFrame) -> tuple[int, str]:
    """Tibshirani's 1-SE rule: the smallest k with Gap(k) >= Gap(k+1) - s_{k+1} (k=1 included)."""
    k = _gap_k(evidence)
    return k, f"gap 1-SE rule: smallest k with Gap(k) >= Gap(k+1) - s(k+1) is k={k}"


def stability_rule(evidence: pd.DataFrame, tie: float = 0.02) -> tuple[int, str]:
    """Most stable k >= 2 under resampling (mean ARI of refits); within ``tie`` of the best, the
    largest k (k=2 is stable on almost any data, so stability alone is biased toward small k)."""
    table = _multi(evidence)
    best = table["stability"].max()
    k = int(table.loc[table["stability"] >= best - tie, "k"].max())
    return k, f"most stable k={k} (stability {table.loc[table['k'] == k, 'stability'].iloc[0]:.2f})"


def ch_rule(evidence: pd.DataFrame) -> tuple[int, str]:
    """Highest Calinski-Harabasz ratio (Calinski & Harabasz 1974)."""
    k = _argbest(_multi(evidence), "calinski_harabasz")
    return k, f"best Calinski-Harabasz at k={k}"


def bic_rule(evidence: pd.DataFrame) -> tuple[int, str]:
    """Lowest BIC of a full-covariance Gaussian mixture (Schwarz 1978; Fraley & Raftery 2002), k=1 included."""
    k = _argbest(evidence.sort_values("k"), "bic", largest=False)
    return k, f"lowest Gaussian-mixture BIC at k={k}"


def vote_rule(evidence: pd.DataFrame) -> tuple[int, str]:
    """Majority over indices, in the manner of NbClust (Charrad et al. 2014): silhouette, CH,
    Davies-Bouldin, elbow, gap, BIC and stability each vote for a k; the most votes win, ties to
    the smaller k."""
    table = _multi(evidence)
    votes = {
        "silhouette": silhouette_rule(evidence)[0],
        "calinski_harabasz": ch_rule(evidence)[0],
        "davies_bouldin": _argbest(table, "davies_bouldin", largest=False),
        "elbow": elbow_rule(evidence)[0],
        "gap": gap_rule(evidence)[0],
        "bic": bic_rule(evidence)[0],
        "stability": stability_rule(evidence)[0],
    }
    counts = pd.Series(list(votes.values())).value_counts()
    top = counts.max()
    k = int(min(counts[counts == top].index))
    voters = ", ".join(name for name, v in votes.items() if v == k)
    return k, f"{top} of {len(votes)} indices vote k={k} ({voters})"


@dataclass
class KChoice:
    """The product rule's answer: k, why, how clear the structure is, and the k held back."""

    k: int
    reason: str
    structure: Structure
    too_small: list[int] = field(default_factory=list)  # k whose smallest segment < min_segment_share
    unstable: list[int] = field(default_factory=list)  # k whose stability < min_stability
    needs_review: bool = False  # every k has a segment below the minimum share: k is only a suggestion


# Kaufman & Rousseeuw (1990), ch. 2: average silhouette > 0.70 strong, > 0.50 reasonable,
# > 0.25 weak (possibly artificial), <= 0.25 no substantial structure.
SILHOUETTE_REASONABLE = 0.50
SILHOUETTE_NONE = 0.25
MIN_STABILITY = 0.90


def grade_structure(evidence: pd.DataFrame, k: int, min_stability: float = MIN_STABILITY) -> tuple[Structure, str]:
    """clear / weak / none for the partition at k, from the gap, the silhouette and the stability.

    none: no k >= 2 beats one group by more than two gap standard errors
    (Gap(k) - 2 s_k <= Gap(1) for every k; Tibshirani et al. 2001 compare against k=1 the same way),
    or the best silhouette is <= 0.25 (Kaufman & Rousseeuw: no substantial structure).
    clear: silhouette at k >= 0.50 (reasonable structure or better) and stability >= ``min_stability``.
    weak: anything else (groups exist but overlap, or refits disagree).
    """
    table = evidence.sort_values("k").reset_index(drop=True)
    multi = _multi(table)
    gap1 = float(table.loc[table["k"] == 1, "gap"].iloc[0])
    gain = float((multi["gap"] - 2 * multi["gap_se"] - gap1).max())
    best_silhouette = float(multi["silhouette"].max())
    if gain <= 0 or best_silhouette <= SILHOUETTE_NONE:
        why = (
            f"no k beats one group by 2 gap SE (best margin {gain:+.3f})"
            if gain <= 0
            else f"best silhouette {best_silhouette:.2f} <= {SILHOUETTE_NONE} (no substantial structure)"
        )
        return "none", why
    row = multi[multi["k"] == k].iloc[0]
    if row["silhouette"] >= SILHOUETTE_REASONABLE and row["stability"] >= min_stability:
        return "clear", f"silhouette {row['silhouette']:.2f} >= {SILHOUETTE_REASONABLE}, stability {row['stability']:.2f}"
    return "weak", f"silhouette {row['silhouette']:.2f}, stability {row['stability']:.2f} (groups overlap or refits disagree)"


def product_rule(
    evidence: pd.DataFrame, min_segment_share: float = 0.01, min_stability: float = MIN_STABILITY
) -> KChoice:
    """The product's rule, chosen on the planted-table benchmark (benchmarks/K_SELECTION.md).

    1. Admissible k >= 2: smallest segment share >= ``min_segment_share`` (a near-empty segment is
       not a segment; gross outliers otherwise take one) and resampling stability >= ``min_stability``
       (the partition is the data's, not one fit's). If no k passes, the share test alone; if none
       passes that either, every k, with ``needs_review`` set (k is then only a suggestion).
    2. Three indices vote among the admissible k, in the manner of NbClust's majority rule
       (Charrad et al. 2014): best silhouette (Rousseeuw 1987; compact, separated groups), best
       Calinski-Harabasz (1974; keeps a small distinct group that the silhouette merges), lowest
       Gaussian-mixture BIC (Fraley & Raftery 2002; unequal spreads and elongated groups). Most
       votes win; a three-way split goes to the smallest k.
    3. :func:`grade_structure` says clear / weak / none. When it is not clear at the voted k, the
       three indices are reading overlapping groups (irrelevant noise columns flatten silhouette
       and CH alike, and refits disagree), so the elbow-then-silhouette reading of
       :func:`today_rule` decides instead, unless its k has a segment below ``min_segment_share``;
       on the benchmark this keeps the rule never worse than today's on any shape.
       k is still returned for "none" (the product needs segments), but the segments are then a
       partition of a structureless table.
    """
    multi = _multi(evidence)
    too_small = [int(k) for k in multi.loc[multi["min_share"] < min_segment_share, "k"]]
    unstable = [int(k) for k in multi.loc[multi["stability"] < min_stability, "k"]]
    admissible = multi[~multi["k"].isin(too_small) & ~multi["k"].isin(unstable)]
    scope = f"among k with every segment >= {min_segment_share:.0%} and stability >= {min_stability}"
    if admissible.empty:
        admissible = multi[~multi["k"].isin(too_small)]
        scope = f"no k is stable; among k with every segment >= {min_segment_share:.0%}"
    needs_review = admissible.empty
    if needs_review:
        admissible = multi
        scope = f"every k has a segment < {min_segment_share:.0%}, so this k needs review; among all k"
    votes = {
        "silhouette": _argbest(admissible, "silhouette"),
        "Calinski-Harabasz": _argbest(admissible, "calinski_harabasz"),
        "BIC": _argbest(admissible, "bic", largest=False),
    }
    counts = pd.Series(list(votes.values())).value_counts()
    k = int(min(counts[counts == counts.max()].index))
    voters = ", ".join(name for name, v in votes.items() if v == k)
    structure, why = grade_structure(evidence, k, min_stability)
    decided = f"{voters} ({counts.max()} of 3 votes, {scope})"
    if structure != "clear":
        fallback, fallback_reason = today_rule(evidence)
        if fallback != k and fallback not in too_small:
            decided = f"{fallback_reason} (structure {structure} at the vote's k={k}, so the WCSS knee decides)"
            k = fallback
            structure, why = grade_structure(evidence, k, min_stability)
    reason = f"k={k}: {decided}; structure {structure}: {why}"
    return KChoice(
        k=k, reason=reason, structure=structure, too_small=too_small, unstable=unstable, needs_review=needs_review
    )


RULES = {
    "elbow": elbow_rule,
    "silhouette": silhouette_rule,
    "today": today_rule,
    "gap": gap_rule,
    "stability": stability_rule,
    "ch": ch_rule,
    "vote": vote_rule,
    "bic": bic_rule,
}


# ------------------------------------------------------------------------------- the product's k

PUBLIC_COLUMNS = [
    "k",
    "inertia",
    "silhouette",
    "davies_bouldin",
    "calinski_harabasz",
    "gap",
    "gap_se",
    "stability",
    "smallest_share",
    "bic",
    "below_min_share",
]
"""The evidence shown to people (MLflow, Dagster, ``run --json``): one row per candidate k."""


def evidence_settings(config: PipelineConfig) -> EvidenceSettings:
    """The config's k-selection settings as :class:`EvidenceSettings` (the sweep keeps its own)."""
    settings = config.k_selection
    return EvidenceSettings(
        n_init=settings.sweep_n_init,
        random_state=config.model.random_state,
        max_rows=settings.sweep_max_rows,
        silhouette_rows=settings.silhouette_sample,
        eval_rows=settings.eval_rows,
        n_references=settings.gap_references,
        n_resamples=settings.stability_resamples,
    )


def public_evidence(evidence: pd.DataFrame, candidates: Sequence[int], min_segment_share: float) -> pd.DataFrame:
    """The candidate rows of ``evidence`` in :data:`PUBLIC_COLUMNS` (``min_share`` shown as
    ``smallest_share``; ``below_min_share`` marks a k that is never chosen automatically)."""
    table = evidence[evidence["k"].isin([int(k) for k in candidates])].rename(columns={"min_share": "smallest_share"})
    table = table.assign(below_min_share=table["smallest_share"] < min_segment_share)
    return table[PUBLIC_COLUMNS].sort_values("k").reset_index(drop=True)


def evidence_records(table: pd.DataFrame) -> list[dict[str, object]]:
    """JSON-ready rows (plain Python numbers, NaN as None) of a :func:`public_evidence` table."""
    records: list[dict[str, object]] = []
    for row in table.to_dict(orient="records"):
        clean: dict[str, object] = {}
        for key, value in row.items():
            if isinstance(value, (bool, np.bool_)):
                clean[str(key)] = bool(value)
            elif isinstance(value, (int, np.integer)):
                clean[str(key)] = int(value)
            else:
                number = float(value)
                clean[str(key)] = number if np.isfinite(number) else None
        records.append(clean)
    return records


def gmm_bic_rule(table: pd.DataFrame) -> int:
    """k for ``model.algorithm: gmm`` when k is not fixed: the lowest full-covariance mixture BIC
    (Schwarz 1978; Fraley & Raftery 2002) over the candidate rows of a :func:`public_evidence`
    table, leaving out a k marked ``below_min_share`` unless every candidate is."""
    allowed = table[~table["below_min_share"]]
    return _argbest(allowed if len(allowed) else table, "bic", largest=False)


def choose_from_evidence(metrics: pd.DataFrame, evidence: pd.DataFrame, config: PipelineConfig) -> KSelection:
    """The product's k for either engine: :func:`product_rule` over ``evidence`` (a fixed ``config.k``
    is kept, and still graded; ``model.algorithm: gmm`` takes :func:`gmm_bic_rule`'s k), with today's knee / best-silhouette reading of ``metrics`` (the
    candidate sweep rows) kept for reference."""
    settings = config.k_selection
    candidates = config.k_candidates
    today = choose_k(metrics, settings.silhouette_tolerance)
    note = sample_note(metrics)
    table = public_evidence(evidence, candidates, config.min_segment_share)
    too_small = [int(k) for k in table.loc[table["below_min_share"], "k"]]
    if config.k is not None:
        structure, why = grade_structure(evidence, config.k, settings.min_stability)
        k, fixed = config.k, True
        reason = f"fixed by config: k={k}{note}; structure {structure}: {why}"
    elif config.model.algorithm == "gmm":
        k = gmm_bic_rule(table)
        fixed = False
        structure, why = grade_structure(evidence, k, settings.min_stability)
        scope = "among the candidates" if k not in too_small else "every candidate has a segment below min_segment_share"
        reason = (
            f"k={k}: lowest Gaussian-mixture BIC {scope} (model.algorithm=gmm: BIC decides, the KMeans "
            f"indices are shown for reference){note}; structure {structure}: {why}"
        )
    else:
        choice = product_rule(
            evidence[evidence["k"].isin([1, *candidates])], config.min_segment_share, settings.min_stability
        )
        k, fixed, structure = choice.k, False, choice.structure
        reason = choice.reason + note
    return KSelection(
        k=int(k),
        reason=reason,
        metrics=today.metrics,
        knee=today.knee,
        best_silhouette_k=today.best_silhouette_k,
        silhouette_sample_size=today.silhouette_sample_size,
        fixed=fixed,
        evidence=table,
        structure=structure,
        too_small=too_small,
    )


def select_k(
    X: np.ndarray, config: PipelineConfig, progress: Callable[[int, dict], None] | None = None
) -> KSelection:
    """Sweep ``config.k_candidates`` on X (pass the fit rows, i.e. non-outliers), gather the
    evidence (:func:`k_evidence`) and choose k by :func:`product_rule`. A fixed k is still scored.

    ``progress`` is called per candidate k (not for the k=1 fit that only the gap needs).
    """
    candidates = set(config.k_candidates)
    check_k_against_rows(config.k_range, config.k, count_distinct_rows(np.asarray(X), max(candidates) + 1))

    def candidate_progress(k: int, row: dict) -> None:
        if progress is not None and k in candidates:
            progress(k, row)

    evidence = k_evidence(X, config.k_candidates, evidence_settings(config), progress=candidate_progress)
    metrics = evidence.loc[evidence["k"].isin(candidates), METRIC_COLUMNS].reset_index(drop=True)
    metrics.attrs.update(evidence.attrs)
    return choose_from_evidence(metrics, evidence, config)
