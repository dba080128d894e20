"""Private SQLAlchemy details of dialects, for the ``tables`` placement (since SQLAlchemy 2.0).

Two semi-private details: ``IdentifierPreparer.quote`` is the single place
identifiers are rendered, and the compiled cache is keyed by dialect
instance.  Each shard of the ``tables`` placement gets a copy of the engine's
dialect whose preparer renders a shard-scoped name with the shard's prefix.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.sql.elements import quoted_name

Rename = Callable[[str], "str | None"]
"""An identifier's name on one shard, or ``None`` to leave it as it is."""

_PREPARER_CLASSES: dict[type, type] = {}


class _ShardNamingPreparer:
    """Mixed into a dialect's IdentifierPreparer class; see module docstring."""

    rename: Rename

    def quote(self, ident: str, *args: Any, **kw: Any) -> str:
        renamed = self.rename(ident)
        if renamed is not None:
            ident = quoted_name(renamed, getattr(ident, "quote", None))
        quoted: str = super().quote(ident, *args, **kw)  # type: ignore[misc]
        return quoted


def _naming_preparer_class(base: type) -> type:
    cls = _PREPARER_CLASSES.get(base)
    if cls is None:
        cls = type(f"ShardNaming{base.__name__}", (_ShardNamingPreparer, base), {})
        _PREPARER_CLASSES[base] = cls
    return cls


def shard_dialect(engine: Engine, rename: Rename) -> Dialect:
    """A copy of ``engine``'s dialect whose identifiers are renamed by ``rename``.

    Call :func:`refresh_shard_dialect` after the engine's first connect, when
    the dialect has learned the server's facts (version, quoting).
    """
    dialect = copy.copy(engine.dialect)
    _install_preparer(dialect, engine.dialect, rename)
    return dialect


def refresh_shard_dialect(dialect: Dialect, base: Dialect) -> None:
    """Bring a shard's dialect copy up to date with ``base`` after it initialized."""
    rename = dialect.identifier_preparer.rename  # type: ignore[attr-defined]
    dialect.__dict__.update(base.__dict__)
    _install_preparer(dialect, base, rename)


def _install_preparer(dialect: Dialect, base: Dialect, rename: Rename) -> None:
    preparer: Any = copy.copy(base.identifier_preparer)
    preparer.__class__ = _naming_preparer_class(type(base.identifier_preparer))
    preparer.dialect = dialect
    preparer._strings = {}  # its quoting cache is keyed by plain strings
    preparer.rename = rename
    dialect.identifier_preparer = preparer
