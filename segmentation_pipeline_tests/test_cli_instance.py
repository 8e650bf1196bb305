"""The CLI records its runs in the instance `make ui` reads, never in a throwaway one."""

from __future__ import annotations

import dagster as dg

from segmentation_pipeline.cli import cli_instance, dagster_home
from segmentation_pipeline_tests.helpers import write_config


@dg.asset
def probe() -> int:
    return 1


def test_cli_runs_land_in_the_shared_instance_under_data_dir(tmp_path, monkeypatch, sqlite_url, local_mlflow_uri):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    config = str(write_config(tmp_path, sqlite_url, local_mlflow_uri))
    home = dagster_home(config)
    assert home == (tmp_path / "data" / "dagster_home").resolve()
    first = cli_instance(config)
    assert not first.is_ephemeral
    assert "tag_concurrency_limits" in (home / "dagster.yaml").read_text()  # the run limits `make ui` uses
    run_id = dg.materialize([probe], instance=first).run_id
    # another process (the UI, the next CLI call) opening the same home sees the run and its logs
    again = dg.DagsterInstance.from_config(str(home))
    assert again.get_run_by_id(run_id) is not None
    assert again.all_logs(run_id)


def test_dagster_home_from_the_environment_wins(tmp_path, monkeypatch, sqlite_url, local_mlflow_uri):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "elsewhere"))
    config = str(write_config(tmp_path, sqlite_url, local_mlflow_uri))
    assert dagster_home(config) == tmp_path / "elsewhere"
    assert cli_instance(config).root_directory == str(tmp_path / "elsewhere")
