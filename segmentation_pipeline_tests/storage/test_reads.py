"""read_table against real MariaDB and SQLite: chunks, backends, filters, types."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from segmentation_pipeline.storage import reads
from segmentation_pipeline.storage.errors import SourceError
from segmentation_pipeline.storage.reads import ReadBackend, read_table
from segmentation_pipeline_tests.storage.frames import count_rows, create_customers, customers_frame


def test_reads_every_row_once_across_chunks(customers: tuple[sa.Engine, str, pd.DataFrame]) -> None:
    engine, table, frame = customers
    calls: list[tuple[int, int]] = []
    out = read_table(
        engine,
        table,
        ["customer_id", "age", "annual_income", "gender", "updated_at"],
        id_column="customer_id",
        chunk_size=100,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert len(out) == len(frame)
    assert out["customer_id"].is_unique
    assert out["customer_id"].tolist() == frame["customer_id"].tolist()
    assert [c[0] for c in calls] == list(range(100, 1001, 100)) + [1037]
    assert all(total == 1037 for _, total in calls)
    assert out["customer_id"].dtype == np.int64
    assert out["age"].dtype == np.int64
    assert out["annual_income"].dtype == np.float64  # DECIMAL -> float64
    assert out["gender"].dtype == object
    assert out["updated_at"].dtype.kind == "M"
    np.testing.assert_allclose(out["annual_income"], frame["annual_income"])
    assert out["updated_at"].tolist() == frame["updated_at"].tolist()


def test_chunk_size_equal_to_table_and_columns_none(customers: tuple[sa.Engine, str, pd.DataFrame]) -> None:
    engine, table, frame = customers
    out = read_table(engine, table, None, id_column="customer_id", chunk_size=len(frame))
    assert list(out.columns) == list(frame.columns)
    assert len(out) == len(frame)


def test_id_column_not_requested_is_not_returned(customers: tuple[sa.Engine, str, pd.DataFrame]) -> None:
    engine, table, frame = customers
    out = read_table(engine, table, ["age"], id_column="customer_id", chunk_size=300)
    assert list(out.columns) == ["age"]
    assert out["age"].tolist() == frame["age"].tolist()


def _fast_backend(engine: sa.Engine) -> ReadBackend:
    """connectorx on MySQL; SQLite is read by sqlite3 only (see reads._connectorx_uri)."""
    return "connectorx" if engine.dialect.name in ("mysql", "mariadb") else "auto"


def test_connectorx_and_sqlalchemy_paths_agree(customers: tuple[sa.Engine, str, pd.DataFrame]) -> None:
    engine, table, _ = customers
    fast = read_table(engine, table, None, id_column="customer_id", chunk_size=250, backend=_fast_backend(engine))
    slow = read_table(engine, table, None, id_column="customer_id", chunk_size=250, backend="sqlalchemy")
    pd.testing.assert_frame_equal(fast, slow)


def test_sqlite_is_never_read_through_connectorx(sqlite_db: sa.Engine, table_name: str) -> None:
    """connectorx's bundled SQLite breaks this process's POSIX locks on the file (lost WAL)."""
    create_customers(sqlite_db, table_name, customers_frame(5))
    with pytest.raises(ValueError, match="connectorx cannot read"):
        read_table(sqlite_db, table_name, None, id_column="customer_id", chunk_size=2, backend="connectorx")
    for _ in range(3):  # interleave writes and reads: every read sees the latest commit
        with sqlite_db.begin() as conn:
            conn.exec_driver_sql(
                f"DELETE FROM {table_name} WHERE customer_id = (SELECT MAX(customer_id) FROM {table_name})"
            )
        expected = count_rows(sqlite_db, table_name)
        assert len(read_table(sqlite_db, table_name, None, id_column="customer_id", chunk_size=2)) == expected


def test_where_after_reads_only_newer_rows(customers: tuple[sa.Engine, str, pd.DataFrame]) -> None:
    engine, table, frame = customers
    cutoff = frame["updated_at"].iloc[899]
    newer = read_table(
        engine,
        table,
        ["customer_id"],
        id_column="customer_id",
        chunk_size=50,
        where_after={"column": "updated_at", "value": cutoff},
    )
    assert newer["customer_id"].tolist() == frame["customer_id"].iloc[900:].tolist()
    by_id = read_table(
        engine,
        table,
        ["customer_id"],
        id_column="customer_id",
        chunk_size=50,
        where_after={"column": "customer_id", "value": np.int64(1000)},
        backend="sqlalchemy",
    )
    assert by_id["customer_id"].tolist() == list(range(1001, 1038))


def test_missing_columns_are_each_named(customers: tuple[sa.Engine, str, pd.DataFrame]) -> None:
    engine, table, _ = customers
    with pytest.raises(SourceError) as info:
        read_table(engine, table, ["age", "agee", "incme"], id_column="customer_id", chunk_size=10)
    message = str(info.value)
    assert "'agee'" in message and "'incme'" in message and table in message
    assert "available columns: ['customer_id', 'age'" in message
    with pytest.raises(SourceError, match="'cust_id'"):
        read_table(engine, table, ["age"], id_column="cust_id", chunk_size=10)
    with pytest.raises(SourceError, match="'changed_at'"):
        read_table(
            engine,
            table,
            ["age"],
            id_column="customer_id",
            chunk_size=10,
            where_after={"column": "changed_at", "value": 1},
        )


def test_unicode_string_ids(db: sa.Engine, table_name: str) -> None:
    ids = [f"kundé-{i:04d}-東京" for i in range(250)] + [
        "Ωmega",
        "ñandú",
        "Zürich 🙂",
        "a'quote",
        "back\\slash",
        "50%off",
        "100%%",
        "tab\there",
    ]
    metadata = sa.MetaData()
    tbl = sa.Table(
        table_name, metadata, sa.Column("customer_id", sa.String(64), primary_key=True), sa.Column("score", sa.Integer)
    )
    metadata.create_all(db)
    with db.begin() as conn:
        conn.execute(tbl.insert(), [{"customer_id": cid, "score": i} for i, cid in enumerate(ids)])
    backends: tuple[ReadBackend, ...] = (_fast_backend(db), "sqlalchemy")
    for backend in backends:
        out = read_table(
            db, table_name, ["customer_id", "score"], id_column="customer_id", chunk_size=7, backend=backend
        )
        assert sorted(out["customer_id"]) == sorted(ids), backend
        assert out["customer_id"].is_unique
        assert dict(zip(out["customer_id"], out["score"], strict=True)) == {cid: i for i, cid in enumerate(ids)}
    # string bounds are inlined for connectorx: quotes, backslashes and '%' must survive
    for bound in ("50%off", "a'quote", "back\\slash"):
        pages = [
            read_table(
                db,
                table_name,
                ["customer_id"],
                id_column="customer_id",
                chunk_size=7,
                backend=backend,
                where_after={"column": "customer_id", "value": bound},
            )["customer_id"].tolist()
            for backend in backends
        ]
        assert pages[0] == pages[1] and bound not in pages[0] and pages[0], bound


def test_undeclared_duplicate_and_null_ids_are_read_whole(
    db: sa.Engine, table_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Keyset paging would silently drop duplicates at page edges and NULL ids entirely: every
    row must still reach cleaning (which rejects them with a reason), so read in one page."""
    with db.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE {table_name} (customer_id INTEGER, age INTEGER)")
        conn.exec_driver_sql(
            f"INSERT INTO {table_name} VALUES (1, 20), (2, 30), (2, 31), (3, 40), (NULL, 50), (4, 60)"
        )
    with caplog.at_level("WARNING"):
        out = read_table(db, table_name, ["customer_id", "age"], id_column="customer_id", chunk_size=2)
    assert sorted(out["age"].tolist()) == [20, 30, 31, 40, 50, 60]
    assert "1 duplicate and 1 NULL" in caplog.text
    with db.begin() as conn:
        conn.exec_driver_sql(f"DELETE FROM {table_name} WHERE age IN (31, 50)")
    out = read_table(db, table_name, ["customer_id", "age"], id_column="customer_id", chunk_size=2)
    assert out["customer_id"].tolist() == [1, 2, 3, 4]


