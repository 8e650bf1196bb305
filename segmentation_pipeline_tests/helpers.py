"""Test helpers shared by the end-to-end tests: configs written to tmp, MLflow REST calls."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from segmentation_pipeline.config import DEFAULT_CONFIG


def write_config(tmp_path: Path, database_url: str, tracking_uri: str, name: str = "config.yaml", **changes: Any) -> Path:
    """The default config pointed at a test database and tracking store; dotted keys override."""
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
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
