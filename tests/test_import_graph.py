"""No import circle anywhere in the package: the rooms depend on each other one way.

The graph is read from the source: every ``import`` / ``from ... import`` of a shardalchemy
module, at module level or inside a function (a deferred import is still a dependency),
except under ``if TYPE_CHECKING:`` (annotations only, never run). Two graphs must be free
of cycles: modules, and rooms (the package's subpackages and top-level modules, e.g.
``routing`` -> ``sharding``), the package's own ``__init__`` aside: it imports every room
to offer the flat public API.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import shardalchemy

PACKAGE = Path(shardalchemy.__file__).parent
ROOT = "shardalchemy"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The shardalchemy modules the module ``name`` imports (TYPE_CHECKING blocks aside)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(inner) for inner in ast.walk(node))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith(ROOT))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith(ROOT):
                continue
            for alias in node.names:  # ``from . import demo`` imports a module
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in known else target)
    return {module for module in found if module in known and module != name}


def module_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports_of(name, path, known) for name, path in found.items()}


def room_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT


def room_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, targets in module_graph().items():
        if module == ROOT:
            continue  # the flat public API imports every room
        room = room_of(module)
        graph.setdefault(room, set()).update(
            room_of(target) for target in targets if room_of(target) not in (room, ROOT)
        )
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), and self-loops."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
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
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_one_that_imports_it_back() -> None:
    assert cycles(module_graph()) == []


def test_rooms_depend_on_each_other_one_way() -> None:
    assert cycles(room_graph()) == []


@pytest.mark.parametrize(
    ("pure", "forbidden"),
    [
        ("sharding", {"routing", "planning", "merge", "execution", "orm", "writes", "topology"}),
        ("routing", {"planning", "merge", "execution", "orm", "writes", "topology"}),
        ("planning", {"execution", "orm", "writes", "topology"}),
        ("merge", {"sharding", "routing", "planning", "execution", "orm", "writes", "topology"}),
        ("writes", {"orm"}),
    ],
)
def test_pure_rooms_stay_below_the_ones_that_touch_connections(
    pure: str, forbidden: set[str]
) -> None:
    assert room_graph()[pure] & forbidden == set()


def test_the_graph_sees_imports() -> None:
    """The reader finds relative, deferred and ``from . import`` imports (so the above can fail)."""
    graph = module_graph()
    assert "shardalchemy.routing.route" in graph["shardalchemy.routing.router"]
    assert "shardalchemy.cli.demo" in graph["shardalchemy.cli.main"]  # from . import demo
    assert "shardalchemy.orm.session" in graph["shardalchemy.cli.main"]  # inside a function
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def documented_room_graph() -> dict[str, set[str]]:
    """The room graph ARCHITECTURE.md draws (``room -> a, b`` lines, continued when indented)."""
    text = (PACKAGE.parent.parent / "ARCHITECTURE.md").read_text()
    block = text.split("Today's room graph:", 1)[1].split("```", 2)[1]
    graph: dict[str, set[str]] = {}
    last: list[str] = []
    for line in block.splitlines():
        if "->" in line:
            room, _, targets = line.partition("->")
            last = [room.strip()]
            graph[last[0]] = {t.strip() for t in targets.split(",") if t.strip()}
        elif "(import nothing of ours)" in line:
            last = [room.strip() for room in line.split("(")[0].split(",")]
            graph.update({room: set() for room in last})
        elif line.strip() and last:  # a continuation line
            graph[last[0]].update(t.strip() for t in line.split(",") if t.strip())
    return graph


def test_architecture_md_draws_the_room_graph_as_it_is() -> None:
    assert documented_room_graph() == room_graph()