def test_categorical_text_columns_come_back_as_categoricals(db: sa.Engine, table_name: str) -> None:
    frame = customers_frame(900)
    frame.loc[[3, 500], "gender"] = None
    create_customers(db, table_name, frame)
    out = read_table(db, table_name, ["customer_id", "gender", "age"], id_column="customer_id", chunk_size=200,
                     categorical=["gender", "age", "not_read"])  # a number and an absent name are left alone
    assert isinstance(out["gender"].dtype, pd.CategoricalDtype)
    assert set(out["gender"].cat.categories) == {"Female", "Male", "Other"}
    assert out["gender"].astype(object).where(out["gender"].notna(), None).tolist() == frame["gender"].tolist()
    assert out["age"].tolist() == frame["age"].tolist() and not isinstance(out["age"].dtype, pd.CategoricalDtype)


def test_empty_table(db: sa.Engine, table_name: str) -> None:
    create_customers(db, table_name, customers_frame(0))
    calls: list[tuple[int, int]] = []
    out = read_table(
        db,
        table_name,
        ["customer_id", "age", "gender"],
        id_column="customer_id",
        chunk_size=10,
        progress=lambda d, t: calls.append((d, t)),
    )
    assert out.empty and list(out.columns) == ["customer_id", "age", "gender"]
    assert calls == [(0, 0)]


@pytest.mark.mysql
def test_connectorx_type_failure_falls_back(
    mysql_db: sa.Engine, table_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """connectorx 0.4 rejects DECIMAL values whose scale differs from the column's: real fallback."""
    with mysql_db.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE {table_name} (customer_id INT PRIMARY KEY, amount DECIMAL(30,10))")
        conn.exec_driver_sql(
            f"INSERT INTO {table_name} VALUES (1, 12345678901234567890.0123456789), (2, 1.5), (3, NULL)"
        )
    with pytest.raises(RuntimeError, match="connectorx failed"):
        read_table(mysql_db, table_name, None, id_column="customer_id", chunk_size=2, backend="connectorx")
    with caplog.at_level(logging.WARNING, logger=reads.__name__):
        out = read_table(mysql_db, table_name, None, id_column="customer_id", chunk_size=2)
    assert "falling back to SQLAlchemy" in caplog.text
    assert out["amount"].dtype == np.float64
    assert out["amount"].iloc[1] == 1.5 and np.isnan(out["amount"].iloc[2])
    assert out["amount"].iloc[0] == pytest.approx(12345678901234567890.0123456789)
