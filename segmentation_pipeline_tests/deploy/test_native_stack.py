"""The production topology, for real, without Docker: scripts/native_stack.py on loopback.

PostgreSQL holds Dagster's instance storage and MLflow's backend store; the pipeline reads and
writes a fresh MariaDB database as the least-privilege account of docker/mysql-init (so the
grants are proven sufficient, not just listed). A training run is submitted through the
webserver's GraphQL API, the daemon's ``new_customers_sensor`` launches a scoring run for rows
inserted afterwards, and headless Chromium looks at the Dagster and MLflow UIs.
Every process the stack started is stopped and its databases dropped at the end.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
import yaml

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.mysql,
    pytest.mark.filterwarnings("ignore::DeprecationWarning:gql.*"),  # dagster_graphql's client internals
]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "native_stack.py"
GRANTS = REPO / "docker" / "mysql-init" / "02-pipeline-user.sh"
POSTGRES_ADMIN_URL = os.environ.get("SEGMENTATION_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
LOCATION = "segmentation_pipeline"
CHROMIUM = os.environ.get("SEGMENTATION_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
N_CUSTOMERS = 3000
RUN_TIMEOUT_S = 300
SENSOR_TIMEOUT_S = 180


def _load_stack_module():
    spec = importlib.util.spec_from_file_location("native_stack", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


native_stack = _load_stack_module()


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _unavailable(message: str) -> None:
    if _in_ci():
        pytest.fail(message + " (CI=true: the deployment tests must not skip)")
    pytest.skip(message)


@dataclass
class Stack:
    runtime: Path
    web_url: str
    web_port: int
    mlflow_url: str
    model_name: str
    admin_engine: sa.Engine
    pipeline_engine: sa.Engine
    training_run_id: str = ""

    def logs(self, chars: int = 3000) -> str:
        parts = []
        for log in sorted((self.runtime / "logs").glob("*.log")):
            parts.append(f"--- {log.name} ---\n{log.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)

    def assert_alive(self) -> None:
        """Fail at once, naming it, when a stack process has died (crashed or was signalled)."""
        state = native_stack.load_state(self.runtime) or {}
        dead = [name for name, info in state.get("processes", {}).items()
                if not native_stack._alive(info["pid"], info.get("start_time"))]
        assert not dead, f"stack process(es) {dead} exited while the test waited:\n{self.logs()}"

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        return native_stack.graphql(self.web_url, query, variables)

    def mlflow(self, path: str, **params: str) -> dict[str, Any]:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.mlflow_url}/api/2.0/mlflow/{path}?{query}", timeout=30) as response:
            return json.loads(response.read())


_RUN_FAILURE_QUERY = """
query($runId: ID!) { logsForRun(runId: $runId, limit: 1000) { __typename
  ... on EventConnection { events { __typename
    ... on ExecutionStepFailureEvent { stepKey error { message stack cause { message stack } } }
    ... on ExecutionStepUpForRetryEvent { stepKey error { message cause { message stack } } }
    ... on RunFailureEvent { message }
    ... on EngineEvent { message error { message cause { message } } }
  } }
  ... on PythonError { message } } }
"""

_SENSOR_QUERY = """
query($selector: SensorSelector!) { sensorOrError(sensorSelector: $selector) { __typename
  ... on Sensor { sensorState { status typeSpecificData { __typename ... on SensorData { lastCursor } }
                                ticks(limit: 5) { status skipReason error { message } } } }
  ... on PythonError { message } } }
"""

_RUNS_QUERY = """
query($filter: RunsFilter) { runsOrError(filter: $filter) { __typename
  ... on Runs { results { runId jobName status tags { key value } } } } }
"""


def wait_for_run(stack: Stack, client: Any, run_id: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    status = None
    while time.monotonic() < deadline:
        status = client.get_run_status(run_id).value
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        stack.assert_alive()
        time.sleep(2)
    if status != "SUCCESS":
        details = stack.graphql(_RUN_FAILURE_QUERY, {"runId": run_id})["logsForRun"]
        failures = [e for e in details.get("events", []) if e.get("error") or e["__typename"] == "RunFailureEvent"]
        # the first failure carries the cause; retries end in a generic "Exceeded max_retries"
        raise AssertionError(
            f"run {run_id} ended {status} (timeout {timeout_s:.0f}s):\n{json.dumps(failures[:3], indent=1)[:8000]}\n{stack.logs()}"
        )
    return status


def _pipeline_account(admin_engine: sa.Engine, database: str) -> tuple[str, str]:
    """Create the least-privilege account exactly as the mysql container's init script does."""
    user, password = f"seg_{uuid.uuid4().hex[:10]}", secrets.token_urlsafe(18)
    result = subprocess.run(
        ["bash", str(GRANTS), "--print-sql"],
        env={"PATH": os.environ["PATH"], "MYSQL_DATABASE": database, "SEGMENTATION_DB_USER": user,
             "SEGMENTATION_DB_PASSWORD": password, "SEGMENTATION_DB_USER_HOST": "%"},
        capture_output=True, text=True, check=True, timeout=30,
    )
    try:
        with admin_engine.begin() as conn:
            cursor = conn.connection.cursor()  # DB-API without parameters: the host '%' stays literal
            for statement in filter(None, (s.strip() for s in result.stdout.splitlines())):
                cursor.execute(statement.rstrip(";"))
            cursor.close()
    except BaseException:
        _drop_account(admin_engine, user)
        raise
    return user, password


