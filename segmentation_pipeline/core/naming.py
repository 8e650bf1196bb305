"""Segment profiles and human-readable, deterministic segment names.

Why z-scores: "High annual income" must mean high *relative to this customer base*; a segment
mean is compared with the population mean in population standard deviations, so the rule works
for any feature and unit. Features within ``high_threshold`` of average are left out of the name.

Naming rule (deterministic: depends only on the profile and population, never on dict order):

* parts = features with ``|z| >= high_threshold``, at most :data:`MAX_NAME_FEATURES` of the most
  distinctive, written in feature order: "High annual income · Low spending score";
  no part -> "Average customers".
* tiers (optional): segments ranked by mean ``value_feature`` (desc; ties by segment id) get
  ``tiers[0]``, ``tiers[1]``, ... and the last tier for the rest, as a prefix: "VIP · High ...".
* names must be unique: colliding segments each add their next most distinctive feature
  ("Above-average age" / "Below-average age" when under the threshold) until they differ;
  if features run out, a " #2", " #3" suffix is added by segment id.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from segmentation_pipeline.core.rows import label_codes

__all__ = [
    "MAX_NAME_FEATURES",
    "SEPARATOR",
    "name_segments",
    "population_moments",
    "profile_columns",
    "profile_from_sums",
    "profile_segments",
    "segment_sums",
    "segment_tiers",
    "segment_z_scores",
]

SEPARATOR = " · "
# Longer names stop being read; this caps the threshold-passing parts (not disambiguation).
MAX_NAME_FEATURES = 3
AVERAGE_NAME = "Average customers"


def segment_sums(
    frame: pd.DataFrame, labels: np.ndarray, columns: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sorted segment ids, row count of each, per-segment sum of each column as (k, c) float64).

    Column by column with ``np.bincount``: pandas' groupby would first copy the columns and
    build group codes, tens of bytes per row on tables of millions of customers.
    """
    codes, uniques = label_codes(labels)
    counts = np.bincount(codes)
    present = np.flatnonzero(counts)
    sums = np.empty((len(present), len(columns)))
    for j, column in enumerate(columns):
        weights = frame[column].to_numpy(dtype=np.float64)
        sums[:, j] = np.bincount(codes, weights=weights, minlength=len(counts))[present]
    return (present if uniques is None else uniques[present]), counts[present], sums


def profile_segments(
    frame: pd.DataFrame, labels: np.ndarray, features: list[str], value_feature: str | None
) -> pd.DataFrame:
    """One row per segment: segment_id, count, share_pct, mean_<feature>..., total_<value_feature>."""
    labels = np.asarray(labels)
    if len(labels) != len(frame):
        raise ValueError(f"labels has {len(labels)} entries for {len(frame)} rows")
    if len(frame) == 0:
        raise ValueError("cannot profile an empty frame")
    columns = profile_columns(features, value_feature)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"columns missing from the frame: {missing}")
    ids, counts, sums = segment_sums(frame, labels, columns)
    return profile_from_sums(ids, counts, sums, features, value_feature)


def profile_columns(features: Sequence[str], value_feature: str | None) -> list[str]:
    """The columns :func:`profile_from_sums` expects sums of, in this order."""
    return list(features) + ([value_feature] if value_feature and value_feature not in features else [])


def profile_from_sums(
    ids: np.ndarray, counts: np.ndarray, sums: np.ndarray, features: Sequence[str], value_feature: str | None
) -> pd.DataFrame:
    """The profile record from per-segment row counts and column sums (columns as
    :func:`profile_columns`): one shape whichever engine aggregated the rows."""
    counts = np.asarray(counts, dtype=np.int64)
    sums = np.asarray(sums, dtype=np.float64).reshape(len(counts), -1)
    columns = profile_columns(features, value_feature)
    if sums.shape[1] != len(columns):
        raise ValueError(f"sums has {sums.shape[1]} columns; expected {columns}")
    if counts.sum() == 0:
        raise ValueError("cannot profile an empty frame")
    profile = pd.DataFrame(
        {
            "segment_id": np.asarray(ids).astype(np.int64),
            "count": counts,
            "share_pct": counts.astype(np.float64) * 100.0 / counts.sum(),
            **{f"mean_{f}": sums[:, j] / counts for j, f in enumerate(features)},
        }
    )
    if value_feature:
        profile[f"total_{value_feature}"] = sums[:, columns.index(value_feature)]
    return profile


