"""Synthetic customers with planted segments, for demos, benchmarks and recovery tests.

Why planted segments: the pipeline must *recover* known structure (adjusted Rand vs the planted
labels), not just run. The five segments are separated in (age, log income, spending score) so
that log1p + StandardScaler + KMeans finds them; dirty rows exercise cleaning and outlier code.
Fully vectorised: 5M rows take a few seconds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["BEHAVIOURS", "GENDERS", "ORDERS_END", "SEGMENTS", "generate_customers", "generate_orders"]

GENDERS = ["Female", "Male", "Other"]

# name, share, age mean/sd, income median/log-sd (lognormal, dollars), spending score mean/sd
SEGMENTS: list[tuple[str, float, float, float, float, float, float, float]] = [
    ("young high spenders", 0.22, 24.0, 3.0, 38_000.0, 0.20, 82.0, 6.0),
    ("middle-aged average", 0.28, 44.0, 4.0, 62_000.0, 0.15, 50.0, 6.0),
    ("affluent careful", 0.16, 52.0, 5.0, 150_000.0, 0.18, 18.0, 6.0),
    ("affluent spenders", 0.16, 36.0, 4.0, 140_000.0, 0.18, 84.0, 5.0),
    ("frugal seniors", 0.18, 70.0, 4.0, 30_000.0, 0.20, 20.0, 6.0),
]
VIP_SEGMENT = ("vip", 46.0, 6.0, 900_000.0, 0.25, 92.0, 4.0)

_DIRTY_SHARE = 0.01  # missing income, impossible age, stale duplicate id: a third each
_OUTLIER_SHARE = 0.005  # plausible but extreme incomes, inside the cleaning range
_YEAR_SECONDS = 365 * 24 * 3600


def _draw(
    rng: np.random.Generator, segment: np.ndarray, params: list[tuple[float, float, float, float, float, float]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row draws from each row's segment parameters (table lookup, no Python row loop)."""
    table = np.asarray(params, dtype=np.float64)
    p = table[segment]
    n = len(segment)
    age = rng.normal(p[:, 0], p[:, 1], n)
    income = np.exp(rng.normal(np.log(p[:, 2]), p[:, 3], n))
    score = rng.normal(p[:, 4], p[:, 5], n)
    return age, income, score


