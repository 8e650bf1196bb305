"""Fault-injection points: tests force a failure at an exact step (a kill between two statements)
instead of hoping a timer lands in a narrow window. Inert unless a test installs a hook."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["POINTS", "fire", "injected"]

POINTS = frozenset({"before_load", "before_history_commit", "before_swap", "after_swap"})
_hooks: dict[str, Callable[..., None]] = {}


def fire(point: str, **context: Any) -> None:
    """Run the hook installed at ``point`` (none in production)."""
    hook = _hooks.get(point)
    if hook is not None:
        hook(**context)


@contextmanager
def injected(point: str, action: Callable[..., None]) -> Iterator[None]:
    """Install ``action`` at ``point`` for the duration of the block."""
    if point not in POINTS:
        raise ValueError(f"unknown fault point {point!r}; known: {sorted(POINTS)}")
    _hooks[point] = action
    try:
        yield
    finally:
        _hooks.pop(point, None)
