"""A training run and a scoring run, as two ``segmentation`` processes, write the same tables.

The test holds the pipeline's own database lock until both processes are queued on it (seen in
``information_schema.PROCESSLIST``), then lets go: they race for it exactly at the write-back.
The lock must serialise them: both succeed, one waits while the other writes, the final table
is exactly one run's output, and the history keeps both runs. Each process gets its own empty
``DAGSTER_HOME`` (not the shared instance under ``data_dir``), so Dagster's own run/pool limits
cannot be what serialises them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from segmentation_pipeline import cli
from segmentation_pipeline.config import OutputConfig
from segmentation_pipeline.core.demo_data import generate_customers
from segmentation_pipeline.storage.bulk_load import load_frame
from segmentation_pipeline.storage.connection import create_db_engine
from segmentation_pipeline.storage.locks import mysql_lock_key
from segmentation_pipeline.storage.segment_store import lock_name
from segmentation_pipeline_tests.conftest import MYSQL_ADMIN_URL
from segmentation_pipeline_tests.reliability.conftest import fast_config, table_rows

pytestmark = [pytest.mark.mysql, pytest.mark.e2e]


def _waiting(admin: sa.Connection, key: str) -> list[int]:
    rows = admin.execute(sa.text(
        "SELECT ID FROM information_schema.PROCESSLIST WHERE STATE = 'User lock' AND INFO LIKE :pattern"
    ), {"pattern": f"%GET_LOCK('{key}'%"}).all()
    return sorted(int(r[0]) for r in rows)


def test_training_and_scoring_processes_racing_for_the_write_back_are_serialised(
    tmp_path, mysql_database_url, mlflow_server, suffix
):
    engine = create_db_engine(mysql_database_url)
    frame, _ = generate_customers(1500, seed=21)
    load_frame(engine, f"customers_{suffix}", frame)
    config = fast_config(tmp_path, mysql_database_url, mlflow_server, suffix)
    first = cli.run_pipeline(str(config))  # a champion to score with, and the tables to replace
    output = OutputConfig(segments_table=f"seg_{suffix}", rejects_table=f"rej_{suffix}", history_table=f"hist_{suffix}")
    key = mysql_lock_key(engine, lock_name(output))

    env = {k: v for k, v in os.environ.items() if k not in {"DAGSTER_HOME", "MLFLOW_TRACKING_URI"}}
    admin_engine = sa.create_engine(MYSQL_ADMIN_URL)
    holder = admin_engine.connect()
    watcher = admin_engine.connect()
    try:
        assert holder.execute(sa.text("SELECT GET_LOCK(:k, 0)"), {"k": key}).scalar() == 1
        commands = {
            "train": [sys.executable, "-m", "segmentation_pipeline.cli", "--config", str(config), "run", "--json"],
            "score": [sys.executable, "-m", "segmentation_pipeline.cli", "--config", str(config), "score"],
        }
        homes = {name: tmp_path / f"dagster_home_{name}" for name in commands}
        for home in homes.values():
            home.mkdir()
        processes = {name: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                            env={**env, "DAGSTER_HOME": str(homes[name])})
                     for name, cmd in commands.items()}
        deadline = time.monotonic() + 240
        while len(_waiting(watcher, key)) < 2:  # both have done all their work up to the write-back
            assert all(p.poll() is None for p in processes.values()), {
                n: p.communicate()[1][-2000:] for n, p in processes.items() if p.poll() is not None}
            assert time.monotonic() < deadline, "the two runs never both queued on the write lock"
            time.sleep(0.2)
        queued = _waiting(watcher, key)
        holder.execute(sa.text("SELECT RELEASE_LOCK(:k)"), {"k": key})
        # one of them now writes while the other keeps waiting on the lock
        lone_waiters = []
        while any(p.poll() is None for p in processes.values()) and time.monotonic() < deadline:
            waiting = _waiting(watcher, key)
            if len(waiting) == 1:
                lone_waiters.append(waiting[0])
            time.sleep(0.05)
        outputs = {name: p.communicate(timeout=60) for name, p in processes.items()}
    finally:
        holder.close()
        watcher.close()
        admin_engine.dispose()

    for name, (out, err) in outputs.items():
        assert processes[name].returncode == 0, f"{name}: {err[-3000:]}"
    assert lone_waiters and set(lone_waiters) <= set(queued), "the second run never waited for the first"

    segments = table_rows(engine, output.segments_table)
    rejects = table_rows(engine, output.rejects_table)
    history = table_rows(engine, output.history_table)
    engine.dispose()
    runs = history.groupby("dagster_run_id").size().to_dict()
    assert len(runs) == 3 and first["dagster_run_id"] in runs  # the first training run, then both
    [final] = set(segments["dagster_run_id"])  # exactly one run's output...
    assert set(rejects["dagster_run_id"]) <= {final}
    assert final != first["dagster_run_id"] and runs[final] == len(segments)  # ...a complete one
    assert segments["customer_id"].is_unique
    assert len(segments) + len(rejects) == len(frame)
