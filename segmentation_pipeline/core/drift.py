"""Feature and segment-mix drift between a reference and a current customer snapshot.

Why: a segmentation is only as good as the population it was fitted on. Before retraining (or
before trusting last month's segments) we want one Evidently report that says whether the raw
features moved and whether the segment mix moved, plus a small, JSON-serialisable summary that
an orchestrator can log and branch on.

One Evidently 0.7 ``Report`` does all the statistics:

* ``DataDriftPreset(columns=features)`` over the numeric features (Evidently picks the test per
  column unless :attr:`DriftThresholds.feature_method` pins one; with more than 1000 reference
  rows that is the normed Wasserstein distance, threshold 0.1);
* ``ValueDrift(column=segment_column, method="psi")`` with the segment column declared
  categorical, so the segment-mix score is always a PSI whatever the sample size.

Drift flags are read from the snapshot's own test results (``Report(include_tests=True)``), so
"detected" means exactly what Evidently decided, whatever the direction of the statistic
(distances drift when high, p-values when low). Only the segment share table is computed here,
with pandas, because it is a plain ``value_counts`` and is wanted for the summary and plot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from segmentation_pipeline.core.plots import new_figure, png_bytes

Severity = Literal["ok", "warn", "error"]

_SEGMENT_SHARE_COLUMNS = ["segment", "reference_share", "current_share", "delta"]


@dataclass(frozen=True)
class DriftThresholds:
    """When drift is worth a warning or an error (to be wired into ``config.py`` as a section).

    ``feature_share_*`` compare the share of features Evidently flags as drifted;
    ``segment_psi_*`` compare the PSI of the segment mix (0.1 / 0.25 are the usual PSI bands:
    "moderate" / "significant" shift). ``method`` pins the segment column's test; ``feature_method``
    and ``feature_threshold`` optionally pin the numeric features' test (``None`` = Evidently's
    default choice and threshold).
    """

    feature_share_warn: float = 0.3
    feature_share_error: float = 0.5
    segment_psi_warn: float = 0.1
    segment_psi_error: float = 0.25
    method: str = "psi"
    feature_method: str | None = None
    feature_threshold: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.feature_share_warn <= self.feature_share_error <= 1:
            raise ValueError(
                f"need 0 <= feature_share_warn ({self.feature_share_warn}) <= "
                f"feature_share_error ({self.feature_share_error}) <= 1"
            )
        if not 0 <= self.segment_psi_warn <= self.segment_psi_error:
            raise ValueError(
                f"need 0 <= segment_psi_warn ({self.segment_psi_warn}) <= "
                f"segment_psi_error ({self.segment_psi_error})"
            )


@dataclass(frozen=True, eq=False)
class DriftResult:
    """What moved, how much, and how bad; ``summary`` is the JSON-safe form of everything else."""

    drifted_features: list[str]
    feature_scores: dict[str, float]
    share_drifted: float
    segment_psi: float | None
    segment_shares: pd.DataFrame
    severity: Severity
    summary: dict[str, Any]
    html: str = field(repr=False)


def sample_positions(n: int, sample: int | None, random_state: int) -> np.ndarray:
    """Row positions of at most ``sample`` rows, the ones ``DataFrame.sample`` would pick; picked
    before anything is copied, so sampling a table of millions costs the sample, not the table."""
    positions = np.arange(n)
    if sample is not None and n > sample:
        positions = pd.Series(positions).sample(n=sample, random_state=random_state).to_numpy()
    return positions


def reference_sample(
    clean: pd.DataFrame, segment_ids: np.ndarray, features: list[str], sample: int, random_state: int
) -> pd.DataFrame:
    """The drift reference logged with a model: features and segment id of a seeded row sample."""
    positions = sample_positions(len(clean), sample, random_state)
    return clean.iloc[positions][features].assign(segment_id=np.asarray(segment_ids)[positions])


def _sampled(frame: pd.DataFrame, columns: list[str], sample: int | None, random_state: int) -> pd.DataFrame:
    """Only the needed columns, at most ``sample`` rows: drift tests need thousands, not millions."""
    return frame.iloc[sample_positions(len(frame), sample, random_state)][columns].reset_index(drop=True)


def segment_share_table(reference: pd.Series, current: pd.Series) -> pd.DataFrame:
    """Per-segment share on each side (0 where a segment is absent) and current minus reference."""
    ref = reference.value_counts(normalize=True).rename("reference_share")
    cur = current.value_counts(normalize=True).rename("current_share")
    table = pd.concat([ref, cur], axis=1).fillna(0.0)
    table.index.name = "segment"
    table = table.sort_index().reset_index()
    table["delta"] = table["current_share"] - table["reference_share"]
    return table[_SEGMENT_SHARE_COLUMNS]


def _json_scalar(value: Any) -> Any:
    """numpy scalars -> plain Python so ``json.dumps`` works on the summary; NaN -> None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _read_snapshot(snapshot_dict: dict[str, Any], columns: list[str]) -> dict[str, dict[str, Any]]:
    """Per-column score, method, threshold and detected flag out of ``Snapshot.dict()``.

    Scores come from the ``ValueDrift`` metric entries (``config.column`` / ``value``); the flag
    comes from the matching ``ValueDrift`` test (status ``FAIL`` = drift detected), linked by
    ``metric_config.metric_id``.
    """
    by_metric_id: dict[str, str] = {}
    out: dict[str, dict[str, Any]] = {}
    for metric in snapshot_dict.get("metrics", []):
        config = metric.get("config") or {}
        if not str(config.get("type", "")).endswith(":ValueDrift"):
            continue
        column = config.get("column")
        if column not in columns:
            continue
        by_metric_id[metric.get("id")] = column
        out[column] = {
            "score": float(metric["value"]),
            "method": config.get("method"),
            "threshold": config.get("threshold"),
            "detected": None,
        }
    for test in snapshot_dict.get("tests", []):
        metric_config = test.get("metric_config") or {}
        column = by_metric_id.get(metric_config.get("metric_id"))
        if column is None:
            params = metric_config.get("params") or {}
            if not str(params.get("type", "")).endswith(":ValueDrift"):
                continue
            column = params.get("column")
        if column in out:
            status = test.get("status")
            # ``Snapshot.dict()`` holds a ``TestStatus`` (str enum); ``.json()`` holds its value.
            out[column]["detected"] = str(getattr(status, "value", status)).upper() == "FAIL"
    missing = [c for c in columns if c not in out or out[c]["detected"] is None]
    if missing:
        raise RuntimeError(
            f"Evidently snapshot has no ValueDrift result/test for columns {missing}; "
            "the snapshot layout may have changed in this Evidently version"
        )
    return out


