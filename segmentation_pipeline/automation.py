"""Jobs, schedules and sensors: when the pipeline runs, built from the ``automation`` config."""


import json
from typing import Any

import dagster as dg

from segmentation_pipeline.assets.monitoring import segment_drift
from segmentation_pipeline.assets.orders import ORDER_FEATURES
from segmentation_pipeline.assets.scoring import scored_customers
from segmentation_pipeline.config import PipelineConfig, ScheduleConfig
from segmentation_pipeline.resources import DatabaseResource, SettingsResource
from segmentation_pipeline.storage.source import high_water_mark
from segmentation_pipeline.storage.transactions import orders_high_water_mark
from segmentation_pipeline.storage.segment_store import record_run_failure

TRAINING_GROUPS = ("extraction", "cleaning", "features", "training", "segments")
# Runs carrying this tag share one slot (dagster.yaml: tag_concurrency_limits), so a scheduled
# and a sensor-triggered run never write the segment tables at the same time.
TABLES_TAG = {"segmentation/tables": "customer_segments"}
# Every job runs its steps in the run's own process: a step per process re-imported Dagster,
# MLflow and scikit-learn each time (77 s against 11 s for the CLI on the 5k demo). Steps still
# hand values over through the file IO manager, so a run can be re-executed from a failed step,
# and retries, per-step logs, metadata and the run-level limits (dagster.yaml) are unchanged.
EXECUTOR = dg.in_process_executor

segmentation_job = dg.define_asset_job(
    "segmentation_job",
    executor_def=EXECUTOR,
    selection=dg.AssetSelection.groups(*TRAINING_GROUPS),
    description="Full retrain: extract, clean, features, k sweep, final model, promotion, write-back.",
    tags=TABLES_TAG,
)
score_job = dg.define_asset_job(
    "score_job",
    executor_def=EXECUTOR,
    selection=dg.AssetSelection.assets(scored_customers),
    description="Assign segments with the champion model, no refit.",
    tags=TABLES_TAG,
)
orders_score_job = dg.define_asset_job(
    "orders_score_job",
    executor_def=EXECUTOR,
    selection=dg.AssetSelection.assets(ORDER_FEATURES, scored_customers),
    description="source.kind: transactions: re-aggregate the orders, then the champion scores every customer.",
    tags=TABLES_TAG,
)
drift_job = dg.define_asset_job(
    "drift_job",
    executor_def=EXECUTOR,
    selection=dg.AssetSelection.assets(segment_drift),
    description="Evidently drift report and check against the champion's training reference.",
)


def _status(enabled: bool) -> dg.DefaultScheduleStatus:
    return dg.DefaultScheduleStatus.RUNNING if enabled else dg.DefaultScheduleStatus.STOPPED


def _sensor_status(enabled: bool) -> dg.DefaultSensorStatus:
    return dg.DefaultSensorStatus.RUNNING if enabled else dg.DefaultSensorStatus.STOPPED


def _schedule(name: str, job: Any, when: ScheduleConfig, description: str) -> dg.ScheduleDefinition:
    """A schedule of ``job`` at the cron and timezone the config gives, on or off as configured."""
    return dg.ScheduleDefinition(
        name=name, job=job, cron_schedule=when.cron, execution_timezone=when.timezone,
        default_status=_status(when.enabled), description=description,
    )


def build_schedules(cfg: PipelineConfig) -> list[dg.ScheduleDefinition]:
    auto = cfg.automation
    return [
        _schedule("weekly_retrain", segmentation_job, auto.retrain, "Full retrain (automation.retrain)."),
        _schedule("daily_scoring", score_job, auto.score, "The champion scores every customer (automation.score)."),
        _schedule("daily_drift", drift_job, auto.drift,
                  "Drift report against the champion's reference (automation.drift); a failed check makes "
                  "drift_retrain_sensor request a retrain."),
    ]


def _newer(mark: dict[str, Any], seen: dict[str, Any]) -> bool:
    for key in ("max_id", "max_updated_at"):
        now, before = mark.get(key), seen.get(key)
        if now is None:
            continue
        if before is None or now > before:
            return True
    return False


def _new_data_sensor(cfg: PipelineConfig, job: Any, description: str) -> Any:
    """The decorator of ``new_customers_sensor``: one name and interval, whichever table it watches."""
    watch = cfg.automation.new_customers_sensor
    return dg.sensor(
        name="new_customers_sensor", job=job, minimum_interval_seconds=watch.interval_s,
        default_status=_sensor_status(watch.enabled), description=description,
    )


