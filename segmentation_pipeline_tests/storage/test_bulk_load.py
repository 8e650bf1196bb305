"""write_table_atomic / load_frame: values, LOAD DATA and INSERT paths, against real MariaDB and SQLite."""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from segmentation_pipeline.config import ConfigError
from segmentation_pipeline.storage import bulk_load
from segmentation_pipeline.storage.bulk_load import load_frame, write_table_atomic
from segmentation_pipeline.storage.connection import create_db_engine, is_mysql, table_columns
from segmentation_pipeline.storage.errors import WriteError
from segmentation_pipeline.storage.history import copy_history
from segmentation_pipeline.storage.schema import plan_frame
from segmentation_pipeline_tests.storage.frames import NASTY, count_rows, read_all, segments, table_names


def test_values_round_trip(db: sa.Engine, table_name: str) -> None:
    n = len(NASTY)
    frame = pd.DataFrame(
        {
            "customer_id": [f"id-{i}-ü" for i in range(n)],
            "text": pd.Series(NASTY, dtype=object),
            "amount": [1.5, np.nan, -0.0, 1e20, 0.1 + 0.2, 5e-324, 123456789.123456] * 2,
            "count": pd.array([1, None, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14], dtype="Int64"),
            "seen_at": pd.to_datetime(["2024-03-01 12:34:56.789012", None] * 7),
            "flag": [True, False] * 7,
        }
    )
    methods: list[Literal["load_data", "executemany"]] = (
        ["load_data", "executemany"] if is_mysql(db) else ["executemany"]
    )
    for method in methods:
        write_table_atomic(db, table_name, frame, primary_key="customer_id", chunk_size=5, method=method)
        out = read_all(db, table_name).set_index("customer_id").loc[frame["customer_id"]].reset_index()
        assert out["text"].tolist() == NASTY, method
        np.testing.assert_array_equal(out["amount"].to_numpy(), frame["amount"].to_numpy())
        assert out["count"].isna().tolist() == frame["count"].isna().tolist()
        assert out["count"].dropna().astype(int).tolist() == frame["count"].dropna().astype(int).tolist()
        assert out["seen_at"].tolist() == frame["seen_at"].tolist()
        assert out["flag"].tolist() == [1, 0] * 7


