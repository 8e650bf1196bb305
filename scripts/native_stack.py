#!/usr/bin/env python3
"""The production topology of docker-compose.yml, without Docker, on loopback.

    .venv/bin/python scripts/native_stack.py start     # databases, MLflow, code server, UI, daemon
    .venv/bin/python scripts/native_stack.py status    # what runs, where, and whether it is healthy
    .venv/bin/python scripts/native_stack.py stop      # stops every process it started
    eval "$(.venv/bin/python scripts/native_stack.py env)"   # point a shell at the stack

What ``start`` does, mirroring the compose services:

* **postgres** — creates two databases on an existing PostgreSQL server (``--postgres-url``,
  default ``postgresql://postgres@127.0.0.1:5432/postgres``): ``<name>_dagster`` for Dagster's
  instance storage and ``<name>_mlflow`` for MLflow's backend store.
* **mlflow** — ``mlflow server`` on that database, ``--serve-artifacts`` with
  ``--artifacts-destination <runtime>/mlartifacts``.
* **dagster-user-code** — ``dagster code-server start -m segmentation_pipeline.definitions``;
  runs and sensor ticks execute here, with the pipeline's environment.
* **dagster-webserver** and **dagster-daemon** — load the code location over gRPC
  (``<runtime>/workspace.yaml``), share ``$DAGSTER_HOME/dagster.yaml``: the instance file of the
  compose stack (docker/dagster.yaml: PostgreSQL storage, queued runs, the
  ``segmentation/tables`` tag limit, pool limit 1) with loopback paths.

Pipeline environment handed to the code server (and, as in compose, to webserver and daemon):
``SEGMENTATION_CONFIG`` (default ``docker/segmentation.yaml``), ``SEGMENTATION_DATABASE_URL``
(default, only with that default config: ``mysql+pymysql://root@127.0.0.1:3306/test``),
``SEGMENTATION_DATABASE_PASSWORD`` (passed through), ``SEGMENTATION_DATA_DIR`` (default
``<runtime>/data``) and ``MLFLOW_TRACKING_URI`` (always the stack's MLflow server).

Ports: ``--mlflow-port`` / ``--webserver-port`` / ``--code-server-port`` (defaults 5000, 3000,
4000, or ``STACK_MLFLOW_PORT`` etc.); ``0`` picks a free port. Everything the stack writes
lives in the runtime directory (``--runtime-dir``, default ``<repo>/.stack``): ``stack.json``
(ports, URLs, pids), ``logs/*.log``, ``dagster_home/``, ``mlartifacts/``, ``data/``.
``start`` returns once every service is healthy (MLflow /health, the code location loaded
in the webserver, every required daemon heartbeating) or stops what it started and fails
with the log tails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DOCKER_DIR = REPO / "docker"
DEFAULT_RUNTIME = REPO / ".stack"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_DATABASE_URL = "mysql+pymysql://root@127.0.0.1:3306/test"
DEFAULT_MODULE = "segmentation_pipeline.definitions"
LOCATION_NAME = "segmentation_pipeline"
STATE_FILE = "stack.json"
# start order; stop goes in reverse
SERVICES = ("mlflow", "dagster-user-code", "dagster-webserver", "dagster-daemon")
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")


class StackError(RuntimeError):
    """A service did not come up; the message says which and shows its log."""


# --------------------------------------------------------------------------- small helpers


def _log(message: str) -> None:
    print(f"[native-stack] {message}", flush=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def _http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def graphql(webserver_url: str, query: str, variables: dict[str, Any] | None = None, timeout: float = 30) -> dict:
    """POST a GraphQL query to the Dagster webserver; returns ``data`` or raises with the errors."""
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"{webserver_url}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        payload = json.loads(response.read())
    if payload.get("errors"):
        raise StackError(f"GraphQL errors: {payload['errors']}")
    return payload["data"]


# --------------------------------------------------------------------------- processes


def _proc_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot): tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[19]


def _alive(pid: int, start_time: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    if start_time is not None and Path("/proc").is_dir():
        current = _proc_start_time(pid)
        if current is None or current != start_time:
            return False  # the pid now belongs to another process
        state = Path(f"/proc/{pid}/stat").read_text()
        if state[state.rindex(")") + 2] == "Z":
            return False
    return True


def _descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (Linux /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _spawn(name: str, cmd: list[str], env: dict[str, str], runtime: Path) -> dict[str, Any]:
    log_path = runtime / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop signals the whole tree
        )
    (runtime / "pids").mkdir(exist_ok=True)
    (runtime / "pids" / f"{name}.pid").write_text(f"{process.pid}\n")
    _log(f"started {name} (pid {process.pid}), log {log_path}")
    return {"pid": process.pid, "start_time": _proc_start_time(process.pid), "cmd": cmd, "log": str(log_path)}


def terminate_all(items: list[tuple[str, dict[str, Any]]], grace_s: float = 20) -> None:
    """SIGTERM every process group we started (and their descendants) at once, SIGKILL leftovers.

    Only processes recorded in our state are touched, and only while their kernel start time
    still matches (a reused pid belongs to someone else).
    """
    targets: dict[str, tuple[int, bool, list[int]]] = {}
    for name, info in items:
        pid, start_time = int(info["pid"]), info.get("start_time")
        if not _alive(pid, start_time):
            _log(f"{name} (pid {pid}) is not running")
            continue
        tree = _descendants(pid) if Path("/proc").is_dir() else []
        try:
            own_group = os.getpgid(pid) == pid  # start_new_session: the group is ours alone
        except ProcessLookupError:
            continue
        targets[name] = (pid, own_group, [pid, *tree])
        _log(f"stopping {name} (pid {pid}{f', {len(tree)} child process(es)' if tree else ''})")
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for name, (pid, own_group, pids) in targets.items():
            if own_group:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, sig)
            for target in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(target, sig)
        deadline = time.monotonic() + (grace_s if sig == signal.SIGTERM else 5)
        while time.monotonic() < deadline:
            if not any(_pid_exists(t) for _, _, pids in targets.values() for t in pids):
                return
            time.sleep(0.2)
        if sig == signal.SIGTERM:
            slow = [n for n, (_, _, pids) in targets.items() if any(_pid_exists(t) for t in pids)]
            _log(f"still running after {grace_s:.0f}s: {', '.join(slow)}; SIGKILL")
    left = [t for _, _, pids in targets.values() for t in pids if _pid_exists(t)]
    if left:
        _log(f"warning: processes {left} survived SIGKILL")


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            text = stat.read_text()
            return text[text.rindex(")") + 2] != "Z"
        except OSError:
            return False
    return True


# --------------------------------------------------------------------------- state


def _state_path(runtime: Path) -> Path:
    return runtime / STATE_FILE


def load_state(runtime: Path) -> dict[str, Any] | None:
    path = _state_path(runtime)
    if not path.exists():
        return None
    return json.loads(path.read_text())


def _save_state(runtime: Path, state: dict[str, Any]) -> None:
    path = _state_path(runtime)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # may hold a PostgreSQL URL
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(state, indent=2, sort_keys=True))
    tmp.replace(path)


# --------------------------------------------------------------------------- postgres


def _pg_connect(url: str, database: str | None = None):
    import psycopg2  # installed with dagster-postgres

    parts = urllib.parse.urlsplit(url)
    return psycopg2.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        user=urllib.parse.unquote(parts.username or "postgres"),
        password=urllib.parse.unquote(parts.password) if parts.password else os.environ.get("PGPASSWORD"),
        dbname=database or (parts.path.lstrip("/") or "postgres"),
        connect_timeout=10,
    )


def ensure_databases(admin_url: str, names: list[str], *, fresh: bool) -> None:
    conn = _pg_connect(admin_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for name in names:
                if fresh:
                    cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}"')
                    _log(f"created PostgreSQL database {name}")
    finally:
        conn.close()


def drop_databases(admin_url: str, names: list[str]) -> None:
    conn = _pg_connect(admin_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for name in names:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                _log(f"dropped PostgreSQL database {name}")
    finally:
        conn.close()


# --------------------------------------------------------------------------- configuration


def write_instance(dagster_home: Path, runtime: Path) -> Path:
    """docker/dagster.yaml with loopback paths: the same storage, coordinator and limits."""
    import yaml

    instance = yaml.safe_load((DOCKER_DIR / "dagster.yaml").read_text())
    instance["compute_logs"]["config"]["base_dir"] = str(runtime / "compute_logs")
    instance["local_artifact_storage"]["config"]["base_dir"] = str(runtime / "dagster_storage")
    dagster_home.mkdir(parents=True, exist_ok=True)
    path = dagster_home / "dagster.yaml"
    path.write_text(
        "# Generated by scripts/native_stack.py from docker/dagster.yaml (loopback paths).\n"
        + yaml.safe_dump(instance, sort_keys=False)
    )
    return path


def write_workspace(runtime: Path, code_server_port: int) -> Path:
    import yaml

    workspace = yaml.safe_load((DOCKER_DIR / "workspace.yaml").read_text())
    [entry] = workspace["load_from"]
    entry["grpc_server"].update({"host": "127.0.0.1", "port": code_server_port})
    path = runtime / "workspace.yaml"
    path.write_text(
        "# Generated by scripts/native_stack.py from docker/workspace.yaml.\n" + yaml.safe_dump(workspace, sort_keys=False)
    )
    return path


def stack_env(state: dict[str, Any], base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every stack process gets (as the compose services do)."""
    env = dict(os.environ if base is None else base)
    pg = urllib.parse.urlsplit(state["postgres_url"])
    env.update(
        {
            "DAGSTER_HOME": state["dagster_home"],
            "DAGSTER_POSTGRES_HOST": pg.hostname or "127.0.0.1",
            "DAGSTER_POSTGRES_PORT": str(pg.port or 5432),
            "DAGSTER_POSTGRES_USER": urllib.parse.unquote(pg.username or "postgres"),
            "DAGSTER_POSTGRES_PASSWORD": urllib.parse.unquote(pg.password or "") or env.get("PGPASSWORD", ""),
            "DAGSTER_POSTGRES_DB": state["databases"]["dagster"],
            "MLFLOW_TRACKING_URI": state["urls"]["mlflow"],
        }
    )
    env.update(state["pipeline_env"])
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _pipeline_env(runtime: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    config = os.environ.get("SEGMENTATION_CONFIG")
    if not config:
        env["SEGMENTATION_CONFIG"] = str(DOCKER_DIR / "segmentation.yaml")
        if not os.environ.get("SEGMENTATION_DATABASE_URL"):
            env["SEGMENTATION_DATABASE_URL"] = DEFAULT_DATABASE_URL
    else:
        env["SEGMENTATION_CONFIG"] = str(Path(config).resolve()) if Path(config).exists() else config
    if not os.environ.get("SEGMENTATION_DATA_DIR"):
        env["SEGMENTATION_DATA_DIR"] = str(runtime / "data")
    return env


# --------------------------------------------------------------------------- health


def _wait(what: str, check, timeout_s: float, processes: dict[str, dict[str, Any]], watch: list[str]) -> Any:
    """Poll ``check()`` until it returns a truthy value; fail early if a watched process died."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        for name in watch:
            info = processes[name]
            if not _alive(info["pid"], info.get("start_time")):
                raise StackError(f"{name} exited while waiting for {what}; log tail:\n{_tail(Path(info['log']))}")
        try:
            result = check()
            if result:
                return result
        except StackError:
            raise
        except Exception as exc:  # noqa: BLE001 - not up yet
            last_error = exc
        time.sleep(1)
    logs = "\n".join(f"--- {n} ---\n{_tail(Path(processes[n]['log']), 2500)}" for n in watch)
    raise StackError(f"timed out after {timeout_s:.0f}s waiting for {what} (last error: {last_error})\n{logs}")


def _mlflow_healthy(url: str) -> bool:
    status, _ = _http_get(f"{url}/health", timeout=3)
    return status == 200


def _code_server_loaded(port: int, module: str) -> bool:
    """True once the code server has loaded the definitions; raises with the load error."""
    from dagster._grpc.client import DagsterGrpcClient
    from dagster._serdes import deserialize_value
    from dagster._utils.error import SerializableErrorInfo

    client = DagsterGrpcClient(port=port, host="127.0.0.1")
    value = deserialize_value(client.list_repositories())
    if isinstance(value, SerializableErrorInfo):
        raise StackError(f"the code server could not load {module}:\n{value.to_string()}")
    return True


_LOCATION_QUERY = """
query { workspaceOrError { __typename ... on Workspace { locationEntries {
  name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } ... on RepositoryLocation { repositories { name } } }
} } } }
"""

_DAEMON_QUERY = """
query { instance { daemonHealth { allDaemonStatuses {
  daemonType required healthy lastHeartbeatErrors { message }
} } } }
"""


def location_status(webserver_url: str) -> tuple[str, str]:
    data = graphql(webserver_url, _LOCATION_QUERY)
    for entry in data["workspaceOrError"].get("locationEntries", []):
        if entry["name"] == LOCATION_NAME:
            loaded = entry["locationOrLoadError"] or {}
            if loaded.get("__typename") == "RepositoryLocation":
                return "loaded", ""
            if loaded.get("__typename") == "PythonError":
                return "error", loaded["message"]
            return str(entry["loadStatus"]).lower(), ""
    return "missing", ""


def unhealthy_daemons(webserver_url: str) -> list[str]:
    data = graphql(webserver_url, _DAEMON_QUERY)
    statuses = data["instance"]["daemonHealth"]["allDaemonStatuses"]
    return [
        f"{s['daemonType']}: {[e['message'] for e in s['lastHeartbeatErrors']][:1] or 'no heartbeat yet'}"
        for s in statuses
        if s["required"] and not s["healthy"]
    ]


# --------------------------------------------------------------------------- commands


def _bin(name: str) -> str:
    """An executable of this interpreter's environment (the project venv), else from PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise StackError(f"{name} not found next to {sys.executable} nor on PATH: run `make setup`")
    return found


