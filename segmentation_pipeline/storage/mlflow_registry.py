"""MLflow tracking and Model Registry: one run per Dagster run, models under aliases.

Uses MLflow 3 idioms only: ``log_model(name=...)``, registered-model aliases (no stages).
Every training asset of one Dagster run writes into the same MLflow run, found by the
``dagster_run_id`` tag, so steps running in separate processes still share it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from segmentation_pipeline.core.assigner import SegmentAssigner

log = logging.getLogger(__name__)

DAGSTER_RUN_TAG = "dagster_run_id"
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
    """Raw feature columns in, ``segment_id`` and ``segment_name`` out (one or many customers)."""

    def __init__(self, assigner: SegmentAssigner) -> None:
        self.assigner = assigner

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        return self.assigner.assign(frame).reset_index(drop=True)


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


def configure(target: TrackingTarget) -> str:
    """Point MLflow at the target and make sure the experiment exists; returns its id."""
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
            return client.create_experiment(target.experiment, artifact_location=location)
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
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


@contextmanager
def training_run(target: TrackingTarget, dagster_run_id: str, run_name: str | None = None) -> Iterator[str]:
    """Resume the MLflow run of this Dagster run, or start it; yields the MLflow run id."""
    experiment_id = configure(target)
    existing = find_run(target, dagster_run_id)
    if mlflow.active_run() is not None:
        mlflow.end_run()
    if existing:
        run = mlflow.start_run(run_id=existing)
    else:
        run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags={DAGSTER_RUN_TAG: dagster_run_id})
    try:
        yield run.info.run_id
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    else:
        mlflow.end_run()  # a later asset of the same Dagster run reopens it


def log_params(params: dict[str, Any]) -> None:
    """Log parameters that are not yet logged (MLflow refuses to change a logged value)."""
    run = mlflow.active_run()
    assert run is not None, "log_params needs an active run"
    logged = MlflowClient().get_run(run.info.run_id).data.params
    fresh = {k: v for k, v in params.items() if k not in logged}
    if fresh:
        mlflow.log_params(fresh)


def log_png(png: bytes, artifact_file: str) -> None:
    from PIL import Image

    mlflow.log_image(Image.open(io.BytesIO(png)), artifact_file=artifact_file)


def log_json(data: Any, artifact_file: str) -> None:
    mlflow.log_dict(json.loads(json.dumps(data, default=str)), artifact_file)


def log_frame(frame: pd.DataFrame, artifact_file: str) -> None:
    mlflow.log_text(frame.to_csv(index=False), artifact_file)


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
    uv_detect = os.environ.get("MLFLOW_UV_AUTO_DETECT")
    os.environ["MLFLOW_UV_AUTO_DETECT"] = "false"
    try:
        # segment_id is an integer by contract; the cloudpickled PythonModel is deliberate
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer", category=UserWarning)
        pyfunc_log.setLevel(logging.ERROR)
        signature = infer_signature(example, assigner.assign(example).reset_index(drop=True))
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
    try:
        version = MlflowClient(tracking_uri).get_model_version_by_alias(model_name, alias).version
    except MlflowException:
        return None
    return str(version)


def set_alias(tracking_uri: str, model_name: str, alias: str, version: str) -> None:
    MlflowClient(tracking_uri).set_registered_model_alias(model_name, alias, version)


def tag_version(tracking_uri: str, model_name: str, version: str, tags: dict[str, str]) -> None:
    client = MlflowClient(tracking_uri)
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)


def load_assigner(tracking_uri: str, model_name: str, alias: str) -> tuple[SegmentAssigner, str]:
    """The ``SegmentAssigner`` behind ``models:/<name>@<alias>`` and its version."""
    _set_tracking_uri(tracking_uri)
    version = alias_version(tracking_uri, model_name, alias)
    if version is None:
        raise RegistryError(
            f"no model version of {model_name!r} carries alias {alias!r} at {tracking_uri}; run the training job first"
        )
    model = mlflow.pyfunc.load_model(f"models:/{model_name}@{alias}")
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
