"""Retries for the steps that write the database: only errors a later attempt can outlive.

Dagster's ``RetryPolicy`` retries every exception. A missing model, invalid data or an oversized
key fails the same way three times and only delays the error by 15 s; those are raised as a
``Failure`` that forbids retries, with the original error as its cause (what the CLI prints).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from segmentation_pipeline.storage.errors import is_transient

__all__ = ["WRITE_RETRY", "retry_only_transient"]

#: Two more attempts, 5 s then 15 s later: a dropped connection or a killed statement heals.
WRITE_RETRY = dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL)


@contextmanager
def retry_only_transient() -> Iterator[None]:
    """Let transient errors through to the retry policy; turn every other error into a final failure."""
    try:
        yield
    except dg.Failure:
        raise
    except Exception as exc:
        if is_transient(exc):
            raise
        raise dg.Failure(
            description=f"{type(exc).__name__}: {exc} (not retried: a new attempt would fail the same way)",
            allow_retries=False,
        ) from exc
