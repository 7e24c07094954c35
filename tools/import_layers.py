"""The package's import structure, drawn from the code: who imports whom (lazy imports included), its floors and
its circles. ``python tools/import_layers.py`` prints violations (exit 1 when there are any); tests run it too.

The floors, lowest first — a module may import its own floor and the floors below, never one above:
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ["FLOORS", "floor_of", "import_graph", "violations"]

PACKAGE = "meddiffuse_stream"
# (module prefix, floor): the longest matching prefix decides; "" is the package facade
FLOORS: tuple[tuple[str, int], ...] = (
    ("_lazy", 0),
    ("_version", 0),
    ("counters", 0),
    ("user_errors", 0),
    ("storage", 1),
    ("geometry", 2),
    ("options", 2),
    ("shardfmt", 2),
    ("convert", 3),
    ("nodes.items", 3),
    ("nodes.errors", 3),
    ("nodes.collate", 3),
    ("nodes.pixels", 3),
    ("nodes.chunked", 3),
    ("nodes.plan", 3),
    ("nodes.source", 3),
    ("nodes.decode", 3),
    ("nodes.reading", 4),
    ("nodes.transport", 4),
    ("nodes", 5),
    ("models", 6),
    ("augment", 6),
    ("loader", 7),
    ("jobs", 8),
    ("cli", 9),
    ("", 10),
)
__doc__ = (__doc__ or "") + "\n".join(f"    {floor:2d}  {prefix or '(the package facade)'}" for prefix, floor in FLOORS)


def floor_of(module: str) -> int | None:
    """The floor of ``module`` (dotted, without the package name); ``None`` for a module no floor names."""
    matches = [p for p, _ in FLOORS if module == p or (p and module.startswith(p + "."))]
    return dict(FLOORS)[max(matches, key=len)] if matches else None


def _modules(root: Path) -> Iterator[tuple[str, Path, bool]]:
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        yield ".".join(parts), path, is_package


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name | ast.Attribute) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(tree: ast.AST) -> Iterator[ast.ImportFrom | ast.Import]:
    """Every import, at any depth, except those under ``if TYPE_CHECKING:`` (annotations only)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            continue
        if isinstance(node, ast.ImportFrom | ast.Import):
            yield node
        yield from _imports(node)


def import_graph(root: Path) -> dict[str, set[str]]:
    """``module -> modules it imports`` inside the package (names relative to it; ``""`` is the facade)."""
    modules = {name: (path, is_package) for name, path, is_package in _modules(root)}
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        targets: set[str] = set()
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                bases = [a.name for a in node.names if a.name.split(".")[0] == PACKAGE]
                targets.update(b.removeprefix(PACKAGE).lstrip(".") for b in bases)
                continue
            if node.level:
                here = name.split(".") if name else []
                if not is_package:
                    here = here[:-1]
                here = here[: len(here) - (node.level - 1)]
                base = ".".join([*here, *([node.module] if node.module else [])])
            elif node.module and node.module.split(".")[0] == PACKAGE:
                base = node.module.removeprefix(PACKAGE).lstrip(".")
            else:
                continue
            for alias in node.names:  # "from . import object_reader" imports a module
                candidate = f"{base}.{alias.name}".lstrip(".")
                targets.add(candidate if candidate in modules else base)
        graph[name] = {t for t in targets if t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _parents(module: str) -> set[str]:
    """A module's enclosing packages: importing ``a.b.c`` runs ``a`` and ``a.b`` first, which is not an edge."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(len(parts))}


def violations(root: Path) -> list[str]:
    """Upward imports and circles, one line each; empty when the structure is clean."""
    graph = import_graph(root)
    problems = [f"unplaced module: {m} has no floor (add its prefix to FLOORS)" for m in graph if floor_of(m) is None]
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if target in _parents(module) or floor_of(module) is None or floor_of(target) is None:
                continue
            if floor_of(target) > floor_of(module):  # type: ignore[operator]
                problems.append(
                    f"upward import: {module or PACKAGE} (floor {floor_of(module)}) imports {target} "
                    f"(floor {floor_of(target)})"
                )
    # a package's __init__ importing its own modules is its face, not a circle
    acyclic = {
        m: {t for t in ts if (t not in _parents(m) and m not in _parents(t)) or m == ""} for m, ts in graph.items()
    }
    problems += [f"import circle: {' -> '.join(c)}" for c in _cycles(acyclic)]
    return problems


def main() -> int:
    root = Path(__file__).resolve().parent.parent / PACKAGE
    problems = violations(root)
    for line in problems:
        print(line)
    if not problems:
        print(f"{len(import_graph(root))} modules: no upward import, no circle")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
