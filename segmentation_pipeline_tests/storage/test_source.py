"""high_water_mark (the incremental-scoring cursor) against real MariaDB and SQLite."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
import sqlalchemy as sa

from segmentation_pipeline.storage.reads import read_table
from segmentation_pipeline.storage.source import high_water_mark
from segmentation_pipeline_tests.storage.frames import customers_frame


def test_high_water_mark_cursor_round_trip(customers: tuple[sa.Engine, str, pd.DataFrame]) -> None:
    """The sensor keeps the mark as JSON strings; reading past it must return only new rows."""
    engine, table, _ = customers
    mark = {
        k: v if v is None or isinstance(v, int | float) else str(v)
        for k, v in high_water_mark(engine, table, "customer_id", "updated_at").items()
    }
    newer = customers_frame(5, start=1038)
    newer["updated_at"] = pd.Timestamp("2030-01-01")
    with engine.begin() as conn:
        conn.execute(sa.Table(table, sa.MetaData(), autoload_with=conn).insert(), newer.to_dict("records"))
    by_time = read_table(
        engine,
        table,
        ["customer_id"],
        id_column="customer_id",
        chunk_size=2,
        where_after={"column": "updated_at", "value": mark["max_updated_at"]},
    )
    by_id = read_table(
        engine,
        table,
        ["customer_id"],
        id_column="customer_id",
        chunk_size=2,
        where_after={"column": "customer_id", "value": str(mark["max_id"])},
    )
    assert by_time["customer_id"].tolist() == by_id["customer_id"].tolist() == list(range(1038, 1043))
    with pytest.raises(ValueError, match="does not fit"):
        read_table(
            engine,
            table,
            ["age"],
            id_column="customer_id",
            chunk_size=2,
            where_after={"column": "customer_id", "value": "abc"},
        )


def test_high_water_mark(customers: tuple[sa.Engine, str, pd.DataFrame]) -> None:
    engine, table, frame = customers
    mark = high_water_mark(engine, table, "customer_id", "updated_at")
    assert mark == {
        "max_id": 1037,
        "max_updated_at": frame["updated_at"].max().to_pydatetime(),
        "row_count": 1037,
    }
    assert isinstance(mark["max_updated_at"], dt.datetime)
    assert high_water_mark(engine, table, "customer_id")["max_updated_at"] is None


def test_high_water_mark_over_the_rows_a_filtered_read_returns(customers: tuple[sa.Engine, str, pd.DataFrame]) -> None:
    """With where_after (cursor strings included) the mark covers exactly the rows read_customers would read."""
    engine, table, frame = customers
    cutoff = frame["updated_at"].iloc[899]
    mark = high_water_mark(
        engine, table, "customer_id", "updated_at", where_after={"column": "updated_at", "value": str(cutoff)}
    )
    newer = frame[frame["updated_at"] > cutoff]
    assert mark == {
        "max_id": int(newer["customer_id"].max()),
        "max_updated_at": newer["updated_at"].max().to_pydatetime(),
        "row_count": len(newer),
    }
    by_id = high_water_mark(engine, table, "customer_id", where_after={"column": "customer_id", "value": "2000"})
    assert by_id == {"max_id": None, "max_updated_at": None, "row_count": 0}
