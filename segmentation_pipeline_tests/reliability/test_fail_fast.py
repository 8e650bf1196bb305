"""Fail fast and readably (issue 20, findings 7 and 8): one error line naming what and where."""

from __future__ import annotations

import time

import pytest

from segmentation_pipeline import cli
from segmentation_pipeline_tests.helpers import free_port
from segmentation_pipeline_tests.reliability.conftest import fast_config, seeded_source


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error: ")]


@pytest.mark.mysql
def test_unreachable_mlflow_fails_within_30s_naming_its_url(tmp_path, mysql_database_url, suffix, capsys) -> None:
    seeded_source(mysql_database_url, suffix, 200, 1).dispose()
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    config = fast_config(tmp_path, mysql_database_url, url, suffix)
    started = time.monotonic()
    assert cli.main(["run", "--config", str(config)]) == 1
    assert time.monotonic() - started < 30
    [line] = _error_lines(capsys.readouterr().err)
    assert "RegistryError" in line and url in line and "unreachable" in line


def test_a_failed_run_prints_one_error_and_keeps_the_trace_in_the_log_file(
    tmp_path, local_mlflow_uri, suffix, capsys
) -> None:
    config = fast_config(tmp_path, f"sqlite:///{tmp_path / 'crm.db'}", local_mlflow_uri, suffix)
    log = tmp_path / "cli.log"
    assert cli.main(["run", "--config", str(config), "--log-file", str(log)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) <= 2, err
    [line] = _error_lines(err)
    assert f"customers_{suffix}" in line and "not found" in line
    assert str(log) in err
    assert "Traceback" in log.read_text() and "STEP_FAILURE" in log.read_text()

    assert cli.main(["run", "--config", str(config), "--log-file", str(log), "--verbose"]) == 1
    err = capsys.readouterr().err
    assert "STEP_FAILURE" in err and len(_error_lines(err)) == 1
