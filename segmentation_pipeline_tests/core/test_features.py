"""Preprocessing: log1p on the right columns, fit on non-outliers only, PCA sizing, dtypes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from segmentation_pipeline.config import load_config
from segmentation_pipeline.core.features import build_features, build_preprocessor

FEATURES4 = ["f1", "f2", "f3", "f4"]


def _config(**overrides):
    return load_config("configs/default.yaml", overrides=overrides)


def _generic_config(**overrides):
    base = {
        "features": FEATURES4,
        "cleaning.ranges": {},
        "transform.log1p": [],
        "naming.value_feature": None,
    }
    return _config(**{**base, **overrides})


def _two_factor_frame(n: int = 4000, seed: int = 0) -> pd.DataFrame:
    """Four columns driven by two independent factors: 2 components carry ~99.5% of variance."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(2, n))
    noise = rng.normal(scale=0.1, size=(2, n))
    return pd.DataFrame(
        {"customer_id": np.arange(n), "f1": a, "f2": a + noise[0], "f3": b, "f4": b + noise[1]}
    )


def _customers(n: int = 500, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "customer_id": np.arange(1, n + 1),
            "age": rng.integers(18, 80, n),
            "annual_income": np.exp(rng.normal(11, 0.6, n)),
            "spending_score": rng.integers(1, 101, n),
        }
    )


@pytest.mark.parametrize(("target", "expected"), [(0.3, 1), (0.95, 2), (0.9999, 4), (1.0, 4)])
def test_pca_variance_target_picks_the_smallest_sufficient_count(target: float, expected: int) -> None:
    frame = _two_factor_frame()
    fm = build_features(frame, _generic_config(**{"transform.pca_components": target}), "customer_id")
    assert fm.X.shape == (len(frame), expected)
    assert len(fm.component_names) == expected
    assert fm.loadings.shape == (4, expected)
    assert list(fm.loadings.index) == FEATURES4
    cumulative = np.cumsum(fm.explained_variance_ratio)
    if expected < 4:
        assert cumulative[-1] >= target
        assert expected == 1 or cumulative[-2] < target


def test_pca_integer_count_and_none() -> None:
    frame = _two_factor_frame(500)
    assert build_features(frame, _generic_config(**{"transform.pca_components": 3}), "customer_id").X.shape[1] == 3
    no_pca = build_features(frame, _generic_config(**{"transform.pca_components": None}), "customer_id")
    assert no_pca.component_names == FEATURES4
    assert "pca" not in no_pca.preprocessor.named_steps
    np.testing.assert_allclose(no_pca.explained_variance_ratio, [0.25] * 4, atol=1e-6)


def test_pca_count_above_feature_count_is_a_clear_error() -> None:
    config = _config()
    # bypass config validation to reach build_preprocessor's own check
    bad = config.model_copy(update={"transform": config.transform.model_copy(update={"pca_components": 5})})
    with pytest.raises(ValueError, match=r"pca_components=5 exceeds the number of features \(3\)"):
        build_preprocessor(bad)


def test_fit_ignores_rows_outside_fit_mask() -> None:
    frame = _customers()
    frame.loc[0, "annual_income"] = 9_000_000_000.0  # an extreme outlier
    mask = np.ones(len(frame), dtype=bool)
    mask[0] = False
    config = _config(**{"transform.pca_components": None, "transform.float32": False})

    fm = build_features(frame, config, "customer_id", fit_mask=mask)
    scaler = fm.preprocessor.named_steps["scale"]
    inliers = frame.loc[mask, config.features].assign(annual_income=lambda d: np.log1p(d["annual_income"]))
    np.testing.assert_allclose(scaler.mean_, inliers.mean().to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(scaler.scale_, inliers.std(ddof=0).to_numpy(), rtol=1e-12)

    # identical to fitting without the outlier at all; the outlier is still transformed
    alone = build_features(frame[mask].reset_index(drop=True), config, "customer_id")
    np.testing.assert_allclose(fm.X[mask], alone.X, rtol=1e-12)
    assert np.isfinite(fm.X[0]).all() and fm.X[0, 1] > 5
    assert fm.fit_mask is not None and not fm.fit_mask[0]
    assert len(fm.X_fit) == len(frame) - 1

    unmasked = build_features(frame, config, "customer_id")
    assert not np.allclose(unmasked.preprocessor.named_steps["scale"].mean_, scaler.mean_)


def test_block_wise_fit_and_transform_equal_one_pipeline_fit_and_leave_the_input_alone(monkeypatch) -> None:
    import segmentation_pipeline.core.features as features_module

    monkeypatch.setattr(features_module, "TRANSFORM_BLOCK_ROWS", 128)  # several blocks, the last partial
    frame = _customers(n=1000)
    before = frame.copy()
    mask = np.ones(len(frame), dtype=bool)
    mask[::7] = False
    config = _config(**{"transform.log1p": ["annual_income"]})  # build_preprocessor needs a resolved list
    fm = build_features(frame, config, "customer_id", fit_mask=mask)

    reference = build_preprocessor(config).fit(frame.loc[mask, config.features])  # plain sklearn, all at once
    np.testing.assert_array_equal(fm.X, reference.transform(frame))
    np.testing.assert_array_equal(fm.preprocessor.transform(frame), fm.X)  # the served pipeline, same answer
    assert fm.X.dtype == np.float32 and fm.X.shape == (1000, len(fm.component_names))
    pd.testing.assert_frame_equal(frame, before)  # the in-place scaler never writes into the caller's frame


def test_float32_output_follows_config() -> None:
    frame = _customers()
    assert build_features(frame, _config(), "customer_id").X.dtype == np.float32
    assert build_features(frame, _config(**{"transform.float32": False}), "customer_id").X.dtype == np.float64


def test_log1p_only_on_configured_columns() -> None:
    frame = _customers()
    config = _config(**{"transform.pca_components": None, "transform.float32": False})
    fm = build_features(frame, config, "customer_id")
    manual = frame[["age", "annual_income", "spending_score"]].astype(float).to_numpy()
    manual[:, 1] = np.log1p(manual[:, 1])
    expected = (manual - manual.mean(axis=0)) / manual.std(axis=0)
    np.testing.assert_allclose(fm.X, expected, rtol=1e-10, atol=1e-12)
    # a raw (not logged) income would standardise differently
    raw = frame["annual_income"].to_numpy()
    assert not np.allclose(fm.X[:, 1], (raw - raw.mean()) / raw.std())


def test_column_order_and_extra_columns_do_not_matter() -> None:
    frame = _customers()
    fm = build_features(frame, _config(), "customer_id")
    shuffled = frame[["spending_score", "annual_income", "customer_id", "age"]].assign(gender="Female")
    np.testing.assert_array_equal(fm.preprocessor.transform(shuffled), fm.X)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.drop(columns=["age"]), "missing from the cleaned frame"),
        (lambda f: f.assign(annual_income=np.where(f.index < 3, np.nan, f["annual_income"])), "annual_income: 3"),
        (lambda f: f.assign(annual_income=np.where(f.index < 1, -5.0, f["annual_income"])), "log1p column"),
    ],
)
def test_unclean_input_is_named(mutate, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_features(mutate(_customers()), _config(**{"transform.log1p": ["annual_income"]}), "customer_id")


def test_fit_mask_must_match_rows() -> None:
    with pytest.raises(ValueError, match="fit_mask"):
        build_features(_customers(), _config(), "customer_id", fit_mask=np.ones(3, dtype=bool))