def _orders_sensor(cfg: PipelineConfig) -> dg.SensorDefinition:
    """Transactions mode: new or changed order lines move every customer's features, so a moved
    high-water mark (line count, latest timestamp) re-aggregates and rescores everyone."""

    @_new_data_sensor(
        cfg, orders_score_job,
        "Re-aggregates and scores when the orders table's high-water mark (lines, latest timestamp) moves.",
    )
    def new_customers_sensor(
        context: dg.SensorEvaluationContext, settings: SettingsResource, database: DatabaseResource
    ):
        run_cfg = settings.load()
        assert run_cfg.transactions is not None
        mark = orders_high_water_mark(database.engine(), run_cfg.transactions)
        if context.cursor is None:
            context.update_cursor(json.dumps(mark))
            return dg.SkipReason(f"cursor initialised at {mark}; later orders trigger a re-aggregation")
        seen = json.loads(context.cursor)
        if mark == seen:
            return dg.SkipReason(f"no new orders past {seen}")
        context.update_cursor(json.dumps(mark))
        return dg.RunRequest(
            run_key=f"new-orders:{seen.get('row_count')}:{seen.get('max_timestamp')}->{mark['row_count']}:{mark['max_timestamp']}",
            tags={"trigger": "new_orders"},
        )

    return new_customers_sensor


def build_sensors(cfg: PipelineConfig) -> list[dg.SensorDefinition]:
    auto = cfg.automation

    @_new_data_sensor(cfg, score_job, "Scores customers past the last high-water mark (id / updated_at) kept in the cursor.")
    def new_customers_sensor(
        context: dg.SensorEvaluationContext, settings: SettingsResource, database: DatabaseResource
    ):
        run_cfg = settings.load()
        mark = high_water_mark(
            database.engine(), run_cfg.source.table, run_cfg.source.id_column, run_cfg.source.updated_at_column
        )
        mark = {k: (v if v is None or isinstance(v, (int, float)) else str(v)) for k, v in mark.items()}
        if context.cursor is None:
            context.update_cursor(json.dumps(mark))
            return dg.SkipReason(f"cursor initialised at {mark}; customers after it will be scored")
        seen = json.loads(context.cursor)
        if not _newer(mark, seen):
            return dg.SkipReason(f"no new customers past {seen}")
        context.update_cursor(json.dumps(mark))
        op_config = {"after_id": None if seen.get("max_id") is None else str(seen["max_id"])}
        if run_cfg.source.updated_at_column and seen.get("max_updated_at") is not None:
            op_config["after_updated_at"] = str(seen["max_updated_at"])
        return dg.RunRequest(
            run_key=f"new-customers:{seen.get('max_id')}:{seen.get('max_updated_at')}->{mark.get('max_id')}:{mark.get('max_updated_at')}",
            run_config={"ops": {"scored_customers": {"config": op_config}}},
            tags={"trigger": "new_customers"},
        )

    @dg.sensor(
        name="drift_retrain_sensor",
        job=segmentation_job,
        minimum_interval_seconds=auto.drift_sensor.interval_s,
        default_status=_sensor_status(auto.drift_sensor.enabled),
        description="Requests a full retrain when the latest drift check did not pass.",
    )
    def drift_retrain_sensor(context: dg.SensorEvaluationContext):
        records = context.instance.fetch_materializations(dg.AssetKey("segment_drift"), limit=1).records
        if not records:
            return dg.SkipReason("no drift report yet")
        record = records[0]
        last_seen = int(context.cursor or 0)
        if record.storage_id <= last_seen:
            return dg.SkipReason("no new drift report")
        context.update_cursor(str(record.storage_id))
        materialization = record.asset_materialization
        metadata = materialization.metadata if materialization else {}
        severity = metadata.get("severity")
        severity_value = getattr(severity, "value", severity)
        if severity_value in (None, "ok"):
            return dg.SkipReason(f"drift report {record.storage_id} is within thresholds")
        return dg.RunRequest(
            run_key=f"drift:{record.storage_id}",
            tags={"trigger": "drift", "drift_severity": str(severity_value)},
        )

    @dg.run_failure_sensor(
        name="run_failure_recorder",
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Records failed runs in the pipeline_run_failures table next to the segments.",
    )
    def run_failure_recorder(context: dg.RunFailureSensorContext, database: DatabaseResource):
        message = context.failure_event.message or "run failed"
        record_run_failure(
            database.engine(),
            run_id=context.dagster_run.run_id,
            job_name=context.dagster_run.job_name,
            message=message,
        )
        context.log.error(f"run {context.dagster_run.run_id} of {context.dagster_run.job_name} failed: {message}")

    watcher = _orders_sensor(cfg) if cfg.transactions is not None else new_customers_sensor
    return [watcher, drift_retrain_sensor, run_failure_recorder]
