"""Shared fixtures: a real MariaDB/MySQL database per test session, and a local MLflow store.

MySQL-backed tests never fake the server. Outside CI they skip when it is unreachable (so a
laptop without MySQL can still run the unit tests); under ``CI=true`` they fail instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from segmentation_pipeline_tests.helpers import free_port, stop, wait_for_http

MYSQL_ADMIN_URL = os.environ.get("SEGMENTATION_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")


#: Environment variables MLflow's fluent API writes or reads process-wide. ``mlflow.set_tracking_uri``
#: exports MLFLOW_TRACKING_URI, which ``load_config`` honours as the user's override: a test that
#: points MLflow at its own store would silently redirect every later test's runs there.
MLFLOW_PROCESS_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")


@pytest.fixture(autouse=True)
def _no_mlflow_environment_from_elsewhere() -> None:
    """Each test starts without MLflow variables, whether a user or an earlier test set them."""
    for name in MLFLOW_PROCESS_ENV:
        os.environ.pop(name, None)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture(scope="session")
def mysql_server_url() -> str:
    """The admin URL of a reachable server, or skip/fail with the reason."""
    engine = sa.create_engine(MYSQL_ADMIN_URL, pool_pre_ping=True)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any connection error means unreachable
        message = f"MySQL/MariaDB unreachable at {MYSQL_ADMIN_URL}: {exc}"
        if _in_ci():
            pytest.fail(message + " (CI=true: MySQL-backed tests must not skip)")
        pytest.skip(message)
    finally:
        engine.dispose()
    return MYSQL_ADMIN_URL


@pytest.fixture(scope="session")
def mysql_database_url(mysql_server_url: str) -> Iterator[str]:
    """A fresh, empty database for this test session, dropped afterwards."""
    name = f"segtest_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(mysql_server_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    url = sa.engine.make_url(mysql_server_url).set(database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
        admin.dispose()


@pytest.fixture()
def mysql_engine(mysql_database_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(mysql_database_url, connect_args={"local_infile": True})
    yield engine
    engine.dispose()


@pytest.fixture()
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'customers.db'}"


@pytest.fixture()
def local_mlflow_uri(tmp_path: Path) -> str:
    """A local sqlite-backed MLflow tracking store (unit tests only; e2e tests start a server)."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` on a free loopback port, spoken to over HTTP."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    log = (root / "server.log").open("wb")
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    process = subprocess.Popen(
        [
            str(mlflow_bin), "server",
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", str(root / "artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    if not wait_for_http(f"{url}/health", process):
        process.kill()
        raise RuntimeError(f"mlflow server did not start: {(root / 'server.log').read_text()[-3000:]}")
    try:
        yield url
    finally:
        stop(process)
        log.close()
