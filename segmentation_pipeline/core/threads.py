"""How many threads a small fit gets: one.

scikit-learn's KMeans (OpenMP) and a Gaussian mixture (BLAS) start a thread team per call. On a few
thousand rows the work per call is a few milliseconds, and waking, spinning and joining the team
costs more than it saves; on a busy machine (two cores, the Dagster webserver, another run) a worker
that spins while descheduled makes a 5 ms fit take 30 ms and a 35 ms mixture fit 700 ms
(benchmarks/RESULTS.md, "Launch"). The k evidence makes about a hundred such fits, always on its
bounded sample, so a 200-row table paid seconds for threads it could not use.

Large fits (the sweep and the final model on hundreds of thousands of rows) keep every core.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

from threadpoolctl import ThreadpoolController

__all__ = ["SINGLE_THREAD_ROWS", "threads_for"]

SINGLE_THREAD_ROWS = 10_000
"""Up to this many rows a fit runs on one thread: the k evidence's own sample size (``eval_rows``'s
default), where one Lloyd iteration is well under a millisecond of work per thread."""


@contextlib.contextmanager
def threads_for(rows: int) -> Iterator[None]:
    """One OpenMP/BLAS thread inside the block when ``rows`` <= :data:`SINGLE_THREAD_ROWS`;
    otherwise the libraries' own default (every core)."""
    if rows > SINGLE_THREAD_ROWS:
        yield
        return
    with _controller().limit(limits=1):
        yield


@functools.cache
def _controller() -> ThreadpoolController:
    """One inspection of the loaded thread pools per process: building a controller walks every
    loaded shared library (~10 ms), which a hundred small fits would otherwise repeat."""
    return ThreadpoolController()
