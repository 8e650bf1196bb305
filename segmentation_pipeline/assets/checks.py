"""Asset checks of a training run: what must hold before segments are written back.
They read what the checked assets reported (their materialization metadata) instead of loading
the tables again. Blocking: every row accounted for and the rejected-share ceiling (on the
cleaning outputs, so a failure stops ``customer_segments``, the write-back). Warning only: a
segment below ``checks.min_segment_share`` (a small segment can be real, e.g. VIPs). Both
cleaning outputs come from one step, so a check reads the other output's metadata without
declaring it a dependency (two blocking checks depending on each other's asset form a cycle).
"""


from typing import Any

import dagster as dg

from segmentation_pipeline.assets.metadata import ROW_COUNT
from segmentation_pipeline.core.quality_checks import (
    CheckOutcome,
    rejected_share_within,
    rows_accounted_for,
    small_segments,
)
from segmentation_pipeline.resources import SettingsResource

ROWS_CHECK = "every_row_accounted_for"
REJECTED_CHECK = "rejected_share_within_ceiling"
SEGMENT_SHARE_CHECK = "no_segment_below_min_share"


def _reported(context: dg.AssetCheckExecutionContext, asset: str) -> dict[str, Any]:
    """The asset's metadata from this run (concurrent runs share the instance and the asset keys),
    else from its latest materialization (a check executed on its own), as plain values."""
    key = dg.AssetKey(asset)
    records = context.instance.get_records_for_run(
        context.run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
    ).records
    ours = [r.asset_materialization for r in records if r.asset_key == key]
    if ours and ours[-1] is not None:
        materialization = ours[-1]
    else:
        event = context.instance.get_latest_materialization_event(key)
        materialization = event.asset_materialization if event else None
    if materialization is None:
        raise dg.Failure(f"{asset} has not been materialized")
    return {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}


def _result(outcome: CheckOutcome, severity: dg.AssetCheckSeverity, **metadata: Any) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=outcome.passed, severity=severity, description=outcome.reason, metadata={"reason": outcome.reason, **metadata}
    )


@dg.asset_check(
    asset="clean_customers", name=ROWS_CHECK, blocking=True,
    description="n_input = n_clean + n_rejected: no row lost or counted twice (blocks the write-back).",
)
def every_row_accounted_for(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    clean, rejected = _reported(context, "clean_customers"), _reported(context, "rejected_customers")
    n_input, n_clean, n_rejected = int(clean["n_input"]), int(clean[ROW_COUNT]), int(rejected[ROW_COUNT])
    outcome = rows_accounted_for(n_input, n_clean, n_rejected)
    return _result(outcome, dg.AssetCheckSeverity.ERROR, n_input=n_input, n_clean=n_clean, n_rejected=n_rejected)


@dg.asset_check(
    asset="rejected_customers", name=REJECTED_CHECK, blocking=True,
    description="Rejected rows stay under checks.max_rejected_share of the input (blocks the write-back).",
)
def rejected_share_within_ceiling(
    context: dg.AssetCheckExecutionContext, settings: SettingsResource
) -> dg.AssetCheckResult:
    ceiling = settings.load().checks.max_rejected_share
    n_input = int(_reported(context, "clean_customers")["n_input"])
    n_rejected = int(_reported(context, "rejected_customers")[ROW_COUNT])
    outcome = rejected_share_within(n_input, n_rejected, ceiling)
    return _result(outcome, dg.AssetCheckSeverity.ERROR, n_input=n_input, n_rejected=n_rejected, ceiling=ceiling)


@dg.asset_check(
    asset="segmentation_model", name=SEGMENT_SHARE_CHECK,
    description="Every trained segment holds at least checks.min_segment_share of the customers (warning).",
)
def no_segment_below_min_share(
    context: dg.AssetCheckExecutionContext, settings: SettingsResource
) -> dg.AssetCheckResult:
    min_share = settings.load().checks.min_segment_share
    outcome = small_segments(_reported(context, "segmentation_model")["segments"], min_share)
    return _result(outcome, dg.AssetCheckSeverity.WARN, min_share=min_share)


CHECKS = [every_row_accounted_for, rejected_share_within_ceiling, no_segment_below_min_share]
