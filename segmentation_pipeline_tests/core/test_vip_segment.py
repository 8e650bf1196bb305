"""Issue 8 through the whole core: clean → features → k rule → KMeans keeps the VIPs a segment."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from segmentation_pipeline.config import load_config
from segmentation_pipeline.core.cleaning import clean_customers
from segmentation_pipeline.core.demo_data import generate_customers
from segmentation_pipeline.core.features import build_features
from segmentation_pipeline.core.k_evidence import select_k
from segmentation_pipeline.core.modeling import fit_kmeans

VIP = 5  # demo_data's planted label for the high-value group


@pytest.mark.parametrize("seed", [0, 1])
def test_vip_group_comes_out_as_its_own_segment(seed: int) -> None:
    cfg = load_config()
    frame, planted = generate_customers(6000, seed=seed, vip_share=0.05)
    result = clean_customers(frame, cfg)
    clean = result.clean
    truth = pd.Series(planted, index=frame.index).loc[clean.index].to_numpy()
    is_outlier = clean["is_outlier"].to_numpy()
    vip = truth == VIP

    assert is_outlier[vip].mean() <= 0.10, result.report["outliers"]
    features = build_features(clean, cfg, cfg.source.id_column, fit_mask=~is_outlier)
    selection = select_k(features.X[features.fit_mask], cfg)
    kmeans = fit_kmeans(features.X[features.fit_mask], selection.k, n_init=cfg.model.n_init,
                        max_iter=cfg.model.max_iter, random_state=cfg.model.random_state)
    labels = kmeans.predict(features.X)
    values, counts = np.unique(labels[vip], return_counts=True)
    vip_segment = values[counts.argmax()]
    assert counts.max() / vip.sum() >= 0.90
    members = (labels == vip_segment) & ~is_outlier  # flagged extremes sit with their nearest segment
    assert (truth[members] != VIP).mean() < 0.10
