"""IQR outliers and the issue-8 guard: the VIPs are not noise, the noise still is."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.cluster import KMeans
from sklearn.preprocessing import StandardScaler

from segmentation_pipeline.config import PipelineConfig
from segmentation_pipeline.core.outlier_guard import tukey
from segmentation_pipeline.core.outliers import OutlierPolicyError, detect_outliers, flag_labels, iqr_fences

FEATURES = ["age", "annual_income", "annual_spend"]
LOG1P = ["annual_income"]
# (age, annual income, annual spend) at the centre of each ordinary segment
SEGMENTS = [(25, 30_000, 2_000), (38, 55_000, 8_000), (52, 40_000, 1_000), (63, 90_000, 5_000), (30, 75_000, 12_000)]
VIP = (45, 400_000, 60_000)  # several times everyone else's income and spend


def make_config(k: int | None = None, **outliers: Any) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "database": {"url": "sqlite://"},
            "source": {"table": "customers"},
            "features": FEATURES,
            "k": k,
            "mlflow": {"tracking_uri": "sqlite://"},
            "transform": {"log1p": LOG1P},
            "cleaning": {"outliers": outliers},
        }
    )


def customers(
    n: int, seed: int, vip_share: float = 0.05, noise_share: float = 0.01
) -> tuple[pd.DataFrame, np.ndarray]:
    """Five ordinary segments, a compact high-value group, and noise far from all of them.

    Returns the frame (shuffled, with a non-default index) and each row's kind:
    "ordinary", "vip" or "noise".
    """
    rng = np.random.default_rng(seed)
    n_vip, n_noise = round(n * vip_share), round(n * noise_share)
    n_ordinary = n - n_vip - n_noise
    centres = np.vstack([np.array(SEGMENTS, float)[rng.integers(0, len(SEGMENTS), n_ordinary)],
                         np.tile(np.array(VIP, float), (n_vip, 1))])  # fmt: skip
    m = len(centres)
    grouped = np.column_stack(
        [
            rng.normal(centres[:, 0], 3, m),
            centres[:, 1] * rng.lognormal(0, 0.12, m),
            centres[:, 2] * rng.lognormal(0, 0.12, m),
        ]
    )
    # noise: uniform on the log scale, kept only when at least 1.5 log-units from every group
    log_centres = np.log(np.array([*SEGMENTS, VIP], float)[:, 1:])
    noise = np.empty((0, 3))
    while len(noise) < n_noise:
        cand = np.column_stack(
            [
                rng.uniform(18, 90, 10 * n_noise),
                np.exp(rng.uniform(np.log(3e3), np.log(5e6), 10 * n_noise)),
                np.exp(rng.uniform(np.log(50), np.log(1e6), 10 * n_noise)),
            ]
        )
        far = np.abs(np.log(cand[:, None, 1:]) - log_centres[None]).max(axis=2).min(axis=1) > 1.5
        noise = np.vstack([noise, cand[far]])
    values = np.vstack([grouped, noise[:n_noise]])
    kind = np.array(["ordinary"] * n_ordinary + ["vip"] * n_vip + ["noise"] * n_noise)
    order = rng.permutation(n)
    frame = pd.DataFrame(values[order], columns=FEATURES, index=pd.Index(10 * np.arange(n)[::-1] + 7))
    return frame, kind[order]


def plain_pooled_mask(frame: pd.DataFrame, multiplier: float = 1.5) -> np.ndarray:
    """Classic IQR on every feature over all rows, log1p where configured: the reference."""
    mask = np.zeros(len(frame), dtype=bool)
    for col in FEATURES:
        values = frame[col].to_numpy()
        values = np.log1p(values) if col in LOG1P else values
        low, high = iqr_fences(values, multiplier)
        mask |= (values < low) | (values > high)
    return mask


# --- iqr_fences -------------------------------------------------------------------------------


def test_iqr_fences_exact_on_known_array() -> None:
    values = np.arange(1, 101, dtype=float)  # Q1 25.75, Q3 75.25 (linear), IQR 49.5
    assert iqr_fences(values, 1.5) == pytest.approx((25.75 - 1.5 * 49.5, 75.25 + 1.5 * 49.5))
    assert iqr_fences(values, 1.5) == pytest.approx((-48.5, 149.5))
    assert iqr_fences(values, 3.0) == pytest.approx((25.75 - 148.5, 75.25 + 148.5))


def test_iqr_fences_skip_non_finite_and_empty_fences_nothing() -> None:
    values = np.array([np.nan, *np.arange(1, 101), np.inf])
    assert iqr_fences(values, 1.5) == pytest.approx((-48.5, 149.5))
    assert iqr_fences(np.array([]), 1.5) == (-np.inf, np.inf)


def test_fences_on_log_scale_for_log1p_features() -> None:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(
        {
            "age": rng.normal(40, 5, 2000),
            "annual_income": rng.lognormal(10.5, 0.5, 2000),  # skewed: raw fences would cut the tail
            "annual_spend": rng.normal(5000, 500, 2000),
        }
    )
    result = detect_outliers(frame, make_config(method="pooled", max_share=1.0))
    income = frame["annual_income"].to_numpy()
    low, high = iqr_fences(np.log1p(income), 1.5)
    assert result.report["fences"]["annual_income"] == pytest.approx([np.expm1(low), np.expm1(high)])
    flagged_income = result.reasons.str.contains("annual_income").to_numpy()
    np.testing.assert_array_equal(flagged_income, (np.log1p(income) < low) | (np.log1p(income) > high))
    raw_low, raw_high = iqr_fences(income, 1.5)
    raw_flagged = (income < raw_low) | (income > raw_high)
    assert raw_flagged.sum() > 2 * flagged_income.sum()  # the log scale is what spares the tail
    assert result.report["fence_scale"] == {"age": "raw", "annual_income": "log1p", "annual_spend": "raw"}


def test_flag_labels_joins_feature_names() -> None:
    flags = np.array([[False, False], [True, False], [True, True], [False, True]])
    labels = flag_labels(flags, ["a", "b"], prefix="outlier:")
    assert labels.tolist() == ["", "outlier:a", "outlier:a,b", "outlier:b"]


# --- issue 8 acceptance -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def vip_data() -> tuple[pd.DataFrame, np.ndarray]:
    return customers(4000, seed=0)


@pytest.fixture(scope="module")
def vip_result(vip_data: tuple[pd.DataFrame, np.ndarray]):
    frame, _ = vip_data
    return detect_outliers(frame, make_config())


def test_issue8_pooled_fences_would_erase_the_vips_and_the_guard_trips(vip_data, vip_result) -> None:
    frame, kind = vip_data
    plain = plain_pooled_mask(frame)
    assert plain.mean() > 0.05
    assert plain[kind == "vip"].mean() > 0.9  # the bug the guard exists for
    report = vip_result.report
    assert report["pooled_share"] == pytest.approx(plain.mean())
    assert report["guard_tripped"] is True
    assert report["method_used"] == "segment_aware"
    assert "IQR fences would exclude" in report["warning"] and "cap 5.0%" in report["warning"]
    assert f"{plain.mean():.1%}" in report["warning"]
    assert set(report["share_by_feature"]) == set(FEATURES)


def test_issue8_vips_kept_and_noise_flagged(vip_data, vip_result) -> None:
    _, kind = vip_data
    mask = vip_result.mask
    assert mask[kind == "vip"].mean() <= 0.10
    assert mask[kind == "noise"].mean() >= 0.80
    report = vip_result.report
    assert report["n_outliers"] == int(mask.sum())
    assert report["final_share"] == pytest.approx(mask.mean())
    assert sum(report["outliers_by_cluster"].values()) == report["n_outliers"]
    assert sum(report["cluster_sizes"].values()) == len(mask)
    assert report["provisional_k"] >= 2


def test_issue8_vips_form_their_own_segment_after_refit(vip_data, vip_result) -> None:
    frame, kind = vip_data
    keep = ~vip_result.mask
    x = frame.to_numpy().copy()
    x[:, FEATURES.index("annual_income")] = np.log1p(x[:, FEATURES.index("annual_income")])
    scaler = StandardScaler().fit(x[keep])
    model = KMeans(len(SEGMENTS) + 1, n_init=10, random_state=0).fit(scaler.transform(x[keep]))
    labels = model.predict(scaler.transform(x))
    vip = kind == "vip"
    best = np.bincount(labels[vip]).argmax()
    assert (labels[vip] == best).mean() >= 0.90
    members = labels == best
    assert (~vip[members]).mean() < 0.10


def test_issue8_reasons_name_the_feature_and_keep_the_index(vip_data, vip_result) -> None:
    frame, _ = vip_data
    reasons = vip_result.reasons
    assert reasons.index.equals(frame.index)
    assert ((reasons != "") == vip_result.mask).all()
    flagged = reasons[vip_result.mask]
    assert flagged.str.match(r"^outlier:(age|annual_income|annual_spend)(,(age|annual_income|annual_spend))*$").all()
    counts = vip_result.report["outliers_by_feature"]
    for feature in FEATURES:
        assert counts[feature] == int(flagged.str.contains(feature).sum())


def test_noise_still_flagged_when_fixed_k_exceeds_the_real_groups(vip_data) -> None:
    frame, kind = vip_data
    result = detect_outliers(frame, make_config(k=9))  # spare centroids settle on the noise
    assert result.report["provisional_k"] == 9
    assert result.mask[kind == "noise"].mean() >= 0.80
    assert result.mask[kind == "vip"].mean() <= 0.10


def test_without_a_vip_group_the_result_is_plain_iqr() -> None:
    frame, _ = customers(3000, seed=1, vip_share=0.0)
    plain = plain_pooled_mask(frame)
    assert 0 < plain.mean() < 0.05
    result = detect_outliers(frame, make_config())
    assert result.report["method_used"] == "pooled"
    assert result.report["guard_tripped"] is False
    assert result.report["warning"] is None
    np.testing.assert_array_equal(result.mask, plain)


# --- policies ---------------------------------------------------------------------------------


def test_on_excess_fail_names_share_and_cap(vip_data) -> None:
    frame, _ = vip_data
    share = plain_pooled_mask(frame).mean()
    with pytest.raises(OutlierPolicyError) as err:
        detect_outliers(frame, make_config(on_excess="fail"))
    message = str(err.value)
    assert f"{share:.1%}" in message
    assert "cap 5.0%" in message
    assert "annual_income" in message and "on_excess" in message


def test_on_excess_widen_raises_the_multiplier_until_under_the_cap(vip_data) -> None:
    frame, _ = vip_data
    result = detect_outliers(frame, make_config(on_excess="widen"))
    report = result.report
    assert report["method_used"] == "widened"
    assert report["guard_tripped"] is True
    assert report["multiplier_used"] > 1.5
    assert report["final_share"] <= 0.05
    assert "widened" in report["warning"]
    np.testing.assert_array_equal(result.mask, plain_pooled_mask(frame, report["multiplier_used"]))
    # the step before was not enough
    assert plain_pooled_mask(frame, report["multiplier_used"] / 1.5).mean() > 0.05


def test_explicit_pooled_still_applies_the_guard(vip_data) -> None:
    frame, _ = vip_data
    report = detect_outliers(frame, make_config(method="pooled")).report
    assert report["guard_tripped"] is True
    assert report["method_used"] == "segment_aware"


def test_explicit_segment_aware_is_used_without_the_guard() -> None:
    frame, kind = customers(2000, seed=2, vip_share=0.0)
    result = detect_outliers(frame, make_config(method="segment_aware"))
    assert result.report["method_used"] == "segment_aware"
    assert result.report["guard_tripped"] is False
    assert result.mask[kind == "noise"].mean() >= 0.80


def test_outlier_feature_subset(vip_data) -> None:
    frame, _ = vip_data
    result = detect_outliers(frame, make_config(features=["age"], method="pooled", max_share=1.0))
    assert set(result.report["outliers_by_feature"]) == {"age"}
    assert set(result.reasons[result.mask]) <= {"outlier:age"}
    low, high = iqr_fences(frame["age"].to_numpy(), 1.5)
    np.testing.assert_array_equal(result.mask, ((frame["age"] < low) | (frame["age"] > high)).to_numpy())


def test_disabled_flags_nothing(vip_data) -> None:
    frame, _ = vip_data
    result = detect_outliers(frame, make_config(enabled=False))
    assert not result.mask.any()
    assert (result.reasons == "").all()
    assert result.report["method_used"] == "disabled"


def test_non_finite_input_is_refused_naming_the_column() -> None:
    frame = pd.DataFrame({"age": [30.0, 40.0], "annual_income": [1e4, -2.0], "annual_spend": [1.0, 2.0]})
    with pytest.raises(ValueError, match="annual_income"):
        detect_outliers(frame, make_config())


def test_a_feature_whose_quartiles_coincide_gets_open_fences() -> None:
    """80% of ages are 40 (IQR 0): Tukey's rule would flag every other age, 20% of the table."""
    rng = np.random.default_rng(4)
    age = np.where(rng.random(1000) < 0.8, 40.0, rng.uniform(20, 70, 1000))
    frame = pd.DataFrame({"age": age, "annual_income": rng.lognormal(10, 0.2, 1000), "annual_spend": 1000.0})
    result = detect_outliers(frame, make_config(on_excess="fail"))  # would raise were 20% flagged
    assert result.report["open_fences"] == ["age", "annual_spend"]
    assert result.report["outliers_by_feature"]["age"] == 0 == result.report["outliers_by_feature"]["annual_spend"]
    assert result.report["fences"]["age"] == [-np.inf, np.inf]
    # the feature with a spread is still fenced as before
    low, high = iqr_fences(np.log1p(frame["annual_income"].to_numpy()), 1.5)
    flagged = (np.log1p(frame["annual_income"]) < low) | (np.log1p(frame["annual_income"]) > high)
    assert result.report["outliers_by_feature"]["annual_income"] == int(flagged.sum()) > 0


