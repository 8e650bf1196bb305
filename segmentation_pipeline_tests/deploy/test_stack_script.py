"""scripts/native_stack.py without services: generated files, environment, process cleanup."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "native_stack.py"

spec = importlib.util.spec_from_file_location("native_stack", SCRIPT)
native_stack = importlib.util.module_from_spec(spec)
spec.loader.exec_module(native_stack)


def test_instance_file_is_the_compose_instance_with_loopback_paths(tmp_path):
    path = native_stack.write_instance(tmp_path / "home", tmp_path / "runtime")
    generated = yaml.safe_load(path.read_text())
    compose = yaml.safe_load((REPO / "docker" / "dagster.yaml").read_text())
    assert generated["compute_logs"]["config"]["base_dir"] == str(tmp_path / "runtime" / "compute_logs")
    assert generated["local_artifact_storage"]["config"]["base_dir"] == str(tmp_path / "runtime" / "dagster_storage")
    for key in ("compute_logs", "local_artifact_storage"):
        generated[key]["config"].pop("base_dir")
        compose[key]["config"].pop("base_dir")
    assert generated == compose  # same storage, coordinator, launcher and concurrency limits


def test_workspace_targets_the_loopback_code_server(tmp_path):
    workspace = yaml.safe_load(native_stack.write_workspace(tmp_path, 4711).read_text())
    assert workspace["load_from"] == [
        {"grpc_server": {"host": "127.0.0.1", "port": 4711, "location_name": "segmentation_pipeline"}}
    ]


def test_pipeline_environment_defaults_and_overrides(tmp_path, monkeypatch):
    for var in ("SEGMENTATION_CONFIG", "SEGMENTATION_DATABASE_URL", "SEGMENTATION_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    env = native_stack._pipeline_env(tmp_path)
    assert env == {
        "SEGMENTATION_CONFIG": str(REPO / "docker" / "segmentation.yaml"),
        "SEGMENTATION_DATABASE_URL": "mysql+pymysql://root@127.0.0.1:3306/test",
        "SEGMENTATION_DATA_DIR": str(tmp_path / "data"),
    }
    config = tmp_path / "mine.yaml"
    config.write_text("{}")
    monkeypatch.setenv("SEGMENTATION_CONFIG", str(config))
    monkeypatch.setenv("SEGMENTATION_DATA_DIR", "/srv/data")
    assert native_stack._pipeline_env(tmp_path) == {"SEGMENTATION_CONFIG": str(config)}  # the rest passes through

    state = {"postgres_url": "postgresql://dagster:s3cret@db.internal:6543/postgres", "dagster_home": "/h",
             "databases": {"dagster": "x_dagster"}, "urls": {"mlflow": "http://127.0.0.1:5001"},
             "pipeline_env": {"SEGMENTATION_CONFIG": "/c.yaml"}}
    env = native_stack.stack_env(state, base={"PATH": "/bin"})
    assert {k: env[k] for k in env if k.startswith("DAGSTER_POSTGRES")} == {
        "DAGSTER_POSTGRES_HOST": "db.internal", "DAGSTER_POSTGRES_PORT": "6543", "DAGSTER_POSTGRES_USER": "dagster",
        "DAGSTER_POSTGRES_PASSWORD": "s3cret", "DAGSTER_POSTGRES_DB": "x_dagster",
    }
    assert env["DAGSTER_HOME"] == "/h" and env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5001"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="process-tree walk reads /proc (Linux)")
def test_stop_ends_the_whole_process_tree_and_only_ours(tmp_path):
    # a parent that ignores SIGTERM (forcing the SIGKILL path) with two children
    cmd = ["bash", "-c", "trap '' TERM; sleep 300 & sleep 300 & wait"]
    info = native_stack._spawn("tree", cmd, dict(os.environ), tmp_path)
    deadline = time.monotonic() + 10
    while len(native_stack._descendants(info["pid"])) < 2:
        assert time.monotonic() < deadline, "children never started"
        time.sleep(0.05)
    children = native_stack._descendants(info["pid"])

    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        stale = {"pid": bystander.pid, "start_time": "1"}  # a recorded pid now owned by someone else
        native_stack.terminate_all([("tree", info), ("stale", stale)], grace_s=1)
        assert not any(native_stack._pid_exists(p) for p in [info["pid"], *children])
        assert bystander.poll() is None, "a process whose start time does not match was signalled"
    finally:
        bystander.send_signal(signal.SIGKILL)
        bystander.wait()


def test_status_and_stop_without_a_stack(tmp_path):
    run = lambda *args: subprocess.run([sys.executable, str(SCRIPT), "--runtime-dir", str(tmp_path), *args],  # noqa: E731
                                       capture_output=True, text=True, timeout=60)
    assert run("status").returncode == 3
    stopped = run("stop")
    assert stopped.returncode == 0 and "nothing to stop" in stopped.stdout
