"""The import graph of platform/valley, read with ast (module-level and function-local imports alike):
no module may import a module that imports it back, stages meet only through the shared bottom layer.

Read from the source rather than by importing, so it is fast, needs no GPU stack, and also sees the
lazy imports inside functions (a lazy import still ties two modules together).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "platform"
BOTTOM = {"valley.errors", "valley.schemas"}  # what the shared bottom-layer modules may import


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((ROOT / "valley").rglob("*.py"))}


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The longest known module that `name` names (a name imported from a module resolves to it)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> dict[str, set[str]]:
    """module -> valley modules it imports anywhere in its body (no implicit parent-package edges)."""
    known = _modules()
    graph: dict[str, set[str]] = {}
    for mod, path in known.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
            else:
                continue
            targets |= {t for n in names if n.split(".")[0] == "valley" and (t := _resolve(n, known))}
        graph[mod] = targets - {mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in graph.get(todo.pop(), ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def _in(mod: str, package: str) -> bool:
    return mod == package or mod.startswith(package + ".")


def test_graph_sees_function_local_imports():
    graph = import_graph()
    assert {"valley.generate.backends.hf", "valley.generate.backends.vllm"} <= graph[
        "valley.generate.backends.factory"]


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_generate_does_not_import_grade():
    graph = import_graph()
    leaks = {f"{m} -> {t}" for m in graph if _in(m, "valley.generate")
             for t in _reachable(graph, m) if _in(t, "valley.grade")}
    assert not leaks, sorted(leaks)


def test_problem_formats_are_a_bottom_layer_module():
    graph = import_graph()
    assert graph["valley.problems"] <= BOTTOM, graph["valley.problems"]
    assert "valley.problems" in graph["valley.generate.selection"]
    assert "valley.problems" in graph["valley.grade.stage"]


# The floors of docs/architecture.md, lowest first. A module may import its own package and anything on a
# lower floor; on its own floor only the shared modules (floors 0 and 1, and the top floor); never upward.
FLOORS: list[set[str]] = [
    {"valley.errors", "valley.schemas"},
    {"valley.config", "valley.storage", "valley.stage", "valley.lease", "valley.integrity", "valley.binpack", "valley.problems",
     "valley.manifest",
     "valley.legacy",
     "valley.ordering",
     "valley.runtime", "valley.watchdog", "valley.stderr_filter", "valley.metrics"},
    {"valley.data", "valley.train", "valley.generate", "valley.grade", "valley.report", "valley.decontam",
     "valley.imports"},
    {"valley.registry", "valley.capacity", "valley.experiment", "valley.demo", "valley.doctor", "valley.cli",
     "valley.verify", "valley"},
]
STAGE_FLOOR = 2
# stage -> stage imports made on purpose (docs/architecture.md names each)
ALLOWED_ACROSS_STAGES = {
    ("valley.imports", "valley.grade"),  # `valley import --score` grades an import
    ("valley.imports", "valley.report"),  # ... and reports it
}


def _unit(mod: str) -> tuple[int, str]:
    """(floor, unit) of a module: the unit is its top-level package under valley (or the module itself)."""
    for floor, units in enumerate(FLOORS):
        for unit in sorted(units, key=len, reverse=True):
            if unit == "valley" and mod != "valley":
                continue
            if _in(mod, unit):
                return floor, unit
    raise AssertionError(f"{mod} is on no floor: add it to FLOORS (and to docs/architecture.md)")


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for mod, targets in graph.items():
        floor, unit = _unit(mod)
        for target in targets:
            t_floor, t_unit = _unit(target)
            if t_unit == unit or t_floor < floor:
                continue
            if t_floor == floor and (floor != STAGE_FLOOR or (unit, t_unit) in ALLOWED_ACROSS_STAGES):
                continue
            found.append(f"{mod} (floor {floor}) -> {target} (floor {t_floor})")
    return sorted(found)


def test_every_module_is_on_a_floor():
    for mod in import_graph():
        _unit(mod)


def test_no_module_imports_upward_or_across_stages():
    assert layering_violations(import_graph()) == []


def test_the_layering_check_sees_an_upward_import():
    assert layering_violations({"valley.storage": {"valley.train.plan"}, "valley.train.plan": set()}) == [
        "valley.storage (floor 1) -> valley.train.plan (floor 2)"]
    assert layering_violations({"valley.train.plan": {"valley.data.pad"}, "valley.data.pad": set()}) != []
