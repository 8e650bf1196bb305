"""Table hand-offs: Parquet files read a column subset at a time, and plain frames read the same way."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from segmentation_pipeline.storage.tables import (
    ROW_GROUP_ROWS,
    owns_rows,
    parquet_table,
    read_columns,
    write_table,
)


def _frame(n: int = 50) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "customer_id": np.arange(1, n + 1, dtype=np.int64),
            "age": rng.integers(18, 80, n).astype(float),
            "gender": pd.Categorical(rng.choice(["Female", "Male"], n), categories=["Female", "Male", "Other"]),
            "is_outlier": rng.random(n) < 0.1,
            "updated_at": pd.Timestamp("2024-01-01") + pd.to_timedelta(np.arange(n), unit="h"),
            "detail": [f"row {i}" for i in range(n)],
        },
        index=pd.Index(np.arange(100, 100 + n)),  # not written: hand-offs carry no index
    )


def test_round_trip_keeps_values_and_dtypes_and_drops_the_index(tmp_path) -> None:
    frame = _frame()
    table = write_table(frame, tmp_path / "t.parquet")
    assert len(table) == 50 and table.columns == tuple(frame.columns)
    back = table.read()
    pd.testing.assert_frame_equal(back, frame.reset_index(drop=True))
    assert list(back["gender"].cat.categories) == ["Female", "Male", "Other"]  # unused categories survive
    assert parquet_table(tmp_path / "t.parquet") == table  # the same handle from the file's footer


def test_read_gives_only_the_asked_columns_in_that_order(tmp_path) -> None:
    table = write_table(_frame(), tmp_path / "t.parquet")
    part = table.read(["is_outlier", "customer_id"])
    assert list(part.columns) == ["is_outlier", "customer_id"]
    with pytest.raises(KeyError, match=r"no column\(s\) \['income'\]"):
        table.read(["customer_id", "income"])


def test_frames_are_read_as_views_and_files_as_private_copies(tmp_path) -> None:
    frame = _frame()
    view = read_columns(frame, ["age"])
    assert np.shares_memory(view["age"].to_numpy(), frame["age"].to_numpy()) and not owns_rows(frame)
    table = write_table(frame, tmp_path / "t.parquet")
    assert owns_rows(table)
    with pytest.raises(KeyError, match="income"):
        read_columns(frame, ["income"])


def test_several_row_groups_read_back_whole(tmp_path, monkeypatch) -> None:
    import segmentation_pipeline.storage.tables as tables

    monkeypatch.setattr(tables, "ROW_GROUP_ROWS", 7)
    assert ROW_GROUP_ROWS > 7
    frame = _frame(50)
    table = write_table(frame, tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(table.read(), frame.reset_index(drop=True))
    assert len(table.head(3)) == 3


def test_a_failed_write_leaves_no_file_under_the_final_name(tmp_path) -> None:
    bad = pd.DataFrame({"mixed": [1, "a", 2.5]})  # Arrow cannot type this column
    with pytest.raises(Exception):
        write_table(bad, tmp_path / "t.parquet")
    assert not (tmp_path / "t.parquet").exists()
