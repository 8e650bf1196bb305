"""write_lock against real MariaDB and SQLite."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from segmentation_pipeline.storage.bulk_load import write_table_atomic
from segmentation_pipeline.storage.locks import WriteLockTimeout, write_lock
from segmentation_pipeline_tests.storage.frames import segments, table_names


def test_second_lock_holder_times_out(db: sa.Engine, table_name: str) -> None:
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with write_lock(db, table_name, timeout_s=5):
            held.set()
            release.wait(30)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(10)
        started = time.monotonic()
        with pytest.raises(WriteLockTimeout) as info, write_lock(db, table_name, timeout_s=1):
            pass
        assert time.monotonic() - started >= 0.9
        assert repr(table_name) in str(info.value) and "1s" in str(info.value)
        with pytest.raises(WriteLockTimeout):
            write_table_atomic(db, "locked_out", segments(3), lock_name=table_name, lock_timeout_s=0)
        assert "locked_out" not in table_names(db)
        with write_lock(db, "another_name", timeout_s=1):
            pass  # other names are independent
    finally:
        release.set()
        thread.join(10)
    with write_lock(db, table_name, timeout_s=1):
        pass
