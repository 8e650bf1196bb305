"""docker-compose.yml, Dockerfile, .env.example and docker/ agree with the project they deploy.

No Docker needed: the files are parsed and checked against the package (entry points, every
environment variable the code reads, the instance/workspace files, the MySQL grants the code's
table names need). Each checker returns a list of problems; the ``*_catches_*`` tests run the
same checkers on mutated copies to show they fail when the deployment drifts.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "segmentation_pipeline"
COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKER_DIR = REPO / "docker"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
VENV_BIN = Path(sys.executable).parent

# Services that run the project's code, from the project image.
DAGSTER_SERVICES = ("dagster-user-code", "dagster-webserver", "dagster-daemon")
# Executables a project-image service may start: what pyproject and its dependencies install.
KNOWN_EXECUTABLES = {"dagster", "dagster-webserver", "dagster-daemon", "mlflow", "segmentation"}
# The code location the Dagster services load; every module it can import (at any depth, also
# inside functions) runs in the user-code container, so every variable those modules read must
# reach the services. Modules it cannot import (the CLI, engines no asset uses yet) are exempt.
CODE_LOCATION_MODULE = "segmentation_pipeline.definitions"
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|API_KEY|PRIVATE_KEY|CREDENTIAL", re.IGNORECASE)
VAR_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")
# What the pipeline account needs on each of its own tables (docker/mysql-init/02-pipeline-user.sh).
OWN_TABLE_PRIVILEGES = {"SELECT", "INSERT", "DELETE", "CREATE", "DROP", "ALTER", "INDEX"}


# --------------------------------------------------------------------------- loading


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def load_env_example(text: str | None = None) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in (ENV_EXAMPLE.read_text() if text is None else text).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f".env.example line without '=': {line!r}"
        values[key.strip()] = value.strip()
    return values


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def service_env(service: Mapping[str, Any]) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.partition("=") for item in env)
        return {k: (v if sep else None) for k, sep, v in pairs}
    return {str(k): (None if v is None else str(v)) for k, v in env.items()}


def command_of(service: Mapping[str, Any]) -> list[str]:
    cmd = service.get("entrypoint") or service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(part) for part in cmd]


def option(cmd: list[str], *names: str) -> str | None:
    for i, part in enumerate(cmd):
        if part in names and i + 1 < len(cmd):
            return cmd[i + 1]
    return None


def project_services(compose: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {name: svc for name, svc in compose["services"].items() if "build" in svc}


def walk_strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, Mapping):
        for key, value in node.items():
            yield from walk_strings(key)
            yield from walk_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk_strings(item)


def compose_variables(compose: Any) -> set[str]:
    """Every ${VAR} compose interpolates: in values, not comments; $$ is a literal dollar."""
    return {m.group(1) for text in walk_strings(compose) for m in VAR_REF.finditer(text.replace("$$", ""))}


# --------------------------------------------------------------------------- what the code reads


def _module_constants(trees: Mapping[str, ast.Module]) -> dict[str, str]:
    constants: dict[str, str] = {}
    for tree in trees.values():
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
            value = getattr(node, "value", None)
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                for target in targets:
                    if isinstance(target, ast.Name):
                        constants[target.id] = value.value
    return constants


def _is_os_environ(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ" and isinstance(node.value, ast.Name)
            and node.value.id == "os") or (isinstance(node, ast.Name) and node.id == "environ")


def env_reads(sources: Mapping[str, str]) -> tuple[set[str], list[str]]:
    """Environment variable names read by ``sources`` ({filename: code}), and unresolvable reads.

    Reads: ``os.environ.get(X)``, ``os.environ[X]`` (load), ``X in os.environ``, ``os.getenv(X)``,
    ``EnvVar(X)`` (Dagster). ``X`` may be a literal or a module-level string constant of any of
    the sources. ``os.environ.setdefault`` is a write, not a read.
    """
    trees = {name: ast.parse(code, filename=name) for name, code in sources.items()}
    constants = _module_constants(trees)
    found: set[str] = set()
    unresolved: list[str] = []

    def resolve(arg: ast.AST, where: str) -> None:
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            found.add(arg.value)
        elif isinstance(arg, ast.Name) and arg.id in constants:
            found.add(constants[arg.id])
        elif isinstance(arg, ast.Attribute) and arg.attr in constants:
            found.add(constants[arg.attr])
        else:
            unresolved.append(f"{where}: {ast.unparse(arg)}")

    for filename, tree in trees.items():
        for node in ast.walk(tree):
            where = f"{filename}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Call) and node.args:
                func = node.func
                if isinstance(func, ast.Attribute) and func.attr == "get" and _is_os_environ(func.value):
                    resolve(node.args[0], where)
                elif (isinstance(func, ast.Attribute) and func.attr == "getenv") or (
                    isinstance(func, ast.Name) and func.id == "getenv"
                ):
                    resolve(node.args[0], where)
                elif (isinstance(func, ast.Name) and func.id == "EnvVar") or (
                    isinstance(func, ast.Attribute) and func.attr == "EnvVar"
                ):
                    resolve(node.args[0], where)
            elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and _is_os_environ(node.value):
                resolve(node.slice, where)
            elif isinstance(node, ast.Compare) and any(isinstance(op, ast.In) for op in node.ops) and any(
                _is_os_environ(c) for c in node.comparators
            ):
                resolve(node.left, where)
    return found, unresolved


def package_sources(modules: set[str] | None = None) -> dict[str, str]:
    files = sorted(PACKAGE.rglob("*.py")) if modules is None else sorted(filter(None, map(module_file, modules)))
    return {str(p.relative_to(REPO)): p.read_text() for p in files}


def module_file(name: str) -> Path | None:
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def reachable_modules(root: str = CODE_LOCATION_MODULE, package: str = PACKAGE.name) -> set[str]:
    """Project modules ``root`` can import, transitively: imports anywhere in a module count
    (function-level ones too), as do the parent packages' ``__init__``."""
    seen: set[str] = set()
    todo = [root]
    while todo:
        name = todo.pop()
        path = module_file(name)
        if name in seen or path is None:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                todo += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        todo = [m for m in todo if m == package or m.startswith(package + ".")]
    return seen


