"""RFM quintile scores and named segments: the documented rules, ties and coverage."""

from __future__ import annotations

import pandas as pd
import pytest

from segmentation_pipeline.core.rfm import (
    SEGMENT_NAMES,
    SEGMENT_RULES,
    add_rfm,
    quintile_scores,
    segment_name,
)


def test_quintiles_of_ten_distinct_values_are_two_per_score() -> None:
    values = pd.Series(range(10, 0, -1), dtype="float64")
    assert quintile_scores(values).tolist() == [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]
    assert quintile_scores(values, higher_is_better=False).tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]


def test_tied_values_share_the_lower_score() -> None:
    # seven one-order customers out of ten: all score 1, however many there are
    frequency = pd.Series([1, 1, 1, 1, 1, 1, 1, 2, 3, 9], dtype="float64")
    assert quintile_scores(frequency).tolist() == [1] * 7 + [4, 5, 5]


def test_every_score_pair_has_exactly_one_first_rule_and_every_name_is_used() -> None:
    used = {segment_name(r, fm) for r in range(1, 6) for fm in range(1, 6)}
    assert used == set(SEGMENT_NAMES) and len(SEGMENT_NAMES) == 11
    for name, r_scores, fm_scores in SEGMENT_RULES:
        assert r_scores <= set(range(1, 6)) and fm_scores <= set(range(1, 6)), name


@pytest.mark.parametrize(
    ("r", "fm", "name"),
    [(5, 5, "Champions"), (5, 1, "New"), (4, 1, "Promising"), (3, 3, "Need attention"), (3, 1, "About to sleep"),
     (1, 5, "Can't lose them"), (2, 3, "At risk"), (1, 1, "Lost"), (2, 2, "Hibernating"), (1, 2, "Hibernating"),
     (4, 4, "Loyal"), (4, 2, "Potential loyalists")],
)
def test_documented_rules(r: int, fm: int, name: str) -> None:
    assert segment_name(r, fm) == name


def test_customers_with_no_net_spend_get_no_scores_and_do_not_shift_the_others() -> None:
    frame = pd.DataFrame({
        "recency_days": [1.0, 100.0, 5.0, 50.0, 10.0, 3.0],
        "frequency": [10, 1, 6, 2, 4, 1],
        "monetary": [1000.0, 10.0, 600.0, 20.0, 300.0, 0.0],
    })
    scored = add_rfm(frame)
    assert scored["r_score"].tolist()[:5] == [5, 1, 4, 2, 3] and pd.isna(scored["r_score"].iloc[5])
    assert scored["rfm_segment"].tolist()[:5] == ["Champions", "Lost", "Loyal", "Hibernating", "Need attention"]
    assert pd.isna(scored["rfm_segment"].iloc[5])