def _drop_account(admin_engine: sa.Engine, user: str) -> None:
    with admin_engine.begin() as conn:
        conn.execute(sa.text("DROP USER IF EXISTS :user@'%'"), {"user": user})


def _write_config(tmp: Path, database_url: str, mlflow_url: str, model_name: str) -> Path:
    raw = yaml.safe_load((REPO / "configs" / "mysql.yaml").read_text())
    raw["database"]["url"] = database_url  # no password: SEGMENTATION_DATABASE_PASSWORD supplies it
    raw["mlflow"]["tracking_uri"] = mlflow_url
    raw["mlflow"].pop("artifact_location", None)  # artifacts go through the server (--serve-artifacts)
    raw["model"]["name"] = model_name
    raw["data_dir"] = str(tmp / "data")
    raw["automation"] = {
        "retrain": {"cron": "0 3 * * 1", "enabled": False},
        "score": {"cron": "0 4 * * *", "enabled": False},
        "new_customers_sensor": {"enabled": True, "interval_s": 5},
        "drift_sensor": {"enabled": False, "interval_s": 300},
    }
    path = tmp / "segmentation.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _stack_command(runtime: Path, *args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), "--runtime-dir", str(runtime), *args],
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, mysql_database_url: str) -> Iterator[Stack]:
    try:
        conn = native_stack._pg_connect(POSTGRES_ADMIN_URL)
        conn.close()
    except Exception as exc:  # noqa: BLE001 - missing driver or server: same verdict
        _unavailable(f"PostgreSQL unreachable at {POSTGRES_ADMIN_URL}: {exc}")
    from segmentation_pipeline.core.demo_data import generate_customers
    from segmentation_pipeline.storage.bulk_load import load_frame
    from segmentation_pipeline.storage.connection import create_db_engine

    tmp = tmp_path_factory.mktemp("native_stack")
    runtime = tmp / "runtime"
    outcome = {"setup_failed": True}
    # Everything created below is undone in reverse order, however far setup got.
    with contextlib.ExitStack() as cleanup:
        # A database of its own next to the session's (same server, same admin): the pipeline's
        # tables and history written here never meet the other end-to-end tests'.
        session_engine = create_db_engine(mysql_database_url)
        cleanup.callback(session_engine.dispose)
        database = f"{session_engine.url.database}_stack"[:64]
        with session_engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4")
        cleanup.callback(_drop_database, session_engine, database)
        admin_engine = create_db_engine(session_engine.url.set(database=database))
        cleanup.callback(admin_engine.dispose)

        frame, _ = generate_customers(N_CUSTOMERS, seed=1)
        load_frame(admin_engine, "customers", frame, if_exists="replace")  # as the admin: the account only reads it
        # after the source table exists, as in the container (01-schema.sql runs before 02-pipeline-user.sh)
        user, password = _pipeline_account(admin_engine, database)
        cleanup.callback(_drop_account, admin_engine, user)
        pipeline_url = admin_engine.url.set(username=user, password=None).render_as_string(hide_password=False)
        pipeline_engine = create_db_engine(admin_engine.url.set(username=user, password=password))
        cleanup.callback(pipeline_engine.dispose)

        ports = {name: native_stack._free_port() for name in ("mlflow", "webserver", "code_server")}
        mlflow_url = f"http://127.0.0.1:{ports['mlflow']}"
        model_name = f"segtest_{uuid.uuid4().hex[:8]}"
        config = _write_config(tmp, pipeline_url, mlflow_url, model_name)
        env = {k: v for k, v in os.environ.items()
               if k not in {"SEGMENTATION_DATABASE_URL", "MLFLOW_TRACKING_URI", "DAGSTER_HOME"}}
        env.update({"SEGMENTATION_CONFIG": str(config), "SEGMENTATION_DATABASE_PASSWORD": password,
                    "SEGMENTATION_DATA_DIR": str(tmp / "data")})
        stack = Stack(runtime=runtime, web_url=f"http://127.0.0.1:{ports['webserver']}", web_port=ports["webserver"],
                      mlflow_url=mlflow_url, model_name=model_name, admin_engine=admin_engine,
                      pipeline_engine=pipeline_engine)

        cleanup.callback(_stop_stack, runtime, env, outcome)  # registered first: a half-started stack stops too
        started = time.monotonic()
        result = _stack_command(
            runtime, "start", "--name", f"segtest_{uuid.uuid4().hex[:8]}", "--dagster-home", str(tmp / "dagster_home"),
            "--mlflow-port", str(ports["mlflow"]), "--webserver-port", str(ports["webserver"]),
            "--code-server-port", str(ports["code_server"]), "--fresh", "--timeout", "240",
            env=env, timeout=300,
        )
        assert result.returncode == 0, f"native stack did not start:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
        print(f"native stack healthy in {time.monotonic() - started:.0f}s")

        from dagster_graphql import DagsterGraphQLClient

        client = DagsterGraphQLClient("127.0.0.1", port_number=ports["webserver"])
        started = time.monotonic()
        stack.training_run_id = client.submit_job_execution("segmentation_job", repository_location_name=LOCATION)
        wait_for_run(stack, client, stack.training_run_id, RUN_TIMEOUT_S)
        print(f"segmentation_job {stack.training_run_id} succeeded in {time.monotonic() - started:.0f}s")
        outcome["setup_failed"] = False
        yield stack


