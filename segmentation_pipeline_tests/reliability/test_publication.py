"""All or nothing: a run's segments, rejects and history become visible together (issue 20, 1 and 3).

The narrow windows (between the history commit and the swap, between the swap and its
completion mark) are hit exactly with fault-injection points; the run is ended there by a real
``os._exit`` in a child process (nothing of it runs afterwards, as with ``kill -9``) or its lock
session is KILLed on the real MariaDB server.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from segmentation_pipeline.config import OutputConfig
from segmentation_pipeline.storage.connection import create_db_engine
from segmentation_pipeline.storage.faults import injected
from segmentation_pipeline.storage.locks import WriteLockLost, mysql_lock_key
from segmentation_pipeline.storage.publication import (
    PENDING_JOB,
    ROLLED_BACK_JOB,
    remove_dead_scratch,
)
from segmentation_pipeline.storage.segment_store import (
    FAILURES_TABLE,
    lock_name,
    publish_segments,
)
from segmentation_pipeline_tests.reliability.conftest import (
    output_tables,
    table_rows,
    writeback_frames,
)

pytestmark = pytest.mark.mysql

N = 500
REPO = Path(__file__).resolve().parents[2]


def frames(run: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One run's write-back: customers 1..N, every tenth rejected."""
    ids = np.arange(1, N + 1, dtype=np.int64)
    clean = ids[ids % 10 != 0]
    return writeback_frames(run, clean, ids[ids % 10 == 0], np.arange(len(clean)) % 3, {0: "A", 1: "B", 2: "C"})


def output_for(suffix: str) -> OutputConfig:
    return output_tables(suffix)


def publish(url: str, suffix: str, run: str) -> None:
    engine = create_db_engine(url)
    try:
        segments, rejects = frames(run)
        publish_segments(engine, output_for(suffix), segments, rejects, run_key=run, lock_timeout_s=30)
    finally:
        engine.dispose()


def publish_and_die_at(url: str, suffix: str, run: str, point: str) -> None:
    """Child process: publish ``run`` and end the process at ``point`` like ``kill -9`` (no cleanup)."""
    with injected(point, lambda **_: os._exit(9)):
        publish(url, suffix, run)


def _die_in_child(url: str, suffix: str, run: str, point: str) -> None:
    code = (f"from segmentation_pipeline_tests.reliability.test_publication import publish_and_die_at; "
            f"publish_and_die_at({url!r}, {suffix!r}, {run!r}, {point!r})")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 9, result.stderr[-2000:]


def _checksum(engine: sa.Engine, table: str) -> str:
    rows = table_rows(engine, table).sort_values("customer_id").to_csv(index=False)
    return hashlib.sha256(rows.encode()).hexdigest()


def _runs(engine: sa.Engine, output: OutputConfig) -> dict[str, int]:
    counts = pd.read_sql(f"SELECT dagster_run_id, COUNT(*) AS n FROM `{output.history_table}` GROUP BY 1", engine)
    return dict(zip(counts["dagster_run_id"], counts["n"], strict=True))


def _journal(engine: sa.Engine) -> dict[str, str]:
    rows = pd.read_sql(f"SELECT run_id, job_name FROM `{FAILURES_TABLE}`", engine)
    return dict(zip(rows["run_id"], rows["job_name"], strict=True))


def test_killed_after_swap_is_published_with_its_history_and_the_next_run_marks_it(
    engine, mysql_database_url, suffix
) -> None:
    """Finding 1: the window the history used to miss (after RENAME, before the history commit)."""
    output = output_for(suffix)
    publish(mysql_database_url, suffix, f"r1-{suffix}")
    _die_in_child(mysql_database_url, suffix, f"r2-{suffix}", "after_swap")

    live = table_rows(engine, output.segments_table)
    assert set(live["dagster_run_id"]) == {f"r2-{suffix}"}
    assert _runs(engine, output) == {f"r1-{suffix}": len(live), f"r2-{suffix}": len(live)}  # history with it
    assert _journal(engine)[f"r2-{suffix}"] == PENDING_JOB

    publish(mysql_database_url, suffix, f"r3-{suffix}")  # any later run repairs: rolls forward
    assert f"r2-{suffix}" not in _journal(engine)
    assert _runs(engine, output) == {f"r{i}-{suffix}": len(live) for i in (1, 2, 3)}