def _drifted_share(snapshot_dict: dict[str, Any], fallback: float) -> float:
    """Evidently's own ``DriftedColumnsCount.share``; the per-column count if it is absent."""
    for metric in snapshot_dict.get("metrics", []):
        config = metric.get("config") or {}
        value = metric.get("value")
        if str(config.get("type", "")).endswith(":DriftedColumnsCount") and isinstance(value, dict):
            return float(value["share"])
    return fallback


def _severity(share_drifted: float, segment_psi: float | None, thresholds: DriftThresholds) -> Severity:
    psi = -math.inf if segment_psi is None else segment_psi
    if share_drifted >= thresholds.feature_share_error or psi >= thresholds.segment_psi_error:
        return "error"
    if share_drifted >= thresholds.feature_share_warn or psi >= thresholds.segment_psi_warn:
        return "warn"
    return "ok"


def compute_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    features: list[str],
    *,
    segment_column: str | None = "segment_id",
    thresholds: DriftThresholds = DriftThresholds(),
    sample: int | None = 50_000,
    random_state: int = 0,
) -> DriftResult:
    """Run one Evidently report over ``features`` (+ the segment column) and grade the result.

    Both sides are sampled (seeded) to at most ``sample`` rows so millions of rows stay fast;
    the segment share table uses all rows because ``value_counts`` is cheap.
    """
    if not features:
        raise ValueError("features must not be empty")
    if segment_column is not None and segment_column in features:
        raise ValueError(f"segment column {segment_column!r} must not also be a feature")
    if sample is not None and sample < 1:
        raise ValueError(f"sample must be a positive row count or None, got {sample}")
    columns = list(features) + ([segment_column] if segment_column is not None else [])
    for name, frame in (("reference", reference), ("current", current)):
        absent = [c for c in columns if c not in frame.columns]
        if absent:
            raise ValueError(f"{name} frame lacks columns {absent}")
        if frame.empty:
            raise ValueError(f"{name} frame has no rows")

    # imported here: Evidently costs seconds to import, and every Dagster step process loads
    # this module through the code location even when it never computes drift
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    ref = _sampled(reference, columns, sample, random_state)
    cur = _sampled(current, columns, sample, random_state + 1)
    definition = DataDefinition(
        numerical_columns=list(features),
        categorical_columns=[segment_column] if segment_column is not None else [],
    )
    metrics: list[Any] = [
        DataDriftPreset(
            columns=list(features),
            num_method=thresholds.feature_method,
            num_threshold=thresholds.feature_threshold,
            drift_share=thresholds.feature_share_error,
        )
    ]
    if segment_column is not None:
        metrics.append(ValueDrift(column=segment_column, method=thresholds.method, threshold=thresholds.segment_psi_warn))
    report = Report(metrics, include_tests=True)
    snapshot = report.run(
        current_data=Dataset.from_pandas(cur, data_definition=definition),
        reference_data=Dataset.from_pandas(ref, data_definition=definition),
    )
    snapshot_dict = snapshot.dict()
    per_column = _read_snapshot(snapshot_dict, columns)

    feature_scores = {f: per_column[f]["score"] for f in features}
    drifted = [f for f in features if per_column[f]["detected"]]
    share_drifted = _drifted_share(snapshot_dict, len(drifted) / len(features))
    segment_psi: float | None = None
    if segment_column is not None:
        segment_psi = per_column[segment_column]["score"]
        shares = segment_share_table(reference[segment_column], current[segment_column])
    else:
        shares = pd.DataFrame(columns=_SEGMENT_SHARE_COLUMNS)
    severity = _severity(share_drifted, segment_psi, thresholds)

    summary: dict[str, Any] = {
        "severity": severity,
        "drifted_features": drifted,
        "share_drifted": _json_scalar(share_drifted),
        "feature_scores": {f: _json_scalar(s) for f, s in feature_scores.items()},
        "feature_methods": {f: per_column[f]["method"] for f in features},
        "feature_thresholds": {f: _json_scalar(per_column[f]["threshold"]) for f in features},
        "segment_column": segment_column,
        "segment_method": per_column[segment_column]["method"] if segment_column is not None else None,
        "segment_psi": _json_scalar(segment_psi),
        "segment_drift_detected": bool(per_column[segment_column]["detected"]) if segment_column is not None else None,
        "segment_shares": [
            {key: _json_scalar(value) for key, value in row.items()} for row in shares.to_dict(orient="records")
        ],
        "thresholds": {
            "feature_share_warn": thresholds.feature_share_warn,
            "feature_share_error": thresholds.feature_share_error,
            "segment_psi_warn": thresholds.segment_psi_warn,
            "segment_psi_error": thresholds.segment_psi_error,
        },
        "rows": {
            "reference": len(reference),
            "current": len(current),
            "reference_sampled": len(ref),
            "current_sampled": len(cur),
        },
    }
    return DriftResult(
        drifted_features=drifted,
        feature_scores=feature_scores,
        share_drifted=share_drifted,
        segment_psi=segment_psi,
        segment_shares=shares,
        severity=severity,
        summary=summary,
        html=snapshot.get_html_str(as_iframe=False),
    )


