"""What sets each segment apart, in numbers a marketer can read.

Why a separate step from naming: a name says *which* features are high or low; people acting on a
segment also need *by how much* ("annual income 2.4× the average, +41,000"), how many customers
and how much value it holds, and how attributes that were never clustered on (gender, channel,
region) are spread across segments.

* Feature effects compare each segment's mean with the mean of every profiled customer, on the raw
  scale: the ratio, the difference, and the effect size (difference in population standard
  deviations, 0 for a constant feature).
* Categorical profiles give each segment's share per category and the adjusted standardized
  residual of that cell: the signed square root of the Pearson chi-squared statistic of the 2×2
  table "this segment vs the other segments × this category vs the others". Beyond about ±2 a
  category is over- or under-represented in the segment by more than chance would explain.

Everything is computed with ``np.bincount`` over integer codes: the population can hold millions
of rows, and a pandas groupby would copy its columns first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from segmentation_pipeline.core.naming import segment_sums
from segmentation_pipeline.core.rows import ROW_BLOCK, label_codes

__all__ = [
    "EFFECT_THRESHOLD",
    "MAX_EXPLAINED_FEATURES",
    "MISSING_CATEGORY",
    "SegmentExplanations",
    "explain_model",
    "categorical_profile",
    "explain_segments",
    "feature_effects",
    "segment_category_counts",
]

#: Effects smaller than this (in population standard deviations) are not worth a sentence.
EFFECT_THRESHOLD = 0.2
#: A sentence lists at most this many features, the largest effects first.
MAX_EXPLAINED_FEATURES = 3
MISSING_CATEGORY = "(missing)"


def feature_effects(population: pd.DataFrame, segment_ids: np.ndarray, features: Sequence[str]) -> pd.DataFrame:
    """One row per (segment, feature): segment_mean, average, ratio, difference, effect_size."""
    ids, counts, sums = segment_sums(population, np.asarray(segment_ids), list(features))
    rows = []
    for j, feature in enumerate(features):
        values = population[feature].to_numpy(dtype=np.float64)
        average, spread = float(values.mean()), float(values.std())
        for i, segment in enumerate(ids):
            mean = float(sums[i, j] / counts[i])
            difference = mean - average
            rows.append({
                "segment_id": int(segment),
                "feature": feature,
                "segment_mean": mean,
                "average": average,
                "ratio": mean / average if average > 0 and mean >= 0 else float("nan"),
                "difference": difference,
                "effect_size": difference / spread if spread > 0 else 0.0,
            })
    # segments in id order, features in config order within each
    return pd.DataFrame(rows).sort_values("segment_id", kind="stable", ignore_index=True)


def _words(feature: str) -> str:
    return feature.replace("_", " ").strip()


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.3g}"


def _phrase(effect: pd.Series) -> str:
    """"annual income 2.4× the average (+41,000)" or, where a ratio means nothing, the difference."""
    sign = "+" if effect["difference"] >= 0 else "-"
    difference = f"{sign}{_number(abs(float(effect['difference'])))}"
    if np.isfinite(effect["ratio"]):
        return f"{_words(effect['feature'])} {effect['ratio']:.1f}× the average ({difference})"
    return f"{_words(effect['feature'])} {difference} vs the average"


def explain_segments(
    population: pd.DataFrame,
    segment_ids: np.ndarray,
    features: Sequence[str],
    names: Mapping[int, str],
    *,
    value_feature: str | None = None,
    tiers: Mapping[int, str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per segment with its shares, tier and a sentence; the per-feature effects).

    The sentence lists the features whose effect is at least :data:`EFFECT_THRESHOLD`, largest
    first, at most :data:`MAX_EXPLAINED_FEATURES`; a segment without one reads "close to the
    average on every feature".
    """
    segment_ids = np.asarray(segment_ids)
    if len(segment_ids) != len(population):
        raise ValueError(f"{len(segment_ids)} segment ids for {len(population)} rows")
    if len(population) == 0:
        raise ValueError("cannot explain an empty population")
    effects = feature_effects(population, segment_ids, features)
    value_columns = [value_feature] if value_feature else []
    ids, counts, sums = segment_sums(population, segment_ids, value_columns)
    rows = []
    for i, segment in enumerate(ids):
        mine = effects[effects["segment_id"] == int(segment)]
        strong = mine[mine["effect_size"].abs() >= EFFECT_THRESHOLD]
        strong = strong.reindex(strong["effect_size"].abs().sort_values(ascending=False, kind="stable").index)
        sentence = ", ".join(_phrase(e) for _, e in strong.head(MAX_EXPLAINED_FEATURES).iterrows())
        row = {
            "segment_id": int(segment),
            "segment_name": names.get(int(segment), str(segment)),
            "customers": int(counts[i]),
            "share_customers_pct": 100.0 * counts[i] / counts.sum(),
        }
        if value_feature:
            total = sums[:, 0].sum()
            row[f"share_{value_feature}_pct"] = 100.0 * sums[i, 0] / total if total else float("nan")
        if tiers:
            row["tier"] = tiers.get(int(segment))
        row["explanation"] = sentence or "close to the average on every feature"
        rows.append(row)
    return pd.DataFrame(rows), effects


