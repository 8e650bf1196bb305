"""Security: hostile identifiers, credentials that never leak, and least-privilege grants.

The pipeline runs against MariaDB as a dedicated user with a distinctive password and exactly
the grants in :func:`least_privilege_grants`; everything it prints or logs, every Dagster event
and log record, and everything it stores in MLflow (params, tags, metrics, artifacts, the
registered model, the raw tracking database and artifact files) is searched for the password.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from urllib.parse import quote

import mlflow
import pytest
import sqlalchemy as sa
from dagster._serdes import serialize_value
from mlflow.tracking import MlflowClient

from segmentation_pipeline import cli
from segmentation_pipeline.config import OutputConfig
from segmentation_pipeline.core.demo_data import generate_customers
from segmentation_pipeline.storage.bulk_load import load_frame
from segmentation_pipeline.storage.connection import create_db_engine
from segmentation_pipeline.storage.segment_store import record_run_failure
from segmentation_pipeline_tests.conftest import MYSQL_ADMIN_URL
from segmentation_pipeline_tests.reliability.conftest import database_name, fast_config, table_rows

pytestmark = pytest.mark.mysql

SWAP = "SELECT, INSERT, CREATE, DROP, ALTER"  # a table renamed away (the table itself, its __staging)
OLD = "INSERT, CREATE, DROP"  # <table>__old: only ever a RENAME target, then dropped


def least_privilege_grants(database: str, user: str, source: str, output: OutputConfig) -> list[str]:
    """Exactly what ``segmentation run`` and ``segmentation score`` need, table by table.

    MariaDB accepts table-level grants on tables that do not exist yet when the grant includes
    CREATE, so the pipeline's own tables (and their staging/old names) are granted by name. A
    separate output schema is not an option: source and output tables share one database URL.
    """
    to = f"TO '{user}'@'%'"
    seg, rej, hist = output.segments_table, output.rejects_table, output.history_table

    def swapped(table: str, extra: str = "") -> list[str]:  # replaced by RENAME <t>__staging TO <t>
        return [f"GRANT {SWAP}{extra} ON `{database}`.`{table}` {to}",
                f"GRANT {SWAP} ON `{database}`.`{table}__staging` {to}",
                f"GRANT {OLD} ON `{database}`.`{table}__old` {to}"]

    grants = [f"GRANT SELECT ON `{database}`.`{source}` {to}"]  # read the source, nothing else
    grants += swapped(seg, ", DELETE") + swapped(rej, ", DELETE")  # DELETE: incremental scoring's upserts
    # history: append-only, idempotent per run (a re-run DELETEs its own earlier rows first);
    # INDEX for its (dagster_run_id, customer_id) index, created separately from the table
    grants.append(f"GRANT SELECT, INSERT, CREATE, DELETE, INDEX ON `{database}`.`{hist}` {to}")
    for incoming in (f"{seg}__incoming", f"{rej}__incoming", f"{seg}__incoming_ids"):  # scoring's upserts
        grants += swapped(incoming)
    # the run-failure sensor's table
    grants.append(f"GRANT SELECT, INSERT, CREATE, DELETE ON `{database}`.`pipeline_run_failures` {to}")
    return grants


# --------------------------------------------------------------------------- identifiers


def test_hostile_table_and_column_names_are_refused_before_any_sql(
    tmp_path, mysql_database_url, local_mlflow_uri, suffix, capsys
):
    engine = create_db_engine(mysql_database_url)
    source = f"customers_{suffix}"
    frame, _ = generate_customers(300, seed=4)
    load_frame(engine, source, frame)
    tables_before = set(sa.inspect(engine).get_table_names())
    csv = tmp_path / "customers.csv"
    frame.head(20).to_csv(csv, index=False)
    config = fast_config(tmp_path, mysql_database_url, local_mlflow_uri, suffix)
    evil = f"{source}; DROP TABLE {source}"

    def fails(argv: list[str], *expected: str) -> None:
        assert cli.main(argv) == 1, argv
        err = capsys.readouterr().err
        for text in expected:
            assert text in err, err[-2000:]

    fails(["--config", str(config), "load-csv", str(csv), "--table", evil], "invalid table", repr(evil))
    fails(["--config", str(config), "load-csv", str(csv), "--table", "x`; DROP TABLE y; --"], "invalid table")
    fails(["--config", str(config), "load-csv", str(csv), "--rename", f"age=age; DROP TABLE {source}"],
          "invalid rename target")
    fails(["--config", str(config), "run", "--features", f"age,annual_income; DROP TABLE {source}"],
          "invalid feature column")
    for key, value in {
        "source.table": evil,
        "source.id_column": "customer_id`; DROP TABLE x; --",
        "source.updated_at_column": "updated_at) OR 1=1 --",
        "output.segments_table": f"seg_{suffix}; DROP TABLE {source}",
        "output.history_table": "hist'; DROP TABLE x; --",
        "features": ["age", f"annual_income`, (SELECT 1 FROM {source})"],
        "cleaning.categorical": {"gender`; DROP TABLE x": {"allowed": ["Female"]}},
    }.items():
        bad = fast_config(tmp_path, mysql_database_url, local_mlflow_uri, suffix, name="bad.yaml", **{key: value})
        fails(["run", "--config", str(bad)], "ConfigError", "invalid")
    # a reserved word is a valid identifier: validated, then quoted, so it works as a name
    assert cli.main(["--config", str(config), "load-csv", str(csv), "--table", "select"]) == 0
    capsys.readouterr()
    assert len(table_rows(engine, "select")) == 20
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE `select`")
    assert set(sa.inspect(engine).get_table_names()) == tables_before
    assert len(table_rows(engine, source)) == len(frame)  # the source is intact
    engine.dispose()


# --------------------------------------------------------------------------- secrets and grants


@pytest.fixture()
def pipeline_user(mysql_database_url, suffix):
    """A dedicated MariaDB user with a distinctive password and exactly the least-privilege grants."""
    user = f"segtest_{uuid.uuid4().hex[:8]}"
    password = f"S3cr3t-{uuid.uuid4().hex}"
    database = database_name(mysql_database_url)
    output = OutputConfig(segments_table=f"seg_{suffix}", rejects_table=f"rej_{suffix}", history_table=f"hist_{suffix}")
    grants = least_privilege_grants(database, user, f"customers_{suffix}", output)
    frame, _ = generate_customers(1200, seed=8, dirty=False)
    engine = create_db_engine(mysql_database_url)
    load_frame(engine, f"customers_{suffix}", frame.iloc[:1000])  # the source exists before its grant
    engine.dispose()
    admin = sa.create_engine(MYSQL_ADMIN_URL)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f"CREATE USER '{user}'@'%' IDENTIFIED BY :password"), {"password": password})
            for grant in grants:
                conn.execute(sa.text(grant))
        yield {"user": user, "password": password, "database": database, "grants": grants, "output": output,
               "frame": frame}
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP USER IF EXISTS '{user}'@'%'"))
        admin.dispose()


def _files_containing(root: Path, needles: list[bytes]) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and any(n in p.read_bytes() for n in needles)]


def test_pipeline_runs_under_least_privilege_and_never_reveals_the_password(
    tmp_path, mysql_database_url, pipeline_user, suffix, monkeypatch, capfd, caplog
):
    user, password, database = pipeline_user["user"], pipeline_user["password"], pipeline_user["database"]
    needles = [password, quote(password, safe="")]
    admin = create_db_engine(mysql_database_url)
    source, frame = f"customers_{suffix}", pipeline_user["frame"]

    store = tmp_path / "mlflow"
    store.mkdir()
    tracking = f"sqlite:///{store / 'mlflow.db'}"
    # the config file holds no password; the URL with the password comes from the environment
    config = fast_config(tmp_path, f"mysql+pymysql://{user}@127.0.0.1:3306/{database}", tracking, suffix,
                         **{"mlflow.artifact_location": str(store / "artifacts")})
    monkeypatch.setenv("SEGMENTATION_DATABASE_URL", f"mysql+pymysql://{user}:{password}@127.0.0.1:3306/{database}")
    caplog.set_level(logging.DEBUG)  # every Python log record, SQLAlchemy's included
    monkeypatch.setattr(cli, "QUIET_LOGS", {"loggers": {"console": {"config": {"log_level": "DEBUG"}}}})
    import dagster as dg

    instance = dg.DagsterInstance.ephemeral()
    monkeypatch.setattr(cli, "cli_instance", lambda *_: instance)
    results = []
    real_summarise = cli.summarise
    monkeypatch.setattr(cli, "summarise", lambda result, *a: results.append(result) or real_summarise(result, *a))

    # 1. training, password in SEGMENTATION_DATABASE_URL
    assert cli.main(["run", "--config", str(config), "--json"]) == 0
    # 2. incremental scoring (upserts), password alone in SEGMENTATION_DATABASE_PASSWORD
    load_frame(admin, source, frame.iloc[1000:], if_exists="append")
    monkeypatch.delenv("SEGMENTATION_DATABASE_URL")
    monkeypatch.setenv("SEGMENTATION_DATABASE_PASSWORD", password)
    assert cli.main(["score", "--config", str(config), "--after-id", "1000"]) == 0
    # 3. the run-failure sensor's table (shared by the session: only this test's row is removed)
    failures_existed = sa.inspect(admin).has_table("pipeline_run_failures")
    user_engine = create_db_engine(f"mysql+pymysql://{user}:{password}@127.0.0.1:3306/{database}")
    record_run_failure(user_engine, run_id=f"run-{suffix}", job_name="segmentation_job", message="boom")
    with admin.begin() as conn:
        if failures_existed:
            conn.exec_driver_sql(f"DELETE FROM pipeline_run_failures WHERE run_id = 'run-{suffix}'")
        else:
            conn.exec_driver_sql("DROP TABLE pipeline_run_failures")

    # everything worked under exactly those grants
    segments = table_rows(admin, f"seg_{suffix}")
    assert len(segments) + len(table_rows(admin, f"rej_{suffix}")) == 1200
    assert table_rows(admin, f"hist_{suffix}")["dagster_run_id"].nunique() == 2
    with sa.create_engine(MYSQL_ADMIN_URL).connect() as conn:
        shown = [r[0] for r in conn.execute(sa.text(f"SHOW GRANTS FOR '{user}'@'%'"))]
    assert len(shown) == 1 + len(pipeline_user["grants"])  # USAGE + ours, nothing else
    history_key = sa.inspect(admin).get_pk_constraint(f"hist_{suffix}")  # created under these grants
    assert history_key["constrained_columns"] == ["dagster_run_id", "customer_id"]

    # ... and nothing else: the source cannot be changed, other tables cannot be made
    with user_engine.connect() as conn:
        for statement in (f"UPDATE `{source}` SET age = 1", f"INSERT INTO `{source}` (customer_id) VALUES (-1)",
                          f"DELETE FROM `{source}`", f"DROP TABLE `{source}`", f"ALTER TABLE `{source}` ADD x INT",
                          "CREATE TABLE sneaky (x INT)", "SELECT * FROM mysql.user"):
            with pytest.raises(sa.exc.DBAPIError, match="denied"):
                conn.exec_driver_sql(statement)
    user_engine.dispose()
    assert len(table_rows(admin, source)) == 1200

    # --- the password appears nowhere -----------------------------------------------------------
    captured = capfd.readouterr()
    logs = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    text = {"stdout": captured.out, "stderr": captured.err, "python logging": logs}
    [result] = results
    run_ids = {r.run_id for r in instance.get_runs()}
    assert len(run_ids) == 2
    text["dagster events"] = "\n".join(serialize_value(e) for e in result.all_events)
    text["dagster event log"] = "\n".join(serialize_value(e) for run_id in run_ids for e in instance.all_logs(run_id))
    text["dagster runs"] = "\n".join(serialize_value(r) for r in instance.get_runs())
    masked = f"mysql+pymysql://{user}:***@127.0.0.1:3306/{database}"
    assert masked in text["dagster events"] and masked in logs  # the URL was there, masked
    for name, body in text.items():
        assert not any(n in body for n in needles), f"password in {name}"

    client = MlflowClient(tracking)
    [experiment] = [e for e in client.search_experiments() if e.name == f"rel_{suffix}"]
    [run] = client.search_runs([experiment.experiment_id])
    assert run.data.params["database.url"] == masked
    fields = {**run.data.params, **run.data.tags, **{k: str(v) for k, v in run.data.metrics.items()}}
    assert not [k for k, v in fields.items() if any(n in f"{k}={v}" for n in needles)]
    downloads = tmp_path / "downloads"
    client.download_artifacts(run.info.run_id, "", str(downloads / "run"))
    model = f"rel_{suffix}"
    for version in client.search_model_versions(f"name = '{model}'"):
        assert not any(n in f"{version.tags} {version.description}" for n in needles)
        mlflow.artifacts.download_artifacts(f"models:/{model}/{version.version}", dst_path=str(downloads / "model"),
                                            tracking_uri=tracking)
    assert len(list(downloads.rglob("*"))) > 10  # the run's artifacts and the pickled model
    byte_needles = [n.encode() for n in needles]
    assert _files_containing(downloads, byte_needles) == []
    # the raw MLflow store (tracking database and artifact files) and the pipeline's data dir
    assert _files_containing(tmp_path, byte_needles) == []
    admin.dispose()


def test_a_wrong_password_is_reported_masked(tmp_path, mysql_database_url, pipeline_user, suffix, monkeypatch,
                                             local_mlflow_uri, capfd):
    user, database = pipeline_user["user"], pipeline_user["database"]
    wrong = f"Wr0ng-{uuid.uuid4().hex}"
    config = fast_config(tmp_path, f"mysql+pymysql://{user}@127.0.0.1:3306/{database}", local_mlflow_uri, suffix)
    monkeypatch.setenv("SEGMENTATION_DATABASE_PASSWORD", wrong)
    assert cli.main(["run", "--config", str(config)]) == 1
    captured = capfd.readouterr()
    [err] = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert f"mysql+pymysql://{user}:***@127.0.0.1:3306/{database}" in err and "Access denied" in err
    assert wrong not in captured.out + captured.err
