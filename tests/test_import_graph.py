"""loopqual's modules import each other without a circle, and each stage's folder imports only
the folders below it (issue 26): a reader can start at any module and find what it rests on
below it. Imports inside functions count too, since they are how circles hide."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "loopqual"
NAMES = ("loopqual",)
# The stages' folders, lowest first (docs/layout.md): a folder imports only from itself and
# the folders before it; the modules at the top (the CLI) may import any.
LAYERS = ("common", "guest", "config", "debian", "kernel", "verdict", "module", "review", "boot",
          "output", "run")


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported(name: str, node: ast.AST, known: dict[str, Path]) -> set[str]:
    """The package's modules that one import statement of module `name` brings in."""
    found: set[str] = set()
    if isinstance(node, ast.ImportFrom):
        if node.level:
            here = name.split(".")[:-1] if not known[name].name == "__init__.py" else name.split(".")
            base = here[:len(here) - (node.level - 1)]
            parent = ".".join(base + ([node.module] if node.module else []))
        elif node.module and node.module.split(".")[0] in NAMES:
            parent = node.module.partition(".")[2]
        else:
            return found
        for alias in node.names:
            child = f"{parent}.{alias.name}" if parent else alias.name
            found.add(child if child in known else parent)
    elif isinstance(node, ast.Import):
        for alias in node.names:
            top, _, rest = alias.name.partition(".")
            if top in NAMES:
                found.add(rest)
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: set().union(*(imported(name, node, known)
                                for node in ast.walk(ast.parse(path.read_text()))
                                if isinstance(node, (ast.Import, ast.ImportFrom))))
            for name, path in known.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_itself_through_others():
    graph = import_graph()
    assert len(graph) > 30 and graph["kernel.kernels"] >= {
        "kernel.archivekernels", "kernel.debugkernel", "kernel.installedkernel"}
    assert circles(graph) == []


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """'a -> b' for each import of a module in a folder above the importer's own."""
    def layer(module: str) -> int:
        folder = module.split(".")[0] if "." in module else ""
        return LAYERS.index(folder) if folder in LAYERS else len(LAYERS)

    # "" is the package itself: its __init__ holds the version string, below every stage
    return sorted(f"{a} -> {b}" for a, bs in graph.items() for b in bs if b and layer(b) > layer(a))


def test_every_folder_is_a_stage_and_imports_only_those_below_it():
    graph = import_graph()
    folders = {m.split(".")[0] for m in graph if "." in m}
    assert folders == set(LAYERS)
    assert upward_imports(graph) == []


def test_an_upward_import_is_found():
    graph = {"common.paths": {"config.data"}, "config.data": {"common.paths"}, "cli": {"run.qualify"}}
    assert upward_imports(graph) == ["common.paths -> config.data"]


def test_a_circle_is_found_where_it_exists():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert circles(graph) == [["a", "b", "c"]]
