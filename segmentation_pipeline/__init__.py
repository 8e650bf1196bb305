"""Customer segmentation pipeline: MySQL -> cleaning -> features -> KMeans -> segments, on Dagster and MLflow."""

import os

# Arrow's allocator is chosen when pyarrow loads (pandas imports it): the system allocator returns
# freed column buffers to the OS, where mimalloc kept ~20 B per row of every Parquet write resident.
# Set before anything here imports pandas; an explicit setting in the environment wins.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
