"""Frames and small queries shared by the storage tests (independent of the code under test where it matters)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import sqlalchemy as sa

from segmentation_pipeline.storage.reads import read_table


def customers_frame(n: int, *, start: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    ids = np.arange(start, start + n, dtype=np.int64)
    return pd.DataFrame(
        {
            "customer_id": ids,
            "age": rng.integers(18, 80, n),
            "annual_income": rng.normal(60, 20, n).round(2),
            "spending_score": rng.integers(1, 101, n),
            "gender": rng.choice(["Female", "Male", "Other"], n).astype(object),
            "updated_at": pd.Timestamp("2024-01-01") + pd.to_timedelta(ids * 60, unit="s"),
        }
    )


def create_customers(engine: sa.Engine, table: str, frame: pd.DataFrame) -> None:
    """Plain DDL + pandas inserts, independent of the code under test."""
    metadata = sa.MetaData()
    sa.Table(
        table,
        metadata,
        sa.Column("customer_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("age", sa.Integer),
        sa.Column("annual_income", sa.Numeric(12, 2)),
        sa.Column("spending_score", sa.Integer),
        sa.Column("gender", sa.String(20)),
        sa.Column("updated_at", sa.DateTime),
    )
    metadata.create_all(engine)
    if len(frame):
        with engine.begin() as conn:
            conn.execute(metadata.tables[table].insert(), frame.to_dict("records"))


NASTY = [
    "tab\there",
    "new\nline",
    "crlf\r\nend",
    "back\\slash",
    "\\N",
    "\\",
    "NULL",
    "",
    None,
    'quote\'s "double" `tick`',
    "ünïcödé 東京 🙂",
    "trailing space ",
    "nul\x00byte",
    "\\t literal",
]


def segments(n: int, version: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(version)
    return pd.DataFrame(
        {
            "customer_id": np.arange(1, n + 1, dtype=np.int64),
            "segment": rng.integers(0, 5, n),
            "distance": rng.random(n),
            "label": rng.choice(["VIP", "Gold", "Regular"], n).astype(object),
            "version": np.full(n, version, dtype=np.int64),
        }
    )


def count_rows(engine: sa.Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.exec_driver_sql(f"SELECT COUNT(*) FROM {table}").scalar_one())


def table_names(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def read_all(engine: sa.Engine, table: str, id_column: str = "customer_id") -> pd.DataFrame:
    return read_table(engine, table, None, id_column=id_column, chunk_size=10_000)

