"""The storage layer's own errors: callers catch these, never a driver's."""

from __future__ import annotations

__all__ = ["SourceError", "WriteError"]


class SourceError(ValueError):
    """A table or column the pipeline needs is missing or unusable; says what exists instead."""


class WriteError(RuntimeError):
    """A write could not be completed or verified; the previous table is left untouched."""
