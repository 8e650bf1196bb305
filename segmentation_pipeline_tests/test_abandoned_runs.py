"""A CLI run whose process is killed does not stay STARTED in the UI for ever: the next run fails it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import dagster as dg

from segmentation_pipeline.automation import segmentation_job
from segmentation_pipeline.core.demo_data import generate_customers
from segmentation_pipeline.in_process import PID_TAG, fail_abandoned_runs
from segmentation_pipeline.storage.bulk_load import load_frame
from segmentation_pipeline.storage.connection import create_db_engine
from segmentation_pipeline_tests.helpers import write_config

# The run kills its own process (SIGKILL: no cleanup, no handler) right before the table swap.
KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    from segmentation_pipeline import cli
    from segmentation_pipeline.storage import faults
    with faults.injected("before_swap", lambda **_: os.kill(os.getpid(), signal.SIGKILL)):
        cli.run_pipeline(sys.argv[1])
""")


def test_killed_cli_run_is_marked_failed_by_the_next_one(tmp_path, monkeypatch, sqlite_url, local_mlflow_uri):
    home = tmp_path / "dagster_home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    engine = create_db_engine(sqlite_url)
    load_frame(engine, "customers", generate_customers(300, seed=3)[0])
    engine.dispose()
    config = write_config(tmp_path, sqlite_url, local_mlflow_uri, k_range=[2, 4])
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, str(config)], env=os.environ.copy(),
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]

    instance = dg.DagsterInstance.from_config(str(home))
    [run] = instance.get_runs()
    assert run.status == dg.DagsterRunStatus.STARTED  # nobody was left to say otherwise
    assert run.job_name == segmentation_job.name  # listed in the UI under the code location's job
    assert run.tags[PID_TAG] != str(os.getpid())

    # a live run (this process) is left alone; the dead one is failed with a message that says why
    live = instance.create_run_for_job(dg.define_asset_job("probe").resolve(asset_graph=dg.Definitions(
        assets=[dg.AssetSpec("x")]).resolve_asset_graph()), tags={PID_TAG: str(os.getpid()),
        "segmentation/host": run.tags["segmentation/host"]}, status=dg.DagsterRunStatus.STARTED)
    assert fail_abandoned_runs(instance) == [run.run_id]
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
    assert instance.get_run_by_id(live.run_id).status == dg.DagsterRunStatus.STARTED
    failure = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    assert f"pid {run.tags[PID_TAG]}" in failure[-1].dagster_event.message
    assert fail_abandoned_runs(instance) == []  # done once
