"""The registered model is self-contained: third-party requirements pinned to the trained
versions, this project's code inside the model, and it loads and scores where the project is
not installed (the situation of `mlflow models serve` building the model's own environment)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from importlib.metadata import version
from pathlib import Path

import mlflow
import pytest

from segmentation_pipeline.cli import run_pipeline
from segmentation_pipeline.core.demo_data import generate_customers
from segmentation_pipeline.storage.bulk_load import load_frame
from segmentation_pipeline.storage.connection import create_db_engine
from segmentation_pipeline_tests.helpers import write_config

pytestmark = pytest.mark.e2e

# Runs in a fresh interpreter: hide every installed copy of this project, then load the model.
LOAD_WITHOUT_PROJECT = r"""
import importlib.util, json, os, sys
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
roots = {os.path.realpath(root) for root in json.loads(sys.argv[2])}
# the checkout itself goes; its .venv's site-packages (where mlflow lives in CI) stays
sys.path = [p for p in sys.path if p and os.path.realpath(p) not in roots]
assert importlib.util.find_spec("segmentation_pipeline") is None, "project still importable"
import mlflow.pyfunc, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
out = model.predict(pd.DataFrame([{"age": 24.0, "annual_income": 38000.0, "spending_score": 85.0}]))
print(json.dumps({"row": out.iloc[0].to_dict(), "code": sys.modules["segmentation_pipeline"].__file__}, default=str))
"""


@pytest.fixture()
def model_dir(tmp_path: Path, sqlite_url: str, local_mlflow_uri: str) -> Path:
    frame, _ = generate_customers(1200, seed=2, dirty=False)
    load_frame(create_db_engine(sqlite_url), "customers", frame, if_exists="replace", primary_key="customer_id")
    config = write_config(tmp_path, sqlite_url, local_mlflow_uri, **{
        "mlflow.artifact_location": str(tmp_path / "mlartifacts"), "promotion.bootstrap_rounds": 2, "k": 4,
    })
    summary = run_pipeline(str(config))
    mlflow.set_tracking_uri(local_mlflow_uri)
    return Path(mlflow.artifacts.download_artifacts(
        f"models:/{summary['model_name']}@champion", dst_path=str(tmp_path / "model"), tracking_uri=local_mlflow_uri,
    ))


def test_requirements_name_only_third_party_packages_pinned_to_trained_versions(model_dir: Path):
    lines = [line for line in (model_dir / "requirements.txt").read_text().splitlines() if line.strip()]
    pins = dict(line.split("==") for line in lines)
    assert all("==" in line for line in lines), lines
    assert not any("segmentation" in name.lower() for name in pins), pins
    for name in ("scikit-learn", "pandas", "numpy", "mlflow"):
        assert pins[name] == version(name), (name, pins)
    conda = (model_dir / "conda.yaml").read_text()
    assert "segmentation" not in conda.split("dependencies:")[1]
    # this project's lock and pyproject (which name it as a package) are not shipped as the model's environment
    assert not (model_dir / "uv.lock").exists() and not (model_dir / "pyproject.toml").exists()
    assert (model_dir / "code" / "segmentation_pipeline" / "core" / "assigner.py").exists()


def test_model_loads_and_scores_where_the_project_is_not_installed(model_dir: Path, tmp_path: Path):
    roots = [str(Path(__file__).resolve().parents[1])]  # this checkout (PYTHONPATH in the test run)
    done = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_PROJECT, str(model_dir), json.dumps(roots)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["code"].startswith(str(model_dir / "code")), answer
    assert answer["row"]["segment_name"] and int(answer["row"]["segment_id"]) >= 0


def test_served_from_its_own_logged_environment(model_dir: Path, tmp_path: Path):
    """`mlflow models serve` as deployments run it: no --env-manager local, so it builds a
    virtualenv from the model's requirements.txt (pyenv provides the Python; the first build
    downloads the packages, later ones reuse ~/.mlflow/envs) and scores one customer over HTTP."""
    from segmentation_pipeline_tests.helpers import free_port, stop, wait_for_http

    port = free_port()
    bin_dirs = [str(Path(sys.executable).parent), str(Path.home() / ".pyenv" / "bin"), "/usr/bin", "/bin"]
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env["PATH"] = os.pathsep.join(bin_dirs)
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", str(model_dir),
         "-h", "127.0.0.1", "-p", str(port)],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        if not wait_for_http(f"http://127.0.0.1:{port}/ping", server, timeout_s=1200):
            pytest.fail(f"model server did not start: {(tmp_path / 'serve.log').read_text()[-3000:]}")
        body = json.dumps({"dataframe_records": [{"age": 24.0, "annual_income": 38000.0, "spending_score": 85.0}]})
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body.encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            [prediction] = json.loads(response.read())["predictions"]
        assert prediction["segment_name"] and isinstance(prediction["segment_id"], int)
        # it ran inside the environment MLflow built from the model's requirements, not this one
        assert "/.mlflow/envs/" in (tmp_path / "serve.log").read_text()
    finally:
        stop(server)
        log.close()
