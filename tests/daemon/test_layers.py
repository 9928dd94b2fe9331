"""The layers hold: no import cycle between modules, none between daemon's subpackages, and the
few rules the README's Layout section states, read from the source with ``ast`` (nothing is
imported).

Every import statement counts, wherever it is: at module level, inside a function, under
``try`` or under ``if TYPE_CHECKING:``. A type-only import is still a dependency of the module's
meaning (and of the type checker's graph), so it may not close a cycle either. The implicit
import of a parent package (``import a.b.c`` runs ``a/b/__init__.py``) is not an edge: a package
``__init__`` that re-exports its own modules would otherwise make a cycle of every sibling
import.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOTS = ("daemon", "worker", "protocol")
HTTP_LIBRARIES = ("starlette", "uvicorn", "hypercorn", "h11", "httptools")
HTTP_LAYERS = ("daemon.http", "daemon.ops")   # the only ones that may use an HTTP library
# daemon's layers, top first (the README's Layout section): each imports only from the tiers
# below its own; the layers of one tier are peers and import nothing of each other.
DAEMON_TIERS = (
    ("daemon.ops",),
    ("daemon.http", "daemon.rpc"),
    ("daemon.core",),
    ("daemon.workflows",),
    ("daemon.control",),
    ("daemon.workers",),
    ("daemon.gpus",),
    ("daemon.models",),
    ("daemon.config", "daemon.metrics", "daemon.logformat"),
    ("daemon.errors", "daemon.jsonlayout", "daemon.logfiles", "daemon.osutil",
     "daemon.version"),
)


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module under ROOTS."""
    modules = {}
    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = module_files()


def imported_names(name: str, path: Path) -> set[str]:
    """Every dotted name the module imports, absolute: for ``from X import Y``, X.Y where that
    is a module of ROOTS (its package X is only imported implicitly), else X."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return found


def internal_target(name: str) -> str | None:
    """The module of ROOTS that importing ``name`` loads (its longest known prefix)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        targets = {internal_target(n) for n in imported_names(name, path)}
        graph[name] = {t for t in targets if t is not None and t != name}
    return graph


GRAPH = import_graph()


def daemon_layer(module: str) -> str | None:
    """daemon's subpackage (``daemon.models``) or top-level module (``daemon.errors``)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "daemon" and len(parts) > 1 else None


def layer_graph() -> dict[str, dict[str, list[str]]]:
    """layer -> layer it imports -> the module imports that make that edge."""
    layers: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for module, targets in GRAPH.items():
        for target in targets:
            a, b = daemon_layer(module), daemon_layer(target)
            if a and b and a != b:
                layers[a][b].append(f"{module} -> {target}")
    return layers


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one node."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:   # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while (member := stack.pop()) != node:
                component.add(member)
            if component:
                found.append(_cycle_in(graph, component | {node}, node))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _cycle_in(graph: dict[str, set[str]], component: set[str], start: str) -> list[str]:
    """A shortest path from ``start`` back to itself inside ``component``."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        node = frontier.pop(0)
        for nxt in sorted(graph.get(node, set()) & component):
            if nxt == start:
                return paths[node] + [start]
            if nxt not in paths:
                paths[nxt] = paths[node] + [nxt]
                frontier.append(nxt)
    raise AssertionError("a component without a cycle")


def test_the_parser_sees_the_modules_and_their_imports():
    assert {"daemon.ops.server", "worker.service", "protocol.frames"} <= MODULES.keys()
    assert "daemon.control.manager" in GRAPH["daemon.ops.server"]
    assert "daemon.workers.supervisor" in GRAPH["daemon.control.manager"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_import_cycle_between_modules():
    found = cycles(GRAPH)
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_no_import_cycle_between_daemon_subpackages():
    layers = layer_graph()
    found = cycles({a: set(targets) for a, targets in layers.items()})
    lines = []
    for cycle in found:
        lines.append(" -> ".join(cycle))
        for a, b in zip(cycle, cycle[1:]):
            lines += [f"    {edge}" for edge in sorted(layers[a][b])]
    assert not found, "cycles between daemon's subpackages:\n" + "\n".join(lines)


def test_daemon_layers_import_only_downward():
    tier = {layer: rank for rank, layers in enumerate(DAEMON_TIERS) for layer in layers}
    unknown = sorted({daemon_layer(m) for m in MODULES} - set(tier) - {None})
    assert not unknown, f"add {unknown} to DAEMON_TIERS (and to the README's Layout)"
    upward = sorted(edge for a, targets in layer_graph().items() for b, edges in targets.items()
                    if tier[b] <= tier[a] for edge in edges)
    assert not upward, "imports of a layer above or beside the importer's:\n" + "\n".join(upward)


def test_daemon_and_worker_meet_only_in_protocol():
    crossing = sorted(f"{m} -> {t}" for m, targets in GRAPH.items() for t in targets
                      if {m.split(".")[0], t.split(".")[0]} == {"daemon", "worker"}
                      or (m.startswith("protocol") and not t.startswith("protocol")))
    assert not crossing, crossing


def test_only_worker_ts_imports_worker_ts():
    """worker/ts/ is the handlers' import surface over worker/runtime/, never the other way."""
    users = sorted(f"{m} -> {t}" for m, targets in GRAPH.items() for t in targets
                   if (t == "worker.ts" or t.startswith("worker.ts."))
                   and not m.startswith("worker.ts."))
    assert not users, users


def test_only_the_http_layers_use_an_http_library():
    users = sorted(f"{name}: {imported}" for name, path in MODULES.items()
                   if not name.startswith(HTTP_LAYERS)
                   for imported in imported_names(name, path)
                   if imported.split(".")[0] in HTTP_LIBRARIES)
    assert not users, users
