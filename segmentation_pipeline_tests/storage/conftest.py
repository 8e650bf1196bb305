"""Storage fixtures: engines built the way the pipeline builds them, on both backends."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pandas as pd
import pytest
import sqlalchemy as sa

from segmentation_pipeline.storage.connection import create_db_engine
from segmentation_pipeline_tests.storage.frames import create_customers, customers_frame


@pytest.fixture()
def mysql_db(mysql_database_url: str) -> Iterator[sa.Engine]:
    engine = create_db_engine(mysql_database_url)
    yield engine
    engine.dispose()


@pytest.fixture()
def sqlite_db(sqlite_url: str) -> Iterator[sa.Engine]:
    engine = create_db_engine(sqlite_url)
    yield engine
    engine.dispose()


@pytest.fixture(params=[pytest.param("mysql", marks=pytest.mark.mysql), "sqlite"])
def db(request: pytest.FixtureRequest) -> sa.Engine:
    """Each test using ``db`` runs against the real MariaDB and a SQLite file."""
    engine: sa.Engine = request.getfixturevalue(f"{request.param}_db")
    return engine


@pytest.fixture()
def table_name() -> str:
    """The MySQL database is shared by the session: every test gets its own table."""
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture()
def customers(db: sa.Engine, table_name: str) -> Iterator[tuple[sa.Engine, str, pd.DataFrame]]:
    """A 1,037-row customer table with a declared primary key (several read chunks)."""
    frame = customers_frame(1037)
    create_customers(db, table_name, frame)
    yield db, table_name, frame
