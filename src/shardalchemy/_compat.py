"""The few semi-private SQLAlchemy details shardalchemy relies on, in one place.

SQLAlchemy has no public accessor for these; keeping them here means an
upgrade that changes them touches this file only.  (Table-name rendering for
the ``tables`` placement has its own module, :mod:`shardalchemy._naming`.)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy.orm import ORMExecuteState


def plain(element: Any) -> Any:
    """``element`` without ORM annotations (annotated copies hash and compare differently)."""
    deannotate = getattr(element, "_deannotate", None)
    return (
        deannotate()
        if deannotate is not None and getattr(element, "_annotations", None)
        else element
    )


def orm_options(orm_context: ORMExecuteState) -> Iterable[Any]:
    """The execution-time ORM options of a statement (where ``set_shard_id`` lives)."""
    if not orm_context.statement._with_options:  # the common case, without building a list
        return ()
    return orm_context._non_compile_orm_options


def explicit_identity_token(orm_context: ORMExecuteState) -> Any:
    """The identity token the ORM pinned a load or bulk UPDATE/DELETE to, if any.

    Set by ``session.get()`` once the identity chooser picked a shard, by
    refreshes of an object already loaded from a shard, and by loaders that
    inherit their parent's shard.
    """
    if orm_context.is_select:
        return orm_context.load_options._identity_token
    if orm_context.is_update or orm_context.is_delete:
        return orm_context.update_delete_options._identity_token
    return None


def lazy_loaded_from(orm_context: ORMExecuteState) -> Any:
    """The ``InstanceState`` whose lazy load this statement is, or ``None``."""
    if orm_context.is_select:
        return orm_context.load_options._lazy_loaded_from
    return None


def dml_assignments(statement: Any) -> list[tuple[Any, Any]]:
    """(column or key, value) pairs an UPDATE statement's ``.values()`` assigns."""
    values = getattr(statement, "_values", None) or {}
    ordered = getattr(statement, "_ordered_values", None) or ()
    return [*values.items(), *ordered]


def statement_options(statement: Any) -> tuple[Any, ...]:
    """The options attached to a statement with ``.options()``."""
    return tuple(getattr(statement, "_with_options", ()))


def is_anonymous_key(key: Any) -> bool:
    """Whether a bind parameter's key is anonymous (SQLAlchemy names it at compile time)."""
    from sqlalchemy.sql.elements import _anonymous_label

    return isinstance(key, _anonymous_label)