@pytest.mark.parametrize("point", ["before_swap", "before_history_commit", "before_load"])
def test_killed_before_swap_keeps_the_previous_state_and_the_next_run_rolls_back(
    engine, mysql_database_url, suffix, point
) -> None:
    output = output_for(suffix)
    publish(mysql_database_url, suffix, f"r1-{suffix}")
    before = {t: _checksum(engine, t) for t in (output.segments_table, output.rejects_table)}
    _die_in_child(mysql_database_url, suffix, f"r2-{suffix}", point)

    assert {t: _checksum(engine, t) for t in before} == before
    publish(mysql_database_url, suffix, f"r3-{suffix}")
    n = len(table_rows(engine, output.segments_table))
    assert _runs(engine, output) == {f"r1-{suffix}": n, f"r3-{suffix}": n}  # r2 never visible after repair
    if point == "before_swap":  # its history had committed: the repair undid it and left it visible as failed
        assert _journal(engine)[f"r2-{suffix}"] == ROLLED_BACK_JOB
    names = set(sa.inspect(engine).get_table_names())
    assert not {f"{t}__staging" for t in before} & names  # leftovers removed


def test_lost_lock_stops_before_the_live_tables_and_leaves_the_new_holders_staging(
    engine, mysql_database_url, suffix
) -> None:
    """Finding 3: KILL CONNECTION on the lock session mid write-back."""
    output = output_for(suffix)
    publish(mysql_database_url, suffix, f"r1-{suffix}")
    before = {t: _checksum(engine, t) for t in (output.segments_table, output.rejects_table)}
    key = mysql_lock_key(engine, lock_name(output))
    killed: list[int] = []

    def steal(table: str, staging: str) -> None:
        if table != output.rejects_table or killed:
            return
        with engine.connect() as conn:
            holder = conn.execute(sa.text("SELECT IS_USED_LOCK(:k)"), {"k": key}).scalar()
            conn.exec_driver_sql(f"KILL CONNECTION {int(holder)}")
            killed.append(int(holder))
            # another run takes the lock at once and stages its own rows
            conn.exec_driver_sql(f"CREATE TABLE `{staging}` (customer_id BIGINT)")
            conn.exec_driver_sql(f"INSERT INTO `{staging}` VALUES (42)")
            conn.commit()

    segments, rejects = frames(f"r2-{suffix}")
    with injected("before_load", steal), pytest.raises(WriteLockLost, match="lost"):
        publish_segments(engine, output, segments, rejects, run_key=f"r2-{suffix}", lock_timeout_s=30)
    assert killed
    assert {t: _checksum(engine, t) for t in before} == before
    assert table_rows(engine, f"{output.rejects_table}__staging")["customer_id"].tolist() == [42]
    assert f"r2-{suffix}" not in _runs(engine, output)
    assert f"r2-{suffix}" not in _journal(engine)
    publish(mysql_database_url, suffix, f"r3-{suffix}")
    assert set(table_rows(engine, output.segments_table)["dagster_run_id"]) == {f"r3-{suffix}"}


def test_scratch_folders_of_dead_writers_are_removed(tmp_path: Path) -> None:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead = tmp_path / f"segmentation-load-{int(child.stdout)}-x"
    (dead / "chunk0.tsv").parent.mkdir()
    (dead / "chunk0.tsv").write_text("1\t2\n" * 1000)
    alive = tmp_path / f"segmentation-load-{os.getpid()}-y"
    alive.mkdir()
    assert remove_dead_scratch(tmp_path) == [dead]
    assert not dead.exists() and alive.exists()


def test_lock_lost_after_the_history_commit_undoes_only_this_runs_history(engine, mysql_database_url, suffix) -> None:
    """The narrowest window: history and pending mark committed, the lock session killed before the swap."""
    output = output_for(suffix)
    publish(mysql_database_url, suffix, f"r1-{suffix}")
    before = {t: _checksum(engine, t) for t in (output.segments_table, output.rejects_table)}
    key = mysql_lock_key(engine, lock_name(output))

    def kill_lock(**_: object) -> None:
        with engine.connect() as conn:
            holder = conn.execute(sa.text("SELECT IS_USED_LOCK(:k)"), {"k": key}).scalar()
            conn.exec_driver_sql(f"KILL CONNECTION {int(holder)}")

    segments, rejects = frames(f"r2-{suffix}")
    with injected("before_swap", kill_lock), pytest.raises(WriteLockLost):
        publish_segments(engine, output, segments, rejects, run_key=f"r2-{suffix}", lock_timeout_s=30)
    assert {t: _checksum(engine, t) for t in before} == before
    assert f"r2-{suffix}" not in _runs(engine, output)
    assert _journal(engine)[f"r2-{suffix}"] == ROLLED_BACK_JOB
