"""Compute engines behind the same assets, config, checks, MLflow logging and write-back contract.

``local`` (the default) is the pandas/scikit-learn code in :mod:`segmentation_pipeline.core`.
``spark`` (:mod:`segmentation_pipeline.engines.spark`) runs the same stages on Apache Spark for
customer tables that outgrow one node; it needs the optional ``pyspark`` dependency, Java 17 and
a MariaDB/MySQL JDBC driver jar. Nothing here imports pyspark, so the local engine never needs it.
"""

from segmentation_pipeline.config import ConfigError
from segmentation_pipeline.core.algorithms import ALGORITHM_NAMES

ENGINES = ("local", "spark")

#: ``model.algorithm`` values each engine can fit. Spark: MLlib KMeans and GaussianMixture (both
#: exported exactly to the served sklearn model); MLlib's bisecting KMeans assigns by walking a
#: tree PySpark does not expose, so it could not be served with Spark's own answer, and MLlib has
#: no mini-batch KMeans.
ENGINE_ALGORITHMS: dict[str, tuple[str, ...]] = {"local": ALGORITHM_NAMES, "spark": ("kmeans", "gmm")}

__all__ = ["ENGINES", "ENGINE_ALGORITHMS", "check_engine_algorithm"]


def check_engine_algorithm(engine: str, algorithm: str) -> None:
    """Stop before any work when ``engine`` cannot fit ``algorithm``; the error names both and what
    the engine supports (called where the engine is chosen, and again where Spark starts)."""
    supported = ENGINE_ALGORITHMS.get(engine, ())
    if algorithm not in supported:
        raise ConfigError(
            f"model.algorithm {algorithm!r} is not supported by engine {engine!r}; "
            f"engine {engine!r} supports: {', '.join(supported)}"
        )
