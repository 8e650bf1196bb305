"""Nothing lost, nothing half-written: the write-back's connection is KILLed mid-load on MariaDB.

A watcher thread finds the ``LOAD DATA`` into a staging (or history) table in
``information_schema.PROCESSLIST`` and ``KILL``s that connection on the server while the rows
are in flight. The previous tables must stay intact and readable (also *during* the write),
the error must name the table and the (masked) database, and a retry must complete with
every customer exactly once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from segmentation_pipeline.config import OutputConfig
from segmentation_pipeline.storage.errors import WriteError
from segmentation_pipeline.storage.segment_store import publish_segments
from segmentation_pipeline_tests.reliability.conftest import (
    database_name,
    table_rows,
    writeback_frames,
)

pytestmark = pytest.mark.mysql

N_CUSTOMERS = 3000


def _run_frames(run: str, n_rejected: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One run's write-back: customers 1..N, the first ``n_rejected`` of a shuffled order rejected."""
    rng = np.random.default_rng(seed)
    ids = rng.permutation(np.arange(1, N_CUSTOMERS + 1, dtype=np.int64))
    rejected, clean = np.sort(ids[:n_rejected]), np.sort(ids[n_rejected:])
    return writeback_frames(run, clean, rejected, rng.integers(0, 4, len(clean)), {0: "A", 1: "B", 2: "C", 3: "D"},
                            model_version=run[-1])


def _output(suffix: str) -> OutputConfig:
    return OutputConfig(segments_table=f"seg_{suffix}", rejects_table=f"rej_{suffix}", history_table=f"hist_{suffix}")


def _publish(engine: sa.Engine, output: OutputConfig, run: str, frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    publish_segments(engine, output, frames[0], frames[1], run_key=run, lock_timeout_s=30)


def _snapshot(engine: sa.Engine, output: OutputConfig) -> dict[str, pd.DataFrame]:
    return {
        "segments": table_rows(engine, output.segments_table).sort_values("customer_id", ignore_index=True),
        "rejects": table_rows(engine, output.rejects_table).sort_values("customer_id", ignore_index=True),
        "history": table_rows(engine, output.history_table)
        .sort_values(["dagster_run_id", "customer_id"], ignore_index=True),
    }


def _assert_same(before: dict[str, pd.DataFrame], after: dict[str, pd.DataFrame]) -> None:
    for name in before:
        pd.testing.assert_frame_equal(after[name], before[name], obj=name)


def _assert_every_customer_once(engine: sa.Engine, output: OutputConfig, run: str) -> None:
    segments = table_rows(engine, output.segments_table)
    rejects = table_rows(engine, output.rejects_table)
    assert set(segments["dagster_run_id"]) == {run} and set(rejects["dagster_run_id"]) == {run}
    assert segments["customer_id"].is_unique
    ids = [*segments["customer_id"].astype(str), *rejects["customer_id"].astype(str)]
    assert len(ids) == len(set(ids)) == N_CUSTOMERS, "a customer is missing or in both tables"
    assert set(ids) == {str(i) for i in range(1, N_CUSTOMERS + 1)}


def _leftovers(engine: sa.Engine, suffix: str) -> list[str]:
    return sorted(t for t in sa.inspect(engine).get_table_names() if suffix in t and "__" in t)


def test_kill_during_segments_staging_load_keeps_previous_tables_readable_and_retry_completes(
    engine, mysql_database_url, suffix, kill_load_data
):
    output = _output(suffix)
    run1, run2 = _run_frames("run-1", 40, seed=1), _run_frames("run-2", 90, seed=2)
    _publish(engine, output, "run-1", run1)
    before = _snapshot(engine, output)

    def reader(admin: sa.Engine) -> tuple[int, set[str]]:  # a dashboard reading mid-write
        live = pd.read_sql(f"SELECT customer_id, dagster_run_id FROM `{database_name(mysql_database_url)}`."
                           f"`{output.segments_table}`", admin)
        return len(live), set(live["dagster_run_id"])

    staging = f"{output.segments_table}__staging"
    with kill_load_data(database_name(mysql_database_url), staging, before_kill=reader) as killer:
        with pytest.raises(WriteError) as failure:
            _publish(engine, output, "run-2", run2)
    assert len(killer.killed) == 1, "the LOAD DATA was never seen in the process list"
    message = str(failure.value)
    assert staging in message and "gone away" in message.lower()
    assert "mysql+pymysql://root@127.0.0.1" in message  # where, masked
    # readers saw the complete previous table while the new rows were in flight
    assert killer.observations == [(N_CUSTOMERS - 40, {"run-1"})]
    _assert_same(before, _snapshot(engine, output))
    assert _leftovers(engine, suffix) == []

    _publish(engine, output, "run-2", run2)  # the retry (same run key)
    _assert_every_customer_once(engine, output, "run-2")
    history = table_rows(engine, output.history_table).groupby("dagster_run_id").size().to_dict()
    assert history == {"run-1": N_CUSTOMERS - 40, "run-2": N_CUSTOMERS - 90}


def test_kill_during_rejects_load_keeps_segments_and_rejects_consistent(
    engine, mysql_database_url, suffix, kill_load_data
):
    """The two tables are one unit: a failure after segments were staged must not publish them
    alone (run-2's segments next to run-1's rejects would put customers in both or neither)."""
    output = _output(suffix)
    _publish(engine, output, "run-1", _run_frames("run-1", 40, seed=1))
    before = _snapshot(engine, output)
    staging = f"{output.rejects_table}__staging"
    with kill_load_data(database_name(mysql_database_url), staging) as killer:
        with pytest.raises(WriteError, match=staging):
            _publish(engine, output, "run-2", _run_frames("run-2", 90, seed=2))
    assert len(killer.killed) == 1
    _assert_same(before, _snapshot(engine, output))
    assert _leftovers(engine, suffix) == []
    _publish(engine, output, "run-2", _run_frames("run-2", 90, seed=2))
    _assert_every_customer_once(engine, output, "run-2")


def test_kill_during_history_append_of_a_rerun_keeps_one_copy_per_run_key(
    engine, mysql_database_url, suffix, kill_load_data
):
    output = _output(suffix)
    run2 = _run_frames("run-2", 90, seed=2)
    _publish(engine, output, "run-1", _run_frames("run-1", 40, seed=1))
    _publish(engine, output, "run-2", run2)
    before = _snapshot(engine, output)
    # re-running run-2 replaces its history rows (DELETE + LOAD DATA in one transaction): kill the load
    with kill_load_data(database_name(mysql_database_url), output.history_table) as killer:
        with pytest.raises(WriteError, match=output.history_table):
            _publish(engine, output, "run-2", run2)
    assert len(killer.killed) == 1
    after = _snapshot(engine, output)
    pd.testing.assert_frame_equal(after["history"], before["history"], obj="history")  # DELETE rolled back
    _publish(engine, output, "run-2", run2)
    _publish(engine, output, "run-2", run2)  # and once more: idempotent
    history = table_rows(engine, output.history_table)
    assert history.groupby("dagster_run_id").size().to_dict() == {"run-1": N_CUSTOMERS - 40, "run-2": N_CUSTOMERS - 90}
    assert not history.duplicated(["dagster_run_id", "customer_id"]).any()
    _assert_every_customer_once(engine, output, "run-2")