def instance_env_vars(instance: Any) -> set[str]:
    """Every ``{env: X}`` in a Dagster instance YAML."""
    found: set[str] = set()
    if isinstance(instance, Mapping):
        if set(instance) == {"env"}:
            found.add(str(instance["env"]))
        for value in instance.values():
            found |= instance_env_vars(value)
    elif isinstance(instance, list):
        for item in instance:
            found |= instance_env_vars(item)
    return found


def required_service_env() -> set[str]:
    reads, _ = env_reads(package_sources(reachable_modules()))
    instance = yaml.safe_load((DOCKER_DIR / "dagster.yaml").read_text())
    return reads | instance_env_vars(instance) | {"DAGSTER_HOME"}


# --------------------------------------------------------------------------- checkers


def check_entrypoints(compose: Mapping[str, Any], *, console_scripts: Mapping[str, str], bin_dir: Path,
                      module_exists=lambda name: importlib.util.find_spec(name) is not None) -> list[str]:
    problems: list[str] = []
    for name, svc in project_services(compose).items():
        cmd = command_of(svc)
        if not cmd:
            problems.append(f"{name}: no command")
            continue
        exe = cmd[0]
        if exe not in KNOWN_EXECUTABLES:
            problems.append(f"{name}: runs {exe!r}, not one of the project's entry points {sorted(KNOWN_EXECUTABLES)}")
        elif exe in console_scripts:  # the project's own script: declared, and its module exists
            target = console_scripts[exe].split(":")[0]
            try:
                ok = module_exists(target)
            except ModuleNotFoundError:
                ok = False
            if not ok:
                problems.append(f"{name}: console script {exe!r} points at {target!r}, which is not importable")
        elif exe == "segmentation":
            problems.append(f"{name}: runs 'segmentation' but pyproject declares no such console script")
        elif not (bin_dir / exe).exists():
            problems.append(f"{name}: {exe!r} is not installed in {bin_dir}")
        module = option(cmd, "-m", "--module-name")
        if exe == "dagster" and module is not None:
            try:
                ok = module_exists(module)
            except ModuleNotFoundError:
                ok = False
            if not ok:
                problems.append(f"{name}: module {module!r} is not importable")
        health = (svc.get("healthcheck") or {}).get("test") or []
        if isinstance(health, list) and health and health[0] == "CMD" and len(health) > 1:
            if health[1] not in {"python"} and not (bin_dir / health[1]).exists():
                problems.append(f"{name}: healthcheck runs {health[1]!r}, not installed in {bin_dir}")
    return problems


