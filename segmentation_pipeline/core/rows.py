"""Helpers for arrays of millions of rows: work in row blocks, and label codes for ``np.bincount``.

Why blocks: a float64 intermediate of every row (log1p, scaled, distances) costs more memory than
the result; computing a block at a time keeps the scratch at a few MB whatever the table size.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

__all__ = ["ROW_BLOCK", "distinct_labels", "label_codes", "map_row_blocks"]

#: Rows per block: a few MB of float64 scratch for a handful of columns.
ROW_BLOCK = 262_144


def map_row_blocks(fn: Callable[[int, int], np.ndarray], n: int, *, block_rows: int = ROW_BLOCK) -> np.ndarray:
    """``fn(start, stop)`` for consecutive row blocks, written into one preallocated array whose
    trailing shape and dtype come from the first block."""
    first = fn(0, min(block_rows, n))
    if n <= block_rows:
        return first
    out = np.empty((n, *first.shape[1:]), dtype=first.dtype)
    out[: len(first)] = first
    for start in range(block_rows, n, block_rows):
        out[start : start + block_rows] = fn(start, min(start + block_rows, n))
    return out


def label_codes(labels: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray | None]:
    """(codes for ``np.bincount``, the label of each code). Non-negative integer labels are their
    own codes (returned as they are, with None): no sort of millions of labels."""
    labels = np.asarray(labels)
    if labels.dtype.kind in "iu" and (len(labels) == 0 or labels.min() >= 0):
        return labels, None
    uniques, codes = np.unique(labels, return_inverse=True)
    return codes.ravel(), uniques


def distinct_labels(labels: npt.ArrayLike) -> np.ndarray:
    """The distinct labels, sorted (``np.unique``); non-negative integers by a bincount instead of a
    sorted copy of millions of labels."""
    labels = np.asarray(labels)
    if labels.dtype.kind in "iu" and len(labels) and labels.min() >= 0:
        return np.flatnonzero(np.bincount(labels)).astype(labels.dtype)
    return np.unique(labels)
