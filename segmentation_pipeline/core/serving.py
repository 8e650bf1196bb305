"""Online scoring with the batch's rules: each row validated as cleaning would, then assigned.

Why not just ``SegmentAssigner.assign``: the batch only assigns rows cleaning let through, so the
model itself never had to refuse anything. A served model sees raw requests: a null age, "38,000"
for an income, an age of 500. Each row gets the verdict the batch would give it, with the same
parsing (:mod:`~segmentation_pipeline.core.parsing`) and the same reason and detail texts
(:mod:`~segmentation_pipeline.core.cleaning_rules`): a row that would be rejected gets
``segment_id`` null and an ``error``; the other rows of the request are still scored. Rows outside
the training data's outlier fences are scored and flagged ``is_outlier``, as in the batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from segmentation_pipeline.core.assigner import SegmentAssigner
from segmentation_pipeline.core.cleaning_rules import KIND_NAMES, ReasonKind
from segmentation_pipeline.core.parsing import parse_numbers

__all__ = ["OUTPUT_COLUMNS", "outside_fences", "row_errors", "score_rows"]

OUTPUT_COLUMNS = ["segment_id", "segment_name", "is_outlier", "error"]
Bounds = tuple[float | None, float | None]


def _range_text(bounds: Bounds) -> str:
    low, high = bounds
    return " and ".join(f"{op} {b:g}" for op, b in ((">=", low), ("<=", high)) if b is not None)


def _show(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value).strip()


def row_errors(
    frame: pd.DataFrame, features: Sequence[str], ranges: Mapping[str, Bounds]
) -> tuple[pd.DataFrame, list[str | None]]:
    """(the features as float64, each row's error or None): the first failing rule in the batch's
    precedence (non-numeric, missing, non-finite, out of range; columns in feature order)."""
    n = len(frame)
    values: dict[str, np.ndarray] = {}
    failures: list[tuple[ReasonKind, int, np.ndarray]] = []
    for rank, feature in enumerate(features):
        if feature not in frame.columns:
            values[feature] = np.full(n, np.nan)
            failures.append((ReasonKind.MISSING, rank, np.ones(n, dtype=bool)))
            continue
        raw = frame[feature]
        parsed = parse_numbers(raw.astype(object) if raw.dtype.kind in "mM" else raw)
        v = parsed.values
        values[feature] = v
        present = ~np.isnan(v)
        failures.append((ReasonKind.NON_NUMERIC, rank, parsed.non_numeric))
        failures.append((ReasonKind.MISSING, rank, np.isnan(v) & ~parsed.non_numeric))
        failures.append((ReasonKind.NON_FINITE, rank, present & ~np.isfinite(v)))
        low, high = ranges.get(feature, (None, None))
        with np.errstate(invalid="ignore"):
            outside = np.zeros(n, dtype=bool)
            if low is not None:
                outside |= np.isfinite(v) & (v < low)
            if high is not None:
                outside |= np.isfinite(v) & (v > high)
        failures.append((ReasonKind.OUT_OF_RANGE, rank, outside))
    errors: list[str | None] = [None] * n
    for kind, rank, mask in sorted(failures, key=lambda f: (int(f[0]), f[1])):
        feature = features[rank]
        for i in np.flatnonzero(mask):
            if errors[i] is not None:
                continue
            label = f"{KIND_NAMES[kind]}:{feature}"
            if kind == ReasonKind.MISSING:
                errors[i] = f"{label}: {feature} is missing"
                continue
            shown = _show(frame[feature].iloc[i]) if kind == ReasonKind.NON_NUMERIC else _show(float(values[feature][i]))
            if kind == ReasonKind.NON_NUMERIC:
                errors[i] = f"{label}: {feature}={shown} is not numeric"
            elif kind == ReasonKind.NON_FINITE:
                errors[i] = f"{label}: {feature}={shown} is not finite"
            else:
                errors[i] = f"{label}: {feature}={shown} is out of range (must be {_range_text(ranges[feature])})"
    return pd.DataFrame(values, index=frame.index), errors


def outside_fences(values: pd.DataFrame, fences: Mapping[str, tuple[float, float]]) -> np.ndarray:
    """Rows with any fenced feature outside its training fences (NaN rows are not flagged)."""
    flagged = np.zeros(len(values), dtype=bool)
    for feature, (low, high) in fences.items():
        if feature in values.columns:
            v = values[feature].to_numpy(dtype=np.float64)
            with np.errstate(invalid="ignore"):
                flagged |= (v < low) | (v > high)
    return flagged


def score_rows(assigner: SegmentAssigner, frame: pd.DataFrame) -> pd.DataFrame:
    """One output row per input row: segment_id (nullable), segment_name, is_outlier, error."""
    features = list(assigner.features)
    ranges = getattr(assigner, "ranges", {}) or {}  # models registered before online rules: none
    fences = getattr(assigner, "fences", {}) or {}
    values, errors = row_errors(frame.reset_index(drop=True), features, ranges)
    ok = np.array([e is None for e in errors], dtype=bool)
    segment_ids = pd.array([pd.NA] * len(values), dtype="Int64")
    names = np.full(len(values), None, dtype=object)
    if ok.any():
        try:
            assigned = assigner.assign(values[ok])
        except ValueError as exc:  # e.g. finite values too large to scale: the rows' own error
            for i in np.flatnonzero(ok):
                errors[i] = f"unscorable: {exc}"
        else:
            segment_ids[ok] = assigned["segment_id"].to_numpy()
            names[ok] = assigned["segment_name"].to_numpy()
    scored = np.array([e is None for e in errors], dtype=bool)
    return pd.DataFrame({
        "segment_id": segment_ids,
        "segment_name": names,
        "is_outlier": outside_fences(values, fences) & scored,
        "error": errors,
    })
