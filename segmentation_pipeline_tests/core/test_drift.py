"""compute_drift against real Evidently: silent on resamples, loud on real shifts."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from segmentation_pipeline.core.drift import DriftResult, DriftThresholds, compute_drift, drift_plot

FEATURES = ["income", "age", "tenure"]
SEGMENT_P = (0.4, 0.3, 0.2, 0.1)


def customers(n: int, seed: int, *, income_factor: float = 1.0, age_shift: float = 0.0, p=SEGMENT_P) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "income": rng.lognormal(10.5, 0.5, n) * income_factor,
            "age": rng.normal(42, 12, n) + age_shift,
            "tenure": rng.exponential(3.0, n),
            "segment_id": rng.choice(len(p), size=n, p=p),
        }
    )


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return customers(5000, seed=1)


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_no_drift_on_fresh_sample_of_same_distribution(reference: pd.DataFrame, seed: int) -> None:
    result = compute_drift(reference, customers(5000, seed=seed), FEATURES)
    assert result.severity == "ok", result.summary
    assert result.drifted_features == []
    assert result.share_drifted == 0.0
    assert result.segment_psi is not None and result.segment_psi < DriftThresholds().segment_psi_warn
    assert set(result.feature_scores) == set(FEATURES)
    assert all(score < 0.1 for score in result.feature_scores.values())


def test_fires_on_income_scaled_by_one_and_a_half(reference: pd.DataFrame) -> None:
    result = compute_drift(reference, customers(5000, seed=21, income_factor=1.5), FEATURES)
    assert result.drifted_features == ["income"]
    assert result.share_drifted == pytest.approx(1 / 3)
    assert result.severity == "warn"  # 1/3 >= 0.3 warn, < 0.5 error; segment mix unchanged
    assert result.feature_scores["income"] > 5 * max(result.feature_scores["age"], result.feature_scores["tenure"])


def test_error_when_most_features_shift(reference: pd.DataFrame) -> None:
    current = customers(5000, seed=22, income_factor=1.5, age_shift=12.0)  # age mean moves by 1 std
    result = compute_drift(reference, current, FEATURES)
    assert sorted(result.drifted_features) == ["age", "income"]
    assert result.severity == "error"


def test_fires_on_changed_segment_shares(reference: pd.DataFrame) -> None:
    # segment 2 doubles (0.2 -> 0.4) at segment 0's expense; features unchanged
    current = customers(5000, seed=23, p=(0.2, 0.3, 0.4, 0.1))
    result = compute_drift(reference, current, FEATURES)
    assert result.drifted_features == []
    assert result.segment_psi is not None and result.segment_psi >= DriftThresholds().segment_psi_warn
    assert result.severity in {"warn", "error"}
    assert result.summary["segment_drift_detected"] is True
    shares = result.segment_shares.set_index("segment")
    assert list(result.segment_shares.columns) == ["segment", "reference_share", "current_share", "delta"]
    assert shares.loc[2, "current_share"] == pytest.approx(2 * shares.loc[2, "reference_share"], rel=0.15)
    assert shares["delta"].sum() == pytest.approx(0.0, abs=1e-9)
    assert shares.loc[2, "delta"] > 0.15 and shares.loc[0, "delta"] < -0.15


def test_segment_error_band_and_new_segment(reference: pd.DataFrame) -> None:
    current = customers(5000, seed=24, p=(0.1, 0.2, 0.3, 0.4))
    current.loc[:499, "segment_id"] = 7  # a segment the reference never had
    result = compute_drift(reference, current, FEATURES)
    assert result.segment_psi is not None and result.segment_psi >= DriftThresholds().segment_psi_error
    assert result.severity == "error"
    shares = result.segment_shares.set_index("segment")
    assert shares.loc[7, "reference_share"] == 0.0 and shares.loc[7, "current_share"] == pytest.approx(0.1)


def test_html_summary_and_plot(reference: pd.DataFrame) -> None:
    result = compute_drift(reference, customers(5000, seed=31, income_factor=1.5), FEATURES)
    assert isinstance(result, DriftResult)
    assert len(result.html) > 1000 and "<html" in result.html.lower()
    payload = json.loads(json.dumps(result.summary))
    assert payload["drifted_features"] == ["income"]
    assert payload["severity"] == result.severity
    assert payload["segment_method"] == "psi"
    assert set(payload["feature_scores"]) == set(FEATURES)
    assert len(payload["segment_shares"]) == 4
    png = drift_plot(result)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000


def test_sampling_caps_rows_and_no_segment_column() -> None:
    reference = customers(20_000, seed=41)
    current = customers(20_000, seed=42, income_factor=1.5)
    result = compute_drift(reference, current, FEATURES, segment_column=None, sample=3000, random_state=5)
    assert result.summary["rows"] == {
        "reference": 20_000,
        "current": 20_000,
        "reference_sampled": 3000,
        "current_sampled": 3000,
    }
    assert result.segment_psi is None and result.segment_shares.empty
    assert result.drifted_features == ["income"]
    assert drift_plot(result).startswith(b"\x89PNG")


def test_pinned_feature_method_is_used(reference: pd.DataFrame) -> None:
    thresholds = DriftThresholds(feature_method="psi", feature_threshold=0.2)
    result = compute_drift(reference, customers(5000, seed=51, income_factor=1.5), FEATURES, thresholds=thresholds)
    assert set(result.summary["feature_methods"].values()) == {"psi"}
    assert result.drifted_features == ["income"]


def test_rejects_bad_input(reference: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="lacks columns"):
        compute_drift(reference, reference.drop(columns="age"), FEATURES)
    with pytest.raises(ValueError, match="must not also be a feature"):
        compute_drift(reference, reference, [*FEATURES, "segment_id"])
    with pytest.raises(ValueError):
        DriftThresholds(feature_share_warn=0.6, feature_share_error=0.5)


def test_reference_sample_picks_the_rows_dataframe_sample_picks_without_copying_the_table() -> None:
    from segmentation_pipeline.core.drift import reference_sample

    rng = np.random.default_rng(2)
    clean = pd.DataFrame({"a": rng.normal(size=5000), "b": rng.normal(size=5000), "other": "x"},
                         index=np.arange(5000) * 3)  # labels that are not positions
    ids = rng.integers(0, 4, 5000)
    got = reference_sample(clean, ids, ["a", "b"], sample=700, random_state=11)
    want = clean[["a", "b"]].assign(segment_id=ids).sample(700, random_state=11)
    pd.testing.assert_frame_equal(got, want)
    small = reference_sample(clean.head(300), ids[:300], ["a"], sample=700, random_state=11)
    assert len(small) == 300 and list(small.columns) == ["a", "segment_id"]
