"""Typed Dagster resources: the pipeline config, the customer database, MLflow, the compute engine, asset storage.

Thin by design: each resource turns Dagster config into the plain objects the core and storage
modules take (a ``PipelineConfig``, a SQLAlchemy engine, a ``TrackingTarget``).
"""

from __future__ import annotations

import json
import pickle
import shutil
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
import pandas as pd
import sqlalchemy as sa
from pydantic import PrivateAttr

from segmentation_pipeline.config import PipelineConfig, load_config
from segmentation_pipeline.engines import check_engine_algorithm
from segmentation_pipeline.storage.connection import create_db_engine
from segmentation_pipeline.engines.spark.handoff import MARKER, SparkHandoff, load_handoff, save_handoff
from segmentation_pipeline.storage.mlflow_registry import TrackingTarget
from segmentation_pipeline.storage.tables import parquet_table, write_table

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession

    from segmentation_pipeline.engines.base import ComputeEngine


@lru_cache(maxsize=16)
def _load(path: str | None, overrides_json: str) -> PipelineConfig:
    return load_config(path, json.loads(overrides_json))


class SettingsResource(dg.ConfigurableResource):
    """Which YAML config to use (None: $SEGMENTATION_CONFIG, then configs/default.yaml)."""

    config_path: str | None = None
    overrides_json: str = "{}"

    def load(self) -> PipelineConfig:
        return _load(self.config_path, self.overrides_json)


@lru_cache(maxsize=8)
def _engine(url: str) -> sa.Engine:
    return create_db_engine(url)


class DatabaseResource(dg.ConfigurableResource):
    """The customer database. The URL (with any password) comes from config/env, never from here."""

    settings: SettingsResource

    def engine(self) -> sa.Engine:
        url = self.settings.load().database.sqlalchemy_url()
        return _engine(url.render_as_string(hide_password=False))


class MlflowResource(dg.ConfigurableResource):
    settings: SettingsResource

    def target(self) -> TrackingTarget:
        cfg = self.settings.load().mlflow
        return TrackingTarget(cfg.tracking_uri, cfg.experiment, cfg.artifact_location)


class EngineResource(dg.ConfigurableResource):
    """The compute engine the stage assets call (:class:`~segmentation_pipeline.engines.base.ComputeEngine`).

    The assets take this resource and never ask which engine it is: a deployment picks
    :class:`LocalEngineResource` or :class:`SparkEngineResource` from the config
    (:func:`engine_resource`), the way a backend is swapped per environment.
    """

    settings: SettingsResource

    def get(self) -> "ComputeEngine":
        raise NotImplementedError("use LocalEngineResource or SparkEngineResource")


class LocalEngineResource(EngineResource):
    """pandas and scikit-learn in this process (``engine: local``)."""

    def get(self) -> "ComputeEngine":
        from segmentation_pipeline.engines.local import LocalEngine

        return LocalEngine()


class SparkEngineResource(EngineResource):
    """Spark MLlib (``engine: spark``); the run's SparkSession is built from the config's ``spark:`` section.

    Built once per run (per process) in ``setup_for_execution`` and stopped in
    ``teardown_after_execution`` when this resource started it.
    """

    _session: "SparkSession | None" = PrivateAttr(default=None)
    _owned: bool = PrivateAttr(default=False)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self.session()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._session is not None and self._owned:
            self._session.stop()
        self._session = None

    def session(self) -> "SparkSession":
        """The session, started on first use (e.g. by the IO manager in a fresh step process)."""
        if self._session is None:
            from segmentation_pipeline.engines.spark.session import build_session

            check_engine_algorithm("spark", self.settings.load().model.algorithm)  # before the JVM starts

            try:
                from pyspark import SparkContext
            except ImportError:  # build_session raises SparkUnavailableError with the install hint
                self._owned = True
            else:
                self._owned = SparkContext._active_spark_context is None  # noqa: SLF001
            self._session = build_session(self.settings.load().spark)
        return self._session

    def get(self) -> "ComputeEngine":
        from segmentation_pipeline.engines.spark.engine import SparkEngine

        return SparkEngine(self.session())


def engine_resource(settings: SettingsResource, cfg: PipelineConfig) -> EngineResource:
    """The engine resource for ``cfg.engine``: the one place that reads it. Refuses an algorithm
    the engine cannot fit (``ConfigError``) before anything runs."""
    check_engine_algorithm(cfg.engine, cfg.model.algorithm)
    if cfg.engine == "spark":
        return SparkEngineResource(settings=settings)
    return LocalEngineResource(settings=settings)


class AssetStoreIOManager(dg.ConfigurableIOManager):
    """Hands assets between steps: DataFrames as Parquet (Arrow), other values pickled.

    A DataFrame is loaded as a :class:`~segmentation_pipeline.storage.tables.ParquetTable`: the
    consumer reads the columns it needs when it needs them.

    Spark-engine values (:class:`~segmentation_pipeline.engines.spark.handoff.SparkHandoff`)
    are written by Spark (Parquet, MLlib persistence) into a directory and read back through the
    ``spark`` resource's session. Used when steps run in separate processes (the Dagster UI); the
    in-process ``segmentation run`` keeps values in memory instead.
    """

    base_dir: str
    spark: SparkEngineResource | None = None

    def _path(self, context: dg.OutputContext | dg.InputContext) -> Path:
        key = context.asset_key.path if context.has_asset_key else [context.step_key, context.name]
        return Path(self.base_dir).joinpath(*key)

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        path = self._path(context)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        if isinstance(obj, SparkHandoff):
            save_handoff(obj, path.with_suffix(".spark"))
            for stale in (path.with_suffix(".parquet"), path.with_suffix(".pkl")):
                stale.unlink(missing_ok=True)
            return
        shutil.rmtree(path.with_suffix(".spark"), ignore_errors=True)  # an earlier engine: spark value
        if isinstance(obj, pd.DataFrame):
            write_table(obj, path.with_suffix(".parquet"))  # atomic too
            path.with_suffix(".pkl").unlink(missing_ok=True)
            return
        with tmp.open("wb") as handle:
            pickle.dump(obj, handle, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(path.with_suffix(".pkl"))  # a crashed step never leaves a half-written hand-off
        path.with_suffix(".parquet").unlink(missing_ok=True)

    def load_input(self, context: dg.InputContext) -> Any:
        path = self._path(context)
        if (path.with_suffix(".spark") / MARKER).exists():
            if self.spark is None:
                raise RuntimeError(f"{path.with_suffix('.spark')} holds a Spark value but the IO manager has no spark resource")
            return load_handoff(self.spark.session(), path.with_suffix(".spark"))
        if path.with_suffix(".parquet").exists():  # read by the consumer, only the columns it needs
            return parquet_table(path.with_suffix(".parquet"))
        if path.with_suffix(".pkl").exists():
            with path.with_suffix(".pkl").open("rb") as handle:
                return pickle.load(handle)
        raise FileNotFoundError(
            f"no stored value for asset {context.asset_key.to_user_string()} under {self.base_dir}; "
            "materialize its upstream assets first"
        )