def _drop_database(session_engine: sa.Engine, database: str) -> None:
    with session_engine.begin() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{database}`")


def _stop_stack(runtime: Path, env: dict[str, str], outcome: dict[str, bool]) -> None:
    """Stop the stack and drop its PostgreSQL databases; check that no process of it survives."""
    state = native_stack.load_state(runtime) or {}
    ours = [int(p["pid"]) for p in state.get("processes", {}).values()]
    ours += [child for pid in ours for child in native_stack._descendants(pid)]  # run workers, uvicorn, ...
    stopped = _stack_command(runtime, "stop", "--drop-databases", env=env, timeout=120)
    print(stopped.stdout[-3000:], stopped.stderr[-3000:])
    leftover = native_stack.load_state(runtime) or {}
    if leftover.get("processes"):  # stop failed half-way: end what is still ours
        native_stack.terminate_all(list(leftover["processes"].items()), grace_s=5)
    survivors = [pid for pid in ours if native_stack._pid_exists(pid)]
    if not outcome["setup_failed"]:  # never mask a setup error with a teardown one
        assert stopped.returncode == 0, stopped.stdout
        assert not survivors, f"processes still running after stop: {survivors}"


def test_training_run_through_the_webserver_writes_segments_and_registers_the_champion(stack: Stack):
    segments = pd.read_sql("SELECT customer_id, segment_id, dagster_run_id FROM customer_segments", stack.admin_engine)
    rejects = pd.read_sql("SELECT customer_id, reason FROM customer_rejects", stack.admin_engine)
    assert len(segments) > 0.9 * N_CUSTOMERS and len(segments) + len(rejects) == N_CUSTOMERS
    assert set(segments["dagster_run_id"]) == {stack.training_run_id}
    assert segments["customer_id"].is_unique

    champion = stack.mlflow("registered-models/alias", name=stack.model_name, alias="champion")["model_version"]
    assert champion["version"] == "1"
    run = stack.mlflow("runs/get", run_id=champion["run_id"])["run"]
    assert {t["key"]: t["value"] for t in run["data"]["tags"]}["dagster_run_id"] == stack.training_run_id
    # artifacts were uploaded through the tracking server into its artifact store
    assert run["info"]["artifact_uri"].startswith("mlflow-artifacts:"), run["info"]["artifact_uri"]
    assert any((stack.runtime / "mlartifacts").rglob("MLmodel")), "no model artifacts in the server's store"

    # the run really went through the queue with the concurrency tag
    runs = stack.graphql(_RUNS_QUERY, {"filter": {"runIds": [stack.training_run_id]}})["runsOrError"]["results"]
    assert {"key": "segmentation/tables", "value": "customer_segments"} in runs[0]["tags"]


def _sensor(stack: Stack) -> dict[str, Any]:
    selector = {"repositoryLocationName": LOCATION, "repositoryName": "__repository__", "sensorName": "new_customers_sensor"}
    result = stack.graphql(_SENSOR_QUERY, {"selector": selector})["sensorOrError"]
    assert result["__typename"] == "Sensor", result
    return result["sensorState"]


def test_new_customers_sensor_scores_rows_inserted_later(stack: Stack):
    deadline = time.monotonic() + 90
    while True:  # the sensor's first successful tick sets its cursor at the current high-water mark
        state = _sensor(stack)
        assert state["status"] == "RUNNING", state
        if (state["typeSpecificData"] or {}).get("lastCursor"):
            break
        assert time.monotonic() < deadline, f"sensor cursor never initialised: {state}\n{stack.logs()}"
        stack.assert_alive()
        time.sleep(2)

    from segmentation_pipeline.core.demo_data import generate_customers
    from segmentation_pipeline.storage.bulk_load import load_frame

    new, _ = generate_customers(40, seed=2, dirty=False)
    new["customer_id"] = new["customer_id"] + 1_000_000
    new["updated_at"] = pd.Timestamp("2025-06-01") + pd.to_timedelta(range(len(new)), unit="s")
    load_frame(stack.admin_engine, "customers", new, if_exists="append")
    new_ids = set(new["customer_id"].astype(str))

    from dagster_graphql import DagsterGraphQLClient

    client = DagsterGraphQLClient("127.0.0.1", port_number=stack.web_port)
    deadline = time.monotonic() + SENSOR_TIMEOUT_S
    run_id = None
    while run_id is None:
        runs = stack.graphql(_RUNS_QUERY, {"filter": {"tags": [{"key": "dagster/sensor_name",
                                                                  "value": "new_customers_sensor"}]}})
        results = runs["runsOrError"]["results"]
        if results:
            [run] = results
            assert run["jobName"] == "score_job"
            run_id = run["runId"]
            break
        assert time.monotonic() < deadline, f"the sensor launched no run: {_sensor(stack)}\n{stack.logs()}"
        stack.assert_alive()
        time.sleep(2)
    wait_for_run(stack, client, run_id, max(30.0, deadline - time.monotonic()))

    scored = pd.read_sql(
        "SELECT customer_id, segment_id, segment_name, model_version, dagster_run_id FROM customer_segments "
        "WHERE customer_id > 1000000", stack.admin_engine,
    )
    assert set(scored["customer_id"].astype(str)) == new_ids
    assert set(scored["dagster_run_id"]) == {run_id} and set(scored["model_version"].astype(str)) == {"1"}
    # the earlier customers kept their training assignment (an upsert, not a replacement)
    with stack.admin_engine.connect() as conn:
        total = conn.execute(sa.text("SELECT COUNT(*) FROM customer_segments WHERE dagster_run_id = :r"),
                             {"r": stack.training_run_id}).scalar_one()
    assert total > 0.9 * N_CUSTOMERS


def test_pipeline_account_is_least_privilege(stack: Stack):
    from segmentation_pipeline.storage.segment_store import record_run_failure

    record_run_failure(stack.pipeline_engine, run_id="r-test", job_name="segmentation_job", message="boom")
    record_run_failure(stack.pipeline_engine, run_id="r-test", job_name="segmentation_job", message="boom again")
    rows = pd.read_sql("SELECT run_id, message FROM pipeline_run_failures", stack.admin_engine)
    assert rows.to_dict("records") == [{"run_id": "r-test", "message": "boom again"}]
    with pytest.raises(sa.exc.DBAPIError, match="denied"):
        with stack.pipeline_engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM customers")
    with pytest.raises(sa.exc.DBAPIError, match="denied"):
        with stack.pipeline_engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE not_ours (id INT)")


def test_dagster_and_mlflow_uis_in_headless_chromium(stack: Stack, tmp_path: Path):
    if not Path(CHROMIUM).exists():
        _unavailable(f"{CHROMIUM} not installed (apt-get install -y chromium)")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _unavailable("playwright not installed (pip install playwright; the browser is Debian's chromium)")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{stack.web_url}/assets", wait_until="domcontentloaded")
            for asset in ("raw_customers", "customer_segments"):
                page.get_by_text(asset, exact=True).first.wait_for(timeout=60_000)
            page.screenshot(path=str(tmp_path / "dagster_assets.png"))

            page.goto(f"{stack.mlflow_url}/#/models", wait_until="domcontentloaded")
            page.get_by_text(stack.model_name, exact=True).first.wait_for(timeout=60_000)
            row = page.get_by_role("row").filter(has_text=stack.model_name)
            expect(row).to_contain_text("champion", timeout=30_000)  # the alias column
            page.screenshot(path=str(tmp_path / "mlflow_models.png"))
        finally:
            browser.close()
    print(f"screenshots in {tmp_path}")
