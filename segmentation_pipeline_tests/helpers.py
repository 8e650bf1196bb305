"""Test helpers shared by the end-to-end tests: configs written to tmp, MLflow REST calls."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from segmentation_pipeline.config import DEFAULT_CONFIG


def write_config(
    tmp_path: Path, database_url: str, tracking_uri: str, name: str = "config.yaml", *, base: Path = DEFAULT_CONFIG,
    **changes: Any,
) -> Path:
    """The ``base`` config (default: the default one) pointed at a test database and tracking store;
    dotted keys override."""
    raw = yaml.safe_load(base.read_text())
    raw["database"]["url"] = database_url
    raw["mlflow"]["tracking_uri"] = tracking_uri
    raw["mlflow"].pop("artifact_location", None)
    raw["data_dir"] = str(tmp_path / "data")
    for dotted, value in changes.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def mlflow_rest(url: str, path: str, **params: str) -> dict:
    query = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{url}/api/2.0/mlflow/{path}?{query}", timeout=30) as response:
        return json.loads(response.read())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, process: "subprocess.Popen[bytes]", timeout_s: float = 120) -> bool:
    """Poll ``url`` until it answers 200; False when the process died or time ran out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.5)


def stop(process: "subprocess.Popen[bytes]") -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


@contextmanager
def served_model(model_uri: str, tracking_uri: str) -> Iterator[str]:
    """``mlflow models serve --env-manager local`` on a free loopback port; yields its base URL."""
    import os
    import sys

    import pytest

    port = free_port()
    venv_bin = os.path.dirname(sys.executable)  # `mlflow models serve` execs uvicorn from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}"}
    server = subprocess.Popen(
        [os.path.join(venv_bin, "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        if not wait_for_http(f"http://127.0.0.1:{port}/ping", server):
            server.kill()
            output = server.stdout.read().decode(errors="replace") if server.stdout else ""
            pytest.fail(f"model server did not start: {output[-3000:]}")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(server)


def invoke(base_url: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """POST ``dataframe_records`` to a served model; its predictions."""
    request = urllib.request.Request(f"{base_url}/invocations", data=json.dumps({"dataframe_records": records}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["predictions"]
