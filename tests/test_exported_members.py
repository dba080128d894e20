"""The public API is flat: one sorted ``__all__`` in ``shardalchemy/__init__.py``, as httpx has."""

from __future__ import annotations

import shardalchemy


def test_all_is_sorted_and_unique() -> None:
    assert shardalchemy.__all__ == sorted(set(shardalchemy.__all__))


def test_every_exported_name_exists() -> None:
    for name in shardalchemy.__all__:
        assert hasattr(shardalchemy, name), name


def test_every_public_name_is_exported() -> None:
    """Nothing public in the package namespace is missing from ``__all__`` (rooms aside)."""
    rooms = {
        "cli", "errors", "execution", "ids", "inspection", "merge", "options", "orm", "planning",
        "routing", "sharding", "topology", "transactions", "writes",
    }  # fmt: skip
    public = {
        name
        for name in vars(shardalchemy)
        if not name.startswith("_") and name not in rooms and name != "annotations"
    }
    assert public - set(shardalchemy.__all__) == set()


def test_exported_objects_say_they_are_shardalchemys() -> None:
    """Exported classes and functions come from the package (not re-exported SQLAlchemy)."""
    type_aliases = {"ShardName"}  # ShardName = str: the alias is the package's, its value is not
    for name in sorted(set(shardalchemy.__all__) - type_aliases):
        value = getattr(shardalchemy, name)
        module = getattr(value, "__module__", None) or getattr(value, "__name__", "")
        assert module.startswith("shardalchemy"), (name, module)
