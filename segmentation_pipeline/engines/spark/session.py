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
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator

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

ENV_JDBC_JAR = "SPARK_JDBC_JAR"
#: Debian/Ubuntu ``libmariadb-java`` installs the MariaDB Connector/J here.
DEFAULT_JDBC_JAR = "/usr/share/java/mariadb-java-client.jar"

_MEMORY = re.compile(r"^\d+[kmgt]?b?$", re.IGNORECASE)


class SparkUnavailableError(RuntimeError):
    """Spark cannot run here: pyspark not installed, no JDBC driver jar, or the JVM did not start."""


def _default_jar() -> str:
    return os.environ.get(ENV_JDBC_JAR) or DEFAULT_JDBC_JAR


class SparkSettings(BaseModel):
    """Where and how big the Spark session is. Frozen: a session is built from one settings value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    master: str = Field("local[2]", description="local[N], spark://host:7077, yarn, k8s://...")
    app_name: str = "segmentation-pipeline"
    executor_memory: str | None = Field(None, description="e.g. 4g; cluster masters only")
    executor_cores: int | None = Field(None, ge=1)
    driver_memory: str | None = Field(None, description="e.g. 4g; in local mode this is the whole heap")
    jdbc_driver_jar: str = Field(default_factory=_default_jar, description="env SPARK_JDBC_JAR overrides the default")
    num_partitions: int = Field(
        8, ge=1, description="JDBC read/write partitions; also spark.sql.shuffle.partitions unless extra_conf sets it"
    )
    extra_conf: dict[str, str] = Field(default_factory=dict, description="any spark.* setting; wins over the defaults")
    kmeans_n_init: int = Field(
        1, ge=1, description="MLlib KMeans restarts per fit (sweep and final model); k-means|| seeding rarely needs more"
    )

    @field_validator("executor_memory", "driver_memory")
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        if value is not None and not _MEMORY.match(value):
            raise ValueError(f"memory {value!r} must look like 512m, 4g or 4096")
        return value

    @field_validator("extra_conf")
    @classmethod
    def _conf(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [key for key in value if not key.startswith("spark.")]
        if bad:
            raise ValueError(f"extra_conf keys must be spark.* settings, got {bad}")
        return {str(k): str(v) for k, v in value.items()}

    @property
    def is_local(self) -> bool:
        return self.master.startswith("local")

    def spark_conf(self) -> dict[str, str]:
        """Every setting the builder applies, defaults first and ``extra_conf`` last."""
        utc = "-Duser.timezone=UTC"
        conf: dict[str, str] = {
            "spark.app.name": self.app_name,
            "spark.master": self.master,
            "spark.jars": self.jdbc_driver_jar,
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.sql.shuffle.partitions": str(self.num_partitions),
            "spark.sql.session.timeZone": "UTC",
            # JDBC getTimestamp/setTimestamp use the JVM zone: UTC keeps DATETIME wall clocks as stored
            "spark.driver.extraJavaOptions": utc,
            "spark.executor.extraJavaOptions": utc,
            "spark.sql.execution.arrow.pyspark.enabled": "true",
        }
        if self.is_local:
            conf["spark.driver.host"] = "127.0.0.1"
            conf["spark.driver.bindAddress"] = "127.0.0.1"
        if self.executor_memory:
            conf["spark.executor.memory"] = self.executor_memory
        if self.executor_cores:
            conf["spark.executor.cores"] = str(self.executor_cores)
        if self.driver_memory:
            conf["spark.driver.memory"] = self.driver_memory
        conf.update(self.extra_conf)
        return conf


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
