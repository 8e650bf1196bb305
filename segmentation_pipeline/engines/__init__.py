"""Compute engines behind the same assets, config, checks, MLflow logging and write-back contract.

``local`` (the default) is the pandas/scikit-learn code in :mod:`segmentation_pipeline.core`.
``spark`` (:mod:`segmentation_pipeline.engines.spark`) runs the same stages on Apache Spark for
customer tables that outgrow one node; it needs the optional ``pyspark`` dependency, Java 17 and
a MariaDB/MySQL JDBC driver jar. Nothing here imports pyspark, so the local engine never needs it.
"""

ENGINES = ("local", "spark")

__all__ = ["ENGINES"]
