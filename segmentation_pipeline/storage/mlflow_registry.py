"""MLflow tracking and Model Registry: one run per Dagster run, models under aliases.

Uses MLflow 3 idioms only: ``log_model(name=...)``, registered-model aliases (no stages).
Every training asset of one Dagster run writes into the same MLflow run, found by the
``dagster_run_id`` tag, so steps running in separate processes still share it.
"""

from __future__ import annotations

import io
import json
import time
import logging
import os
import socket
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import AnyType, ColSpec, Schema

from segmentation_pipeline.core.assigner import SegmentAssigner
from segmentation_pipeline.core.serving import score_rows

log = logging.getLogger(__name__)

DAGSTER_RUN_TAG = "dagster_run_id"
#: MLflow's UI opens an experiment on its model-training pages (runs, metrics) rather than the
#: GenAI ones (traces) when the experiment carries this kind.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_EXPERIMENT = "custom_model_development"
#: Third-party distributions the pyfunc imports when it loads and predicts (MLflow adds itself).
#: This project is never one of them: its code travels with the model (``code_paths``), and the
#: name ``segmentation-pipeline`` on the package index belongs to someone else.
MODEL_DEPENDENCIES = ("scikit-learn", "pandas", "numpy", "scipy")
#: The package directory copied into the model (``code/segmentation_pipeline``), put on
#: ``sys.path`` by MLflow when the model loads, so unpickling finds the classes it names.
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def model_requirements() -> list[str]:
    """Each dependency pinned to the version the model is trained with (what serving rebuilds)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in MODEL_DEPENDENCIES]


class RegistryError(RuntimeError):
    """MLflow could not be reached or refused an operation; the message says which and where."""


@dataclass(frozen=True)
class TrackingTarget:
    tracking_uri: str
    experiment: str
    artifact_location: str | None = None


class SegmentationPyfunc(mlflow.pyfunc.PythonModel):
    """Raw feature columns in (numbers or text as the batch reads them); per row ``segment_id``,
    ``segment_name``, ``is_outlier`` and ``error`` out (core.serving): a row the batch would
    reject gets a null segment and its reason, and the other rows are still scored."""

    def __init__(self, assigner: SegmentAssigner) -> None:
        self.assigner = assigner

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        return score_rows(self.assigner, frame)


def serving_signature(assigner: SegmentAssigner, example: pd.DataFrame) -> ModelSignature:
    """Inputs typed Any: MLflow's own enforcement would refuse "38,000" or a null for the whole
    request, before the batch's rules could judge each row; outputs as the pyfunc returns them."""
    inputs = Schema([ColSpec(AnyType(), name, required=False) for name in assigner.features])
    outputs = Schema([
        ColSpec("long", "segment_id", required=False), ColSpec("string", "segment_name", required=False),
        ColSpec("boolean", "is_outlier"), ColSpec("string", "error", required=False),
    ])
    return ModelSignature(inputs=inputs, outputs=outputs)


def _describe(target: TrackingTarget) -> str:
    return target.tracking_uri.split("@")[-1] if "@" in target.tracking_uri else target.tracking_uri


def _set_tracking_uri(uri: str) -> None:
    """Point MLflow's fluent API at ``uri`` without exporting it.

    ``mlflow.set_tracking_uri`` also writes ``MLFLOW_TRACKING_URI`` into ``os.environ``, which
    ``load_config`` reads as the user's override: one run's URI would silently replace the
    next config's tracking URI in the same process (Dagster code servers, tests).
    """
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


CONNECT_TIMEOUT_S = 5.0


