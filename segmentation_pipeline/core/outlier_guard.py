"""The outlier guard's decisions, written once for every engine (issue 8).

Pooled IQR fences treat every customer far from the middle of the whole base as noise; on
spend data that is the small high-value group the business cares most about. So the share a
pooled pass would exclude is capped (``cleaning.outliers.max_share``), and a pooled pass that
flags most of a real provisional cluster is refused too; then ``on_excess`` applies: fences
within provisional clusters (``segment_aware``), a wider multiplier (``widen``) or ``fail``.

An engine supplies only the numbers (:class:`OutlierBackend`: quartiles, counts of rows outside
given fences, provisional clusters); :func:`decide_outliers` turns them into the final fences
and the report, so the decision, the report and its warnings cannot drift between engines.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from segmentation_pipeline.config import PipelineConfig
from segmentation_pipeline.core.threads import threads_for

log = logging.getLogger(__name__)

#: Rows the provisional KMeans is fitted on; the rest are only predicted (speed at 5M rows).
PROVISIONAL_FIT_ROWS = 100_000
#: Rows the candidate k are fitted on, and the silhouette sub-sample (silhouette is O(n^2)).
PROVISIONAL_K_SAMPLE = 5_000
PROVISIONAL_SILHOUETTE_SAMPLE = 2_000
#: Provisional k never exceeds this: it only needs the obvious groups, and a huge configured
#: k_range (or a tiny table) must not turn the guard into thousands of KMeans fits.
PROVISIONAL_MAX_K = 15
#: A provisional cluster with fewer of the fitted rows than this share is dissolved into its neighbours.
MIN_CLUSTER_SHARE = 0.01
#: n_init of the provisional KMeans: it only needs to find the obvious groups.
PROVISIONAL_N_INIT = 3
#: Pooled fences flagging more than this share of one provisional cluster are erasing a segment.
ERASED_CLUSTER_SHARE = 0.25
#: ...and only clusters this large count as segments: a handful of far points is what IQR is for.
MIN_SEGMENT_ROWS = 20
#: "widen" policy: multiplier growth per step, and the most steps before giving up.
WIDEN_FACTOR = 1.5
WIDEN_MAX_STEPS = 20


class OutlierPolicyError(ValueError):
    """The outlier guard tripped under ``on_excess: fail`` (or widening could not meet the cap)."""


@dataclass(frozen=True)
class Fences:
    """Tukey fences on the fence scale (log1p for log1p features): per outlier feature, shape
    (f,), or per provisional cluster and feature, shape (k, f) (NaN for an empty cluster)."""

    low: np.ndarray
    high: np.ndarray
    per_cluster: bool = False


@dataclass(frozen=True)
class OutsideCounts:
    """Rows outside some fence (``flagged``) and outside each feature's fences (``by_feature``)."""

    flagged: int
    by_feature: np.ndarray  # (f,)


@dataclass(frozen=True)
class ClusterCounts:
    """:class:`OutsideCounts` broken down by provisional cluster (index = cluster id)."""

    sizes: np.ndarray  # (k,) rows per cluster
    flagged: np.ndarray  # (k,) rows outside some fence
    by_feature: np.ndarray  # (f,) rows outside each feature's fences, all clusters


