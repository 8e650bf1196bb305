"""The Spark engine: the pipeline's stages on Apache Spark.

:class:`engine.SparkEngine` puts them behind the assets' ``ComputeEngine`` interface; each stage
is a module with a function API underneath:

==============  ==========================================================================
``engine``      :class:`SparkEngine` -- the stage operations, returning the engine-neutral records
``session``     :class:`SparkSettings`, :func:`build_session`, :func:`spark_session` (context)
``extract``     :func:`jdbc_target`, :func:`read_customers` -- partitioned JDBC read
``cleaning``    :func:`clean_customers` -- the local rules and reasons in Spark SQL, IQR guard
``model``       :func:`train` (= :func:`fit_features` + :func:`sweep_k` + :func:`fit_kmeans` +
                :func:`quality_metrics`), :func:`assign_segments`, :func:`profile_segments`,
                :func:`eval_sample`
``export``      :func:`to_segment_assigner` -- the same sklearn Pipeline the local engine registers
``writeback``   :func:`segments_frame`, :func:`rejects_frame`, :func:`publish_segments`,
                :func:`write_table_atomic` -- JDBC into staging, then the atomic swap
==============  ==========================================================================

Importing this package does not import pyspark; the submodules do.
"""

from segmentation_pipeline.engines.spark.session import (
    SparkSettings,
    SparkUnavailableError,
    build_session,
    spark_session,
)

__all__ = ["SparkSettings", "SparkUnavailableError", "build_session", "spark_session"]
