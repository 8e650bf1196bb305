"""SparkSession from a small frozen settings model; a context manager owns its lifetime.

The defaults suit one machine (``local[2]``): no UI, UTC everywhere (JDBC DATETIME values are
read and written as wall-clock UTC, the same as the local engine), quiet logs, and the
MariaDB/MySQL JDBC driver jar on the class path. A missing jar, a missing ``pyspark`` or a JVM
that does not start all raise :class:`SparkUnavailableError` with the reason, so callers (and
tests) can tell "Spark cannot run here" from a pipeline error.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from segmentation_pipeline.config import DEFAULT_JDBC_JAR, ENV_JDBC_JAR, SparkSettings

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_JDBC_JAR",
    "ENV_JDBC_JAR",
    "SparkSettings",
    "SparkUnavailableError",
    "build_session",
    "spark_session",
]

class SparkUnavailableError(RuntimeError):
    """Spark cannot run here: pyspark not installed, no JDBC driver jar, or the JVM did not start."""



def build_session(settings: SparkSettings | None = None) -> "SparkSession":
    """A SparkSession for ``settings``; the caller stops it (or use :func:`spark_session`).

    If this process already runs a SparkContext, Spark returns that one and settings that only
    apply at JVM start (master, jars, memory) do not change; a warning says so.
    """
    settings = settings or SparkSettings()
    jar = Path(settings.jdbc_driver_jar)
    if not jar.is_file():
        raise SparkUnavailableError(
            f"JDBC driver jar not found at {jar}: install it (Debian/Ubuntu: apt-get install -y libmariadb-java) "
            f"or point ${ENV_JDBC_JAR} / SparkSettings.jdbc_driver_jar at a MariaDB Connector/J jar"
        )
    try:
        from pyspark import SparkContext
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise SparkUnavailableError(
            f"pyspark is not installed ({exc}); install the optional extra: pip install -e '.[spark]'"
        ) from exc
    if SparkContext._active_spark_context is not None:  # noqa: SLF001 - the only way to ask without creating one
        log.warning("a SparkContext is already running in this process; reusing it, JVM-level settings unchanged")
    if settings.is_local:
        # Spark otherwise warns that the host name resolves to loopback and guesses an interface.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        # Python workers (scoring with the registered sklearn model) must run this interpreter,
        # not whatever "python3" is on PATH; on a cluster the executors' Python is the cluster's.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder
    for key, value in settings.spark_conf().items():
        builder = builder.config(key, value)
    try:
        session = builder.getOrCreate()
    except Exception as exc:  # noqa: BLE001 - py4j/pyspark raise many types when the JVM cannot start
        raise SparkUnavailableError(
            f"could not start Spark (master {settings.master!r}; Java 17 must be on PATH or JAVA_HOME): {exc}"
        ) from exc
    session.sparkContext.setLogLevel(os.environ.get("SPARK_LOG_LEVEL", "WARN"))
    return session


@contextmanager
def spark_session(settings: SparkSettings | None = None) -> Iterator["SparkSession"]:
    """Build a session and stop it on exit (only when this call started the SparkContext)."""
    try:
        from pyspark import SparkContext
    except ImportError:
        owned = True  # build_session raises SparkUnavailableError with the install hint
    else:
        owned = SparkContext._active_spark_context is None  # noqa: SLF001
    session = build_session(settings)
    try:
        yield session
    finally:
        if owned:
            session.stop()
