"""The layout tells the architecture (DESIGN.md §10), and these tests keep it telling it:
no import circles, in any length, lazy imports inside functions included; the SDK never
imports the agent; every registered component can be found and built by name; no class
or module grows past the size a reader can hold without saying why."""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"meterkit": ROOT / "sdk" / "meterkit", "meterkit_agent": ROOT / "agent" / "meterkit_agent"}

#: about 200 lines a class and 400 a module (the issue's words); a few lines of slack
MAX_CLASS_LINES = 210
MAX_MODULE_LINES = 420


def modules() -> dict[str, Path]:
    found = {}
    for package, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def _imports(tree: ast.AST, name: str, is_package: bool) -> Iterator[str]:
    """Every module a file imports, anywhere in it (inside functions too), except under
    ``if TYPE_CHECKING:``, which never runs."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            for other in node.orelse:
                yield from _imports(other, name, is_package)
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            for alias in node.names:
                yield f"{prefix}.{alias.name}"
                yield prefix
        yield from _imports(node, name, is_package)


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for target in _imports(tree, name, path.name == "__init__.py"):
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_itself_through_others() -> None:
    assert cycles(import_graph()) == []


def test_the_agents_packages_form_no_circle_either() -> None:
    """Collapsed to ``receivers``, ``pipeline``, ``cli``..., the agent is still a one-way street."""

    def room(module: str) -> str:
        return ".".join(module.split(".")[:2])

    rooms: dict[str, set[str]] = {}
    for source, targets in import_graph().items():
        rooms.setdefault(room(source), set()).update(room(t) for t in targets if room(t) != room(source))
    assert cycles(rooms) == []


def test_the_sdk_never_imports_the_agent() -> None:
    sdk = {m: t for m, t in import_graph().items() if m.split(".")[0] == "meterkit"}
    assert {m: sorted(t) for m, t in sdk.items() if any(x.startswith("meterkit_agent") for x in t)} == {}


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def _registries() -> Iterator[tuple[str, str, str]]:
    from meterkit_agent.exporters import EXPORTERS
    from meterkit_agent.processors import PROCESSORS
    from meterkit_agent.receivers import RECEIVERS

    for kind, registry in (("receivers", RECEIVERS), ("processors", PROCESSORS), ("exporters", EXPORTERS)):
        for type_, module in registry.items():
            yield kind, type_, module


@pytest.mark.parametrize(("kind", "type_", "module"), list(_registries()))
def test_every_registered_component_has_a_factory_in_its_own_module(kind: str, type_: str, module: str) -> None:
    assert module == f"meterkit_agent.{kind}.{type_}"  # found by its kind and name, as in the Collector
    factory = importlib.import_module(module).FACTORY
    assert issubclass(factory.config, BaseModel) and callable(factory.create)


def test_one_module_per_component_and_a_test_for_each() -> None:
    for kind, type_, _module in _registries():
        assert (PACKAGES["meterkit_agent"] / kind / f"{type_}.py").is_file()
        tests = ROOT / "tests" / "agent" / kind
        assert tests.is_dir(), f"tests/agent/{kind}/ mirrors agent/meterkit_agent/{kind}/"


def test_no_class_or_module_past_the_size_a_reader_holds() -> None:
    too_big = []
    for name, path in modules().items():
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n")
        if lines > MAX_MODULE_LINES:
            too_big.append(f"{name}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                size = node.end_lineno - node.lineno + 1
                if size > MAX_CLASS_LINES:
                    too_big.append(f"{name}.{node.name}: {size} lines")
    assert too_big == []
