"""The scoring contract shared by batch write-back, the ``score`` job and online serving.

One object maps raw feature columns to (segment_id, segment_name) so that every path that
assigns customers — training, scheduled scoring, ``mlflow models serve`` — gives the same answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline


@dataclass
class SegmentAssigner:
    """A fitted preprocess→clustering pipeline plus the stable ids and names of its clusters.

    The last step is the fitted estimator of the configured algorithm (core.algorithms), and rows
    are assigned by its own ``predict`` (nearest centre for the KMeans family, highest posterior
    for a Gaussian mixture). ``label_to_segment[i]`` is the stable segment id of raw cluster ``i``;
    it differs from ``i`` after a retrain was matched to the previous champion's segments.
    """

    pipeline: Pipeline
    features: list[str]
    label_to_segment: np.ndarray
    segment_names: dict[int, str]
    centroids_original: np.ndarray | None = None  # per stable segment, raw feature means
    metadata: dict[str, str] = field(default_factory=dict)
    # the batch's rules for one row at a time (online scoring, core.serving): the configured
    # ranges (cleaning.ranges) and the outlier fences of the training data, in feature units
    ranges: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    fences: dict[str, tuple[float, float]] = field(default_factory=dict)

    def labels(self, frame: pd.DataFrame) -> np.ndarray:
        missing = [c for c in self.features if c not in frame.columns]
        if missing:
            raise ValueError(f"input lacks feature columns {missing}; expected {self.features}")
        raw = frame[self.features].apply(pd.to_numeric, errors="coerce").astype("float64")
        if raw.isna().any().any():
            bad = raw.columns[raw.isna().any()].tolist()
            raise ValueError(f"non-numeric or missing values in {bad}; every feature is required")
        X = self.pipeline[:-1].transform(raw)
        huge = ~np.isfinite(np.asarray(X, dtype=np.float64)).all(axis=1)
        if huge.any():  # finite but huge inputs (1e300) overflow once scaled
            example = raw[huge].iloc[0]
            raise ValueError(
                f"{int(huge.sum())} row(s) have feature values too large to scale into the model, "
                f"e.g. {example.to_dict()}; every feature needs a plausible range"
            )
        return self.pipeline[-1].predict(X)

    def assign(self, frame: pd.DataFrame) -> pd.DataFrame:
        segment_ids = self.label_to_segment[self.labels(frame)].astype("int64")
        names = pd.Series(segment_ids).map(self.segment_names).fillna("").astype(str).to_numpy()
        return pd.DataFrame({"segment_id": segment_ids, "segment_name": names}, index=frame.index)
