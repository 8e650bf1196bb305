"""The atomic swap: readers see the old or the new table, failures leave the old one, against real MariaDB and SQLite."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from segmentation_pipeline.storage import bulk_load, swap
from segmentation_pipeline.storage.bulk_load import write_table_atomic
from segmentation_pipeline.storage.errors import SourceError, WriteError
from segmentation_pipeline.storage.reads import read_table
from segmentation_pipeline_tests.storage.frames import count_rows, read_all, segments, table_names


def test_write_then_replace(db: sa.Engine, table_name: str) -> None:
    progress: list[tuple[int, int]] = []
    assert (
        write_table_atomic(
            db,
            table_name,
            segments(2500),
            primary_key="customer_id",
            chunk_size=1000,
            progress=lambda d, t: progress.append((d, t)),
        )
        == 2500
    )
    assert progress == [(1000, 2500), (2000, 2500), (2500, 2500)]
    assert count_rows(db, table_name) == 2500
    assert sa.inspect(db).get_pk_constraint(table_name)["constrained_columns"] == ["customer_id"]
    assert write_table_atomic(db, table_name, segments(1200, version=2), primary_key="customer_id") == 1200
    out = read_all(db, table_name)
    pd.testing.assert_frame_equal(out, segments(1200, version=2))
    assert table_names(db) & {f"{table_name}__staging", f"{table_name}__old"} == set()


def test_injected_failure_mid_load_keeps_old_table(
    db: sa.Engine, table_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = segments(300)
    write_table_atomic(db, table_name, old, primary_key="customer_id")
    real = bulk_load._chunk_arrays
    calls = {"n": 0}

    def failing(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(bulk_load, "_chunk_arrays", failing)
    with pytest.raises(OSError, match="injected"):
        write_table_atomic(db, table_name, segments(5000, version=2), primary_key="customer_id", chunk_size=1000)
    monkeypatch.undo()
    pd.testing.assert_frame_equal(read_all(db, table_name), old)
    assert f"{table_name}__staging" not in table_names(db)
    write_table_atomic(db, table_name, segments(700, version=3), primary_key="customer_id")
    assert count_rows(db, table_name) == 700


def test_failed_swap_keeps_old_table_and_next_run_succeeds(
    db: sa.Engine, table_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = segments(200)
    write_table_atomic(db, table_name, old, primary_key="customer_id")

    def broken_swap(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("swap exploded (injected)")

    monkeypatch.setattr(swap, "swap_tables", broken_swap)
    with pytest.raises(RuntimeError, match="injected"):
        write_table_atomic(db, table_name, segments(400, version=2), primary_key="customer_id")
    monkeypatch.undo()
    pd.testing.assert_frame_equal(read_all(db, table_name), old)
    # a crashed run can leave staging behind (kill -9); the next write must not trip over it
    with db.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE {table_name}__staging (junk INTEGER)")
    write_table_atomic(db, table_name, segments(400, version=2), primary_key="customer_id")
    pd.testing.assert_frame_equal(read_all(db, table_name), segments(400, version=2))


def test_row_count_is_verified_before_swap(db: sa.Engine, table_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    old = segments(100)
    write_table_atomic(db, table_name, old, primary_key="customer_id")
    real = bulk_load._insert_frame

    def lossy(conn: sa.Connection, table: str, frame: pd.DataFrame, plan: Any, **kwargs: Any) -> int:
        return real(conn, table, frame.iloc[:-1], plan, **kwargs)  # "loses" the last row

    monkeypatch.setattr(bulk_load, "_insert_frame", lossy)
    with pytest.raises(WriteError, match="holds 149 rows but the frame has 150"):
        write_table_atomic(db, table_name, segments(150, version=2), primary_key="customer_id")
    pd.testing.assert_frame_equal(read_all(db, table_name), old)
    assert f"{table_name}__staging" not in table_names(db)


def _concurrent_reader(
    engine: sa.Engine,
    table: str,
    stop: threading.Event,
    writing: threading.Event,
    seen: list[Any],
    errors: list[BaseException],
) -> None:
    try:
        while not stop.is_set():
            during = writing.is_set()
            with engine.connect() as conn:
                seen.append(("count", int(conn.exec_driver_sql(f"SELECT COUNT(*) FROM {table}").scalar_one()), during))
            during = writing.is_set()
            frame = read_table(engine, table, ["customer_id", "version"], id_column="customer_id", chunk_size=40_000)
            state = (len(frame), tuple(int(v) for v in sorted(frame["version"].unique())))
            seen.append(("frame", state, during))
    except BaseException as exc:  # noqa: BLE001 - reported by the main thread
        errors.append(exc)


def _wait_for(seen: list[Any], state: tuple[int, tuple[int, ...]], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not any(item[:2] == ("frame", state) for item in list(seen)):
        assert time.monotonic() < deadline, f"reader never saw {state}"
        time.sleep(0.05)


def test_concurrent_reader_sees_old_or_new_never_partial(db: sa.Engine, table_name: str) -> None:
    """A reader loops (COUNT and chunked read_table) while 200k- and 100k-row replacements run."""
    write_table_atomic(db, table_name, segments(100_000, version=1), primary_key="customer_id")
    stop, writing = threading.Event(), threading.Event()
    seen: list[Any] = []
    errors: list[BaseException] = []
    reader = threading.Thread(target=_concurrent_reader, args=(db, table_name, stop, writing, seen, errors))
    reader.start()
    try:
        _wait_for(seen, (100_000, (1,)))
        for version, rows in ((2, 200_000), (3, 100_000)):
            writing.set()
            write_table_atomic(
                db,
                table_name,
                segments(rows, version=version),
                primary_key="customer_id",
                chunk_size=25_000,
                lock_name=table_name,
            )
            writing.clear()
            _wait_for(seen, (rows, (version,)))
    finally:
        stop.set()
        reader.join(timeout=120)
    assert not errors, errors
    counts = {item[1] for item in seen if item[0] == "count"}
    frames = {item[1] for item in seen if item[0] == "frame"}
    assert counts <= {100_000, 200_000}, counts
    assert frames <= {(100_000, (1,)), (200_000, (2,)), (100_000, (3,))}, frames
    assert any(item[2] for item in seen), "no read overlapped a write"


def test_swap_between_read_chunks_restarts_the_read(db: sa.Engine, table_name: str) -> None:
    """Deterministic version of the race: the table is replaced right after the first page."""
    write_table_atomic(db, table_name, segments(1000, version=1), primary_key="customer_id")
    swapped: list[int] = []

    def swap_once(done: int, total: int) -> None:
        if not swapped:
            swapped.append(done)
            write_table_atomic(db, table_name, segments(1500, version=2), primary_key="customer_id")

    out = read_table(db, table_name, None, id_column="customer_id", chunk_size=300, progress=swap_once)
    assert swapped == [300]
    pd.testing.assert_frame_equal(out, segments(1500, version=2))

    def swap_always(done: int, total: int) -> None:
        write_table_atomic(db, table_name, segments(1000, version=done), primary_key="customer_id")

    with pytest.raises(SourceError, match="kept being replaced"):
        read_table(db, table_name, None, id_column="customer_id", chunk_size=300, progress=swap_always)


@pytest.fixture()
def plain_sqlite_engine(sqlite_url: str) -> Iterator[sa.Engine]:
    """An engine built without create_db_engine: pysqlite would autocommit DDL by default."""
    engine = sa.create_engine(sqlite_url)
    yield engine
    engine.dispose()


def test_plain_sqlite_engine_still_swaps_atomically(
    plain_sqlite_engine: sa.Engine, table_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_table_atomic(plain_sqlite_engine, table_name, segments(50), primary_key="customer_id")

    original = sa.Connection.exec_driver_sql

    def fail_on_rename(self: sa.Connection, statement: str, *args: Any, **kwargs: Any) -> Any:
        if statement.startswith("ALTER TABLE") and "RENAME" in statement:
            raise RuntimeError("rename failed (injected)")
        return original(self, statement, *args, **kwargs)

    monkeypatch.setattr(sa.Connection, "exec_driver_sql", fail_on_rename)
    with pytest.raises(RuntimeError, match="injected"):
        write_table_atomic(plain_sqlite_engine, table_name, segments(80, version=2), primary_key="customer_id")
    monkeypatch.undo()
    # DROP TABLE ran before the failing RENAME: it must have been rolled back with it
    pd.testing.assert_frame_equal(read_all(plain_sqlite_engine, table_name), segments(50))
