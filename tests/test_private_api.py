"""Every private SQLAlchemy (or driver) attribute shardalchemy uses is reached through one door.

``shardalchemy._sqlalchemy`` holds each such access, with a comment saying why. This test
walks the syntax tree of every other module of the package and fails on ``x._name`` and on
``getattr(x, "_name")`` (also ``hasattr``/``setattr``) where ``_name`` is a private attribute
that SQLAlchemy, aiosqlite or psycopg defines: an upgrade of SQLAlchemy that changes one of
them must touch ``_sqlalchemy/`` only. ``self._x`` / ``cls._x`` name the module's own
attributes and are allowed, except for SQLAlchemy's own that a subclass would override.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import shardalchemy

PACKAGE = Path(shardalchemy.__file__).parent
DOOR = PACKAGE / "_sqlalchemy"
LIBRARIES = ("sqlalchemy", "aiosqlite", "psycopg", "pymysql")


@functools.cache
def private_library_names() -> frozenset[str]:
    """Every ``_name`` (not dunder) a class or module of the libraries above defines."""
    names: set[str] = set()
    for library in LIBRARIES:
        try:
            root = importlib.import_module(library)
        except ImportError:  # an optional driver that is not installed
            continue
        modules = [root]
        for info in pkgutil.walk_packages(root.__path__, prefix=f"{library}."):
            if any(part in info.name for part in (".testing", ".mypy", "._cython")):
                continue
            try:
                modules.append(importlib.import_module(info.name))
            except Exception:  # a dialect whose driver is missing, a plugin
                continue
        for module in modules:
            for name, value in vars(module).items():
                if _private(name):
                    names.add(name)
                if inspect.isclass(value) and value.__module__.startswith(library):
                    for klass in value.__mro__:
                        names.update(n for n in vars(klass) if _private(n))
                        names.update(n for n in getattr(klass, "__slots__", ()) if _private(n))
                        annotations = vars(klass).get("__annotations__", {})
                        if isinstance(annotations, dict):
                            names.update(n for n in annotations if _private(n))
    return frozenset(names)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def modules_outside_the_door() -> list[Path]:
    return sorted(path for path in PACKAGE.rglob("*.py") if DOOR not in path.parents)


def library_derived_classes(tree: ast.Module) -> set[str]:
    """Names of the module's classes with a base imported from one of the libraries."""
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in LIBRARIES:
            imported.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            imported.update(
                (alias.asname or alias.name).split(".")[0]
                for alias in node.names
                if alias.name.split(".")[0] in LIBRARIES
            )
    derived: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                root = base
                while isinstance(root, ast.Attribute):
                    root = root.value
                if isinstance(root, ast.Name) and root.id in imported:
                    derived.add(node.name)
    return derived


def private_uses(path: Path) -> list[str]:
    """``line: expression`` for each use of a library's private name in the module at ``path``."""
    library = private_library_names()
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in library:
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue  # the module's own attribute (overrides are checked below)
            found.append(f"{node.lineno}: {ast.unparse(node)}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value in library
        ):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    derived = library_derived_classes(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name in derived:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name in private_library_names():
                    found.append(f"{item.lineno}: def {node.name}.{item.name} (a private override)")
    return sorted(found, key=lambda use: int(use.split(":")[0]))


@pytest.mark.parametrize(
    "path", modules_outside_the_door(), ids=lambda path: str(path.relative_to(PACKAGE))
)
def test_no_private_sqlalchemy_access_outside_the_door(path: Path) -> None:
    uses = private_uses(path)
    assert not uses, (
        f"{path.relative_to(PACKAGE)} uses private library attributes; move each into "
        "shardalchemy._sqlalchemy (one function, with a comment saying why):\n" + "\n".join(uses)
    )


def test_the_check_sees_a_private_access(tmp_path: Path) -> None:
    """The walk recognises what it must refuse (so the test above can fail)."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "def f(statement, engine):\n"
        "    statement._raw_columns\n"
        "    getattr(engine, '_proxied', None)\n"
        "    self._my_own_attribute\n"
        "from sqlalchemy.orm import Session\n"
        "class S(Session):\n"
        "    def _execute_internal(self): ...\n"
    )
    uses = private_uses(sample)
    assert [use.split(":")[0] for use in uses] == ["2", "3", "7"], uses


def test_the_door_names_why() -> None:
    """Every module of the door says what it reaches into and why, in its docstring."""
    for path in sorted(DOOR.glob("*.py")):
        docstring = ast.get_docstring(ast.parse(path.read_text()))
        assert docstring and len(docstring) > 80, f"{path.name} needs a docstring saying why"
