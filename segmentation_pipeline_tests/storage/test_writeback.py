"""write_table_atomic / write_lock / copy_history / load_frame against real MariaDB and SQLite."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from segmentation_pipeline.config import ConfigError
from segmentation_pipeline.storage import writeback
from segmentation_pipeline.storage.database import (
    SourceError,
    WriteLockTimeout,
    create_db_engine,
    is_mysql,
    read_table,
    table_columns,
    write_lock,
)
from segmentation_pipeline.storage.writeback import WriteError, load_frame, write_table_atomic

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


def _segments(n: int, version: int = 1) -> pd.DataFrame:
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


def _count(engine: sa.Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.exec_driver_sql(f"SELECT COUNT(*) FROM {table}").scalar_one())


def _tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def _read(engine: sa.Engine, table: str, id_column: str = "customer_id") -> pd.DataFrame:
    return read_table(engine, table, None, id_column=id_column, chunk_size=10_000)


# --------------------------------------------------------------------------- write_table_atomic


def test_write_then_replace(db: sa.Engine, table_name: str) -> None:
    progress: list[tuple[int, int]] = []
    assert (
        write_table_atomic(
            db,
            table_name,
            _segments(2500),
            primary_key="customer_id",
            chunk_size=1000,
            progress=lambda d, t: progress.append((d, t)),
        )
        == 2500
    )
    assert progress == [(1000, 2500), (2000, 2500), (2500, 2500)]
    assert _count(db, table_name) == 2500
    assert sa.inspect(db).get_pk_constraint(table_name)["constrained_columns"] == ["customer_id"]
    assert write_table_atomic(db, table_name, _segments(1200, version=2), primary_key="customer_id") == 1200
    out = _read(db, table_name)
    pd.testing.assert_frame_equal(out, _segments(1200, version=2))
    assert _tables(db) & {f"{table_name}__staging", f"{table_name}__old"} == set()


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
        out = _read(db, table_name).set_index("customer_id").loc[frame["customer_id"]].reset_index()
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
        assert _read(engine, table_name)["text"].tolist() == NASTY
    finally:
        engine.dispose()


def test_tz_aware_timestamps_are_stored_as_utc(db: sa.Engine, table_name: str) -> None:
    frame = pd.DataFrame({"customer_id": [1], "at": pd.to_datetime(["2024-06-01 12:00:00+02:00"])})
    write_table_atomic(db, table_name, frame)
    assert _read(db, table_name)["at"].iloc[0] == pd.Timestamp("2024-06-01 10:00:00")


def test_zero_and_negative_integer_keys(db: sa.Engine, table_name: str) -> None:
    """An AUTO_INCREMENT key would silently renumber id 0; keys are plain columns."""
    frame = pd.DataFrame({"customer_id": [0, -5, 7], "v": [1.0, 2.0, 3.0]})
    write_table_atomic(db, table_name, frame, primary_key="customer_id")
    assert _read(db, table_name)["customer_id"].tolist() == [-5, 0, 7]


def test_empty_frame_creates_empty_table(db: sa.Engine, table_name: str) -> None:
    frame = _segments(0)
    assert write_table_atomic(db, table_name, frame, primary_key="customer_id") == 0
    assert table_columns(db, table_name) == list(frame.columns)
    assert _count(db, table_name) == 0


@pytest.mark.mysql
def test_local_infile_refused_falls_back_to_inserts(
    mysql_database_url: str, table_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A client without LOCAL INFILE is refused by the server (MariaDB error 4166)."""
    engine = create_db_engine(mysql_database_url, local_infile=False)
    try:
        frame = _segments(3000)
        frame["label"] = [NASTY[i % len(NASTY)] for i in range(len(frame))]
        with caplog.at_level(logging.WARNING, logger=writeback.__name__):
            write_table_atomic(engine, table_name, frame, primary_key="customer_id", chunk_size=1000)
        assert "LOAD DATA LOCAL refused" in caplog.text
        pd.testing.assert_frame_equal(_read(engine, table_name), frame)
        with pytest.raises(WriteError, match="4166"):
            write_table_atomic(engine, table_name, frame, method="load_data")
        pd.testing.assert_frame_equal(_read(engine, table_name), frame)  # old table intact
    finally:
        engine.dispose()