def check_reachable(tracking_uri: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail in seconds, naming the URL, when an HTTP tracking server does not accept connections:
    MLflow's own retries would take minutes to say the same."""
    parts = urlsplit(tracking_uri)
    if parts.scheme not in ("http", "https"):
        return
    shown = f"{parts.scheme}://{parts.hostname}{'' if parts.port is None else f':{parts.port}'}{parts.path}"
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise RegistryError(f"MLflow tracking URI {shown!r}: bad port ({exc})") from None
    if not parts.hostname:
        raise RegistryError(f"MLflow tracking URI {tracking_uri!r} has no host name")
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
    except OSError as exc:
        raise RegistryError(
            f"MLflow at {shown} is unreachable (no connection within {timeout_s:g}s: {exc}); "
            "start it or fix mlflow.tracking_uri / MLFLOW_TRACKING_URI"
        ) from None


def configure(target: TrackingTarget) -> str:
    """Point MLflow at the target and make sure the experiment exists; returns its id."""
    check_reachable(target.tracking_uri)
    _set_tracking_uri(target.tracking_uri)
    if target.artifact_location and "://" not in target.artifact_location:
        Path(target.artifact_location).mkdir(parents=True, exist_ok=True)
    client = MlflowClient(target.tracking_uri)
    try:
        experiment = client.get_experiment_by_name(target.experiment)
        if experiment is None:
            location = target.artifact_location
            if location and "://" not in location:
                location = Path(location).resolve().as_uri()
            return client.create_experiment(
                target.experiment, artifact_location=location, tags={EXPERIMENT_KIND_TAG: TRAINING_EXPERIMENT}
            )
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        if EXPERIMENT_KIND_TAG not in experiment.tags:  # created before it was tagged
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_EXPERIMENT)
        return experiment.experiment_id
    except MlflowException as exc:
        raise RegistryError(f"MLflow at {_describe(target)} refused experiment {target.experiment!r}: {exc}") from exc
    except Exception as exc:  # connection errors surface as requests/urllib exceptions
        raise RegistryError(f"MLflow tracking server unreachable at {_describe(target)}: {exc}") from exc


def find_run(target: TrackingTarget, dagster_run_id: str) -> str | None:
    experiment_id = configure(target)
    runs = MlflowClient(target.tracking_uri).search_runs(
        [experiment_id], filter_string=f"tags.{DAGSTER_RUN_TAG} = '{dagster_run_id}'", max_results=1
    )
    return runs[0].info.run_id if runs else None


#: The MLflow run of each recent Dagster run, by (tracking URI, experiment, Dagster run id): every
#: step of a run reopens the same MLflow run, and finding it again (experiment lookup, run search)
#: cost a dozen store round trips per run. A few runs are remembered, never a run's content.
_KNOWN_RUNS: OrderedDict[tuple[str, str, str], str] = OrderedDict()
_KNOWN_RUNS_MAX = 16


def _start_known_run(key: tuple[str, str, str]) -> Any | None:
    """Reopen the remembered MLflow run of ``key``; None (and forgotten) when there is none or it is gone."""
    run_id = _KNOWN_RUNS.get(key)
    if run_id is None:
        return None
    try:
        return mlflow.start_run(run_id=run_id)
    except MlflowException:  # deleted meanwhile: look it up, or start it, again
        _KNOWN_RUNS.pop(key, None)
        return None


@contextmanager
def training_run(target: TrackingTarget, dagster_run_id: str, run_name: str | None = None) -> Iterator[str]:
    """Resume the MLflow run of this Dagster run, or start it; yields the MLflow run id."""
    key = (target.tracking_uri, target.experiment, dagster_run_id)
    if mlflow.active_run() is not None:
        mlflow.end_run()
    check_reachable(target.tracking_uri)
    _set_tracking_uri(target.tracking_uri)
    run = _start_known_run(key)
    if run is None:
        experiment_id = configure(target)
        existing = find_run(target, dagster_run_id)
        if existing:
            # MLflow refuses to resume a run outside the process's active experiment (a notebook's
            # own mlflow.set_experiment, or another config's run in the same process).
            mlflow.set_experiment(experiment_id=experiment_id)
            run = mlflow.start_run(run_id=existing)
        else:
            run = mlflow.start_run(
                experiment_id=experiment_id, run_name=run_name, tags={DAGSTER_RUN_TAG: dagster_run_id}
            )
        _KNOWN_RUNS[key] = run.info.run_id
        while len(_KNOWN_RUNS) > _KNOWN_RUNS_MAX:
            _KNOWN_RUNS.popitem(last=False)
    try:
        yield run.info.run_id
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    else:
        mlflow.end_run()  # a later asset of the same Dagster run reopens it


def name_run(run_name: str) -> None:
    """Rename the active run once it is known what ran (the first step does not know k yet)."""
    mlflow.set_tag("mlflow.runName", run_name)


def describe_model(tracking_uri: str, model_name: str, description: str, version: str | None = None) -> None:
    """The description the registry shows for the model, or for one of its versions."""
    client = MlflowClient(tracking_uri)
    if version is None:
        client.update_registered_model(model_name, description=description)
    else:
        client.update_model_version(model_name, version, description=description)


