"""In-process runs of the training job that hold each value only as long as a step still needs it.

``dg.materialize`` / ``execute_in_process`` keep every step output in the result until the run
ends, so the raw table, the clean table and the feature matrix all stay alive together. Here the
job runs through ``dg.execute_job`` on a reconstructable job (no output capture) with an IO
manager that drops a value after its last consumer has loaded it. Values read by a step with a
retry policy stay until the run ends: a retry loads its inputs again.

Tables (DataFrames) are not held at all: they go to Parquet files in a scratch directory for
the run (deleted when it ends) and consumers read the columns they need, when they need them
(:mod:`segmentation_pipeline.storage.tables`).
"""

from __future__ import annotations

import ctypes
import gc
import os
import shutil
import socket
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from segmentation_pipeline.storage.tables import write_table

#: The code location's training job: CLI runs are listed under it in the UI, beside the runs it launched.
JOB_NAME = "segmentation_job"


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018 - both are glibc's
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
        return None
    return libc


_LIBC = _libc()
_MALLOC_TRIM = _LIBC.malloc_trim if _LIBC is not None else None
#: glibc's mallopt parameter for the size above which an allocation gets its own mapping.
_M_MMAP_THRESHOLD = -3
#: Allocations above this (glibc's initial default) are mapped on their own: freeing one unmaps it.
MMAP_THRESHOLD_BYTES = 1 << 17