@pytest.mark.mysql
def test_load_data_under_no_backslash_escapes(mysql_database_url: str, table_name: str) -> None:
    """LOAD DATA's field/escape characters are hex literals, so the session's sql_mode cannot bend them."""
    engine = create_db_engine(mysql_database_url)

    @sa.event.listens_for(engine, "connect")
    def _strict_quotes(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')")

    try:
        frame = pd.DataFrame({"customer_id": range(len(NASTY)), "text": pd.Series(NASTY, dtype=object)})
        write_table_atomic(engine, table_name, frame, primary_key="customer_id", method="load_data")
        assert read_all(engine, table_name)["text"].tolist() == NASTY
    finally:
        engine.dispose()


def test_tz_aware_timestamps_are_stored_as_utc(db: sa.Engine, table_name: str) -> None:
    frame = pd.DataFrame({"customer_id": [1], "at": pd.to_datetime(["2024-06-01 12:00:00+02:00"])})
    write_table_atomic(db, table_name, frame)
    assert read_all(db, table_name)["at"].iloc[0] == pd.Timestamp("2024-06-01 10:00:00")


def test_zero_and_negative_integer_keys(db: sa.Engine, table_name: str) -> None:
    """An AUTO_INCREMENT key would silently renumber id 0; keys are plain columns."""
    frame = pd.DataFrame({"customer_id": [0, -5, 7], "v": [1.0, 2.0, 3.0]})
    write_table_atomic(db, table_name, frame, primary_key="customer_id")
    assert read_all(db, table_name)["customer_id"].tolist() == [-5, 0, 7]


def test_empty_frame_creates_empty_table(db: sa.Engine, table_name: str) -> None:
    frame = segments(0)
    assert write_table_atomic(db, table_name, frame, primary_key="customer_id") == 0
    assert table_columns(db, table_name) == list(frame.columns)
    assert count_rows(db, table_name) == 0


@pytest.mark.mysql
def test_local_infile_refused_falls_back_to_inserts(
    mysql_database_url: str, table_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A client without LOCAL INFILE is refused by the server (MariaDB error 4166)."""
    engine = create_db_engine(mysql_database_url, local_infile=False)
    try:
        frame = segments(3000)
        frame["label"] = [NASTY[i % len(NASTY)] for i in range(len(frame))]
        with caplog.at_level(logging.WARNING, logger=bulk_load.__name__):
            write_table_atomic(engine, table_name, frame, primary_key="customer_id", chunk_size=1000)
        assert "LOAD DATA LOCAL refused" in caplog.text
        pd.testing.assert_frame_equal(read_all(engine, table_name), frame)
        with pytest.raises(WriteError, match="4166"):
            write_table_atomic(engine, table_name, frame, method="load_data")
        pd.testing.assert_frame_equal(read_all(engine, table_name), frame)  # old table intact
    finally:
        engine.dispose()


@pytest.mark.mysql
def test_bad_value_mid_load_keeps_old_table(mysql_db: sa.Engine, table_name: str) -> None:
    """The third chunk overflows SMALLINT: LOAD DATA warnings and strict INSERTs both fail."""
    old = segments(500)
    write_table_atomic(mysql_db, table_name, old, primary_key="customer_id")
    bad = segments(2500, version=2)
    bad.loc[2400, "segment"] = 10**6
    bad_methods: tuple[Literal["load_data", "executemany"], ...] = ("load_data", "executemany")
    for method in bad_methods:
        with pytest.raises(WriteError, match="Out of range value for column 'segment'"):
            write_table_atomic(
                mysql_db,
                table_name,
                bad,
                primary_key="customer_id",
                chunk_size=1000,
                column_types={"segment": sa.SmallInteger()},
                method=method,
            )
        pd.testing.assert_frame_equal(read_all(mysql_db, table_name), old)
        assert f"{table_name}__staging" not in table_names(mysql_db)


@pytest.mark.mysql
def test_case_insensitive_duplicate_keys_fail_verification(mysql_db: sa.Engine, table_name: str) -> None:
    """pandas sees 'A' and 'a' as distinct; a *_ci collation does not. Never drop rows silently."""
    write_table_atomic(mysql_db, table_name, pd.DataFrame({"code": ["x"], "n": [1]}), primary_key="code")
    with pytest.raises(WriteError, match="Duplicate"):
        write_table_atomic(mysql_db, table_name, pd.DataFrame({"code": ["A", "a"], "n": [1, 2]}), primary_key="code")
    assert read_all(mysql_db, table_name, "code")["code"].tolist() == ["x"]


def test_bad_names_raise_config_error_before_sql(db: sa.Engine, table_name: str) -> None:
    write_table_atomic(db, table_name, segments(3))
    for bad in ("customers; DROP TABLE x", "a`b", 'a"b', "x" * 65):
        with pytest.raises(ConfigError):
            write_table_atomic(db, bad, segments(3))
        with pytest.raises(ConfigError):
            write_table_atomic(db, table_name, segments(3).rename(columns={"segment": bad}))
        plan = plan_frame(segments(3), "customer_id")
        with pytest.raises(ConfigError):
            copy_history(db, bad, table_name, plan, ["segment"], run_key_column="run_id", run_key="r",
                                   id_column="customer_id", expected_rows=3)
        with pytest.raises(ConfigError):
            copy_history(db, table_name + "_h", table_name, plan, ["segment"], run_key_column=bad,
                                   run_key="r", id_column="customer_id", expected_rows=3)
    with pytest.raises(ConfigError, match="__staging"):  # 60 chars is fine, its staging name is not
        write_table_atomic(db, "x" * 60, segments(3))
    assert count_rows(db, table_name) == 3


def test_frame_problems_are_reported_up_front(db: sa.Engine, table_name: str) -> None:
    frame = segments(5)
    with pytest.raises(ValueError, match="duplicate values"):
        write_table_atomic(db, table_name, pd.concat([frame, frame]), primary_key="customer_id")
    with pytest.raises(ValueError, match="missing value"):
        write_table_atomic(db, table_name, frame.assign(customer_id=[1, 2, None, 4, 5]), primary_key="customer_id")
    with pytest.raises(ValueError, match="not a frame column"):
        write_table_atomic(db, table_name, frame, primary_key="cust")
    with pytest.raises(TypeError, match="'mixed'"):
        write_table_atomic(db, table_name, frame.assign(mixed=[1, "a", 2.5, None, b"x"]))
    assert table_name not in table_names(db)


def test_load_frame_replace_and_append(db: sa.Engine, table_name: str) -> None:
    full = segments(15)
    assert load_frame(db, table_name, full.iloc[:10], primary_key="customer_id") == 10
    more = full.iloc[10:]
    assert load_frame(db, table_name, more, if_exists="append") == 5
    pd.testing.assert_frame_equal(read_all(db, table_name), full)
    with pytest.raises(WriteError, match="(?i)duplicate|unique"):
        load_frame(db, table_name, pd.concat([full.iloc[14:], segments(20).iloc[15:]]), if_exists="append")
    # duplicate keys: all or nothing (the 5 new rows were rolled back with the duplicate)
    assert count_rows(db, table_name) == 15
    assert load_frame(db, table_name, segments(4), if_exists="replace", primary_key="customer_id") == 4
    assert count_rows(db, table_name) == 4
    fresh = f"{table_name}_new"
    assert load_frame(db, fresh, segments(6), if_exists="append", primary_key="customer_id") == 6
    assert count_rows(db, fresh) == 6
