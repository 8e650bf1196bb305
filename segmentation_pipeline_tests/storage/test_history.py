"""The run history: server-side copies and LOAD DATA mirrors, against real MariaDB and SQLite."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from segmentation_pipeline.storage import bulk_load
from segmentation_pipeline.storage.bulk_load import FrameLoader, write_table_atomic
from segmentation_pipeline.storage.connection import create_db_engine
from segmentation_pipeline.storage.errors import WriteError
from segmentation_pipeline.storage.history import HistoryCopy, copy_history
from segmentation_pipeline.storage.schema import plan_frame
from segmentation_pipeline.storage.swap import StagedTable, write_tables_atomic
from segmentation_pipeline_tests.storage.frames import read_all, segments


def test_copy_history_copies_on_the_server_idempotently_keyed_by_run_and_id(db: sa.Engine, table_name: str) -> None:
    source, history = f"{table_name}_src", f"{table_name}_hist"
    frame = segments(6)
    plan = plan_frame(frame, "customer_id")
    write_table_atomic(db, source, frame, primary_key="customer_id")
    columns = ["dagster_run_id", "customer_id", "segment", "label"]
    keys = {"run_key_column": "dagster_run_id", "id_column": "customer_id"}
    assert copy_history(db, history, source, plan, columns, run_key="run-a", expected_rows=6, **keys) == 6
    write_table_atomic(db, source, frame.iloc[:4].assign(segment=9), primary_key="customer_id")
    copy_history(db, history, source, plan, columns, run_key="run-b", expected_rows=4, **keys)
    copy_history(db, history, source, plan, columns, run_key="run-a", expected_rows=4, **keys)  # re-run
    with db.connect() as conn:
        rows = conn.exec_driver_sql(
            f"SELECT dagster_run_id, customer_id, segment FROM {history} ORDER BY dagster_run_id, customer_id"
        ).all()
    assert [tuple(r) for r in rows] == [(run, i, 9) for run in ("run-a", "run-b") for i in range(1, 5)]
    assert sa.inspect(db).get_pk_constraint(history)["constrained_columns"] == ["dagster_run_id", "customer_id"]
    # the server's count is checked: a wrong expectation rolls the whole copy back
    with pytest.raises(WriteError, match="got 4 rows for run 'run-c'.*expected 5; rolled back"):
        copy_history(db, history, source, plan, columns, run_key="run-c", expected_rows=5, **keys)
    with db.connect() as conn:
        assert conn.exec_driver_sql(f"SELECT COUNT(*) FROM {history} WHERE dagster_run_id = 'run-c'").scalar() == 0
    with pytest.raises(ValueError, match=r"history columns \['nope'\]"):
        copy_history(db, history, source, plan, ["nope"], run_key="run-d", expected_rows=4, **keys)
    with pytest.raises(ValueError, match="at most 64"):
        copy_history(db, history, source, plan, columns, run_key="r" * 65, expected_rows=4, **keys)


@pytest.mark.parametrize(
    "backend", [pytest.param("mysql", marks=pytest.mark.mysql), pytest.param("mysql-no-infile", marks=pytest.mark.mysql),
                "sqlite"]
)
def test_history_is_loaded_beside_its_table_or_copied_after_the_swap(
    backend: str, request: pytest.FixtureRequest, table_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MySQL: the history rides on the same LOAD DATA files (a second connection, in parallel);
    refused LOCAL INFILE or SQLite: copied on the server from the swapped-in table. Same rows."""
    if backend == "sqlite":
        engine = create_db_engine(request.getfixturevalue("sqlite_url"))
    else:
        engine = create_db_engine(request.getfixturevalue("mysql_database_url"), local_infile=backend == "mysql")
    loads: list[str] = []
    real = bulk_load._load_data_chunk

    def spy(conn: Any, raw: Any, table: str, *args: Any, **kwargs: Any) -> int:
        loaded = real(conn, raw, table, *args, **kwargs)
        loads.append(table)  # only loads the server accepted
        return loaded

    monkeypatch.setattr(bulk_load, "_load_data_chunk", spy)
    history = f"{table_name}_hist"
    columns = ["run", "customer_id", "segment", "label"]

    def publish(frame: pd.DataFrame, run: str) -> None:
        copy = HistoryCopy(history, table_name, columns, run_key_column="run", run_key=run, id_column="customer_id")
        loader = FrameLoader(frame, plan_frame(frame, "customer_id"), chunk_size=1000)
        write_tables_atomic(engine, [StagedTable(table_name, loader)], history=copy)

    try:
        first, second = segments(2500), segments(1700, version=2)
        publish(first, "run-a")
        publish(second, "run-b")
        publish(second, "run-a")  # a re-run of run-a replaces its rows
        with engine.connect() as conn:
            got = pd.read_sql(f"SELECT run, customer_id, segment, label FROM {history} ORDER BY run, customer_id", conn)
        want = pd.concat([second.assign(run="run-a"), second.assign(run="run-b")], ignore_index=True)
        pd.testing.assert_frame_equal(got, want[columns], check_dtype=False)
        pd.testing.assert_frame_equal(read_all(engine, table_name), second)
        assert loads.count(history) == (3 + 2 + 2 if backend == "mysql" else 0), loads  # one per chunk file
    finally:
        engine.dispose()