class OutlierBackend(Protocol):
    """The numbers an engine computes over its rows, on the fence scale, for the outlier features."""

    def quartiles(self) -> tuple[np.ndarray, np.ndarray]:
        """(Q1, Q3) of each outlier feature over all rows."""
        ...

    def count_outside(self, fences: Fences) -> OutsideCounts:
        """How many rows lie outside ``fences`` (pooled ones)."""
        ...

    def provisional_clusters(self) -> dict[str, Any]:
        """Label every row with a provisional cluster (kept by the backend for the calls below);
        returns the facts of the fit (:func:`provisional_facts`)."""
        ...

    def cluster_counts(self, fences: Fences) -> ClusterCounts:
        """Rows per provisional cluster and how many of them lie outside ``fences``."""
        ...

    def cluster_quartiles(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q1, Q3) of each outlier feature within each provisional cluster: (k, f), NaN when empty."""
        ...


@dataclass(frozen=True)
class GuardDecision:
    """The fences to flag rows with (None: detection off or no rows, nothing is flagged) and the report."""

    fences: Fences | None
    report: dict[str, Any]


def outlier_features(config: PipelineConfig) -> list[str]:
    """The features fences apply to (a subset of the features; clusters use them all)."""
    return list(config.cleaning.outliers.features or config.features)


def tukey(q1: Any, q3: Any, multiplier: float) -> tuple[Any, Any]:
    """Fences from quartiles: scalars, per-feature arrays or per-cluster matrices alike.

    Where the quartiles coincide (half the customers or more share one value: a return rate that
    is mostly 0, a frequency of 1 for one-off buyers, a constant) the fences are open: Tukey's
    rule would call every other value an outlier, and a spread of 0 says nothing about what is
    far. NaN quartiles (a dissolved cluster) stay NaN.
    """
    q1, q3 = np.asarray(q1, dtype=np.float64), np.asarray(q3, dtype=np.float64)
    iqr = q3 - q1
    with np.errstate(invalid="ignore"):
        degenerate = iqr <= 0
    low = np.where(degenerate, -np.inf, q1 - multiplier * iqr)
    high = np.where(degenerate, np.inf, q3 + multiplier * iqr)
    return (float(low), float(high)) if low.ndim == 0 else (low, high)


def open_fence_features(q1: np.ndarray, q3: np.ndarray, columns: Sequence[str]) -> list[str]:
    """The features whose pooled quartiles coincide, so :func:`tukey` leaves them unfenced."""
    return [c for j, c in enumerate(columns) if float(q3[j]) - float(q1[j]) <= 0]


def to_units(values: np.ndarray, columns: Sequence[str], log1p: set[str]) -> np.ndarray:
    """Fences in the features' own units, for humans reading the report."""
    out = np.array(values, dtype=np.float64, copy=True)
    for j, col in enumerate(columns):
        if col in log1p:
            out[..., j] = np.expm1(out[..., j])
    return out


def describe_excess(share: float, cap: float, by_feature: dict[str, float]) -> str:
    parts = ", ".join(f"{col} {s:.1%}" for col, s in sorted(by_feature.items(), key=lambda kv: -kv[1]))
    return f"IQR fences would exclude {share:.1%} of rows (cap {cap:.1%}): {parts}"


def describe_erasure(erased: dict[int, tuple[float, int]], n: int) -> str:
    parts = ", ".join(f"{share:.0%} of provisional cluster {c} ({size} rows, {size / n:.1%})"
                      for c, (share, size) in sorted(erased.items()))
    return f"pooled IQR fences would flag {parts}: a real segment, not noise"


def erased_clusters(counts: ClusterCounts, n_fit: int) -> dict[int, tuple[float, int]]:
    """Provisional clusters (of real size) whose members the pooled fences mostly flag.

    A small dense group far from the middle (the VIPs) stays under the overall cap yet loses
    a large share of its members; scattered noise never makes up much of a real cluster.
    """
    sizes, flagged = counts.sizes, counts.flagged
    floor = max(MIN_CLUSTER_SHARE * n_fit, MIN_SEGMENT_ROWS)
    return {
        int(c): (float(flagged[c] / sizes[c]), int(sizes[c]))
        for c in range(len(sizes))
        if sizes[c] >= floor and flagged[c] > ERASED_CLUSTER_SHARE * sizes[c]
    }


