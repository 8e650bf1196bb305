"""The storage layer's own errors: callers catch these, never a driver's."""

from __future__ import annotations

import sqlite3

import sqlalchemy as sa

__all__ = ["TRANSIENT_MYSQL_CODES", "DatabaseUrlError", "SourceError", "WriteError", "is_transient"]


class SourceError(ValueError):
    """A table or column the pipeline needs is missing or unusable; says what exists instead."""


class WriteError(RuntimeError):
    """A write could not be completed or verified; the previous table is left untouched."""


class DatabaseUrlError(ValueError):
    """The database URL cannot be used; names the part at fault (scheme, port, charset), never the password."""


#: MySQL/MariaDB error codes that a later attempt can outlive: the server or the connection went
#: away, a statement was killed, a lock wait or a deadlock. Access denied, unknown columns, bad
#: values and duplicate keys are not here: retrying them only delays the same error.
TRANSIENT_MYSQL_CODES = frozenset({
    1040,  # too many connections
    1053,  # server shutdown in progress
    1205,  # lock wait timeout
    1213,  # deadlock
    1317,  # query execution was interrupted (KILL QUERY)
    1927,  # connection was killed (MariaDB)
    2002, 2003,  # can't connect
    2006,  # server has gone away
    2013,  # lost connection during query
    2055,  # lost connection (system error)
})


def _one_is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionError, TimeoutError)):  # includes a write lock another run holds
        return True
    if getattr(exc, "transient", False) is True:  # an error that says so itself (a lost write lock)
        return True
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sqlite3.OperationalError):
        return "locked" in str(exc) or "busy" in str(exc)
    args = getattr(exc, "args", ())
    code = args[0] if args else None
    module = type(exc).__module__
    return module.startswith("pymysql") and isinstance(code, int) and code in TRANSIENT_MYSQL_CODES


def is_transient(exc: BaseException) -> bool:
    """Whether a retry of the step could succeed: some error in the chain (causes and contexts) is
    a lost connection, a killed statement, a lock wait or a busy database."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if _one_is_transient(current):
            return True
        stack.extend((current.__cause__, current.__context__, getattr(current, "orig", None)))
    return False
