"""Online scoring judges each row as the batch cleaning would, and scores the rest of the request."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from segmentation_pipeline.config import load_config
from segmentation_pipeline.core.assigner import SegmentAssigner
from segmentation_pipeline.core.cleaning import clean_customers
from segmentation_pipeline.core.demo_data import generate_customers
from segmentation_pipeline.core.features import build_features
from segmentation_pipeline.core.modeling import build_model_pipeline, canonical_relabel, fit_kmeans
from segmentation_pipeline.core.serving import outside_fences, row_errors, score_rows

FEATURES = ["age", "annual_income", "spending_score"]
RANGES = {"age": (16.0, 110.0), "annual_income": (0.0, 1e7), "spending_score": (1.0, 100.0)}


@pytest.fixture(scope="module")
def assigner() -> SegmentAssigner:
    config = load_config("configs/default.yaml")
    frame, _ = generate_customers(1500, seed=3, dirty=False)
    fm = build_features(frame, config, "customer_id")
    kmeans = fit_kmeans(fm.X_fit, 4, n_init=2, max_iter=100, random_state=0)
    canonical = canonical_relabel(kmeans)
    return SegmentAssigner(
        pipeline=build_model_pipeline(fm.preprocessor, kmeans), features=FEATURES,
        label_to_segment=canonical, segment_names={int(s): f"segment {s}" for s in canonical},
        ranges=RANGES, fences={"annual_income": (1000.0, 200000.0)},
    )


REQUEST = pd.DataFrame({
    "age": [24, "38", None, 500, "abc", 30, 30],
    "annual_income": ["38,000", 38000, 50000, 40000, 40000, -5, 900000],
    "spending_score": [85, 85, 50, 50, 50, 50, 50],
})


def test_each_row_gets_the_batch_verdict(assigner):
    out = score_rows(assigner, REQUEST)
    assert list(out.columns) == ["segment_id", "segment_name", "is_outlier", "error"]
    assert len(out) == len(REQUEST)
    assert out["error"].iloc[0] is None and out["error"].iloc[1] is None
    assert out["segment_id"].iloc[0] == out["segment_id"].iloc[1]  # "38,000" is 38000, "38" is 38
    assert out["error"].iloc[2] == "missing:age: age is missing"
    assert out["error"].iloc[3] == "out_of_range:age: age=500 is out of range (must be >= 16 and <= 110)"
    assert out["error"].iloc[4] == "non_numeric:age: age=abc is not numeric"
    assert out["error"].iloc[5].startswith("out_of_range:annual_income: annual_income=-5 ")
    assert out["segment_id"].iloc[2:6].isna().all() and out["segment_name"].iloc[2:6].isna().all()
    assert not out["is_outlier"].iloc[:6].any()
    assert out["error"].iloc[6] is None and out["is_outlier"].iloc[6]  # scored, flagged above the fence
    assert out["segment_name"].iloc[6] == f"segment {out['segment_id'].iloc[6]}"


def test_first_failure_follows_the_batch_precedence():
    frame = pd.DataFrame({"age": [500], "annual_income": ["lots"], "spending_score": [None]})
    _, errors = row_errors(frame, FEATURES, RANGES)
    assert errors == ["non_numeric:annual_income: annual_income=lots is not numeric"]


def test_a_missing_column_is_a_per_row_error(assigner):
    out = score_rows(assigner, pd.DataFrame({"age": [30], "annual_income": [40000]}))
    assert out["error"].iloc[0] == "missing:spending_score: spending_score is missing"


def test_online_rejects_what_the_batch_rejects_for_the_same_reason():
    config = load_config("configs/default.yaml")
    raw = pd.DataFrame({
        "customer_id": range(1, 9),
        "age": [24, "38", None, 500, "abc", 30, 31, 45],
        "annual_income": ["38,000", 38000, 50000, 40000, 40000, -5, 41000, 52000],
        "spending_score": [85, 85, 50, 50, 50, 50, 60, 40],
        "gender": ["Female"] * 8,
    })
    batch = clean_customers(raw, config, table="t")
    rejected = dict(zip(batch.rejects["customer_id"].astype(int), batch.rejects["reason"], strict=True))
    _, errors = row_errors(raw[FEATURES], FEATURES, {f: (r.min, r.max) for f, r in config.cleaning.ranges.items()})
    online = {i + 1: e.split(": ")[0] for i, e in enumerate(errors) if e is not None}
    assert online == rejected


def test_fences_flag_only_rows_outside():
    values = pd.DataFrame({"x": [1.0, 5.0, 11.0, np.nan], "y": [0.0, 0.0, 0.0, 0.0]})
    assert outside_fences(values, {"x": (2.0, 10.0)}).tolist() == [True, False, True, False]


def test_a_model_registered_before_the_online_rules_still_scores(assigner):
    old = SegmentAssigner(assigner.pipeline, FEATURES, assigner.label_to_segment, assigner.segment_names)
    del old.__dict__["ranges"], old.__dict__["fences"]  # as unpickled from an older version
    out = score_rows(old, REQUEST.iloc[[0, 3]])
    assert out["error"].isna().all() and out["segment_id"].notna().all()
