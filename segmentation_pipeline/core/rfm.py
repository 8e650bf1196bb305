"""Classic RFM beside the clusters: quintile scores and the named segments marketing already uses.

Why here and pure: the aggregation runs on the database server, but the scores only need the
per-customer table (customers fit in memory), and the rules must read the same for every engine
and in the explanation of the clusters.

Scores: R, F and M are quintile scores 1-5 (5 = best: most recent, most orders, most money) by
rank, ties sharing the lower score, so a value always gets one score however many customers have
it. The segment is looked up from R and FM = round-half-up((F + M) / 2) in :data:`SEGMENT_RULES`
(the first matching rule wins; every (R, FM) pair matches exactly one rule).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the config imports the names below; pandas loads when scores are computed
    import pandas as pd

__all__ = [
    "EXCLUDED_LINE_REASONS",
    "FEATURE_COLUMNS",
    "NON_POSITIVE_MONETARY",
    "RFM_COLUMNS",
    "RFM_SEGMENT_COLUMN",
    "SEGMENT_NAMES",
    "SEGMENT_RULES",
    "add_rfm",
    "quintile_scores",
    "segment_name",
]

#: The per-customer features aggregated from the order lines, in table order.
FEATURE_COLUMNS = [
    "recency_days", "frequency", "monetary", "avg_order_value", "tenure_days", "mean_days_between_orders",
    "return_rate",
]
#: The RFM columns added beside them.
RFM_SEGMENT_COLUMN = "rfm_segment"
RFM_COLUMNS = ["r_score", "f_score", "m_score", RFM_SEGMENT_COLUMN]

#: The reject reason of a customer whose net amount (purchases minus returns) is <= 0.
NON_POSITIVE_MONETARY = "non_positive_monetary"

#: Why an order line is not counted, in the order the checks apply (a line gets the first).
EXCLUDED_LINE_REASONS = ["missing_customer_id", "unparseable_timestamp", "after_as_of", "before_lookback"]

#: (name, R scores, FM scores): the first rule containing a customer's (R, FM) names its segment.
SEGMENT_RULES: list[tuple[str, frozenset[int], frozenset[int]]] = [
    ("Champions", frozenset({5}), frozenset({4, 5})),
    ("Loyal", frozenset({3, 4}), frozenset({4, 5})),
    ("Potential loyalists", frozenset({4, 5}), frozenset({2, 3})),
    ("New", frozenset({5}), frozenset({1})),
    ("Promising", frozenset({4}), frozenset({1})),
    ("Need attention", frozenset({3}), frozenset({3})),
    ("About to sleep", frozenset({3}), frozenset({1, 2})),
    ("Can't lose them", frozenset({1, 2}), frozenset({5})),
    ("At risk", frozenset({1, 2}), frozenset({3, 4})),
    ("Lost", frozenset({1}), frozenset({1})),
    ("Hibernating", frozenset({1, 2}), frozenset({1, 2})),
]
SEGMENT_NAMES = [name for name, _, _ in SEGMENT_RULES]


def quintile_scores(values: pd.Series, *, higher_is_better: bool = True) -> pd.Series:
    """1-5 by rank: the lowest fifth scores 1 (or 5 when lower is better); ties share a score."""
    import numpy as np
    import pandas as pd

    ranked = (values if higher_is_better else -values).rank(method="min")
    n = int(values.notna().sum())
    if n == 0:
        return pd.Series(pd.array([pd.NA] * len(values), dtype="Int64"), index=values.index)
    score = np.floor((ranked - 1) * 5 / n) + 1
    return score.astype("Int64")


def segment_name(r: int, fm: int) -> str:
    """The named segment of an R score and an FM score (both 1-5)."""
    for name, r_scores, fm_scores in SEGMENT_RULES:
        if r in r_scores and fm in fm_scores:
            return name
    raise ValueError(f"no RFM segment rule covers R={r}, FM={fm}")


def add_rfm(features: pd.DataFrame) -> pd.DataFrame:
    """``features`` with r/f/m scores and the segment name; scored among customers with net > 0."""
    import pandas as pd

    out = features.copy()
    scored = out["monetary"] > 0
    part = out.loc[scored]
    r = quintile_scores(part["recency_days"], higher_is_better=False)
    f = quintile_scores(part["frequency"])
    m = quintile_scores(part["monetary"])
    fm = (f + m + 1) // 2  # round half up
    lookup = {(ri, fi): segment_name(ri, fi) for ri in range(1, 6) for fi in range(1, 6)}
    names = [lookup[(int(a), int(b))] for a, b in zip(r, fm, strict=True)]
    for column, values in (("r_score", r), ("f_score", f), ("m_score", m)):
        out[column] = pd.Series(values, index=part.index, dtype="Int64").reindex(out.index)
    out["rfm_segment"] = pd.Series(names, index=part.index, dtype=object).reindex(out.index)
    return out
