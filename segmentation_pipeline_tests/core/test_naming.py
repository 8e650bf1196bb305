"""Segment profiles and names: readable, unique, tiered by value, deterministic."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from segmentation_pipeline.core.naming import name_segments, profile_segments
from segmentation_pipeline.core.plots import profile_plot

FEATURES = ["annual_income", "spending_score"]


def _population(
    groups: dict[int, tuple[float, float, int]], seed: int = 0, income_sd: float = 1000.0
) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows around (income, score) per segment id with a given count."""
    rng = np.random.default_rng(seed)
    frames, labels = [], []
    for segment, (income, score, count) in groups.items():
        frames.append(
            pd.DataFrame(
                {
                    "annual_income": income + rng.normal(0, income_sd, count),
                    "spending_score": score + rng.normal(0, 1, count),
                }
            )
        )
        labels.append(np.full(count, segment))
    return pd.concat(frames, ignore_index=True), np.concatenate(labels)


def _names(frame: pd.DataFrame, labels: np.ndarray, **kwargs) -> dict[int, str]:
    profile = profile_segments(frame, labels, FEATURES, "annual_income")
    options = {"high_threshold": 0.5, "tiers": [], "value_feature": "annual_income", **kwargs}
    return name_segments(profile, frame, FEATURES, **options)


def test_profile_counts_shares_means_and_totals() -> None:
    frame, labels = _population({0: (50_000, 50, 70), 1: (120_000, 20, 20), 2: (30_000, 90, 10)})
    profile = profile_segments(frame, labels, FEATURES, "annual_income")
    assert profile["segment_id"].tolist() == [0, 1, 2]
    assert profile["count"].sum() == len(frame)
    assert profile["count"].tolist() == [70, 20, 10]
    assert profile["share_pct"].sum() == pytest.approx(100.0)
    assert profile["share_pct"].tolist() == pytest.approx([70.0, 20.0, 10.0])
    expected_mean = frame.loc[labels == 1, "annual_income"].mean()
    assert profile.loc[1, "mean_annual_income"] == pytest.approx(expected_mean)
    assert profile["total_annual_income"].sum() == pytest.approx(frame["annual_income"].sum())
    assert list(profile.columns) == [
        "segment_id", "count", "share_pct", "mean_annual_income", "mean_spending_score", "total_annual_income",
    ]


def test_names_from_z_scores() -> None:
    frame, labels = _population({0: (150_000, 15, 30), 1: (30_000, 90, 30), 2: (80_000, 52, 40)})
    names = _names(frame, labels)
    assert names == {
        0: "High annual income · Low spending score",
        1: "Low annual income · High spending score",
        2: "Average customers",
    }


def test_only_standout_features_are_named() -> None:
    frame, labels = _population({0: (80_000, 95, 30), 1: (80_000, 10, 30), 2: (80_000, 52, 40)})
    assert _names(frame, labels) == {0: "High spending score", 1: "Low spending score", 2: "Average customers"}


def test_names_are_unique_using_the_next_most_distinctive_feature() -> None:
    # 0 and 1 both read "High spending score"; 0 also earns a bit more, 1 a bit less
    frame, labels = _population(
        {0: (88_000, 95, 2000), 1: (72_000, 93, 2000), 2: (80_000, 10, 2000), 3: (80_000, 52, 2000)},
        income_sd=20_000,  # income differences of 8k are then well under the 0.8 threshold
    )
    names = _names(frame, labels, high_threshold=0.8)
    assert len(set(names.values())) == 4
    assert names[0] == "Above-average annual income · High spending score"
    assert names[1] == "Below-average annual income · High spending score"
    assert names[2] == "Low spending score"


def test_identical_segments_get_a_suffix() -> None:
    frame, labels = _population({0: (80_000, 50, 20), 1: (80_000, 50, 20)})
    profile = profile_segments(frame, labels, FEATURES, None)
    profile[["mean_annual_income", "mean_spending_score"]] = [80_000.0, 50.0]  # exactly the same
    names = name_segments(profile, frame, FEATURES, high_threshold=0.5, tiers=[], value_feature=None)
    assert len(set(names.values())) == 2
    assert names[1].endswith(" #2")


def test_tiers_rank_by_value_feature() -> None:
    frame, labels = _population(
        {
            0: (40_000, 80, 30),
            1: (300_000, 90, 5),
            2: (120_000, 20, 15),
            3: (60_000, 50, 30),
            4: (25_000, 15, 20),
        }
    )
    names = _names(frame, labels, tiers=["VIP", "Gold", "Regular"])
    tiers = {segment: name.split(" · ")[0] for segment, name in names.items()}
    assert tiers == {1: "VIP", 2: "Gold", 3: "Regular", 0: "Regular", 4: "Regular"}
    assert names[1] == "VIP · High annual income · High spending score"
    assert len(set(names.values())) == 5


def test_tiers_need_a_value_feature() -> None:
    frame, labels = _population({0: (40_000, 80, 30), 1: (90_000, 20, 30)})
    with pytest.raises(ValueError, match="value_feature"):
        _names(frame, labels, tiers=["VIP"], value_feature=None)


def test_names_are_deterministic_and_independent_of_row_order() -> None:
    frame, labels = _population({0: (150_000, 15, 30), 1: (30_000, 90, 30), 2: (80_000, 52, 40)})
    profile = profile_segments(frame, labels, FEATURES, "annual_income")
    kwargs = {"high_threshold": 0.5, "tiers": ["VIP", "Gold"], "value_feature": "annual_income"}
    first = name_segments(profile, frame, FEATURES, **kwargs)
    shuffled = name_segments(profile.iloc[::-1].reset_index(drop=True), frame.sample(frac=1, random_state=1),
                             FEATURES, **kwargs)
    assert first == shuffled


def test_profile_plot_is_png() -> None:
    frame, labels = _population({0: (150_000, 15, 30), 1: (30_000, 90, 30), 2: (80_000, 52, 40)})
    profile = profile_segments(frame, labels, FEATURES, "annual_income")
    image = profile_plot(profile, FEATURES, population=frame, names=_names(frame, labels))
    assert image.startswith(b"\x89PNG\r\n\x1a\n") and len(image) > 5000
    named = profile.assign(segment_name=profile["segment_id"].map(_names(frame, labels)))
    assert profile_plot(named, FEATURES).startswith(b"\x89PNG\r\n\x1a\n")


def test_segment_sums_and_moments_match_pandas_for_any_labels() -> None:
    from segmentation_pipeline.core.naming import population_moments, segment_sums

    rng = np.random.default_rng(8)
    frame = pd.DataFrame({"x": rng.normal(50, 9, 2000), "y": rng.gamma(2.0, 1e4, 2000)})
    for labels in (rng.choice([0, 3, 9], 2000), rng.choice([-1, 2], 2000), rng.choice(["b", "a"], 2000)):
        ids, counts, sums = segment_sums(frame, labels, ["x", "y"])
        grouped = frame.groupby(labels, sort=True)
        assert ids.tolist() == grouped.size().index.tolist() and counts.tolist() == grouped.size().tolist()
        np.testing.assert_allclose(sums, grouped.sum().to_numpy(), rtol=1e-12)
    centre, spread = population_moments(frame, ["x", "y"], log_features=["y"])
    logged = frame.assign(y=np.log1p(frame["y"]))
    np.testing.assert_allclose(centre, logged.mean().to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(spread, logged.std(ddof=0).to_numpy(), rtol=1e-12)