def check_env_provided(compose: Mapping[str, Any], required: set[str], services: tuple[str, ...]) -> list[str]:
    problems: list[str] = []
    for name in services:
        svc = compose["services"].get(name)
        if svc is None:
            problems.append(f"service {name} is missing")
            continue
        env = service_env(svc)
        for var in sorted(required):
            if var not in env:
                problems.append(f"{name}: environment lacks {var}")
            elif env[var] in (None, ""):
                problems.append(f"{name}: {var} is empty")
    return problems


def check_env_example(compose: Mapping[str, Any], env_example: Mapping[str, str]) -> list[str]:
    used = compose_variables(compose)
    problems = [f"${{{v}}} is used in docker-compose.yml but not listed in .env.example" for v in sorted(used - set(env_example))]
    problems += [f".env.example lists {v}, which docker-compose.yml never uses" for v in sorted(set(env_example) - used)]
    for key, value in env_example.items():
        if SECRET_NAME.search(key) and value not in ("", "CHANGE_ME"):
            problems.append(f".env.example: {key} must be a placeholder (CHANGE_ME), not a value")
    return problems


def check_no_literal_secrets(compose: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    for name, svc in compose["services"].items():
        for key, value in service_env(svc).items():
            if SECRET_NAME.search(key) and not re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}", value or ""):
                problems.append(f"{name}: {key} must be exactly ${{VAR}} from .env (no literal, no default)")
    for text in walk_strings(compose):
        for match in re.finditer(r"://[^/\s:@]+:([^@\s/]+)@", text):
            if not match.group(1).startswith("${"):
                problems.append(f"a URL carries a literal password: {text!r}")
        if re.search(r"--password[= ](?!\$)", text):
            problems.append(f"a literal password on a command line: {text!r}")
    return problems


def check_healthchecks(compose: Mapping[str, Any]) -> list[str]:
    problems = []
    for name, svc in compose["services"].items():
        if svc.get("profiles"):
            continue  # one-shot helpers (e.g. seed-demo) run to completion
        check = svc.get("healthcheck") or {}
        if check.get("disable") or not check.get("test"):
            problems.append(f"{name}: no healthcheck")
    return problems


def check_depends_on(compose: Mapping[str, Any]) -> list[str]:
    problems = []
    services = compose["services"]
    for name, svc in services.items():
        deps = svc.get("depends_on")
        if deps is None:
            continue
        if not isinstance(deps, Mapping):
            problems.append(f"{name}: depends_on must be the long form with condition: service_healthy")
            continue
        for dep, spec in deps.items():
            if dep not in services:
                problems.append(f"{name}: depends on unknown service {dep}")
            elif (spec or {}).get("condition") != "service_healthy":
                problems.append(f"{name}: depends on {dep} without condition: service_healthy")
            elif not (services[dep].get("healthcheck") or {}).get("test"):
                problems.append(f"{name}: waits for {dep} to be healthy, but {dep} has no healthcheck")
    return problems


def _volume_source(entry: Any) -> tuple[str | None, str]:
    if isinstance(entry, Mapping):
        return (entry.get("source") if entry.get("type", "volume") == "volume" else None), str(entry.get("target"))
    source, _, rest = str(entry).partition(":")
    target = rest.split(":")[0]
    if source.startswith((".", "/", "~")):
        return None, target
    return source, target


def check_volumes(compose: Mapping[str, Any]) -> list[str]:
    declared = set((compose.get("volumes") or {}).keys())
    used: set[str] = set()
    problems = []
    for name, svc in compose["services"].items():
        for entry in svc.get("volumes") or []:
            source, _ = _volume_source(entry)
            if source is None:
                bind = str(entry).split(":")[0] if not isinstance(entry, Mapping) else entry.get("source")
                if bind and bind.startswith(".") and not (REPO / bind).exists():
                    problems.append(f"{name}: bind mount {bind} does not exist in the repository")
                continue
            used.add(source)
            if source not in declared:
                problems.append(f"{name}: named volume {source} is not declared under top-level volumes")
    problems += [f"volume {v} is declared but no service mounts it" for v in sorted(declared - used)]
    return problems


