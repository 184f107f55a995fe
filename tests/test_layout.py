"""docs/layout.md names every module of the package, so a newcomer's map stays whole."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_every_module_is_on_the_map():
    text = (REPO / "docs" / "layout.md").read_text()
    package = REPO / "src" / "loopqual"
    modules = sorted(str(p.relative_to(package)) for p in package.rglob("*.py")
                     if p.name != "__init__.py")
    missing = [m for m in modules if f"`{m}`" not in text]
    assert len(modules) > 40 and missing == []


def test_no_function_is_longer_than_a_screen():
    """A function a newcomer reads fits on a screen: at most 60 lines, docstring included."""
    import ast

    long = []
    for path in sorted((REPO / "src" / "loopqual").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 60:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []
