"""IQR outlier detection that does not erase real segments (issue 8).

Pooled IQR fences treat every customer far from the middle of the whole base as noise; on
spend data that is the small high-value group the business cares most about. So the share a
pooled pass would exclude is capped (``cleaning.outliers.max_share``); above the cap the
configured policy applies, by default fences computed within provisional clusters, which
only flag points that are unusual *for their own segment*.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from segmentation_pipeline.config import PipelineConfig
from segmentation_pipeline.core.rows import ROW_BLOCK, map_row_blocks

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
class OutlierResult:
    mask: np.ndarray  # bool per row, True = outlier (kept out of fitting)
    reasons: pd.Series  # "" or "outlier:<feat>[,<feat>...]", same index as the input frame
    report: dict[str, Any]


def iqr_fences(values: np.ndarray, multiplier: float) -> tuple[float, float]:
    """Tukey fences (numpy's linear quantiles); no finite value means nothing can be fenced."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return -np.inf, np.inf
    low, high = _tukey(*np.percentile(finite, [25, 75]), multiplier)
    return float(low), float(high)


def _tukey(q1: Any, q3: Any, multiplier: float) -> tuple[Any, Any]:
    """Fences from quartiles: scalars, per-feature arrays or per-cluster matrices alike."""
    return q1 - multiplier * (q3 - q1), q3 + multiplier * (q3 - q1)


def flag_labels(flags: np.ndarray, names: Sequence[str], prefix: str = "") -> pd.Categorical:
    """Turn an (n, f) bool matrix into ``prefix + "a,b"`` labels ("" for none), vectorised.

    Rows are encoded as a bitmask so only the few distinct combinations of the (few) flagged
    rows are ever formatted; the result is categorical (a byte per row, not a string each).
    """
    flags = np.asarray(flags, dtype=bool)
    if flags.ndim != 2 or flags.shape[1] != len(names):
        raise ValueError(f"flags of shape {flags.shape} do not match {len(names)} names")
    codes = np.zeros(flags.shape[0], dtype=np.int32)
    flagged = np.flatnonzero(flags.any(axis=1))
    categories = [""]
    if len(flagged):
        packed, inverse = np.unique(np.packbits(flags[flagged], axis=1, bitorder="little"), axis=0, return_inverse=True)
        bits = np.unpackbits(packed, axis=1, count=len(names), bitorder="little").astype(bool)
        categories += [prefix + ",".join(np.asarray(names)[row]) for row in bits]
        codes[flagged] = inverse.ravel() + 1
    return pd.Categorical.from_codes(codes, categories=categories)


class _Columns:
    """Features on the fence scale, one read-only array per column: only log1p columns are
    copied, and a row block is stacked into a matrix only when a step needs one."""

    def __init__(self, arrays: list[np.ndarray]) -> None:
        self.arrays = arrays
        self.n = len(arrays[0]) if arrays else 0

    def rows(self, index: Any) -> np.ndarray:
        """The rows at ``index`` (a slice, positions or a mask) as an (m, f) float64 matrix."""
        return np.column_stack([a[index] for a in self.arrays])

    def subset(self, columns: Sequence[int]) -> _Columns:
        return _Columns([self.arrays[j] for j in columns])


def _transformed(frame: pd.DataFrame, columns: Sequence[str], log1p: set[str]) -> _Columns:
    """The scale fences live on: log1p for skewed features, raw otherwise."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"outlier detection needs columns {missing}; frame has {list(frame.columns)}")
    arrays = []
    for col in columns:
        values = frame[col].to_numpy(dtype=np.float64, na_value=np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            scaled = np.log1p(values) if col in log1p else values  # never written to: no copy needed
        bad = ~np.isfinite(scaled)
        if bad.any():
            example = values[bad][0]
            scale = "log1p scale" if col in log1p else "raw scale"
            raise ValueError(
                f"column {col!r} has {int(bad.sum())} value(s) that are not finite on the {scale} "
                f"(e.g. {example!r}); clean the data first"
            )
        arrays.append(scaled)
    return _Columns(arrays)


def _outside(z: _Columns, low: np.ndarray, high: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """(n, f) flags of values outside their fences, one column at a time (fences per feature, or
    per (cluster, feature) indexed by ``labels``)."""
    flags = np.empty((z.n, len(z.arrays)), dtype=bool)
    for j, values in enumerate(z.arrays):
        lo, hi = (low[j], high[j]) if labels is None else (low[labels, j], high[labels, j])
        np.less(values, lo, out=flags[:, j])
        flags[:, j] |= values > hi
    return flags


def _back(values: np.ndarray, columns: Sequence[str], log1p: set[str]) -> np.ndarray:
    """Fences in the features' own units, for humans reading the report."""
    out = np.array(values, dtype=np.float64, copy=True)
    for j, col in enumerate(columns):
        if col in log1p:
            out[..., j] = np.expm1(out[..., j])
    return out


def _shares(flags: np.ndarray, columns: Sequence[str]) -> dict[str, float]:
    n = max(flags.shape[0], 1)
    return {col: float(flags[:, j].sum() / n) for j, col in enumerate(columns)}


def _describe_excess(share: float, cap: float, by_feature: dict[str, float]) -> str:
    parts = ", ".join(f"{col} {s:.1%}" for col, s in sorted(by_feature.items(), key=lambda kv: -kv[1]))
    return f"IQR fences would exclude {share:.1%} of rows (cap {cap:.1%}): {parts}"


def _sample(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= size else np.sort(rng.choice(n, size=size, replace=False))


def _provisional_labels(z: _Columns, config: PipelineConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """Cluster once, cheaply: standardise, k by silhouette on a small sample, fit on a sample,
    predict all. Returns the labels and the facts of the fit for the report.

    When k exceeds the number of real groups, k-means++ puts the spare centroid on a few far
    points: scattered noise then forms a "cluster" whose fences are so wide that it hides
    itself. A cluster with under MIN_CLUSTER_SHARE of the fitted rows is no segment (and its
    quartiles mean nothing), so it is dissolved into the nearest remaining clusters.
    """
    seed = config.model.random_state
    rng = np.random.default_rng(seed)
    n = z.n
    scaler = StandardScaler()  # fitted block by block; rows are standardised when used, never all at once
    for start in range(0, n, ROW_BLOCK):
        scaler.partial_fit(z.rows(slice(start, start + ROW_BLOCK)))
    silhouettes: dict[int, float] = {}
    if config.k is not None:
        k = config.k
    else:
        small = scaler.transform(z.rows(_sample(n, PROVISIONAL_K_SAMPLE, rng)))
        with threadpool_limits(1):  # on a few thousand rows thread start-up costs more than it saves
            ceiling = min(PROVISIONAL_MAX_K, small.shape[0] // MIN_SEGMENT_ROWS)
            for cand in config.k_candidates:
                if not 2 <= cand <= ceiling:
                    continue
                labels = KMeans(cand, n_init=PROVISIONAL_N_INIT, random_state=seed).fit_predict(small)
                if len(np.unique(labels)) < 2:
                    continue
                size = min(PROVISIONAL_SILHOUETTE_SAMPLE, len(small))
                silhouettes[cand] = float(silhouette_score(small, labels, sample_size=size, random_state=seed))
        k = max(silhouettes, key=lambda c: silhouettes[c]) if silhouettes else 1
    k = max(1, min(k, n))
    facts: dict[str, Any] = {"provisional_k": k, "provisional_silhouette": silhouettes, "provisional_dissolved": []}
    if k == 1:
        return np.zeros(n, dtype=np.int32), facts
    fit_rows = scaler.transform(z.rows(_sample(n, PROVISIONAL_FIT_ROWS, rng)))
    model = KMeans(k, n_init=PROVISIONAL_N_INIT, random_state=seed).fit(fit_rows)
    dissolved = np.flatnonzero(np.bincount(model.labels_, minlength=k) < MIN_CLUSTER_SHARE * len(fit_rows))
    # block by block: predict's scratch stays small; int32 labels, no int64 copy
    labels = map_row_blocks(lambda start, stop: model.predict(scaler.transform(z.rows(slice(start, stop)))), n)
    moved = np.isin(labels, dissolved)
    if moved.any() and len(dissolved) < k:
        distance = model.transform(scaler.transform(z.rows(moved)))
        distance[:, dissolved] = np.inf
        labels[moved] = distance.argmin(axis=1)
    facts["provisional_dissolved"] = dissolved.tolist()
    return labels, facts


def _erased_clusters(mask: np.ndarray, labels: np.ndarray, n_fit: int) -> dict[int, tuple[float, int]]:
    """Provisional clusters (of real size) whose members the pooled fences mostly flag.

    A small dense group far from the middle (the VIPs) stays under the overall cap yet loses
    a large share of its members; scattered noise never makes up much of a real cluster.
    """
    sizes = np.bincount(labels)
    flagged = np.bincount(labels[mask], minlength=len(sizes))
    return {
        int(c): (float(flagged[c] / sizes[c]), int(sizes[c]))
        for c in range(len(sizes))
        if sizes[c] >= max(MIN_CLUSTER_SHARE * n_fit, MIN_SEGMENT_ROWS) and flagged[c] > ERASED_CLUSTER_SHARE * sizes[c]
    }


def _describe_erasure(erased: dict[int, tuple[float, int]], n: int) -> str:
    parts = ", ".join(f"{share:.0%} of provisional cluster {c} ({size} rows, {size / n:.1%})"
                      for c, (share, size) in sorted(erased.items()))
    return f"pooled IQR fences would flag {parts}: a real segment, not noise"


def _segment_aware(
    z: _Columns,
    config: PipelineConfig,
    fence_cols: list[int],
    multiplier: float,
    provisional: tuple[np.ndarray, dict[str, Any]] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Flag points outside their own provisional cluster's fences (per-cluster groupby quantiles).

    Returns (flags, labels, low fences (k, f), high fences (k, f), provisional-fit facts).
    """
    labels, info = provisional if provisional is not None else _provisional_labels(z, config)
    k = info["provisional_k"]
    fenced = z.subset(fence_cols)
    values = pd.DataFrame(dict(enumerate(fenced.arrays)), copy=False)
    quartiles = values.groupby(labels).quantile([0.25, 0.75])  # one pass: (cluster, q) rows
    q1, q3 = (quartiles.xs(q, level=1).reindex(range(k)).to_numpy() for q in (0.25, 0.75))
    low, high = _tukey(q1, q3, multiplier)
    return _outside(fenced, low, high, labels), labels, low, high, info


def base_report(config: PipelineConfig, columns: Sequence[str]) -> dict[str, Any]:
    """The outlier report before any fence is computed; both engines fill in the same keys."""
    ocfg = config.cleaning.outliers
    log1p = set(config.transform.log1p)
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
        "guard_tripped": False,
        "warning": None,
    }


def detect_outliers(frame: pd.DataFrame, config: PipelineConfig) -> OutlierResult:
    """Flag IQR outliers, guarding against fences that would remove whole segments.

    ``frame`` holds the cleaned rows with every configured feature as a number. The provisional
    clustering (segment-aware fences) uses all features; fences apply to the outlier features.
    """
    ocfg = config.cleaning.outliers
    columns = list(ocfg.features or config.features)
    log1p = set(config.transform.log1p)
    n = len(frame)
    report = base_report(config, columns)
    if not ocfg.enabled or n == 0:
        if ocfg.enabled:
            report["method_used"] = "pooled"
        none = pd.Categorical.from_codes(np.zeros(n, dtype=np.int32), categories=[""])
        return OutlierResult(np.zeros(n, dtype=bool), pd.Series(none, index=frame.index), report)

    # Outlier features are a subset of the features (config validates it); clusters use them all.
    z_all = _transformed(frame, config.features, log1p)
    fence_cols = [config.features.index(c) for c in columns]
    z = z_all.subset(fence_cols)

    # column by column: the same quartiles as axis=0, without a partitioned copy of the whole matrix
    q1, q3 = np.array([np.percentile(values, [25, 75]) for values in z.arrays]).T

    def pooled(multiplier: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        low, high = _tukey(q1, q3, multiplier)
        return _outside(z, low, high), low, high

    def fences_report(low: np.ndarray, high: np.ndarray) -> dict[str, list[float]]:
        lo, hi = _back(low, columns, log1p), _back(high, columns, log1p)
        return {c: [float(lo[j]), float(hi[j])] for j, c in enumerate(columns)}

    multiplier = ocfg.iqr_multiplier
    flags, low, high = pooled(multiplier)
    pooled_share = float(flags.any(axis=1).mean())
    by_feature = _shares(flags, columns)
    report.update(pooled_share=pooled_share, share_by_feature=by_feature, fences=fences_report(low, high))

    method = "pooled"
    provisional: tuple[np.ndarray, dict[str, Any]] | None = None
    message: str | None = None
    erased: dict[int, tuple[float, int]] = {}
    if ocfg.method == "segment_aware":
        method = "segment_aware"
    elif pooled_share > ocfg.max_share:
        message = _describe_excess(pooled_share, ocfg.max_share, by_feature)
    elif flags.any():
        provisional = _provisional_labels(z_all, config)
        erased = _erased_clusters(flags.any(axis=1), provisional[0], n)
        if erased:
            message = _describe_erasure(erased, n)
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

            def still_bad() -> bool:
                mask_now = flags.any(axis=1)
                if mask_now.mean() > ocfg.max_share:
                    return True
                return bool(provisional is not None and _erased_clusters(mask_now, provisional[0], n))

            while still_bad():
                if steps == WIDEN_MAX_STEPS:
                    raise OutlierPolicyError(
                        f"{message}; widening the IQR multiplier to {multiplier:g} still excludes "
                        f"{flags.any(axis=1).mean():.1%} (a feature with IQR 0 cannot be widened: "
                        f"IQR by feature {dict(zip(columns, (q3 - q1).round(6).tolist()))})"
                    )
                multiplier *= WIDEN_FACTOR
                flags, low, high = pooled(multiplier)
                steps += 1
            method = "widened"
            report["fences"] = fences_report(low, high)
            message += f"; widened the IQR multiplier to {multiplier:g}"
        report["warning"] = message
        log.warning("%s", message)

    report["multiplier_used"] = multiplier
    if method == "segment_aware":
        flags, labels, low_k, high_k, info = _segment_aware(z_all, config, fence_cols, multiplier, provisional)
        k = info["provisional_k"]
        lo_k, hi_k = _back(low_k, columns, log1p), _back(high_k, columns, log1p)
        sizes = np.bincount(labels, minlength=k)
        outlier_counts = np.bincount(labels[flags.any(axis=1)], minlength=k)
        report.update(
            info,
            cluster_sizes={c: int(v) for c, v in enumerate(sizes)},
            outliers_by_cluster={c: int(v) for c, v in enumerate(outlier_counts)},
            cluster_fences={  # in the features' own units; dissolved clusters have none
                c: {col: [float(lo_k[c, j]), float(hi_k[c, j])] for j, col in enumerate(columns)}
                for c in range(k)
                if sizes[c]
            },
        )
    mask = flags.any(axis=1)
    final_share = float(mask.mean())
    if final_share > ocfg.max_share and method == "segment_aware":
        extra = f"segment-aware fences still exclude {final_share:.1%} of rows (cap {ocfg.max_share:.1%})"
        report["warning"] = f"{report['warning']}; {extra}" if report["warning"] else extra
        log.warning("%s", extra)
    report.update(
        method_used=method,
        final_share=final_share,
        n_outliers=int(mask.sum()),
        outliers_by_feature={c: int(flags[:, j].sum()) for j, c in enumerate(columns)},
    )
    reasons = pd.Series(flag_labels(flags, columns, prefix="outlier:"), index=frame.index)
    return OutlierResult(mask, reasons, report)