REPORT_ARTIFACT = "report/segments.html"


def report_file(data_dir: Path, run_id: str) -> Path:
    """Where a run's segment report is kept on disk (under ``data_dir``)."""
    return data_dir / "reports" / f"segments-{run_id}.html"


def write_report(page: str, data_dir: Path, run_id: str) -> Path:
    """Write the run's HTML report under ``data_dir`` and log it to the active run; returns the file."""
    path = report_file(data_dir, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    mlflow.log_text(page, REPORT_ARTIFACT)
    return path


def fetch_report(tracking_uri: str, data_dir: Path, run_id: str) -> Path:
    """A run's report on disk: the local copy, else downloaded from the run's artifacts."""
    path = report_file(data_dir, run_id)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        downloaded = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=REPORT_ARTIFACT, tracking_uri=tracking_uri, dst_path=str(path.parent)
        )
    except MlflowException as exc:
        raise RegistryError(f"MLflow run {run_id} has no segment report ({REPORT_ARTIFACT}): {exc}") from exc
    Path(downloaded).replace(path)
    return path


def version_run(tracking_uri: str, model_name: str, alias: str) -> str:
    """The MLflow run that produced the version under ``alias``."""
    try:
        return MlflowClient(tracking_uri).get_model_version_by_alias(model_name, alias).run_id
    except MlflowException as exc:
        raise RegistryError(f"no {model_name!r} version under alias {alias!r} yet: run the pipeline first") from exc


def log_params(params: dict[str, Any]) -> None:
    """Log parameters that are not yet logged (MLflow refuses to change a logged value)."""
    run = mlflow.active_run()
    assert run is not None, "log_params needs an active run"
    logged = MlflowClient().get_run(run.info.run_id).data.params
    fresh = {k: v for k, v in params.items() if k not in logged}
    if fresh:
        mlflow.log_params(fresh)


def log_metric_steps(points: list[tuple[str, float, int]], **single: float) -> None:
    """Metrics of the active run in one ``log_batch`` call: ``(key, value, step)`` points (a curve per
    k or per component) plus plain ``key=value`` metrics. One round trip instead of one per point
    (sixty over HTTP for a k sweep)."""
    from mlflow.entities import Metric

    run = mlflow.active_run()
    assert run is not None, "log_metric_steps needs an active run"
    now = int(time.time() * 1000)
    metrics = [Metric(key, float(value), now, int(step)) for key, value, step in points]
    metrics += [Metric(key, float(value), now, 0) for key, value in single.items()]
    for start in range(0, len(metrics), 1000):  # MLflow's per-request limit
        MlflowClient().log_batch(run.info.run_id, metrics=metrics[start:start + 1000], synchronous=True)


def log_png(png: bytes, artifact_file: str) -> None:
    from PIL import Image

    mlflow.log_image(Image.open(io.BytesIO(png)), artifact_file=artifact_file)


def log_json(data: Any, artifact_file: str) -> None:
    mlflow.log_dict(json.loads(json.dumps(data, default=str)), artifact_file)


def log_frame(frame: pd.DataFrame, artifact_file: str) -> None:
    mlflow.log_text(frame.to_csv(index=False), artifact_file)


def run_json(target: TrackingTarget, dagster_run_id: str, artifact_file: str) -> Any | None:
    """A JSON artifact an earlier step of this Dagster run logged (None when it has none)."""
    run_id = _KNOWN_RUNS.get((target.tracking_uri, target.experiment, dagster_run_id)) or find_run(
        target, dagster_run_id
    )
    if run_id is None:
        return None
    try:
        return mlflow.artifacts.load_dict(f"runs:/{run_id}/{artifact_file}")
    except (MlflowException, OSError):
        return None