def _resolve_port(requested: int, what: str, flag: str) -> int:
    if requested == 0:
        return _free_port()
    if _port_in_use(requested):
        raise StackError(f"port {requested} for {what} is in use on 127.0.0.1: pass {flag} (0 = any free port)")
    return requested


def cmd_start(args: argparse.Namespace) -> int:
    import importlib.util

    for module in ("dagster", "dagster_postgres", "psycopg2", "mlflow"):
        if importlib.util.find_spec(module) is None:
            raise StackError(f"{module} is not importable by {sys.executable}: run this script with the project's "
                             "interpreter (.venv/bin/python) after `make setup`")
    runtime = args.runtime_dir.resolve()
    existing = load_state(runtime)
    if existing and any(_alive(p["pid"], p.get("start_time")) for p in existing.get("processes", {}).values()):
        _log(f"a stack is already running from {runtime}: `status` shows it, `stop` ends it")
        return 1
    if not _NAME.match(args.name):
        raise StackError(f"--name {args.name!r}: lower-case letters, digits, underscores (it names databases)")
    if args.fresh and runtime.exists():
        for sub in ("logs", "pids", "compute_logs", "dagster_storage", "mlartifacts", "data", "dagster_home"):
            shutil.rmtree(runtime / sub, ignore_errors=True)
    runtime.mkdir(parents=True, exist_ok=True)
    dagster_home = (args.dagster_home or runtime / "dagster_home").resolve()

    ports = {
        "mlflow": _resolve_port(args.mlflow_port, "mlflow", "--mlflow-port"),
        "webserver": _resolve_port(args.webserver_port, "dagster-webserver", "--webserver-port"),
        "code_server": _resolve_port(args.code_server_port, "dagster code-server", "--code-server-port"),
    }
    state: dict[str, Any] = {
        "name": args.name,
        "runtime_dir": str(runtime),
        "dagster_home": str(dagster_home),
        "postgres_url": args.postgres_url,
        "databases": {"dagster": f"{args.name}_dagster", "mlflow": f"{args.name}_mlflow"},
        "ports": ports,
        "urls": {
            "mlflow": f"http://127.0.0.1:{ports['mlflow']}",
            "webserver": f"http://127.0.0.1:{ports['webserver']}",
            "code_server": f"grpc://127.0.0.1:{ports['code_server']}",
        },
        "pipeline_env": _pipeline_env(runtime),
        "processes": {},
        "started_at": time.time(),
    }
    _save_state(runtime, state)
    started = time.monotonic()
    try:
        ensure_databases(args.postgres_url, list(state["databases"].values()), fresh=args.fresh)
        write_instance(dagster_home, runtime)
        workspace = write_workspace(runtime, ports["code_server"])
        env = stack_env(state)
        processes = state["processes"]
        pg = urllib.parse.urlsplit(args.postgres_url)
        mlflow_env = dict(env)
        # MLflow's server-side job runner (GenAI evaluation; 7 huey workers) is unused here
        mlflow_env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        if pg.password:
            mlflow_env["PGPASSWORD"] = urllib.parse.unquote(pg.password)  # never on the command line
        backend = (
            f"postgresql+psycopg2://{pg.username or 'postgres'}@{pg.hostname or '127.0.0.1'}:{pg.port or 5432}/"
            f"{state['databases']['mlflow']}"
        )
        (runtime / "mlartifacts").mkdir(exist_ok=True)
        # MLflow (migrations on first start) and the code server (imports the pipeline) load in parallel.
        processes["mlflow"] = _spawn(
            "mlflow",
            [_bin("mlflow"), "server", "--backend-store-uri", backend, "--serve-artifacts",
             "--artifacts-destination", str(runtime / "mlartifacts"),
             "--host", "127.0.0.1", "--port", str(ports["mlflow"]), "--workers", str(args.mlflow_workers)],
            mlflow_env, runtime,
        )
        processes["dagster-user-code"] = _spawn(
            "dagster-user-code",
            [_bin("dagster"), "code-server", "start", "-m", args.module, "-h", "127.0.0.1",
             "-p", str(ports["code_server"]), "--location-name", LOCATION_NAME],
            env, runtime,
        )
        _save_state(runtime, state)
        remaining = lambda: max(5.0, args.timeout - (time.monotonic() - started))  # noqa: E731
        _wait("MLflow /health", lambda: _mlflow_healthy(state["urls"]["mlflow"]), remaining(), processes, ["mlflow"])
        _log(f"mlflow healthy at {state['urls']['mlflow']} ({time.monotonic() - started:.0f}s)")
        _wait("the code server to load the definitions", lambda: _code_server_loaded(ports["code_server"], args.module),
              remaining(), processes, ["dagster-user-code"])
        _log(f"code server loaded {args.module} on 127.0.0.1:{ports['code_server']} ({time.monotonic() - started:.0f}s)")
        processes["dagster-webserver"] = _spawn(
            "dagster-webserver",
            [_bin("dagster-webserver"), "-w", str(workspace), "-h", "127.0.0.1", "-p", str(ports["webserver"])],
            env, runtime,
        )
        processes["dagster-daemon"] = _spawn("dagster-daemon", [_bin("dagster-daemon"), "run", "-w", str(workspace)],
                                             env, runtime)
        _save_state(runtime, state)
        web = state["urls"]["webserver"]
        _wait("dagster-webserver /server_info", lambda: _http_get(f"{web}/server_info")[0] == 200, remaining(),
              processes, ["dagster-webserver"])

        def location_loaded() -> bool:
            status, message = location_status(web)
            if status == "error":
                raise StackError(f"code location {LOCATION_NAME} failed to load in the webserver:\n{message}")
            return status == "loaded"

        _wait(f"code location {LOCATION_NAME} in the webserver", location_loaded, remaining(), processes,
              ["dagster-webserver", "dagster-user-code"])
        _wait("every required daemon to heartbeat", lambda: not unhealthy_daemons(web), remaining(), processes,
              ["dagster-daemon"])
    except BaseException as exc:
        _log(f"start failed: {exc}")
        terminate_all([(n, state["processes"][n]) for n in reversed(SERVICES) if n in state["processes"]], grace_s=10)
        state["processes"] = {}
        _save_state(runtime, state)
        return 1
    _save_state(runtime, state)
    _log(f"stack up in {time.monotonic() - started:.0f}s")
    _log(f"  Dagster UI  {state['urls']['webserver']}")
    _log(f"  MLflow UI   {state['urls']['mlflow']}")
    _log(f"  DAGSTER_HOME={dagster_home}  (eval \"$({Path(sys.argv[0]).name} env)\" for a shell)")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    runtime = args.runtime_dir.resolve()
    state = load_state(runtime)
    if state is None:
        _log(f"no stack state in {runtime}; nothing to stop")
        return 0
    processes = state.get("processes", {})
    terminate_all([(n, processes[n]) for n in reversed(SERVICES) if n in processes], grace_s=args.grace)
    for name in SERVICES:
        (runtime / "pids" / f"{name}.pid").unlink(missing_ok=True)
    state["processes"] = {}
    _save_state(runtime, state)
    if args.drop_databases:
        drop_databases(state["postgres_url"], list(state["databases"].values()))
    _log("stopped")
    return 0


