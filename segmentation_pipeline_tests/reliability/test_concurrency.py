"""Two processes write the segment tables of the same MariaDB database at the same moment.

Two real ``python`` processes each publish a different run through
``storage.segment_store.publish_segments``, released by a shared start time. The database lock
(``GET_LOCK``) must serialise them: no errors, the second waits for the first (its lock wait is
measured and seen in ``information_schema.PROCESSLIST``), the final tables are exactly one run's
output, the history holds both runs, and a reader running throughout never sees the segments
of one run next to the rejects of another.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import sqlalchemy as sa

from segmentation_pipeline.storage.connection import create_db_engine
from segmentation_pipeline_tests.conftest import MYSQL_ADMIN_URL
from segmentation_pipeline_tests.reliability.conftest import database_name, table_rows

pytestmark = pytest.mark.mysql

N_CUSTOMERS = 300_000  # about a second of write-back per run, so the two runs really overlap

WRITER = textwrap.dedent(
    """
    import json, sys, time
    from contextlib import contextmanager

    import numpy as np
    import pandas as pd

    from segmentation_pipeline.config import OutputConfig
    from segmentation_pipeline.core.segment_tables import build_rejects_table, build_segments_table
    from segmentation_pipeline.storage import segment_store
    from segmentation_pipeline.storage.connection import create_db_engine

    url, suffix, run, n, n_rejected, start_at = sys.argv[1:]
    n, n_rejected = int(n), int(n_rejected)
    events = {}
    real_lock = segment_store.write_lock

    @contextmanager
    def timed_lock(engine, name, timeout_s):  # the real lock, with timestamps around it
        events["lock_requested"] = time.time()
        with real_lock(engine, name, timeout_s):
            events["lock_acquired"] = time.time()
            try:
                yield
            finally:
                events["lock_releasing"] = time.time()

    segment_store.write_lock = timed_lock
    ids = np.arange(1, n + 1)
    clean = pd.DataFrame({"customer_id": ids[n_rejected:], "is_outlier": False, "outlier_reason": ""})
    segments = build_segments_table(
        clean, "customer_id", (ids[n_rejected:] + len(run)) % 4, {0: "A", 1: "B", 2: "C", 3: "D"},
        model_name="m", model_version=run, mlflow_run_id=run, dagster_run_id=run,
    )
    rejects = build_rejects_table(
        pd.DataFrame({"customer_id": ids[:n_rejected], "reason": "missing:age", "detail": run}),
        mlflow_run_id=run, dagster_run_id=run,
    )
    output = OutputConfig(segments_table=f"seg_{suffix}", rejects_table=f"rej_{suffix}",
                          history_table=f"hist_{suffix}")
    engine = create_db_engine(url)
    time.sleep(max(0.0, float(start_at) - time.time()))
    events["started"] = time.time()
    segment_store.publish_segments(engine, output, segments, rejects, run_key=run, lock_timeout_s=300)
    events["done"] = time.time()
    print(json.dumps(events))
    """
)


def _consistent_reader(url: str, suffix: str, stop: threading.Event, seen: list, errors: list) -> None:
    """One statement reads both tables, so it sees one moment: one run in both, all customers."""
    engine = create_db_engine(url)
    query = sa.text(
        f"SELECT (SELECT COUNT(*) FROM seg_{suffix}), (SELECT COUNT(*) FROM rej_{suffix}), "
        f"(SELECT GROUP_CONCAT(DISTINCT dagster_run_id) FROM seg_{suffix}), "
        f"(SELECT GROUP_CONCAT(DISTINCT dagster_run_id) FROM rej_{suffix})"
    )
    try:
        with engine.connect() as conn:
            while not stop.is_set():
                try:
                    row = tuple(conn.execute(query).one())
                except sa.exc.ProgrammingError:  # no tables yet
                    conn.rollback()
                    time.sleep(0.05)
                    continue
                seen.append(row)
                conn.rollback()  # a fresh snapshot for the next read
                time.sleep(0.02)
    except Exception as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)
    finally:
        engine.dispose()


def _lock_waiters(database: str, stop: threading.Event, waits: list) -> None:
    """Connections of this database blocked in GET_LOCK, as the server reports them."""
    engine = sa.create_engine(MYSQL_ADMIN_URL)
    with engine.connect() as conn:
        while not stop.is_set():
            rows = conn.execute(sa.text(
                "SELECT ID, STATE, INFO FROM information_schema.PROCESSLIST "
                "WHERE STATE = 'User lock' AND INFO LIKE 'SELECT GET_LOCK(%%' AND INFO LIKE :db"
            ), {"db": f"%{database}.segmentation:%"}).all()
            waits.extend(tuple(r) for r in rows)
            time.sleep(0.05)
    engine.dispose()


def test_two_processes_publishing_at_once_are_serialised_by_the_database_lock(
    tmp_path, mysql_database_url, suffix
):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    start_at = time.time() + 8  # both processes import, build their frames, then start together
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    runs = {"run-A": 1000, "run-BB": 2500}  # different rejects, different segment ids
    stop = threading.Event()
    seen: list = []
    reader_errors: list = []
    waits: list = []
    threads = [
        threading.Thread(target=_consistent_reader, args=(mysql_database_url, suffix, stop, seen, reader_errors)),
        threading.Thread(target=_lock_waiters, args=(database_name(mysql_database_url), stop, waits)),
    ]
    for thread in threads:
        thread.start()
    try:
        processes = {
            run: subprocess.Popen(
                [sys.executable, str(script), mysql_database_url, suffix, run, str(N_CUSTOMERS), str(n_rejected),
                 str(start_at)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            )
            for run, n_rejected in runs.items()
        }
        outputs = {run: p.communicate(timeout=240) for run, p in processes.items()}
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)

    for run, (out, err) in outputs.items():
        assert processes[run].returncode == 0, err[-3000:]
    events = {run: json.loads(out.strip().splitlines()[-1]) for run, (out, _) in outputs.items()}
    first, second = sorted(events, key=lambda r: events[r]["lock_acquired"])
    a, b = events[first], events[second]
    # they started together, and the lock made the second wait until the first had finished
    assert abs(a["started"] - b["started"]) < 1.0
    assert b["lock_acquired"] >= a["lock_releasing"]
    # the second asked while the first held the lock, so it waited (however fast the write-back)
    assert b["lock_requested"] < a["lock_releasing"] - 0.1, "the second writer did not wait"
    assert waits, "no connection was ever seen waiting in GET_LOCK"

    engine = create_db_engine(mysql_database_url)
    try:
        segments = table_rows(engine, f"seg_{suffix}")
        rejects = table_rows(engine, f"rej_{suffix}")
        history = table_rows(engine, f"hist_{suffix}")
    finally:
        engine.dispose()
    # the final tables are exactly the second run's output
    assert set(segments["dagster_run_id"]) == {second} == set(rejects["dagster_run_id"])
    assert len(segments) == N_CUSTOMERS - runs[second] and len(rejects) == runs[second]
    assert segments["customer_id"].is_unique
    assert sorted([*segments["customer_id"].astype(str), *rejects["customer_id"]], key=int) == [
        str(i) for i in range(1, N_CUSTOMERS + 1)
    ]
    expected_ids = (segments["customer_id"] + len(second)) % 4
    assert (segments["segment_id"] == expected_ids).all()
    # both runs are in the history, once each
    assert history.groupby("dagster_run_id").size().to_dict() == {
        run: N_CUSTOMERS - n_rejected for run, n_rejected in runs.items()
    }
    # a reader during both writes saw whole, single-run states only
    assert not reader_errors, reader_errors
    assert seen, "the reader never saw the tables"
    for n_seg, n_rej, seg_runs, rej_runs in seen:
        assert seg_runs == rej_runs and seg_runs in runs, (n_seg, n_rej, seg_runs, rej_runs)
        assert (n_seg, n_rej) == (N_CUSTOMERS - runs[seg_runs], runs[seg_runs])
    assert {s[2] for s in seen} == set(runs), "the reader saw only one of the two runs"