def population_moments(
    population: pd.DataFrame, features: list[str], log_features: Sequence[str] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (ddof=0) of each feature, log1p-scaled where asked.

    One column at a time: on millions of rows a copy of the feature table (and its log copy)
    would cost more memory than the rest of the naming step together.
    """
    logged = set(log_features)
    centre, spread = np.empty(len(features)), np.empty(len(features))
    for i, feature in enumerate(features):
        values = population[feature].to_numpy(dtype=np.float64)
        if feature in logged:
            values = np.log1p(np.clip(values, 0, None))
        centre[i], spread[i] = values.mean(), values.std()
    return centre, spread


def segment_z_scores(
    profile: pd.DataFrame, population: pd.DataFrame, features: list[str], log_features: Sequence[str] = ()
) -> pd.DataFrame:
    """(segment mean - population mean) / population std per feature; 0 for constant features.

    Skewed (log1p) features are compared on the log scale: on raw dollars a few rich customers
    inflate the std so much that a clearly affluent segment would read as merely average.
    """
    means = profile[[f"mean_{f}" for f in features]].to_numpy(dtype=np.float64)
    logged = [i for i, f in enumerate(features) if f in set(log_features)]
    if logged:
        means[:, logged] = np.log1p(np.clip(means[:, logged], 0, None))
    centre, spread = population_moments(population, features, log_features)
    safe = np.where(spread > 0, spread, 1.0)
    z = np.where(spread > 0, (means - centre) / safe, 0.0)
    return pd.DataFrame(z, index=profile["segment_id"].to_numpy(), columns=list(features))


def _words(feature: str) -> str:
    return feature.replace("_", " ").strip()


def _part(feature: str, z: float, high_threshold: float) -> str:
    if abs(z) >= high_threshold:
        return f"{'High' if z > 0 else 'Low'} {_words(feature)}"
    if z == 0:
        return f"Average {_words(feature)}"
    return f"{'Above-average' if z > 0 else 'Below-average'} {_words(feature)}"


def segment_tiers(profile: pd.DataFrame, tiers: list[str], value_feature: str | None) -> dict[int, str]:
    """Each segment's tier (``naming.tiers``) by mean ``value_feature``, best first; {} without tiers."""
    if not tiers:
        return {}
    if value_feature is None:
        raise ValueError("naming.tiers needs naming.value_feature to rank segments by")
    column = f"mean_{value_feature}"
    if column not in profile.columns:
        raise ValueError(f"profile has no {column} column to rank tiers by")
    ranked = profile.sort_values([column, "segment_id"], ascending=[False, True], kind="mergesort")
    return {
        int(segment): tiers[min(rank, len(tiers) - 1)]
        for rank, segment in enumerate(ranked["segment_id"].to_numpy())
    }


def name_segments(
    profile: pd.DataFrame,
    population: pd.DataFrame,
    features: list[str],
    *,
    high_threshold: float,
    tiers: list[str],
    value_feature: str | None,
    log_features: Sequence[str] = (),
) -> dict[int, str]:
    """Unique, deterministic human names per segment id (rule in the module docstring)."""
    if profile.empty:
        return {}
    z = segment_z_scores(profile, population, features, log_features)
    segments = [int(s) for s in z.index]
    position = {f: i for i, f in enumerate(features)}
    # features by distinctiveness, most first; ties keep feature order (stable sort)
    ranked = {
        s: [features[i] for i in np.argsort(-np.abs(z.loc[s].to_numpy()), kind="stable")] for s in segments
    }
    used = {
        s: min(MAX_NAME_FEATURES, int((np.abs(z.loc[s].to_numpy()) >= high_threshold).sum()))
        for s in segments
    }
    prefixes = segment_tiers(profile, tiers, value_feature)

    def render(s: int) -> str:
        chosen = sorted(ranked[s][: used[s]], key=position.__getitem__)
        body = SEPARATOR.join(_part(f, float(z.loc[s, f]), high_threshold) for f in chosen) or AVERAGE_NAME
        return f"{prefixes[s]}{SEPARATOR}{body}" if s in prefixes else body

    while True:
        names = {s: render(s) for s in segments}
        groups: dict[str, list[int]] = {}
        for s in segments:
            groups.setdefault(names[s], []).append(s)
        colliding = [s for members in groups.values() if len(members) > 1 for s in members]
        extendable = [s for s in colliding if used[s] < len(features)]
        if not extendable:
            break
        for s in extendable:
            used[s] += 1

    seen: dict[str, int] = {}
    unique: dict[int, str] = {}
    for s in sorted(segments):
        seen[names[s]] = seen.get(names[s], 0) + 1
        unique[s] = names[s] if seen[names[s]] == 1 else f"{names[s]} #{seen[names[s]]}"
    return unique