def test_tukey_opens_only_degenerate_fences() -> None:
    low, high = tukey(np.array([0.0, 1.0, np.nan]), np.array([0.0, 3.0, np.nan]), 1.5)
    np.testing.assert_array_equal(low[:2], [-np.inf, -2.0])
    np.testing.assert_array_equal(high[:2], [np.inf, 6.0])
    assert np.isnan(low[2]) and np.isnan(high[2])  # a dissolved cluster's fences stay undefined
    assert tukey(2.0, 4.0, 1.0) == (0.0, 6.0)


def test_small_vip_group_under_the_cap_still_trips_the_erasure_guard() -> None:
    """2% VIPs + 1% noise: pooled fences stay under the 5% cap yet flag most VIPs; the guard
    notices a provisional cluster mostly flagged and switches to segment-aware fences."""
    frame, kind = customers(5000, seed=3, vip_share=0.02)
    plain = plain_pooled_mask(frame)
    assert plain.mean() <= 0.05 and plain[kind == "vip"].mean() > 0.5  # the silent failure
    result = detect_outliers(frame, make_config())
    assert result.report["guard_tripped"] is True
    assert "a real segment, not noise" in result.report["warning"]
    assert result.report["erased_clusters"]
    assert result.report["method_used"] == "segment_aware"
    assert result.mask[kind == "vip"].mean() <= 0.10
    assert result.mask[kind == "noise"].mean() >= 0.80


def test_provisional_k_is_bounded_whatever_the_configured_range() -> None:
    """A k_range far beyond the data must not make the guard fit thousands of models."""
    frame, _ = customers(800, seed=5, vip_share=0.03)
    config = PipelineConfig.model_validate(
        {**make_config(method="segment_aware").model_dump(), "k_range": (2, 5000)}
    )
    report = detect_outliers(frame, config).report
    tried = set(report["provisional_silhouette"])
    assert tried and max(tried) <= min(15, 800 // 20)
    assert report["provisional_k"] in tried
