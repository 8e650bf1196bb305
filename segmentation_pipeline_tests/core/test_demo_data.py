"""Synthetic customers: realistic columns, planted dirt, and planted segments the pipeline recovers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from segmentation_pipeline.config import load_config
from segmentation_pipeline.core.demo_data import generate_customers
from segmentation_pipeline.core.features import build_features
from segmentation_pipeline.core.k_evidence import select_k
from segmentation_pipeline.core.modeling import fit_kmeans


def test_columns_and_dtypes() -> None:
    frame, labels = generate_customers(2000, seed=1, dirty=False)
    assert list(frame.columns) == ["customer_id", "gender", "age", "annual_income", "spending_score", "updated_at"]
    assert frame["customer_id"].tolist() == list(range(1, 2001))
    assert set(frame["gender"].astype(str)) <= {"Female", "Male", "Other"}
    assert frame["age"].dtype == np.int64 and frame["spending_score"].dtype == np.int64
    assert frame["annual_income"].dtype == np.float64
    assert pd.api.types.is_datetime64_any_dtype(frame["updated_at"])
    assert frame["spending_score"].between(1, 100).all()
    assert frame["age"].between(18, 95).all()
    assert frame["annual_income"].notna().all() and (frame["annual_income"] > 0).all()
    # right-skewed incomes
    assert frame["annual_income"].mean() > frame["annual_income"].median()
    assert labels.shape == (2000,) and set(np.unique(labels)) == {0, 1, 2, 3, 4}


def test_dirty_rows_are_present_and_labelled_noise() -> None:
    n = 20_000
    frame, labels = generate_customers(n, seed=2)
    missing = frame["annual_income"].isna()
    bad_age = frame["age"] == 250
    duplicate = frame["customer_id"].duplicated(keep=False)
    extreme = frame["annual_income"] >= 2_000_000
    assert missing.sum() > 0 and bad_age.sum() > 0 and extreme.sum() > 0
    assert frame["customer_id"].duplicated().sum() > 0
    assert 0.005 * n <= (labels == -1).sum() <= 0.03 * n
    assert (labels[missing | bad_age | extreme] == -1).all()
    # the stale duplicate is the older record and is the one labelled -1
    stale = frame[duplicate].sort_values(["customer_id", "updated_at"]).groupby("customer_id").head(1)
    assert (labels[stale.index] == -1).all()
    assert (labels[~(missing | bad_age | extreme | frame.index.isin(stale.index))] >= 0).all()


def test_same_seed_same_data() -> None:
    a, la = generate_customers(500, seed=7, vip_share=0.05)
    b, lb = generate_customers(500, seed=7, vip_share=0.05)
    pd.testing.assert_frame_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert not generate_customers(500, seed=8)[0].equals(a)


def test_vip_group() -> None:
    frame, labels = generate_customers(10_000, seed=3, dirty=False, vip_share=0.03)
    vip = labels == 5
    assert 0.02 < vip.mean() < 0.04
    assert frame.loc[vip, "annual_income"].median() > 3 * frame.loc[~vip, "annual_income"].quantile(0.9)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        generate_customers(0)
    with pytest.raises(ValueError):
        generate_customers(10, vip_share=1.5)


def test_default_pipeline_recovers_the_planted_segments() -> None:
    config = load_config("configs/default.yaml")
    frame, planted = generate_customers(12_000, seed=5)
    keep = planted >= 0  # stands in for cleaning + outlier flagging, which are not this module's job
    clean = frame[keep].reset_index(drop=True)
    features = build_features(clean, config, config.source.id_column)
    selection = select_k(features.X_fit, config)
    assert selection.k == 5, selection.reason
    model = fit_kmeans(
        features.X_fit,
        selection.k,
        n_init=config.model.n_init,
        max_iter=config.model.max_iter,
        random_state=config.model.random_state,
    )
    assert adjusted_rand_score(planted[keep], model.predict(features.X)) >= 0.95