def published_ports(service: Mapping[str, Any], env: Mapping[str, str]) -> dict[int, str]:
    """container port -> host binding, with ${VAR:-default} resolved from .env.example."""
    result = {}
    for entry in service.get("ports") or []:
        text = VAR_REF.sub(lambda m: env.get(m.group(1)) or m.group(3) or "", str(entry))
        parts = text.split(":")
        result[int(parts[-1].split("/")[0])] = ":".join(parts[:-1])
    return result


# --------------------------------------------------------------------------- the real files


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return load_env_example()


def test_services_and_topology(compose):
    services = compose["services"]
    assert {"mysql", "postgres", "mlflow", *DAGSTER_SERVICES} <= set(services)
    assert services["mysql"]["image"].startswith("mysql:8")
    assert set(project_services(compose)) >= {"mlflow", *DAGSTER_SERVICES}
    images = {svc["image"] for svc in project_services(compose).values()}
    assert len(images) == 1, f"every project service runs the one project image, got {images}"
    deps = {name: set(services[name].get("depends_on") or {}) for name in services}
    assert {"mysql", "postgres", "mlflow"} <= deps["dagster-user-code"]
    assert {"postgres", "dagster-user-code"} <= deps["dagster-webserver"]
    assert {"postgres", "dagster-user-code"} <= deps["dagster-daemon"]
    assert "postgres" in deps["mlflow"]


def test_every_command_names_an_existing_entry_point(compose):
    scripts = pyproject()["project"].get("scripts", {})
    assert scripts.get("segmentation") == "segmentation_pipeline.cli:console_main"
    assert check_entrypoints(compose, console_scripts=scripts, bin_dir=VENV_BIN) == []
    code_server = command_of(compose["services"]["dagster-user-code"])
    assert code_server[:3] == ["dagster", "code-server", "start"]
    assert option(code_server, "-m") == pyproject()["tool"]["dagster"]["module_name"]
    assert option(code_server, "-h") == "0.0.0.0"
    assert command_of(compose["services"]["dagster-webserver"])[0] == "dagster-webserver"
    assert command_of(compose["services"]["dagster-daemon"])[:2] == ["dagster-daemon", "run"]
    assert command_of(compose["services"]["mlflow"])[:2] == ["mlflow", "server"]


def test_env_scanner_sees_what_the_config_module_reads():
    reads, unresolved = env_reads(package_sources())
    assert unresolved == [], f"environment reads the scanner cannot name (use a literal or a constant): {unresolved}"
    assert {"SEGMENTATION_CONFIG", "SEGMENTATION_DATABASE_URL", "SEGMENTATION_DATABASE_PASSWORD",
            "MLFLOW_TRACKING_URI", "SEGMENTATION_DATA_DIR"} <= reads
    assert "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in reads  # setdefault is a write


def test_code_location_reach_covers_the_pipeline_but_not_the_cli():
    reach = reachable_modules()
    assert {"segmentation_pipeline.config", "segmentation_pipeline.resources", "segmentation_pipeline.automation",
            "segmentation_pipeline.assets.scoring", "segmentation_pipeline.storage.segment_store"} <= reach
    assert "segmentation_pipeline.cli" not in reach  # SEGMENTATION_DEBUG/LOG_LEVEL are CLI switches
    # the walk follows imports: a module the location starts importing becomes required
    assert "segmentation_pipeline.cli" in reachable_modules("segmentation_pipeline.cli")
    outside, _ = env_reads(package_sources(set(map(_module_name, PACKAGE.rglob("*.py"))) - reach))
    print(f"variables read only outside the code location (not required of the services): {sorted(outside)}")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_variable_the_code_reads_reaches_the_dagster_services(compose):
    required = required_service_env()
    assert {"DAGSTER_POSTGRES_HOST", "DAGSTER_POSTGRES_PASSWORD", "DAGSTER_HOME"} <= required
    assert check_env_provided(compose, required, DAGSTER_SERVICES) == []


def test_every_compose_variable_is_in_env_example_and_no_secret_is_committed(compose, env_example):
    assert check_env_example(compose, env_example) == []
    assert check_no_literal_secrets(compose) == []
    assert not (REPO / ".env").exists() or ".env" in (REPO / ".gitignore").read_text().split(), \
        ".env exists: it must be git-ignored"


def test_healthchecks_and_healthy_dependencies(compose):
    assert check_healthchecks(compose) == []
    assert check_depends_on(compose) == []


