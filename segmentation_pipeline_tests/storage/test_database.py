"""read_table / table_columns / high_water_mark / identifiers against real MariaDB and SQLite."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from segmentation_pipeline.config import ConfigError
from segmentation_pipeline.storage import database
from segmentation_pipeline.storage.database import (
    ReadBackend,
    SourceError,
    create_db_engine,
    high_water_mark,
    masked_url,
    quote_identifier,
    read_table,
    table_columns,
)


def _customers(n: int, *, start: int = 1) -> pd.DataFrame:
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


def _create_customers(engine: sa.Engine, table: str, frame: pd.DataFrame) -> None:
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


@pytest.fixture()
def customers(db: sa.Engine, table_name: str) -> Iterator[tuple[sa.Engine, str, pd.DataFrame]]:
    frame = _customers(1037)
    _create_customers(db, table_name, frame)
    yield db, table_name, frame


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
    """connectorx on MySQL; SQLite is read by sqlite3 only (see database._connectorx_uri)."""
    return "connectorx" if engine.dialect.name in ("mysql", "mariadb") else "auto"


def test_connectorx_and_sqlalchemy_paths_agree(customers: tuple[sa.Engine, str, pd.DataFrame]) -> None:
    engine, table, _ = customers
    fast = read_table(engine, table, None, id_column="customer_id", chunk_size=250, backend=_fast_backend(engine))
    slow = read_table(engine, table, None, id_column="customer_id", chunk_size=250, backend="sqlalchemy")
    pd.testing.assert_frame_equal(fast, slow)


def test_sqlite_is_never_read_through_connectorx(sqlite_db: sa.Engine, table_name: str) -> None:
    """connectorx's bundled SQLite breaks this process's POSIX locks on the file (lost WAL)."""
    _create_customers(sqlite_db, table_name, _customers(5))
    with pytest.raises(ValueError, match="connectorx cannot read"):
        read_table(sqlite_db, table_name, None, id_column="customer_id", chunk_size=2, backend="connectorx")
    for _ in range(3):  # interleave writes and reads: every read sees the latest commit
        with sqlite_db.begin() as conn:
            conn.exec_driver_sql(
                f"DELETE FROM {table_name} WHERE customer_id = (SELECT MAX(customer_id) FROM {table_name})"
            )
        expected = _count_rows(sqlite_db, table_name)
        assert len(read_table(sqlite_db, table_name, None, id_column="customer_id", chunk_size=2)) == expected


def _count_rows(engine: sa.Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.exec_driver_sql(f"SELECT COUNT(*) FROM {table}").scalar_one())


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


def test_high_water_mark_cursor_round_trip(customers: tuple[sa.Engine, str, pd.DataFrame]) -> None:
    """The sensor keeps the mark as JSON strings; reading past it must return only new rows."""
    engine, table, _ = customers
    mark = {
        k: v if v is None or isinstance(v, int | float) else str(v)
        for k, v in high_water_mark(engine, table, "customer_id", "updated_at").items()
    }
    newer = _customers(5, start=1038)
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


def test_missing_table_names_it_and_lists_tables(customers: tuple[sa.Engine, str, pd.DataFrame]) -> None:
    engine, table, _ = customers
    with pytest.raises(SourceError) as info:
        read_table(engine, "customerz", ["age"], id_column="customer_id", chunk_size=10)
    message = str(info.value)
    assert "table 'customerz' not found" in message
    assert table in message
    assert masked_url(engine) in message
    with pytest.raises(SourceError, match="customerz"):
        table_columns(engine, "customerz")


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
    frame = _customers(900)
    frame.loc[[3, 500], "gender"] = None
    _create_customers(db, table_name, frame)
    out = read_table(db, table_name, ["customer_id", "gender", "age"], id_column="customer_id", chunk_size=200,
                     categorical=["gender", "age", "not_read"])  # a number and an absent name are left alone
    assert isinstance(out["gender"].dtype, pd.CategoricalDtype)
    assert set(out["gender"].cat.categories) == {"Female", "Male", "Other"}
    assert out["gender"].astype(object).where(out["gender"].notna(), None).tolist() == frame["gender"].tolist()
    assert out["age"].tolist() == frame["age"].tolist() and not isinstance(out["age"].dtype, pd.CategoricalDtype)


def test_empty_table(db: sa.Engine, table_name: str) -> None:
    _create_customers(db, table_name, _customers(0))
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
    with caplog.at_level(logging.WARNING, logger=database.__name__):
        out = read_table(mysql_db, table_name, None, id_column="customer_id", chunk_size=2)
    assert "falling back to SQLAlchemy" in caplog.text
    assert out["amount"].dtype == np.float64
    assert out["amount"].iloc[1] == 1.5 and np.isnan(out["amount"].iloc[2])
    assert out["amount"].iloc[0] == pytest.approx(12345678901234567890.0123456789)


@pytest.fixture()
def password_engine(mysql_database_url: str) -> Iterator[tuple[sa.Engine, str]]:
    """A real account whose password needs URL-escaping (and must never be printed)."""
    user = f"segstore_{uuid.uuid4().hex[:8]}"
    password = "p@ss:w/rd%#?" + uuid.uuid4().hex[:6]
    url = sa.engine.make_url(mysql_database_url)
    admin = create_db_engine(url)
    engine = create_db_engine(url.set(username=user, password=password))
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f"CREATE USER '{user}'@'%' IDENTIFIED BY :pw"), {"pw": password})
            conn.execute(sa.text(f"GRANT ALL ON `{url.database}`.* TO '{user}'@'%'"))
        yield engine, password
    finally:  # the server-wide account must never outlive the test, even if GRANT failed
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP USER IF EXISTS '{user}'@'%'"))
        admin.dispose()


@pytest.mark.mysql
def test_password_never_leaks_and_is_url_escaped(
    password_engine: tuple[sa.Engine, str], table_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine, password = password_engine
    _create_customers(engine, table_name, _customers(30))
    with caplog.at_level(logging.DEBUG):
        out = read_table(
            engine, table_name, ["customer_id", "age"], id_column="customer_id", chunk_size=7, backend="connectorx"
        )
        assert len(out) == 30
        with pytest.raises(SourceError) as info:
            read_table(engine, "nope", ["age"], id_column="customer_id", chunk_size=7)
    assert password not in str(info.value) and "***" in str(info.value)
    assert password not in caplog.text
    assert password not in masked_url(engine)


def test_identifiers_are_validated_before_sql(db: sa.Engine, table_name: str) -> None:
    _create_customers(db, table_name, _customers(3))
    for bad in ("customers; DROP TABLE x", "a`b", 'a"b', "a b", "", "1abc", "x" * 65):
        with pytest.raises(ConfigError):
            read_table(db, bad, ["age"], id_column="customer_id", chunk_size=10)
        with pytest.raises(ConfigError):
            read_table(db, table_name, [bad], id_column="customer_id", chunk_size=10)
        with pytest.raises(ConfigError):
            table_columns(db, bad)
        with pytest.raises(ConfigError):
            quote_identifier(db, bad)
    assert table_columns(db, table_name)[0] == "customer_id"  # nothing was dropped


def test_quote_identifier_quotes_reserved_words(db: sa.Engine, table_name: str) -> None:
    quote = "`" if db.dialect.name in ("mysql", "mariadb") else '"'
    assert quote_identifier(db, "select") == f"{quote}select{quote}"
    assert quote_identifier(db, "order") == f"{quote}order{quote}"
    assert quote_identifier(db, "customers") == "customers"  # plain names stay readable
    with db.begin() as conn:
        conn.exec_driver_sql(
            f"CREATE TABLE {quote_identifier(db, 'select')} ({quote_identifier(db, 'order')} INTEGER PRIMARY KEY, "
            f"{quote_identifier(db, 'group')} INTEGER)"
        )
        conn.exec_driver_sql(f"INSERT INTO {quote_identifier(db, 'select')} VALUES (1, 10), (2, 20), (3, 30)")
    try:
        out = read_table(db, "select", ["order", "group"], id_column="order", chunk_size=2)
        assert out.to_dict("list") == {"order": [1, 2, 3], "group": [10, 20, 30]}
    finally:
        with db.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE {quote_identifier(db, 'select')}")


def test_create_db_engine_sqlite_creates_parent_dir_and_uses_wal(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "nested" / "dir" / "customers.db"  # type: ignore[operator]
    engine = create_db_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert path.exists()
    finally:
        engine.dispose()


def test_masked_url_hides_password() -> None:
    assert masked_url("mysql+pymysql://u:s3cret@h:3306/db") == "mysql+pymysql://u:***@h:3306/db"
