"""Order features aggregated on the server, against values worked out by hand (MariaDB and SQLite)."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from segmentation_pipeline.config import TransactionsConfig
from segmentation_pipeline.storage.bulk_load import load_frame
from segmentation_pipeline.storage.connection import table_exists
from segmentation_pipeline.storage.errors import SourceError
from segmentation_pipeline.storage.transactions import (
    build_order_features,
    compute_order_features,
    orders_high_water_mark,
)

AS_OF = dt.date(2024, 3, 1)

# (order_id, customer_id, ordered_at, quantity, unit_price); amount = quantity x unit_price
LINES: list[tuple[int, Any, Any, int, float]] = [
    (10, 1, "2024-01-01 00:00:00", 2, 50.0),  # customer 1: a two-line order of 150
    (10, 1, "2024-01-01 00:00:00", 1, 50.0),
    (11, 1, "2024-02-01 12:00:00", 4, 50.0),  # ... an order of 200
    (12, 1, "2024-02-05 00:00:00", -1, 30.0),  # ... a return of 30 (an order of its own)
    (13, 1, None, 1, 999.0),  # no timestamp: excluded
    (20, 2, "2024-02-29 00:00:00", 1, 40.0),  # customer 2: one order of one line
    (21, 2, "2024-03-05 00:00:00", 1, 500.0),  # after as_of: excluded
    (30, 3, "2024-01-10 00:00:00", 1, 80.0),  # customer 3 returns all he bought: net 0
    (31, 3, "2024-01-12 00:00:00", -1, 80.0),
    (40, 4, "2024-02-15 00:00:00", 1, 100.0),  # customers 4 and 5: identical (ties)
    (50, 5, "2024-02-15 00:00:00", 1, 100.0),
    (60, None, "2024-02-01 00:00:00", 1, 25.0),  # no customer: excluded
]

NAN = math.nan
# worked out by hand from LINES with as_of 2024-03-01 (2024 is a leap year)
EXPECTED = pd.DataFrame(
    [
        # id, recency, frequency, monetary, avg order, tenure, mean days between, return rate, R, F, M, segment
        (1, 28.5, 2, 320.0, 160.0, 60.0, 31.5, 30 / 350, 1, 4, 4, "At risk"),
        (2, 1.0, 1, 40.0, 40.0, 1.0, NAN, 0.0, 4, 1, 1, "Promising"),
        (3, 51.0, 1, 0.0, 0.0, 51.0, NAN, 1.0, None, None, None, None),
        (4, 15.0, 1, 100.0, 100.0, 15.0, NAN, 0.0, 2, 1, 2, "Hibernating"),
        (5, 15.0, 1, 100.0, 100.0, 15.0, NAN, 0.0, 2, 1, 2, "Hibernating"),
    ],
    columns=["customer_id", "recency_days", "frequency", "monetary", "avg_order_value", "tenure_days",
             "mean_days_between_orders", "return_rate", "r_score", "f_score", "m_score", "rfm_segment"],
)
FEATURES = ["recency_days", "frequency", "monetary", "avg_order_value", "tenure_days", "mean_days_between_orders",
            "return_rate"]


def _orders(lines: list[tuple[int, Any, Any, int, float]] = LINES, *, text_times: bool = False) -> pd.DataFrame:
    frame = pd.DataFrame(lines, columns=["order_id", "customer_id", "ordered_at", "quantity", "unit_price"])
    frame["customer_id"] = frame["customer_id"].astype("Int64")
    if not text_times:
        frame["ordered_at"] = pd.to_datetime(frame["ordered_at"])
    frame["amount"] = frame["quantity"] * frame["unit_price"]
    return frame


def _config(table: str, **changes: Any) -> TransactionsConfig:
    base: dict[str, Any] = {"table": table, "amount": "amount", "as_of": AS_OF, "features_table": f"{table}_f"}
    return TransactionsConfig(**(base | changes))


def _check(result: pd.DataFrame, expected: pd.DataFrame = EXPECTED) -> None:
    got = result.sort_values("customer_id", ignore_index=True)
    assert got["customer_id"].tolist() == expected["customer_id"].tolist()
    pd.testing.assert_frame_equal(
        got[FEATURES].astype("float64"), expected[FEATURES].astype("float64"), check_exact=False, rtol=1e-6
    )
    for column in ("r_score", "f_score", "m_score"):
        assert _plain(got[column], int) == _plain(expected[column], int), column
    assert _plain(got["rfm_segment"], str) == _plain(expected["rfm_segment"], str)


def _plain(values: pd.Series, kind: type) -> list[Any]:
    return [None if pd.isna(v) else kind(v) for v in values]


def test_features_by_hand_with_returns_multi_line_orders_and_ties(db: sa.Engine, table_name: str) -> None:
    load_frame(db, table_name, _orders())
    result = compute_order_features(db, _config(table_name))
    _check(result.frame)
    assert result.as_of == dt.datetime(2024, 3, 1)
    assert result.n_lines == len(LINES)
    assert result.excluded_lines == {"missing_customer_id": 1, "unparseable_timestamp": 1, "after_as_of": 1,
                                     "before_lookback": 0}
    assert result.n_non_positive == 1
    assert (result.frame["as_of"] == pd.Timestamp("2024-03-01")).all()


def test_quantity_times_unit_price_gives_the_same_features(db: sa.Engine, table_name: str) -> None:
    load_frame(db, table_name, _orders().drop(columns=["amount"]))
    result = compute_order_features(db, _config(table_name, amount=None, quantity="quantity", unit_price="unit_price"))
    _check(result.frame)


def test_lookback_window_and_default_as_of(db: sa.Engine, table_name: str) -> None:
    load_frame(db, table_name, _orders())
    windowed = compute_order_features(db, _config(table_name, lookback_days=30))
    assert windowed.excluded_lines["before_lookback"] == 4  # order 10 (2 lines), customer 3's two lines
    one = windowed.frame.set_index("customer_id").loc[1]
    assert (one["frequency"], one["monetary"], one["tenure_days"]) == (1, 170.0, 28.5)
    assert 3 not in set(windowed.frame["customer_id"])
    # default as_of: the day after the latest order line (2024-03-05 -> 2024-03-06)
    latest = compute_order_features(db, _config(table_name, as_of=None))
    assert latest.as_of == dt.datetime(2024, 3, 6)
    assert latest.excluded_lines["after_as_of"] == 0
    assert latest.frame.set_index("customer_id").loc[2, "recency_days"] == pytest.approx(1.0)  # 03-05 -> 03-06


def test_text_timestamps_that_do_not_parse_are_counted(db: sa.Engine, table_name: str) -> None:
    lines = [*LINES, (14, 1, "not a date", 1, 5.0)]
    frame = _orders(lines, text_times=True)
    frame["ordered_at"] = frame["ordered_at"].astype(object)
    load_frame(db, table_name, frame)
    result = compute_order_features(db, _config(table_name))
    assert result.excluded_lines["unparseable_timestamp"] == 2  # the text and the missing one
    _check(result.frame)


def test_build_writes_the_features_table_atomically(db: sa.Engine, table_name: str) -> None:
    load_frame(db, table_name, _orders())
    built = build_order_features(db, _config(table_name))
    written = pd.read_sql(f"SELECT * FROM {table_name}_f ORDER BY customer_id", db)
    _check(written)
    assert list(written.columns[:8]) == ["customer_id", *FEATURES]
    assert {"r_score", "f_score", "m_score", "rfm_segment", "as_of"} <= set(written.columns)
    assert len(written) == len(built.frame) == 5
    mark = orders_high_water_mark(db, _config(table_name))
    assert mark == {"row_count": len(LINES), "max_timestamp": "2024-03-05T00:00:00"}


def test_attributes_table_is_joined_on_the_customer_id(db: sa.Engine, table_name: str) -> None:
    load_frame(db, table_name, _orders())
    load_frame(db, f"{table_name}_a", pd.DataFrame({"customer_id": [1, 2, 9], "age": [30, 41, 50]}))
    built = build_order_features(db, _config(table_name, attributes_table=f"{table_name}_a"))
    ages = built.frame.set_index("customer_id")["age"]
    assert ages.loc[1] == 30 and ages.loc[2] == 41 and pd.isna(ages.loc[3])
    assert 9 not in ages.index  # attributes alone do not make a customer


# --------------------------------------------------------------------------- bad input


def _sentinel(db: sa.Engine, table: str) -> pd.DataFrame:
    frame = pd.DataFrame({"customer_id": [7], "monetary": [1.0]})
    load_frame(db, table, frame)
    return frame


@pytest.mark.parametrize(
    ("prepare", "changes", "expected"),
    [
        (lambda f: f, {"timestamp": "created_at"}, "column 'created_at' not found in table"),
        (lambda f: f.assign(amount=f["amount"].map(lambda v: f"{v} EUR")), {}, "column 'amount' is not numeric"),
        (lambda f: f.iloc[:0], {}, "has 0 rows"),
        (lambda f: f, {"as_of": dt.date(2023, 12, 1)}, "as_of 2023-12-01 is before every order"),
    ],
    ids=["missing-column", "non-numeric-amount", "empty-table", "as-of-too-early"],
)
def test_bad_input_stops_naming_the_problem_and_writes_nothing(
    db: sa.Engine, table_name: str, prepare: Any, changes: dict[str, Any], expected: str
) -> None:
    load_frame(db, table_name, prepare(_orders()))
    sentinel = _sentinel(db, f"{table_name}_f")
    with pytest.raises(SourceError) as caught:
        build_order_features(db, _config(table_name, **changes))
    message = str(caught.value)
    assert expected in message and repr(table_name) in message
    assert pd.read_sql(f"SELECT * FROM {table_name}_f", db).to_dict("records") == sentinel.to_dict("records")
    assert not table_exists(db, f"{table_name}_f__staging")


def test_missing_orders_table_is_named(db: sa.Engine, table_name: str) -> None:
    with pytest.raises(SourceError, match=table_name):
        build_order_features(db, _config(table_name))
    assert not table_exists(db, f"{table_name}_f")
