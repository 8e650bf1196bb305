"""The storage layer's own errors: callers catch these, never a driver's."""

from __future__ import annotations

__all__ = ["DatabaseUrlError", "SourceError", "WriteError"]


class SourceError(ValueError):
    """A table or column the pipeline needs is missing or unusable; says what exists instead."""


class WriteError(RuntimeError):
    """A write could not be completed or verified; the previous table is left untouched."""


class DatabaseUrlError(ValueError):
    """The database URL cannot be used; names the part at fault (scheme, port, charset), never the password."""