def test_named_volumes_and_ports(compose, env_example):
    assert check_volumes(compose) == []
    services = compose["services"]
    assert {"mysql-data", "postgres-data", "mlflow-artifacts"} <= set(compose["volumes"])
    # published container ports are the ones the commands listen on
    web_cmd, mlflow_cmd = command_of(services["dagster-webserver"]), command_of(services["mlflow"])
    assert int(option(web_cmd, "-p")) in published_ports(services["dagster-webserver"], env_example)
    assert int(option(mlflow_cmd, "--port")) in published_ports(services["mlflow"], env_example)
    assert 3306 in published_ports(services["mysql"], env_example)
    for name in ("dagster-webserver", "mlflow", "mysql"):
        for binding in published_ports(services[name], env_example).values():
            assert binding.startswith("127.0.0.1:"), f"{name} publishes {binding}: bind to loopback, front with a proxy"
    # MLflow serves artifacts itself, from a named volume
    assert "--serve-artifacts" in mlflow_cmd
    destination = option(mlflow_cmd, "--artifacts-destination")
    assert any(_volume_source(v) == ("mlflow-artifacts", destination) for v in services["mlflow"]["volumes"])
    assert option(mlflow_cmd, "--backend-store-uri").startswith("postgresql+psycopg2://")
    # the pipeline talks to the services by their compose names and ports
    env = service_env(services["dagster-user-code"])
    assert env["MLFLOW_TRACKING_URI"] == f"http://mlflow:{option(mlflow_cmd, '--port')}"
    assert "@mysql:3306/" in env["SEGMENTATION_DATABASE_URL"]
    assert env["DAGSTER_POSTGRES_HOST"] == "postgres"


def test_workspace_points_at_the_code_server(compose):
    workspace = yaml.safe_load((DOCKER_DIR / "workspace.yaml").read_text())
    [entry] = workspace["load_from"]
    grpc = entry["grpc_server"]
    cmd = command_of(compose["services"]["dagster-user-code"])
    assert grpc["host"] == "dagster-user-code" and grpc["host"] in compose["services"]
    assert int(grpc["port"]) == int(option(cmd, "-p"))
    location = pyproject()["tool"]["dagster"]["code_location_name"]
    assert grpc["location_name"] == location == option(cmd, "--location-name")
    for name in ("dagster-webserver", "dagster-daemon"):
        assert option(command_of(compose["services"][name]), "-w") == "/opt/dagster/dagster_home/workspace.yaml"