def choose_provisional_k(sample: np.ndarray, config: PipelineConfig, n: int) -> tuple[int, dict[int, float]]:
    """k for the provisional clustering: the configured k, else the best silhouette over the
    configured candidates on a small standardised ``sample`` (1 when none fits); at most ``n``."""
    seed = config.model.random_state
    silhouettes: dict[int, float] = {}
    if config.k is not None:
        k = config.k
    else:
        with threads_for(sample.shape[0]):  # a few thousand rows: one thread (core.threads)
            ceiling = min(PROVISIONAL_MAX_K, sample.shape[0] // MIN_SEGMENT_ROWS)
            for cand in config.k_candidates:
                if not 2 <= cand <= ceiling:
                    continue
                labels = KMeans(cand, n_init=PROVISIONAL_N_INIT, random_state=seed).fit_predict(sample)
                if len(np.unique(labels)) < 2:
                    continue
                size = min(PROVISIONAL_SILHOUETTE_SAMPLE, len(sample))
                silhouettes[cand] = float(silhouette_score(sample, labels, sample_size=size, random_state=seed))
        k = max(silhouettes, key=lambda c: silhouettes[c]) if silhouettes else 1
    return max(1, min(k, n)), silhouettes


def dissolved_clusters(fitted_sizes: np.ndarray) -> np.ndarray:
    """Clusters holding under MIN_CLUSTER_SHARE of the fitted rows: no segment, and their quartiles
    mean nothing (k-means++ puts a spare centroid on a few far points), so they are dissolved."""
    return np.flatnonzero(fitted_sizes < MIN_CLUSTER_SHARE * fitted_sizes.sum())


def provisional_facts(k: int, silhouettes: dict[int, float], dissolved: Sequence[int] = ()) -> dict[str, Any]:
    """The report's account of the provisional clustering."""
    return {"provisional_k": k, "provisional_silhouette": silhouettes, "provisional_dissolved": list(dissolved)}


def base_report(config: PipelineConfig, columns: Sequence[str]) -> dict[str, Any]:
    """The outlier report before any fence is computed; every engine fills in the same keys."""
    ocfg = config.cleaning.outliers
    log1p = set(config.transform.log1p_columns)
    return {
        "method_requested": ocfg.method,
        "method_used": "disabled",
        "features": list(columns),
        "iqr_multiplier": ocfg.iqr_multiplier,
        "multiplier_used": None,
        "max_share": ocfg.max_share,
        "pooled_share": 0.0,
        "share_by_feature": {c: 0.0 for c in columns},
        "final_share": 0.0,
        "n_outliers": 0,
        "outliers_by_feature": {c: 0 for c in columns},
        "fences": {},
        "fence_scale": {c: ("log1p" if c in log1p else "raw") for c in columns},
        "open_fences": [],
        "guard_tripped": False,
        "warning": None,
    }


def idle_report(config: PipelineConfig, n: int) -> dict[str, Any] | None:
    """The report when nothing can be flagged (detection disabled, or no rows); None otherwise."""
    ocfg = config.cleaning.outliers
    if ocfg.enabled and n > 0:
        return None
    report = base_report(config, outlier_features(config))
    if ocfg.enabled:
        report["method_used"] = "pooled"
    return report


def decide_outliers(backend: OutlierBackend, config: PipelineConfig, n: int) -> GuardDecision:
    """Pooled fences unless they exclude over ``max_share`` or erase a provisional cluster; then
    the ``on_excess`` policy. ``n`` is the number of rows the backend holds.

    Raises OutlierPolicyError under ``on_excess: fail``, or when widening cannot meet the cap.
    """
    idle = idle_report(config, n)
    if idle is not None:
        return GuardDecision(None, idle)
    ocfg = config.cleaning.outliers
    columns = outlier_features(config)
    log1p = set(config.transform.log1p_columns)
    report = base_report(config, columns)

    q1, q3 = backend.quartiles()
    report["open_fences"] = open_fence_features(q1, q3, columns)
    if report["open_fences"]:
        log.info("no IQR fences on %s: half the rows or more share one value", report["open_fences"])

    def pooled(multiplier: float) -> Fences:
        low, high = tukey(q1, q3, multiplier)
        return Fences(np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64))

    def fences_report(fences: Fences) -> dict[str, list[float]]:
        lo, hi = to_units(fences.low, columns, log1p), to_units(fences.high, columns, log1p)
        return {c: [float(lo[j]), float(hi[j])] for j, c in enumerate(columns)}

    multiplier = ocfg.iqr_multiplier
    fences = pooled(multiplier)
    counts = backend.count_outside(fences)
    pooled_share = counts.flagged / n
    by_feature = {c: float(counts.by_feature[j] / n) for j, c in enumerate(columns)}
    report.update(pooled_share=pooled_share, share_by_feature=by_feature, fences=fences_report(fences))

    method = "pooled"
    facts: dict[str, Any] | None = None
    message: str | None = None
    erased: dict[int, tuple[float, int]] = {}
    if ocfg.method == "segment_aware":
        method = "segment_aware"
    elif pooled_share > ocfg.max_share:
        message = describe_excess(pooled_share, ocfg.max_share, by_feature)
    elif counts.flagged:
        facts = backend.provisional_clusters()
        erased = erased_clusters(backend.cluster_counts(fences), n)
        if erased:
            message = describe_erasure(erased, n)
    if message is not None:
        report["guard_tripped"] = True
        report["erased_clusters"] = {c: {"flagged_share": v[0], "size": v[1]} for c, v in erased.items()}
        if ocfg.on_excess == "fail":
            raise OutlierPolicyError(message + "; outliers.on_excess is 'fail'")
        if ocfg.on_excess == "segment_aware":
            method = "segment_aware"
            message += "; using segment-aware fences instead"
        else:  # widen until under the cap and no provisional cluster is erased
            steps = 0
            while counts.flagged / n > ocfg.max_share or (
                facts is not None and erased_clusters(backend.cluster_counts(fences), n)
            ):
                if steps == WIDEN_MAX_STEPS:
                    raise OutlierPolicyError(
                        f"{message}; widening the IQR multiplier to {multiplier:g} still excludes "
                        f"{counts.flagged / n:.1%} (IQR by feature "
                        f"{dict(zip(columns, (np.asarray(q3) - np.asarray(q1)).round(6).tolist()))})"
                    )
                multiplier *= WIDEN_FACTOR
                fences = pooled(multiplier)
                counts = backend.count_outside(fences)
                steps += 1
            method = "widened"
            report["fences"] = fences_report(fences)
            message += f"; widened the IQR multiplier to {multiplier:g}"
        report["warning"] = message
        log.warning("%s", message)

    report["multiplier_used"] = multiplier
    n_outliers, per_feature = counts.flagged, counts.by_feature
    if method == "segment_aware":
        facts = facts if facts is not None else backend.provisional_clusters()
        k = facts["provisional_k"]
        low_k, high_k = tukey(*backend.cluster_quartiles(k), multiplier)
        fences = Fences(np.asarray(low_k, dtype=np.float64), np.asarray(high_k, dtype=np.float64), per_cluster=True)
        by_cluster = backend.cluster_counts(fences)
        n_outliers, per_feature = int(by_cluster.flagged.sum()), by_cluster.by_feature
        lo_k, hi_k = to_units(fences.low, columns, log1p), to_units(fences.high, columns, log1p)
        sizes = by_cluster.sizes
        report.update(
            facts,
            cluster_sizes={c: int(v) for c, v in enumerate(sizes)},
            outliers_by_cluster={c: int(v) for c, v in enumerate(by_cluster.flagged)},
            cluster_fences={  # in the features' own units; dissolved clusters have none
                c: {col: [float(lo_k[c, j]), float(hi_k[c, j])] for j, col in enumerate(columns)}
                for c in range(k)
                if sizes[c]
            },
        )
    final_share = n_outliers / n
    if final_share > ocfg.max_share and method == "segment_aware":
        extra = f"segment-aware fences still exclude {final_share:.1%} of rows (cap {ocfg.max_share:.1%})"
        report["warning"] = f"{report['warning']}; {extra}" if report["warning"] else extra
        log.warning("%s", extra)
    report.update(
        method_used=method,
        final_share=final_share,
        n_outliers=int(n_outliers),
        outliers_by_feature={c: int(per_feature[j]) for j, c in enumerate(columns)},
    )
    return GuardDecision(fences, report)
