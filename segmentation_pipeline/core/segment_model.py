"""From a fitted clustering to the registered segment model: stable ids, profile, names, assigner.

Why here and not in an engine or an asset: whichever engine fitted the clusters, the rules that
give them meaning are the same — a retrain keeps the champion's ids for matching clusters and
never reuses a retired id, segments are profiled and named on raw feature values, and the served
model is one sklearn pipeline. Engines hand over plain numbers (a per-label profile, a population
sample and its labels); this module turns them into what the registry stores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from segmentation_pipeline.config import PipelineConfig
from segmentation_pipeline.core.assigner import SegmentAssigner
from segmentation_pipeline.core.identity import match_segments
from segmentation_pipeline.core.modeling import build_model_pipeline
from segmentation_pipeline.core.naming import name_segments
from segmentation_pipeline.core.promotion import PromotionDecision

__all__ = [
    "PromotionOutcome",
    "SegmentModel",
    "TrainedSegmentation",
    "build_segment_model",
    "mean_columns",
    "next_segment_id",
    "published_choice",
    "stable_segment_ids",
]


def mean_columns(features: list[str]) -> list[str]:
    """The profile's per-feature mean columns, in feature order."""
    return [f"mean_{f}" for f in features]


def stable_segment_ids(
    label_means: np.ndarray, labels: list[int], canonical: np.ndarray, champion: SegmentAssigner | None
) -> np.ndarray:
    """``label_to_segment`` for a new model: the champion's ids for matching clusters, else canonical.

    ``label_means[i]`` is the raw-feature centroid of cluster ``labels[i]``.
    """
    if champion is None or champion.centroids_original is None:
        return np.asarray(canonical)
    old_ids = sorted(int(s) for s in champion.segment_names)
    # ids retired by earlier retrains are never handed out again
    next_id = max(int(champion.metadata.get("next_segment_id", 0)), max(old_ids) + 1)
    mapping = match_segments(champion.centroids_original, label_means, old_ids=old_ids, next_id=next_id)
    label_to_segment = np.array(canonical, copy=True)
    for position, label in enumerate(labels):
        label_to_segment[int(label)] = int(mapping[position])
    return label_to_segment


def next_segment_id(label_to_segment: np.ndarray, champion: SegmentAssigner | None) -> int:
    """The first id no model of this lineage has used: carried in the model's metadata."""
    inherited = int(champion.metadata.get("next_segment_id", 0)) if champion is not None else 0
    return max(int(np.max(label_to_segment)) + 1, inherited)


@dataclass
class SegmentModel:
    """The served model and what explains it, before registration."""

    assigner: SegmentAssigner
    profile: pd.DataFrame  # per stable segment id, with segment_name
    names: dict[int, str]


def build_segment_model(
    label_profile: pd.DataFrame,
    population: pd.DataFrame,
    canonical: np.ndarray,
    preprocessor: Pipeline,
    estimator: object,
    cfg: PipelineConfig,
    champion: SegmentAssigner | None,
    metadata: dict[str, str] | None = None,
    fences: dict[str, tuple[float, float]] | None = None,
) -> SegmentModel:
    """Stable ids, profile, names and the assigner for a clustering (``label_profile`` keyed by raw label).

    ``estimator`` is the fitted model of any registered algorithm (core.algorithms): the assigner
    serves it whole, so a mixture assigns by its posterior, not by its nearest mean. The champion
    is matched on raw-feature segment means, which every algorithm has.

    The assigner carries the configured ranges and the cleaning's outlier ``fences`` (feature
    units) so that online scoring refuses and flags rows as the batch does (core.serving)."""
    features = list(cfg.features)
    by_label = label_profile.sort_values("segment_id", ignore_index=True)
    labels = [int(label) for label in by_label["segment_id"]]
    label_means = by_label[mean_columns(features)].to_numpy(dtype=np.float64)
    label_to_segment = stable_segment_ids(label_means, labels, canonical, champion)
    profile = by_label.assign(segment_id=label_to_segment[labels].astype(np.int64))
    profile = profile.sort_values("segment_id", ignore_index=True)
    naming = cfg.naming
    names = name_segments(
        profile, population, features, high_threshold=naming.high_threshold, tiers=naming.tiers,
        value_feature=naming.value_feature, log_features=cfg.transform.log1p_columns,
    )
    profile.insert(1, "segment_name", profile["segment_id"].map(names))
    assigner = SegmentAssigner(
        pipeline=build_model_pipeline(preprocessor, estimator),
        features=features,
        label_to_segment=label_to_segment,
        segment_names={int(k): v for k, v in names.items()},
        centroids_original=profile[mean_columns(features)].to_numpy(dtype=np.float64),
        metadata={"next_segment_id": str(next_segment_id(label_to_segment, champion)), **(metadata or {})},
        ranges={f: (r.min, r.max) for f, r in cfg.cleaning.ranges.items()},
        # an open fence (quartiles that coincide) is stored in the JSON report as null
        fences={f: (-np.inf if lo is None else float(lo), np.inf if hi is None else float(hi))
                for f, (lo, hi) in (fences or {}).items()},
    )
    return SegmentModel(assigner=assigner, profile=profile, names={int(k): v for k, v in names.items()})


@dataclass
class TrainedSegmentation:
    """What the final-model step hands on: the registered model and its ids on the evaluation rows."""

    assigner: SegmentAssigner
    eval_segment_ids: np.ndarray
    model_name: str
    model_version: str
    mlflow_run_id: str
    k: int
    k_reason: str
    metrics: dict[str, float]
    profile: pd.DataFrame
    migration: pd.DataFrame | None = None
    previous_champion: str | None = None
    # the champion as loaded once at training time, and its ids for the same evaluation rows:
    # promotion and write-back compare with / fall back to exactly this model, without reloading it
    champion: SegmentAssigner | None = None
    champion_eval_ids: np.ndarray | None = None
    model_change: str | None = None  # why the champion is not comparable (None: it is, or there is none)


@dataclass
class PromotionOutcome:
    champion_version: str
    challenger_version: str
    promoted: bool
    decision: PromotionDecision
    extra: dict[str, str] = field(default_factory=dict)


def model_change(champion: SegmentAssigner | None, features: Sequence[str]) -> str | None:
    """Why ``champion`` cannot be compared with (or lend its segment ids to) a model on ``features``:
    its centroids live in another feature space."""
    if champion is None or list(champion.features) == list(features):
        return None
    return f"features changed: the champion was trained on {list(champion.features)}, this run uses {list(features)}"


def published_choice(
    trained: TrainedSegmentation, champion_version: str
) -> tuple[SegmentAssigner, str, np.ndarray]:
    """Which model the write-back follows: the new one if it is champion (or there was none),
    else the champion it was compared with — a rejected challenger changes nobody's segment."""
    if champion_version == trained.model_version or trained.champion is None:
        return trained.assigner, trained.model_version, trained.eval_segment_ids
    assert trained.champion_eval_ids is not None  # computed whenever a champion was loaded
    return trained.champion, str(trained.previous_champion), trained.champion_eval_ids
