"""What Spark-engine assets hand each other, and how those values cross process boundaries.

A Spark DataFrame cannot be pickled, and a fitted MLlib model is a JVM object. Every value a
Spark-engine asset returns is therefore either plain (pickled by the IO manager as usual) or a
:class:`SparkHandoff`, which saves itself with Spark's own writers (DataFrames as Parquet, models
with MLlib persistence) into a directory and is loaded back through the run's SparkSession.

:class:`SparkFrame` is a DataFrame plus its row count: ``len()`` and ``head()`` (pandas) make it
look enough like a pandas frame for the assets' metadata code (row counts, a sample table), so the
assets report the same things whichever engine computed them. Nothing here imports pyspark at
module import time.
"""

from __future__ import annotations

import importlib
import json
import pickle
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd

from segmentation_pipeline.engines.base import Features

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

    from segmentation_pipeline.engines.spark.model import SparkFeatures

__all__ = [
    "MARKER",
    "SparkFeaturePayload",
    "SparkFeatureRecord",
    "SparkFrame",
    "SparkHandoff",
    "load_handoff",
    "save_handoff",
]

#: The file in a hand-off directory naming the class that reads it back.
MARKER = "_handoff.json"


class SparkHandoff:
    """A value that saves itself into a directory with Spark and loads back with a session."""

    kind: ClassVar[str] = "spark"

    def spark_save(self, path: Path) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    @classmethod
    def spark_load(cls, spark: "SparkSession", path: Path) -> "SparkHandoff":  # pragma: no cover - interface
        raise NotImplementedError


def save_handoff(value: SparkHandoff, path: Path) -> None:
    """Write ``value`` to ``path`` (a directory) atomically: a crashed step leaves the old one."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    value.spark_save(tmp)
    cls = type(value)
    (tmp / MARKER).write_text(json.dumps({"module": cls.__module__, "class": cls.__qualname__}))
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def load_handoff(spark: "SparkSession", path: Path) -> SparkHandoff:
    marker = json.loads((path / MARKER).read_text())
    cls = getattr(importlib.import_module(marker["module"]), marker["class"])
    if not (isinstance(cls, type) and issubclass(cls, SparkHandoff)):
        raise TypeError(f"{path} names {marker}, which is not a Spark hand-off type")
    return cls.spark_load(spark, path)


@dataclass
class SparkFrame(SparkHandoff):
    """A Spark DataFrame and its (already counted) number of rows."""

    frame: "DataFrame"
    n_rows: int

    def __len__(self) -> int:
        return self.n_rows

    @property
    def columns(self) -> list[str]:
        return list(self.frame.columns)

    def head(self, n: int = 5) -> pd.DataFrame:
        """The first ``n`` rows as pandas (for metadata tables)."""
        return self.frame.limit(n).toPandas()

    def spark_save(self, path: Path) -> None:
        self.frame.write.mode("overwrite").parquet(str(path / "data"))
        (path / "rows.json").write_text(json.dumps({"n_rows": self.n_rows}))

    @classmethod
    def spark_load(cls, spark: "SparkSession", path: Path) -> "SparkFrame":
        n_rows = int(json.loads((path / "rows.json").read_text())["n_rows"])
        return cls(spark.read.parquet(str(path / "data")), n_rows)


@dataclass
class SparkFeaturePayload:
    """What only the Spark engine reads back from its :class:`Features`: the fitted MLlib stages,
    every fit row in feature space, and the evaluation rows' raw features."""

    fitted: "SparkFeatures"
    X_fit: "DataFrame"  # FEATURES_COL of the non-outlier clean rows, persisted
    sample: pd.DataFrame  # id + raw features of the rows of ``Features.X_eval``, same order


@dataclass
class SparkFeatureRecord(Features, SparkHandoff):
    """The Spark engine's :class:`Features`; ``payload`` is a :class:`SparkFeaturePayload`.

    A hand-off because the payload holds a JVM model and a DataFrame: saved with MLlib
    persistence and Parquet, everything else pickled.
    """

    def spark_save(self, path: Path) -> None:
        payload: SparkFeaturePayload = self.payload
        payload.fitted.model.write().overwrite().save(str(path / "model"))
        payload.X_fit.write.mode("overwrite").parquet(str(path / "x_fit"))
        plain = replace(self, payload=replace(payload, fitted=replace(payload.fitted, model=None), X_fit=None))
        with (path / "plain.pkl").open("wb") as handle:
            pickle.dump(plain, handle, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def spark_load(cls, spark: "SparkSession", path: Path) -> "SparkFeatureRecord":
        from pyspark import StorageLevel
        from pyspark.ml import PipelineModel

        with (path / "plain.pkl").open("rb") as handle:
            plain: Any = pickle.load(handle)
        model = PipelineModel.load(str(path / "model"))
        X_fit = spark.read.parquet(str(path / "x_fit")).persist(StorageLevel.MEMORY_AND_DISK)
        payload = replace(plain.payload, fitted=replace(plain.payload.fitted, model=model), X_fit=X_fit)
        return replace(plain, payload=payload)
