"""What the planner must know about the shards' database: NULL order, text collation."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..merge.keys import Transform, as_is, pad_space

# text collations whose order is code-point order, per dialect family
_BINARY_COLLATIONS: dict[str, set[str | None]] = {
    "sqlite": {None, "binary"},
    "postgresql": {"c", "posix", "c.utf-8", "c.utf8", "ucs_basic", "default"},
}


@dataclasses.dataclass(frozen=True)
class DatabaseFacts:
    """What the planner must know about the shards' database to merge exactly.

    ``dialect`` is SQLAlchemy's dialect name; ``nulls_high`` whether NULL
    sorts above every value (PostgreSQL; SQLite and MariaDB sort it below);
    ``default_collation`` the database's default text collation (lower case),
    ``None`` for SQLite's BINARY.

    Example:

    >>> facts = DatabaseFacts("postgresql", nulls_high=True, default_collation="c.utf-8")
    >>> facts.text_transform(None) is as_is  # C.UTF-8 orders text by code point
    True
    >>> facts.text_transform("en_US.utf8") is None  # not reproducible in Python: refused
    True
    """

    dialect: str
    nulls_high: bool
    default_collation: str | None = None

    def text_transform(self, collation: str | None) -> Transform | None:
        """How to compare text under ``collation`` (``None``: the default) like the database.

        Returns a function to apply to values before comparing them, or
        ``None`` when Python cannot reproduce the collation's order.
        """
        name = (collation or self.default_collation or "").lower() or None
        family = "mysql" if self.dialect in ("mysql", "mariadb") else self.dialect
        if family == "mysql":
            if name == "binary" or (name is not None and "_nopad_bin" in name):
                return as_is
            if name is not None and name.endswith("_bin"):
                return pad_space  # binary order, but trailing spaces do not count
            return WEIGHT
            # any other collation: compared by the database's own WEIGHT_STRING()
        if name in _BINARY_COLLATIONS.get(family, ()):
            return as_is
        return None


def _by_weight_string(value: Any) -> Any:
    """Marks text the database must turn into sort keys itself (MariaDB's WEIGHT_STRING)."""
    raise AssertionError("a marker, compared by identity and never applied")


WEIGHT: Transform = _by_weight_string
