"""The write-back contract: the exact rows and columns of customer_segments and customer_rejects."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pandas as pd

SEGMENT_COLUMNS = [
    "customer_id", "segment_id", "segment_name", "is_outlier", "outlier_reason",
    "model_name", "model_version", "mlflow_run_id", "dagster_run_id", "scored_at",
]
REJECT_COLUMNS = ["customer_id", "reason", "detail", "mlflow_run_id", "dagster_run_id", "rejected_at"]


def _now() -> pd.Timestamp:
    return pd.Timestamp(datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0))


def _categorical(values: pd.Series) -> pd.Categorical:
    """Text labels as a categorical; cleaning already hands them over as one (no per-row strings)."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        return values.array
    return pd.Categorical(values.astype(str).to_numpy())


def build_segments_table(
    clean: pd.DataFrame,
    id_column: str,
    segment_ids: np.ndarray,
    segment_names: dict[int, str],
    *,
    model_name: str,
    model_version: str,
    mlflow_run_id: str,
    dagster_run_id: str,
) -> pd.DataFrame:
    """One row per clean customer; outliers are segmented too, flagged with the feature that tripped.

    Repeated strings (names, reasons, model and run ids) are categoricals: the frame costs ~30 bytes
    a row instead of ~80, and the writer renders each category once.
    """
    if len(segment_ids) != len(clean):
        raise ValueError(f"{len(segment_ids)} segment ids for {len(clean)} clean customers")
    ids = np.asarray(segment_ids, dtype="int64")
    n = len(ids)

    def repeated(value: str) -> pd.Categorical:
        return pd.Categorical.from_codes(np.zeros(n, dtype=np.int8), [value])

    columns = {
        "customer_id": clean[id_column].to_numpy(),
        "segment_id": ids,
        "segment_name": _names(ids, segment_names),
        "is_outlier": clean["is_outlier"].to_numpy(dtype=bool) if "is_outlier" in clean else np.zeros(n, dtype=bool),
        "outlier_reason": _categorical(clean["outlier_reason"]) if "outlier_reason" in clean else repeated(""),
        "model_name": repeated(model_name),
        "model_version": repeated(str(model_version)),
        "mlflow_run_id": repeated(mlflow_run_id),
        "dagster_run_id": repeated(dagster_run_id),
        "scored_at": np.full(n, _now().to_datetime64()),
    }
    assert list(columns) == SEGMENT_COLUMNS
    return pd.DataFrame(columns, copy=False)  # no consolidation copy of the id and label arrays


def _names(ids: np.ndarray, segment_names: dict[int, str]) -> pd.Categorical:
    """Each row's segment name ("" for an id without one), without a Python object per row."""
    categories = list(dict.fromkeys([*(str(v) for v in segment_names.values()), ""]))
    known = np.array(sorted(int(k) for k in segment_names), dtype=np.int64)
    known_codes = np.array([categories.index(str(segment_names[k])) for k in known], dtype=np.int16)
    codes = np.full(len(ids), categories.index(""), dtype=np.int16)
    if len(known):
        at = np.clip(np.searchsorted(known, ids), 0, len(known) - 1)
        hit = known[at] == ids
        codes[hit] = known_codes[at[hit]]
    return pd.Categorical.from_codes(codes, categories)


def build_rejects_table(rejects: pd.DataFrame, *, mlflow_run_id: str, dagster_run_id: str) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "customer_id": rejects["customer_id"].astype(str).to_numpy(),
            "reason": rejects["reason"].astype(str).to_numpy(),
            "detail": rejects["detail"].astype(str).to_numpy() if "detail" in rejects else "",
        }
    )
    frame["mlflow_run_id"] = mlflow_run_id
    frame["dagster_run_id"] = dagster_run_id
    frame["rejected_at"] = _now()
    return frame[REJECT_COLUMNS]


def check_row_accounting(n_segmented: int, n_rejected: int, n_input: int) -> None:
    """Every input row is segmented or rejected, exactly once: refuse to publish otherwise."""
    if n_segmented + n_rejected != n_input:
        raise RuntimeError(f"row accounting broken: {n_segmented} segmented + {n_rejected} rejected != {n_input} input rows")


def segment_shares(ids: np.ndarray, counts: np.ndarray, names: dict[int, str]) -> pd.DataFrame:
    """segment_id, segment_name, count, share_pct: the sizes a write-back reports."""
    counts = np.asarray(counts)
    total = max(int(counts.sum()), 1)
    return pd.DataFrame({
        "segment_id": np.asarray(ids, dtype=np.int64), "segment_name": [names.get(int(i), "") for i in ids],
        "count": counts.astype(np.int64), "share_pct": 100 * counts / total,
    })
