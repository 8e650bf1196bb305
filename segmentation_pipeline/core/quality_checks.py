"""The rules the training run's asset checks apply, as plain functions of counts and shares."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CheckOutcome:
    """Whether a rule holds, and a sentence that says why (shown in the UI and the logs)."""

    passed: bool
    reason: str


def rows_accounted_for(n_input: int, n_clean: int, n_rejected: int) -> CheckOutcome:
    """Every input row is either clean (and so segmented) or rejected, exactly once."""
    passed = n_clean + n_rejected == n_input
    sign = "=" if passed else "!="
    return CheckOutcome(passed, f"{n_clean} clean + {n_rejected} rejected {sign} {n_input} input rows")


def rejected_share_within(n_input: int, n_rejected: int, ceiling: float) -> CheckOutcome:
    """A source where most rows cannot be segmented is broken upstream: do not publish from it."""
    share = n_rejected / n_input if n_input else 0.0
    passed = share <= ceiling
    return CheckOutcome(passed, f"{share:.1%} of {n_input} rows rejected ({'<=' if passed else '>'} ceiling {ceiling:.1%})")


def small_segments(segments: Iterable[Mapping[str, Any]], min_share: float) -> CheckOutcome:
    """Segments whose share of customers (``share_pct``, in percent) is below ``min_share``."""
    small = {int(s["segment_id"]): round(float(s["share_pct"]), 3) for s in segments
             if float(s["share_pct"]) < 100 * min_share}
    if not small:
        return CheckOutcome(True, f"every segment holds at least {min_share:.1%} of customers")
    return CheckOutcome(False, f"segments below {min_share:.1%} of customers (share in %): {small}")
