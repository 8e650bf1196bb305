"""Fault-injection helpers for the reliability tests (issue 6).

Nothing here fakes the database: connections are really KILLed on the real MariaDB server.
The one thing that is slowed down is the client's side of ``LOAD DATA LOCAL INFILE`` (the
"network" between the pipeline and the server), so that a watcher can see the statement in
``information_schema.PROCESSLIST`` and KILL it while it is in flight, deterministically.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pymysql.connections
import pytest
import sqlalchemy as sa

from segmentation_pipeline.config import OutputConfig
from segmentation_pipeline.core.demo_data import generate_customers
from segmentation_pipeline.core.segment_tables import (
    build_rejects_table,
    build_segments_table,
)
from segmentation_pipeline.storage import bulk_load
from segmentation_pipeline.storage.connection import create_db_engine
from segmentation_pipeline_tests.conftest import MYSQL_ADMIN_URL
from segmentation_pipeline_tests.helpers import write_config

# Small and fast: a fixed k, few bootstrap rounds, every name unique to the test.
FAST = {"k": 4, "promotion.bootstrap_rounds": 2, "model.n_init": 3}


@pytest.fixture()
def suffix(request: pytest.FixtureRequest) -> Iterator[str]:
    """Tests share the session's database: each names its own tables, model and experiment,
    and drops its tables afterwards (other tests list the session database's tables)."""
    value = uuid.uuid4().hex[:8]
    yield value
    if "mysql_database_url" in request.fixturenames:
        engine = sa.create_engine(request.getfixturevalue("mysql_database_url"))
        try:
            with engine.begin() as conn:
                for table in sa.inspect(conn).get_table_names():
                    if value in table:
                        conn.exec_driver_sql(f"DROP TABLE IF EXISTS `{table}`")
        finally:
            engine.dispose()


@pytest.fixture()
def engine(mysql_database_url: str) -> Iterator[sa.Engine]:
    """The pipeline's engine on the session's MariaDB database."""
    engine = create_db_engine(mysql_database_url)
    yield engine
    engine.dispose()


def fast_config(
    tmp_path: Path, database_url: str, tracking_uri: str, suffix: str, *, name: str | None = None, **changes: Any
) -> Path:
    """The default config, fast, with source/output tables, model and experiment named by ``suffix``."""
    base = {
        **FAST,
        "source.table": f"customers_{suffix}",
        "output.segments_table": f"seg_{suffix}",
        "output.rejects_table": f"rej_{suffix}",
        "output.history_table": f"hist_{suffix}",
        "model.name": f"rel_{suffix}",
        "mlflow.experiment": f"rel_{suffix}",
    }
    name = name or f"config_{suffix}.yaml"
    return write_config(tmp_path, database_url, tracking_uri, name=name, **{**base, **changes})


def output_tables(suffix: str) -> OutputConfig:
    """The output tables :func:`fast_config` names for ``suffix``."""
    return OutputConfig(segments_table=f"seg_{suffix}", rejects_table=f"rej_{suffix}", history_table=f"hist_{suffix}")


def writeback_frames(
    run: str, clean: Any, rejected: Any, segment_ids: Any, names: dict[int, str], model_version: str = "1"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One run's segments and rejects tables, as the write-back receives them."""
    segments = build_segments_table(
        pd.DataFrame({"customer_id": clean, "is_outlier": False, "outlier_reason": ""}), "customer_id", segment_ids,
        names, model_name="m", model_version=model_version, mlflow_run_id=f"mlflow-{run}", dagster_run_id=run,
    )
    rejects = build_rejects_table(
        pd.DataFrame({"customer_id": rejected, "reason": "missing:age", "detail": "age is missing"}),
        mlflow_run_id=f"mlflow-{run}", dagster_run_id=run,
    )
    return segments, rejects


def seeded_source(database_url: str, suffix: str, rows: int, seed: int) -> sa.Engine:
    """Clean demo customers in ``customers_<suffix>``; returns an engine on that database to dispose."""
    engine = create_db_engine(database_url)
    frame, _ = generate_customers(rows, seed=seed, dirty=False)
    bulk_load.load_frame(engine, f"customers_{suffix}", frame)
    return engine


def table_rows(engine: sa.Engine, table: str) -> pd.DataFrame:
    return pd.read_sql(f"SELECT * FROM `{table}`", engine)


def database_name(url: str) -> str:
    return sa.engine.make_url(url).database or ""


@dataclass
class Killer:
    """KILLs the server connection running a ``LOAD DATA`` into ``table`` (exact name).

    The client's upload of the rows for a load into ``table`` is held (at most ``stall_s``)
    until the watcher has seen the statement in flight and KILLed it; ``max_kills`` bounds how
    many connections die. ``before_kill(admin_engine)`` runs in the watcher thread just before
    each KILL (e.g. to prove that readers still see the previous table mid-write).
    """

    database: str
    table: str
    max_kills: int = 1
    stall_s: float = 10.0  # at most; the upload resumes (onto the dead connection) once killed
    before_kill: Any = None
    killed: list[tuple[int, str]] = field(default_factory=list)
    observations: list[Any] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def watch(self) -> None:
        engine = sa.create_engine(MYSQL_ADMIN_URL, pool_pre_ping=True)
        query = sa.text(
            "SELECT ID, INFO FROM information_schema.PROCESSLIST "
            "WHERE DB = :db AND COMMAND = 'Query' AND INFO LIKE 'LOAD DATA%%' "
            "AND (INFO LIKE CONCAT('%% INTO TABLE ', :t, ' %%') OR INFO LIKE CONCAT('%% INTO TABLE `', :t, '` %%')) "
            "ORDER BY ID LIMIT 1"
        )
        try:
            with engine.connect() as conn:
                while not self._stop.is_set() and len(self.killed) < self.max_kills:
                    row = conn.execute(query, {"db": self.database, "t": self.table}).first()
                    if row is None:
                        time.sleep(0.02)
                        continue
                    if self.before_kill is not None:
                        self.observations.append(self.before_kill(engine))
                    conn.execute(sa.text(f"KILL {int(row[0])}"))
                    self.killed.append((int(row[0]), str(row[1])))
        finally:
            engine.dispose()


@pytest.fixture()
def kill_load_data(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``with kill_load_data(database, table, ...) as killer:`` runs a watcher thread."""
    current = threading.local()
    active: list[Killer] = []
    real_chunk = bulk_load._load_data_chunk
    real_send = pymysql.connections._send_local_file

    def chunk(conn: Any, raw: Any, table: str, *args: Any, **kwargs: Any) -> int:
        current.table = table
        try:
            return real_chunk(conn, raw, table, *args, **kwargs)
        finally:
            current.table = None

    def send(filename: str, conn: Any) -> None:
        table = getattr(current, "table", None)
        for killer in active:
            if table == killer.table and len(killer.killed) < killer.max_kills:
                # a slow network: the server waits for the rows until the watcher has KILLed it
                kills, deadline = len(killer.killed), time.monotonic() + killer.stall_s
                while len(killer.killed) == kills and time.monotonic() < deadline:
                    time.sleep(0.01)
                break
        real_send(filename, conn)

    monkeypatch.setattr(bulk_load, "_load_data_chunk", chunk)
    monkeypatch.setattr(pymysql.connections, "_send_local_file", send)

    @contextmanager
    def start(database: str, table: str, **kwargs: Any) -> Iterator[Killer]:
        killer = Killer(database, table, **kwargs)
        active.append(killer)
        thread = threading.Thread(target=killer.watch, daemon=True)
        thread.start()
        try:
            yield killer
        finally:
            killer._stop.set()
            thread.join(timeout=10)
            active.remove(killer)

    yield start


class TcpProxy:
    """A loopback TCP proxy to a server; ``cut()`` makes the server unreachable mid-run.

    After ``cut()`` the listening port is closed (new connections are refused) and every open
    connection is shut down, which is what a client sees when the server process dies.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        import socket

        self.target = (target_host, target_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.open: list[Any] = []
        self.cut_event = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        import socket

        while not self.cut_event.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut_event.is_set():
                client.close()
                return
            upstream = socket.create_connection(self.target)
            self.open += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: Any, dst: Any) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.close()
                except OSError:
                    pass

    def cut(self) -> None:
        import socket

        self.cut_event.set()
        self.listener.close()
        for sock in list(self.open):
            try:
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            except OSError:
                pass
