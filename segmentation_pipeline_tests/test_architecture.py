"""The package's shape: no import cycles, no private names across modules, assets engine-blind,
and importing the code location reads no config."""

from __future__ import annotations

import ast
import os
import re
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "segmentation_pipeline"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _top_level_imports(tree: ast.Module, known: set[str]) -> set[str]:
    """Package modules imported when the module is imported (not inside functions or TYPE_CHECKING)."""
    found: set[str] = set()

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.If) and not _is_type_checking(node):
                visit(node.body + node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body + node.orelse + node.finalbody)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name in known)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    candidate = f"{node.module}.{alias.name}"
                    found.add(candidate if candidate in known else node.module)
    visit(tree.body)
    return {name for name in found if name in known}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := dfs(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := dfs(node)):
            return found
    return None


def test_cycle_finder_finds_a_planted_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_cycle() -> None:
    modules = _modules()
    known = set(modules)
    graph = {name: _top_level_imports(tree, known) - {name} for name, tree in modules.items()}
    # a package imports its submodules' parents implicitly; only module-to-module edges count here
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph) or [])}"


def test_no_module_imports_another_modules_private_names() -> None:
    offenders = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("segmentation_pipeline"):
                offenders += [f"{name}: {node.module}.{a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
    assert not offenders, offenders


def test_no_module_level_getattr_reexports() -> None:
    offenders = [name for name, tree in _modules().items()
                 if any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in tree.body)]
    assert not offenders, offenders


def test_assets_never_name_an_engine() -> None:
    pattern = re.compile(r"spark|LocalEngine|engine\s*==", re.IGNORECASE)
    offenders = [f"{p.name}:{i}" for p in sorted((PACKAGE / "assets").glob("*.py"))
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offenders, offenders


def test_core_does_not_import_dagster() -> None:
    offenders = [p.name for p in sorted((PACKAGE / "core").glob("*.py"))
                 if re.search(r"^\s*(import|from) dagster", p.read_text(), re.MULTILINE)]
    assert not offenders, offenders


def test_importing_the_code_location_reads_no_config(tmp_path: Path) -> None:
    """A missing config file only matters when Dagster asks for the definitions."""
    env = {**os.environ, "SEGMENTATION_CONFIG": str(tmp_path / "missing.yaml")}
    code = ("import segmentation_pipeline.definitions as d, sys\n"
            "try:\n    d.defs()\nexcept Exception as exc:\n    print('LOAD-ERROR', type(exc).__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "LOAD-ERROR ConfigError" in out.stdout  # the import itself succeeded; the load names the file


#: Heavy modules only the steps that use them import: drift (Evidently), the Spark engine (pyspark),
#: the knee of the k sweep (kneed, which imports matplotlib.pyplot), any figure (matplotlib).
BLOCKED = ("evidently", "pyspark")  # MLflow probes for pyspark itself and copes when it is absent
UNLOADED = ("kneed", "matplotlib")


def test_loading_the_code_location_imports_no_step_only_module() -> None:
    code = (
        f"import sys, json\nfor name in {BLOCKED!r}:\n    sys.modules[name] = None  # importing it fails\n"
        "import segmentation_pipeline.definitions, segmentation_pipeline.cli\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({UNLOADED!r}))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]  # fails when a module imports evidently or pyspark
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_every_engine_implements_the_interface_with_its_exact_signatures() -> None:
    """``runtime_checkable`` only checks that methods exist; a drifted parameter list breaks at run time."""
    import inspect

    from segmentation_pipeline.engines.base import ComputeEngine
    from segmentation_pipeline.engines.local import LocalEngine
    from segmentation_pipeline.engines.spark.engine import SparkEngine

    methods = [name for name, value in vars(ComputeEngine).items() if callable(value) and not name.startswith("_")]
    assert {"extract", "clean", "fit_features", "sweep_k", "fit_clusters", "assign_eval", "publish"} <= set(methods)
    for engine in (LocalEngine, SparkEngine):
        for name in methods:
            expected = list(inspect.signature(getattr(ComputeEngine, name)).parameters)
            actual = list(inspect.signature(getattr(engine, name)).parameters)
            assert actual == expected, f"{engine.__name__}.{name}{actual} != ComputeEngine.{name}{expected}"