def drift_plot(result: DriftResult) -> bytes:
    """PNG: per-feature drift score (red = drifted) and segment shares, reference vs current.

    Uses a bare ``Figure`` (Agg canvas) rather than pyplot so it is safe in worker threads.
    """
    has_segments = not result.segment_shares.empty
    fig = new_figure(figsize=(12 if has_segments else 7, max(3.0, 0.35 * len(result.feature_scores) + 1.5)))
    ax = fig.add_subplot(1, 2 if has_segments else 1, 1)
    names = list(result.feature_scores)
    scores = [result.feature_scores[n] for n in names]
    colors = ["tab:red" if n in result.drifted_features else "tab:gray" for n in names]
    ax.barh(names, scores, color=colors)
    ax.invert_yaxis()
    methods = sorted({str(m) for m in result.summary.get("feature_methods", {}).values()})
    ax.set_xlabel(f"drift score ({', '.join(methods)})" if methods else "drift score")
    thresholds = {v for v in result.summary.get("feature_thresholds", {}).values() if v is not None}
    if len(thresholds) == 1:
        ax.axvline(thresholds.pop(), color="black", linestyle="--", linewidth=1, label="threshold")
        ax.legend(loc="lower right")
    ax.set_title(f"Feature drift: {len(result.drifted_features)}/{len(names)} drifted ({result.severity})")
    if has_segments:
        seg_ax = fig.add_subplot(1, 2, 2)
        labels = [str(s) for s in result.segment_shares["segment"]]
        pos = np.arange(len(labels))
        width = 0.4
        seg_ax.bar(pos - width / 2, result.segment_shares["reference_share"], width, label="reference")
        seg_ax.bar(pos + width / 2, result.segment_shares["current_share"], width, label="current")
        seg_ax.set_xticks(pos, labels)
        seg_ax.set_xlabel("segment")
        seg_ax.set_ylabel("share of customers")
        psi = "n/a" if result.segment_psi is None else f"{result.segment_psi:.3f}"
        seg_ax.set_title(f"Segment mix (PSI {psi})")
        seg_ax.legend()
    fig.tight_layout()
    return png_bytes(fig)
