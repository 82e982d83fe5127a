"""The library's shape: no import cycles between its modules, lazy (function-level) imports included, so each
module can be read, tested and changed from the layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "feature_platform"


def import_graph() -> dict[str, set[str]]:
    modules = {".".join(("feature_platform", *p.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__"): p
               for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("feature_platform"):
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert len(graph) > 20 and "feature_platform.online.reader" in graph  # the walk found the package
    found = cycles(graph)
    assert not found, "import cycles (lazy imports count): " + "; ".join(" <-> ".join(c) for c in found)


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_low_layers_do_not_import_the_orchestration() -> None:
    """The pipeline, CLI, proof and DAG factory sit on top; nothing below imports them."""
    graph = import_graph()
    top = {"feature_platform.pipeline", "feature_platform.cli", "feature_platform.proof",
           "feature_platform.dag_factory"}
    offenders = {name: sorted(graph[name] & top) for name in graph if name not in top and graph[name] & top}
    assert not offenders, offenders


BACKEND_CONFIGS = {"RedisConfig", "SqliteConfig", "FileRegistryConfig", "SqlRegistryConfig"}
BACKEND_FACTORIES = {"online/stores.py", "registries.py", "online/redis_client.py"}


def test_backends_are_chosen_only_in_their_factories() -> None:
    """The online store and the registry are chosen by type in one place each (online.stores, registries):
    nowhere else does code ask which backend it has, so adding one is one new class."""
    offenders = []
    for path in SRC.rglob("*.py"):
        if str(path.relative_to(SRC)) in BACKEND_FACTORIES:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance"
                    and len(node.args) == 2 and BACKEND_CONFIGS & {n.id for n in ast.walk(node.args[1])
                                                                   if isinstance(n, ast.Name)}):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not offenders, offenders
    assert len(list(SRC.rglob("*.py"))) > 20


def _instrumented(prelude: str) -> bool:
    """Whether Feast's Field (decorated with typeguard's @typechecked) was instrumented at import."""
    import subprocess
    import sys

    code = prelude + ("\nimport feast.field\n"
                      "print('TypeCheckMemo' in feast.field.Field.__init__.__code__.co_names)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in __import__("os").environ.items()
                               if k != "FEATURE_PLATFORM_FEAST_TYPECHECKS"})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip() == "True"


def test_entry_points_import_feast_without_typeguard_instrumentation() -> None:
    """The platform's entry points (CLI, server workers, DAG steps) skip typeguard's re-compilation of Feast at
    import (about half of `import feast`); a plain `import feast` keeps it, and so does the opt-out variable."""
    assert _instrumented("")
    assert not _instrumented("from feature_platform.startup import skip_feast_typechecks\nskip_feast_typechecks()")
    assert _instrumented("import os\nos.environ['FEATURE_PLATFORM_FEAST_TYPECHECKS'] = '1'\n"
                         "from feature_platform.startup import skip_feast_typechecks\nskip_feast_typechecks()")
    for module, call in (("feature_platform/cli.py", "skip_feast_typechecks()"),
                         ("feature_platform/online/server.py", "skip_feast_typechecks()"),
                         ("feature_platform/dag_factory.py", "skip_feast_typechecks()")):
        assert call in (SRC.parent / module).read_text(), module


def test_mypy_is_clean(tmp_path) -> None:
    """`mypy` (configured in pyproject.toml: src/, untyped defs checked) finds nothing; it runs with the suite."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy-cache")],
                          cwd=SRC.parent.parent, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "Success: no issues found" in done.stdout


def test_the_generated_config_names_plugins_that_exist() -> None:
    """The class paths feature_store.yaml names (kept in feast_modes, so writing it needs no Feast) are the
    plugins' own, with the config classes Feast looks up beside them (<Class>Config)."""
    import importlib

    from feature_platform import feast_modes

    for path in [feast_modes.OFFLINE_STORE, feast_modes.PROVIDER, *feast_modes.ONLINE_STORES.values()]:
        module, _, name = path.rpartition(".")
        assert hasattr(importlib.import_module(module), name), path
        if name != "PlatformProvider":
            config = getattr(importlib.import_module(module), name + "Config")
            assert config.model_fields["type"].default == path


def test_every_variable_the_code_names_is_in_the_catalogue() -> None:
    """The environment-variable reference is generated from feature_platform.variables: a variable named in the
    code but not there (or there but named nowhere) fails here, so the reference cannot drift."""
    import re

    from feature_platform.variables import VARIABLES

    named = {name for path in [*SRC.rglob("*.py"), *(SRC.parent.parent / "dags").rglob("*.py")]
             for name in re.findall(r"\b(FEATURE_PLATFORM_[A-Z0-9_]*[A-Z0-9]|FEAST_S3_ENDPOINT_URL|AWS_ENDPOINT_URL)\b",
                                    path.read_text())}
    catalogue = {v.name for v in VARIABLES}
    assert len(catalogue) == len(VARIABLES), "a variable is listed twice"
    assert named - catalogue == set(), "add these to feature_platform/variables.py"
    shipped = " ".join(p.read_text() for p in (SRC.parent.parent / "contracts" / "environments").glob("*.yaml"))
    assert catalogue - named - set(re.findall(r"FEATURE_PLATFORM_[A-Z0-9_]+", shipped)) == set()