@pytest.mark.mysql
def test_bad_value_mid_load_keeps_old_table(mysql_db: sa.Engine, table_name: str) -> None:
    """The third chunk overflows SMALLINT: LOAD DATA warnings and strict INSERTs both fail."""
    old = _segments(500)
    write_table_atomic(mysql_db, table_name, old, primary_key="customer_id")
    bad = _segments(2500, version=2)
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
        pd.testing.assert_frame_equal(_read(mysql_db, table_name), old)
        assert f"{table_name}__staging" not in _tables(mysql_db)


@pytest.mark.mysql
def test_case_insensitive_duplicate_keys_fail_verification(mysql_db: sa.Engine, table_name: str) -> None:
    """pandas sees 'A' and 'a' as distinct; a *_ci collation does not. Never drop rows silently."""
    write_table_atomic(mysql_db, table_name, pd.DataFrame({"code": ["x"], "n": [1]}), primary_key="code")
    with pytest.raises(WriteError, match="Duplicate"):
        write_table_atomic(mysql_db, table_name, pd.DataFrame({"code": ["A", "a"], "n": [1, 2]}), primary_key="code")
    assert _read(mysql_db, table_name, "code")["code"].tolist() == ["x"]


def test_injected_failure_mid_load_keeps_old_table(
    db: sa.Engine, table_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = _segments(300)
    write_table_atomic(db, table_name, old, primary_key="customer_id")
    real = writeback._chunk_arrays
    calls = {"n": 0}

    def failing(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(writeback, "_chunk_arrays", failing)
    with pytest.raises(OSError, match="injected"):
        write_table_atomic(db, table_name, _segments(5000, version=2), primary_key="customer_id", chunk_size=1000)
    monkeypatch.undo()
    pd.testing.assert_frame_equal(_read(db, table_name), old)
    assert f"{table_name}__staging" not in _tables(db)
    write_table_atomic(db, table_name, _segments(700, version=3), primary_key="customer_id")
    assert _count(db, table_name) == 700


def test_failed_swap_keeps_old_table_and_next_run_succeeds(
    db: sa.Engine, table_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = _segments(200)
    write_table_atomic(db, table_name, old, primary_key="customer_id")

    def broken_swap(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("swap exploded (injected)")

    monkeypatch.setattr(writeback, "_swap", broken_swap)
    with pytest.raises(RuntimeError, match="injected"):
        write_table_atomic(db, table_name, _segments(400, version=2), primary_key="customer_id")
    monkeypatch.undo()
    pd.testing.assert_frame_equal(_read(db, table_name), old)
    # a crashed run can leave staging behind (kill -9); the next write must not trip over it
    with db.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE {table_name}__staging (junk INTEGER)")
    write_table_atomic(db, table_name, _segments(400, version=2), primary_key="customer_id")
    pd.testing.assert_frame_equal(_read(db, table_name), _segments(400, version=2))


def test_row_count_is_verified_before_swap(db: sa.Engine, table_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    old = _segments(100)
    write_table_atomic(db, table_name, old, primary_key="customer_id")
    real = writeback._insert_frame

    def lossy(conn: sa.Connection, table: str, frame: pd.DataFrame, plan: Any, **kwargs: Any) -> int:
        return real(conn, table, frame.iloc[:-1], plan, **kwargs)  # "loses" the last row

    monkeypatch.setattr(writeback, "_insert_frame", lossy)
    with pytest.raises(WriteError, match="holds 149 rows but the frame has 150"):
        write_table_atomic(db, table_name, _segments(150, version=2), primary_key="customer_id")
    pd.testing.assert_frame_equal(_read(db, table_name), old)
    assert f"{table_name}__staging" not in _tables(db)


def test_bad_names_raise_config_error_before_sql(db: sa.Engine, table_name: str) -> None:
    write_table_atomic(db, table_name, _segments(3))
    for bad in ("customers; DROP TABLE x", "a`b", 'a"b', "x" * 65):
        with pytest.raises(ConfigError):
            write_table_atomic(db, bad, _segments(3))
        with pytest.raises(ConfigError):
            write_table_atomic(db, table_name, _segments(3).rename(columns={"segment": bad}))
        plan = writeback.plan_frame(_segments(3), "customer_id")
        with pytest.raises(ConfigError):
            writeback.copy_history(db, bad, table_name, plan, ["segment"], run_key_column="run_id", run_key="r",
                                   id_column="customer_id", expected_rows=3)
        with pytest.raises(ConfigError):
            writeback.copy_history(db, table_name + "_h", table_name, plan, ["segment"], run_key_column=bad,
                                   run_key="r", id_column="customer_id", expected_rows=3)
    with pytest.raises(ConfigError, match="__staging"):  # 60 chars is fine, its staging name is not
        write_table_atomic(db, "x" * 60, _segments(3))
    assert _count(db, table_name) == 3


def test_frame_problems_are_reported_up_front(db: sa.Engine, table_name: str) -> None:
    frame = _segments(5)
    with pytest.raises(ValueError, match="duplicate values"):
        write_table_atomic(db, table_name, pd.concat([frame, frame]), primary_key="customer_id")
    with pytest.raises(ValueError, match="missing value"):
        write_table_atomic(db, table_name, frame.assign(customer_id=[1, 2, None, 4, 5]), primary_key="customer_id")
    with pytest.raises(ValueError, match="not a frame column"):
        write_table_atomic(db, table_name, frame, primary_key="cust")
    with pytest.raises(TypeError, match="'mixed'"):
        write_table_atomic(db, table_name, frame.assign(mixed=[1, "a", 2.5, None, b"x"]))
    assert table_name not in _tables(db)


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
    write_table_atomic(db, table_name, _segments(100_000, version=1), primary_key="customer_id")
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
                _segments(rows, version=version),
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
    write_table_atomic(db, table_name, _segments(1000, version=1), primary_key="customer_id")
    swapped: list[int] = []

    def swap_once(done: int, total: int) -> None:
        if not swapped:
            swapped.append(done)
            write_table_atomic(db, table_name, _segments(1500, version=2), primary_key="customer_id")

    out = read_table(db, table_name, None, id_column="customer_id", chunk_size=300, progress=swap_once)
    assert swapped == [300]
    pd.testing.assert_frame_equal(out, _segments(1500, version=2))

    def swap_always(done: int, total: int) -> None:
        write_table_atomic(db, table_name, _segments(1000, version=done), primary_key="customer_id")

    with pytest.raises(SourceError, match="kept being replaced"):
        read_table(db, table_name, None, id_column="customer_id", chunk_size=300, progress=swap_always)


# --------------------------------------------------------------------------- write_lock


def test_second_lock_holder_times_out(db: sa.Engine, table_name: str) -> None:
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with write_lock(db, table_name, timeout_s=5):
            held.set()
            release.wait(30)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(10)
        started = time.monotonic()
        with pytest.raises(WriteLockTimeout) as info, write_lock(db, table_name, timeout_s=1):
            pass
        assert time.monotonic() - started >= 0.9
        assert repr(table_name) in str(info.value) and "1s" in str(info.value)
        with pytest.raises(WriteLockTimeout):
            write_table_atomic(db, "locked_out", _segments(3), lock_name=table_name, lock_timeout_s=0)
        assert "locked_out" not in _tables(db)
        with write_lock(db, "another_name", timeout_s=1):
            pass  # other names are independent
    finally:
        release.set()
        thread.join(10)
    with write_lock(db, table_name, timeout_s=1):
        pass


# --------------------------------------------------------------------------- history / load_frame


def test_copy_history_copies_on_the_server_idempotently_keyed_by_run_and_id(db: sa.Engine, table_name: str) -> None:
    source, history = f"{table_name}_src", f"{table_name}_hist"
    frame = _segments(6)
    plan = writeback.plan_frame(frame, "customer_id")
    write_table_atomic(db, source, frame, primary_key="customer_id")
    columns = ["dagster_run_id", "customer_id", "segment", "label"]
    keys = {"run_key_column": "dagster_run_id", "id_column": "customer_id"}
    assert writeback.copy_history(db, history, source, plan, columns, run_key="run-a", expected_rows=6, **keys) == 6
    write_table_atomic(db, source, frame.iloc[:4].assign(segment=9), primary_key="customer_id")
    writeback.copy_history(db, history, source, plan, columns, run_key="run-b", expected_rows=4, **keys)
    writeback.copy_history(db, history, source, plan, columns, run_key="run-a", expected_rows=4, **keys)  # re-run
    with db.connect() as conn:
        rows = conn.exec_driver_sql(
            f"SELECT dagster_run_id, customer_id, segment FROM {history} ORDER BY dagster_run_id, customer_id"
        ).all()
    assert [tuple(r) for r in rows] == [(run, i, 9) for run in ("run-a", "run-b") for i in range(1, 5)]
    assert sa.inspect(db).get_pk_constraint(history)["constrained_columns"] == ["dagster_run_id", "customer_id"]
    # the server's count is checked: a wrong expectation rolls the whole copy back
    with pytest.raises(WriteError, match="got 4 rows for run 'run-c'.*expected 5; rolled back"):
        writeback.copy_history(db, history, source, plan, columns, run_key="run-c", expected_rows=5, **keys)
    with db.connect() as conn:
        assert conn.exec_driver_sql(f"SELECT COUNT(*) FROM {history} WHERE dagster_run_id = 'run-c'").scalar() == 0
    with pytest.raises(ValueError, match=r"history columns \['nope'\]"):
        writeback.copy_history(db, history, source, plan, ["nope"], run_key="run-d", expected_rows=4, **keys)
    with pytest.raises(ValueError, match="at most 64"):
        writeback.copy_history(db, history, source, plan, columns, run_key="r" * 65, expected_rows=4, **keys)


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
    real = writeback._load_data_chunk

    def spy(conn: Any, raw: Any, table: str, *args: Any, **kwargs: Any) -> int:
        loaded = real(conn, raw, table, *args, **kwargs)
        loads.append(table)  # only loads the server accepted
        return loaded

    monkeypatch.setattr(writeback, "_load_data_chunk", spy)
    history = f"{table_name}_hist"
    columns = ["run", "customer_id", "segment", "label"]

    def publish(frame: pd.DataFrame, run: str) -> None:
        copy = writeback.HistoryCopy(history, table_name, columns, run_key_column="run", run_key=run,
                                     id_column="customer_id")
        writeback.write_tables_atomic(engine, [(table_name, frame, "customer_id")], chunk_size=1000, history=copy)

    try:
        first, second = _segments(2500), _segments(1700, version=2)
        publish(first, "run-a")
        publish(second, "run-b")
        publish(second, "run-a")  # a re-run of run-a replaces its rows
        with engine.connect() as conn:
            got = pd.read_sql(f"SELECT run, customer_id, segment, label FROM {history} ORDER BY run, customer_id", conn)
        want = pd.concat([second.assign(run="run-a"), second.assign(run="run-b")], ignore_index=True)
        pd.testing.assert_frame_equal(got, want[columns], check_dtype=False)
        pd.testing.assert_frame_equal(_read(engine, table_name), second)
        assert loads.count(history) == (3 + 2 + 2 if backend == "mysql" else 0), loads  # one per chunk file
    finally:
        engine.dispose()


def test_load_frame_replace_and_append(db: sa.Engine, table_name: str) -> None:
    full = _segments(15)
    assert load_frame(db, table_name, full.iloc[:10], primary_key="customer_id") == 10
    more = full.iloc[10:]
    assert load_frame(db, table_name, more, if_exists="append") == 5
    pd.testing.assert_frame_equal(_read(db, table_name), full)
    with pytest.raises(WriteError, match="(?i)duplicate|unique"):
        load_frame(db, table_name, pd.concat([full.iloc[14:], _segments(20).iloc[15:]]), if_exists="append")
    # duplicate keys: all or nothing (the 5 new rows were rolled back with the duplicate)
    assert _count(db, table_name) == 15
    assert load_frame(db, table_name, _segments(4), if_exists="replace", primary_key="customer_id") == 4
    assert _count(db, table_name) == 4
    fresh = f"{table_name}_new"
    assert load_frame(db, fresh, _segments(6), if_exists="append", primary_key="customer_id") == 6
    assert _count(db, fresh) == 6


@pytest.fixture()
def plain_sqlite_engine(sqlite_url: str) -> Iterator[sa.Engine]:
    """An engine built without create_db_engine: pysqlite would autocommit DDL by default."""
    engine = sa.create_engine(sqlite_url)
    yield engine
    engine.dispose()


def test_plain_sqlite_engine_still_swaps_atomically(
    plain_sqlite_engine: sa.Engine, table_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_table_atomic(plain_sqlite_engine, table_name, _segments(50), primary_key="customer_id")

    original = sa.Connection.exec_driver_sql

    def fail_on_rename(self: sa.Connection, statement: str, *args: Any, **kwargs: Any) -> Any:
        if statement.startswith("ALTER TABLE") and "RENAME" in statement:
            raise RuntimeError("rename failed (injected)")
        return original(self, statement, *args, **kwargs)

    monkeypatch.setattr(sa.Connection, "exec_driver_sql", fail_on_rename)
    with pytest.raises(RuntimeError, match="injected"):
        write_table_atomic(plain_sqlite_engine, table_name, _segments(80, version=2), primary_key="customer_id")
    monkeypatch.undo()
    # DROP TABLE ran before the failing RENAME: it must have been rolled back with it
    pd.testing.assert_frame_equal(_read(plain_sqlite_engine, table_name), _segments(50))
