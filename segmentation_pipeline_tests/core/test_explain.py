"""Explanations against numbers worked out by hand, and residuals against scipy."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2_contingency

from segmentation_pipeline.core.explain import (
    MISSING_CATEGORY,
    categorical_profile,
    explain_model,
    explain_segments,
    feature_effects,
    segment_category_counts,
)

# segment 0: incomes 10, 30; segment 1: incomes 50, 70, 90 -> average 50, population std sqrt(800)
POPULATION = pd.DataFrame({
    "income": [10.0, 30.0, 50.0, 70.0, 90.0],
    "score": [5.0, 5.0, 5.0, 5.0, 5.0],
})
IDS = np.array([0, 0, 1, 1, 1])


def test_feature_effects_match_hand_computed_values():
    effects = feature_effects(POPULATION, IDS, ["income", "score"]).set_index(["segment_id", "feature"])
    low = effects.loc[(0, "income")]
    assert low["segment_mean"] == pytest.approx(20.0)
    assert low["average"] == pytest.approx(50.0)
    assert low["ratio"] == pytest.approx(0.4)
    assert low["difference"] == pytest.approx(-30.0)
    assert low["effect_size"] == pytest.approx(-30.0 / np.sqrt(800.0))
    high = effects.loc[(1, "income")]
    assert high["ratio"] == pytest.approx(70.0 / 50.0)
    assert high["effect_size"] == pytest.approx(20.0 / np.sqrt(800.0))
    constant = effects.loc[(1, "score")]
    assert constant["effect_size"] == 0.0 and constant["ratio"] == pytest.approx(1.0)


def test_explain_segments_shares_tiers_and_sentences():
    summary, _ = explain_segments(
        POPULATION, IDS, ["income", "score"], {0: "Low income", 1: "High income"},
        value_feature="income", tiers={0: "Regular", 1: "VIP"},
    )
    summary = summary.set_index("segment_id")
    assert summary.loc[0, "customers"] == 2
    assert summary.loc[0, "share_customers_pct"] == pytest.approx(40.0)
    assert summary.loc[0, "share_income_pct"] == pytest.approx(100.0 * 40 / 250)
    assert summary.loc[1, "share_income_pct"] == pytest.approx(100.0 * 210 / 250)
    assert summary.loc[1, "tier"] == "VIP"
    assert summary.loc[0, "explanation"] == "income 0.4× the average (-30)"
    assert summary.loc[1, "explanation"] == "income 1.4× the average (+20)"
    assert summary.loc[1, "segment_name"] == "High income"


def test_a_segment_close_to_average_says_so():
    frame = pd.DataFrame({"x": [1.0, 1.0, 1.0, 1.0]})
    summary, _ = explain_segments(frame, np.array([3, 3, 4, 4]), ["x"], {})
    assert list(summary["explanation"]) == ["close to the average on every feature"] * 2
    assert "tier" not in summary.columns


def test_ratio_is_left_out_where_the_average_is_not_positive():
    frame = pd.DataFrame({"delta": [-10.0, -20.0, 10.0, 20.0]})
    summary, effects = explain_segments(frame, np.array([0, 0, 1, 1]), ["delta"], {})
    assert effects["ratio"].isna().all()
    assert summary.loc[0, "explanation"] == "delta -15 vs the average"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_residuals_equal_scipy_chi_squared_of_segment_vs_the_others(seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 4, 600)
    values = pd.Series(rng.choice(["f", "m", "x"], 600, p=[0.5, 0.4, 0.1]), name="gender")
    values[ids == 2] = "f"  # segment 2 is all one category: a large residual
    profile = categorical_profile(values, ids)
    assert set(profile["column"]) == {"gender"}
    for row in profile.itertuples(index=False):
        in_segment = ids == row.segment_id
        in_category = (values == row.category).to_numpy()
        table = np.array([
            [np.sum(in_segment & in_category), np.sum(in_segment & ~in_category)],
            [np.sum(~in_segment & in_category), np.sum(~in_segment & ~in_category)],
        ])
        statistic, _, _, expected = chi2_contingency(table, correction=False)
        assert row.count == table[0, 0]
        assert row.share_pct == pytest.approx(100.0 * table[0, 0] / in_segment.sum())
        assert row.residual ** 2 == pytest.approx(statistic)
        assert np.sign(row.residual) == np.sign(table[0, 0] - expected[0, 0])
    assert profile.set_index(["segment_id", "category"]).loc[(2, "f"), "residual"] > 5


def test_missing_values_form_their_own_category():
    values = pd.Series(pd.Categorical(["a", None, "a", "b"]), name="channel")
    profile = categorical_profile(values, np.array([0, 0, 1, 1]))
    shares = profile.set_index(["segment_id", "category"])["share_pct"]
    assert shares[(0, MISSING_CATEGORY)] == pytest.approx(50.0)
    assert shares.groupby(level=0).sum().tolist() == pytest.approx([100.0, 100.0])


@pytest.mark.parametrize("ids", [np.array([4, 0, 4, 2, 2, 4, 0, 2, 4]), np.array([-1, 3, 3, -1, 7, 3, 7, 7, -1])])
@pytest.mark.parametrize("block_rows", [2, 4, 1000])
def test_block_wise_category_counts_equal_a_crosstab_of_every_row(ids, block_rows):
    codes = np.array([0, 1, -1, 1, 0, 2, -1, 0, 1], dtype=np.int8)  # -1: missing, counted last
    segments, counts = segment_category_counts(ids, codes, 4, block_rows=block_rows)
    expected = pd.crosstab(ids, np.where(codes < 0, 3, codes)).reindex(columns=range(4), fill_value=0)
    np.testing.assert_array_equal(segments, np.unique(ids))
    np.testing.assert_array_equal(counts, expected.to_numpy())


def test_explain_model_bundles_the_tables_per_segment():
    categories = pd.DataFrame({"channel": ["web", "web", "shop", "shop", "web"]})
    explained = explain_model(POPULATION, IDS, categories, ["income"], {0: "Low", 1: "High"}, value_feature="income")
    records = explained.records()
    assert [r["segment_id"] for r in records] == [0, 1]
    assert records[0]["features"][0]["segment_mean"] == pytest.approx(20.0)
    shares = {c["category"]: c["share_pct"] for c in records[1]["categories"]}
    assert shares == pytest.approx({"shop": 200 / 3, "web": 100 / 3})
    assert explain_model(POPULATION, IDS, None, ["income"], {}).categories.empty
