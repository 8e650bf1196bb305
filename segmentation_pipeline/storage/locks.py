"""Write locks: one writer per table across processes and hosts, released if the holder dies."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from segmentation_pipeline.storage.connection import is_mysql, masked_url

try:  # POSIX only; elsewhere SQLite locks fall back to in-process locks
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["HeldLock", "WriteLockLost", "WriteLockTimeout", "lock_file_path", "mysql_lock_key", "write_lock"]


class WriteLockTimeout(TimeoutError):
    """Another run holds the write lock; raised instead of writing concurrently."""


class WriteLockLost(RuntimeError):
    """The server dropped this run's lock (its connection was killed or timed out): another run may
    be writing, so this one stops before it touches any live table."""

    transient = True  # a retry takes the lock again (storage.errors.is_transient)


@dataclass
class HeldLock:
    """A held write lock. On MySQL ``conn`` is the session that owns ``GET_LOCK``: the swap runs on
    it, so a killed lock session cannot swap, and :meth:`verify` proves ownership before each step."""

    name: str
    url: str
    conn: sa.Connection | None = None
    key: str = ""

    def verify(self) -> None:
        """Raise :class:`WriteLockLost` unless this session still owns the lock (also keeps it alive)."""
        if self.conn is None:
            return
        try:
            owner, me = self.conn.execute(
                sa.text("SELECT IS_USED_LOCK(:k), CONNECTION_ID()"), {"k": self.key}
            ).one()
            lost = None if owner == me else f"is now held by connection {owner}, not this run's ({me})"
        except sa.exc.DBAPIError as exc:
            lost = f"was lost (its connection failed: {getattr(exc, 'orig', exc)})"
        if lost is not None:
            raise WriteLockLost(
                f"write lock {self.name!r} on {self.url} {lost}; stopped before touching the live tables, re-run"
            )


_local_locks: dict[str, threading.Lock] = {}
_local_locks_guard = threading.Lock()


def mysql_lock_key(engine: sa.Engine, name: str) -> str:
    """GET_LOCK names are server-wide: scope them to the database, within MySQL's 64 chars."""
    key = f"{engine.url.database or ''}.{name}"
    if len(key) > 64:
        key = f"seg.{hashlib.sha256(key.encode()).hexdigest()[:56]}"
    return key


def lock_file_path(engine: sa.Engine, name: str) -> Path | None:
    """The flock file next to a SQLite database; None for in-memory databases (in-process locks)."""
    database = engine.url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    safe = "".join(ch if ch.isalnum() or ch in "_-." else "_" for ch in name)[:60]
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return Path(database).expanduser().resolve().with_name(f"{Path(database).name}.{safe}.{digest}.lock")


@contextmanager
def write_lock(engine: sa.Engine, name: str, timeout_s: int) -> Iterator[HeldLock]:
    """Serialise writers of one table across processes and hosts.

    MySQL: ``GET_LOCK`` on a dedicated connection (released by the server if the process
    dies), yielded in the :class:`HeldLock` so the swap can run on it. SQLite: ``flock`` on a
    file next to the database (released by the kernel if the
    process dies). Raises :class:`WriteLockTimeout` naming the lock and the wait.
    """
    if not name:
        raise ValueError("lock name must not be empty")
    if is_mysql(engine):
        key = mysql_lock_key(engine, name)
        conn = engine.connect()
        try:
            got = conn.execute(sa.text("SELECT GET_LOCK(:k, :t)"), {"k": key, "t": int(timeout_s)}).scalar()
            if got != 1:
                holder = conn.execute(sa.text("SELECT IS_USED_LOCK(:k)"), {"k": key}).scalar()
                raise WriteLockTimeout(
                    f"could not acquire write lock {name!r} within {timeout_s}s on {masked_url(engine)}: "
                    f"another run holds it (connection id {holder})"
                )
            try:
                yield HeldLock(name, masked_url(engine), conn, key)
            finally:
                try:
                    conn.execute(sa.text("SELECT RELEASE_LOCK(:k)"), {"k": key})
                except sa.exc.SQLAlchemyError:  # a killed session: the server dropped the lock with it
                    conn.invalidate()
        finally:
            conn.close()
        return

    path = lock_file_path(engine, name) if fcntl is not None else None
    if path is None:
        with _local_locks_guard:
            lock = _local_locks.setdefault(f"{masked_url(engine)}|{name}", threading.Lock())
        if not lock.acquire(timeout=max(timeout_s, 0)):
            raise WriteLockTimeout(f"could not acquire write lock {name!r} within {timeout_s}s on {masked_url(engine)}")
        try:
            yield HeldLock(name, masked_url(engine))
        finally:
            lock.release()
        return

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + max(timeout_s, 0)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise WriteLockTimeout(
                        f"could not acquire write lock {name!r} within {timeout_s}s on {masked_url(engine)} "
                        f"(lock file {path}): another run holds it"
                    ) from None
                time.sleep(0.05)
        try:
            yield HeldLock(name, masked_url(engine))
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)