def map_large_allocations() -> None:
    """Keep every allocation over 128 KB in its own mapping, returned to the OS when it is freed.

    glibc raises its mmap threshold each time a mapped block is freed (up to 32 MB), after which
    column-sized arrays (16 MB at 2M rows) and row blocks come from the heap, and freed ones stay
    in the process, fragmenting it: each step's peak then sits on the garbage of the steps before.
    Measured at 3M rows: the cleaning step's peak 541 -> 489 MB, the final model's 672 -> 637 MB.
    """
    if _LIBC is not None:
        _LIBC.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def resident_bytes() -> int | None:
    """This process's resident set size now (Linux ``/proc/self/statm``); None where unreadable."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


#: Growth of the resident set since the run began below which a step change frees nothing worth a
#: full collection (one costs ~0.1 s with Dagster and MLflow loaded: most of a small run's steps).
COLLECT_ABOVE_BYTES = 64 << 20


def release_free_heap() -> None:
    """Return the heap pages freed since the last call to the OS (glibc's ``malloc_trim``).

    glibc keeps freed medium-sized blocks in the process; the next step's large arrays are
    mapped fresh instead of reusing them, so without this the peak of every step stacks on the
    garbage of the one before (measured at 5M rows: 154 MB held after cleaning).
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _consumer(context: dg.InputContext) -> str | None:
    """The name of the step loading this input (None for a bare test context)."""
    try:
        return context.op_def.name
    except dg.DagsterInvariantViolationError:
        return None


class ReleasingMemoryIOManager(dg.IOManager):
    """Values in a dict keyed by asset; dropped when the last consumer has loaded them.

    With a ``scratch`` directory, DataFrames are written there as Parquet and handed on as
    :class:`~segmentation_pipeline.storage.tables.ParquetTable` (only the path stays in memory).
    """

    def __init__(
        self, consumers: Mapping[dg.AssetKey, int], keep: frozenset[dg.AssetKey], scratch: Path | None = None
    ) -> None:
        self._remaining = dict(consumers)
        self._keep = keep
        self._scratch = scratch
        self._values: dict[dg.AssetKey, Any] = {}
        self._step: str | None = ""  # the step whose inputs were loaded last ("": none yet)
        self._start_rss = resident_bytes()

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        key = context.asset_key
        if self._remaining.get(key, 0) > 0 or key in self._keep:
            if self._scratch is not None and isinstance(obj, pd.DataFrame):
                obj = write_table(obj, self._scratch / f"{'__'.join(key.path)}.parquet")
            self._values[key] = obj

    def load_input(self, context: dg.InputContext) -> Any:
        step = _consumer(context)
        if step != self._step:  # a new step: what the previous one freed goes back to the OS
            self._step = step
            # Dagster's step machinery keeps each Output (and so its value) in a reference cycle:
            # without a collection the previous step's tables stay until the collector next runs
            if self._worth_collecting():
                gc.collect()
                release_free_heap()
        key = context.asset_key
        if key not in self._values:
            raise KeyError(f"no value for {key.to_user_string()} in this run (its step did not run or failed)")
        value = self._values[key]
        if key not in self._keep:
            self._remaining[key] -= 1
            if self._remaining[key] <= 0:
                del self._values[key]
        return value

    def _worth_collecting(self) -> bool:
        """A collection only when the run has grown by :data:`COLLECT_ABOVE_BYTES` (always where
        the resident set cannot be read): a small table's steps leave nothing worth freeing."""
        now = resident_bytes()
        return now is None or self._start_rss is None or now - self._start_rss > COLLECT_ABOVE_BYTES

    @property
    def held(self) -> list[str]:
        """Keys still in memory (for tests and debugging)."""
        return sorted(k.to_user_string() for k in self._values)


SCRATCH_PREFIX = ".run-tables-"
_OWNER = "owner.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def new_scratch_dir(data_dir: Path) -> Path:
    """A scratch directory for one run's table files, after removing those of runs whose process
    is gone (a killed run cannot delete its own; a live concurrent run's are left alone)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for old in data_dir.glob(f"{SCRATCH_PREFIX}*"):
        try:
            pid = int((old / _OWNER).read_text())
        except (OSError, ValueError):
            continue  # being created right now, or not ours: leave it
        if not _alive(pid):
            shutil.rmtree(old, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=data_dir))
    (scratch / _OWNER).write_text(str(os.getpid()))
    return scratch


def consumers_of(assets: Sequence[dg.AssetsDefinition], selected: set[dg.AssetKey]) -> tuple[Counter, frozenset]:
    """(number of selected steps reading each asset, assets read by a step that may be retried)."""
    counts: Counter = Counter()
    keep: set[dg.AssetKey] = set()
    for definition in assets:
        if not set(definition.keys) & selected:
            continue
        retried = definition.op.retry_policy is not None
        for upstream in definition.keys_by_input_name.values():
            counts[upstream] += 1
            if retried:
                keep.add(upstream)
    return counts, frozenset(keep)


#: Job definitions built during the current :func:`run_training` call, by reconstructor arguments:
#: ``execute_job`` reconstructs the job several times per run, and each build reads the config and
#: assembles every definition again (~0.3 s). None outside a run: nothing is kept between runs.
_RUN_JOBS: dict[tuple[str | None, str], dg.JobDefinition] | None = None


def training_job(config_path: str | None, overrides_json: str = "{}") -> dg.JobDefinition:
    """The reconstructor ``execute_job`` calls: the training groups, in-process, releasing values.

    Within one run every reconstruction returns the first one's definition, so the run also reads
    its config once."""
    key = (config_path, overrides_json)
    if _RUN_JOBS is not None and key in _RUN_JOBS:
        return _RUN_JOBS[key]
    job = build_training_job(config_path, overrides_json)
    if _RUN_JOBS is not None:
        _RUN_JOBS[key] = job
    return job


def build_training_job(config_path: str | None, overrides_json: str = "{}") -> dg.JobDefinition:
    """The training job's definition, built from the config (see :func:`training_job`)."""
    from segmentation_pipeline.assets.checks import CHECKS
    from segmentation_pipeline.automation import TRAINING_GROUPS, segmentation_job
    from segmentation_pipeline.definitions import assets_for, build_resources
    from segmentation_pipeline.resources import SettingsResource

    settings = SettingsResource(config_path=config_path, overrides_json=overrides_json)
    cfg = settings.load()
    assets = assets_for(cfg)
    selection = dg.AssetSelection.groups(*TRAINING_GROUPS)
    selected = {key for definition in assets for key, group in definition.group_names_by_key.items()
                if group in TRAINING_GROUPS}
    counts, keep = consumers_of(assets, selected)

    def io_manager_fn(_: dg.InitResourceContext) -> Iterator[ReleasingMemoryIOManager]:
        scratch = new_scratch_dir(cfg.data_path)
        try:
            yield ReleasingMemoryIOManager(counts, keep, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    io_manager = dg.IOManagerDefinition(
        resource_fn=io_manager_fn,
        description="values in memory, each released after its last consumer; tables as Parquet in a run scratch dir",
    )
    job = dg.define_asset_job(JOB_NAME, selection=selection, executor_def=dg.in_process_executor,
                              tags=segmentation_job.tags, description=segmentation_job.description)
    defs = dg.Definitions(assets=assets, asset_checks=CHECKS, jobs=[job], resources=build_resources(settings, cfg, io_manager=io_manager))
    return defs.resolve_job_def(JOB_NAME)


#: Tags that let a later run tell whether this run's process is still alive.
PID_TAG = "segmentation/pid"
HOST_TAG = "segmentation/host"


def process_tags() -> dict[str, str]:
    """This process's id and host, for :func:`fail_abandoned_runs`."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def fail_abandoned_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark as failed the in-process runs on this host whose process is gone (killed, machine crash).

    A run executed in the CLI's own process has no run launcher to notice its death, so without
    this a ``kill -9`` leaves it STARTED in the UI for ever. A live process (or a reused pid) is
    left alone: the check errs towards leaving a run as it is.
    """
    host = socket.gethostname()
    runs = instance.get_runs(filters=dg.RunsFilter(
        statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING], tags={HOST_TAG: host},
    ))
    failed = []
    for run in runs:
        try:
            pid = int(run.tags.get(PID_TAG, ""))
        except ValueError:
            continue
        if pid == os.getpid() or _alive(pid):
            continue
        instance.report_run_failed(
            run, message=f"the process that ran it (pid {pid} on {host}) is gone: killed or crashed before "
                         "the run ended. The previous segments stay published; re-run to publish new ones.",
        )
        failed.append(run.run_id)
    return failed


_RUNS_IN_PROCESS = 0


def freeze_heap() -> None:
    """Move every object alive now to the permanent generation, so that the per-step collections
    skip the interpreter's modules (Dagster, MLflow and scikit-learn are never garbage).

    The process's first run freezes without collecting first: what importing left behind is small
    and is collected after the run unfreezes, while a full collection here walks millions of
    objects (~0.2 s, measured on a 200-row run). A later run in the same process (tests, a code
    server) collects first, so that the previous run's tables are not frozen for this one.
    """
    global _RUNS_IN_PROCESS
    if _RUNS_IN_PROCESS:
        gc.collect()
    _RUNS_IN_PROCESS += 1
    gc.freeze()


def run_training(
    instance: dg.DagsterInstance,
    config_path: str | None,
    overrides_json: str = "{}",
    *,
    run_config: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
) -> dg.JobExecutionResult:
    """Run the training job in this process; raises the step's error when a step fails."""
    global _RUN_JOBS
    map_large_allocations()
    fail_abandoned_runs(instance)
    _RUN_JOBS = {}  # from the first reconstruction on: the job is built once per run
    try:
        job = dg.build_reconstructable_job(
            __name__, training_job.__name__, reconstructable_args=(config_path, overrides_json)
        )
        freeze_heap()
        try:
            return dg.execute_job(job, instance=instance, run_config=dict(run_config or {}),
                                  tags={**(tags or {}), **process_tags()}, raise_on_error=True)
        finally:
            gc.unfreeze()
    finally:
        _RUN_JOBS = None