def log_segmentation_model(
    assigner: SegmentAssigner,
    input_example: pd.DataFrame,
    registered_model_name: str,
) -> str:
    """Log the pyfunc under the active run and register it; returns the new version."""
    example = input_example.head(5)[assigner.features].astype("float64")  # head first: no copy of every row
    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_log.level
    # MLflow would otherwise copy a uv.lock/pyproject.toml found in the working directory into the
    # model: this project's own files, which name it as a package to install
    uv_detect = os.environ.pop("MLFLOW_UV_AUTO_DETECT", None)  # forced off, then put back as it was
    os.environ["MLFLOW_UV_AUTO_DETECT"] = "false"
    try:
        # segment_id is an integer by contract; the cloudpickled PythonModel is deliberate
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer", category=UserWarning)
        pyfunc_log.setLevel(logging.ERROR)
        signature = serving_signature(assigner, example)
        info = mlflow.pyfunc.log_model(
            name="segmentation_model",
            python_model=SegmentationPyfunc(assigner),
            signature=signature,
            input_example=example,
            registered_model_name=registered_model_name,
            pip_requirements=model_requirements(),
            code_paths=[str(PACKAGE_DIR)],
        )
    except MlflowException as exc:
        raise RegistryError(f"could not log/register model {registered_model_name!r}: {exc}") from exc
    finally:
        pyfunc_log.setLevel(level)
        if uv_detect is None:
            os.environ.pop("MLFLOW_UV_AUTO_DETECT", None)
        else:
            os.environ["MLFLOW_UV_AUTO_DETECT"] = uv_detect
    if info.registered_model_version is None:
        raise RegistryError(f"model {registered_model_name!r} was logged but not registered")
    return str(info.registered_model_version)


def alias_version(tracking_uri: str, model_name: str, alias: str) -> str | None:
    """The version behind ``alias`` as a string, whichever store answers.

    A SQLite (file) tracking store returns the version as an int, an HTTP server as a string;
    everything past this boundary treats it as the registry's identifier, a string.
    """
    check_reachable(tracking_uri)
    try:
        version = MlflowClient(tracking_uri).get_model_version_by_alias(model_name, alias).version
    except MlflowException:
        return None
    return str(version)


def set_alias(tracking_uri: str, model_name: str, alias: str, version: str) -> None:
    check_reachable(tracking_uri)
    MlflowClient(tracking_uri).set_registered_model_alias(model_name, alias, version)


def move_alias(tracking_uri: str, model_name: str, alias: str, version: str | None) -> None:
    """Point ``alias`` at ``version``; None removes it (undoing a first promotion)."""
    check_reachable(tracking_uri)
    client = MlflowClient(tracking_uri)
    if version is None:
        client.delete_registered_model_alias(model_name, alias)
    else:
        client.set_registered_model_alias(model_name, alias, version)


def tag_version(tracking_uri: str, model_name: str, version: str, tags: dict[str, str]) -> None:
    check_reachable(tracking_uri)
    client = MlflowClient(tracking_uri)
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)


def load_assigner(
    tracking_uri: str, model_name: str, alias: str, *, version: str | None = None
) -> tuple[SegmentAssigner, str]:
    """The ``SegmentAssigner`` behind ``models:/<name>@<alias>`` and its version (``version``: the
    alias already resolved by the caller, one registry round trip fewer)."""
    _set_tracking_uri(tracking_uri)
    version = version or alias_version(tracking_uri, model_name, alias)
    if version is None:
        raise RegistryError(
            f"no model version of {model_name!r} carries alias {alias!r} at {tracking_uri}; run the training job first"
        )
    # the version just resolved, not the alias again: one round trip fewer, and the model loaded is
    # the version returned even if the alias moves in between
    model = mlflow.pyfunc.load_model(f"models:/{model_name}/{version}")
    python_model = model.unwrap_python_model()
    if not isinstance(python_model, SegmentationPyfunc):
        raise RegistryError(f"models:/{model_name}@{alias} is not a segmentation model")
    return python_model.assigner, version


def artifact_uri(run_id: str, path: str) -> str:
    return f"{mlflow.get_run(run_id).info.artifact_uri.rstrip('/')}/{path}"


REFERENCE_ARTIFACT = "reference/reference.parquet"


def log_reference(frame: pd.DataFrame) -> None:
    """Store the training sample (features + segment ids) the drift check compares against."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(REFERENCE_ARTIFACT).name
        frame.to_parquet(path, index=False)
        mlflow.log_artifact(str(path), str(Path(REFERENCE_ARTIFACT).parent))


def load_reference(tracking_uri: str, model_name: str, version: str) -> pd.DataFrame:
    client = MlflowClient(tracking_uri)
    run_id = client.get_model_version(model_name, version).run_id
    try:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=REFERENCE_ARTIFACT, tracking_uri=tracking_uri
        )
    except Exception as exc:
        raise RegistryError(
            f"{model_name} v{version} (run {run_id}) has no drift reference {REFERENCE_ARTIFACT}: {exc}"
        ) from exc
    return pd.read_parquet(local)
