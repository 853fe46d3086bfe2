"""The package's layout keeps its promises: no import cycle, builders without per-kind branches,
and ``import distillery`` without the config machinery."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from distillery import teachers  # noqa: F401  (importing registers the teacher kinds)
from distillery.registry import TEACHERS

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "distillery"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """``module -> modules it imports``, over every ``import`` statement of ``src/distillery``,
    at module level, inside functions, under ``if TYPE_CHECKING:`` (a cycle of type-only
    imports is still two layers that depend on each other) or ``if __name__ == "__main__":``. ``from .pkg import name`` counts as importing
    ``pkg.name`` when that is a module, else ``pkg``; the implicit import of a parent package
    is not counted (every module would then be in a cycle with its package's ``__init__``)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        edges: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                elif node.module and node.module.split(".")[0] == "distillery":
                    target = node.module
                else:
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    edges.add(sub if sub in modules else target)
            elif isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names if alias.name in modules)
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of modules (first == last), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for nxt in sorted(graph[module]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            found = visit(module)
            if found:
                return found
    return None


def test_no_import_cycle_among_distillery_modules_counting_function_local_imports():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def _names_used(path: Path) -> tuple[set[str], set[str]]:
    """String constants and identifiers (names, attributes, imported names) of a module."""
    tree = ast.parse(path.read_text())
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    names |= {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    return strings, names


def test_engine_build_and_the_runner_name_no_teacher_kind():
    kinds = {name for name, _ in TEACHERS.sections()}
    classes = {TEACHERS.get(k).__name__ for k in kinds} | {cls.__name__ for _, cls in TEACHERS.sections()}
    modules = {TEACHERS.get(k).__module__.rpartition(".")[2] for k in kinds}
    assert {"frozen", "cached", "bank"} <= kinds and "CachedTeacher" in classes
    for path in (PACKAGE / "engine" / "build.py", PACKAGE / "runner.py"):
        strings, names = _names_used(path)
        assert not strings & kinds, f"{path.name} tests a teacher kind: {sorted(strings & kinds)}"
        assert not names & classes, f"{path.name} names a teacher class: {sorted(names & classes)}"
        assert not {n for n in names if n.rpartition(".")[2] in modules and "teachers" in n}, f"{path.name} imports a teacher module"


def test_import_distillery_loads_neither_pydantic_nor_yaml():
    code = "import sys, distillery; print(sorted(m for m in ('pydantic', 'yaml') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_import_distillery_loads_no_objective_module_until_one_is_used():
    """``import distillery`` needs only the Objective base class; the objective modules are
    imported on first use of ``distillery.objectives`` names or of the registry."""
    code = (
        "import sys, distillery\n"
        "loaded = lambda: sorted(m for m in sys.modules if m.startswith('distillery.objectives.'))\n"
        "print(loaded())\n"
        "from distillery.objectives import SoftTargetKD\n"
        "from distillery.registry import OBJECTIVES\n"
        "print(len(loaded()) > 20, 'kd' in OBJECTIVES, SoftTargetKD.__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "['distillery.objectives.base']"
    assert out[1] == "True True SoftTargetKD"