def categorical_profile(values: pd.Series, segment_ids: np.ndarray) -> pd.DataFrame:
    """One row per (segment, category): count, share_pct (of the segment) and the adjusted
    standardized residual of a chi-squared test against the other segments (see module doc)."""
    segment_ids = np.asarray(segment_ids)
    if len(segment_ids) != len(values):
        raise ValueError(f"{len(segment_ids)} segment ids for {len(values)} values")
    categorical = values.astype("category") if not isinstance(values.dtype, pd.CategoricalDtype) else values
    codes = categorical.cat.codes.to_numpy()  # the column's own small codes: no int64 copy
    categories = [str(c) for c in categorical.cat.categories]
    if len(codes) and codes.min() < 0:
        categories.append(MISSING_CATEGORY)
    segments, observed = segment_category_counts(segment_ids, codes, len(categories))
    observed = observed.astype(np.float64)
    n_categories = len(categories)
    n = observed.sum()
    row_totals = observed.sum(axis=1, keepdims=True)
    column_totals = observed.sum(axis=0, keepdims=True)
    expected = row_totals * column_totals / n
    variance = expected * (1 - row_totals / n) * (1 - column_totals / n)
    with np.errstate(divide="ignore", invalid="ignore"):
        residual = np.where(variance > 0, (observed - expected) / np.sqrt(variance), 0.0)
    return pd.DataFrame({
        "column": values.name,
        "segment_id": np.repeat(segments.astype(np.int64), n_categories),
        "category": categories * len(segments),
        "count": observed.ravel().astype(np.int64),
        "share_pct": (100.0 * observed / row_totals).ravel(),
        "residual": residual.ravel(),
    })


def segment_category_counts(
    segment_ids: np.ndarray, codes: np.ndarray, n_categories: int, *, block_rows: int = ROW_BLOCK
) -> tuple[np.ndarray, np.ndarray]:
    """(sorted segment ids present, rows per (segment, category code) as (segments, n_categories) int64).

    A negative code (missing value) counts in the last category. Block by block over integer
    codes: a sort of every segment id (``np.unique``) and int64 copies of both code arrays held
    ~50 bytes a row at once on tables of millions of customers.
    """
    labels, uniques = label_codes(segment_ids)
    width = int(labels.max()) + 1 if len(labels) else 0
    counts = np.zeros(width * n_categories, dtype=np.int64)
    for start in range(0, len(labels), block_rows):
        code = codes[start : start + block_rows].astype(np.int64)
        code[code < 0] = n_categories - 1
        pair = labels[start : start + block_rows].astype(np.int64) * n_categories + code
        counts += np.bincount(pair, minlength=counts.size)
    table = counts.reshape(width, n_categories)
    present = np.flatnonzero(table.sum(axis=1))
    return (present if uniques is None else uniques[present]), table[present]


@dataclass
class SegmentExplanations:
    """The explanation tables of one model version (stored with it and shown with its run)."""

    summary: pd.DataFrame  # one row per segment: shares, tier, sentence
    effects: pd.DataFrame  # one row per (segment, feature)
    categories: pd.DataFrame  # one row per (column, segment, category); empty without categoricals

    def records(self) -> list[dict[str, Any]]:
        """Per segment, plain data: the summary row, its feature effects and categorical shares."""
        out = []
        for row in self.summary.to_dict(orient="records"):
            segment = row["segment_id"]
            effects = self.effects[self.effects["segment_id"] == segment].drop(columns="segment_id")
            categories = self.categories[self.categories["segment_id"] == segment].drop(columns="segment_id") \
                if len(self.categories) else self.categories
            out.append({**row, "features": effects.to_dict(orient="records"),
                        "categories": categories.to_dict(orient="records")})
        return out


def explain_model(
    population: pd.DataFrame,
    segment_ids: np.ndarray,
    categories: pd.DataFrame | None,
    features: Sequence[str],
    names: Mapping[int, str],
    *,
    value_feature: str | None = None,
    tiers: Mapping[int, str] | None = None,
) -> SegmentExplanations:
    """Every explanation table for one clustering: features, shares and tiers, categorical profiles."""
    summary, effects = explain_segments(
        population, segment_ids, features, names, value_feature=value_feature, tiers=tiers
    )
    profiles = [categorical_profile(categories[c], segment_ids) for c in (categories if categories is not None else [])]
    columns = ["column", "segment_id", "category", "count", "share_pct", "residual"]
    return SegmentExplanations(
        summary=summary, effects=effects,
        categories=pd.concat(profiles, ignore_index=True) if profiles else pd.DataFrame(columns=columns),
    )
