"""Engines, identifiers, masked URLs and reflection errors against real MariaDB and SQLite."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pandas as pd
import pytest
import sqlalchemy as sa

from segmentation_pipeline.config import ConfigError
from segmentation_pipeline.storage.connection import create_db_engine, masked_url, quote_identifier, table_columns
from segmentation_pipeline.storage.errors import SourceError
from segmentation_pipeline.storage.reads import read_table
from segmentation_pipeline_tests.storage.frames import create_customers, customers_frame


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
    create_customers(engine, table_name, customers_frame(30))
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
    create_customers(db, table_name, customers_frame(3))
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
