"""Only errors a later attempt can outlive are retried; the rest fail at once with their cause."""

from __future__ import annotations

import dagster as dg
import pytest
import sqlalchemy as sa

from segmentation_pipeline.assets.retries import retry_only_transient
from segmentation_pipeline.storage.errors import SourceError, WriteError, is_transient
from segmentation_pipeline.storage.locks import WriteLockLost, WriteLockTimeout


@pytest.mark.mysql
def test_real_server_errors_are_classified(mysql_database_url):
    engine = sa.create_engine(mysql_database_url)
    with engine.connect() as conn, pytest.raises(sa.exc.DBAPIError) as unknown_column:
        conn.execute(sa.text("SELECT no_such_column FROM (SELECT 1 AS a) t"))
    assert not is_transient(unknown_column.value)  # 1054: the same query fails the same way again

    with engine.connect() as victim, engine.connect() as admin:
        victim_id = victim.execute(sa.text("SELECT CONNECTION_ID()")).scalar_one()
        admin.execute(sa.text(f"KILL CONNECTION {int(victim_id)}"))
        with pytest.raises(sa.exc.DBAPIError) as killed:
            victim.execute(sa.text("SELECT 1"))
    assert is_transient(killed.value)  # server gone / connection lost: a new connection heals it
    engine.dispose()


def test_wrapped_and_own_errors():
    try:
        try:
            raise ConnectionResetError("peer reset")
        except ConnectionResetError as inner:
            raise WriteError("LOAD DATA into 'x__staging' failed") from inner
    except WriteError as wrapped:
        assert is_transient(wrapped)  # a write that failed because the connection dropped
    assert is_transient(WriteLockTimeout("held by another run"))
    assert is_transient(WriteLockLost("lock lost"))
    assert not is_transient(SourceError("table 'customers' has no column 'age'"))
    assert not is_transient(ValueError("centroids must be 2-D"))
    assert not is_transient(WriteError("duplicate key"))


def _attempts_of(error: BaseException) -> tuple[int, dg.ExecuteInProcessResult]:
    attempts = []

    @dg.asset(retry_policy=dg.RetryPolicy(max_retries=2, delay=0))
    def writer() -> None:
        attempts.append(1)
        with retry_only_transient():
            raise error

    result = dg.materialize([writer], raise_on_error=False)
    return len(attempts), result


def test_non_transient_error_fails_once_with_its_cause():
    attempts, result = _attempts_of(SourceError("table 'customers' has no column 'age'"))
    assert attempts == 1 and not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "no column 'age'" in failure.event_specific_data.error.message
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]


def test_transient_error_is_retried_by_the_policy():
    attempts, result = _attempts_of(ConnectionResetError("server closed the connection"))
    assert attempts == 3 and not result.success
    assert len([e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]) == 2
