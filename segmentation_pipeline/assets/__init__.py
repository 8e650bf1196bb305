"""Dagster assets, one thin module per stage group.

Customer rows travel between assets as a pandas DataFrame or a Parquet file
(:class:`~segmentation_pipeline.storage.tables.ParquetTable`, read column by column) under
``engine: local``, or as a :class:`~segmentation_pipeline.engines.spark.handoff.SparkFrame`
(``engine: spark``), so the assets' ``pd.DataFrame`` annotations check for any of them: one
Dagster type, registered here before any asset module is imported.
"""

import dagster as dg
import pandas as pd

from segmentation_pipeline.engines.spark.handoff import SparkFrame
from segmentation_pipeline.storage.tables import ParquetTable

CUSTOMER_FRAME = dg.DagsterType(
    name="DataFrame",
    type_check_fn=lambda _context, value: isinstance(value, (pd.DataFrame, ParquetTable, SparkFrame)),
    typing_type=pd.DataFrame,
    description="customer rows: a pandas DataFrame or Parquet table, or a SparkFrame under engine: spark",
)
dg.make_python_type_usable_as_dagster_type(pd.DataFrame, CUSTOMER_FRAME)
