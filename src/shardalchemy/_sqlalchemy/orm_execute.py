"""Private SQLAlchemy details of ORM statement execution (since SQLAlchemy 2.0).

The identity token, loader paths and load options that decide which shard a
loader statement belongs to are only reachable through semi-private
attributes of ``ORMExecuteState`` and the ORM's compile options.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from sqlalchemy.orm import ORMExecuteState


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
    if orm_context.statement.is_select:  # what .is_select reads, without a property call
        return orm_context.load_options._identity_token
    if orm_context.is_update or orm_context.is_delete:
        return orm_context.update_delete_options._identity_token
    return None


def lazy_loaded_from(orm_context: ORMExecuteState) -> Any:
    """The ``InstanceState`` whose lazy load this statement is, or ``None``.

    ``ORMExecuteState.lazy_loaded_from`` is public but raises for statements
    other than SELECT.
    """
    if orm_context.is_select:
        return orm_context.load_options._lazy_loaded_from
    return None


def on_loader_path(statement: Any) -> bool:
    """Whether a statement is a relationship loader's (it has a non-root loader path).

    A cheap first check: ``ORMExecuteState.is_relationship_load`` builds the
    loader path twice, and almost every statement is at the root path (an
    empty ``_current_path`` in its ORM compile options).
    """
    compile_options = getattr(statement, "_compile_options", None)
    return bool(getattr(compile_options, "_current_path", None))


class _NoMoreEvents:
    """Stands in for the ``ORMExecuteState`` SQLAlchemy resumes a statement from.

    ``Session._execute_internal(..., _parent_execute_state=state)`` runs only
    the ``do_orm_execute`` hooks after the one ``state`` is at; this one has
    none left.  The session passes it for a statement it has already routed,
    when its own hook is the only one, so SQLAlchemy skips building an
    ``ORMExecuteState`` and a second pre-execution pass (about 9 µs a query).
    """

    @staticmethod
    def _remaining_events() -> tuple[()]:
        return ()


NO_MORE_EVENTS = _NoMoreEvents()


@functools.lru_cache(maxsize=1024)
def identity_token_options(shard: Any) -> Any:
    """Execution options that load objects with ``shard`` as identity token.

    What the public ``identity_token`` execution option becomes in the ORM
    (its load options), made once per shard instead of at every execution.
    """
    from sqlalchemy.orm.context import QueryContext
    from sqlalchemy.util import immutabledict

    options = QueryContext.default_load_options + {"_identity_token": shard}
    return immutabledict({"_sa_orm_load_options": options})


def execution_identity_token(options: Any) -> Any:
    """The identity token execution options carry: the public option, or its load options.

    Eager loaders run with their top-level statement's execution options,
    their own load options replacing its: there the token is the top-level
    query context's.
    """
    token = options.get("identity_token")
    if token is None:
        token = getattr(options.get("_sa_orm_load_options"), "_identity_token", None)
    if token is None:  # a post-loader (selectinload) of a statement that carried its token
        token = getattr(options.get("sa_top_level_orm_context"), "identity_token", None)
    return token


def returning_load_options(orm_context: ORMExecuteState, shard: Any) -> dict[str, Any]:
    """Execution options making RETURNING-loaded objects carry ``shard`` as identity token.

    A SELECT takes the public ``identity_token`` execution option; the ORM's
    INSERT/UPDATE ... RETURNING loads objects with the load options directly.
    """
    from sqlalchemy.orm.context import QueryContext

    options = orm_context.execution_options.get(
        "_sa_orm_load_options", QueryContext.default_load_options
    )
    return {"_sa_orm_load_options": options + {"_identity_token": shard}}


def wants_autoflush(orm_context: ORMExecuteState) -> bool:
    """Whether the ORM would autoflush before running this SELECT (its load options say).

    SQLAlchemy autoflushes after the ``do_orm_execute`` hooks, when it runs the
    statement: for a statement the sharded session fans out, that would be in
    each shard's worker thread, all at once.
    """
    return bool(orm_context.load_options._autoflush)
