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
    """One row per clean customer; outliers are segmented too, flagged with the feature that tripped."""
    if len(segment_ids) != len(clean):
        raise ValueError(f"{len(segment_ids)} segment ids for {len(clean)} clean customers")
    ids = pd.Series(np.asarray(segment_ids, dtype="int64"))
    frame = pd.DataFrame(
        {
            "customer_id": clean[id_column].to_numpy(),
            "segment_id": ids.to_numpy(),
            "segment_name": ids.map(segment_names).fillna("").astype(str).to_numpy(),
            "is_outlier": clean["is_outlier"].astype(bool).to_numpy() if "is_outlier" in clean else False,
            "outlier_reason": clean["outlier_reason"].astype(str).to_numpy() if "outlier_reason" in clean else "",
        }
    )
    frame["model_name"] = model_name
    frame["model_version"] = str(model_version)
    frame["mlflow_run_id"] = mlflow_run_id
    frame["dagster_run_id"] = dagster_run_id
    frame["scored_at"] = _now()
    return frame[SEGMENT_COLUMNS]


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
