"""Synthetic customers with planted segments, for demos, benchmarks and recovery tests.

Why planted segments: the pipeline must *recover* known structure (adjusted Rand vs the planted
labels), not just run. The five segments are separated in (age, log income, spending score) so
that log1p + StandardScaler + KMeans finds them; dirty rows exercise cleaning and outlier code.
Fully vectorised: 5M rows take a few seconds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["GENDERS", "SEGMENTS", "generate_customers"]

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