def _tables_tag_key() -> str:
    tree = ast.parse((PACKAGE / "automation.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "TABLES_TAG" for t in node.targets):
            [key] = ast.literal_eval(node.value).keys()
            return key
    raise AssertionError("automation.py defines no TABLES_TAG")


def test_instance_uses_postgres_and_the_run_limits(tmp_path, monkeypatch):
    from dagster._core.instance.config import dagster_instance_config

    instance = yaml.safe_load((DOCKER_DIR / "dagster.yaml").read_text())
    assert instance["storage"]["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2"
    assert instance_env_vars(instance) >= {f"DAGSTER_POSTGRES_{k}" for k in ("HOST", "PORT", "USER", "PASSWORD", "DB")}
    assert instance["run_coordinator"]["class"] == "QueuedRunCoordinator"
    limits = instance["concurrency"]["runs"]["tag_concurrency_limits"]
    assert {"key": _tables_tag_key(), "limit": 1} in limits
    assert instance["concurrency"]["pools"]["default_limit"] == 1
    # Dagster itself accepts the file
    for var in instance_env_vars(instance):
        monkeypatch.setenv(var, "5432" if var.endswith("PORT") else "x")
    (tmp_path / "dagster.yaml").write_text((DOCKER_DIR / "dagster.yaml").read_text())
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["concurrency"]["runs"]["tag_concurrency_limits"] == limits


def test_dockerfile_installs_the_package_and_the_instance(compose):
    text = DOCKERFILE.read_text()
    assert re.search(r"^COPY pyproject\.toml", text, re.M)
    assert re.search(r"^RUN pip install[^\n]*\s\.(\s|$)", text, re.M), "the image must pip install the package"
    assert re.search(r"^COPY segmentation_pipeline ", text, re.M)
    env = dict(re.findall(r"^\s*(?:ENV\s+)?([A-Z_]+)=(\S+?)\s*\\?$", text, re.M))
    for name in DAGSTER_SERVICES:
        assert service_env(compose["services"][name])["DAGSTER_HOME"] == env["DAGSTER_HOME"]
    assert re.search(rf"^COPY[^\n]*docker/dagster\.yaml docker/workspace\.yaml {re.escape(env['DAGSTER_HOME'])}/?$", text, re.M)
    # the config the services name is in the image (WORKDIR /opt/dagster/app mirrors the repo)
    workdir = re.search(r"^WORKDIR (\S+)", text, re.M).group(1)
    config = service_env(compose["services"]["dagster-user-code"])["SEGMENTATION_CONFIG"]
    relative = Path(config).relative_to(workdir)
    assert (REPO / relative).is_file() and re.search(rf"^COPY {re.escape(str(relative))} ", text, re.M)
    assert re.search(r"^USER (?!root)\S+", text, re.M), "the image must not run as root"


def test_image_dependencies_include_the_postgres_storage():
    """The image installs pyproject's dependencies; docker/dagster.yaml needs dagster-postgres."""
    text = DOCKERFILE.read_text()
    assert "tomllib" in text and "['project']['dependencies']" in text and "pip install -r" in text
    deps = " ".join(pyproject()["project"]["dependencies"])
    assert "dagster-postgres" in deps, "add 'dagster-postgres>=0.29,<0.30' to [project].dependencies in pyproject.toml"


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def test_container_config_is_mysql_yaml_with_server_side_artifacts(monkeypatch):
    from segmentation_pipeline.config import load_config

    base = _flatten(yaml.safe_load((REPO / "configs" / "mysql.yaml").read_text()))
    docker = _flatten(yaml.safe_load((DOCKER_DIR / "segmentation.yaml").read_text()))
    allowed = {"database.url", "mlflow.tracking_uri", "mlflow.artifact_location", "data_dir"}
    differ = {k for k in set(base) | set(docker) if base.get(k, "<absent>") != docker.get(k, "<absent>")}
    assert differ <= allowed, f"docker/segmentation.yaml drifted from configs/mysql.yaml: {sorted(differ - allowed)}"
    assert "mlflow.artifact_location" not in docker, "artifacts must go through the tracking server (--serve-artifacts)"
    for var in ("SEGMENTATION_CONFIG", "SEGMENTATION_DATABASE_URL", "MLFLOW_TRACKING_URI", "SEGMENTATION_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    cfg = load_config(DOCKER_DIR / "segmentation.yaml")
    assert cfg.mlflow.artifact_location is None and cfg.mlflow.tracking_uri == "http://mlflow:5000"


# --------------------------------------------------------------------------- init scripts and grants


def _script_required_env(path: Path) -> set[str]:
    return set(re.findall(r"\$\{([A-Z_]+):\?", path.read_text()))


def test_init_scripts_are_executable_and_get_their_environment(compose):
    for service, script in (("mysql", DOCKER_DIR / "mysql-init" / "02-pipeline-user.sh"),
                            ("postgres", DOCKER_DIR / "postgres-init" / "01-databases.sh")):
        assert os.access(script, os.X_OK), f"{script} must be executable (the entrypoint runs it)"
        required = _script_required_env(script)
        assert required, script
        assert check_env_provided(compose, required, (service,)) == []
        mounts = [str(v) for v in compose["services"][service]["volumes"]]
        assert f"./{script.parent.relative_to(REPO)}:/docker-entrypoint-initdb.d:ro" in mounts
    assert (DOCKER_DIR / "mysql-init" / "01-schema.sql").read_text().count("CREATE TABLE IF NOT EXISTS customers") == 1


def grant_sql(env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(DOCKER_DIR / "mysql-init" / "02-pipeline-user.sh"), "--print-sql"],
                          env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True, timeout=30)


def parse_grants(sql: str) -> dict[str, set[str]]:
    grants: dict[str, set[str]] = {}
    for line in sql.splitlines():
        match = re.fullmatch(r"GRANT (.+) ON `(\w+)`\.`(\w+)` TO '(\w+)'@'([^']+)';", line.strip())
        if line.startswith("GRANT"):
            assert match, f"unexpected grant form (wildcard? global?): {line}"
            grants.setdefault(match.group(3), set()).update(p.strip() for p in match.group(1).split(","))
    return grants


def tables_the_code_writes() -> set[str]:
    """Every table name the write-back can touch, from the code: output tables, their staging
    and old names (swap.py), the incoming tables of incremental scoring and the failures
    table (segment_store.py)."""
    from segmentation_pipeline.config import OutputConfig

    writeback = (PACKAGE / "storage" / "swap.py").read_text()
    store = (PACKAGE / "storage" / "segment_store.py").read_text()
    staging = re.search(r'^STAGING_SUFFIX = "(\w+)"', writeback, re.M).group(1)
    old = re.search(r'^OLD_SUFFIX = "(\w+)"', writeback, re.M).group(1)
    failures = re.search(r'^FAILURES_TABLE = "(\w+)"', store, re.M).group(1)
    output = OutputConfig()
    swapped = {output.segments_table, output.rejects_table}
    swapped |= {getattr(output, attr) + suffix for attr, suffix in re.findall(r'f"\{output\.(\w+)\}(__\w+)"', store)}
    tables = {output.history_table, failures}
    for table in swapped:
        tables |= {table, table + staging, table + old}
    return tables


def test_pipeline_account_gets_exactly_what_the_code_needs():
    result = grant_sql({"MYSQL_DATABASE": "crm", "SEGMENTATION_DB_USER": "segmenter", "SEGMENTATION_DB_PASSWORD": "s3cr'et"})
    assert result.returncode == 0, result.stderr
    assert "IDENTIFIED BY 's3cr''et'" in result.stdout  # quoted, not spliced
    grants = parse_grants(result.stdout)
    assert grants.pop("customers") == {"SELECT"}, "the source table is read-only for the pipeline"
    needed = tables_the_code_writes()
    assert {"customer_segments__staging", "customer_rejects__old", "segment_assignments", "pipeline_run_failures"} <= needed
    assert set(grants) == needed, f"missing: {needed - set(grants)}; not needed: {set(grants) - needed}"
    for table, privileges in grants.items():
        assert privileges == OWN_TABLE_PRIVILEGES, (table, privileges)
    assert "ALL" not in result.stdout and "GRANT OPTION" not in result.stdout and "*" not in result.stdout


def test_grant_script_refuses_injection():
    result = grant_sql({"MYSQL_DATABASE": "crm", "SEGMENTATION_DB_USER": "x'@'%'; DROP USER root; --",
                        "SEGMENTATION_DB_PASSWORD": "p"})
    assert result.returncode != 0 and "invalid user" in result.stderr
    assert grant_sql({"MYSQL_DATABASE": "crm", "SEGMENTATION_DB_USER": "u"}).returncode != 0  # no password


# --------------------------------------------------------------------------- the checkers can fail


def test_env_check_catches_a_removed_variable(compose):
    required = required_service_env()
    mutated = copy.deepcopy(compose)
    del mutated["services"]["dagster-user-code"]["environment"]["SEGMENTATION_DATABASE_PASSWORD"]
    mutated["services"]["dagster-daemon"]["environment"]["DAGSTER_POSTGRES_DB"] = ""
    problems = check_env_provided(mutated, required, DAGSTER_SERVICES)
    assert "dagster-user-code: environment lacks SEGMENTATION_DATABASE_PASSWORD" in problems
    assert "dagster-daemon: DAGSTER_POSTGRES_DB is empty" in problems
    # list-form environments are read too
    listed = copy.deepcopy(compose)
    listed["services"]["dagster-webserver"]["environment"] = ["DAGSTER_HOME=/x"]
    assert any(p.startswith("dagster-webserver: environment lacks") for p in check_env_provided(listed, required, DAGSTER_SERVICES))


def test_env_scanner_catches_every_read_form():
    sources = {
        "a.py": 'import os\nENV_X = "FROM_CONSTANT"\nos.environ.get(ENV_X)\nos.getenv("FROM_GETENV")\n'
                'os.environ["FROM_SUBSCRIPT"]\nif "FROM_IN" in os.environ: pass\nos.environ.setdefault("WRITTEN", "1")\n'
                'os.environ["ASSIGNED"] = "1"\n',
        "b.py": 'import dagster as dg\nfrom a import ENV_X\ndg.EnvVar("FROM_ENVVAR")\nos.environ.get(name_at_runtime)\n',
    }
    reads, unresolved = env_reads(sources)
    assert reads == {"FROM_CONSTANT", "FROM_GETENV", "FROM_SUBSCRIPT", "FROM_IN", "FROM_ENVVAR"}
    assert unresolved == ["b.py:4: name_at_runtime"]


def test_env_example_check_catches_a_missing_variable_and_a_real_secret(compose, env_example):
    mutated = copy.deepcopy(compose)
    mutated["services"]["mlflow"]["environment"]["API_TOKEN"] = "${NEW_SECRET_TOKEN}"
    assert "${NEW_SECRET_TOKEN} is used in docker-compose.yml but not listed in .env.example" in check_env_example(mutated, env_example)
    stale = dict(env_example, UNUSED_SETTING="1")
    assert ".env.example lists UNUSED_SETTING, which docker-compose.yml never uses" in check_env_example(compose, stale)
    leaked = dict(env_example, MYSQL_ROOT_PASSWORD="hunter2")
    assert ".env.example: MYSQL_ROOT_PASSWORD must be a placeholder (CHANGE_ME), not a value" in check_env_example(compose, leaked)
    assert compose_variables({"a": ["$${NOT_A_VAR} ${REAL:-x}", {"k": "${OTHER}"}]}) == {"REAL", "OTHER"}


def test_secret_check_catches_literal_passwords(compose):
    mutated = copy.deepcopy(compose)
    mutated["services"]["mysql"]["environment"]["MYSQL_ROOT_PASSWORD"] = "hunter2"
    mutated["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] = "${POSTGRES_PASSWORD:-postgres}"
    mutated["services"]["dagster-daemon"]["environment"]["SEGMENTATION_DATABASE_URL"] = "mysql+pymysql://u:hunter2@mysql/crm"
    problems = check_no_literal_secrets(mutated)
    assert any(p.startswith("mysql: MYSQL_ROOT_PASSWORD") for p in problems)
    assert any(p.startswith("postgres: POSTGRES_PASSWORD") for p in problems)
    assert any("literal password" in p and "hunter2@mysql" in p for p in problems)


def test_health_and_dependency_checks_catch_regressions(compose):
    mutated = copy.deepcopy(compose)
    del mutated["services"]["mlflow"]["healthcheck"]
    mutated["services"]["dagster-webserver"]["depends_on"] = ["postgres"]
    mutated["services"]["dagster-daemon"]["depends_on"]["postgres"] = {"condition": "service_started"}
    assert "mlflow: no healthcheck" in check_healthchecks(mutated)
    problems = check_depends_on(mutated)
    assert "dagster-webserver: depends_on must be the long form with condition: service_healthy" in problems
    assert "dagster-daemon: depends on postgres without condition: service_healthy" in problems
    assert "dagster-user-code: waits for mlflow to be healthy, but mlflow has no healthcheck" in problems


def test_volume_check_catches_undeclared_and_unused_volumes(compose):
    mutated = copy.deepcopy(compose)
    mutated["services"]["mlflow"]["volumes"] = ["mlflow-artefacts:/mlflow/artifacts"]
    problems = check_volumes(mutated)
    assert "mlflow: named volume mlflow-artefacts is not declared under top-level volumes" in problems
    assert "volume mlflow-artifacts is declared but no service mounts it" in problems


def test_entrypoint_check_catches_unknown_commands_and_modules(compose):
    mutated = copy.deepcopy(compose)
    mutated["services"]["dagster-daemon"]["command"] = ["dagster-deamon", "run"]
    mutated["services"]["dagster-user-code"]["command"] = ["dagster", "code-server", "start", "-m", "segmentation_pipeline.defs"]
    mutated["services"]["mlflow"]["command"] = "segmentation run"
    mutated["services"]["dagster-webserver"]["command"] = ["segmentation", "run"]
    problems = check_entrypoints(mutated, console_scripts={"segmentation": "segmentation_pipeline.nope:main"}, bin_dir=VENV_BIN)
    assert "dagster-webserver: console script 'segmentation' points at 'segmentation_pipeline.nope', which is not importable" in problems
    problems = check_entrypoints(mutated, console_scripts={}, bin_dir=VENV_BIN)
    assert any(p.startswith("dagster-daemon: runs 'dagster-deamon'") for p in problems)
    assert "dagster-user-code: module 'segmentation_pipeline.defs' is not importable" in problems
    assert "mlflow: runs 'segmentation' but pyproject declares no such console script" in problems