def collect_status(state: dict[str, Any]) -> dict[str, Any]:
    report: dict[str, Any] = {"urls": state["urls"], "dagster_home": state["dagster_home"], "services": {}}
    for name in SERVICES:
        info = state.get("processes", {}).get(name)
        report["services"][name] = {
            "pid": info["pid"] if info else None,
            "running": bool(info) and _alive(info["pid"], info.get("start_time")),
            "log": info["log"] if info else None,
        }
    services = report["services"]
    try:
        services["mlflow"]["healthy"] = services["mlflow"]["running"] and _mlflow_healthy(state["urls"]["mlflow"])
    except Exception:  # noqa: BLE001
        services["mlflow"]["healthy"] = False
    web = state["urls"]["webserver"]
    try:
        services["dagster-webserver"]["healthy"] = _http_get(f"{web}/server_info")[0] == 200
        location, message = location_status(web)
        services["dagster-user-code"]["healthy"] = services["dagster-user-code"]["running"] and location == "loaded"
        services["dagster-user-code"]["location"] = location if not message else f"{location}: {message[:500]}"
        problems = unhealthy_daemons(web)
        services["dagster-daemon"]["healthy"] = services["dagster-daemon"]["running"] and not problems
        services["dagster-daemon"]["problems"] = problems
    except Exception as exc:  # noqa: BLE001 - webserver down: everything behind it is unknown
        for name in ("dagster-webserver", "dagster-user-code", "dagster-daemon"):
            services[name].setdefault("healthy", False)
        services["dagster-webserver"]["error"] = str(exc)
    report["healthy"] = all(s["running"] and s.get("healthy") for s in services.values())
    return report