def generate_customers(
    n: int, *, seed: int = 0, dirty: bool = True, vip_share: float = 0.0
) -> tuple[pd.DataFrame, np.ndarray]:
    """``n`` customers and each row's planted segment (0-4; 5 = VIP; -1 = dirty or outlier row).

    Columns: customer_id (int64, 1..n; stale duplicates reuse an earlier id), gender (categorical
    Female/Male/Other), age (int64), annual_income (float64 dollars, NaN when missing),
    spending_score (int64 1..100), updated_at (datetime64). With ``dirty``: ~1% bad rows (missing
    income, age 250, a stale duplicate of another customer's id with an older updated_at) and
    ~0.5% extreme incomes (2M-9.5M). ``vip_share`` adds that fraction of very rich top spenders.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 <= vip_share < 1:
        raise ValueError(f"vip_share must be in [0, 1), got {vip_share}")
    rng = np.random.default_rng(seed)
    shares = np.array([s[1] for s in SEGMENTS])
    shares = shares / shares.sum() * (1 - vip_share)
    params = [s[2:] for s in SEGMENTS]
    if vip_share > 0:
        shares = np.append(shares, vip_share)
        params.append(VIP_SEGMENT[1:])
    labels = rng.choice(len(shares), size=n, p=shares / shares.sum()).astype(np.int64)
    age, income, score = _draw(rng, labels, params)

    age = np.clip(np.rint(age), 18, 95).astype(np.int64)
    income = np.round(np.maximum(income, 1_000.0), 2)
    score = np.clip(np.rint(score), 1, 100).astype(np.int64)
    customer_id = np.arange(1, n + 1, dtype=np.int64)
    now = np.datetime64("2025-01-01T00:00:00", "s")
    updated_at = now - rng.integers(0, _YEAR_SECONDS, n).astype("timedelta64[s]")

    if dirty and n >= 10:
        n_dirty = max(3, int(round(n * _DIRTY_SHARE)))
        n_outlier = max(1, int(round(n * _OUTLIER_SHARE)))
        picked = rng.choice(n, size=min(n - 1, n_dirty + n_outlier), replace=False)
        thirds = np.array_split(picked[:n_dirty], 3)
        missing, bad_age, duplicate = thirds
        outliers = picked[n_dirty:]
        income[missing] = np.nan
        age[bad_age] = 250
        # a stale copy of another (clean) customer: same id, older timestamp, drifted values
        clean_rows = np.setdiff1d(np.arange(n), picked, assume_unique=True)
        originals = rng.choice(clean_rows, size=len(duplicate), replace=False)
        customer_id[duplicate] = customer_id[originals]
        updated_at[duplicate] = updated_at[originals] - np.timedelta64(30 * 24 * 3600, "s")
        income[outliers] = np.round(rng.uniform(2_000_000.0, 9_500_000.0, len(outliers)), 2)
        labels[picked] = -1

    gender = pd.Categorical.from_codes(rng.choice(3, size=n, p=[0.49, 0.49, 0.02]), categories=GENDERS)
    frame = pd.DataFrame(
        {
            "customer_id": customer_id,
            "gender": gender,
            "age": age,
            "annual_income": income,
            "spending_score": score,
            "updated_at": updated_at.astype("datetime64[ns]"),
        }
    )
    return frame, labels


# name, share, orders (low, high), days since the last order (low, high), line value median, returned share
BEHAVIOURS: list[tuple[str, float, tuple[int, int], tuple[int, int], float, float]] = [
    ("frequent big spenders", 0.20, (15, 30), (0, 20), 250.0, 0.0),
    ("one-off buyers", 0.35, (1, 1), (60, 240), 40.0, 0.0),
    ("lapsed customers", 0.25, (4, 8), (350, 550), 80.0, 0.0),
    ("returners", 0.20, (5, 10), (5, 60), 100.0, 0.4),
]
#: The day orders are generated up to: the default as_of of the demo orders is the day after.
ORDERS_END = np.datetime64("2025-01-01T00:00:00", "s")
_REFUNDED_SHARE = 0.01  # customers who returned everything they bought: net 0, rejected
_NO_CUSTOMER_SHARE = 0.005  # order lines without a customer id (walk-in sales)


def generate_orders(n_customers: int, *, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    """Order lines of ``n_customers`` with planted behaviours, and each customer's behaviour.

    Columns: order_id (int64), customer_id (Int64), ordered_at
    (datetime64, before :data:`ORDERS_END`), quantity (int64, negative on returns), unit_price
    (float64), amount (float64 = quantity x unit_price). Orders have 1-3 lines, plus ~0.5%
    walk-in lines without a customer. Returns are lines of their own orders a few days after the
    purchase (returners: part of the price of every line). ~1% of customers return everything
    (planted -1: their net amount is 0). The planted Series is indexed by customer_id.
    """
    if n_customers < 1:
        raise ValueError(f"n_customers must be >= 1, got {n_customers}")
    rng = np.random.default_rng(seed)
    shares = np.array([b[1] for b in BEHAVIOURS])
    labels = rng.choice(len(BEHAVIOURS), size=n_customers, p=shares / shares.sum()).astype(np.int64)
    params = BEHAVIOURS
    low = np.array([p[2][0] for p in params])[labels]
    high = np.array([p[2][1] for p in params])[labels]
    n_orders = rng.integers(low, high + 1)
    recency = rng.uniform(np.array([p[3][0] for p in params])[labels], np.array([p[3][1] for p in params])[labels])
    span = np.where(n_orders > 1, rng.uniform(200, 700, n_customers), 0.0)
    customer = np.repeat(np.arange(n_customers), n_orders)
    first_of = np.cumsum(n_orders) - n_orders
    k = np.arange(len(customer)) - first_of[customer]  # 0 = the latest order
    back = np.where(k == 0, 0.0, rng.uniform(0, 1, len(customer)) * span[customer])
    days_before = recency[customer] + back
    order_time = ORDERS_END - (days_before * 86400).astype("timedelta64[s]") - np.timedelta64(1, "s")
    value = np.array([p[4] for p in params])[labels][customer]
    n_lines = rng.integers(1, 4, len(customer))
    line_order = np.repeat(np.arange(len(customer)), n_lines)
    quantity = rng.integers(1, 4, len(line_order)).astype(np.int64)
    unit_price = np.round(np.exp(rng.normal(np.log(value[line_order] / 2), 0.25)), 2)

    # returns: returners get back about their returned share of every line (a return order a few
    # days later, same quantity at a partial price); refunded customers get back everything
    returned = np.array([p[5] for p in params])[labels][customer][line_order]
    refunded = rng.random(n_customers) < _REFUNDED_SHARE
    full = refunded[customer][line_order]
    ret_lines = np.flatnonzero((returned > 0) | full)
    share = np.where(full, 1.0, returned * rng.uniform(0.8, 1.2, len(line_order)))[ret_lines]
    ret_order = line_order[ret_lines]
    ret_quantity = -quantity[ret_lines]
    ret_time = order_time[ret_order] + np.minimum(
        (rng.uniform(1, 5, len(ret_lines)) * 86400).astype("timedelta64[s]"),
        ORDERS_END - order_time[ret_order] - np.timedelta64(1, "s"),
    )

    order_ids = np.arange(1, len(customer) + 1, dtype=np.int64)
    return_ids = len(customer) + 1 + np.unique(ret_order, return_inverse=True)[1].astype(np.int64)
    lines = pd.DataFrame(
        {
            "order_id": np.concatenate([order_ids[line_order], return_ids]),
            "customer_id": pd.array(np.concatenate([customer[line_order], customer[ret_order]]) + 1, dtype="Int64"),
            "ordered_at": np.concatenate([order_time[line_order], ret_time]).astype("datetime64[ns]"),
            "quantity": np.concatenate([quantity, ret_quantity]),
            "unit_price": np.concatenate([unit_price, np.round(unit_price[ret_lines] * share, 2)]),
        }
    )
    lines["amount"] = np.round(lines["quantity"] * lines["unit_price"], 2)
    walk_in = lines.sample(frac=_NO_CUSTOMER_SHARE, random_state=seed).assign(customer_id=pd.NA)
    walk_in["order_id"] = lines["order_id"].max() + 1 + np.arange(len(walk_in))
    lines = pd.concat([lines, walk_in.astype(lines.dtypes.to_dict())], ignore_index=True)
    lines = lines.sort_values(["ordered_at", "order_id"], ignore_index=True)
    planted = pd.Series(np.where(refunded, -1, labels), index=pd.RangeIndex(1, n_customers + 1, name="customer_id"))
    return lines, planted
