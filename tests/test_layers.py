"""The package's layers: a module imports only modules of its own layer or below, and
no modules import each other in a circle.

Every import counts as a dependency edge: at module level, under ``if TYPE_CHECKING:``
(a type is a dependency) and inside functions (an import deferred so that
``import clustervm`` loads no MPI still goes down, never up). An upward import
inside a function is allowed only if it is listed in ``DEFERRED_UPWARD`` with the
reason; the list is empty and should stay so: move what the lower module needs
down (as ``vm.Shared`` went to shared.py, below the wire codec that rebuilds it).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "clustervm"

#: Lowest first. A module may import modules of its own layer and the layers before it.
LAYERS: list[tuple[str, set[str]]] = [
    ("base", {"errors", "protocol", "config", "events", "hostfile", "procs", "progress",
              "reduce", "mailbox", "local", "shared", "blocks", "threadpools"}),
    ("wire", {"wire", "frames", "refs", "remote", "values", "replaylog"}),
    ("transport", {"endpoint", "doorbell", "transport", "inprocess"}),
    ("core", {"core", "core.enums", "core.events", "core.instructions", "core.state",
              "core.view", "core.groups", "core.node", "core.record"}),
    # observers read the view the runtime hands them; they never reach into the shells
    ("observers", {"monitor", "trace", "dashboard", "status"}),
    # what both shells share: a rank's mailboxes and task locations, the files on disk
    ("site", {"site", "checkpoint", "copies", "journal", "syncs", "nodefiles", "shmcopies"}),
    # what a task holds: its context, requests, frozen groups, futures
    ("tasks", {"current", "requests", "task", "fastgroup", "futures"}),
    # the coordinator and node processes around the core
    ("shells", {"records", "api", "replacement", "coordinator", "node"}),
    ("vm", {"vm"}),
    ("cli", {"", "__main__", "runtime", "launcher", "supervisor", "output", "preflight", "slurm",
             "cli", "testing", "testing.netns", "testing.slurm", "testing.inprocess"}),
]

#: (importer, imported): reason. Upward imports inside functions, each with its reason.
DEFERRED_UPWARD: dict[tuple[str, str], str] = {}


def _modules(root: Path = PACKAGE) -> dict[str, Path]:
    """Dotted names relative to the package ('' is the package itself) -> file."""
    out = {}
    for f in sorted(root.rglob("*.py")):
        parts = list(f.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    return out


def _imports(name: str, path: Path, mods: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for each import of a package module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, int, bool]] = []

    def target(dotted: str) -> str | None:
        if dotted == "clustervm" or dotted.startswith("clustervm."):
            dotted = dotted[len("clustervm."):] if dotted != "clustervm" else ""
            return dotted if dotted in mods else None
        return None

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            deferred = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    t = target(alias.name)
                    if t is not None:
                        found.append((t, child.lineno, in_function))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    up = package.split(".") if package else []
                    up = up[:len(up) - child.level + 1]
                    base = ".".join(up + ([child.module] if child.module else []))
                    base = "clustervm" + ("." + base if base else "")
                else:
                    base = child.module or ""
                for alias in child.names:     # `from . import wire` names a module
                    t = target(f"{base}.{alias.name}") or target(base)
                    if t is not None:
                        found.append((t, child.lineno, in_function))
            visit(child, deferred)

    visit(ast.parse(path.read_text(), str(path)), False)

    def own_package(t: str) -> bool:   # e.g. `from . import x` in a submodule of t
        return t != name and mods[t].name == "__init__.py" and (t == "" or name.startswith(t + "."))

    return [(t, line, fn) for t, line, fn in found if t != name and not own_package(t)]


def _graph(root: Path = PACKAGE) -> dict[str, list[tuple[str, int, bool]]]:
    mods = _modules(root)
    return {m: _imports(m, f, mods) for m, f in mods.items()}


def _layer_of() -> dict[str, int]:
    out = {}
    for i, (_, names) in enumerate(LAYERS):
        for n in names:
            assert n not in out, f"{n or 'clustervm'} is in two layers of LAYERS"
            out[n] = i
    return out


def _label(m: str) -> str:
    return f"clustervm.{m}" if m else "clustervm"


def test_every_module_has_a_layer():
    layer = _layer_of()
    missing = sorted(_label(m) for m in _modules() if m not in layer)
    assert not missing, f"add these modules to LAYERS in tests/test_layers.py: {missing}"
    gone = sorted(_label(m) for m in layer if m not in _modules())
    assert not gone, f"LAYERS names modules that do not exist: {gone}"


def test_no_module_imports_a_higher_layer():
    layer = _layer_of()
    bad = []
    for m, edges in _graph().items():
        for t, line, in_function in edges:
            if m in layer and t in layer and layer[t] > layer[m]:
                if in_function and (m, t) in DEFERRED_UPWARD:
                    continue
                bad.append(f"{_label(m)} ({LAYERS[layer[m]][0]}) imports {_label(t)} "
                           f"({LAYERS[layer[t]][0]}) at line {line}"
                           f"{' inside a function' if in_function else ''}")
    assert not bad, "imports upward:\n" + "\n".join(bad)


def test_deferred_upward_imports_are_still_there():
    edges = {(m, t) for m, es in _graph().items() for t, _, fn in es if fn}
    stale = [k for k in DEFERRED_UPWARD if k not in edges]
    assert not stale, f"DEFERRED_UPWARD lists imports that are gone: {stale}"


#: What an observer may use of its source (clustervm.core.view.ViewSource).
VIEW_SOURCE = {"view", "traffic", "observe", "observers_of", "t0"}


def test_observers_read_only_views():
    """dashboard, status, trace (and monitor) see the coordinator only through
    ``clustervm.core.view.ViewSource`` (immutable views and observer calls), never its
    live state such as ``coord.nodes`` or ``coord.lock``."""
    mods = _modules()
    bad = []
    for m in sorted(dict(LAYERS)["observers"]):
        for node in ast.walk(ast.parse(mods[m].read_text())):
            if isinstance(node, ast.Name) and node.id == "coord":
                bad.append(f"{_label(m)} line {node.lineno}: a `coord` (use a ViewSource)")
            if isinstance(node, ast.Attribute):
                owner = node.value
                name = owner.id if isinstance(owner, ast.Name) else \
                    owner.attr if isinstance(owner, ast.Attribute) else None
                if name == "source" and node.attr not in VIEW_SOURCE:
                    bad.append(f"{_label(m)} line {node.lineno}: source.{node.attr}")
    assert not bad, "observers reaching into the coordinator:\n" + "\n".join(bad)


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return found


def test_no_import_circle():
    graph = {m: {t for t, _, _ in es} for m, es in _graph().items()}
    circles = _circles(graph)
    assert not circles, "modules importing each other in a circle:\n" + "\n".join(
        ", ".join(_label(m) for m in c) for c in circles)


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"b"}, "b": set()}, []),
])
def test_circle_finder_finds_circles(graph, expected):
    assert _circles(graph) == expected


def test_edges_include_type_checking_and_function_imports(tmp_path):
    pkg = tmp_path / "clustervm"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                "    from .high import X\n")
    (pkg / "high.py").write_text("def f():\n    from clustervm import low\n")
    graph = _graph(pkg)
    assert graph["low"] == [("high", 3, False)]
    assert graph["high"] == [("low", 2, True)]
    assert _circles({m: {t for t, _, _ in es} for m, es in graph.items()}) == [["high", "low"]]