def cmd_status(args: argparse.Namespace) -> int:
    state = load_state(args.runtime_dir.resolve())
    if state is None or not state.get("processes"):
        print(json.dumps({"running": False}) if args.json else "native stack: not running")
        return 3
    report = collect_status(state)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for name, service in report["services"].items():
            flag = "healthy" if service.get("healthy") else ("running" if service["running"] else "DOWN")
            print(f"{name:<18} {flag:<8} pid {service['pid']}  {service.get('location', '')}")
        for key, url in report["urls"].items():
            print(f"{key:<18} {url}")
    return 0 if report["healthy"] else 1


def cmd_env(args: argparse.Namespace) -> int:
    state = load_state(args.runtime_dir.resolve())
    if state is None:
        print(f"# no stack state in {args.runtime_dir}", file=sys.stderr)
        return 3
    env = stack_env(state, base={})
    for key in sorted(env):
        if key.startswith(("DAGSTER_", "SEGMENTATION_", "MLFLOW_")) and not key.endswith("PASSWORD"):
            print(f"export {key}={json.dumps(env[key])}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runtime-dir", type=Path, default=Path(os.environ.get("STACK_RUNTIME_DIR", DEFAULT_RUNTIME)),
                        help="state, logs, DAGSTER_HOME and artifacts (default: <repo>/.stack or $STACK_RUNTIME_DIR)")
    sub = parser.add_subparsers(dest="command", required=True)

    start = sub.add_parser("start", help="start the stack and wait until it is healthy")
    start.add_argument("--name", default=os.environ.get("STACK_NAME", "segmentation"),
                       help="prefix of the PostgreSQL databases <name>_dagster and <name>_mlflow")
    start.add_argument("--postgres-url", default=os.environ.get("STACK_POSTGRES_URL", DEFAULT_POSTGRES_URL),
                       help="admin URL of the PostgreSQL server (creates the databases)")
    start.add_argument("--dagster-home", type=Path, default=None, help="default: <runtime-dir>/dagster_home")
    start.add_argument("--mlflow-port", type=int, default=int(os.environ.get("STACK_MLFLOW_PORT", 5000)))
    start.add_argument("--webserver-port", type=int, default=int(os.environ.get("STACK_WEBSERVER_PORT", 3000)))
    start.add_argument("--code-server-port", type=int, default=int(os.environ.get("STACK_CODE_SERVER_PORT", 4000)))
    start.add_argument("--mlflow-workers", type=int, default=1)
    start.add_argument("--module", default=DEFAULT_MODULE)
    start.add_argument("--fresh", action="store_true", help="drop the stack's databases and runtime files first")
    start.add_argument("--timeout", type=float, default=300, help="seconds to wait for everything to be healthy")
    start.set_defaults(func=cmd_start)

    stop = sub.add_parser("stop", help="stop every process the stack started")
    stop.add_argument("--drop-databases", action="store_true", help="also drop <name>_dagster and <name>_mlflow")
    stop.add_argument("--grace", type=float, default=20, help="seconds between SIGTERM and SIGKILL")
    stop.set_defaults(func=cmd_stop)

    status = sub.add_parser("status", help="processes, URLs and health (exit 0 healthy, 1 degraded, 3 stopped)")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    env = sub.add_parser("env", help="shell exports pointing DAGSTER_HOME, MLflow and the pipeline at the stack")
    env.set_defaults(func=cmd_env)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except StackError as exc:
        _log(f"error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
